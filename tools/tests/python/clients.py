"""Stock Python Kafka clients against a running `spate serve`.

Driven by tools/tests/python_clients.rs. Each subcommand exits non-zero with a message on
the first failed check.

  roundtrip PORT                  confluent-kafka and kafka-python, every codec
  configs PORT                    describe/alter/incremental-alter configs, create
                                  partitions, LogAppendTime
  produce-acked PORT TOPIC FILE   produce unique values with acks=all until killed or out
                                  of time, appending each acknowledged value to FILE
  verify PORT TOPIC FILE          every value in FILE is in TOPIC, exactly once
  offsets-compaction PORT DATA    a group commits 1,500 times; __consumer_offsets (in DATA)
                                  shrinks as the cleaner compacts it
  offsets-committed PORT          the group's committed offset is its last commit
  compaction PORT                 a cleanup.policy=compact topic written with keyed
                                  records and tombstones in every codec shrinks, and
                                  reads back each key's latest value at its offset
"""

import os
import sys
import time

from confluent_kafka import (TIMESTAMP_LOG_APPEND_TIME, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                   NewPartitions, NewTopic, ResourceType)


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def read_all(bootstrap, topic, partitions, start=0):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "verify", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, start) for p in range(partitions)])
    out, idle_since = [], time.time()
    while time.time() - idle_since < 3:
        m = consumer.poll(0.2)
        if m is None:
            continue
        check(m.error() is None, f"consume error: {m.error()}")
        out.append(m)
        idle_since = time.time()
    consumer.close()
    return out


def roundtrip(port):
    bootstrap = f"127.0.0.1:{port}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
        topic = f"py-{codec}"
        for f in admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)]).values():
            f.result()
        producer = Producer({
            "bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
            "compression.type": codec, "linger.ms": 5,
        })
        failures = []
        sent = {}
        for i in range(600):
            key = None if i % 3 == 0 else f"key-{i % 11}".encode()
            value = f"{codec}-{i}".encode()
            sent[value] = key
            producer.produce(topic, key=key, value=value, timestamp=1_000_000 + i,
                             on_delivery=lambda e, m: e and failures.append(e))
        check(producer.flush(20) == 0, "all records delivered")
        check(not failures, f"delivery errors: {failures[:3]}")
        got = read_all(bootstrap, topic, 3)
        check(sorted(m.value() for m in got) == sorted(sent), f"{codec}: consumed exactly what was produced")
        key_partitions = {}
        for m in got:
            check(m.key() == sent[m.value()], f"{codec}: keys preserved")
            if m.key() is not None:
                check(key_partitions.setdefault(m.key(), m.partition()) == m.partition(), "a key stays in one partition")
        # From an offset, and by timestamp.
        tail = read_all(bootstrap, topic, 1, start=5)
        check(all(m.offset() >= 5 for m in tail), "consume from an offset")
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "times"})
        found = consumer.offsets_for_times([TopicPartition(topic, 0, 1_000_300)], timeout=10)
        first_late = min((m.offset() for m in got if m.partition() == 0 and m.timestamp()[1] >= 1_000_300), default=-1)
        # Exact inside compressed batches too: the broker reads their records.
        check(first_late > 0, f"{codec}: a record at or after the target in partition 0")
        check(found[0].offset == first_late, f"{codec}: offsets by timestamp {found[0].offset} vs {first_late}")
        consumer.close()
    # Delete records moves the start offset.
    result = admin.delete_records([TopicPartition("py-none", 0, 3)])
    for f in result.values():
        check(f.result().low_watermark == 3, "delete records low watermark")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm"})
    low, high = consumer.get_watermark_offsets(TopicPartition("py-none", 0), timeout=10)
    check(low == 3 and high > 3, f"watermarks after delete records: {low} {high}")
    consumer.close()
    # kafka-python (idempotent by default) interoperates with what librdkafka wrote.
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTopicPartition
    kp = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip")
    futures = [kp.send("py-zstd", key=b"kafka-python", value=f"kp-{i}".encode()) for i in range(50)]
    kp.flush()
    check(all(f.get(timeout=10) for f in futures), "kafka-python deliveries")
    kc = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=3000)
    kc.assign([KTopicPartition("py-zstd", p) for p in range(3)])
    values = [m.value for m in kc]
    check(len(values) == 650, f"kafka-python reads every record: {len(values)}")
    check(sum(v.startswith(b"zstd-") for v in values) == 600, "kafka-python reads librdkafka's zstd batches")
    # Delete a topic.
    for f in admin.delete_topics(["py-gzip"]).values():
        f.result()
    check("py-gzip" not in admin.list_topics(timeout=10).topics, "deleted topic gone")
    print("roundtrip ok")


