//! Sending each partition's requests to its leader: the brokers of a cluster answer
//! Produce and Fetch only for the partitions they lead (NOT_LEADER_OR_FOLLOWER
//! elsewhere), as Kafka's do. The leaders come from a Metadata answer of the bootstrap
//! broker and are asked again after a leadership error. Connections are opened when
//! first needed and kept: at most one per broker the metadata names.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;

use super::lookup::{broker_addresses, metadata_of, name_of};
use super::Client;

/// A partition: topic and index.
pub type Partition = (String, i32);

#[derive(Debug)]
pub struct Router {
    bootstrap: Client,
    others: BTreeMap<String, Client>,
    leaders: BTreeMap<Partition, String>,
    topics: Vec<String>,
}

impl Router {
    /// Routes for the partitions of `topics`, from the metadata `bootstrap` answers.
    pub fn new(bootstrap: Client, topics: &[String]) -> Result<Router, String> {
        let mut router = Router {
            bootstrap,
            others: BTreeMap::new(),
            leaders: BTreeMap::new(),
            topics: topics.to_vec(),
        };
        router.refresh()?;
        Ok(router)
    }

    /// Asks the bootstrap broker for the leaders again.
    pub fn refresh(&mut self) -> Result<(), String> {
        let metadata = metadata_of(&mut self.bootstrap, &self.topics)?;
        let addresses = broker_addresses(&metadata);
        self.leaders = metadata
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
            .filter_map(|(t, p)| {
                let leader = addresses.get(&p.leader_id.0)?;
                Some(((name_of(t), p.partition_index), leader.clone()))
            })
            .collect();
        // Connections to brokers no longer named are dropped, so they stay bounded.
        let named: Vec<&String> = addresses.values().collect();
        self.others.retain(|address, _| named.contains(&address));
        Ok(())
    }

    /// `partitions` grouped by the address of their leader. A partition without a known
    /// leader goes to the bootstrap broker, whose answer then says why.
    pub fn by_leader<'a, T>(
        &self,
        partitions: impl IntoIterator<Item = (&'a Partition, T)>,
    ) -> BTreeMap<String, Vec<(&'a Partition, T)>> {
        let mut groups: BTreeMap<String, Vec<(&'a Partition, T)>> = BTreeMap::new();
        for (partition, item) in partitions {
            let leader = self
                .leaders
                .get(partition)
                .map_or_else(|| self.bootstrap.address().to_string(), String::clone);
            groups.entry(leader).or_default().push((partition, item));
        }
        groups
    }

    /// The connection to `address`, opened if needed.
    pub fn client(&mut self, address: &str) -> Result<&mut Client, String> {
        if address == self.bootstrap.address() {
            return Ok(&mut self.bootstrap);
        }
        if !self.others.contains_key(address) {
            let client = self
                .bootstrap
                .connect_like(address)
                .map_err(|e| format!("cannot connect to the leader at {address}: {e}"))?;
            self.others.insert(address.to_string(), client);
        }
        Ok(self
            .others
            .get_mut(address)
            .expect("connected to it just above"))
    }

    /// The broker first connected to, for requests any broker answers.
    pub fn bootstrap(&mut self) -> &mut Client {
        &mut self.bootstrap
    }
}

/// Whether a partition error means its leader moved or is being chosen: the request
/// goes again to the leader the metadata names next.
pub fn leader_moved(code: i16) -> bool {
    matches!(
        ResponseError::try_from_code(code),
        Some(
            ResponseError::NotLeaderOrFollower
                | ResponseError::LeaderNotAvailable
                | ResponseError::FencedLeaderEpoch
                | ResponseError::UnknownLeaderEpoch
        )
    )
}
