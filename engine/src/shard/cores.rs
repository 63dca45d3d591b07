//! Which cores the shards run on (`spate serve --cpuset`).
//!
//! One broker per machine pins shard i to core i. Brokers that share a machine must not
//! all pin their shard 0 to core 0, so each can be given its own list of cores, or left
//! unpinned for the kernel to place. A listed core must exist on this machine: a typo
//! is refused at start-up, not discovered as an idle core.

/// The cores shards are pinned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSet {
    /// Shard i on the machine's i-th core (wrapping): one broker per machine.
    All,
    /// Shard i on the i-th core listed (wrapping).
    Listed(Vec<usize>),
    /// Not pinned: the kernel places the shards (tests, or brokers sharing few cores).
    Unpinned,
}

/// The ids of the cores this process may run on.
pub fn machine_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

impl CoreSet {
    /// `all`, `none`, or a list of cores and ranges such as `0-3,6`, each of which must
    /// be in `available`.
    pub fn parse(text: &str, available: &[usize]) -> Result<CoreSet, String> {
        match text.trim() {
            "all" => return Ok(CoreSet::All),
            "none" => return Ok(CoreSet::Unpinned),
            _ => {}
        }
        let mut cores = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (core_number(a)?, core_number(b)?),
                None => (core_number(part)?, core_number(part)?),
            };
            if first > last {
                return Err(format!("core range {part} runs backwards"));
            }
            for core in first..=last {
                if !available.contains(&core) {
                    return Err(format!(
                        "core {core} is not one this process may run on (it may run on {available:?})"
                    ));
                }
                if !cores.contains(&core) {
                    cores.push(core);
                }
            }
        }
        Ok(CoreSet::Listed(cores))
    }

    /// The core shard `shard` is pinned to, if any.
    pub fn core_for(&self, shard: usize, machine: &[usize]) -> Option<usize> {
        let list = match self {
            CoreSet::All => machine,
            CoreSet::Listed(list) => list.as_slice(),
            CoreSet::Unpinned => return None,
        };
        list.get(shard % list.len().max(1)).copied()
    }
}

fn core_number(text: &str) -> Result<usize, String> {
    text.trim().parse().map_err(|_| {
        format!("{text:?} is not a core number (expected all, none, or a list such as 0-3,6)")
    })
}

#[cfg(test)]
mod tests {
    use super::CoreSet;

    #[test]
    fn lists_ranges_and_words_parse_and_unknown_cores_are_refused() {
        let machine = [0, 1, 2, 3];
        assert_eq!(CoreSet::parse("all", &machine), Ok(CoreSet::All));
        assert_eq!(CoreSet::parse("none", &machine), Ok(CoreSet::Unpinned));
        assert_eq!(
            CoreSet::parse("3, 0-1,1", &machine),
            Ok(CoreSet::Listed(vec![3, 0, 1]))
        );
        for bad in ["", "4", "1-5", "2-1", "x", "0,,1", "-1"] {
            assert!(CoreSet::parse(bad, &machine).is_err(), "{bad:?}");
        }
        let listed = CoreSet::Listed(vec![3, 1]);
        assert_eq!(
            (0..3)
                .map(|s| listed.core_for(s, &machine))
                .collect::<Vec<_>>(),
            vec![Some(3), Some(1), Some(3)]
        );
        assert_eq!(CoreSet::All.core_for(5, &machine), Some(1));
        assert_eq!(CoreSet::Unpinned.core_for(0, &machine), None);
        assert_eq!(CoreSet::All.core_for(0, &[]), None);
    }
}
