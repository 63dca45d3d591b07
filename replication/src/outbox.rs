//! Batching per broker pair, and the mapping between the replica state machine's
//! messages and inter-broker frames (`crate::wire`).
//!
//! A broker hosts replicas of many partitions. After each step the driver hands every
//! replica's actions to the `Outbox`, which keeps the sends and returns the rest.
//! `flush` then yields, for each peer broker, at most one frame per kind — fetches,
//! fetch answers, election messages — covering every partition with something to say,
//! so 10,000 partitions between two brokers make one request stream, not 10,000. A
//! frame holds at most `FRAME_PARTS_MAX` parts (fetch answers `ANSWER_PARTS_MAX`); a
//! flush splits beyond that.
//!
//! Record bytes are not known to the state machine: a fetch-answer frame lists the
//! ranges the driver must read (`Outgoing::reads`), whole batches and at most
//! `ANSWER_BYTES_MAX` bytes each, and the driver fills in what it read before sending
//! the header and then the bytes, zero-copy.
//!
//! Inbound, `inbound` turns a decoded header back into per-partition messages and
//! checks what rkyv's validation cannot: offsets are not negative and epochs not below
//! -1. The batches a fetch answer lists are the sender's description; the driver checks
//! them against the record bytes it validates, and marks the control batches that state
//! replica sets.

use std::collections::BTreeMap;
use std::ops::Range;

use spate_engine::{LeaderEpoch, Offset};

use crate::epochs::Diverging;
use crate::replica::{Action, BatchMeta, FetchBody, Message, ReplicaId};
use crate::wire::{
    Body, Election, Header, Outcome, PartitionAnswer, PartitionElection, PartitionFetch,
    PartitionKey, WireError, FRAME_BYTES_MAX, HEADER_BYTES_MAX,
};

/// Most parts (partitions' messages) in one frame.
pub const FRAME_PARTS_MAX: usize = 10_000;
/// Most record bytes the driver reads for one partition's fetch answer (Kafka's
/// `replica.fetch.max.bytes` default).
pub const ANSWER_BYTES_MAX: usize = 1024 * 1024;
/// Most answers with records in one frame, so that their bytes fit in a frame.
pub const ANSWER_PARTS_MAX: usize = 48;
/// Most record bytes in one frame: what the header leaves.
pub const FRAME_RECORD_BYTES_MAX: usize = FRAME_BYTES_MAX - HEADER_BYTES_MAX;
const _: () = assert!(ANSWER_PARTS_MAX * ANSWER_BYTES_MAX + HEADER_BYTES_MAX <= FRAME_BYTES_MAX);

/// A record range the driver reads into a fetch-answer frame: `part` is the answer's
/// index in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub part: usize,
    pub key: PartitionKey,
    pub from: Offset,
    pub until: Offset,
}

/// One frame to send to broker `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: ReplicaId,
    pub header: Header,
    /// For a fetch-answer frame, the ranges to read, in header order.
    pub reads: Vec<Read>,
}

impl Outgoing {
    /// Records what the driver read for answer `part`: `(epoch, offsets)` of each batch and
    /// their size in bytes. Reading fewer records than asked is fine; the follower
    /// fetches the rest. An answer holds at most `ANSWER_BYTES_MAX` bytes, except that a
    /// single batch larger than that may go whole if the frame has room for it
    /// (`FRAME_RECORD_BYTES_MAX` over the frame; the driver checks).
    pub fn fill(&mut self, part: usize, batches_read: Vec<(i32, u32)>, read_bytes: u32) {
        assert!(read_bytes as usize <= FRAME_RECORD_BYTES_MAX);
        let Body::FetchAnswer(answers) = &mut self.header.body else {
            panic!("only fetch-answer frames carry records");
        };
        match &mut answers[part].outcome {
            Outcome::Records { batches, bytes, .. } => {
                *batches = batches_read;
                *bytes = read_bytes;
            }
            other => panic!("answer {part} carries no records: {other:?}"),
        }
    }
}

