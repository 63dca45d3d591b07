//! The inter-broker frame: one per message between two brokers, covering every
//! partition they share (one stream per broker pair, not per partition).
//!
//! ```text
//! offset  size  field
//!      0     4  frame length after this field (u32 LE), at most FRAME_BYTES_MAX
//!      4     2  wire version (u16 LE): WIRE_VERSION
//!      6     2  reserved, zero (checked)
//!      8     4  header length H (u32 LE)
//!     12     H  header: an rkyv archive of `Header`
//!   12+H     …  record bytes: each answered partition's records, in header order
//! ```
//!
//! The version comes before the header because a header of another version may not
//! even pass validation: a broker refuses a frame of any version but its own with an
//! error naming both (brokers of one cluster run one version; there are no rolling
//! upgrades across wire versions yet).
//!
//! The header is small and validated with rkyv's `bytecheck` before anything in it is
//! used: a peer is not trusted to send well-formed bytes. The record bytes follow it
//! raw, so a leader can send them from its segment files with `sendfile`; the header
//! says how many bytes belong to each partition, and the byte counts must add up to
//! exactly what follows. Every failure is a `WireError`, never a panic.

use rkyv::rancor;
use rkyv::util::AlignedVec;

/// The largest frame accepted, header and records.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The largest header accepted (a fetch naming 100,000 partitions fits).
pub const HEADER_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The version of this layout and of `Header`'s archive. Version 1 had no version
/// field; version 2 added it, fetches' log start and `Outcome::StartAt`; version 3
/// added `Body::Hello`.
pub const WIRE_VERSION: u16 = 3;
/// The longest address a `Body::Hello` may name.
pub const HELLO_ADDRESS_BYTES_MAX: usize = 256;
const PREFIX_BYTES: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Header {
    /// The sending broker.
    pub from: u32,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Body {
    Fetch(Vec<PartitionFetch>),
    FetchAnswer(Vec<PartitionAnswer>),
    Election(Vec<PartitionElection>),
    /// The first frame on every connection: the sender's replication address (its
    /// shard's), so a broker that does not know the sender (one that is not a voter,
    /// say) can answer it. At most `HELLO_ADDRESS_BYTES_MAX` bytes.
    Hello {
        listen: String,
    },
}

/// Which partition a part of a frame is about.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct PartitionKey {
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionFetch {
    pub key: PartitionKey,
    pub request: u64,
    pub epoch: i32,
    pub fetch_offset: i64,
    pub last_fetched_epoch: i32,
    pub durable_end: i64,
    /// The follower's log start.
    pub log_start: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionAnswer {
    pub key: PartitionKey,
    pub request: u64,
    pub epoch: i32,
    pub commit: i64,
    /// The answering replica's log start (-1: not known). A follower moves its own log
    /// start up to it, within its high watermark, so records a leader deleted (retention,
    /// DeleteRecords) do not come back after a failover.
    pub log_start: i64,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Outcome {
    /// `(epoch, offsets spanned)` of each batch from `base`; `bytes` of record batches follow in the
    /// frame's record section.
    Records {
        base: i64,
        batches: Vec<(i32, u32)>,
        bytes: u32,
    },
    Diverging {
        epoch: i32,
        end_offset: i64,
    },
    Fenced {
        leader: Option<u32>,
    },
    /// The fetch is below the leader's log start: start over there.
    StartAt {
        log_start: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionElection {
    pub key: PartitionKey,
    pub message: Election,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Election {
    PreVote {
        epoch: i32,
        last_epoch: i32,
        end: i64,
    },
    PreVoteAnswer {
        epoch: i32,
        current: i32,
        granted: bool,
    },
    Vote {
        epoch: i32,
        last_epoch: i32,
        end: i64,
    },
    VoteAnswer {
        epoch: i32,
        granted: bool,
    },
    BeginEpoch {
        epoch: i32,
    },
    EndEpoch {
        epoch: i32,
    },
}

/// Why bytes from a peer are not a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the prefix or the lengths announce (wait for more).
    Incomplete {
        needed: usize,
    },
    TooLarge {
        size: usize,
        max: usize,
    },
    /// A frame of another wire version than `WIRE_VERSION`.
    Version(u16),
    /// The header failed rkyv's validation.
    BadHeader(String),
    /// The record byte counts do not add up to the record section.
    RecordBytes {
        declared: u64,
        present: usize,
    },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Incomplete { needed } => {
                write!(f, "incomplete frame: {needed} bytes needed")
            }
            WireError::TooLarge { size, max } => {
                write!(f, "frame part of {size} bytes, above {max}")
            }
            WireError::Version(got) => write!(
                f,
                "a frame of replication wire version {got}; this broker speaks version {WIRE_VERSION} only"
            ),
            WireError::BadHeader(why) => write!(f, "invalid frame header: {why}"),
            WireError::RecordBytes { declared, present } => {
                write!(
                    f,
                    "frame declares {declared} record bytes, carries {present}"
                )
            }
        }
    }
}

impl std::error::Error for WireError {}

fn declared_record_bytes(header: &Header) -> u64 {
    match &header.body {
        Body::FetchAnswer(answers) => answers
            .iter()
            .map(|a| match a.outcome {
                Outcome::Records { bytes, .. } => u64::from(bytes),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// The frame's prefix and header; the record bytes (as many as the header declares)
/// are sent after it, from wherever they are.
pub fn encode_head(header: &Header) -> Result<Vec<u8>, WireError> {
    let archived =
        rkyv::to_bytes::<rancor::Error>(header).map_err(|e| WireError::BadHeader(e.to_string()))?;
    if archived.len() > HEADER_BYTES_MAX {
        return Err(WireError::TooLarge {
            size: archived.len(),
            max: HEADER_BYTES_MAX,
        });
    }
    let records = declared_record_bytes(header);
    let frame = (PREFIX_BYTES - 4 + archived.len()) as u64 + records;
    if frame > FRAME_BYTES_MAX as u64 {
        return Err(WireError::TooLarge {
            size: usize::try_from(frame).unwrap_or(usize::MAX),
            max: FRAME_BYTES_MAX,
        });
    }
    let mut out = Vec::with_capacity(PREFIX_BYTES + archived.len());
    out.extend_from_slice(&(frame as u32).to_le_bytes());
    out.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(archived.len() as u32).to_le_bytes());
    out.extend_from_slice(&archived);
    Ok(out)
}

/// One whole frame: header and record bytes.
pub fn encode(header: &Header, records: &[u8]) -> Result<Vec<u8>, WireError> {
    let declared = declared_record_bytes(header);
    if declared != records.len() as u64 {
        return Err(WireError::RecordBytes {
            declared,
            present: records.len(),
        });
    }
    let mut out = encode_head(header)?;
    out.extend_from_slice(records);
    Ok(out)
}

/// Decodes the frame at the start of `bytes`: its header, its record bytes, and the
/// frame's total size (where the next frame starts).
pub fn decode(bytes: &[u8]) -> Result<(Header, &[u8], usize), WireError> {
    let word = |at: usize| -> Result<usize, WireError> {
        let b = bytes
            .get(at..at + 4)
            .ok_or(WireError::Incomplete { needed: at + 4 })?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    let frame = word(0)?;
    if frame > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge {
            size: frame,
            max: FRAME_BYTES_MAX,
        });
    }
    let total = 4 + frame;
    if bytes.len() < total {
        return Err(WireError::Incomplete { needed: total });
    }
    if frame < PREFIX_BYTES - 4 {
        return Err(WireError::BadHeader(format!(
            "a frame of {frame} bytes, shorter than its prefix"
        )));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    if bytes[6..8] != [0, 0] {
        return Err(WireError::BadHeader(
            "the reserved bytes after the version are not zero".into(),
        ));
    }
    let header_len = word(8)?;
    if header_len > HEADER_BYTES_MAX || PREFIX_BYTES - 4 + header_len > frame {
        return Err(WireError::BadHeader(format!(
            "header of {header_len} bytes in a frame of {frame}"
        )));
    }
    // rkyv reads in place and needs the archive aligned.
    let mut aligned = AlignedVec::<16>::with_capacity(header_len);
    aligned.extend_from_slice(&bytes[PREFIX_BYTES..PREFIX_BYTES + header_len]);
    let header = rkyv::from_bytes::<Header, rancor::Error>(&aligned)
        .map_err(|e| WireError::BadHeader(e.to_string()))?;
    let records = &bytes[PREFIX_BYTES + header_len..total];
    let declared = declared_record_bytes(&header);
    if declared != records.len() as u64 {
        return Err(WireError::RecordBytes {
            declared,
            present: records.len(),
        });
    }
    Ok((header, records, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(p: i32) -> PartitionKey {
        PartitionKey {
            topic: "orders".into(),
            partition: p,
        }
    }

    fn answer_frame() -> (Header, Vec<u8>) {
        let header = Header {
            from: 2,
            body: Body::FetchAnswer(vec![
                PartitionAnswer {
                    key: key(0),
                    request: 7,
                    epoch: 3,
                    commit: 100,
                    log_start: 7,
                    outcome: Outcome::Records {
                        base: 100,
                        batches: vec![(3, 10)],
                        bytes: 5,
                    },
                },
                PartitionAnswer {
                    key: key(1),
                    request: 9,
                    epoch: 3,
                    commit: 40,
                    log_start: 7,
                    outcome: Outcome::Diverging {
                        epoch: 2,
                        end_offset: 38,
                    },
                },
                PartitionAnswer {
                    key: key(2),
                    request: 1,
                    epoch: 4,
                    commit: 0,
                    log_start: -1,
                    outcome: Outcome::Records {
                        base: 0,
                        batches: vec![(4, 1), (4, 2)],
                        bytes: 3,
                    },
                },
                PartitionAnswer {
                    key: key(3),
                    request: 2,
                    epoch: 4,
                    commit: 900,
                    log_start: 500,
                    outcome: Outcome::StartAt { log_start: 500 },
                },
            ]),
        };
        (header, b"abcdefgh".to_vec())
    }

    #[test]
    fn frames_round_trip_with_their_record_bytes() {
        let (header, records) = answer_frame();
        let mut bytes = encode(&header, &records).unwrap();
        let fetch = Header {
            from: 1,
            body: Body::Fetch(vec![PartitionFetch {
                key: key(0),
                request: 8,
                epoch: 3,
                fetch_offset: 110,
                last_fetched_epoch: 3,
                durable_end: 110,
                log_start: 20,
            }]),
        };
        bytes.extend(encode(&fetch, &[]).unwrap());
        let hello = Header {
            from: 4,
            body: Body::Hello {
                listen: "127.0.0.4:9093".into(),
            },
        };
        bytes.extend(encode(&hello, &[]).unwrap());
        let (h, r, used) = decode(&bytes).unwrap();
        assert_eq!((h, r), (header, &records[..]));
        let (h, r, second) = decode(&bytes[used..]).unwrap();
        assert_eq!((h, r.len()), (fetch, 0));
        let (h, r, third) = decode(&bytes[used + second..]).unwrap();
        assert_eq!((h, r.len()), (hello, 0));
        assert_eq!(used + second + third, bytes.len());
    }

    #[test]
    fn record_counts_must_match_the_bytes() {
        let (header, _) = answer_frame();
        assert_eq!(
            encode(&header, b"short"),
            Err(WireError::RecordBytes {
                declared: 8,
                present: 5
            })
        );
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        let (header, records) = answer_frame();
        let bytes = encode(&header, &records).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                matches!(decode(&bytes[..cut]), Err(WireError::Incomplete { .. })),
                "cut {cut}"
            );
        }
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(WireError::TooLarge { .. })));
    }

    /// A frame of another version is refused by its version, before its header is read.
    #[test]
    fn frames_of_another_version_are_refused_by_name() {
        let (header, records) = answer_frame();
        let mut bytes = encode(&header, &records).unwrap();
        assert_eq!(bytes[4..6], WIRE_VERSION.to_le_bytes());
        bytes[4..6].copy_from_slice(&1u16.to_le_bytes());
        let error = decode(&bytes).unwrap_err();
        assert_eq!(error, WireError::Version(1));
        assert!(error.to_string().contains("version 1"), "{error}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn a_flipped_header_byte_is_an_error_or_a_valid_header(at in 0usize..200, bit in 0u8..8) {
            let (header, records) = answer_frame();
            let mut bytes = encode(&header, &records).unwrap();
            let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
            let at = PREFIX_BYTES + at % header_len;
            bytes[at] ^= 1 << bit;
            // Either rejected, or (a flip inside a value) a well-formed header whose
            // byte counts still match what follows: never a panic, never a misread
            // of the record section's length.
            if let Ok((_, r, used)) = decode(&bytes) {
                prop_assert_eq!(used, bytes.len());
                prop_assert_eq!(r.len(), records.len());
            }
        }
    }
}
