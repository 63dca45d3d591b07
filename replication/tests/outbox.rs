//! Batching per broker pair over real frames: three brokers replicate 300 partitions,
//! every message travelling through an `Outbox`, `wire::encode`/`decode` and
//! `outbox::inbound`; each flush makes one frame per kind per broker pair (answers with
//! records `ANSWER_PARTS_MAX` to a frame). Also:
//! every message kind survives the trip, big flushes split, bad numbers are refused.

use std::collections::BTreeMap;

use spate_engine::{LeaderEpoch, Offset};
use spate_replication::epochs::Diverging;
use spate_replication::outbox::{inbound, Outbox, ANSWER_PARTS_MAX};
use spate_replication::replica::{
    Action, BatchMeta, Config, FetchBody, Membership, Message, Recovered, Replica, ReplicaId,
};
use spate_replication::wire::{self, Body, Header, Outcome, PartitionFetch, PartitionKey};

const BROKERS: u32 = 3;
const PARTITIONS: i32 = 300;
/// Each record is 8 bytes: its offset, little-endian, so logs can be compared by bytes.
const RECORD_BYTES: usize = 8;

fn key(p: i32) -> PartitionKey {
    PartitionKey {
        topic: "t".into(),
        partition: p,
    }
}

struct Broker {
    id: ReplicaId,
    replicas: BTreeMap<PartitionKey, Replica>,
    /// Per partition: each record's epoch and bytes.
    logs: BTreeMap<PartitionKey, Vec<(LeaderEpoch, [u8; RECORD_BYTES])>>,
    outbox: Outbox,
    /// Partition messages sent, over all frames.
    parts_sent: usize,
}

impl Broker {
    fn new(id: u32) -> Broker {
        let mut replicas = BTreeMap::new();
        let mut logs = BTreeMap::new();
        for p in 0..PARTITIONS {
            let voters = (0..BROKERS).map(ReplicaId).collect();
            let config = Config {
                id: ReplicaId(id),
                membership: Membership::new(voters, vec![]).unwrap(),
                election_timeout_ms: 150,
                fetch_timeout_ms: 50,
                fetch_wait_ms: 100,
                check_quorum_ms: 300,
                fetch_records_max: 64,
                preferred_leader_check_ms: Some(200),
                observers: false,
                seed: p as u64,
            };
            replicas.insert(key(p), Replica::new(config, Recovered::empty(), 0));
            logs.insert(key(p), Vec::new());
        }
        Broker {
            id: ReplicaId(id),
            replicas,
            logs,
            outbox: Outbox::new(ReplicaId(id)),
            parts_sent: 0,
        }
    }

    /// Carries out what the outbox did not keep; `records` are the bytes that came
    /// with the message, for an append.
    fn apply(&mut self, now: u64, key: &PartitionKey, actions: Vec<Action>, records: &[u8]) {
        let rest = self.outbox.take(key, actions);
        for action in rest {
            match action {
                Action::Append { base, batches } => {
                    let log = self.logs.get_mut(key).unwrap();
                    assert_eq!(base.0 as usize, log.len());
                    let mut bytes = records.chunks(RECORD_BYTES);
                    for b in &batches {
                        for _ in 0..b.offsets {
                            let record = match bytes.next() {
                                Some(r) => r.try_into().unwrap(),
                                // Our own append: the record is its offset.
                                None => (log.len() as u64).to_le_bytes(),
                            };
                            log.push((b.epoch, record));
                        }
                    }
                    let end = Offset(log.len() as i64);
                    let more = self.replicas.get_mut(key).unwrap().durable(now, end);
                    self.apply(now, key, more, &[]);
                }
                Action::Truncate { to } => self.logs.get_mut(key).unwrap().truncate(to.0 as usize),
                Action::Restart { at } => {
                    panic!("no log start moves here, yet restarted at {at:?}")
                }
                Action::Refused { from, reason } => panic!("{from:?} refused: {reason}"),
                Action::Persist(_) | Action::Commit { .. } | Action::Resigned => {}
                Action::Send { .. } | Action::SendRecords { .. } => unreachable!("kept"),
            }
        }
    }