impl Outgoing {
    /// Removes fetch answers the driver could not read (the follower's fetch times out
    /// and is sent again), and the reads that belonged to them.
    pub fn drop_parts(&mut self, parts: &[usize]) {
        let Body::FetchAnswer(answers) = &mut self.header.body else {
            panic!("only fetch-answer frames carry reads");
        };
        let mut index = 0;
        answers.retain(|_| {
            let keep = !parts.contains(&index);
            index += 1;
            keep
        });
        self.reads.retain(|r| !parts.contains(&r.part));
        for read in &mut self.reads {
            read.part -= parts.iter().filter(|p| **p < read.part).count();
        }
    }
}

#[derive(Debug, Default)]
struct Pending {
    fetches: Vec<PartitionFetch>,
    answers: Vec<(PartitionAnswer, Option<(Offset, Offset)>)>,
    elections: Vec<PartitionElection>,
}

/// The sends of one broker's replicas, gathered per peer until `flush`. It holds one
/// step's sends: a replica answers one event with a bounded number of messages (a few
/// per member of its set), and the driver flushes after every step, so what waits
/// here is bounded by the replicas hosted times their set's size.
#[derive(Debug)]
pub struct Outbox {
    from: ReplicaId,
    peers: BTreeMap<ReplicaId, Pending>,
}

impl Outbox {
    pub fn new(from: ReplicaId) -> Outbox {
        Outbox {
            from,
            peers: BTreeMap::new(),
        }
    }

    /// Keeps the sends among partition `key`'s actions; returns the others, in order.
    pub fn take(&mut self, key: &PartitionKey, actions: Vec<Action>) -> Vec<Action> {
        let mut rest = Vec::new();
        for action in actions {
            match action {
                Action::Send { to, message } => self.push(key, to, message),
                Action::SendRecords {
                    to,
                    request,
                    epoch,
                    commit,
                    from,
                    until,
                } => {
                    let answer = PartitionAnswer {
                        key: key.clone(),
                        request,
                        epoch: epoch.0,
                        commit: commit.0,
                        log_start: LOG_START_UNKNOWN,
                        outcome: Outcome::Records {
                            base: from.0,
                            batches: Vec::new(),
                            bytes: 0,
                        },
                    };
                    let peer = self.peers.entry(to).or_default();
                    peer.answers.push((answer, Some((from, until))));
                }
                other => rest.push(other),
            }
        }
        rest
    }

    fn push(&mut self, key: &PartitionKey, to: ReplicaId, message: Message) {
        let peer = self.peers.entry(to).or_default();
        let key = key.clone();
        let election = match message {
            Message::Fetch {
                request,
                epoch,
                fetch_offset,
                last_fetched_epoch,
                durable_end,
                log_start,
            } => {
                return peer.fetches.push(PartitionFetch {
                    key,
                    request,
                    epoch: epoch.0,
                    fetch_offset: fetch_offset.0,
                    last_fetched_epoch: last_fetched_epoch.0,
                    durable_end: durable_end.0,
                    log_start: log_start.0,
                })
            }
            Message::FetchAnswer {
                request,
                epoch,
                commit,
                body,
            } => {
                let outcome = match body {
                    FetchBody::Records { .. } => {
                        unreachable!("record answers are SendRecords actions")
                    }
                    FetchBody::Diverging(d) => Outcome::Diverging {
                        epoch: d.epoch.0,
                        end_offset: d.end_offset.0,
                    },
                    FetchBody::Fenced { leader } => Outcome::Fenced {
                        leader: leader.map(|l| l.0),
                    },
                    FetchBody::StartAt { log_start } => Outcome::StartAt {
                        log_start: log_start.0,
                    },
                };
                let answer = PartitionAnswer {
                    key,
                    request,
                    epoch: epoch.0,
                    commit: commit.0,
                    log_start: LOG_START_UNKNOWN,
                    outcome,
                };
                return peer.answers.push((answer, None));
            }
            Message::PreVote {
                epoch,
                last_epoch,
                end,
            } => Election::PreVote {
                epoch: epoch.0,
                last_epoch: last_epoch.0,
                end: end.0,
            },
            Message::PreVoteAnswer {
                epoch,
                current,
                granted,
            } => Election::PreVoteAnswer {
                epoch: epoch.0,
                current: current.0,
                granted,
            },
            Message::Vote {
                epoch,
                last_epoch,
                end,
            } => Election::Vote {
                epoch: epoch.0,
                last_epoch: last_epoch.0,
                end: end.0,
            },
            Message::VoteAnswer { epoch, granted } => Election::VoteAnswer {
                epoch: epoch.0,
                granted,
            },
            Message::BeginEpoch { epoch } => Election::BeginEpoch { epoch: epoch.0 },
            Message::EndEpoch { epoch } => Election::EndEpoch { epoch: epoch.0 },
        };
        peer.elections.push(PartitionElection {
            key,
            message: election,
        });
    }

