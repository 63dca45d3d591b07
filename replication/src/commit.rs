//! The leader's commit rule (Kafka's high watermark under a majority quorum).
//!
//! The commit index is the majority-th highest durable end among the voters (the
//! leader's own included), but it moves only when the record just below the new index
//! was written in the leader's current epoch: counting replicas cannot commit an older
//! epoch's entries (Raft §5.4.2), which a new leader commits by committing its own
//! first batch after them. It never moves backwards.

use spate_engine::{LeaderEpoch, Offset};

use crate::epochs::EpochCache;

/// The new commit index from the voters' durable ends (`matches`, the leader's
/// included; learners excluded), or `current` when it may not move.
pub fn quorum_commit(
    current: Offset,
    matches: &[Offset],
    leader_epoch: LeaderEpoch,
    cache: &EpochCache,
) -> Offset {
    assert!(!matches.is_empty(), "a quorum has voters");
    let mut sorted = matches.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    // With n voters, a majority is n / 2 + 1: the (n / 2)-th highest (0-based).
    let candidate = sorted[matches.len() / 2];
    if candidate <= current {
        return current;
    }
    match cache.epoch_at(Offset(candidate.0 - 1)) {
        Some(epoch) if epoch == leader_epoch => candidate,
        _ => current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(n: i64) -> Offset {
        Offset(n)
    }

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        let mut c = EpochCache::new();
        for &(epoch, start) in entries {
            c.assign(LeaderEpoch(epoch), o(start));
        }
        c
    }

    #[test]
    fn a_majority_of_durable_ends_commits() {
        let c = cache(&[(1, 0)]);
        let e = LeaderEpoch(1);
        assert_eq!(quorum_commit(o(0), &[o(10), o(7), o(3)], e, &c), o(7));
        assert_eq!(
            quorum_commit(o(0), &[o(10), o(7), o(3), o(2), o(9)], e, &c),
            o(7)
        );
        assert_eq!(
            quorum_commit(o(0), &[o(10), o(3)], e, &c),
            o(3),
            "2 voters need both"
        );
        assert_eq!(quorum_commit(o(0), &[o(4)], e, &c), o(4));
    }

    #[test]
    fn it_never_moves_backwards() {
        let c = cache(&[(1, 0)]);
        assert_eq!(
            quorum_commit(o(8), &[o(10), o(5), o(3)], LeaderEpoch(1), &c),
            o(8)
        );
    }

    /// Raft's figure 8: a majority holding an entry of an old epoch does not commit it;
    /// once the leader's own-epoch entry above it reaches a majority, both commit.
    #[test]
    fn an_older_epochs_entries_commit_only_under_one_of_the_current_epoch() {
        let c = cache(&[(2, 0), (4, 5)]);
        let leader = LeaderEpoch(4);
        // Offsets 0..5 are epoch 2; a majority holds 5 (all of epoch 2), none of epoch 4.
        assert_eq!(quorum_commit(o(2), &[o(7), o(5), o(5)], leader, &c), o(2));
        // A majority now holds 6: the record at 5 is epoch 4, so 6 commits (and with it
        // everything of epoch 2 below).
        assert_eq!(quorum_commit(o(2), &[o(7), o(6), o(5)], leader, &c), o(6));
    }
}
