//! The epoch cache: for each leader epoch in a replica's log, the offset of its first
//! batch. It answers where an epoch ends (OffsetForLeaderEpoch, KIP-279), and where a
//! follower's log stops agreeing with its leader's (KIP-101/KIP-320), so a follower
//! truncates exactly its divergent suffix and never, blindly, to the high watermark.
//!
//! Invariants, asserted on every change: epochs strictly increase along the cache, and
//! start offsets do not decrease. Appending a batch of epoch E at offset O either extends
//! the latest epoch or starts E at O; a newer epoch starting where an older one started
//! replaces it (the older epoch then has no batch in the log). Truncating the log to O
//! removes the epochs that start at or past O.
//!
//! Persisted as `leader-epoch-checkpoint`: an rkyv archive in the engine's checksummed
//! metadata envelope (`spate_engine::meta`, kind 5); a file that fails the CRC or rkyv's
//! validation reads as `None` and the cache is rebuilt from the log's batches.

use spate_engine::meta::{self, FileKind};
use spate_engine::{LeaderEpoch, Offset};

/// Epochs and their start offsets, oldest first.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct EpochCache {
    entries: Vec<(LeaderEpoch, Offset)>,
}

/// Where a follower's log diverges from the leader's: the follower's log agrees with
/// the leader's in `epoch` only below `end_offset` and must truncate there (or lower, to
/// its own end of that epoch) before fetching again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Diverging {
    pub epoch: LeaderEpoch,
    pub end_offset: Offset,
}

impl EpochCache {
    pub fn new() -> EpochCache {
        EpochCache::default()
    }

    /// The newest epoch and its start, if any.
    pub fn latest(&self) -> Option<(LeaderEpoch, Offset)> {
        self.entries.last().copied()
    }

    pub fn entries(&self) -> &[(LeaderEpoch, Offset)] {
        &self.entries
    }

    /// Records that a batch of `epoch` starts at `offset` (called for every batch
    /// appended, leader or follower). A batch of an older epoch than the latest is a
    /// bug in the caller: logs only ever gain newer epochs.
    pub fn assign(&mut self, epoch: LeaderEpoch, offset: Offset) {
        match self.entries.last() {
            Some(&(latest, _)) if latest == epoch => return,
            Some(&(latest, start)) => {
                assert!(epoch > latest, "epoch {epoch:?} appended after {latest:?}");
                assert!(
                    offset >= start,
                    "epoch {epoch:?} starts at {offset:?} before {start:?}"
                );
            }
            None => {}
        }
        // An older epoch that started here has no batch left below `offset`.
        while self
            .entries
            .last()
            .is_some_and(|&(_, start)| start >= offset)
        {
            self.entries.pop();
        }
        self.entries.push((epoch, offset));
        self.check();
    }

    /// The log was truncated to `log_end` (everything at or past it removed).
    pub fn truncate_to(&mut self, log_end: Offset) {
        while self
            .entries
            .last()
            .is_some_and(|&(_, start)| start >= log_end)
        {
            self.entries.pop();
        }
    }

    /// The log's start moved to `log_start` (retention): the epoch covering it now
    /// starts there, and epochs entirely below it are dropped.
    pub fn truncate_start(&mut self, log_start: Offset) {
        let covering = self
            .entries
            .iter()
            .rposition(|&(_, start)| start <= log_start);
        if let Some(i) = covering {
            self.entries.drain(..i);
            self.entries[0].1 = log_start;
        }
        self.check();
    }

    /// The epoch of the record at `offset`, if the cache covers it.
    pub fn epoch_at(&self, offset: Offset) -> Option<LeaderEpoch> {
        self.entries
            .iter()
            .rev()
            .find(|&&(_, start)| start <= offset)
            .map(|&(epoch, _)| epoch)
    }

