//! Idempotent producers on one partition: for each producer id, its epoch and its last
//! `PRODUCER_BATCHES_CACHED` batches (sequence range and assigned offsets).
//!
//! A batch from a producer (producerId >= 0) is checked when its offsets are assigned,
//! under the partition's append gate, so checks and appends are atomic:
//! - an older epoch is refused (a fenced producer); a newer one starts over at sequence 0;
//! - a batch equal to a cached one (same first and last sequence) is a retry: it is not
//!   appended again and gets the offsets of the first time;
//! - otherwise its first sequence must follow the last cached one (wrapping at
//!   i32::MAX), or it is refused as out of order.
//!
//! Kept in memory, bounded by `PARTITION_PRODUCERS_MAX` (least recently used forgotten).
//! Saved as a snapshot whenever a segment rolls, and rebuilt on open from that snapshot
//! plus the active segment's batch headers.

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;
use crate::error::EngineError;
use crate::limits::{PARTITION_PRODUCERS_MAX, PRODUCER_BATCHES_CACHED};
use crate::types::Offset;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CachedBatch {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: Offset,
    last_offset: Offset,
}

#[derive(Debug, Clone)]
struct Producer {
    epoch: i16,
    batches: VecDeque<CachedBatch>,
    last_used: u64,
}

/// What to do with a producer's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    Append,
    /// A retry of a batch already in the log at these offsets.
    Duplicate {
        base_offset: Offset,
        last_offset: Offset,
    },
}

fn last_sequence(header: &BatchHeader) -> i32 {
    ((i64::from(header.base_sequence) + i64::from(header.last_offset_delta))
        % (i64::from(i32::MAX) + 1)) as i32
}

fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

/// The producer state of one partition.
#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
    clock: u64,
}

impl ProducerStates {
    /// Checks a batch (with its producer's fields) before offsets are assigned.
    pub fn check(&self, header: &BatchHeader) -> Result<Verdict, EngineError> {
        if header.producer_id < 0 {
            return Ok(Verdict::Append);
        }
        let producer_id = header.producer_id;
        let Some(state) = self.producers.get(&producer_id) else {
            return if header.base_sequence == 0 {
                Ok(Verdict::Append)
            } else {
                Err(EngineError::UnknownProducerId {
                    producer_id,
                    sequence: header.base_sequence,
                })
            };
        };
        if header.producer_epoch < state.epoch {
            return Err(EngineError::InvalidProducerEpoch {
                producer_id,
                current: state.epoch,
                got: header.producer_epoch,
            });
        }
        if header.producer_epoch > state.epoch {
            return if header.base_sequence == 0 {
                Ok(Verdict::Append)
            } else {
                Err(EngineError::OutOfOrderSequence {
                    producer_id,
                    expected: 0,
                    got: header.base_sequence,
                })
            };
        }
        let last = last_sequence(header);
        if let Some(seen) = state
            .batches
            .iter()
            .find(|b| b.first_sequence == header.base_sequence && b.last_sequence == last)
        {
            return Ok(Verdict::Duplicate {
                base_offset: seen.base_offset,
                last_offset: seen.last_offset,
            });
        }
        let expected = state
            .batches
            .back()
            .map_or(0, |b| next_sequence(b.last_sequence));
        if header.base_sequence != expected {
            return Err(EngineError::OutOfOrderSequence {
                producer_id,
                expected,
                got: header.base_sequence,
            });
        }
        Ok(Verdict::Append)
    }

