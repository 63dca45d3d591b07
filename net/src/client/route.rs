//! Sending each partition's requests to its leader: the brokers of a cluster answer
//! Produce, Fetch and ListOffsets only for the partitions they lead
//! (NOT_LEADER_OR_FOLLOWER elsewhere), as Kafka's do.
//!
//! The leaders come from a Metadata answer and are asked again after a leadership error
//! or a broker that stopped answering. Metadata is asked of the broker that answered it
//! last; if that one cannot be reached, of every other broker known in turn (the first
//! given, then those the metadata named), so losing the broker first connected to is
//! not the end of the session. Connections are opened when first needed and kept: at
//! most one per broker the metadata names, plus the first. A connection that failed is
//! dropped, and the partitions it carried count as moved.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kafka_protocol::messages::MetadataResponse;
use kafka_protocol::protocol::Request;
use kafka_protocol::ResponseError;

use super::lookup::{ask_metadata, broker_addresses, name_of, offsets_request, read_offsets};
use super::Client;

/// A partition: topic and index.
pub type Partition = (String, i32);

#[derive(Debug)]
pub struct Router {
    /// Open connections, by broker address.
    connections: BTreeMap<String, Client>,
    /// The broker that answered Metadata last, asked first next time.
    asked: String,
    /// Every broker address known, the first given first; bounded by the brokers the
    /// metadata names.
    known: Vec<String>,
    leaders: BTreeMap<Partition, String>,
    topics: Vec<String>,
    client_id: String,
    timeout: Duration,
}

impl Router {
    /// Routes for the partitions of `topics`, from the metadata `bootstrap` answers.
    pub fn new(bootstrap: Client, topics: &[String]) -> Result<Router, String> {
        let address = bootstrap.address().to_string();
        let mut router = Router {
            asked: address.clone(),
            known: vec![address.clone()],
            client_id: bootstrap.client_id().to_string(),
            timeout: bootstrap.timeout(),
            connections: BTreeMap::from([(address, bootstrap)]),
            leaders: BTreeMap::new(),
            topics: topics.to_vec(),
        };
        router.refresh()?;
        Ok(router)
    }

