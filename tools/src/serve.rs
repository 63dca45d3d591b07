//! `spate serve`: configuration, start-up checks, signals and shutdown.
//!
//! Settings come from flags, then `SPATE_*` environment variables, then the TOML file of
//! `--config`, then defaults. Everything is validated, and the listen address probed,
//! before anything is created, so a bad start leaves nothing behind. SIGINT and SIGTERM
//! stop accepting, let connections finish what they have read, close every partition
//! cleanly (writing the clean-shutdown checkpoint) and exit 0.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use serde::Deserialize;
use spate_engine::shard::cores::machine_cores;
use spate_engine::shard::CoreSet;
use spate_engine::EngineConfig;
use spate_net::cluster::ClusterConfig;
use spate_net::group::GroupConfig;
use spate_net::{Broker, ServerConfig};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML file with any of: listen, advertise, data_dir, shards, cpuset, node_id,
    /// offsets_partitions, offsets_replication_factor, offsets_segment_bytes,
    /// group_initial_rebalance_delay_ms,
    /// log_cleaner_backoff_ms, log_cleaner_io_max_bytes_per_second,
    /// voters, peer_listen, cluster_id, default_replication_factor.
    #[arg(long, env = "SPATE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:9092].
    #[arg(long, env = "SPATE_LISTEN")]
    listen: Option<String>,
    /// Address clients are told to connect to [default: the listen address].
    #[arg(long, env = "SPATE_ADVERTISE")]
    advertise: Option<String>,
    /// Data directory, created if missing [default: ./spate-data].
    #[arg(long, env = "SPATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Number of shards (one per core) [default: the number of cores].
    #[arg(long, env = "SPATE_SHARDS")]
    shards: Option<usize>,
    /// Cores the shards are pinned to: `all` (shard i on core i), `none` (not pinned),
    /// or a list such as 0-3,6 (shard i on the i-th listed). Brokers sharing a machine
    /// need their own cores, or none [default: all].
    #[arg(long, env = "SPATE_CPUSET")]
    cpuset: Option<String>,
    /// This broker's node id [default: 1].
    #[arg(long, env = "SPATE_NODE_ID")]
    node_id: Option<i32>,
    /// Partitions of `__consumer_offsets` when it is created (Kafka's
    /// offsets.topic.num.partitions) [default: 50].
    #[arg(long, env = "SPATE_OFFSETS_PARTITIONS")]
    offsets_partitions: Option<i32>,
    /// Cluster mode: replicas of each `__consumer_offsets` partition when it is created,
    /// at most the number of voters (Kafka's offsets.topic.replication.factor)
    /// [default: 3].
    #[arg(long, env = "SPATE_OFFSETS_REPLICATION_FACTOR")]
    offsets_replication_factor: Option<u32>,
    /// Segment size of `__consumer_offsets` when it is created (Kafka's
    /// offsets.topic.segment.bytes) [default: 104857600].
    #[arg(long, env = "SPATE_OFFSETS_SEGMENT_BYTES")]
    offsets_segment_bytes: Option<u64>,
    /// How long the first rebalance of an empty group waits for more members (Kafka's
    /// group.initial.rebalance.delay.ms) [default: 3000].
    #[arg(long, env = "SPATE_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    group_initial_rebalance_delay_ms: Option<u64>,
    /// How often each shard looks for compacted topics' partitions due a cleaning pass
    /// (Kafka's log.cleaner.backoff.ms) [default: 15000].
    #[arg(long, env = "SPATE_LOG_CLEANER_BACKOFF_MS")]
    log_cleaner_backoff_ms: Option<u64>,
    /// Bytes a second each shard's cleaner may read and write (Kafka's
    /// log.cleaner.io.max.bytes.per.second) [default: unlimited].
    #[arg(long, env = "SPATE_LOG_CLEANER_IO_MAX_BYTES_PER_SECOND")]
    log_cleaner_io_max_bytes_per_second: Option<u64>,
    /// Cluster mode: every voter of the metadata quorum as ID@HOST:PORT, comma
    /// separated, with the address its shard 0 takes replication traffic on (shard i
    /// on the port plus i). A broker whose --node-id is not among them joins the
    /// cluster without voting (it needs --peer-listen).
    #[arg(long, env = "SPATE_VOTERS")]
    voters: Option<String>,
    /// Cluster mode: where this broker's shard 0 listens for peers [default: its
    /// address in --voters]. For a broker that is not a voter, also the address peers
    /// reach it at, so not 0.0.0.0.
    #[arg(long, env = "SPATE_PEER_LISTEN")]
    peer_listen: Option<String>,
    /// Cluster mode: the cluster's id, the same on every broker [default: derived from
    /// --voters].
    #[arg(long, env = "SPATE_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Cluster mode: replicas of a topic created without a replication factor (Kafka's
    /// default.replication.factor) [default: 1].
    #[arg(long, env = "SPATE_DEFAULT_REPLICATION_FACTOR")]
    default_replication_factor: Option<u32>,
}

