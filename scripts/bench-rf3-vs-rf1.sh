#!/bin/bash
# RF=3 against RF=1 on three local brokers, alternating rounds (docs/PERFORMANCE.md, replication).
# usage: [CPUSET=none] scripts/bench-rf3-vs-rf1.sh [ROUNDS] [MAX_IN_FLIGHT]   (needs a release build)
# Three brokers share this machine, so they are not pinned (each would pin its shard 0 to
# core 0) unless CPUSET says otherwise.
set -u
SPATE=${SPATE:-$(cd "$(dirname "$0")/.." && pwd)/target/release/spate}
WORK=${WORK:-$(mktemp -d)}
echo "working in $WORK (each RF=1 round writes about 10 GB there)"
cd "$WORK" && rm -rf d1 d2 d3 *.log out-*
B=$SPATE
V="1@127.0.0.1:19410,2@127.0.0.1:19420,3@127.0.0.1:19430"
PIDS=""
for i in 1 2 3; do
  $B serve --node-id $i --listen 127.0.0.1:1940$i --peer-listen 127.0.0.1:194${i}0 --voters $V --data-dir d$i --shards 1 --cpuset ${CPUSET:-none} >>b$i.log 2>&1 &
  PIDS="$PIDS $!"
done
trap 'kill -9 $PIDS 2>/dev/null' EXIT
sleep 4
for RF in 1 3; do $B topic create rf$RF-0 --partitions 6 --replicas $RF --brokers 127.0.0.1:19401 >/dev/null; done
sleep 35   # the preferred-leader check spreads the leaders (2 per broker)
$B topic describe rf3-0 --brokers 127.0.0.1:19401 --format json | python3 -c "import json,sys; print('rf3 leaders', [p['leader'] for p in json.load(sys.stdin)['partitions']])"
$B topic describe rf1-0 --brokers 127.0.0.1:19401 --format json | python3 -c "import json,sys; print('rf1 leaders', [p['leader'] for p in json.load(sys.stdin)['partitions']])"
for r in $(seq 1 ${1:-3}); do
  for RF in 1 3; do
    $B bench produce --brokers 127.0.0.1:19403 --topic-prefix rf$RF --partitions 6 --replication-factor $RF \
       --record-size 1024 --batch-bytes 262144 --linger-ms 5 --acks=-1 --max-in-flight ${2:-5} \
       --duration 12 --warmup 3 --out out-rf$RF-r$r > out-rf$RF-r$r.txt 2>&1
    echo "round $r RF=$RF: $(grep -m1 'produce:' out-rf$RF-r$r.txt)"
  done
done
