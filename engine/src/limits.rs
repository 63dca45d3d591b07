//! Every bound the engine places on memory, queues and file sizes, in one place.
//!
//! A limit that is not named here does not exist: code that buffers, queues or caches
//! anything refers to one of these constants (or to a per-topic config whose range is
//! checked against them). Relations between limits are checked at compile time below, and
//! the per-shard memory budget is written out as a sum at the bottom of this file.

/// Alignment (and granularity) of every O_DIRECT write. 4 KiB covers the logical block
/// size of every disk we target; glommio reports 512 on some devices, and 4 KiB is a
/// multiple of that, so aligning to 4 KiB is always also aligned for the device.
pub const DIRECT_IO_ALIGNMENT: u64 = 4096;

/// Largest O_DIRECT staging chunk. Appends are copied into chunks; a flush cycle writes
/// each chunk with one `write_at`. The first chunk of a cycle is small and each next one
/// doubles up to this size, so an idle partition pins little and a busy one writes in
/// large, efficient requests.
pub const STAGING_CHUNK_BYTES: usize = 1024 * 1024;

/// Smallest O_DIRECT staging chunk (the first chunk of a flush cycle).
pub const STAGING_CHUNK_BYTES_MIN: usize = 16 * 1024;

/// When more than this is staged, a flush cycle takes only a front of about this many
/// bytes and leaves the rest for the next cycle, which then writes while this one's
/// `fdatasync` runs and its appenders refill. One cycle taking everything would leave the
/// disk idle while its appenders refill (docs/PERFORMANCE.md).
pub const FLUSH_FRONT_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Most bytes a partition may hold staged (appended but not yet written) before appends
/// wait for the flush cycle in progress. This is the backpressure point of the write path.
pub const PARTITION_STAGED_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Most staged bytes over all partitions of one shard. Appends take permits from one
/// shard-wide semaphore and return them when their flush cycle ends.
pub const SHARD_STAGED_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Most bytes of recent batches a partition keeps in its tail cache, so that tail readers
/// are served from memory.
pub const PARTITION_TAIL_CACHE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most tail-cache bytes over all partitions of one shard. When it is reached, a
/// partition evicts its own oldest cached batches first, and caches nothing new if that
/// is not enough: readers then go to disk, which is always correct.
pub const SHARD_TAIL_CACHE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Most batches in the tail cache (bounds the bookkeeping for tiny batches).
pub const PARTITION_TAIL_CACHE_BATCHES_MAX: usize = 16 * 1024;

/// Segment base offsets lie below this (file names are 20 digits, and offset arithmetic
/// past a base must not overflow). Recovery ignores files named past it; a log restarted
/// at a leader's log start refuses to go past it.
pub const SEGMENT_BASE_LIMIT: i64 = i64::MAX / 2;

/// Most partitions one shard owns. Creating one more fails with a recoverable error.
pub const SHARD_PARTITIONS_MAX: usize = 4096;

/// Capacity of each shard-to-shard channel of the request mesh and of the reply mesh
/// (`shard::reply`; messages, not bytes). A shard's reply outbox, where replies wait for
/// room in the reply mesh, has no capacity of its own. It holds at most one reply per
/// request this shard is executing for its peers: `SHARD_PEER_REQUESTS_INFLIGHT_MAX` plus
/// `SHARD_PEER_WAITS_INFLIGHT_MAX` per peer, plus the broker's control requests.
pub const SHARD_CHANNEL_CAPACITY: usize = 1024;

/// Most cross-shard requests a shard executes at once for one peer. When reached, the
/// shard stops draining that peer's channel, the channel fills, and the peer's senders
/// wait: backpressure, never unbounded task growth.
pub const SHARD_PEER_REQUESTS_INFLIGHT_MAX: usize = 256;

/// Most long-poll waits (`Shard::wait_for_data`) a shard holds at once for one peer.
/// Waits have their own budget so that parked consumers never take the request slots
/// appends and reads need.
pub const SHARD_PEER_WAITS_INFLIGHT_MAX: usize = 4096;