    /// Records a batch appended at `base_offset` (after `check` said `Append`, or when
    /// rebuilding from the log).
    pub fn record(&mut self, header: &BatchHeader, base_offset: Offset) {
        if header.producer_id < 0 {
            return;
        }
        self.clock += 1;
        let clock = self.clock;
        if !self.producers.contains_key(&header.producer_id)
            && self.producers.len() >= PARTITION_PRODUCERS_MAX
        {
            if let Some(oldest) = self
                .producers
                .iter()
                .min_by_key(|(_, p)| p.last_used)
                .map(|(id, _)| *id)
            {
                self.producers.remove(&oldest);
            }
        }
        let state = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| Producer {
                epoch: header.producer_epoch,
                batches: VecDeque::new(),
                last_used: clock,
            });
        if header.producer_epoch != state.epoch {
            state.epoch = header.producer_epoch;
            state.batches.clear();
        }
        state.last_used = clock;
        let last_offset = Offset(base_offset.0 + i64::from(header.last_offset_delta));
        state.batches.push_back(CachedBatch {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset,
            last_offset,
        });
        while state.batches.len() > PRODUCER_BATCHES_CACHED {
            state.batches.pop_front();
        }
    }
}

/// One producer in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SnapshotProducer {
    pub producer_id: i64,
    pub epoch: i16,
    /// Oldest first: (first sequence, last sequence, base offset, last offset).
    pub batches: Vec<(i32, i32, i64, i64)>,
}

/// The producers of a partition as of `offset` (the base offset of the segment that was
/// started when it was taken), stored as `producers.snapshot` (metadata envelope kind 4).
/// On open, it seeds the state that the active segment's batches are then replayed onto,
/// so producers whose last batches sit in older segments are still known.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ProducerSnapshot {
    pub offset: i64,
    /// Least recently used first, so a restore keeps the same eviction order.
    pub producers: Vec<SnapshotProducer>,
}

