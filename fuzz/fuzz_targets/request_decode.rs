//! The request decoder on arbitrary frame bodies: whatever the bytes, `decode` returns a
//! request or an error. A panic inside the kafka-protocol decoder is caught by `decode`
//! (that is its contract, so the silent panic hook below lets it be caught); a panic
//! that escapes, an abort, or an allocation the process cannot survive is a crash.
//! Decoded requests must re-encode at their version (what the handlers rely on when they
//! echo fields back).

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use spate_net::codec::{decode, Decoded};

// As in the `spate` binary: hostile collection counts reserve address space instead of
// aborting on allocation failure.
#[global_allocator]
static ALLOCATOR: spate_net::alloc::ReservingAllocator = spate_net::alloc::ReservingAllocator;

fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
        if let Ok(Decoded::Request(request)) = decode(Bytes::copy_from_slice(data)) {
            let mut out = BytesMut::new();
            // Encoding may refuse a value the version cannot carry; it must not panic.
            let _ = request.body.encode(&mut out, request.version);
        }
    }
);
