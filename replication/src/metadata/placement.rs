//! Where a new topic's replicas go: Kafka's rack-unaware assignment. Partition `p`'s
//! first replica (its preferred leader) is broker `(start + p) mod n`, so leaders are
//! spread evenly; the other replicas follow it at a distance that shifts by one every
//! `n` partitions, so the followers of one broker's partitions are spread over the
//! others too. `start` is chosen by the caller; the controller passes the number of
//! partitions already placed, so leaders stay balanced across topics, and the same
//! inputs give the same assignment on every broker.

use super::MetadataError;

/// Replica lists for `partitions` new partitions numbered from `first_partition`, over
/// `brokers` (sorted ids of the registered brokers), `replication_factor` each.
pub fn assign(
    brokers: &[u32],
    first_partition: u32,
    partitions: u32,
    replication_factor: u32,
    start: u32,
) -> Result<Vec<Vec<u32>>, MetadataError> {
    let n = brokers.len() as u32;
    if replication_factor == 0 || replication_factor > n {
        return Err(MetadataError::InvalidReplicationFactor {
            asked: replication_factor,
            brokers: n,
        });
    }
    debug_assert!(
        brokers.windows(2).all(|w| w[0] < w[1]),
        "brokers sorted, distinct"
    );
    let mut out = Vec::with_capacity(partitions as usize);
    for i in 0..partitions {
        let p = first_partition + i;
        let first = (start + p) % n;
        // The followers' distance from the leader: 1..n-1, shifting each round of n
        // (with one broker there are no followers, and no division by n - 1).
        let shift = start + p / n;
        let mut replicas = vec![brokers[first as usize]];
        for j in 0..replication_factor - 1 {
            let index = (first + 1 + (shift + j) % (n - 1)) % n;
            replicas.push(brokers[index as usize]);
        }
        debug_assert_eq!(
            replicas
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            replicas.len(),
            "a partition's replicas are distinct"
        );
        out.push(replicas);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    proptest! {
        #[test]
        fn replicas_are_distinct_and_leaders_and_replicas_balanced(
            n in 1u32..8,
            partitions in 1u32..200,
            rf_seed in 0u32..8,
            start in 0u32..50,
        ) {
            let brokers: Vec<u32> = (1..=n).map(|b| b * 10).collect();
            let rf = 1 + rf_seed % n;
            let placed = assign(&brokers, 0, partitions, rf, start).unwrap();
            prop_assert_eq!(placed.len(), partitions as usize);
            let mut leaders: BTreeMap<u32, u32> = BTreeMap::new();
            let mut replicas: BTreeMap<u32, u32> = BTreeMap::new();
            for r in &placed {
                prop_assert_eq!(r.len(), rf as usize);
                prop_assert_eq!(r.iter().collect::<BTreeSet<_>>().len(), r.len());
                *leaders.entry(r[0]).or_default() += 1;
                for b in r {
                    *replicas.entry(*b).or_default() += 1;
                }
            }
            // Leaders differ by at most one between brokers.
            let most = leaders.values().max().copied().unwrap_or(0);
            let least = if leaders.len() == n as usize { leaders.values().min().copied().unwrap() } else { 0 };
            prop_assert!(most - least <= 1, "leaders {:?}", leaders);
            // Replicas per broker stay within one round of each other.
            let most = replicas.values().max().copied().unwrap_or(0);
            let least = if replicas.len() == n as usize { replicas.values().min().copied().unwrap() } else { 0 };
            prop_assert!(most - least <= rf, "replicas {:?}", replicas);
        }
    }

    #[test]
    fn a_replication_factor_above_the_brokers_is_refused() {
        assert!(matches!(
            assign(&[1, 2], 0, 3, 3, 0),
            Err(MetadataError::InvalidReplicationFactor {
                asked: 3,
                brokers: 2
            })
        ));
        assert!(assign(&[1, 2], 0, 3, 0, 0).is_err());
        assert_eq!(
            assign(&[1, 2, 3], 0, 3, 3, 0).unwrap(),
            vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]
        );
    }
}