    /// OffsetForLeaderEpoch: the largest epoch ≤ `epoch` in this log and the offset where
    /// it ends (the next epoch's start, or `log_end` for the latest). `None` when every
    /// epoch here is newer than `epoch` (Kafka answers UNDEFINED then).
    pub fn end_of(&self, epoch: LeaderEpoch, log_end: Offset) -> Option<(LeaderEpoch, Offset)> {
        let i = self.entries.iter().rposition(|&(e, _)| e <= epoch)?;
        let end = self.entries.get(i + 1).map_or(log_end, |&(_, start)| start);
        Some((self.entries[i].0, end))
    }

    /// The leader's check of a follower's fetch: the follower's log ends at
    /// `fetch_offset` with a batch of `last_fetched_epoch` before it, and starts at
    /// `follower_start`. `None` when the two logs agree up to `fetch_offset`; otherwise
    /// where the follower must truncate.
    pub fn diverging(
        &self,
        (last_fetched_epoch, fetch_offset): (LeaderEpoch, Offset),
        follower_start: Offset,
        log_end: Offset,
    ) -> Option<Diverging> {
        if last_fetched_epoch.0 < 0 && fetch_offset == follower_start && fetch_offset <= log_end {
            // An empty follower agrees with any leader whose log reaches its start: a new
            // replica at offset 0, or one that started over at a leader's log start,
            // below which every offset is committed.
            return None;
        }
        match (
            self.end_of(last_fetched_epoch, log_end),
            self.entries.first(),
        ) {
            (Some((epoch, end)), _) if epoch == last_fetched_epoch && fetch_offset <= end => None,
            (Some((epoch, end)), _) => Some(Diverging {
                epoch,
                end_offset: end.min(fetch_offset),
            }),
            // Every epoch here is newer: this cache starts past the follower's epoch (the
            // leader started over at a log start, or its first epochs went). As Kafka's
            // epoch cache answers, the follower's epoch ends, for this leader, where the
            // cache starts: a follower ending there agrees (everything below it is
            // committed), one ending past it cuts back to it.
            (None, Some(&(_, first))) if fetch_offset <= first => None,
            (None, Some(&(_, first))) => Some(Diverging {
                epoch: last_fetched_epoch,
                end_offset: first,
            }),
            // An empty leader: the follower keeps nothing.
            (None, None) => Some(Diverging {
                epoch: LeaderEpoch(-1),
                end_offset: Offset::ZERO,
            }),
        }
    }

    /// The follower's side of a divergence answer: where its own log must be cut so
    /// that what remains agrees with the leader's.
    pub fn truncation_point(&self, diverging: Diverging, log_end: Offset) -> Offset {
        let log_start = self
            .entries
            .first()
            .map_or(Offset::ZERO, |&(_, start)| start);
        // Our newest epoch not newer than the leader's answer ends where our copy of
        // the agreed history ends; with none, nothing of ours is agreed.
        let ours = self
            .end_of(diverging.epoch, log_end)
            .map_or(log_start, |(_, end)| end);
        ours.min(diverging.end_offset)
    }

    /// The cache as a `leader-epoch-checkpoint` file.
    pub fn encode(&self) -> Vec<u8> {
        meta::encode(FileKind::LeaderEpochCheckpoint, self)
    }

    /// A cache from its checkpoint file; `None` if the file is torn, corrupt, or breaks
    /// the cache's invariants.
    pub fn decode(bytes: &[u8]) -> Option<EpochCache> {
        let cache: EpochCache = meta::decode(FileKind::LeaderEpochCheckpoint, bytes)?;
        cache.valid().then_some(cache)
    }

    fn valid(&self) -> bool {
        self.entries
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
    }

    fn check(&self) {
        assert!(self.valid(), "epoch cache out of order: {:?}", self.entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(n: i32) -> LeaderEpoch {
        LeaderEpoch(n)
    }
    fn o(n: i64) -> Offset {
        Offset(n)
    }

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        let mut c = EpochCache::new();
        for &(epoch, start) in entries {
            c.assign(e(epoch), o(start));
        }
        c
    }

    #[test]
    fn epochs_end_where_the_next_begins() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert_eq!(c.end_of(e(1), o(40)), Some((e(1), o(10))));
        assert_eq!(c.end_of(e(2), o(40)), Some((e(1), o(10))));
        assert_eq!(c.end_of(e(3), o(40)), Some((e(3), o(25))));
        assert_eq!(c.end_of(e(9), o(40)), Some((e(4), o(40))));
        assert_eq!(c.end_of(e(0), o(40)), None);
        assert_eq!(c.epoch_at(o(9)), Some(e(1)));
        assert_eq!(c.epoch_at(o(10)), Some(e(3)));
    }

