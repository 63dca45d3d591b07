"""Consumer groups with stock clients against a running `spate serve`.

Usage: groups.py COMMAND PORT. Every command exits non-zero with a message on the first
broken expectation. Records are produced only once a group's assignment is settled, so
"each record consumed exactly once" is exact, not approximate.
"""

import os
import signal
import subprocess
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 4
SETTLE_SECONDS = 40


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def bootstrap(port):
    return f"127.0.0.1:{port}"


def create(port, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap(port)})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(timeout=30)


def produce(port, topic, count, start=0):
    producer = Producer({"bootstrap.servers": bootstrap(port), "acks": "all"})
    for i in range(start, start + count):
        producer.produce(topic, value=str(i).encode(), partition=i % PARTITIONS)
    check(producer.flush(30) == 0, "every record was acknowledged")


def consumer(port, group, **extra):
    config = {
        "bootstrap.servers": bootstrap(port),
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }
    config.update(extra)
    return Consumer(config)


class Member:
    """A group member of either client library, behind one interface."""

    def __init__(self, name, client, kind):
        self.name, self.client, self.kind = name, client, kind

    def poll(self):
        """Records returned by one short poll, as (partition, value)."""
        if self.kind == "confluent":
            message = self.client.poll(0.1)
            if message is None:
                return []
            check(message.error() is None, f"{self.name}: {message.error()}")
            return [(message.partition(), int(message.value()))]
        batches = self.client.poll(timeout_ms=100)
        return [(r.partition, int(r.value)) for rs in batches.values() for r in rs]

    def partitions(self):
        return {tp.partition for tp in self.client.assignment()}

    def commit(self):
        if self.kind == "confluent":
            self.client.commit(asynchronous=False)
        else:
            self.client.commit()

    def close(self):
        self.client.close()


def settle(members, expect_all_busy=True):
    """Polls every member until their assignments split the partitions with no overlap
    (each member holding some, if asked) and stay so for a second. Nothing may be
    consumed meanwhile: no records are produced before this returns."""
    deadline = time.time() + SETTLE_SECONDS
    stable_since = None
    while time.time() < deadline:
        for m in members:
            check(m.poll() == [], f"{m.name} consumed before anything was produced")
        owned = [m.partitions() for m in members]
        split = sum(len(o) for o in owned) == PARTITIONS and set().union(*owned) == set(
            range(PARTITIONS)
        )
        if split and (not expect_all_busy or all(owned)):
            stable_since = stable_since or time.time()
            if time.time() - stable_since >= 1.0:
                return owned
        else:
            stable_since = None
    fail(f"assignments never settled: {[sorted(m.partitions()) for m in members]}")


def consume_exactly(members, values):
    """Polls until every value in `values` was consumed; each exactly once, each from a
    partition its consumer owns."""
    wanted = set(values)
    seen = {}
    deadline = time.time() + SETTLE_SECONDS
    while len(seen) < len(wanted) and time.time() < deadline:
        for m in members:
            owned = m.partitions()
            for partition, value in m.poll():
                check(value in wanted, f"{m.name} consumed unexpected {value}")
                check(value not in seen, f"{value} consumed twice ({seen.get(value)}, {m.name})")
                check(partition in owned, f"{m.name} consumed partition {partition} it does not own")
                seen[value] = m.name
    check(len(seen) == len(wanted), f"consumed {len(seen)} of {len(wanted)}")
    for m in members:
        m.commit()
    return seen


def split(port):
    """Two, then three confluent-kafka members share a topic; then a cooperative-sticky
    group does the same."""
    create(port, "split")
    members = [Member(f"c{i}", consumer(port, "split-g"), "confluent") for i in (1, 2)]
    for m in members:
        m.client.subscribe(["split"])
    settle(members)
    produce(port, "split", 400)
    consume_exactly(members, range(400))
    third = Member("c3", consumer(port, "split-g"), "confluent")
    third.client.subscribe(["split"])
    members.append(third)
    owned = settle(members)
    print("three members own", [sorted(o) for o in owned], flush=True)
    produce(port, "split", 300, start=400)
    consume_exactly(members, range(400, 700))
    for m in members:
        m.close()

    create(port, "coop")
    coop = [
        Member(
            f"k{i}",
            consumer(port, "coop-g", **{"partition.assignment.strategy": "cooperative-sticky"}),
            "confluent",
        )
        for i in (1, 2)
    ]
    for m in coop:
        m.client.subscribe(["coop"])
    settle(coop)
    produce(port, "coop", 200)
    consume_exactly(coop, range(200))
    for m in coop:
        m.close()


