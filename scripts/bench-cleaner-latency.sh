#!/bin/bash
# Produce p99 on one topic while another takes keyed load, compacted or not (docs/PERFORMANCE.md,
# log compaction). usage: scripts/bench-cleaner-latency.sh delete|compact   (needs a release build)
set -u
SPATE=$(cd "$(dirname "$0")/.." && pwd)/target/release/spate
WORK=${WORK:-$(mktemp -d)}
echo "working in $WORK"
cd "$WORK" && rm -rf d broker.log
B=$SPATE
# SERVE_FLAGS: more flags for the broker, e.g. --log-cleaner-io-max-bytes-per-second 20000000
$B serve --listen 127.0.0.1:19600 --shards 2 --data-dir d --log-cleaner-backoff-ms 1000 ${SERVE_FLAGS:-} 2>broker.log &
PID=$!
trap 'kill $PID 2>/dev/null' EXIT
sleep 2
$B topic create c-0 --partitions 2 --brokers 127.0.0.1:19600 -c cleanup.policy=$1 -c segment.bytes=1048576 -c min.cleanable.dirty.ratio=0.01 >/dev/null
$B topic create t-0 --partitions 4 --brokers 127.0.0.1:19600 >/dev/null
$B bench produce --brokers 127.0.0.1:19600 --topic-prefix c --partitions 2 --keys uniform:1000 --record-size 1024 \
   --rate 20000 --acks=1 --duration 40 --warmup 0 --out bg-$1 > bg-$1.txt 2>&1 &
BG=$!
sleep 10
$B bench produce --brokers 127.0.0.1:19600 --topic-prefix t --partitions 4 --record-size 1024 \
   --rate 5000 --acks=-1 --duration 20 --warmup 3 --out fg-$1 > fg-$1.txt 2>&1
wait $BG
echo "$1: $(grep -m1 'ack latency (from due)' fg-$1.txt)"
echo "$1: background $(grep -m1 'produce:' bg-$1.txt)"
echo "$1: cleaning passes $(grep -c 'cleaned' broker.log), $(du -sh d/c-0-0 | cut -f1) + $(du -sh d/c-0-1 | cut -f1) left"
kill $PID; wait $PID 2>/dev/null