    /// The outbox's frames, with record ranges read from the logs, as bytes. Checks
    /// that a flush makes one frame per kind per peer, answers with records excepted:
    /// those go `ANSWER_PARTS_MAX` to a frame, so that their bytes fit.
    fn frames(&mut self) -> Vec<(ReplicaId, Vec<u8>)> {
        let mut out = Vec::new();
        let mut kinds: BTreeMap<(ReplicaId, u8), (usize, usize)> = BTreeMap::new();
        for mut frame in self.outbox.flush() {
            let (kind, parts) = match &frame.header.body {
                Body::Fetch(p) => (0, p.len()),
                Body::FetchAnswer(p) => (1, p.len()),
                Body::Election(p) => (2, p.len()),
                Body::Hello { .. } => panic!("the outbox never makes a hello"),
            };
            self.parts_sent += parts;
            let count = kinds.entry((frame.to, kind)).or_default();
            count.0 += 1;
            count.1 += frame.reads.len();
            let mut records = Vec::new();
            for read in frame.reads.clone() {
                let log = &self.logs[&read.key][read.from.0 as usize..read.until.0 as usize];
                let mut runs: Vec<(i32, u32)> = Vec::new();
                for (epoch, bytes) in log {
                    match runs.last_mut() {
                        Some((e, n)) if *e == epoch.0 => *n += 1,
                        _ => runs.push((epoch.0, 1)),
                    }
                    records.extend_from_slice(bytes);
                }
                frame.fill(read.part, runs, (log.len() * RECORD_BYTES) as u32);
            }
            out.push((frame.to, wire::encode(&frame.header, &records).unwrap()));
        }
        for ((to, kind), (frames, reads)) in kinds {
            let allowed = reads.div_ceil(ANSWER_PARTS_MAX).max(1);
            assert!(
                frames <= allowed,
                "{frames} frames of kind {kind} to {to:?}"
            );
        }
        out
    }

    fn receive(&mut self, now: u64, bytes: &[u8]) {
        let (header, records, used) = wire::decode(bytes).unwrap();
        assert_eq!(used, bytes.len());
        let (from, parts) = inbound(&header).unwrap();
        for part in parts {
            let replica = self.replicas.get_mut(&part.key).unwrap();
            let actions = replica.receive(now, from, part.message);
            let bytes = part.records.map_or(&[][..], |r| &records[r]);
            self.apply(now, &part.key, actions, bytes);
        }
    }
}

#[test]
fn three_brokers_replicate_300_partitions_through_batched_frames() {
    let mut brokers: Vec<Broker> = (0..BROKERS).map(Broker::new).collect();
    let mut frames_sent = 0usize;
    let mut writes = 0u32;
    for now in 1..=1500u64 {
        for b in brokers.iter_mut() {
            let keys: Vec<PartitionKey> = b.replicas.keys().cloned().collect();
            for k in &keys {
                let actions = b.replicas.get_mut(k).unwrap().tick(now);
                b.apply(now, k, actions, &[]);
                if now % 10 == 0 && now < 1400 && b.replicas[k].is_leader() {
                    if let Ok((_, actions)) = b.replicas.get_mut(k).unwrap().write(now, 2) {
                        writes += 1;
                        b.apply(now, k, actions, &[]);
                    }
                }
            }
        }
        // Deliver every frame of this step; answers may cause more within the step.
        for _round in 0..4 {
            let mut in_flight = Vec::new();
            for b in brokers.iter_mut() {
                let frames = b.frames();
                frames_sent += frames.len();
                in_flight.extend(frames);
            }
            for (to, bytes) in in_flight {
                brokers[to.0 as usize].receive(now, &bytes);
            }
        }
    }
    assert!(writes > 10_000);
    // Every partition has one leader, everything written is committed everywhere, and
    // the replicas' logs are identical byte for byte.
    for p in 0..PARTITIONS {
        let k = key(p);
        let leaders: Vec<_> = brokers
            .iter()
            .filter(|b| b.replicas[&k].is_leader())
            .collect();
        assert_eq!(leaders.len(), 1, "partition {p}");
        let end = leaders[0].replicas[&k].log_end();
        for b in &brokers {
            assert_eq!(
                b.replicas[&k].commit_index(),
                end,
                "partition {p} on {:?}",
                b.id
            );
            assert_eq!(b.logs[&k], leaders[0].logs[&k]);
        }
    }
    // Preferred-leader rebalancing spreads leadership: replica i leads the partitions
    // whose first voter it is... here all share voters [0, 1, 2], so broker 0 leads.
    assert!(brokers[0].replicas.values().all(|r| r.is_leader()));
    let parts: usize = brokers.iter().map(|b| b.parts_sent).sum();
    eprintln!("{frames_sent} frames carried {parts} partition messages for {writes} writes on {PARTITIONS} partitions");
    assert!(
        parts > frames_sent * 20,
        "frames batch many partitions each"
    );
}