/// Most shards (cores) one process runs.
pub const SHARDS_MAX: usize = 256;

/// A Kafka RecordBatch can never exceed this, whatever `max.message.bytes` says: the
/// batch length field is an i32 and we keep a whole batch in one staging pass.
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Segment files grow by `fallocate` in steps of this size, ahead of the writes. On ext4
/// and xfs an O_DIRECT write that extends a file must allocate blocks and change the
/// file size, which every `fdatasync` then has to commit to the journal; writing into
/// preallocated space avoids the size change. Measured here: fsync'd sequential 1 MiB
/// writes went from 875 MB/s appending to 1464 MB/s into preallocated space
/// (docs/PERFORMANCE.md). Redpanda uses the same default step.
pub const SEGMENT_PREALLOCATION_BYTES: u64 = 32 * 1024 * 1024;

/// Deleted segment files a partition keeps to write new segments over (`log::recycle`).
/// In a steady state each roll takes one and the retention pass after it gives one back,
/// so two cover a pass that comes late.
pub const RECYCLED_SEGMENTS_MAX: usize = 2;

/// Disk space the free files of one shard's partitions may take together, beyond what
/// `retention.bytes` keeps: retention on a shard with many partitions must still free
/// the disk. Four default-size (1 GiB) segments; past it, deleted files are unlinked.
pub const SHARD_RECYCLED_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;

/// Most records a compressed batch may claim per byte of its compressed records. The
/// record count of an uncompressed batch is checked exactly by walking its records; a
/// compressed one cannot be walked without its codec, so its claim is bounded instead,
/// which keeps a client from burning offsets (and forcing segment rolls) with a tiny
/// batch claiming two billion records. A record is at least 7 bytes uncompressed, so
/// this allows compression ratios beyond 7000:1.
pub const COMPRESSED_RECORDS_PER_BYTE_MAX: i64 = 1024;

/// Batches remembered per idempotent producer and partition for duplicate detection
/// (Kafka's max.in.flight.requests.per.connection bound for idempotence).
pub const PRODUCER_BATCHES_CACHED: usize = 5;

/// Idempotent producers whose state a partition keeps; the least recently used is
/// forgotten beyond this (its next batch then needs sequence 0 or is refused as unknown).
pub const PARTITION_PRODUCERS_MAX: usize = 10_000;

/// Largest segment a topic may configure. Positions inside a segment are u32 in the
/// `.index` format, so a segment must stay below 4 GiB.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;

/// Smallest segment a topic may configure (Kafka's own floor for `segment.bytes`).
pub const SEGMENT_BYTES_MIN: u64 = 14;

/// Log bytes between two sparse index entries (Kafka's `index.interval.bytes`).
pub const INDEX_INTERVAL_BYTES: u32 = 4096;

/// Most bytes a compressed batch's records may inflate to when the broker reads inside
/// it (exact timestamp lookups). Transient, one batch per request at a time; a batch
/// inflating further is answered from its base offset instead.
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The cleaner reads and writes segments in steps of this many bytes.
pub const COMPACTION_IO_BYTES: usize = 1024 * 1024;
/// Bytes a cleaning pass's key map may take (each key's bytes plus about 48): a
/// partition with more distinct keys is cleaned in part, oldest segments first.
pub const COMPACTION_KEY_MAP_BYTES: usize = 64 * 1024 * 1024;

/// A flush cycle's write or sync stage taking at least this long is logged (with its
/// bytes and whether it preallocated): acks=all latency is bounded below by it.
pub const SLOW_FLUSH_STAGE: std::time::Duration = std::time::Duration::from_millis(20);

/// Size of the window read from disk when scanning batch headers (index lookup, recovery).
pub const HEADER_SCAN_WINDOW_BYTES: usize = 64 * 1024;

/// Largest engine metadata file (checkpoint, partition meta) we accept on load.
pub const METADATA_FILE_BYTES_MAX: usize = 1024 * 1024;