/// The `--config` file. Unknown keys are errors, not silently ignored.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    shards: Option<usize>,
    cpuset: Option<String>,
    node_id: Option<i32>,
    offsets_partitions: Option<i32>,
    offsets_replication_factor: Option<u32>,
    offsets_segment_bytes: Option<u64>,
    group_initial_rebalance_delay_ms: Option<u64>,
    log_cleaner_backoff_ms: Option<u64>,
    log_cleaner_io_max_bytes_per_second: Option<u64>,
    voters: Option<String>,
    peer_listen: Option<String>,
    cluster_id: Option<String>,
    default_replication_factor: Option<u32>,
}

/// Validated settings.
#[derive(Debug)]
struct Settings {
    listen: SocketAddr,
    advertise: SocketAddr,
    data_dir: PathBuf,
    shards: usize,
    cores: CoreSet,
    node_id: i32,
    groups: GroupConfig,
    cleaner_interval: std::time::Duration,
    cleaner_io_bytes_per_sec: Option<u64>,
    cluster: Option<ClusterConfig>,
}

/// Upper bound of `log_cleaner_backoff_ms`: a day.
const CLEANER_BACKOFF_MS_MAX: u64 = 86_400_000;

/// Upper bound of `group_initial_rebalance_delay_ms` (Kafka's own is unbounded; five
/// minutes is already more than any client waits).
const INITIAL_REBALANCE_DELAY_MS_MAX: u64 = 300_000;

fn address(name: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .to_socket_addrs()
        .map_err(|e| format!("invalid {name} '{value}': {e}"))?
        .next()
        .ok_or_else(|| format!("invalid {name} '{value}': it resolves to no address"))
}