/// Every message kind, sent through an outbox and a frame, arrives as it left.
#[test]
fn every_message_kind_survives_a_frame() {
    let e = LeaderEpoch(7);
    let messages = vec![
        Message::Fetch {
            request: 3,
            epoch: e,
            fetch_offset: Offset(10),
            last_fetched_epoch: LeaderEpoch(-1),
            durable_end: Offset(9),
            log_start: Offset(10),
        },
        Message::FetchAnswer {
            request: 3,
            epoch: e,
            commit: Offset(4),
            body: FetchBody::Diverging(Diverging {
                epoch: LeaderEpoch(5),
                end_offset: Offset(8),
            }),
        },
        Message::FetchAnswer {
            request: 4,
            epoch: e,
            commit: Offset(4),
            body: FetchBody::Fenced {
                leader: Some(ReplicaId(2)),
            },
        },
        Message::FetchAnswer {
            request: 5,
            epoch: e,
            commit: Offset(40),
            body: FetchBody::StartAt {
                log_start: Offset(30),
            },
        },
        Message::PreVote {
            epoch: e,
            last_epoch: LeaderEpoch(6),
            end: Offset(12),
        },
        Message::PreVoteAnswer {
            epoch: e,
            current: LeaderEpoch(6),
            granted: true,
        },
        Message::Vote {
            epoch: e,
            last_epoch: LeaderEpoch(6),
            end: Offset(12),
        },
        Message::VoteAnswer {
            epoch: e,
            granted: false,
        },
        Message::BeginEpoch { epoch: e },
        Message::EndEpoch { epoch: e },
    ];
    let mut outbox = Outbox::new(ReplicaId(1));
    for (p, message) in messages.iter().enumerate() {
        let send = Action::Send {
            to: ReplicaId(2),
            message: message.clone(),
        };
        assert!(
            outbox.take(&key(p as i32), vec![send, Action::Resigned]) == vec![Action::Resigned]
        );
    }
    let mut arrived = Vec::new();
    for frame in outbox.flush() {
        assert_eq!(frame.to, ReplicaId(2));
        let bytes = wire::encode(&frame.header, &[]).unwrap();
        let (header, _, _) = wire::decode(&bytes).unwrap();
        let (from, parts) = inbound(&header).unwrap();
        assert_eq!(from, ReplicaId(1));
        arrived.extend(parts.into_iter().map(|p| (p.key.partition, p.message)));
    }
    arrived.sort_by_key(|(p, _)| *p);
    let sent: Vec<(i32, Message)> = messages
        .into_iter()
        .enumerate()
        .map(|(p, m)| (p as i32, m))
        .collect();
    assert_eq!(arrived, sent);
}

/// A leader's answer with records 0..3 to broker 1.
fn send_records() -> Action {
    Action::SendRecords {
        to: ReplicaId(1),
        request: 1,
        epoch: LeaderEpoch(1),
        commit: Offset(0),
        from: Offset(0),
        until: Offset(3),
    }
}