/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

const _: () = assert!(STAGING_CHUNK_BYTES as u64 % DIRECT_IO_ALIGNMENT == 0);
const _: () = assert!(STAGING_CHUNK_BYTES_MIN as u64 % DIRECT_IO_ALIGNMENT == 0);
const _: () = assert!(STAGING_CHUNK_BYTES % STAGING_CHUNK_BYTES_MIN == 0);
const _: () = assert!(SHARD_STAGED_BYTES_MAX >= PARTITION_STAGED_BYTES_MAX);
const _: () = assert!(SHARD_TAIL_CACHE_BYTES_MAX >= PARTITION_TAIL_CACHE_BYTES_MAX);
const _: () = assert!(PARTITION_STAGED_BYTES_MAX >= 2 * BATCH_BYTES_MAX / 4);
const _: () = assert!(PARTITION_STAGED_BYTES_MAX >= STAGING_CHUNK_BYTES);
const _: () = assert!(FLUSH_FRONT_BYTES_MAX >= STAGING_CHUNK_BYTES);
const _: () = assert!(HEADER_SCAN_WINDOW_BYTES as u64 % DIRECT_IO_ALIGNMENT == 0);
const _: () = assert!(HEADER_SCAN_WINDOW_BYTES >= 2 * INDEX_INTERVAL_BYTES as usize);
const _: () = assert!(BATCH_BYTES_MAX as u64 <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_PREALLOCATION_BYTES % DIRECT_IO_ALIGNMENT == 0);
const _: () = assert!(SHARD_PEER_REQUESTS_INFLIGHT_MAX <= SHARD_CHANNEL_CAPACITY);

/// Bytes of one `.index` entry (relative offset u32 + position u32).
pub const OFFSET_INDEX_ENTRY_BYTES: usize = 8;
/// Bytes of one `.timeindex` entry (timestamp i64 + relative offset u32).
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;

/// In-memory index bytes per byte of retained log, at most: one offset entry and one
/// time entry per `INDEX_INTERVAL_BYTES`. Indexes scale with retained data, not with
/// client input rate, so they are budgeted as a fraction of the log (about 0.5%).
pub const INDEX_BYTES_PER_LOG_BYTE_MAX: f64 =
    (OFFSET_INDEX_ENTRY_BYTES + TIME_INDEX_ENTRY_BYTES) as f64 / INDEX_INTERVAL_BYTES as f64;

/// Per-shard memory budget for traffic-driven buffers, excluding indexes (see
/// `INDEX_BYTES_PER_LOG_BYTE_MAX`) and the glommio reactor's own io memory:
/// - staged appends, at most `SHARD_STAGED_BYTES_MAX`;
/// - staging chunks holding them: chunks double in size, so the chunks of one cycle are
///   at most twice what they hold, plus one page of carried-over partial tail and one
///   minimum chunk for every partition;
/// - the tail cache, at most `SHARD_TAIL_CACHE_BYTES_MAX` (it shares the batch buffers
///   the appends came in, so it is counted once here and not again in the network layer);
/// - the mesh: every inbound channel full of message slots (payloads are `Bytes` handles
///   to buffers counted by the network layer, so only the slots are counted here).
pub const SHARD_MEMORY_BYTES_MAX: usize = 2 * SHARD_STAGED_BYTES_MAX
    + SHARD_PARTITIONS_MAX * (STAGING_CHUNK_BYTES_MIN + DIRECT_IO_ALIGNMENT as usize)
    + SHARD_TAIL_CACHE_BYTES_MAX
    + SHARDS_MAX * SHARD_CHANNEL_CAPACITY * 256;

// The budget above comes to about 1.1 GiB per shard; keep it under 2 GiB so that a 2-core
// machine with 24 GiB has ample room for the page cache that zero-copy reads use.
const _: () = assert!(SHARD_MEMORY_BYTES_MAX < 2 * 1024 * 1024 * 1024);
