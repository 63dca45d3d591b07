//! The records of `__consumer_offsets`, in Kafka's own key and value schemas, so the
//! topic reads the same to Kafka tools as it does to Kafka.
//!
//! - Offset commit: key v1 `{i16 1, string group, string topic, i32 partition}`; value v3
//!   `{i16 3, i64 offset, i32 leader_epoch, string metadata, i64 commit_timestamp}`.
//! - Group metadata: key v2 `{i16 2, string group}`; value v3 `{i16 3, string
//!   protocol_type, i32 generation, nullable string protocol, nullable string leader, i64
//!   state_timestamp, members: i32 count of {string member_id, nullable string
//!   instance_id, string client_id, string client_host, i32 rebalance_timeout_ms, i32
//!   session_timeout_ms, bytes subscription, bytes assignment}}`.
//!
//! A record with no value is a tombstone: the offset or group was deleted. Strings are
//! i16-length-prefixed (-1 for null), bytes i32-length-prefixed. Group values of
//! versions 0–3 are read whole (version 0 has no rebalance timeout, 1 no state
//! timestamp, 2 no instance id); of version 4 (Kafka's flexible encoding, which Spate
//! never writes) only the generation and protocol type. Decoding never panics on bad
//! input: an unknown version or a short buffer is an error naming what was wrong.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::state::{Committed, Group};
use crate::limits::GROUP_MEMBERS_MAX;

/// What one record of `__consumer_offsets` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A committed offset, or `None`: deleted.
    Offset {
        group: String,
        topic: String,
        partition: i32,
        committed: Option<Committed>,
    },
    /// A group's metadata at a Stable or Empty point, or `None`: the group was deleted.
    Group {
        group: String,
        metadata: Option<GroupRecord>,
    },
}

/// A group's metadata as recorded: its generation and, when it was Stable, its members
/// and their assignments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupRecord {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: Vec<MemberRecord>,
}

/// One member of a recorded group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout: Duration,
    pub session_timeout: Duration,
    /// Its metadata for the group's protocol (a consumer's subscription).
    pub subscription: Bytes,
    pub assignment: Bytes,
}

fn put_string(buf: &mut BytesMut, s: &str) {
    let len = i16::try_from(s.len()).expect("names are bounded by the protocol's i16 length");
    buf.put_i16(len);
    buf.put_slice(s.as_bytes());
}

fn put_nullable_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(buf, s),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

/// The key of a committed offset.
pub fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(1);
    put_string(&mut buf, group);
    put_string(&mut buf, topic);
    buf.put_i32(partition);
    buf.freeze()
}

/// The value of a committed offset.
pub fn offset_value(committed: &Committed) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(3);
    buf.put_i64(committed.offset);
    buf.put_i32(committed.leader_epoch);
    put_string(&mut buf, &committed.metadata);
    buf.put_i64(committed.commit_timestamp);
    buf.freeze()
}

/// The key of a group's metadata.
pub fn group_key(group: &str) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(2);
    put_string(&mut buf, group);
    buf.freeze()
}

/// The value of a group's metadata at this moment.
pub fn group_value(group: &Group, now_ms: i64) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(3);
    put_string(&mut buf, group.protocol_type.as_deref().unwrap_or(""));
    buf.put_i32(group.generation);
    put_nullable_string(&mut buf, group.protocol.as_deref());
    put_nullable_string(&mut buf, group.leader.as_deref());
    buf.put_i64(now_ms);
    buf.put_i32(group.members.len() as i32);
    let protocol = group.protocol.as_deref().unwrap_or("");
    for member in group.members.values() {
        put_string(&mut buf, &member.id);
        put_nullable_string(&mut buf, member.instance_id.as_deref());
        put_string(&mut buf, &member.client_id);
        put_string(&mut buf, &member.client_host);
        buf.put_i32(member.rebalance_timeout.as_millis() as i32);
        buf.put_i32(member.session_timeout.as_millis() as i32);
        put_bytes(&mut buf, &member.metadata(protocol));
        put_bytes(&mut buf, &member.assignment);
    }
    buf.freeze()
}

/// A reader over one key or value that reports short input instead of panicking.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn need(&self, n: usize, what: &str) -> Result<(), String> {
        if self.0.remaining() < n {
            return Err(format!("{what} is cut short"));
        }
        Ok(())
    }
    fn i16(&mut self, what: &str) -> Result<i16, String> {
        self.need(2, what)?;
        Ok(self.0.get_i16())
    }
    fn i32(&mut self, what: &str) -> Result<i32, String> {
        self.need(4, what)?;
        Ok(self.0.get_i32())
    }
    fn i64(&mut self, what: &str) -> Result<i64, String> {
        self.need(8, what)?;
        Ok(self.0.get_i64())
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        self.nullable_string(what)?
            .ok_or_else(|| format!("{what} is null"))
    }
    fn nullable_string(&mut self, what: &str) -> Result<Option<String>, String> {
        let Ok(len) = usize::try_from(self.i16(what)?) else {
            return Ok(None);
        };
        self.need(len, what)?;
        let s = String::from_utf8(self.0[..len].to_vec())
            .map_err(|_| format!("{what} is not UTF-8"))?;
        self.0.advance(len);
        Ok(Some(s))
    }
    fn bytes(&mut self, what: &str) -> Result<Bytes, String> {
        let len = usize::try_from(self.i32(what)?).map_err(|_| format!("{what} is null"))?;
        self.need(len, what)?;
        let b = Bytes::copy_from_slice(&self.0[..len]);
        self.0.advance(len);
        Ok(b)
    }
    fn millis(&mut self, what: &str) -> Result<Duration, String> {
        let ms = u64::try_from(self.i32(what)?).map_err(|_| format!("{what} is negative"))?;
        Ok(Duration::from_millis(ms))
    }
}

