//! Every bound of the load generator, named once. A benchmark must not run out of memory
//! because the broker is slow: queues and buffers here are bounded, and a producer that
//! hits a bound waits, which the latency figures then show (they count from the time a
//! record was due, not from the time it could be sent).

use std::time::Duration;

/// Produce requests one connection may have unanswered (Kafka's
/// `max.in.flight.requests.per.connection`, whose default is 5).
pub const IN_FLIGHT_MAX: usize = 64;
/// Producers and consumers one run may start.
pub const CLIENTS_MAX: u32 = 1024;
/// Topics one run may use, and partitions per topic.
pub const TOPICS_MAX: u32 = 1024;
pub const PARTITIONS_MAX: i32 = 10_000;
/// The largest record value and batch a run may ask for.
pub const RECORD_BYTES_MAX: usize = 16 * 1024 * 1024;
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Distinct keys of a keyed workload (the Zipf sampler holds a table of this many).
pub const KEYS_MAX: u64 = 1 << 20;
/// A fetch asks for at most this much in all and per partition.
pub const FETCH_BYTES_MAX: i32 = 16 * 1024 * 1024;
pub const FETCH_PARTITION_BYTES_MAX: i32 = 4 * 1024 * 1024;
/// How long a fetch may wait at the broker for data (tail reads).
pub const FETCH_WAIT_MS: i32 = 100;
/// The broker's time to answer a produce request with acks=all.
pub const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// After the load stops: how long to wait for outstanding acknowledgements, and for
/// end-to-end consumers to read what was acknowledged.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Latencies are kept to 3 significant digits up to one hour; longer ones saturate.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
pub const LATENCY_DIGITS: u8 = 3;
/// Seconds of per-second timeline a run keeps (a day); later seconds are not charted.
pub const TIMELINE_SECONDS_MAX: usize = 86_400;
/// After a partition's leader refused a batch (NOT_LEADER_OR_FOLLOWER), how soon a
/// producer may ask for leaders again while the cluster has not settled.
pub const LEADER_REFRESH_INTERVAL: Duration = Duration::from_millis(250);
/// How long connecting and setup requests may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// `engine-latency`: appends issued and not yet durable; a batch due beyond this is
/// dropped and counted, so a stalled engine cannot grow the task list without bound.
pub const ENGINE_LATENCY_APPENDS_INFLIGHT_MAX: usize = 65_536;
/// `engine-latency`: the most the raw side writes at once after a stall; batches due
/// beyond it go in its next write.
pub const ENGINE_LATENCY_RAW_WRITE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes of random payload each producer draws record values from.
pub const PAYLOAD_POOL_BYTES: usize = 1024 * 1024;