    /// Asks for the leaders again: of the broker that answered last, else of each other
    /// broker known until one answers.
    pub fn refresh(&mut self) -> Result<(), String> {
        let mut candidates = vec![self.asked.clone()];
        candidates.extend(self.known.iter().filter(|a| **a != self.asked).cloned());
        let mut failures = Vec::new();
        let topics = self.topics.clone();
        for address in candidates {
            let answer = match self.connection(&address) {
                Ok(client) => ask_metadata(client, &topics),
                Err(e) => Err(e),
            };
            match answer {
                Ok(metadata) => {
                    self.asked = address;
                    self.learn(&metadata);
                    return Ok(());
                }
                Err(e) if e.is_connection() => {
                    self.forget(&address);
                    failures.push(format!("{address}: {e}"));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!(
            "no broker answered Metadata: {}",
            failures.join("; ")
        ))
    }

    /// Takes the leaders and broker addresses of `metadata`.
    fn learn(&mut self, metadata: &MetadataResponse) {
        let addresses = broker_addresses(metadata);
        self.leaders = leaders_in(metadata, &addresses);
        let first = self.known[0].clone();
        self.known.retain(|a| *a == first);
        self.known
            .extend(addresses.into_values().filter(|a| *a != first));
        // Connections to brokers no longer named are dropped, so they stay bounded.
        let known = &self.known;
        self.connections
            .retain(|address, _| known.contains(address));
    }

    /// `partitions` grouped by the address of their leader. A partition without a known
    /// leader goes to the broker that answered Metadata last, whose answer then says why.
    pub fn by_leader<'a, T>(
        &self,
        partitions: impl IntoIterator<Item = (&'a Partition, T)>,
    ) -> BTreeMap<String, Vec<(&'a Partition, T)>> {
        let mut groups: BTreeMap<String, Vec<(&'a Partition, T)>> = BTreeMap::new();
        for (partition, item) in partitions {
            let leader = self.leaders.get(partition).unwrap_or(&self.asked);
            groups
                .entry(leader.clone())
                .or_default()
                .push((partition, item));
        }
        groups
    }

    /// Sends `request` to the broker at `address` and waits for the answer. `Ok(None)`:
    /// the broker could not be reached or the connection broke, and was dropped; the
    /// caller counts the partitions it asked about as moved.
    pub fn send<R: Request>(
        &mut self,
        address: &str,
        version: i16,
        request: &R,
    ) -> Result<Option<R::Response>, String> {
        let answer = match self.connection(address) {
            Ok(client) => client.send(version, request),
            Err(e) => Err(e),
        };
        self.unless_unreachable(address, answer)
    }

    /// `send` for a request that gets no answer (a Produce with acks=0). `Ok(None)`: as
    /// for `send`, the request may not have been sent.
    pub fn send_without_response<R: Request>(
        &mut self,
        address: &str,
        version: i16,
        request: &R,
    ) -> Result<Option<()>, String> {
        let sent = match self.connection(address) {
            Ok(client) => client.send_without_response(version, request),
            Err(e) => Err(e),
        };
        self.unless_unreachable(address, sent)
    }

    fn unless_unreachable<T>(
        &mut self,
        address: &str,
        result: crate::error::Result<T>,
    ) -> Result<Option<T>, String> {
        match result {
            Ok(answer) => Ok(Some(answer)),
            Err(e) if e.is_connection() => {
                self.forget(address);
                Ok(None)
            }
            Err(e) => Err(format!("{address}: {e}")),
        }
    }

    /// The connection to `address`, opened if needed.
    fn connection(&mut self, address: &str) -> crate::error::Result<&mut Client> {
        if !self.connections.contains_key(address) {
            let client = Client::connect(address, &self.client_id, self.timeout)?;
            self.connections.insert(address.to_string(), client);
        }
        Ok(self
            .connections
            .get_mut(address)
            .expect("connected to it just above"))
    }

    /// The broker that answered Metadata last, for requests any broker answers.
    pub fn any_broker(&self) -> String {
        self.asked.clone()
    }

    /// Drops the connection to `address`: the next request opens a new one.
    pub fn forget(&mut self, address: &str) {
        self.connections.remove(address);
    }

    /// The version of `key` to use, as the broker that answered Metadata last offers it
    /// (the brokers of a cluster run one version).
    pub fn version(
        &mut self,
        key: kafka_protocol::messages::ApiKey,
        wanted: (i16, i16),
    ) -> Result<i16, String> {
        let asked = self.asked.clone();
        let client = self
            .connection(&asked)
            .map_err(|e| format!("{asked}: {e}"))?;
        client.version(key, wanted).map_err(|e| e.to_string())
    }

    /// The offset of each of `partitions` at `timestamp` (`lookup::LATEST`, `EARLIEST`
    /// or a time in ms), each asked of its leader; a leader that moved is followed for up
    /// to `patience`.
    pub fn offsets_at(
        &mut self,
        partitions: &BTreeSet<Partition>,
        timestamp: i64,
        patience: Patience,
    ) -> Result<BTreeMap<Partition, i64>, String> {
        let version = self.version(kafka_protocol::messages::ApiKey::ListOffsets, (1, 7))?;
        let mut out = BTreeMap::new();
        let mut left: BTreeSet<Partition> = partitions.clone();
        for attempt in 0..=patience.retries {
            if left.is_empty() {
                break;
            }
            if attempt > 0 {
                std::thread::sleep(patience.backoff);
                self.refresh()?;
            }
            let mut moved = BTreeSet::new();
            for (leader, group) in self.by_leader(left.iter().map(|p| (p, ()))) {
                let asked: BTreeSet<Partition> =
                    group.into_iter().map(|(p, ())| p.clone()).collect();
                let request = offsets_request(&asked, timestamp);
                match self.send(&leader, version, &request)? {
                    None => moved.extend(asked),
                    Some(answer) => {
                        let (found, refused) = read_offsets(&answer, leader_moved)
                            .map_err(|e| format!("{e}, asked of {leader}"))?;
                        out.extend(found);
                        moved.extend(refused);
                    }
                }
            }
            left = moved;
        }
        // Callers index the answer by every partition they asked for.
        match partitions.iter().find(|p| !out.contains_key(*p)) {
            None => Ok(out),
            Some((topic, p)) => Err(format!(
                "no leader answered the offsets of {topic}-{p} ({} tries)",
                patience.retries + 1
            )),
        }
    }
}

/// How long the command-line tools follow a leader that moved or whose broker stopped
/// answering: long enough for an election and its metadata to reach every broker.
pub const FOLLOW_LEADERS: Patience = Patience {
    retries: 100,
    backoff: Duration::from_millis(300),
};

/// How long a request refused because its leader moved is tried again: `retries`
/// times, after `backoff` each (a Kafka client's `retries` and `retry.backoff.ms`).
#[derive(Clone, Copy, Debug)]
pub struct Patience {
    pub retries: u32,
    pub backoff: Duration,
}

/// The address of each partition's leader in `metadata`; partitions whose leader is
/// not among `addresses` (none, or being chosen) are left out.
pub fn leaders_in(
    metadata: &MetadataResponse,
    addresses: &BTreeMap<i32, String>,
) -> BTreeMap<Partition, String> {
    metadata
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
        .filter_map(|(t, p)| {
            let leader = addresses.get(&p.leader_id.0)?;
            Some(((name_of(t), p.partition_index), leader.clone()))
        })
        .collect()
}

/// Whether a partition error means its leader moved or is being chosen, or the broker
/// asked does not know the partition yet (it just restarted and its metadata is
/// catching up; Kafka's clients also take UNKNOWN_TOPIC_OR_PARTITION as a reason to ask
/// the metadata again): the request goes again to the leader the metadata names next.
pub fn leader_moved(code: i16) -> bool {
    matches!(
        ResponseError::try_from_code(code),
        Some(
            ResponseError::NotLeaderOrFollower
                | ResponseError::LeaderNotAvailable
                | ResponseError::FencedLeaderEpoch
                | ResponseError::UnknownLeaderEpoch
                | ResponseError::UnknownTopicOrPartition
        )
    )
}
