#!/usr/bin/env bash
# The Kafka-level benchmark: librdkafka (bench/kafka, the `rdkafka` crate) against a
# release `spate serve`, with the baselines measured in the same run on the same machine:
# raw O_DIRECT disk bandwidth (dd) and loopback TCP bandwidth (iperf3). Prints one line
# per measurement and a summary of ratios. Not part of the test command (it takes a few
# minutes and needs the machine to itself). Knobs: SPATE_BENCH_DIR (on the disk to
# measure), RECORDS_100 and RECORDS_1K (records per produce run), LATENCY_SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${SPATE_BENCH_DIR:-target/kafka-bench}
records_100=${RECORDS_100:-5000000}
records_1k=${RECORDS_1K:-2000000}
latency_seconds=${LATENCY_SECONDS:-10}
port=${PORT:-19092}

command -v iperf3 >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null
}
cargo build -q --release -p spate-tools --bin spate
(cd bench/kafka && cargo build -q --release)
bench=bench/kafka/target/release/spate-kafka-bench
spate=target/release/spate

rm -rf "$dir" && mkdir -p "$dir"
broker=""
cleanup() { [ -n "$broker" ] && kill "$broker" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

# Baseline 1: raw O_DIRECT sequential writes to a new file, made durable (what a log
# append costs the disk), 4 MiB per write.
raw=$(dd if=/dev/zero of="$dir/raw" bs=4M count=512 oflag=direct conv=fdatasync 2>&1 | tail -1)
raw_mb=$(echo "$raw" | awk '{ v = $(NF-1); u = $NF; if (u ~ /^GB/) v *= 1000; print v }')
rm -f "$dir/raw"
echo "raw-disk o_direct mb_per_s=$raw_mb   ($raw)"

# Baseline 2: the disk's own durable-write latency at the latency test's rate: 20 KiB
# O_DIRECT appends, each followed by fdatasync, 1000 a second for 5 s.
fsync=$(python3 - "$dir/fsync-probe" <<'PY'
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_DIRECT, 0o644)
buf = mmap.mmap(-1, 20480)
buf.write(b"x" * 20480)
lat, off, end = [], 0, time.time() + 5
while time.time() < end:
    t = time.perf_counter()
    os.pwrite(fd, buf, off)
    os.fdatasync(fd)
    lat.append(time.perf_counter() - t)
    off += 20480
    time.sleep(max(0.0, 0.001 - (time.perf_counter() - t)))
lat.sort()
q = lambda p: round(lat[int(p * (len(lat) - 1))] * 1e6)
print(f"raw-disk fdatasync n={len(lat)} p50_us={q(.5)} p99_us={q(.99)} p999_us={q(.999)}")
os.unlink(sys.argv[1])
PY
)
echo "$fsync"

# Baseline 3: loopback TCP, one stream.
iperf3 -s -1 -p $((port + 1)) >/dev/null 2>&1 &
sleep 0.5
loop_mb=$(iperf3 -c 127.0.0.1 -p $((port + 1)) -t 5 -J |
  python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 8e6, 1))')
echo "loopback tcp mb_per_s=$loop_mb"

"$spate" serve --listen 127.0.0.1:$port --data-dir "$dir/data" --shards 2 2>"$dir/broker.log" &
broker=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
b=127.0.0.1:$port

"$bench" --brokers $b create --topic p100 --partitions 2 >/dev/null
"$bench" --brokers $b create --topic p1k --partitions 2 >/dev/null
"$bench" --brokers $b create --topic lat --partitions 1 >/dev/null
# The broker's CPU time (user + system, in clock ticks), to report cores used per phase.
ticks() { awk '{ print $14 + $15 }' "/proc/$broker/stat"; }
hz=$(getconf CLK_TCK)
phase() { # phase NAME COMMAND...: runs a client, prints its line and the broker's cores used
  local before after start end out
  before=$(ticks); start=$(date +%s.%N)
  out=$("${@:2}")
  after=$(ticks); end=$(date +%s.%N)
  echo "$out broker_cores=$(echo "$before $after $start $end $hz" | awk '{ printf "%.2f", ($2 - $1) / $5 / ($4 - $3) }')"
}
p100=$(phase p100 "$bench" --brokers $b produce --topic p100 --records "$records_100" --size 100)
echo "$p100"
p1k=$(phase p1k "$bench" --brokers $b produce --topic p1k --records "$records_1k" --size 1024)
echo "$p1k"
# Catch-up reads data that is no longer in the page cache: drop it where allowed. (On
# this VM the first read of just-written data is slow whatever reads it; see
# docs/PERFORMANCE.md.)
sync
echo 1 2>/dev/null >/proc/sys/vm/drop_caches || echo "(page cache not dropped: not permitted)"
c1k=$(phase c1k "$bench" --brokers $b consume --topic p1k --records "$records_1k")
echo "$c1k"
# Again, now that the data has been read once (warm on the host, not in this page cache
# if it could be dropped).
sync
echo 1 2>/dev/null >/proc/sys/vm/drop_caches || true
c1k_again=$(phase c1k "$bench" --brokers $b consume --topic p1k --records "$records_1k")
echo "$c1k_again"
# A third read, taking records from librdkafka 10,000 per call (consume_batch_queue)
# instead of one per poll.
sync
echo 1 2>/dev/null >/proc/sys/vm/drop_caches || true
c1k_batch=$(phase c1k "$bench" --brokers $b consume --topic p1k --records "$records_1k" --batch 10000)
echo "$c1k_batch"
lat=$(phase lat "$bench" --brokers $b latency --topic lat --size 1024 --mb-per-s 20 --seconds "$latency_seconds")
echo "$lat"
kill -TERM "$broker"; wait "$broker" || true; broker=""
grep -E "zero-copy|copied" "$dir/broker.log" | tail -2 || true

field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
python3 - "$raw_mb" "$loop_mb" "$(field "$p100" records_per_s)" "$(field "$p1k" mb_per_s)" \
  "$(field "$c1k" mb_per_s)" "$(field "$lat" p99_us)" "$(field "$lat" mb_per_s)" \
  "$(field "$fsync" p99_us)" "$(field "$lat" ack_p99_us)" "$(field "$c1k_again" mb_per_s)" \
  "$(field "$c1k_batch" mb_per_s)" <<'PY'
import sys
raw, loop, rec100, mb1k, cmb, p99, latmb, fsync99, ack99, cmb2, cmb3 = map(float, sys.argv[1:])
print()
print("| measure | result | target |")
print("|---|---|---|")
print(f"| produce 100-byte records, acks=all | {rec100/1e6:.2f} M records/s | >= 2 M/s |")
print(f"| produce 1 KiB records, acks=all, vs raw O_DIRECT | {mb1k:.0f} / {raw:.0f} MB/s = {100*mb1k/raw:.0f}% | >= 60% |")
print(f"| catch-up consume 1 KiB records vs loopback TCP | first read {cmb:.0f} / {loop:.0f} MB/s = {100*cmb/loop:.0f}%; second read {cmb2:.0f} MB/s = {100*cmb2/loop:.0f}%; third read, 10,000 records per call, {cmb3:.0f} MB/s = {100*cmb3/loop:.0f}% | >= 70% |")
print(f"| produce-to-consume p99 at {latmb:.0f} MB/s, acks=all (fsync) | {p99/1000:.2f} ms (acks: {ack99/1000:.2f} ms; raw fdatasync p99 {fsync99/1000:.2f} ms) | <= 2 ms |")
PY
