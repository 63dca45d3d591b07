"""Stock Python Kafka clients against a running `spate serve`.

Driven by tools/tests/python_clients.rs. Each subcommand exits non-zero with a message on
the first failed check.

  roundtrip PORT                  confluent-kafka and kafka-python, every codec
  produce-acked PORT TOPIC FILE   produce unique values with acks=all until killed or out
                                  of time, appending each acknowledged value to FILE
  verify PORT TOPIC FILE          every value in FILE is in TOPIC, exactly once
"""

import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


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
        if codec == "none":
            check(found[0].offset == first_late, f"offsets by timestamp {found[0].offset} vs {first_late}")
        else:
            # Compressed batches are not decompressed yet: the answer is the start of the
            # batch holding the record, never later than it (a consumer reads a few extra).
            check(0 <= found[0].offset <= first_late, f"{codec}: by timestamp {found[0].offset} <= {first_late}")
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


if __name__ == "__main__":
    command, port = sys.argv[1], int(sys.argv[2])
    try:
        if command == "roundtrip":
            roundtrip(port)
        elif command == "produce-acked":
            produce_acked(port, sys.argv[3], sys.argv[4])
        elif command == "verify":
            verify(port, sys.argv[3], sys.argv[4])
        else:
            check(False, f"unknown command {command}")
    except KafkaException as e:
        check(False, f"client error: {e}")