impl ProducerStates {
    /// The state now, to be stored as of `offset`.
    pub fn snapshot(&self, offset: Offset) -> ProducerSnapshot {
        let mut producers: Vec<(&i64, &Producer)> = self.producers.iter().collect();
        producers.sort_by_key(|(_, p)| p.last_used);
        ProducerSnapshot {
            offset: offset.0,
            producers: producers
                .into_iter()
                .map(|(id, p)| SnapshotProducer {
                    producer_id: *id,
                    epoch: p.epoch,
                    batches: p
                        .batches
                        .iter()
                        .map(|b| {
                            (
                                b.first_sequence,
                                b.last_sequence,
                                b.base_offset.0,
                                b.last_offset.0,
                            )
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The state a snapshot describes. Entries beyond the bounds (from a broker built
    /// with larger ones) are dropped, oldest first.
    pub fn restore(snapshot: &ProducerSnapshot) -> ProducerStates {
        let mut states = ProducerStates::default();
        let keep = snapshot
            .producers
            .len()
            .saturating_sub(PARTITION_PRODUCERS_MAX);
        for entry in &snapshot.producers[keep..] {
            states.clock += 1;
            let skip = entry.batches.len().saturating_sub(PRODUCER_BATCHES_CACHED);
            let batches = entry.batches[skip..]
                .iter()
                .map(|&(first_sequence, last_sequence, base, last)| CachedBatch {
                    first_sequence,
                    last_sequence,
                    base_offset: Offset(base),
                    last_offset: Offset(last),
                })
                .collect();
            let producer = Producer {
                epoch: entry.epoch,
                batches,
                last_used: states.clock,
            };
            states.producers.insert(entry.producer_id, producer);
        }
        states
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LeaderEpoch, Timestamp};

    #[test]
    fn a_restored_snapshot_judges_batches_as_the_original_did() {
        let mut s = ProducerStates::default();
        let mut next_offset = 0;
        for (pid, epoch, seq, count) in [(1, 0, 0, 3), (2, 4, 0, 1), (1, 0, 3, 2), (2, 4, 1, 5)] {
            let h = header(pid, epoch, seq, count);
            assert_eq!(s.check(&h).unwrap(), Verdict::Append);
            s.record(&h, Offset(next_offset));
            next_offset += i64::from(count);
        }
        let snapshot = s.snapshot(Offset(next_offset));
        let bytes = crate::meta::encode(crate::meta::FileKind::ProducerSnapshot, &snapshot);
        let decoded: ProducerSnapshot =
            crate::meta::decode(crate::meta::FileKind::ProducerSnapshot, &bytes).unwrap();
        assert_eq!(decoded, snapshot);
        let restored = ProducerStates::restore(&decoded);
        for h in [
            header(1, 0, 3, 2), // a retry
            header(1, 0, 5, 1), // the next batch
            header(1, 0, 9, 1), // a gap
            header(2, 3, 6, 1), // a fenced epoch
            header(3, 0, 4, 1), // unknown producer
        ] {
            assert_eq!(
                format!("{:?}", restored.check(&h)),
                format!("{:?}", s.check(&h)),
                "{h:?}"
            );
        }
        assert_eq!(restored.snapshot(Offset(next_offset)), snapshot);
    }

    fn header(producer_id: i64, epoch: i16, sequence: i32, count: i32) -> BatchHeader {
        BatchHeader {
            base_offset: Offset(0),
            size: 100,
            leader_epoch: LeaderEpoch(0),
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: Timestamp(0),
            max_timestamp: Timestamp(0),
            producer_id,
            producer_epoch: epoch,
            base_sequence: sequence,
            record_count: count,
        }
    }

    #[test]
    fn duplicates_get_their_first_offsets_and_gaps_are_refused() {
        let mut s = ProducerStates::default();
        let mut offset = 0;
        for seq in [0, 3, 6] {
            let h = header(7, 0, seq, 3);
            assert_eq!(s.check(&h).unwrap(), Verdict::Append);
            s.record(&h, Offset(offset));
            offset += 3;
        }
        assert_eq!(
            s.check(&header(7, 0, 3, 3)).unwrap(),
            Verdict::Duplicate {
                base_offset: Offset(3),
                last_offset: Offset(5)
            }
        );
        assert!(matches!(
            s.check(&header(7, 0, 10, 1)),
            Err(EngineError::OutOfOrderSequence {
                expected: 9,
                got: 10,
                ..
            })
        ));
        assert!(matches!(s.check(&header(7, 0, 9, 1)), Ok(Verdict::Append)));
        assert!(matches!(
            s.check(&header(8, 0, 5, 1)),
            Err(EngineError::UnknownProducerId { .. })
        ));
        // A new epoch starts over at 0; the old epoch is fenced.
        s.record(&header(7, 1, 0, 1), Offset(9));
        assert!(matches!(
            s.check(&header(7, 0, 9, 1)),
            Err(EngineError::InvalidProducerEpoch { .. })
        ));
        assert_eq!(s.check(&header(7, 1, 1, 1)).unwrap(), Verdict::Append);
        // Only the last five batches are remembered.
        for i in 1..=6 {
            s.record(&header(7, 1, i, 1), Offset(9 + i64::from(i)));
        }
        assert!(matches!(
            s.check(&header(7, 1, 1, 1)),
            Err(EngineError::OutOfOrderSequence { .. })
        ));
        assert!(matches!(
            s.check(&header(7, 1, 6, 1)),
            Ok(Verdict::Duplicate { .. })
        ));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut s = ProducerStates::default();
        let h = header(1, 0, 0, 1);
        s.record(&h, Offset(0));
        let mut near_end = header(1, 0, i32::MAX - 1, 2);
        // Pretend the producer got there legitimately.
        s.producers
            .get_mut(&1)
            .unwrap()
            .batches
            .back_mut()
            .unwrap()
            .last_sequence = i32::MAX - 2;
        assert_eq!(s.check(&near_end).unwrap(), Verdict::Append);
        s.record(&near_end, Offset(1));
        near_end = header(1, 0, 0, 1);
        assert_eq!(
            s.check(&near_end).unwrap(),
            Verdict::Append,
            "after i32::MAX comes 0"
        );
    }
}