def interop(port):
    """A kafka-python member and a confluent-kafka member in one group."""
    from kafka import KafkaConsumer
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    create(port, "interop")
    python = KafkaConsumer(
        "interop",
        bootstrap_servers=bootstrap(port),
        group_id="interop-g",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        partition_assignment_strategy=[RangePartitionAssignor],
    )
    confluent = consumer(port, "interop-g", **{"partition.assignment.strategy": "range"})
    confluent.subscribe(["interop"])
    members = [Member("kafka-python", python, "python"), Member("confluent", confluent, "confluent")]
    settle(members)
    produce(port, "interop", 200)
    consume_exactly(members, range(200))
    for m in members:
        m.close()


def static(port):
    """Static members (group.instance.id): one restarts within its session timeout and
    gets its partitions back with no rebalance; the other is never revoked."""
    create(port, "static")
    revoked = []

    def start(instance):
        m = Member(instance, consumer(port, "static-g", **{"group.instance.id": instance}), "confluent")
        m.client.subscribe(["static"], on_revoke=lambda c, ps: revoked.append((instance, ps)))
        return m

    a, b = start("a"), start("b")
    before = settle([a, b])
    revoked.clear()
    # A static member does not leave when it closes: its place waits for it.
    a.close()
    revoked.clear()
    a = start("a")
    after = settle([a, b])
    check(after == before, f"assignments changed across the restart: {before} -> {after}")
    check(revoked == [], f"the restart caused a rebalance: {revoked}")
    produce(port, "static", 100)
    consume_exactly([a, b], range(100))
    a.close()
    b.close()


def member(port):
    """A member that consumes until it is killed (used by `kill`)."""
    c = consumer(port, "kill-g")
    c.subscribe(["kill"])
    while True:
        c.poll(0.1)
        print("owns", sorted(tp.partition for tp in c.assignment()), flush=True)


def kill(port):
    """A member killed with SIGKILL loses its partitions to the survivor once its
    session times out."""
    create(port, "kill")
    child = subprocess.Popen(
        [sys.executable, __file__, "member", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        survivor = Member("survivor", consumer(port, "kill-g"), "confluent")
        survivor.client.subscribe(["kill"])
        deadline = time.time() + SETTLE_SECONDS
        while not (0 < len(survivor.partitions()) < PARTITIONS):
            check(time.time() < deadline, "the two members never shared the topic")
            survivor.poll()
        time.sleep(1)
        child.send_signal(signal.SIGKILL)
        child.wait()
        killed = time.time()
        while survivor.partitions() != set(range(PARTITIONS)):
            check(time.time() < killed + SETTLE_SECONDS, "partitions never moved")
            survivor.poll()
        moved = time.time() - killed
        print(f"partitions moved {moved:.1f}s after the kill", flush=True)
        # The dead member cannot leave: only its 6 s session timeout can move them.
        check(moved >= 3.0, f"partitions moved after {moved:.1f}s, before the session timeout")
        produce(port, "kill", 100)
        consume_exactly([survivor], range(100))
        survivor.close()
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)


def commit(port):
    """Consume everything, commit offset 60 on every partition, and leave."""
    create(port, "resume")
    produce(port, "resume", 400)
    m = Member("first", consumer(port, "resume-g"), "confluent")
    m.client.subscribe(["resume"])
    consume_exactly([m], range(400))
    m.client.commit(
        offsets=[TopicPartition("resume", p, 60) for p in range(PARTITIONS)], asynchronous=False
    )
    m.close()


def resume(port):
    """After a broker restart a new member starts exactly at the committed offsets."""
    c = consumer(port, "resume-g")
    committed = c.committed([TopicPartition("resume", p) for p in range(PARTITIONS)], timeout=30)
    check([tp.offset for tp in committed] == [60] * PARTITIONS, f"committed {committed}")
    c.subscribe(["resume"])
    first = {}
    count = 0
    deadline = time.time() + SETTLE_SECONDS
    while count < 160 and time.time() < deadline:
        message = c.poll(0.1)
        if message is None:
            continue
        check(message.error() is None, str(message.error()))
        first.setdefault(message.partition(), message.offset())
        count += 1
    check(count == 160, f"consumed {count} of the 160 records after the commits")
    check(first == {p: 60 for p in range(PARTITIONS)}, f"first offsets {first}")
    c.close()


if __name__ == "__main__":
    command, port = sys.argv[1], int(sys.argv[2])
    {
        "split": split,
        "interop": interop,
        "static": static,
        "member": member,
        "kill": kill,
        "commit": commit,
        "resume": resume,
    }[command](port)
    print(f"{command}: ok", flush=True)