    #[test]
    fn a_newer_epoch_starting_at_the_same_offset_replaces_the_older() {
        let mut c = cache(&[(1, 0), (2, 10)]);
        c.assign(e(3), o(10));
        assert_eq!(c.entries(), &[(e(1), o(0)), (e(3), o(10))]);
        c.assign(e(3), o(12));
        assert_eq!(
            c.entries().len(),
            2,
            "a later batch of the latest epoch changes nothing"
        );
    }

    #[test]
    fn truncation_removes_epochs_at_or_past_the_cut_and_retention_moves_the_start() {
        let mut c = cache(&[(1, 0), (2, 10), (5, 20)]);
        c.truncate_to(o(20));
        assert_eq!(c.latest(), Some((e(2), o(10))));
        c.truncate_start(o(15));
        assert_eq!(c.entries(), &[(e(2), o(15))]);
    }

    /// KIP-101's example: the follower's log has batches of epoch 2 that the leader
    /// never had; they must go, and only they.
    #[test]
    fn a_follower_truncates_exactly_its_divergent_suffix() {
        let leader = cache(&[(1, 0), (3, 8)]);
        let follower = cache(&[(1, 0), (2, 8)]);
        // The follower's log ends at 12 with a batch of epoch 2.
        let d = leader
            .diverging((e(2), o(12)), o(0), o(20))
            .expect("diverges");
        assert_eq!(
            d,
            Diverging {
                epoch: e(1),
                end_offset: o(8)
            }
        );
        assert_eq!(follower.truncation_point(d, o(12)), o(8));
        // After truncating to 8 with epoch 1 before it, the logs agree.
        assert_eq!(leader.diverging((e(1), o(8)), o(0), o(20)), None);
    }

    #[test]
    fn a_follower_ahead_within_an_epoch_is_cut_to_the_leaders_end_of_it() {
        // The follower holds epoch 1 up to 15; the leader's epoch 1 ended at 10.
        let leader = cache(&[(1, 0), (2, 10)]);
        let d = leader
            .diverging((e(1), o(15)), o(0), o(30))
            .expect("diverges");
        assert_eq!(
            d,
            Diverging {
                epoch: e(1),
                end_offset: o(10)
            }
        );
        let follower = cache(&[(1, 0)]);
        assert_eq!(follower.truncation_point(d, o(15)), o(10));
        assert_eq!(leader.diverging((e(2), o(30)), o(0), o(30)), None);
        assert_eq!(leader.diverging((e(-1), o(0)), o(0), o(30)), None);
    }

    /// A leader whose cache starts past the follower's last epoch (it started over at a
    /// log start, then led): a follower ending where the cache starts agrees, one ending
    /// past it cuts back to it, as Kafka's epoch cache answers.
    #[test]
    fn a_cache_starting_past_the_followers_epoch_ends_that_epoch_at_its_start() {
        let leader = cache(&[(4, 200)]);
        assert_eq!(leader.diverging((e(3), o(200)), o(0), o(260)), None);
        let d = leader
            .diverging((e(3), o(250)), o(0), o(260))
            .expect("diverges");
        assert_eq!(
            d,
            Diverging {
                epoch: e(3),
                end_offset: o(200)
            }
        );
        let follower = cache(&[(1, 0), (3, 100)]);
        assert_eq!(follower.truncation_point(d, o(250)), o(200));
        assert_eq!(
            EpochCache::new().diverging((e(3), o(5)), o(0), o(0)),
            Some(Diverging {
                epoch: e(-1),
                end_offset: o(0)
            })
        );
    }

