//! The RecordBatch validator on arbitrary bytes. A batch it accepts must also pass the
//! read-path check, survive LogAppendTime stamping still valid, and answer timestamp
//! lookups without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spate_engine::batch;
use spate_engine::Timestamp;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = batch::validate(data, 1 << 20) else {
        return;
    };
    assert_eq!(header.size, data.len());
    assert!(
        batch::verify_stored(data).is_ok(),
        "accepted on write, refused on read"
    );
    let _ = batch::first_record_at_or_after(data, Timestamp(0));
    let mut stamped = data.to_vec();
    batch::stamp_log_append_time(&mut stamped, Timestamp(1)).expect("a valid batch stamps");
    assert!(
        batch::validate(&stamped, 1 << 20).is_ok(),
        "stamped batch stays valid"
    );
});