fn settings(args: ServeArgs) -> Result<Settings, String> {
    let file = match &args.config {
        None => FileConfig::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e: toml::de::Error| {
                // toml's Display spans several lines with a source excerpt; keep one line.
                let line = e
                    .span()
                    .map_or(0, |span| text[..span.start].lines().count().max(1));
                format!(
                    "invalid config file {} (line {line}): {}",
                    path.display(),
                    e.message().replace('\n', " ")
                )
            })?
        }
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let listen = address("listen address", &listen)?;
    let advertise = match args.advertise.or(file.advertise) {
        Some(a) => address("advertise address", &a)?,
        None => listen,
    };
    if advertise.ip().is_unspecified() {
        return Err(format!(
            "advertise address {advertise} is not one clients can connect to; set --advertise"
        ));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = args.shards.or(file.shards).unwrap_or(cores);
    if shards == 0 || shards > spate_engine::limits::SHARDS_MAX {
        return Err(format!(
            "invalid shards {shards}: must be between 1 and {}",
            spate_engine::limits::SHARDS_MAX
        ));
    }
    let cores = match args.cpuset.or(file.cpuset) {
        None => CoreSet::All,
        Some(text) => CoreSet::parse(&text, &machine_cores())
            .map_err(|e| format!("invalid cpuset '{text}': {e}"))?,
    };
    let node_id = args.node_id.or(file.node_id).unwrap_or(1);
    if node_id < 0 {
        return Err(format!("invalid node id {node_id}: must be 0 or more"));
    }
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("spate-data"));
    let mut groups = GroupConfig::default();
    if let Some(n) = args.offsets_partitions.or(file.offsets_partitions) {
        if !(1..=spate_net::limits::TOPIC_PARTITIONS_MAX).contains(&n) {
            return Err(format!(
                "invalid offsets partitions {n}: must be between 1 and {}",
                spate_net::limits::TOPIC_PARTITIONS_MAX
            ));
        }
        groups.offsets_partitions = n;
    }
    if let Some(n) = args
        .offsets_replication_factor
        .or(file.offsets_replication_factor)
    {
        // Kafka's replication factors are i16s.
        if !(1..=i16::MAX as u32).contains(&n) {
            return Err(format!(
                "invalid offsets replication factor {n}: must be between 1 and {}",
                i16::MAX
            ));
        }
        groups.offsets_replication_factor = n;
    }
    if let Some(bytes) = args.offsets_segment_bytes.or(file.offsets_segment_bytes) {
        spate_engine::PartitionConfig::default()
            .set("segment.bytes", &bytes.to_string())
            .map_err(|e| format!("invalid offsets segment bytes {bytes}: {e}"))?;
        groups.offsets_segment_bytes = bytes;
    }
    if let Some(ms) = args
        .group_initial_rebalance_delay_ms
        .or(file.group_initial_rebalance_delay_ms)
    {
        if ms > INITIAL_REBALANCE_DELAY_MS_MAX {
            return Err(format!(
                "invalid group initial rebalance delay {ms} ms: must be at most {INITIAL_REBALANCE_DELAY_MS_MAX}"
            ));
        }
        groups.initial_rebalance_delay = std::time::Duration::from_millis(ms);
    }
    let cleaner_ms = args
        .log_cleaner_backoff_ms
        .or(file.log_cleaner_backoff_ms)
        .unwrap_or(15_000);
    if !(10..=CLEANER_BACKOFF_MS_MAX).contains(&cleaner_ms) {
        return Err(format!(
            "invalid log cleaner backoff {cleaner_ms} ms: must be between 10 and {CLEANER_BACKOFF_MS_MAX}"
        ));
    }
    let cleaner_rate = args
        .log_cleaner_io_max_bytes_per_second
        .or(file.log_cleaner_io_max_bytes_per_second);
    if cleaner_rate == Some(0) {
        return Err("invalid log cleaner io max bytes per second 0: must be at least 1".into());
    }
    let cluster = cluster_settings(
        node_id,
        shards,
        args.voters.or(file.voters),
        args.peer_listen.or(file.peer_listen),
        args.cluster_id.or(file.cluster_id),
        args.default_replication_factor
            .or(file.default_replication_factor),
    )?;
    Ok(Settings {
        listen,
        advertise,
        data_dir,
        shards,
        cores,
        node_id,
        groups,
        cleaner_interval: std::time::Duration::from_millis(cleaner_ms),
        cleaner_io_bytes_per_sec: cleaner_rate,
        cluster,
    })
}

/// Cluster mode's settings, if `voters` is given.
fn cluster_settings(
    node_id: i32,
    shards: usize,
    voters: Option<String>,
    peer_listen: Option<String>,
    cluster_id: Option<String>,
    default_replication_factor: Option<u32>,
) -> Result<Option<ClusterConfig>, String> {
    let Some(voters) = voters else {
        if peer_listen.is_some() || cluster_id.is_some() || default_replication_factor.is_some() {
            return Err(
                "--peer-listen, --cluster-id and --default-replication-factor need --voters".into(),
            );
        }
        return Ok(None);
    };
    let voters = spate_net::cluster::parse_voters(&voters)?;
    let me = u32::try_from(node_id)
        .map_err(|_| format!("invalid node id {node_id}: cluster mode needs 0 or more"))?;
    let own = voters.get(&me).copied();
    let peer_listen = match (peer_listen, own) {
        (Some(a), _) => address("peer listen address", &a)?,
        (None, Some(own)) => own,
        (None, None) => {
            return Err(format!(
                "node id {node_id} is not among the voters {:?}: a broker that is not a voter needs --peer-listen, the address its peers reach it at",
                voters.keys().collect::<Vec<_>>()
            ))
        }
    };
    if own.is_none() && peer_listen.ip().is_unspecified() {
        return Err(format!(
            "--peer-listen {peer_listen}: a broker that is not a voter is reached there, so it must name an address, not {}",
            peer_listen.ip()
        ));
    }
    // Shard i of every broker listens on its port plus i: the ranges must not overlap
    // (the listeners use SO_REUSEPORT, so an overlap would silently share a port).
    let mut brokers = voters.clone();
    brokers.insert(me, own.unwrap_or(peer_listen));
    for (a, x) in &brokers {
        let later = (std::ops::Bound::Excluded(*a), std::ops::Bound::Unbounded);
        for (b, y) in brokers.range(later) {
            let (lo, hi) = if x.port() <= y.port() { (x, y) } else { (y, x) };
            if x.ip() == y.ip() && usize::from(hi.port()) < usize::from(lo.port()) + shards {
                return Err(format!(
                    "brokers {a} and {b} are {} ports apart on {}, fewer than the {shards} shards each needs (shard i takes the port plus i)",
                    hi.port() - lo.port(),
                    x.ip()
                ));
            }
        }
    }
    if let Some(id) = &cluster_id {
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "invalid cluster id '{id}': 1 to 64 printable characters, no spaces"
            ));
        }
    }
    // Brokers that are not voters count too: a factor above the brokers registered
    // is refused when a topic is created.
    let rf = default_replication_factor.unwrap_or(1);
    if rf == 0 {
        return Err("invalid default replication factor 0: must be at least 1".into());
    }
    Ok(Some(ClusterConfig::new(
        peer_listen,
        voters,
        cluster_id,
        rf,
    )))
}

