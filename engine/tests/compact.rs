//! Compaction's record work (`spate_engine::compact`) on random keyed workloads with
//! tombstones, in batches of every codec, idempotent or not: after cleaning, each key's
//! latest record is present at its original offset, the records removed are exactly
//! the shadowed ones (and the tombstones past their retention), every batch is a valid
//! stored batch at its original offsets, and a reader from the beginning ends with the
//! same key → value map as before.

mod common;

use common::{records_of as read_all, table as final_map, Records as Read, CODECS};
use proptest::prelude::*;
use spate_engine::batch::{self, BatchBuilder, Compression, ProducerFields};
use spate_engine::compact::{self, Cleaned, KeyMap};
use spate_engine::limits::DECOMPRESSED_BATCH_BYTES_MAX;
use spate_engine::{LeaderEpoch, Offset};

/// One record: a key (or none) and a value (or none: with a key, a tombstone).
type Record = (Option<u8>, Option<Vec<u8>>);

fn key_bytes(key: u8) -> Vec<u8> {
    format!("key-{key}").into_bytes()
}

/// The records as stored batches from offset 0: each batch `(codec, idempotent, count)`
/// takes the next `count` records.
fn batches(records: &[Record], shapes: &[(usize, bool, usize)]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut next = 0;
    for (i, &(codec, idempotent, count)) in shapes.iter().enumerate() {
        let take = count.min(records.len() - next);
        if take == 0 {
            break;
        }
        let mut builder = BatchBuilder::new();
        for (key, value) in &records[next..next + take] {
            let key = key.map(key_bytes);
            builder.push(1_000 + next as i64, key.as_deref(), value.as_deref());
        }
        let producer = idempotent.then_some(ProducerFields {
            id: 7,
            epoch: 0,
            base_sequence: next as i32,
        });
        let mut bytes = Vec::new();
        builder
            .finish(CODECS[codec % CODECS.len()], producer, &mut bytes)
            .unwrap();
        batch::patch(&mut bytes, Offset(next as i64), LeaderEpoch(i as i32));
        out.push(bytes);
        next += take;
    }
    out
}

fn workload() -> impl Strategy<Value = (Vec<Record>, Vec<(usize, bool, usize)>, bool)> {
    let record = (
        prop::option::weighted(0.9, 0u8..12),
        prop::option::weighted(0.8, prop::collection::vec(any::<u8>(), 0..40)),
    );
    (
        prop::collection::vec(record, 1..200),
        prop::collection::vec((0usize..5, any::<bool>(), 1usize..30), 1..40),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn cleaning_keeps_exactly_each_keys_latest_record((records, shapes, tombstones_expired) in workload()) {
        let stored = batches(&records, &shapes);
        let before = read_all(&stored);
        let mut keys = KeyMap::new(1 << 20);
        for (offset, key, _) in &before {
            if let Some(key) = key {
                prop_assert!(keys.insert(key, Offset(*offset)));
            }
        }
        let keep = |r: &compact::RecordRef<'_>| match r.key {
            None => true,
            Some(key) => {
                keys.latest(key) == Some(r.offset) && !(r.is_tombstone() && tombstones_expired)
            }
        };
        let mut cleaned = Vec::new();
        for bytes in &stored {
            let header = batch::verify_stored(bytes).unwrap();
            match compact::clean_batch(bytes, DECOMPRESSED_BATCH_BYTES_MAX, keep).unwrap() {
                Cleaned::Kept => cleaned.push(bytes.clone()),
                Cleaned::Rewritten(new) => {
                    let rewritten = batch::verify_stored(&new).unwrap();
                    prop_assert_eq!(rewritten.base_offset, header.base_offset);
                    prop_assert_eq!(rewritten.last_offset(), header.last_offset());
                    cleaned.push(new);
                }
                Cleaned::Removed => prop_assert!(header.producer_id < 0),
            }
        }
        // A follower takes every cleaned batch, and the rest of an empty one from any
        // offset inside it.
        for bytes in &cleaned {
            let header = batch::validate_replicated(bytes, usize::MAX);
            prop_assert!(header.is_ok(), "{:?}", header);
            let header = header.unwrap();
            if header.record_count == 0 {
                for from in header.base_offset.0 + 1..=header.last_offset().0 {
                    let rest = compact::empty_batch_from(&header, Offset(from));
                    let cut = batch::validate_replicated(&rest, usize::MAX).unwrap();
                    prop_assert_eq!(
                        (cut.base_offset, cut.last_offset(), cut.producer_id, cut.record_count),
                        (Offset(from), header.last_offset(), header.producer_id, 0)
                    );
                }
            }
        }
        let after = read_all(&cleaned);
        // Exactly the expected survivors, at their original offsets, in order.
        let expected: Read = before
            .iter()
            .filter(|(offset, key, value)| match key {
                None => true,
                Some(k) => {
                    keys.latest(k) == Some(Offset(*offset))
                        && !(value.is_none() && tombstones_expired)
                }
            })
            .cloned()
            .collect();
        prop_assert_eq!(&after, &expected);
        // A reader from the beginning sees the same table.
        prop_assert_eq!(final_map(&after), final_map(&before));
        // Offsets stay increasing from batch to batch, and no batch was lost whole
        // unless it was not an idempotent producer's.
        let mut last = -1;
        for bytes in &cleaned {
            let header = batch::verify_stored(bytes).unwrap();
            prop_assert!(header.base_offset.0 > last);
            last = header.last_offset().0;
        }
        let idempotent_before = stored.iter().filter(|b| batch::verify_stored(b).unwrap().producer_id >= 0).count();
        let idempotent_after = cleaned.iter().filter(|b| batch::verify_stored(b).unwrap().producer_id >= 0).count();
        prop_assert_eq!(idempotent_before, idempotent_after);
    }
}

#[test]
fn control_batches_are_kept_whole() {
    let mut marker = batch::encode_leader_marker(1_000);
    batch::patch(&mut marker, Offset(5), LeaderEpoch(3));
    let cleaned = compact::clean_batch(&marker, DECOMPRESSED_BATCH_BYTES_MAX, |_| false).unwrap();
    assert_eq!(cleaned, Cleaned::Kept);
}

#[test]
fn a_batch_that_inflates_past_the_bound_is_refused() {
    let mut builder = BatchBuilder::new();
    let value = vec![0u8; 64 * 1024];
    for i in 0..64 {
        builder.push(i, Some(b"k"), Some(&value));
    }
    let mut bytes = Vec::new();
    builder.finish(Compression::Zstd, None, &mut bytes).unwrap();
    assert!(bytes.len() < 64 * 1024, "zeros compress well");
    let refused = compact::clean_batch(&bytes, 1024 * 1024, |_| false);
    assert!(refused.is_err(), "{refused:?}");
}

#[test]
fn the_key_map_stays_within_its_budget() {
    let mut keys = KeyMap::new(10 * 1024);
    let mut noted = 0;
    for i in 0..10_000 {
        if !keys.insert(format!("key-{i}").as_bytes(), Offset(i)) {
            break;
        }
        noted += 1;
    }
    assert!(noted > 0 && noted < 10_000, "{noted}");
    // A key already noted moves on even when the map is full.
    assert!(keys.insert(b"key-0", Offset(20_000)));
    assert_eq!(keys.latest(b"key-0"), Some(Offset(20_000)));
    assert_eq!(keys.len(), noted);
}
