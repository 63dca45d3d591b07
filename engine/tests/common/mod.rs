//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use bytes::BytesMut;
use spate_engine::batch::{self, BatchHeader};
use spate_engine::{
    AckPolicy, LeaderEpoch, Offset, PartitionConfig, PartitionLog, ShardId, ShardResources,
    TopicPartition,
};

/// Runs a future on a fresh glommio executor (a "process": dropping it is a crash).
pub fn run<T>(future: impl Future<Output = T> + 'static) -> T {
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(future)
}

pub fn shard0() -> Rc<ShardResources> {
    ShardResources::new(ShardId(0), None)
}

pub fn tp() -> TopicPartition {
    TopicPartition::new("test-topic", 0)
}

pub async fn create(root: &Path, config: PartitionConfig) -> PartitionLog {
    create_on(root, config, shard0()).await
}

/// `create`, on the given shard resources (to watch what the shard counts).
pub async fn create_on(
    root: &Path,
    config: PartitionConfig,
    shard: Rc<ShardResources>,
) -> PartitionLog {
    PartitionLog::create(root, tp(), config, shard)
        .await
        .expect("create")
}

pub async fn reopen(root: &Path) -> spate_engine::Result<PartitionLog> {
    reopen_on(root, shard0()).await
}

/// `reopen`, on the given shard resources.
pub async fn reopen_on(
    root: &Path,
    shard: Rc<ShardResources>,
) -> spate_engine::Result<PartitionLog> {
    PartitionLog::open(root.join(tp().dir_name()), shard).await
}

pub fn batch(count: i32, value_bytes: usize, ts: i64) -> BytesMut {
    BytesMut::from(&batch::encode_test_batch(count, value_bytes, ts)[..])
}

/// Appends and returns the stored bytes (the batch with its assigned offset and epoch).
pub async fn append(
    log: &PartitionLog,
    count: i32,
    value_bytes: usize,
    ts: i64,
    policy: AckPolicy,
) -> Vec<u8> {
    let mut b = batch(count, value_bytes, ts);
    let info = log
        .append(b.clone(), LeaderEpoch(1), policy)
        .await
        .expect("append");
    batch::patch(&mut b, info.base_offset, LeaderEpoch(1));
    b.to_vec()
}

/// Reads every visible batch from `from`, as stored, checking offsets stay dense.
pub async fn read_all(log: &PartitionLog, from: Offset) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut offset = from;
    loop {
        let result = log.read(offset, 64 * 1024).await.expect("read");
        if result.chunks.is_empty() {
            return out;
        }
        let mut bytes = Vec::new();
        for chunk in result.chunks {
            chunk.copy_to(&mut bytes).expect("read a chunk");
        }
        let mut at = 0;
        let before = offset;
        while at + batch::HEADER_BYTES <= bytes.len() {
            let header = BatchHeader::parse(&bytes[at..]).expect("header");
            if at + header.size > bytes.len() {
                break; // a trailing partial batch, as Kafka fetches may return
            }
            if header.last_offset() >= offset {
                if let Some(prev) = out.last() {
                    let prev = BatchHeader::parse(prev).unwrap();
                    assert_eq!(
                        prev.last_offset().next(),
                        header.base_offset,
                        "offsets are dense"
                    );
                }
                batch::verify_stored(&bytes[at..at + header.size]).expect("stored batch is valid");
                out.push(bytes[at..at + header.size].to_vec());
                offset = header.last_offset().next();
            }
            at += header.size;
        }
        assert!(offset > before, "a read makes progress");
    }
}

pub fn small_segments(bytes: u64) -> PartitionConfig {
    let mut c = PartitionConfig::default();
    c.set("segment.bytes", &bytes.to_string()).unwrap();
    c
}

/// (offset, key, value) of every record of some stored batches, in order.
pub type Records = Vec<(i64, Option<Vec<u8>>, Option<Vec<u8>>)>;

pub fn records_of(batches: &[Vec<u8>]) -> Records {
    let mut out = Vec::new();
    for bytes in batches {
        let header = batch::verify_stored(bytes).expect("a stored batch");
        let section = spate_engine::compact::records_section(
            bytes,
            spate_engine::limits::DECOMPRESSED_BATCH_BYTES_MAX,
        )
        .expect("readable records");
        spate_engine::compact::each_record(&header, &section, |r| {
            out.push((
                r.offset.0,
                r.key.map(<[u8]>::to_vec),
                r.value.map(<[u8]>::to_vec),
            ));
        })
        .expect("well-formed records");
    }
    out
}

/// What a reader from the beginning ends with: each key's last value, tombstones deleting.
pub fn table(records: &Records) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    let mut map = std::collections::BTreeMap::new();
    for (_, key, value) in records {
        match (key, value) {
            (Some(k), Some(v)) => {
                map.insert(k.clone(), v.clone());
            }
            (Some(k), None) => {
                map.remove(k);
            }
            (None, _) => {}
        }
    }
    map
}

/// Every codec a batch may carry.
pub const CODECS: [batch::Compression; 5] = [
    batch::Compression::None,
    batch::Compression::Gzip,
    batch::Compression::Snappy,
    batch::Compression::Lz4,
    batch::Compression::Zstd,
];