def expect_error(future, code, what):
    try:
        future.result()
    except KafkaException as e:
        check(e.args[0].code() == code, f"{what}: expected {code}, got {e.args[0]}")
        return
    check(False, f"{what}: expected error {code}, got success")


def describe(admin, resource):
    return admin.describe_configs([resource])[resource].result()


def configs(port):
    bootstrap = f"127.0.0.1:{port}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = "cfg"
    new = NewTopic(topic, num_partitions=1, replication_factor=1, config={"retention.ms": "3600000"})
    admin.create_topics([new])[topic].result()
    res = ConfigResource(ResourceType.TOPIC, topic)
    d = describe(admin, res)
    check(d["retention.ms"].value == "3600000", f"override shown: {d['retention.ms']}")
    check(d["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, "override's source")
    check(d["segment.bytes"].value == "1073741824", "segment.bytes default")
    check(d["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value, "default's source")
    check(d["cleanup.policy"].value == "delete", "cleanup.policy default")
    check(d["message.timestamp.type"].value == "CreateTime", "timestamp type default")

    # IncrementalAlterConfigs: set, delete back to the default, append to a list.
    edits = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
    ])
    admin.incremental_alter_configs([edits])[edits].result()
    d = describe(admin, res)
    check(d["message.timestamp.type"].value == "LogAppendTime", "incremental set")
    check(d["retention.ms"].value == "604800000", f"deleted back to default: {d['retention.ms'].value}")
    check(d["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value, "deleted override's source")
    check(d["cleanup.policy"].value == "delete,compact", f"appended: {d['cleanup.policy'].value}")
    bad = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("segment.ms", "1000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("segment.bytes", "lots", incremental_operation=AlterConfigOpType.SET),
    ])
    expect_error(admin.incremental_alter_configs([bad])[bad], KafkaError.INVALID_CONFIG, "bad value")
    check(describe(admin, res)["segment.ms"].value == "604800000", "a refused change changes nothing")
    unknown = ConfigResource(ResourceType.TOPIC, "no-such-topic", incremental_configs=[
        ConfigEntry("segment.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    expect_error(admin.incremental_alter_configs([unknown])[unknown], KafkaError.UNKNOWN_TOPIC_OR_PART, "unknown topic")

    # CreatePartitions: grow; shrinking is refused.
    admin.create_partitions([NewPartitions(topic, 3)])[topic].result()
    check(len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3, "grown to 3 partitions")
    expect_error(admin.create_partitions([NewPartitions(topic, 2)])[topic], KafkaError.INVALID_PARTITIONS, "shrink")

    # LogAppendTime: the broker's clock replaces the producer's, on a new partition too.
    before = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    for p in range(3):
        for i in range(10):
            producer.produce(topic, value=f"t-{p}-{i}".encode(), partition=p, timestamp=1000)
    check(producer.flush(20) == 0, "LogAppendTime records delivered")
    after = int(time.time() * 1000)
    got = read_all(bootstrap, topic, 3)
    check(len(got) == 30, f"30 records back: {len(got)}")
    for m in got:
        kind, ts = m.timestamp()
        check(kind == TIMESTAMP_LOG_APPEND_TIME and before <= ts <= after, f"log append time: {m.timestamp()}")
    # kafka-python checks CRCs: the resealed batches must verify.
    from kafka import KafkaConsumer, TopicPartition as KTP
    from kafka.admin import KafkaAdminClient, ConfigResource as KResource, ConfigResourceType
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, check_crcs=True,
                             consumer_timeout_ms=3000)
    consumer.assign([KTP(topic, p) for p in range(3)])
    consumer.seek_to_beginning()
    records = list(consumer)
    consumer.close()
    check(len(records) == 30 and all(r.timestamp_type == 1 and r.timestamp >= before for r in records),
          f"kafka-python reads LogAppendTime: {[(r.timestamp_type, r.timestamp) for r in records[:3]]}")

    # AlterConfigs (kafka-python): it describes the topic's overrides first and sends them
    # along, so the override it does not name survives the replacement.
    kadmin = KafkaAdminClient(bootstrap_servers=bootstrap)
    kadmin.alter_configs([KResource(ConfigResourceType.TOPIC, topic, configs={"retention.bytes": "1000000"})],
                         incremental=False)
    kadmin.close()
    d = describe(admin, res)
    check(d["retention.bytes"].value == "1000000", "replaced override")
    check(d["message.timestamp.type"].value == "LogAppendTime", "kept override")

    # The broker's own configs, read-only.
    broker_id = next(iter(admin.list_topics(timeout=10).brokers))
    d = describe(admin, ConfigResource(ResourceType.BROKER, str(broker_id)))
    check(d["num.partitions"].value == "1" and d["num.partitions"].is_read_only, "broker config")
    check(d["log.retention.ms"].value == "604800000", "broker default of a topic config")
    print("configs ok")


def configs_after_restart(port):
    bootstrap = f"127.0.0.1:{port}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    d = describe(admin, ConfigResource(ResourceType.TOPIC, "cfg"))
    check(d["retention.bytes"].value == "1000000", "override survives a restart")
    check(d["retention.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, "and its source")
    check(len(admin.list_topics("cfg", timeout=10).topics["cfg"].partitions) == 3, "partitions survive")
    check(len(read_all(bootstrap, "cfg", 3)) == 30, "records survive")
    print("configs-after-restart ok")


def produce_acked(port, topic, path):
    producer = Producer({
        "bootstrap.servers": f"127.0.0.1:{port}", "acks": "all", "enable.idempotence": True,
        "message.timeout.ms": 4000, "linger.ms": 2,
    })
    with open(path, "a", buffering=1) as acked:
        def report(error, message):
            if error is None:
                acked.write(message.value().decode() + "\n")
        deadline = time.time() + 6
        i = 0
        while time.time() < deadline:
            try:
                producer.produce(topic, value=f"value-{i}".encode(), on_delivery=report)
                i += 1
            except BufferError:
                pass
            producer.poll(0.001 if i % 100 else 0.01)
        producer.flush(5)


def verify(port, topic, path):
    with open(path) as f:
        acked = [line.strip() for line in f if line.strip()]
    check(len(acked) > 100, f"the producer got acknowledgements before the crash: {len(acked)}")
    got = [m.value().decode() for m in read_all(f"127.0.0.1:{port}", topic, 1)]
    counts = {}
    for v in got:
        counts[v] = counts.get(v, 0) + 1
    lost = [v for v in acked if v not in counts]
    dup = [v for v, n in counts.items() if n > 1]
    check(not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:5]}")
    check(not dup, f"{len(dup)} records duplicated, e.g. {dup[:5]}")
    print(f"verify ok: {len(acked)} acknowledged, {len(got)} present")


COMPACTED = "compacted"
KEYS = 20
ROUNDS = 50
DELETED = range(5)  # keys whose last record is a tombstone
COMPACTION_TIMEOUT = 30


def compaction(port):
    """Writes ROUNDS values of each of KEYS keys, then tombstones for DELETED, with small
    segments that roll every 100 ms, and waits for the cleaner (--log-cleaner-backoff-ms
    200) to shrink the partition. Every read from the beginning, before, during and after
    cleaning, must end with the same table; at the end each surviving key's latest value
    is at the offset its acknowledgement gave, and tombstones past delete.retention.ms are
    gone."""
    bootstrap = f"127.0.0.1:{port}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    configs = {"cleanup.policy": "compact", "segment.bytes": "16384", "segment.ms": "100",
               "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "500"}
    admin.create_topics([NewTopic(COMPACTED, num_partitions=1, replication_factor=1, config=configs)])[
        COMPACTED].result()
    acked = {}  # key -> (offset, value) of its latest acknowledged record
    written = 0
    for round_number, codec in enumerate(["none", "gzip", "snappy", "lz4", "zstd"] * (ROUNDS // 5)):
        producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 5})

        def report(error, message):
            check(error is None, f"delivery failed: {error}")
            acked[message.key()] = (message.offset(), message.value())

        for k in range(KEYS):
            key = f"key-{k}".encode()
            last = round_number == ROUNDS - 1 and k in DELETED
            value = None if last else f"value-{round_number}-{k}-{'x' * 100}".encode()
            producer.produce(COMPACTED, key=key, value=value, on_delivery=report)
            written += 1
        producer.flush(10)
        time.sleep(0.03)  # so segments roll (segment.ms) and the cleaner has sealed ones
    expected = {k: v for k, (_, v) in acked.items() if v is not None}

    def table():
        records = read_all(bootstrap, COMPACTED, 1)
        state = {}
        for m in records:
            if m.value() is None:
                state.pop(m.key(), None)
            else:
                state[m.key()] = m.value()
        return records, state

    deadline = time.time() + COMPACTION_TIMEOUT
    while True:
        records, state = table()
        check(state == expected, f"a reader ended with {len(state)} keys, not the {len(expected)} written last")
        tombstones = [m for m in records if m.value() is None]
        # Cleaned: at most one record per key except in the active segment.
        if len(records) <= written // 4 and not tombstones:
            break
        check(time.time() < deadline, f"not compacted in {COMPACTION_TIMEOUT} s: {len(records)} of "
                                      f"{written} records, {len(tombstones)} tombstones left")
        # A new record rolls the active segment, so the last written ones can be cleaned.
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(COMPACTED, key=b"filler", value=b"x")
        producer.flush(10)
        expected[b"filler"] = b"x"
        written += 1
        time.sleep(0.5)
    by_offset = {m.offset(): m for m in records}
    for key, (offset, value) in acked.items():
        if value is not None and key != b"filler":
            m = by_offset.get(offset)
            check(m is not None and m.key() == key and m.value() == value,
                  f"{key!r}: its latest value is not at offset {offset}")
    print(f"compaction ok: {written} written, {len(records)} left, {len(state)} keys")


OFFSETS_GROUP = "compacting"
OFFSETS_TOPIC_DATA = "oc"
COMMITS = 1500
OFFSETS_SEGMENT_BYTES = 16384  # --offsets-segment-bytes in python_clients.rs


def offsets_log_bytes(data):
    directory = os.path.join(data, "__consumer_offsets-0")
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory) if f.endswith(".log"))


def offsets_compaction(port, data):
    """Commits COMMITS offsets of one partition, one at a time, then waits for the
    cleaner to shrink __consumer_offsets (started with --offsets-partitions 1 and small
    --offsets-segment-bytes) to a few segments' worth."""
    bootstrap = f"127.0.0.1:{port}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(OFFSETS_TOPIC_DATA, num_partitions=1, replication_factor=1)])[
        OFFSETS_TOPIC_DATA].result()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": OFFSETS_GROUP, "enable.auto.commit": False})
    for offset in range(1, COMMITS + 1):
        consumer.commit(offsets=[TopicPartition(OFFSETS_TOPIC_DATA, 0, offset)], asynchronous=False)
    _, end = consumer.get_watermark_offsets(TopicPartition("__consumer_offsets", 0), timeout=10)
    consumer.close()
    check(end >= COMMITS, f"__consumer_offsets ends at {end}, below the {COMMITS} commits")
    # Each commit record is about 100 bytes: uncompacted, the log would hold about 150 KB.
    # Compacted, it holds the active segment and a cleaned one of a few records.
    bound = 2 * OFFSETS_SEGMENT_BYTES + 4096
    deadline = time.time() + COMPACTION_TIMEOUT
    while offsets_log_bytes(data) > bound:
        check(time.time() < deadline, f"__consumer_offsets not compacted in {COMPACTION_TIMEOUT} s: "
                                      f"{offsets_log_bytes(data)} bytes for {end} records")
        time.sleep(0.2)
    print(f"offsets-compaction ok: {end} records in {offsets_log_bytes(data)} bytes")


def offsets_committed(port):
    consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{port}", "group.id": OFFSETS_GROUP,
                         "enable.auto.commit": False})
    committed = consumer.committed([TopicPartition(OFFSETS_TOPIC_DATA, 0)], timeout=10)[0]
    consumer.close()
    check(committed.error is None and committed.offset == COMMITS,
          f"committed offset after the restart: {committed.offset} ({committed.error}), not {COMMITS}")
    print(f"offsets-committed ok: {committed.offset}")


if __name__ == "__main__":
    command, port = sys.argv[1], int(sys.argv[2])
    try:
        if command == "roundtrip":
            roundtrip(port)
        elif command == "configs":
            configs(port)
        elif command == "configs-after-restart":
            configs_after_restart(port)
        elif command == "produce-acked":
            produce_acked(port, sys.argv[3], sys.argv[4])
        elif command == "verify":
            verify(port, sys.argv[3], sys.argv[4])
        elif command == "compaction":
            compaction(port)
        elif command == "offsets-compaction":
            offsets_compaction(port, sys.argv[3])
        elif command == "offsets-committed":
            offsets_committed(port)
        else:
            check(False, f"unknown command {command}")
    except KafkaException as e:
        check(False, f"client error: {e}")