    /// A follower that started over at a leader's log start holds no record and no
    /// epoch: it agrees with a leader whose log reaches its start. One that holds records
    /// without epochs (it does not start where it ends), or one starting past the
    /// leader's end, does not.
    #[test]
    fn an_empty_follower_agrees_at_its_start_within_the_leaders_log() {
        let leader = cache(&[(1, 0), (2, 10)]);
        assert_eq!(leader.diverging((e(-1), o(25)), o(25), o(30)), None);
        assert_eq!(leader.diverging((e(-1), o(30)), o(30), o(30)), None);
        assert!(leader.diverging((e(-1), o(25)), o(0), o(30)).is_some());
        assert!(leader.diverging((e(-1), o(31)), o(31), o(30)).is_some());
    }

    #[test]
    fn checkpoints_round_trip_and_damage_reads_as_none() {
        let c = cache(&[(1, 0), (4, 100), (7, 2_000)]);
        let bytes = c.encode();
        assert_eq!(EpochCache::decode(&bytes), Some(c));
        for cut in 0..bytes.len() {
            assert_eq!(EpochCache::decode(&bytes[..cut]), None, "torn at {cut}");
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(EpochCache::decode(&flipped), None);
    }

    proptest! {
        /// Model: a log as the epoch of each offset. Any sequence of appends and
        /// truncations keeps the cache equal to the model's epoch boundaries, and
        /// `diverging` + `truncation_point` leave two random logs agreeing.
        #[test]
        fn the_cache_tracks_a_model_log(ops in proptest::collection::vec((0u8..3, 1i64..6), 1..40)) {
            let mut log: Vec<i32> = Vec::new();
            let mut c = EpochCache::new();
            let mut epoch = 0;
            for (op, n) in ops {
                match op {
                    0 | 1 => {
                        if op == 1 { epoch += 1; }
                        for _ in 0..n {
                            c.assign(e(epoch), o(log.len() as i64));
                            log.push(epoch);
                        }
                    }
                    _ => {
                        let cut = log.len().saturating_sub(n as usize);
                        log.truncate(cut);
                        c.truncate_to(o(cut as i64));
                    }
                }
                for (i, &ep) in log.iter().enumerate() {
                    prop_assert_eq!(c.epoch_at(o(i as i64)), Some(e(ep)));
                }
            }
        }

        #[test]
        fn divergence_leaves_logs_that_agree(
            shared in 0usize..10,
            leader_tail in proptest::collection::vec(1i32..4, 0..10),
            follower_tail in proptest::collection::vec(1i32..4, 0..10),
        ) {
            // Both logs share `shared` records of epoch 1; then each gains records of
            // newer epochs, the leader's tail of epochs above the follower's (the leader
            // won a later election), as happens after a failover.
            let mut leader_log = vec![1; shared];
            let mut follower_log = vec![1; shared];
            let mut fe = 1;
            for step in follower_tail { fe += step; follower_log.push(fe); }
            let mut le = fe;
            for step in leader_tail { le += step; leader_log.push(le); }
            let build = |log: &[i32]| {
                let mut c = EpochCache::new();
                for (i, &ep) in log.iter().enumerate() { c.assign(e(ep), o(i as i64)); }
                c
            };
            let leader = build(&leader_log);
            let follower = build(&follower_log);
            let mut end = follower_log.len();
            let mut f = follower.clone();
            // Fetch, truncate on divergence, repeat: it settles in a few rounds.
            for _ in 0..10 {
                let last = if end == 0 { e(-1) } else { e(follower_log[end - 1]) };
                match leader.diverging((last, o(end as i64)), o(0), o(leader_log.len() as i64)) {
                    None => break,
                    Some(d) => {
                        let cut = f.truncation_point(d, o(end as i64));
                        prop_assert!(cut.0 <= end as i64);
                        end = cut.0 as usize;
                        f.truncate_to(cut);
                    }
                }
            }
            prop_assert!(end >= shared.min(end), "never below what both agree on");
            prop_assert!(end <= leader_log.len());
            prop_assert_eq!(&follower_log[..end], &leader_log[..end]);
            prop_assert!(end >= shared, "kept the shared prefix: {} < {}", end, shared);
        }
    }
}