/// Fails if another process holds the address. The shards bind with SO_REUSEPORT, which
/// would otherwise silently share a port with another broker.
fn probe_port(listen: SocketAddr) -> Result<(), String> {
    spate_engine::shard::listen::probe(listen)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))
}

/// Creates the data directory if missing and checks that it is writable.
fn prepare_data_dir(dir: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"")
        .map_err(|e| format!("data directory {} is not writable: {e}", dir.display()))?;
    std::fs::remove_file(&probe)
        .map_err(|e| format!("data directory {} is not writable: {e}", dir.display()))
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts) and waits for
/// them on a dedicated thread, which sets `stop`.
fn handle_signals(stop: Arc<AtomicBool>) -> Result<(), String> {
    // SAFETY: plain libc signal-set manipulation on a local, zero-initialised set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err("cannot block SIGINT/SIGTERM".into());
        }
        set
    };
    std::thread::Builder::new()
        .name("spate-signals".into())
        .spawn(move || loop {
            let mut signal = 0;
            // SAFETY: waits on the set blocked above; writes only `signal`.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                tracing::info!(
                    signal,
                    "shutting down: no new connections; finishing requests in flight"
                );
                stop.store(true, Ordering::Relaxed);
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}

fn warn_if_strict_overcommit() {
    if std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|v| v.trim() == "2") {
        tracing::warn!("vm.overcommit_memory=2: a request claiming a huge array may abort the broker (see net/src/alloc.rs)");
    }
}

/// Runs the broker until a signal; `Err` is the one line to print.
pub fn run(args: ServeArgs) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = settings(args)?;
    probe_port(settings.listen)?;
    if let Some(cluster) = &settings.cluster {
        for shard in 0..settings.shards {
            let peer =
                spate_net::cluster::shard_address(cluster.peer_listen, shard).ok_or_else(|| {
                    format!(
                        "peer port {} plus {shard} shards is past 65535",
                        cluster.peer_listen.port()
                    )
                })?;
            probe_port(peer)?;
        }
    }
    prepare_data_dir(&settings.data_dir)?;
    warn_if_strict_overcommit();
    let stop = Arc::new(AtomicBool::new(false));
    handle_signals(stop.clone())?;
    let mut engine = EngineConfig::new(&settings.data_dir, settings.shards);
    engine.cores = settings.cores;
    engine.cleaner_interval = settings.cleaner_interval;
    engine.cleaner_io_bytes_per_sec = settings.cleaner_io_bytes_per_sec;
    let server = ServerConfig {
        listen: settings.listen,
        advertise: settings.advertise,
        node_id: settings.node_id,
        data_dir: settings.data_dir.clone(),
        default_partitions: 1,
        auto_create_topics: true,
        groups: settings.groups,
        cluster: settings.cluster,
    };
    let broker = Broker::start(engine, server, stop)?;
    if !broker.is_serving() {
        return broker
            .join()
            .and(Err("a shard could not start serving (see the log)".into()));
    }
    tracing::info!(
        listen = %settings.listen,
        advertise = %settings.advertise,
        data_dir = %settings.data_dir.display(),
        shards = settings.shards,
        node_id = settings.node_id,
        "spate is serving"
    );
    broker.join()?;
    tracing::info!("stopped cleanly");
    Ok(())
}