/// Decodes one record of `__consumer_offsets`.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Entry, String> {
    let mut k = Reader(key);
    match k.i16("key version")? {
        0 | 1 => {
            let group = k.string("group")?;
            let topic = k.string("topic")?;
            let partition = k.i32("partition")?;
            let committed = value.map(decode_offset).transpose()?;
            Ok(Entry::Offset {
                group,
                topic,
                partition,
                committed,
            })
        }
        2 => {
            let group = k.string("group")?;
            let metadata = value.map(decode_group).transpose()?;
            Ok(Entry::Group { group, metadata })
        }
        v => Err(format!("unknown key version {v}")),
    }
}

fn decode_offset(value: &[u8]) -> Result<Committed, String> {
    let mut v = Reader(value);
    let version = v.i16("offset value version")?;
    if !(0..=3).contains(&version) {
        return Err(format!("unknown offset value version {version}"));
    }
    let offset = v.i64("offset")?;
    let leader_epoch = if version >= 3 {
        v.i32("leader epoch")?
    } else {
        -1
    };
    let metadata = v.string("metadata")?;
    let commit_timestamp = v.i64("commit timestamp")?;
    Ok(Committed {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp,
    })
}

fn decode_group(value: &[u8]) -> Result<GroupRecord, String> {
    let mut v = Reader(value);
    let version = v.i16("group value version")?;
    if !(0..=4).contains(&version) {
        return Err(format!("unknown group value version {version}"));
    }
    let mut group = GroupRecord {
        protocol_type: v.string("protocol type")?,
        generation: v.i32("generation")?,
        ..GroupRecord::default()
    };
    if version == 4 {
        return Ok(group);
    }
    group.protocol = v.nullable_string("protocol")?;
    group.leader = v.nullable_string("leader")?;
    if version >= 2 {
        v.i64("state timestamp")?;
    }
    let count = usize::try_from(v.i32("member count")?).unwrap_or(0);
    if count > GROUP_MEMBERS_MAX {
        return Err(format!("{count} members, more than {GROUP_MEMBERS_MAX}"));
    }
    for _ in 0..count {
        let id = v.string("member id")?;
        let instance_id = if version >= 3 {
            v.nullable_string("instance id")?
        } else {
            None
        };
        let client_id = v.string("client id")?;
        let client_host = v.string("client host")?;
        let rebalance_timeout = if version >= 1 {
            v.millis("rebalance timeout")?
        } else {
            Duration::ZERO
        };
        let session_timeout = v.millis("session timeout")?;
        group.members.push(MemberRecord {
            id,
            instance_id,
            client_id,
            client_host,
            // Version 0 had one timeout for both.
            rebalance_timeout: if version >= 1 {
                rebalance_timeout
            } else {
                session_timeout
            },
            session_timeout,
            subscription: v.bytes("subscription")?,
            assignment: v.bytes("assignment")?,
        });
    }
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_tombstones_decode() {
        let committed = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp: 1_700_000_000_000,
        };
        let key = offset_key("g", "t", 7);
        let value = offset_value(&committed);
        assert_eq!(
            decode(&key, Some(&value)).unwrap(),
            Entry::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 7,
                committed: Some(committed),
            }
        );
        assert!(matches!(
            decode(&key, None).unwrap(),
            Entry::Offset {
                committed: None,
                ..
            }
        ));
    }

    #[test]
    fn group_metadata_round_trips_its_generation_members_and_assignments() {
        let member = |id: &str, instance: Option<&str>| MemberRecord {
            id: id.into(),
            instance_id: instance.map(str::to_string),
            client_id: "client".into(),
            client_host: "/10.0.0.1".into(),
            rebalance_timeout: Duration::from_millis(30_000),
            session_timeout: Duration::from_millis(10_000),
            subscription: Bytes::from_static(b"sub"),
            assignment: Bytes::from(format!("assigned to {id}")),
        };
        let empty = GroupRecord {
            generation: 9,
            protocol_type: "consumer".into(),
            ..GroupRecord::default()
        };
        let stable = GroupRecord {
            generation: 3,
            protocol_type: "consumer".into(),
            protocol: Some("range".into()),
            leader: Some("a".into()),
            members: vec![member("a", None), member("b", Some("static-b"))],
        };
        for record in [empty, stable] {
            let mut group = Group::new("g".into());
            group.restore(record.clone(), std::time::Instant::now());
            let value = group_value(&group, 5);
            assert_eq!(
                decode(&group_key("g"), Some(&value)).unwrap(),
                Entry::Group {
                    group: "g".into(),
                    metadata: Some(record),
                }
            );
        }
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert!(decode(&[], None).is_err());
        assert!(decode(&[0, 9], None).is_err());
        assert!(decode(&[0, 1, 0, 5, b'a'], None).is_err());
        let key = offset_key("g", "t", 0);
        assert!(decode(&key, Some(&[0, 3, 0, 0])).is_err());
        assert!(decode(&key, Some(&[0, 7])).is_err());
        assert!(decode(&group_key("g"), Some(&[0, 3, 0xff, 0xff])).is_err());
    }
}
