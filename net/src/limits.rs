//! Every bound the network layer places on memory and concurrency, in one place.

/// Largest request frame accepted (Kafka's `socket.request.max.bytes` default). A larger
/// length prefix closes the connection before anything is allocated for the frame.
pub const REQUEST_FRAME_BYTES_MAX: usize = 100 * 1024 * 1024;

/// Most request bytes one connection may have read but not yet answered. Reading stops
/// while it is reached: backpressure to the client through TCP, never buffering.
pub const CONNECTION_INFLIGHT_BYTES_MAX: usize = 128 * 1024 * 1024;

/// Most request bytes all connections of one shard may have read but not yet answered.
/// Readers wait for room: the shard's memory for requests is bounded whatever the number
/// of connections.
pub const SHARD_INFLIGHT_BYTES_MAX: usize = 512 * 1024 * 1024;

/// Most requests one connection may have in flight (pipelined) at once.
pub const CONNECTION_INFLIGHT_REQUESTS_MAX: usize = 1024;

/// Most connections one shard serves at once; further accepts are closed at once.
pub const SHARD_CONNECTIONS_MAX: usize = 16 * 1024;

/// How long a stopping shard waits for its connections to answer the requests they have
/// read. A fetch's `max_wait_ms` and a produce's `timeout_ms` are the client's to choose
/// (Kafka's clients use 0.5 s and 30 s), and a handler may be stuck by a bug; a signal
/// must stop the broker all the same. Connections still busy after this are dropped
/// unanswered, as a crash would.
pub const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(40);

/// Most partitions a topic may have (CreateTopics, auto-creation).
pub const TOPIC_PARTITIONS_MAX: i32 = 10_000;

/// Capacity of each shard-to-shard control channel (topic administration, catalog
/// snapshots). Administration is rare; senders wait when it is full.
pub const CONTROL_CHANNEL_CAPACITY: usize = 64;

/// Allocations at least this large are served by `ReservingAllocator` with reserved,
/// not committed, address space (see `alloc`).
pub const RESERVED_ALLOCATION_BYTES_MIN: usize = 1 << 30;

/// Largest response frame the blocking client (`client`) reads. A Fetch answer is
/// bounded by its request's `max_bytes`; this is far above what the tools ask for.
pub const RESPONSE_FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Most members one consumer group may have (Kafka's `group.max.size`); a join past it
/// gets GROUP_MAX_SIZE_REACHED.
pub const GROUP_MEMBERS_MAX: usize = 1000;

/// Most groups one shard coordinates. A join or commit that would create one more gets
/// COORDINATOR_NOT_AVAILABLE; it is a bound on the coordinator's memory.
pub const SHARD_GROUPS_MAX: usize = 100_000;

/// Most group requests another shard may have running on this shard's coordinator at once
/// (joins wait for a whole rebalance). Past it, the control channel is not read and the
/// senders wait.
pub const SHARD_GROUP_CALLS_INFLIGHT_MAX: usize = 4096;

/// Longest group id, member id, instance id or protocol name accepted: Kafka's
/// `__consumer_offsets` schemas give strings an i16 length. Longer ones are refused
/// (INVALID_GROUP_ID, INVALID_REQUEST) before they reach the log.
pub const GROUP_STRING_BYTES_MAX: usize = i16::MAX as usize;

/// Longest client id kept in a generated member id (`<client id>-<random>`).
pub const MEMBER_ID_CLIENT_PREFIX_BYTES_MAX: usize = 255;

/// Largest metadata string stored with a committed offset (Kafka's
/// `offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;

const _: () = assert!(CONNECTION_INFLIGHT_BYTES_MAX >= REQUEST_FRAME_BYTES_MAX);
const _: () = assert!(SHARD_INFLIGHT_BYTES_MAX >= CONNECTION_INFLIGHT_BYTES_MAX);
const _: () = assert!(RESERVED_ALLOCATION_BYTES_MIN > REQUEST_FRAME_BYTES_MAX);

/// Producer ids a broker takes from the metadata log at once (Kafka's block size).
pub const PRODUCER_ID_BLOCK: i32 = 1000;

/// Most partitions one leadership report (AlterPartition) to the controller carries: a
/// broker leading more reports the rest in its next rounds; the controller refuses a
/// larger request.
pub const LEADER_REPORTS_MAX: usize = 1000;

/// A fetch whose long-poll wait the partition's shard refused (its
/// `SHARD_PEER_WAITS_INFLIGHT_MAX` budget is spent, so it answers at once) asks again
/// after this pause instead of at once, which would spin until the fetch's deadline.
pub const FETCH_REFUSED_WAIT_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
