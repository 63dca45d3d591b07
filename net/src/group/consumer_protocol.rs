//! Kafka's consumer protocol: what consumer-group members put in JoinGroup metadata
//! (ConsumerProtocolSubscription) and SyncGroup assignments (ConsumerProtocolAssignment).
//! The coordinator is protocol-agnostic; it reads subscriptions only to refuse
//! OffsetDelete on topics a group consumes, and the command line speaks the protocol
//! as a member.
//!
//! Both start with an i16 version, then an i32-counted array: of topic names
//! (subscription), or of topic name and i32-counted partition array (assignment). Fields
//! after the array (user data, owned partitions in later versions) are ignored when
//! reading and written as null user data (v0). Reading never panics: a short or
//! malformed buffer is `None`.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

/// A cursor that returns `None` instead of reading past the end.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()?).ok()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

fn put_string(b: &mut BytesMut, s: &str) {
    // Topic names are at most 249 bytes.
    b.put_i16(s.len() as i16);
    b.put_slice(s.as_bytes());
}

/// The topics of a subscription.
pub fn subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut c = Cursor(metadata);
    c.i16()?;
    let count = c.i32()?;
    (0..count.max(0)).map(|_| c.string()).collect()
}

/// The partitions of an assignment, as (topic, partition).
pub fn assignment_partitions(assignment: &[u8]) -> Option<Vec<(String, i32)>> {
    let mut c = Cursor(assignment);
    c.i16()?;
    let topics = c.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let topic = c.string()?;
        let count = c.i32()?;
        for _ in 0..count.max(0) {
            out.push((topic.clone(), c.i32()?));
        }
    }
    Some(out)
}

/// A v0 subscription to `topics`.
pub fn encode_subscription(topics: &[String]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(topics.len() as i32);
    for t in topics {
        put_string(&mut b, t);
    }
    b.put_i32(-1);
    b.freeze()
}

/// A v0 assignment of these partitions, by topic.
pub fn encode_assignment(partitions: &BTreeMap<String, Vec<i32>>) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(partitions.len() as i32);
    for (t, ps) in partitions {
        put_string(&mut b, t);
        b.put_i32(ps.len() as i32);
        for p in ps {
            b.put_i32(*p);
        }
    }
    b.put_i32(-1);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_and_assignments_round_trip_and_bad_ones_are_none() {
        let topics = vec!["a".to_string(), "orders".to_string()];
        assert_eq!(
            subscription_topics(&encode_subscription(&topics)),
            Some(topics)
        );
        let assigned = BTreeMap::from([("t".to_string(), vec![3, 5])]);
        let bytes = encode_assignment(&assigned);
        assert_eq!(
            assignment_partitions(&bytes),
            Some(vec![("t".to_string(), 3), ("t".to_string(), 5)])
        );
        assert_eq!(assignment_partitions(&bytes[..15]), None);
        assert_eq!(assignment_partitions(&[]), None);
        assert_eq!(subscription_topics(&[0, 0, 0, 0, 0, 9]), None);
    }
}