    /// Everything gathered, as frames: per peer, fetches, then answers, then election
    /// messages, each kind in as few frames as the limits allow.
    pub fn flush(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for (to, pending) in std::mem::take(&mut self.peers) {
            let header = |body| Header {
                from: self.from.0,
                body,
            };
            for chunk in pending.fetches.chunks(FRAME_PARTS_MAX) {
                let body = Body::Fetch(chunk.to_vec());
                out.push(Outgoing {
                    to,
                    header: header(body),
                    reads: Vec::new(),
                });
            }
            for (body, reads) in answer_frames(pending.answers) {
                out.push(Outgoing {
                    to,
                    header: header(body),
                    reads,
                });
            }
            for chunk in pending.elections.chunks(FRAME_PARTS_MAX) {
                let body = Body::Election(chunk.to_vec());
                out.push(Outgoing {
                    to,
                    header: header(body),
                    reads: Vec::new(),
                });
            }
        }
        out
    }
}

/// Splits answers into frames of at most `FRAME_PARTS_MAX` parts, of which at most
/// `ANSWER_PARTS_MAX` carry records.
fn answer_frames(
    answers: Vec<(PartitionAnswer, Option<(Offset, Offset)>)>,
) -> Vec<(Body, Vec<Read>)> {
    let mut frames = Vec::new();
    let mut parts: Vec<PartitionAnswer> = Vec::new();
    let mut reads: Vec<Read> = Vec::new();
    for (answer, range) in answers {
        let full =
            parts.len() == FRAME_PARTS_MAX || (range.is_some() && reads.len() == ANSWER_PARTS_MAX);
        if full {
            frames.push((
                Body::FetchAnswer(std::mem::take(&mut parts)),
                std::mem::take(&mut reads),
            ));
        }
        if let Some((from, until)) = range {
            reads.push(Read {
                part: parts.len(),
                key: answer.key.clone(),
                from,
                until,
            });
        }
        parts.push(answer);
    }
    if !parts.is_empty() {
        frames.push((Body::FetchAnswer(parts), reads));
    }
    frames
}

/// One partition's message from a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub key: PartitionKey,
    pub message: Message,
    /// For an answer with records: where its bytes sit in the frame's record section.
    pub records: Option<Range<usize>>,
    /// For an answer: the answering replica's log start, if it sent one.
    pub log_start: Option<Offset>,
}

/// `PartitionAnswer::log_start` until the driver fills it in from the log.
pub const LOG_START_UNKNOWN: i64 = -1;

/// Offsets from a peer: not negative, and far enough from `i64::MAX` that offset
/// arithmetic (a batch's last offset, the next offset) cannot overflow, as the engine
/// bounds segment base offsets.
const OFFSET_MAX: i64 = i64::MAX / 2;

fn offset(value: i64, what: &str) -> Result<Offset, WireError> {
    if !(0..=OFFSET_MAX).contains(&value) {
        return Err(WireError::BadHeader(format!(
            "{what} {value} is not within 0..={OFFSET_MAX}"
        )));
    }
    Ok(Offset(value))
}

fn epoch(value: i32, what: &str) -> Result<LeaderEpoch, WireError> {
    if value < -1 {
        return Err(WireError::BadHeader(format!("{what} {value} is below -1")));
    }
    Ok(LeaderEpoch(value))
}