#[test]
fn many_answers_with_records_split_into_frames_that_fit() {
    let mut outbox = Outbox::new(ReplicaId(0));
    let answers = ANSWER_PARTS_MAX * 2 + 5;
    for p in 0..answers {
        let send = send_records();
        outbox.take(&key(p as i32), vec![send]);
    }
    let frames = outbox.flush();
    assert_eq!(frames.len(), 3);
    let mut seen = 0;
    for mut frame in frames {
        assert!(frame.reads.len() <= ANSWER_PARTS_MAX);
        for read in frame.reads.clone() {
            assert_eq!(read.key, key(seen));
            seen += 1;
            frame.fill(read.part, vec![(1, 3)], 24);
        }
        let records = vec![0u8; 24 * frame.reads.len()];
        let bytes = wire::encode(&frame.header, &records).unwrap();
        let (header, section, _) = wire::decode(&bytes).unwrap();
        let (_, parts) = inbound(&header).unwrap();
        for part in parts {
            let range = part.records.clone().unwrap();
            assert_eq!(range.len(), 24);
            assert!(range.end <= section.len());
            let Message::FetchAnswer {
                body: FetchBody::Records { batches, .. },
                ..
            } = part.message
            else {
                panic!("records expected")
            };
            assert_eq!(batches, vec![BatchMeta::data(LeaderEpoch(1), 3)]);
        }
    }
    assert_eq!(seen as usize, answers);
    assert!(outbox.flush().is_empty(), "a flush empties the outbox");
}

#[test]
fn negative_offsets_and_epochs_below_minus_one_are_refused() {
    let fetch = |epoch: i32, fetch_offset: i64| Header {
        from: 1,
        body: Body::Fetch(vec![PartitionFetch {
            key: key(0),
            request: 1,
            epoch,
            fetch_offset,
            last_fetched_epoch: -1,
            durable_end: 0,
            log_start: 0,
        }]),
    };
    assert!(inbound(&fetch(0, 0)).is_ok());
    assert!(inbound(&fetch(0, -1)).is_err());
    // Offsets near i64::MAX would overflow offset arithmetic.
    assert!(inbound(&fetch(0, i64::MAX)).is_err());
    assert!(inbound(&fetch(-2, 0)).is_err());
    let answer = |commit, log_start| Header {
        from: 1,
        body: Body::FetchAnswer(vec![wire::PartitionAnswer {
            key: key(0),
            request: 1,
            epoch: 1,
            commit,
            log_start,
            outcome: Outcome::Fenced { leader: None },
        }]),
    };
    assert!(inbound(&answer(-5, 0)).is_err());
    // The leader's log start: -1 is "not sent"; other negatives and huge values are refused.
    let log_start = |h: &Header| inbound(h).map(|(_, parts)| parts[0].log_start);
    assert_eq!(log_start(&answer(0, -1)), Ok(None));
    assert_eq!(log_start(&answer(0, 7)), Ok(Some(Offset(7))));
    assert!(inbound(&answer(0, -2)).is_err());
    assert!(inbound(&answer(0, i64::MAX)).is_err());
}

#[test]
fn unreadable_answers_are_dropped_with_their_reads() {
    let mut outbox = Outbox::new(ReplicaId(0));
    for p in 0..4 {
        let send = send_records();
        outbox.take(&key(p), vec![send]);
    }
    let mut frame = outbox.flush().pop().unwrap();
    frame.drop_parts(&[0, 2]);
    let keys: Vec<PartitionKey> = frame.reads.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, vec![key(1), key(3)]);
    for read in frame.reads.clone() {
        frame.fill(read.part, vec![(1, 3)], 24);
    }
    let bytes = wire::encode(&frame.header, &[0u8; 48]).unwrap();
    let (header, _, _) = wire::decode(&bytes).unwrap();
    let (_, parts) = inbound(&header).unwrap();
    let keys: Vec<PartitionKey> = parts.into_iter().map(|p| p.key).collect();
    assert_eq!(keys, vec![key(1), key(3)]);
}
