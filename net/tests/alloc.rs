//! The reserving allocator turns a decoder's allocation from a hostile count into a
//! clean decode error instead of a process abort.

use kafka_protocol::messages::{ApiKey, RequestKind};

#[global_allocator]
static ALLOCATOR: spate_net::alloc::ReservingAllocator = spate_net::alloc::ReservingAllocator;

#[test]
fn a_metadata_request_claiming_two_billion_topics_is_a_decode_error() {
    // Metadata v0 body: topic array count 0x7fffffff, then one byte. Without the
    // allocator this aborts: kafka-protocol 0.15 reserves 2^31 elements (154 GB) first.
    let mut body = bytes::Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0x00]);
    assert!(RequestKind::decode(ApiKey::Metadata, &mut body, 0).is_err());
    // Compact (flexible) array form: varint count near 2^32.
    let mut body = bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]);
    assert!(RequestKind::decode(ApiKey::Metadata, &mut body, 9).is_err());
}

#[test]
fn huge_allocations_work_and_are_released() {
    for _ in 0..64 {
        let mut v: Vec<u64> = Vec::with_capacity(1 << 34); // 128 GiB of address space
        v.push(7);
        v.extend(0..1000);
        assert_eq!(v[0], 7);
        let mut w = v.clone();
        w.shrink_to_fit();
        assert_eq!(w.len(), 1001);
    }
}