/// The sender and the per-partition messages of a decoded frame header.
pub fn inbound(header: &Header) -> Result<(ReplicaId, Vec<Inbound>), WireError> {
    let parts = match &header.body {
        Body::Fetch(p) => p.len(),
        Body::FetchAnswer(p) => p.len(),
        Body::Election(p) => p.len(),
        Body::Hello { .. } => 0,
    };
    if parts > FRAME_PARTS_MAX {
        return Err(WireError::TooLarge {
            size: parts,
            max: FRAME_PARTS_MAX,
        });
    }
    let messages = match &header.body {
        Body::Fetch(fetches) => fetches.iter().map(fetch_in).collect::<Result<_, _>>()?,
        Body::FetchAnswer(answers) => {
            let mut at = 0usize;
            let mut out = Vec::with_capacity(answers.len());
            for answer in answers {
                out.push(answer_in(answer, &mut at)?);
            }
            out
        }
        Body::Election(elections) => elections
            .iter()
            .map(election_in)
            .collect::<Result<_, _>>()?,
        Body::Hello { .. } => Vec::new(),
    };
    Ok((ReplicaId(header.from), messages))
}

fn fetch_in(f: &PartitionFetch) -> Result<Inbound, WireError> {
    let message = Message::Fetch {
        request: f.request,
        epoch: epoch(f.epoch, "fetch epoch")?,
        fetch_offset: offset(f.fetch_offset, "fetch offset")?,
        last_fetched_epoch: epoch(f.last_fetched_epoch, "last fetched epoch")?,
        durable_end: offset(f.durable_end, "durable end")?,
        log_start: offset(f.log_start, "log start")?,
    };
    Ok(Inbound {
        key: f.key.clone(),
        message,
        records: None,
        log_start: None,
    })
}

fn answer_in(a: &PartitionAnswer, at: &mut usize) -> Result<Inbound, WireError> {
    let mut records = None;
    let body = match &a.outcome {
        Outcome::Records {
            base,
            batches,
            bytes,
        } => {
            let batches = batches
                .iter()
                .map(|&(e, n)| Ok(BatchMeta::data(epoch(e, "batch epoch")?, n)))
                .collect::<Result<_, WireError>>()?;
            records = Some(*at..*at + *bytes as usize);
            *at += *bytes as usize;
            FetchBody::Records {
                base: offset(*base, "base offset")?,
                batches,
            }
        }
        Outcome::Diverging {
            epoch: e,
            end_offset,
        } => FetchBody::Diverging(Diverging {
            epoch: epoch(*e, "diverging epoch")?,
            end_offset: offset(*end_offset, "diverging end offset")?,
        }),
        Outcome::Fenced { leader } => FetchBody::Fenced {
            leader: leader.map(ReplicaId),
        },
        Outcome::StartAt { log_start } => FetchBody::StartAt {
            log_start: offset(*log_start, "log start to start at")?,
        },
    };
    let message = Message::FetchAnswer {
        request: a.request,
        epoch: epoch(a.epoch, "answer epoch")?,
        commit: offset(a.commit, "commit index")?,
        body,
    };
    let log_start = match a.log_start {
        LOG_START_UNKNOWN => None,
        start => Some(offset(start, "log start")?),
    };
    Ok(Inbound {
        key: a.key.clone(),
        message,
        records,
        log_start,
    })
}

fn election_in(e: &PartitionElection) -> Result<Inbound, WireError> {
    let message = match e.message {
        Election::PreVote {
            epoch: n,
            last_epoch,
            end,
        } => Message::PreVote {
            epoch: epoch(n, "epoch")?,
            last_epoch: epoch(last_epoch, "last epoch")?,
            end: offset(end, "log end")?,
        },
        Election::PreVoteAnswer {
            epoch: n,
            current,
            granted,
        } => Message::PreVoteAnswer {
            epoch: epoch(n, "epoch")?,
            current: epoch(current, "current epoch")?,
            granted,
        },
        Election::Vote {
            epoch: n,
            last_epoch,
            end,
        } => Message::Vote {
            epoch: epoch(n, "epoch")?,
            last_epoch: epoch(last_epoch, "last epoch")?,
            end: offset(end, "log end")?,
        },
        Election::VoteAnswer { epoch: n, granted } => Message::VoteAnswer {
            epoch: epoch(n, "epoch")?,
            granted,
        },
        Election::BeginEpoch { epoch: n } => Message::BeginEpoch {
            epoch: epoch(n, "epoch")?,
        },
        Election::EndEpoch { epoch: n } => Message::EndEpoch {
            epoch: epoch(n, "epoch")?,
        },
    };
    Ok(Inbound {
        key: e.key.clone(),
        message,
        records: None,
        log_start: None,
    })
}
