"""A three-broker `spate serve` cluster under real process faults, driven by stock librdkafka.

Usage: cluster.py SPATE_BINARY WORKDIR SCENARIO. Driven by tools/tests/cluster.rs.

  kill-leader    three rounds of: SIGKILL the partition's leader, see another leader named
                 within 10 s, produce on, restart the killed broker on its data directory
                 and wait for it to rejoin the in-sync replicas
  pause-leader   SIGSTOP the leader for a few seconds, see another leader elected while it
                 is stopped, SIGCONT it and wait for it to rejoin the in-sync replicas
  kill-all       SIGKILL all three brokers at once, restart them, produce on
  group-failover two rounds of: SIGKILL the coordinator of a consumer group that consumes
                 the topic and commits as it goes, see another coordinator named within
                 10 s and a commit acknowledged by it, restart the killed broker
  delete-records DeleteRecords to a follower is refused with NOT_LEADER_OR_FOLLOWER; to the
                 leader it moves the log start; a broker down meanwhile comes back below
                 it, starts over at it and is in sync again; after the leader is killed,
                 the new one starts its log at the same offset (followers follow the
                 leader's log start)
  non-voter      a fourth broker that is not a voter holds a replica of `chk` (four
                 replicas): killed and restarted it comes back in sync; after the
                 controller is killed it names the next one, and creates a topic through it
  compaction     `chk` is compacted (see `compaction` below): a follower killed while the
                 leader cleans catches up, every replica cleans its own log, and after the
                 leader is killed the new one serves the same table

Throughout, one confluent-kafka producer (acks=all) writes v-000001, v-000002, ... in that
order to the single partition of `chk` (replication factor 3) and records every delivery
report. Afterwards the partition is read from its start to its high watermark, and these
must hold for every acknowledged value:

  lost           it is in the log;
  wrong offset   the offset its acknowledgement gave holds it;
  reordered      every value acknowledged and sent after it has a higher offset;
  duplicated     it is written once (no value is written twice, acknowledged or not).

The producer is idempotent, so a batch retried after its acknowledgement was lost to a
fault (the leader replicated it, then died before answering) must be recognised by the new
leader from the producer state replicated with the batches, not written again. Gaps in
the offsets are expected (an election's control batch takes an offset that consumers
skip) and are only counted. The run also fails if a broker exits on its own, a new leader
takes 10 s or more, or nothing sent after the last fault is acknowledged.

In group-failover a confluent-kafka consumer in group GROUP reads the partition and commits
its position asynchronously every COMMIT_INTERVAL seconds, recording each acknowledged
commit. Afterwards, besides the producer's invariants:

  commit lost    whenever the group hands the partition to the consumer again (the
                 coordinator's failover makes it rejoin), the first record it reads is at
                 or past every commit acknowledged before; and the group's committed
                 offset at the end is at least the last acknowledged one;
  skipped        every acknowledged value below the consumer's final position was read.

The scenario itself fails unless, after each kill, a commit sent after the kill is
acknowledged within COMMIT_TIMEOUT seconds.

Each broker logs to WORKDIR/broker-N.log (appended across restarts); their tails are
printed on failure. Every broker is killed when the script exits, however it exits.
"""

import collections
import json
import ctypes
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

TOPIC = "chk"
GONE_TOPIC = "gone"  # deleted while a broker is down, and not created again
NODE_IDS = (1, 2, 3)  # the voters
OUTSIDER = 4  # a broker that is not a voter (scenario non-voter)

# The producer offers this many values a second; after a blocking call it catches up by at
# most BURST_MAX values, so an outage does not turn into one huge batch.
RATE = 1000
BURST_MAX = 200
MESSAGE_TIMEOUT_MS = 20_000
# A request to a stopped leader times out this soon, so the producer moves to the new leader
# while the old one is still stopped (and holds an unacknowledged suffix to truncate).
SOCKET_TIMEOUT_MS = 2_500

PROBE_INTERVAL = 0.05
METADATA_TIMEOUT = 1.0
LISTEN_TIMEOUT = 20
FORM_TIMEOUT = 20
CREATE_TIMEOUT = 15
LEADER_TIMEOUT = 10
ISR_TIMEOUT = 15
READ_TIMEOUT = 30
PAUSE_SECONDS = 4
KILL_ROUNDS = 3
GROUP = "cluster-group"
GROUP_ROUNDS = 2
COMMIT_INTERVAL = 0.2
COMMIT_TIMEOUT = 30

EXAMPLES_MAX = 5
NOT_LEADER_OR_FOLLOWER = 6  # Kafka's error code
LOG_TAIL_LINES = 40
BROKER_PORTS = (20_000, 32_000)  # below the ephemeral range, see `free_ports`
TOOL_TIMEOUT = 60  # seconds a `spate` command of a scenario may take
FAILOVER_LINES = 600
CLI_GROUP = "cli-group"
FAILOVER_LINE_INTERVAL = 0.005  # seconds between lines written to `spate produce`
# What a follower's broker logs when it starts over at its leader's log start.
RESTARTED_LINE = "restarted the log at the leader's log start"


class Failure(Exception):
    """A broken expectation; the message says which."""


def fail(message):
    raise Failure(message)


def free_ports(count):
    """Ports free on loopback now, below the kernel's ephemeral range (32768 and up on
    Linux), so that no outgoing connection takes a killed broker's port before it
    restarts. All are held open together so that none repeats."""
    sockets = []
    try:
        while len(sockets) < count:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", random.randrange(*BROKER_PORTS)))
            except OSError:
                s.close()
                continue
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def sequence_of(value):
    """The sequence number in v-NNNNNN, or None for anything else."""
    if value is None or not value.startswith(b"v-") or not value[2:].isdigit():
        return None
    return int(value[2:])


def die_with_parent():
    """In a broker's process before it runs: SIGKILL it when this script dies, even if the
    script's own clean-up never runs (librdkafka aborting the interpreter, say); a broker
    left behind would hold its ports and write into the next run's directories."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def event(text):
    """Notes what the script does, with the time, in the brokers' logs' time zone (UTC), on
    standard error."""
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}"
    print(f"{stamp} cluster.py: {text}", file=sys.stderr, flush=True)


def find_coordinator(port, group):
    """The node id the broker at `port` names as `group`'s coordinator (FindCoordinator v1,
    on a fresh connection). The probe speaks the protocol itself: librdkafka's admin client
    can abort the whole process on an assertion when a broker it asks dies mid-request."""
    client_id = b"cluster.py"
    key = group.encode()
    body = (struct.pack(">hhih", 10, 1, 1, len(client_id)) + client_id
            + struct.pack(">h", len(key)) + key + struct.pack(">b", 0))
    with socket.create_connection(("127.0.0.1", port), timeout=METADATA_TIMEOUT) as connection:
        connection.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", receive(connection, 4))[0]
        answer = receive(connection, size)
    # correlation id, throttle time, error code, error message (nullable string), node id
    error_code = struct.unpack_from(">h", answer, 8)[0]
    message_length = struct.unpack_from(">h", answer, 10)[0]
    node_offset = 12 + max(message_length, 0)
    if error_code != 0:
        message = answer[12:node_offset].decode(errors="replace")
        raise ValueError(f"error {error_code}: {message}")
    return struct.unpack_from(">i", answer, node_offset)[0]


def delete_records_at(port, offset):
    """DeleteRecords v1 for partition 0 of TOPIC below `offset`, sent to the broker at `port`
    itself (the admin client would route it to the leader): (error code, low watermark)."""
    client_id, topic = b"cluster.py", TOPIC.encode()
    body = (struct.pack(">hhih", 21, 1, 1, len(client_id)) + client_id
            + struct.pack(">ih", 1, len(topic)) + topic
            + struct.pack(">iiqi", 1, 0, offset, 5000))
    with socket.create_connection(("127.0.0.1", port), timeout=METADATA_TIMEOUT * 5) as connection:
        connection.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", receive(connection, 4))[0]
        answer = receive(connection, size)
    # correlation id, throttle time, [topic name, [partition index, low watermark, error code]]
    at = 12
    at += 2 + struct.unpack_from(">h", answer, at)[0] + 4
    _, low, error_code = struct.unpack_from(">iqh", answer, at)
    return error_code, low


def receive(connection, size):
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise OSError("the broker closed the connection")
        data += chunk
    return data


class Broker:
    """One `spate serve` process, restartable on the same ports and data directory."""

    def __init__(self, node_id, binary, workdir, port, peer_port):
        self.node_id = node_id
        self.binary = binary
        self.port = port
        self.peer_port = peer_port
        self.data_dir = os.path.join(workdir, f"data-{node_id}")
        self.log_path = os.path.join(workdir, f"broker-{node_id}.log")
        self.process = None
        self.paused = False
        self.extra_flags = []

    def ports_free(self):
        """Whether both ports can be bound as the broker binds them (SO_REUSEADDR). Just
        after a kill -9 they may not be yet: the kernel tears down a dead process's
        io_uring, and the sockets it holds, after the process is gone."""
        for port in (self.port, self.peer_port):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    return False
        return True

    def start(self, voters):
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while not self.ports_free() and time.monotonic() < deadline:
            time.sleep(PROBE_INTERVAL)
        event(f"starting broker {self.node_id}")
        command = [
            self.binary, "serve", "--node-id", str(self.node_id),
            "--listen", f"127.0.0.1:{self.port}", "--peer-listen", f"127.0.0.1:{self.peer_port}",
            "--voters", voters, "--data-dir", self.data_dir, "--shards", "1",
            "--group-initial-rebalance-delay-ms", "0",
        ] + self.extra_flags
        # `spate serve` also reads SPATE_* variables; only the flags above may configure it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPATE_")}
        with open(self.log_path, "a") as log:
            log.write(f"--- cluster.py: starting broker {self.node_id} ---\n")
            log.flush()
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=log, env=env, preexec_fn=die_with_parent)
        self.paused = False

    @property
    def serving(self):
        """Running and not stopped: it can answer a request."""
        return self.process is not None and not self.paused

    def listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return None

    def send(self, number):
        os.kill(self.process.pid, number)

    def pause(self):
        self.send(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        self.send(signal.SIGCONT)
        self.paused = False

    def reap(self):
        """Waits for a process already sent SIGKILL, and forgets it."""
        self.process.wait()
        self.process = None
        self.paused = False

    def logged(self, text):
        """True if the broker's log has a line containing `text`, else None."""
        with open(self.log_path, errors="replace") as log:
            return True if any(text in line for line in log) else None

    def tail(self):
        try:
            with open(self.log_path, errors="replace") as log:
                return log.readlines()[-LOG_TAIL_LINES:]
        except OSError as e:
            return [f"(no log: {e})\n"]


class Cluster:
    """Three brokers, the metadata probes that watch them, and what was seen."""

    def __init__(self, binary, workdir, node_ids=NODE_IDS):
        # The first three are the voters; any more join without voting.
        self.node_ids = node_ids
        ports = free_ports(2 * len(node_ids))
        self.brokers = {
            node_id: Broker(node_id, binary, workdir, ports[2 * i], ports[2 * i + 1])
            for i, node_id in enumerate(node_ids)
        }
        self.voters = ",".join(f"{self.brokers[n].node_id}@127.0.0.1:{self.brokers[n].peer_port}"
                               for n in NODE_IDS)
        self.bootstrap = ",".join(f"127.0.0.1:{b.port}" for b in self.brokers.values())
        self.workload = None
        self.reader = None
        self.deleted_below = 0  # the log start DeleteRecords moved to, if it ran
        self.probe_error = None
        self.leader_seen = None
        self.leader_changes = 0
        self.elections = []  # seconds from each fault to the next leader seen
        self.notes = []
        self.fault_sequence = 0  # the producer's last value sent before the last fault

    # Processes.

    def start(self, node_ids):
        for node_id in node_ids:
            self.brokers[node_id].start(self.voters)
        for node_id in node_ids:
            self.wait_for(f"broker {node_id} listening", LISTEN_TIMEOUT, self.brokers[node_id].listening)

    def kill(self, node_ids):
        """SIGKILL to all of `node_ids` before waiting for any, so that they die together."""
        event(f"killing brokers {list(node_ids)}")
        for node_id in node_ids:
            self.brokers[node_id].send(signal.SIGKILL)
        for node_id in node_ids:
            self.brokers[node_id].reap()

    def kill_all(self):
        for broker in self.brokers.values():
            if broker.process is not None:
                broker.process.kill()  # SIGKILL ends a stopped process too.
                broker.reap()

    def check_processes(self):
        for broker in self.brokers.values():
            if broker.process is not None and broker.process.poll() is not None:
                code = broker.process.returncode
                broker.process = None
                fail(f"broker {broker.node_id} exited on its own with status {code}")

    def fault(self):
        """Marks the moment of a fault: something sent after it must be acknowledged."""
        self.fault_sequence = self.workload.sent if self.workload else 0

    # Waiting, with the producer kept busy.

    def idle(self, seconds):
        """Waits `seconds`, producing and consuming meanwhile if a workload or a reader runs."""
        deadline = time.monotonic() + seconds
        while True:
            step = min(0.05, max(0.0, deadline - time.monotonic()))
            if self.workload is not None:
                self.workload.pump(step)
            else:
                time.sleep(step)
            if self.reader is not None:
                self.reader.pump()
            if time.monotonic() >= deadline:
                return

    def produce_for(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_processes()
            self.idle(min(0.1, max(0.0, deadline - time.monotonic())))

    def wait_for(self, what, timeout, probe, required=True):
        """Calls `probe` until it returns something other than None, and returns that; after
        `timeout` seconds fails, or returns None if not `required`."""
        started = time.monotonic()
        self.probe_error = None
        while True:
            self.check_processes()
            found = probe()
            if found is not None:
                return found
            if time.monotonic() - started > timeout:
                if required:
                    detail = f" (last error: {self.probe_error})" if self.probe_error else ""
                    fail(f"{what}: not within {timeout} s{detail}")
                return None
            self.idle(PROBE_INTERVAL)

    # Metadata probes. Each asks one broker through a fresh client: a long-lived client
    # would pick any broker it knows, a stopped one included, and hang on it.

    def metadata(self, node_id):
        client = AdminClient({"bootstrap.servers": f"127.0.0.1:{self.brokers[node_id].port}"})
        try:
            return client.list_topics(timeout=METADATA_TIMEOUT)
        except KafkaException as e:
            self.probe_error = f"metadata from broker {node_id}: {e}"
            return None

    def partition(self, node_id):
        """Partition 0 of TOPIC as `node_id` sees it, or None."""
        metadata = self.metadata(node_id)
        topic = metadata.topics.get(TOPIC) if metadata else None
        if topic is None or topic.error is not None:
            return None
        return topic.partitions.get(0)

    def serving_ids(self, excluded=()):
        return [n for n, b in self.brokers.items() if b.serving and n not in excluded]

    def note_leader(self, leader):
        if self.leader_seen is not None and leader != self.leader_seen:
            self.leader_changes += 1
        self.leader_seen = leader
        return leader

    def formed(self):
        """True once every serving broker lists every broker and a controller."""
        for node_id in self.serving_ids():
            metadata = self.metadata(node_id)
            if metadata is None or sorted(metadata.brokers) != list(self.node_ids):
                return None
            if metadata.controller_id not in NODE_IDS:
                return None
        return True

    def settled_view(self):
        """The partition as its leader sees it, once every serving broker names that same
        serving leader. Asking them all keeps a deposed leader that still believes in itself
        from being believed."""
        views = {n: self.partition(n) for n in self.serving_ids()}
        leaders = {view.leader if view else None for view in views.values()}
        leader = leaders.pop() if len(leaders) == 1 else None
        if leader not in views:
            return None
        self.note_leader(leader)
        return views[leader]

    def settled_leader(self):
        view = self.settled_view()
        return view.leader if view else None

    def new_leader(self, old):
        """A serving leader other than `old`, as named by any serving broker but `old`."""
        for node_id in self.serving_ids(excluded=(old,)):
            view = self.partition(node_id)
            if view and view.leader != old and view.leader in self.node_ids and self.brokers[view.leader].serving:
                return self.note_leader(view.leader)
        return None

    def full_isr(self):
        """The settled leader's view once every replica (every broker) is in sync."""
        view = self.settled_view()
        return view if view and sorted(view.isrs) == list(self.node_ids) else None

    def coordinator(self, excluded=(), group=GROUP):
        """The coordinator of `group`, once every serving broker but `excluded` names the same
        serving one. (A broker that has not caught up yet may name a stale one.)"""
        named = {}
        for node_id in self.serving_ids(excluded):
            try:
                named[node_id] = find_coordinator(self.brokers[node_id].port, group)
            except (OSError, ValueError) as e:
                self.probe_error = f"FindCoordinator for {group} at broker {node_id}: {e}"
                return None
        coordinators = set(named.values())
        coordinator = coordinators.pop() if len(coordinators) == 1 else None
        if coordinator not in self.serving_ids(excluded):
            self.probe_error = f"coordinators named (asked: named): {named}"
            return None
        event(f"the brokers name broker {coordinator} the coordinator of {group}")
        return coordinator

    def await_new_leader(self, old):
        started = time.monotonic()
        self.wait_for(f"a leader other than broker {old}", LEADER_TIMEOUT, lambda: self.new_leader(old))
        elapsed = time.monotonic() - started
        if elapsed >= LEADER_TIMEOUT:
            fail(f"a leader other than broker {old}: seen only after {elapsed:.1f} s")
        self.elections.append(elapsed)

    # Set-up.

    def create_topic(self, configs=None, name=TOPIC):
        topic = NewTopic(name, num_partitions=1, replication_factor=len(self.node_ids), config=configs or {})
        self.admin_until_done(f"creating topic {name}", KafkaError.TOPIC_ALREADY_EXISTS,
                              lambda admin: admin.create_topics([topic], request_timeout=5)[name])

    def form_with_topic(self, name, partitions, replicas):
        """Starts the three brokers, waits for the cluster to form, creates topic `name`
        with `spate topic create`; returns the `spate` binary."""
        self.start(NODE_IDS)
        self.wait_for("three brokers and a controller in every broker's metadata", FORM_TIMEOUT, self.formed)
        spate = self.brokers[NODE_IDS[0]].binary
        spate_tool(spate, "topic", "create", name, "--partitions", str(partitions), "--replicas", str(replicas),
                   "--brokers", f"127.0.0.1:{self.brokers[NODE_IDS[0]].port}")
        return spate

    def delete_topic(self, name=TOPIC):
        self.admin_until_done(f"deleting topic {name}", KafkaError.UNKNOWN_TOPIC_OR_PART,
                              lambda admin: admin.delete_topics([name], request_timeout=5)[name])

    def admin_until_done(self, what, done_before, request):
        """Sends `request(admin)` until it succeeds, or fails with `done_before` (an earlier
        attempt that seemed to fail did it). The admin client retries NOT_CONTROLLER itself;
        this loop covers a controller not yet elected, or killed: each attempt's client asks
        afresh which broker controls."""
        def attempt():
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            try:
                request(admin).result()
                return True
            except KafkaException as e:
                if e.args[0].code() == done_before:
                    return True
                self.probe_error = f"{what}: {e}"
                return None

        self.wait_for(what, CREATE_TIMEOUT, attempt)

    def print_log_tails(self):
        for broker in self.brokers.values():
            print(f"--- last lines of {broker.log_path} ---")
            print("".join(broker.tail()), end="")


class Workload:
    """One acks=all producer writing v-000001, v-000002, ... to partition 0 of TOPIC, and the
    outcome of every value it sent."""

    def __init__(self, bootstrap):
        self.producer = Producer({
            "bootstrap.servers": bootstrap,
            "acks": "all",
            # Idempotence: retries keep their sequence numbers, so the leader (or the one
            # that replaces it, from the producer state replicated with the batches)
            # refuses a batch it already holds, and every value is written once.
            "enable.idempotence": True,
            "max.in.flight.requests.per.connection": 5,
            "retries": 1_000_000,
            "message.timeout.ms": MESSAGE_TIMEOUT_MS,
            "socket.timeout.ms": SOCKET_TIMEOUT_MS,
            "linger.ms": 5,
            # After an outage, reconnect within a second rather than librdkafka's default 10 s.
            "reconnect.backoff.max.ms": 1000,
        })
        self.sent = 0  # v-000001 .. v-{sent} were handed to the producer
        self.acked = {}  # sequence -> offset its acknowledgement gave
        self.failed = {}  # sequence -> error
        self.credit = 0.0
        self.last_refill = time.monotonic()

    def _report(self, error, message):
        sequence = sequence_of(message.value())
        if error is None:
            self.acked[sequence] = message.offset()
        else:
            self.failed[sequence] = error.str()

    def pump(self, seconds):
        """Produces at RATE and serves delivery reports for `seconds` (at least once)."""
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            self.credit = min(self.credit + (now - self.last_refill) * RATE, BURST_MAX)
            self.last_refill = now
            while self.credit >= 1:
                try:
                    self.producer.produce(TOPIC, value=b"v-%06d" % (self.sent + 1), partition=0,
                                          on_delivery=self._report)
                except BufferError:
                    break  # The local queue is full during an outage; poll drains it.
                self.sent += 1
                self.credit -= 1
            self.producer.poll(0.005)
            if time.monotonic() >= deadline:
                return

    def finish(self):
        """Stops producing and waits for a report on every value; message.timeout.ms bounds it."""
        remaining = self.producer.flush(MESSAGE_TIMEOUT_MS / 1000 + 10)
        if remaining:
            fail(f"{remaining} values still without a delivery report after the message timeout")


class GroupReader:
    """A consumer in GROUP reading partition 0 of TOPIC and committing its position, with
    what it read and which commits were acknowledged."""

    def __init__(self, bootstrap):
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": GROUP,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,  # the broker's group.min.session.timeout.ms
            "heartbeat.interval.ms": 500,
            "socket.timeout.ms": SOCKET_TIMEOUT_MS,
            "reconnect.backoff.max.ms": 1000,
            "on_commit": self._committed,
        })
        self.consumer.subscribe([TOPIC], on_assign=self._assigned)
        self.read = {}  # offset -> value
        self.position = None  # the offset after the last record read
        self.acks = []  # (time the commit was sent, committed offset), for each acknowledged one
        self.sent_at = {}  # committed offset -> when its commit was sent
        self.acked_max = -1
        self.commit_failures = collections.Counter()
        self.assignments = 0
        self.resumed = []  # (first offset read after an assignment, highest commit acked before it)
        self.pending_resume = None
        self.sent_position = None
        self.last_commit = 0.0

    def _assigned(self, consumer, partitions):
        self.assignments += 1
        self.pending_resume = self.acked_max

    def _committed(self, error, partitions):
        for partition in partitions:
            failure = error or partition.error
            if failure is None:
                self.acks.append((self.sent_at.get(partition.offset, 0.0), partition.offset))
                self.acked_max = max(self.acked_max, partition.offset)
            else:
                self.commit_failures[str(failure)] += 1

    def pump(self):
        for message in self.consumer.consume(500, 0):
            if message.error() is not None:
                continue
            if self.pending_resume is not None:
                self.resumed.append((message.offset(), self.pending_resume))
                self.pending_resume = None
            self.read[message.offset()] = message.value()
            self.position = message.offset() + 1
        now = time.monotonic()
        if self.position is not None and self.position != self.sent_position and now - self.last_commit >= COMMIT_INTERVAL:
            self.consumer.commit(offsets=[TopicPartition(TOPIC, 0, self.position)], asynchronous=True)
            self.sent_position, self.last_commit = self.position, now
            self.sent_at[self.position] = now

    def acked_since(self, moment):
        """Whether a commit sent after `moment` was acknowledged. (The send time, not the
        time the acknowledgement was seen: a commit the killed coordinator acknowledged may
        be reported only after the kill.)"""
        return any(sent > moment for sent, _ in self.acks)

    def commit_now(self, position):
        """Commits `position` and waits for it, retrying what the coordinator may answer
        while it settles (COORDINATOR_LOAD_IN_PROGRESS, say)."""
        deadline = time.monotonic() + COMMIT_TIMEOUT
        while True:
            try:
                self.consumer.commit(offsets=[TopicPartition(TOPIC, 0, position)], asynchronous=False)
                return
            except KafkaException as e:
                if time.monotonic() > deadline:
                    fail(f"committing {position} for group {GROUP}: {e}")
                time.sleep(0.2)

    def committed(self):
        """The group's committed offset of the partition, asked of its coordinator."""
        found = self.consumer.committed([TopicPartition(TOPIC, 0)], timeout=10)[0]
        if found.error is not None:
            fail(f"the committed offset of group {GROUP}: {found.error}")
        return found.offset


def read_partition(bootstrap, offset_end_min):
    """Every record of partition 0 of TOPIC as (offset, value), in offset order, read up to the
    high watermark (and at least to `offset_end_min`); with the log start and the end reached."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "cluster-check",  # Required by the client; no group is joined (assign below).
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": "read_uncommitted",
        "reconnect.backoff.max.ms": 1000,
    })
    try:
        deadline = time.monotonic() + READ_TIMEOUT
        watermarks, error = None, None
        while watermarks is None:
            try:
                watermarks = consumer.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=5)
            except KafkaException as e:
                error = e
                if time.monotonic() > deadline:
                    fail(f"watermarks of {TOPIC}: {error}")
                time.sleep(0.5)
        low, high = watermarks
        # A fresh leader's high watermark may lag for a moment; reading must reach every
        # acknowledged offset anyway, or those records are not readable.
        end = max(high, offset_end_min)
        consumer.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
        records, eof, errors = [], low, collections.deque(maxlen=EXAMPLES_MAX)
        while time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                error = message.error()
                if error is None:
                    records.append((message.offset(), message.value()))
                elif error.code() == KafkaError._PARTITION_EOF:
                    eof = message.offset()
                    if eof >= end:
                        return low, eof, records
                else:
                    errors.append(str(error))
        fail(f"reading {TOPIC}: stopped at offset {eof}, not {end} (high watermark {high}), "
             f"after {len(records)} records; last consumer errors: {list(errors)}")
    finally:
        consumer.close()


def check(workload, low, high, records, deleted_below=0):
    """The invariants of the module doc: returns (failures, information), each a list of
    (name, items, describe-one-item). Acknowledged records below `deleted_below` (a log
    start moved by DeleteRecords) must be gone, and the log must start there."""
    acked = workload.acked
    offsets_of, held, strangers = {}, {}, []
    for offset, value in records:
        sequence = sequence_of(value)
        if sequence is None or not 1 <= sequence <= workload.sent:
            strangers.append((offset, value))
            continue
        offsets_of.setdefault(sequence, []).append(offset)
        held[offset] = sequence

    in_order = sorted(acked.items())
    lost = [(s, o) for s, o in in_order if s not in offsets_of and o >= deleted_below]
    resurrected = [o for o, _ in records if o < deleted_below]
    if low < deleted_below:
        resurrected.insert(0, low)
    wrong = [(s, o, held.get(o)) for s, o in in_order if s in offsets_of and held.get(o) != s]
    reordered = [(a, b) for a, b in zip(in_order, in_order[1:]) if b[1] <= a[1]]
    duplicated = [(s, offsets) for s, offsets in sorted(offsets_of.items()) if len(offsets) > 1]
    present_failed = [(s, offsets_of[s]) for s in sorted(workload.failed) if s in offsets_of]
    bounds = [low - 1] + sorted(list(held) + [o for o, _ in strangers]) + [high]
    gaps = [(a + 1, b) for a, b in zip(bounds, bounds[1:]) if b > a + 1]

    def value(s):
        return f"v-{s:06d}"

    failures = [
        ("lost (acknowledged, not in the log)", lost, lambda i: f"{value(i[0])} acked at {i[1]}"),
        ("wrong offset (the acknowledged offset holds another value)", wrong,
         lambda i: f"{value(i[0])} acked at {i[1]}, which holds {'nothing' if i[2] is None else value(i[2])}"),
        ("reordered (sent later, acknowledged at a lower offset)", reordered,
         lambda i: f"{value(i[0][0])}@{i[0][1]} then {value(i[1][0])}@{i[1][1]}"),
        ("duplicated (written more than once)", duplicated,
         lambda i: f"{value(i[0])} at {i[1]}, acked at {acked.get(i[0], 'none')}"),
        ("values this producer never sent", strangers, lambda i: f"{i[1]!r} at {i[0]}"),
        (f"below the DeleteRecords offset {deleted_below} (the log start, then records read)", resurrected,
         lambda o: str(o)),
    ]
    information = [
        ("reported failed yet written", present_failed, lambda i: f"{value(i[0])} at {i[1]}"),
        ("offset gaps (control batches)", gaps, lambda i: f"[{i[0]}, {i[1]})"),
    ]
    return failures, information


def describe(name, items, one):
    examples = "; ".join(one(item) for item in items[:EXAMPLES_MAX])
    return f"  {name}: {len(items)}" + (f", e.g. {examples}" if items else "")


# Scenarios. Each starts with the topic in place and the producer running, and leaves a
# cluster that should settle on a leader.

def kill_leader(cluster):
    for round_number in range(1, KILL_ROUNDS + 1):
        cluster.produce_for(1)
        leader = cluster.wait_for("a leader all brokers agree on", LEADER_TIMEOUT, cluster.settled_leader)
        cluster.kill([leader])
        cluster.fault()
        cluster.await_new_leader(leader)
        cluster.produce_for(2)
        cluster.start([leader])
        if cluster.wait_for("three in-sync replicas", ISR_TIMEOUT, cluster.full_isr, required=False) is None:
            cluster.notes.append(f"round {round_number}: broker {leader} not back in sync within {ISR_TIMEOUT} s")
    cluster.produce_for(1)


def pause_leader(cluster):
    cluster.produce_for(2)
    leader = cluster.wait_for("a leader all brokers agree on", LEADER_TIMEOUT, cluster.settled_leader)
    broker = cluster.brokers[leader]
    paused_at = time.monotonic()
    broker.pause()
    cluster.fault()
    # `new_leader` asks only serving brokers, so this leader is elected while the old one is stopped.
    cluster.await_new_leader(leader)
    cluster.produce_for(max(0.0, PAUSE_SECONDS - (time.monotonic() - paused_at)))
    broker.resume()
    cluster.wait_for(f"broker {leader} back in the in-sync replicas", ISR_TIMEOUT, cluster.full_isr)
    cluster.produce_for(1)


def kill_all(cluster):
    cluster.produce_for(3)
    cluster.kill(NODE_IDS)
    cluster.fault()
    cluster.produce_for(1)  # The producer keeps retrying into a cluster that is gone.
    restarted_at = time.monotonic()
    cluster.start(NODE_IDS)
    cluster.wait_for("a leader after restarting every broker", FORM_TIMEOUT, cluster.settled_leader)
    cluster.elections.append(time.monotonic() - restarted_at)
    cluster.produce_for(2)


def delete_records(cluster):
    """DeleteRecords below the latest acknowledged offset while a third broker is down:
    refused by a follower, done by the leader. The broker that was down comes back with a
    log ending below the new log start; it must start over there and be in sync again.
    After more acknowledged writes the leader is killed; the check then requires the new
    leader's log start to be that offset, nothing below it to be read, and every
    acknowledged record above it to be there."""
    cluster.produce_for(2)
    leader = cluster.wait_for("a leader all brokers agree on", LEADER_TIMEOUT, cluster.settled_leader)
    follower, away = [n for n in NODE_IDS if n != leader]
    cluster.kill([away])
    cluster.produce_for(1)  # acknowledged by two: broker `away` lacks all of it
    target = max(cluster.workload.acked.values())
    error_code, _ = delete_records_at(cluster.brokers[follower].port, target)
    if error_code != NOT_LEADER_OR_FOLLOWER:
        fail(f"DeleteRecords at follower {follower}: error {error_code}, not {NOT_LEADER_OR_FOLLOWER}")
    error_code, low = delete_records_at(cluster.brokers[leader].port, target)
    if (error_code, low) != (0, target):
        fail(f"DeleteRecords below {target} at leader {leader}: error {error_code}, low watermark {low}")
    event(f"leader {leader} deleted the records below offset {target}")
    cluster.deleted_below = target
    cluster.produce_for(1)  # acks=all: the followers fetch, and learn the log start
    cluster.start([away])
    # (The in-sync set alone would not tell: a replica stays in it for
    # replica.lag.time.max.ms after it last caught up, which covers its time down.)
    cluster.wait_for(f"broker {away}, back with a log below the log start, starting over there", ISR_TIMEOUT,
                     lambda: cluster.brokers[away].logged(RESTARTED_LINE))
    cluster.wait_for(f"broker {away} in the in-sync replicas", ISR_TIMEOUT, cluster.full_isr)
    cluster.kill([leader])
    cluster.fault()
    cluster.await_new_leader(leader)
    cluster.produce_for(1)
    cluster.start([leader])
    cluster.wait_for(f"broker {leader} back in the in-sync replicas", ISR_TIMEOUT, cluster.full_isr)


def group_failover(cluster):
    reader = cluster.reader = GroupReader(cluster.bootstrap)
    for _ in range(GROUP_ROUNDS):
        coordinator = cluster.wait_for(f"a coordinator for group {GROUP}", LEADER_TIMEOUT, cluster.coordinator)
        named_at = time.monotonic()
        cluster.wait_for("a commit acknowledged by that coordinator", COMMIT_TIMEOUT,
                         lambda: True if reader.acked_since(named_at) else None)
        cluster.kill([coordinator])
        cluster.fault()
        killed_at = time.monotonic()
        started = time.monotonic()
        cluster.wait_for(f"a coordinator for group {GROUP} other than broker {coordinator}", LEADER_TIMEOUT,
                         lambda: cluster.coordinator(excluded=(coordinator,)))
        cluster.elections.append(time.monotonic() - started)
        cluster.wait_for(f"a commit acknowledged after killing broker {coordinator}", COMMIT_TIMEOUT,
                         lambda: True if reader.acked_since(killed_at) else None)
        cluster.start([coordinator])
        cluster.produce_for(2)


def group_check(cluster, workload):
    """The consumer group's invariants of the module doc, as `check` returns them; the
    consumer first reads every acknowledged record and commits its position."""
    reader = cluster.reader
    end = max(workload.acked.values(), default=-1) + 1
    cluster.wait_for("the group's consumer reading every acknowledged record", READ_TIMEOUT,
                     lambda: True if reader.position is not None and reader.position >= end else None)
    final = reader.position
    reader.commit_now(final)
    committed = reader.committed()
    reader.consumer.close()
    event(f"group {GROUP}: committed {committed}; failed commits: {dict(reader.commit_failures)}")
    cluster.reader = None
    read_values = set(reader.read.values())
    lost = [(first, acked) for first, acked in reader.resumed if first < acked]
    if committed < max(reader.acked_max, final):
        lost.append((committed, max(reader.acked_max, final)))
    skipped = [(s, o) for s, o in sorted(workload.acked.items()) if o < final and b"v-%06d" % s not in read_values]
    # The new coordinator restores the group's members, so they carry on without a
    # rebalance: the consumer is assigned its partition once.
    rebalanced = reader.resumed[1:]
    failures = [
        ("commit lost (resumed or committed below an acknowledged commit)", lost,
         lambda i: f"at offset {i[0]} after a commit of {i[1]} was acknowledged"),
        ("rebalanced after a coordinator failover (assigned again)", rebalanced,
         lambda i: f"read from {i[0]} with {i[1]} acknowledged"),
        ("skipped (acknowledged below the final position, never read)", skipped,
         lambda i: f"v-{i[0]:06d} at {i[1]}"),
    ]
    information = [
        ("resumptions after an assignment", reader.resumed,
         lambda i: f"read from {i[0]} with {i[1]} acknowledged"),
        ("commits acknowledged", reader.acks, lambda i: str(i[1])),
        ("commits failed", sorted(reader.commit_failures.items()), lambda i: f"{i[1]} x {i[0]}"),
    ]
    return failures, information


# The compaction scenario: small segments that roll every 100 ms, cleaned as soon as any
# part is dirty, by cleaners that look every 200 ms.
COMPACTED_CONFIGS = {"cleanup.policy": "compact", "segment.bytes": "16384", "segment.ms": "100",
                     "min.cleanable.dirty.ratio": "0.01"}
CLEANER_FLAGS = ["--log-cleaner-backoff-ms", "200"]
KEYS = 20
ROUNDS = 60
COMPACTION_TIMEOUT = 60


def partition_log_bytes(broker):
    """Bytes of the segment files of partition 0 of TOPIC in `broker`'s data directory."""
    directory = os.path.join(broker.data_dir, f"{TOPIC}-0")
    try:
        return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
                   if f.endswith(".log"))
    except OSError:
        return None


def compaction(cluster):
    """KEYS keys written ROUNDS times each (acks=all, not idempotent, so batches shadowed
    whole become fillers). A follower is killed halfway and restarted only once the leader
    has cleaned, so it catches up from cleaned segments, likely from inside a filler. Then:
    every replica must clean its own log to a few segments' worth; after the leader is
    killed, a reader from the new leader must end with each key's last acknowledged value,
    and find it at the offset its acknowledgement gave."""
    for broker in cluster.brokers.values():
        broker.extra_flags = CLEANER_FLAGS
    cluster.start(NODE_IDS)
    cluster.wait_for("three brokers and a controller in every broker's metadata", FORM_TIMEOUT, cluster.formed)
    cluster.create_topic(COMPACTED_CONFIGS)
    leader = cluster.wait_for(f"a leader and three in-sync replicas for {TOPIC}", ISR_TIMEOUT,
                              cluster.full_isr).leader
    follower = next(n for n in NODE_IDS if n != leader)
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "linger.ms": 5,
                         "message.timeout.ms": MESSAGE_TIMEOUT_MS})
    acked = {}  # key -> (offset, value) of its latest acknowledged record
    errors = []

    def report(error, message):
        if error is not None:
            errors.append(str(error))
        elif message.key() not in acked or acked[message.key()][0] < message.offset():
            acked[message.key()] = (message.offset(), message.value())

    def write(key, value):
        producer.produce(TOPIC, key=key, value=value, on_delivery=report)

    def rounds(first, count):
        for r in range(first, first + count):
            for k in range(KEYS):
                write(f"key-{k}".encode(), f"value-{r}-{k}-{'x' * 100}".encode())
            if producer.flush(MESSAGE_TIMEOUT_MS / 1000) != 0 or errors:
                fail(f"round {r} not acknowledged: {errors[:EXAMPLES_MAX]}")
            time.sleep(0.03)  # so segments roll (segment.ms) and the cleaners have sealed ones

    # Cleaned: the active segment, a cleaned one and one more being written.
    bound = 2 * int(COMPACTED_CONFIGS["segment.bytes"]) + 4096

    def cleaned(node_ids):
        """True once every broker of `node_ids` holds at most `bound` bytes; meanwhile one
        record a probe rolls the active segment, so what was written last can be cleaned."""
        sizes = {n: partition_log_bytes(cluster.brokers[n]) for n in node_ids}
        if all(size is not None and size <= bound for size in sizes.values()):
            return True
        cluster.probe_error = f"segment bytes per broker: {sizes}, bound {bound}"
        write(b"nudge", b"x")
        producer.flush(MESSAGE_TIMEOUT_MS / 1000)
        time.sleep(0.4)
        return None

    rounds(0, ROUNDS // 2)
    cluster.kill([follower])
    rounds(ROUNDS // 2, ROUNDS // 2)
    cluster.wait_for(f"leader {leader} cleaning its log", COMPACTION_TIMEOUT, lambda: cleaned([leader]))
    cluster.start([follower])
    cluster.wait_for(f"broker {follower} back in the in-sync replicas", ISR_TIMEOUT, cluster.full_isr)
    cluster.wait_for("every replica cleaning its log", COMPACTION_TIMEOUT, lambda: cleaned(NODE_IDS))
    sizes = {n: partition_log_bytes(cluster.brokers[n]) for n in NODE_IDS}
    cluster.kill([leader])
    cluster.fault()
    cluster.await_new_leader(leader)
    expected = {key: value for key, (_, value) in acked.items()}
    high = max(offset for offset, _ in acked.values()) + 1
    records = read_keyed(cluster.bootstrap, high)
    state = {key: value for _, key, value in records}
    by_offset = {offset: (key, value) for offset, key, value in records}
    wrong = [key for key, (offset, value) in acked.items() if by_offset.get(offset) != (key, value)]
    written = KEYS * ROUNDS
    if state != expected or wrong or len(records) > written // 4:
        fail(f"after failover to broker {cluster.leader_seen}: {len(records)} records read of "
             f"{written} written, {len(state)} keys of {len(expected)}, "
             f"keys not at their acknowledged offsets: {wrong[:EXAMPLES_MAX]}")
    cuts = sum("inside a filler" in line for b in cluster.brokers.values() for line in b.tail())
    print(f"cluster.py compaction ok: {written} records written, {len(records)} read from broker "
          f"{cluster.leader_seen} after failover; segment bytes per broker once cleaned: {sizes}; "
          f"new leader after {', '.join(f'{s:.1f}' for s in cluster.elections)} s; "
          f"fillers cut for a follower (in the logs' last lines): {cuts}")
    return 0


def read_keyed(bootstrap, offset_end):
    """Every record of partition 0 of TOPIC as (offset, key, value), up to `offset_end`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "cluster-check",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "reconnect.backoff.max.ms": 1000})
    try:
        consumer.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + READ_TIMEOUT
        records, errors = [], collections.deque(maxlen=EXAMPLES_MAX)
        while time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                error = message.error()
                if error is None:
                    records.append((message.offset(), message.key(), message.value()))
                elif error.code() == KafkaError._PARTITION_EOF:
                    if message.offset() >= offset_end:
                        return records
                else:
                    errors.append(str(error))
        fail(f"reading {TOPIC} to offset {offset_end}: {len(records)} records; errors: {list(errors)}")
    finally:
        consumer.close()


def partition_holds(broker, needle):
    """Whether the segment files of partition 0 of TOPIC in `broker`'s data directory
    contain `needle` (records are written uncompressed here)."""
    directory = os.path.join(broker.data_dir, f"{TOPIC}-0")
    for name in os.listdir(directory):
        if name.endswith(".log"):
            with open(os.path.join(directory, name), "rb") as f:
                if needle in f.read():
                    return True
    return False


def recreated_topic(cluster):
    """TOPIC deleted and created again under the same name while a follower was down, and
    GONE_TOPIC deleted and not created again. The follower, back, must not take what it
    held of the old topic for the new one's records (both start at offset 0, in the same
    leader epochs): it must become an in-sync replica of the new topic holding its records
    and none of the old one's, and a reader must get exactly the new records. It must
    delete its partition of GONE_TOPIC, which no broker serves any more."""
    cluster.start(NODE_IDS)
    cluster.wait_for("three brokers and a controller in every broker's metadata", FORM_TIMEOUT, cluster.formed)
    cluster.create_topic(name=GONE_TOPIC)
    cluster.create_topic()
    leader = cluster.wait_for(f"a leader and three in-sync replicas for {TOPIC}", ISR_TIMEOUT,
                              cluster.full_isr).leader
    away = next(n for n in NODE_IDS if n != leader)

    def write(prefix, count):
        # A producer of its own, which never creates the topic: one left over from the old
        # records would create it again by asking for its metadata after the delete.
        producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "linger.ms": 5,
                             "message.timeout.ms": MESSAGE_TIMEOUT_MS, "allow.auto.create.topics": False})
        acked, errors = [], []

        def report(error, message):
            if error is not None:
                errors.append(str(error))
            else:
                acked.append((message.offset(), message.value()))

        for i in range(count):
            producer.produce(TOPIC, value=f"{prefix}-{i:04d}".encode(), partition=0, on_delivery=report)
            if i % 50 == 49:
                producer.flush(MESSAGE_TIMEOUT_MS / 1000)  # several batches, as a log of many writes has
        if producer.flush(MESSAGE_TIMEOUT_MS / 1000) != 0 or errors or len(acked) != count:
            fail(f"writing {prefix} records: {len(acked)} of {count} acknowledged; {errors[:EXAMPLES_MAX]}")
        return sorted(acked)

    write("old", 300)
    cluster.wait_for(f"broker {away} holding the old records", ISR_TIMEOUT,
                     lambda: partition_holds(cluster.brokers[away], b"old-0299") or None)
    gone_dir = os.path.join(cluster.brokers[away].data_dir, f"{GONE_TOPIC}-0")
    cluster.wait_for(f"broker {away} holding a partition of {GONE_TOPIC}", ISR_TIMEOUT,
                     lambda: os.path.isdir(gone_dir) or None)
    cluster.kill([away])
    cluster.delete_topic()  # The broker killed may have been the controller.
    cluster.delete_topic(GONE_TOPIC)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    cluster.wait_for(f"{TOPIC} and {GONE_TOPIC} gone", CREATE_TIMEOUT,
                     lambda: not {TOPIC, GONE_TOPIC} & set(admin.list_topics(timeout=2).topics) or None)
    cluster.create_topic()
    cluster.start([away])
    cluster.wait_for(f"the new {TOPIC} with three in-sync replicas, broker {away} back", ISR_TIMEOUT,
                     cluster.full_isr)
    new = write("new", 120)
    cluster.wait_for(f"broker {away} holding the new records", ISR_TIMEOUT,
                     lambda: partition_holds(cluster.brokers[away], b"new-0119") or None)
    cluster.wait_for(f"broker {away} deleting its partition of {GONE_TOPIC}", ISR_TIMEOUT,
                     lambda: not os.path.exists(gone_dir) or None)
    kept = [n for n in NODE_IDS if os.path.exists(os.path.join(cluster.brokers[n].data_dir, f"{GONE_TOPIC}-0"))]
    if kept:
        fail(f"brokers {kept} still hold a partition of the deleted {GONE_TOPIC}")
    stale = [n for n in NODE_IDS if partition_holds(cluster.brokers[n], b"old-")]
    records = read_partition(cluster.bootstrap, new[-1][0] + 1)[2]
    if stale or [r for r in records if not r[1].startswith(b"new-")] or len(records) != len(new):
        fail(f"after re-creating {TOPIC}: brokers still holding old records: {stale}; "
             f"{len(records)} records read, {len(new)} new ones acknowledged, first read: {records[:3]}")
    with open(cluster.brokers[away].log_path, errors="replace") as log:
        deleted = "deleted topic of the same name" in log.read()
    print(f"cluster.py recreated-topic ok: broker {away} away while {TOPIC} was re-created; "
          f"{len(new)} new records read, no old one on any broker; its log says it replaced the "
          f"old topic's partition: {deleted}; it deleted its partition of {GONE_TOPIC}, deleted meanwhile")
    return 0


def spate_tool(spate, *args, stdin=None):
    """Runs `spate ARGS` to the end; its stdout, or a failure with its stderr."""
    done = subprocess.run([spate, *args], input=stdin, capture_output=True, timeout=TOOL_TIMEOUT)
    if done.returncode != 0:
        fail(f"spate {' '.join(args[:2])} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()


def cli_tools(cluster):
    """`spate produce` and `spate consume`, each given one broker of the cluster, on a topic
    whose partitions have leaders on different brokers: each partition's records must go to
    and come from its leader (the others answer NOT_LEADER_OR_FOLLOWER), as Kafka's console
    tools do. Every keyed line written is read back exactly once, in its key's partition."""
    cluster.start(NODE_IDS)
    cluster.wait_for("three brokers and a controller in every broker's metadata", FORM_TIMEOUT, cluster.formed)
    spate = cluster.brokers[NODE_IDS[0]].binary
    first, second = (f"127.0.0.1:{cluster.brokers[n].port}" for n in NODE_IDS[:2])

    def tool(*args, stdin=None):
        return spate_tool(spate, *args, stdin=stdin)

    def leaders():
        """The leaders of the topic's partitions, once every partition has one."""
        try:
            described = json.loads(tool("topic", "describe", "tools", "--brokers", first, "--format", "json"))
        except Failure as e:
            cluster.probe_error = str(e)
            return None
        found = [p.get("leader") for p in described["partitions"]]
        return found if len(found) == 3 and all(isinstance(n, int) and n >= 0 for n in found) else None

    # One replica each, placed round robin: the leaders are on three brokers. (With three
    # replicas each, the first elections may all be won on one broker.)
    tool("topic", "create", "tools", "--partitions", "3", "--replicas", "1", "--brokers", first)
    found = cluster.wait_for("a leader for each partition of tools", ISR_TIMEOUT, leaders)
    if len(set(found)) < 2:
        fail(f"the partitions' leaders are all on one broker ({found}): nothing to route")
    lines = "".join(f"key-{i}:value-{i}\n" for i in range(300)).encode()
    tool("produce", "tools", "--brokers", first, "--key-separator", ":", stdin=lines)
    read = tool("consume", "tools", "--brokers", second, "--from-beginning", "--exit-at-end",
                "--format", "{partition} {key} {value}").split("\n")
    records = [line.split(" ") for line in read if line]
    by_key = collections.defaultdict(set)
    for partition, key, _ in records:
        by_key[key].add(partition)
    values = sorted(value for _, _, value in records)
    if values != sorted(f"value-{i}" for i in range(300)) or any(len(ps) != 1 for ps in by_key.values()):
        fail(f"read {len(records)} records, {len(set(values))} distinct values of 300; keys in "
             f"several partitions: {[k for k, ps in by_key.items() if len(ps) > 1][:EXAMPLES_MAX]}")
    counts = collections.Counter(partition for partition, _, _ in records)
    print(f"cluster.py cli-tools ok: leaders {found}; 300 records written through broker "
          f"{NODE_IDS[0]} and read through broker {NODE_IDS[1]}, by partition {dict(counts)}")
    return 0


def cli_failover(cluster):
    """`spate produce` and `spate consume`, both given the broker that leads the partition,
    keep going when that broker is killed: they find the new leader through the other
    brokers. Lines are written every few ms across the kill, so a batch may be in flight
    when its leader dies; with acks=all the producer is idempotent, so a batch sent again
    is written once. Every line must be in the log exactly once, in the order written,
    and the consumer that followed the partition across the kill must print each once."""
    topic = "failover"
    spate = cluster.form_with_topic(topic, partitions=1, replicas=3)

    def in_sync():
        """The partition's leader once it has one and all three replicas are in sync."""
        serving = cluster.serving_ids()[0]
        try:
            described = json.loads(spate_tool(spate, "topic", "describe", topic, "--brokers",
                                              f"127.0.0.1:{cluster.brokers[serving].port}", "--format", "json"))
        except Failure as e:
            cluster.probe_error = str(e)
            return None
        p = described["partitions"][0]
        return p["leader"] if p["leader"] in NODE_IDS and sorted(p["isr"]) == list(NODE_IDS) else None

    leader = cluster.wait_for(f"a leader and three in-sync replicas for {topic}", ISR_TIMEOUT, in_sync)
    at = f"127.0.0.1:{cluster.brokers[leader].port}"
    consumer = subprocess.Popen([spate, "consume", topic, "--brokers", at, "--from-beginning",
                                 "--count", str(FAILOVER_LINES), "--format", "{offset} {value}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    producer = subprocess.Popen([spate, "produce", topic, "--brokers", at], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    member = subprocess.Popen([spate, "consume", topic, "--brokers", at, "--group", CLI_GROUP, "--from-beginning",
                               "--format", "{value}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    printed, grouped = [], []
    reading = threading.Thread(target=lambda: printed.extend(line.decode().rstrip("\n") for line in consumer.stdout))
    reading.start()
    threading.Thread(target=lambda: grouped.extend(line.decode().rstrip("\n") for line in member.stdout),
                     daemon=True).start()

    def write_lines():
        for i in range(FAILOVER_LINES):
            producer.stdin.write(f"line-{i:05d}\n".encode())
            producer.stdin.flush()
            time.sleep(FAILOVER_LINE_INTERVAL)
        producer.stdin.close()

    writing = threading.Thread(target=write_lines)
    writing.start()
    # Lines reach the consumer while stdin is still open: the producer sends as it reads.
    cluster.wait_for("the consumer printing a third of the lines, before the kill", READ_TIMEOUT,
                     lambda: True if len(printed) >= FAILOVER_LINES // 3 else None)
    cluster.kill([leader])
    started = time.monotonic()
    writing.join()
    outcomes = {}
    for name, process in (("produce", producer), ("consume", consumer)):
        try:
            process.wait(timeout=TOOL_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        outcomes[name] = (process.returncode, process.stderr.read().decode(errors="replace").strip())
    reading.join()
    failed = {name: outcome for name, outcome in outcomes.items() if outcome[0] != 0}
    if failed:
        fail(f"after broker {leader} (the leader, and the broker given) was killed: {failed}")
    written = [f"line-{i:05d}" for i in range(FAILOVER_LINES)]
    followed = [line.split(" ", 1) for line in printed]
    # Offsets rise but need not be dense here: a new leader marks its term with a batch
    # of its own, which consumers skip.
    offsets = [int(o) for o, _ in followed]
    if [v for _, v in followed] != written or offsets != sorted(set(offsets)):
        fail(f"the consumer that followed the kill printed {len(followed)} lines, not the {FAILOVER_LINES} "
             f"lines in order at rising offsets; first differences: "
             f"{[(i, f) for i, f in enumerate(followed) if i >= len(written) or f[1] != written[i]][:EXAMPLES_MAX]}")
    survivor = f"127.0.0.1:{cluster.brokers[cluster.serving_ids()[0]].port}"
    log = spate_tool(spate, "consume", topic, "--brokers", survivor, "--from-beginning", "--exit-at-end").split()
    if log != written:
        counts = collections.Counter(log)
        fail(f"the log holds {len(log)} lines for {FAILOVER_LINES} written: duplicated "
             f"{[v for v, n in counts.items() if n > 1][:EXAMPLES_MAX]}, missing "
             f"{[v for v in written if v not in counts][:EXAMPLES_MAX]}")
    after_kill = time.monotonic() - started

    # The group member kept reading through the first kill too. Now its coordinator dies.
    cluster.start([leader])
    cluster.wait_for(f"broker {leader} back in sync", ISR_TIMEOUT, in_sync)
    if cluster.wait_for(f"the group member printing the first {FAILOVER_LINES} lines", READ_TIMEOUT,
                        lambda: True if set(written) <= set(grouped) else None, required=False) is None:
        member.kill()
        fail(f"the group member printed {len(set(written) & set(grouped))} of the first {FAILOVER_LINES} lines "
             f"(broker {leader} was killed meanwhile): {member.stderr.read().decode(errors='replace').strip()}")
    coordinator = cluster.wait_for(f"a coordinator for {CLI_GROUP}", LEADER_TIMEOUT,
                                   lambda: cluster.coordinator(group=CLI_GROUP))
    cluster.kill([coordinator])
    started = time.monotonic()
    more = [f"line-{i:05d}" for i in range(FAILOVER_LINES, 2 * FAILOVER_LINES)]
    spate_tool(spate, "produce", topic, "--brokers", f"127.0.0.1:{cluster.brokers[cluster.serving_ids()[0]].port}",
               stdin="".join(f"{line}\n" for line in more).encode())
    if cluster.wait_for(f"the group member printing the lines written after its coordinator died", READ_TIMEOUT,
                        lambda: True if set(more) <= set(grouped) else None, required=False) is None:
        member.kill()
        fail(f"the group member printed {len(set(more) & set(grouped))} of the {len(more)} lines written after "
             f"its coordinator (broker {coordinator}) was killed: {member.stderr.read().decode(errors='replace')}")
    regrouped = time.monotonic() - started
    member.send_signal(signal.SIGTERM)
    try:
        member.wait(timeout=TOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        member.kill()
        member.wait()
    if member.returncode != 0:
        fail(f"the group member, stopped, exited with {member.returncode}: "
             f"{member.stderr.read().decode(errors='replace').strip()}")
    again = len(grouped) - len(set(grouped))
    print(f"cluster.py cli-failover ok: broker {leader} (leader, and the broker both tools were given) "
          f"killed once {FAILOVER_LINES // 3} of {FAILOVER_LINES} lines were consumed; both tools done "
          f"{after_kill:.1f} s after the kill; every line once, in order, in the log and in the consumer's "
          f"output. Group member: every line of {2 * FAILOVER_LINES} printed, {again} printed again (read "
          f"since its last commit), {regrouped:.1f} s after its coordinator (broker {coordinator}) was killed "
          f"to print the lines written after; it committed and left on SIGTERM")
    return 0


def leaders_everywhere(cluster):
    """A topic of 3 partitions with 2 replicas each on 3 brokers: each broker lacks a
    replica of one partition. Every broker, those without a replica included, must name
    each partition's leader and leader epoch as its replicas do (a broker without a
    replica used to name the preferred leader with epoch -1), and still after the leader
    of one partition is killed and restarted and the partition elects again, in a newer
    epoch."""
    topic = "spread"
    spate = cluster.form_with_topic(topic, partitions=3, replicas=2)

    def agreed():
        """Partition → (leader, epoch, replicas), once every serving broker names the same
        leader and epoch for every partition, and the leader serves."""
        seen = {}
        for node_id in cluster.serving_ids():
            try:
                described = json.loads(spate_tool(spate, "topic", "describe", topic, "--format", "json",
                                                  "--brokers", f"127.0.0.1:{cluster.brokers[node_id].port}"))
            except Failure as e:
                cluster.probe_error = str(e)
                return None
            for p in described["partitions"]:
                seen.setdefault(p["partition"], set()).add((p["leader"], p["leader_epoch"], tuple(p["replicas"])))
        if len(seen) != 3 or any(len(views) != 1 for views in seen.values()):
            cluster.probe_error = f"brokers disagree (partition: {{(leader, epoch, replicas)}}): {seen}"
            return None
        named = {p: next(iter(views)) for p, views in seen.items()}
        return named if all(leader in cluster.serving_ids() for leader, _, _ in named.values()) else None

    before = cluster.wait_for(f"every broker naming the same leader and epoch of each partition of {topic}",
                              ISR_TIMEOUT, agreed)
    p = 0
    leader, epoch, replicas = before[p]
    outsider = next(n for n in NODE_IDS if n not in replicas)
    cluster.kill([leader])
    cluster.start([leader])
    after = cluster.wait_for(f"every broker, broker {outsider} (no replica of {topic}-{p}) too, naming the leader "
                             f"of {topic}-{p} in an epoch after {epoch}", LEADER_TIMEOUT * 2,
                             lambda: (lambda a: a if a and a[p][1] > epoch else None)(agreed()))
    # ListOffsets answers, as Kafka does, the current epoch with the latest offset and
    # the epoch of the record at the earliest (the first leader's epoch marker).
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    listed = {}
    for name, spec in (("latest", OffsetSpec.latest()), ("earliest", OffsetSpec.earliest())):
        futures = admin.list_offsets({TopicPartition(topic, p): spec}, request_timeout=METADATA_TIMEOUT * 5)
        listed[name] = next(iter(futures.values())).result().leader_epoch
    if listed != {"latest": after[p][1], "earliest": epoch}:
        fail(f"ListOffsets of {topic}-{p} answered leader epochs {listed}, not latest {after[p][1]} and "
             f"earliest {epoch}")
    print(f"cluster.py leaders-everywhere ok: (leader, epoch) of each partition named alike by all three brokers: "
          f"{[before[q][:2] for q in sorted(before)]}; after broker {leader} was killed and restarted, "
          f"{topic}-{p} is led by {after[p][0]} in epoch {after[p][1]}, also as broker {outsider}, "
          f"without a replica, names it; ListOffsets epochs {listed}")
    return 0


def non_voter(cluster):
    """Broker OUTSIDER is not a voter. It holds one of the four replicas of `chk` (which
    needs three for a quorum): killed and restarted, it comes back in sync. After the
    controller is killed it names the next one (its observer of the metadata log
    followed), and a topic created through it is created by that controller."""
    outsider = OUTSIDER
    cluster.produce_for(1)
    cluster.kill([outsider])
    cluster.fault()
    cluster.produce_for(2)
    cluster.start([outsider])
    cluster.wait_for(f"broker {outsider} back in the in-sync replicas", ISR_TIMEOUT, cluster.full_isr)

    def controller_named(excluded):
        metadata = cluster.metadata(outsider)
        named = metadata.controller_id if metadata else None
        return named if named in NODE_IDS and named != excluded else None

    controller = cluster.wait_for(f"a controller named by broker {outsider}", LEADER_TIMEOUT,
                                  lambda: controller_named(None))
    cluster.kill([controller])
    cluster.fault()
    started = time.monotonic()
    successor = cluster.wait_for(f"broker {outsider} naming a controller other than broker {controller}",
                                 LEADER_TIMEOUT, lambda: controller_named(controller))
    cluster.elections.append(time.monotonic() - started)
    topic = NewTopic("after-failover", num_partitions=2, replication_factor=3)

    def create():
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{cluster.brokers[outsider].port}"})
        try:
            admin.create_topics([topic], request_timeout=5)["after-failover"].result()
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                cluster.probe_error = f"creating after-failover through broker {outsider}: {e}"
                return None
        return True

    cluster.wait_for(f"a topic created through broker {outsider}", CREATE_TIMEOUT, create)
    def listed():
        metadata = cluster.metadata(outsider)
        return True if metadata and "after-failover" in metadata.topics else None

    cluster.wait_for(f"broker {outsider} listing the new topic", CREATE_TIMEOUT, listed)
    cluster.notes.append(f"broker {outsider} named broker {successor} the controller after broker {controller}")
    cluster.produce_for(1)
    cluster.start([controller])
    cluster.wait_for(f"broker {controller} back in the in-sync replicas", ISR_TIMEOUT, cluster.full_isr)
    cluster.produce_for(1)


SCENARIOS = {"kill-leader": kill_leader, "pause-leader": pause_leader, "kill-all": kill_all,
             "group-failover": group_failover, "delete-records": delete_records, "compaction": compaction,
             "recreated-topic": recreated_topic, "cli-tools": cli_tools, "cli-failover": cli_failover,
             "leaders-everywhere": leaders_everywhere, "non-voter": non_voter}


def run(cluster, scenario):
    """Sets up, runs `scenario`, checks; returns the exit status."""
    started = time.monotonic()
    cluster.start(cluster.node_ids)
    cluster.wait_for("every broker and a controller in every broker's metadata", FORM_TIMEOUT, cluster.formed)
    cluster.create_topic()
    cluster.wait_for(f"a leader and every replica in sync for {TOPIC}", ISR_TIMEOUT, cluster.full_isr)
    workload = cluster.workload = Workload(cluster.bootstrap)
    SCENARIOS[scenario](cluster)
    cluster.wait_for("a leader all brokers agree on, before checking", LEADER_TIMEOUT, cluster.settled_leader)
    workload.finish()
    cluster.workload = None
    group = group_check(cluster, workload) if cluster.reader is not None else ([], [])

    low, high, records = read_partition(cluster.bootstrap, max(workload.acked.values(), default=-1) + 1)
    failures, information = check(workload, low, high, records, cluster.deleted_below)
    failures += group[0]
    information += group[1]
    if not any(s > cluster.fault_sequence for s in workload.acked):
        failures.append(("stalled (nothing sent after the last fault was acknowledged)", [cluster.fault_sequence],
                         lambda s: f"v-{s:06d} was the last value sent before it"))
    broken = [f for f in failures if f[1]]
    counts = (f"{workload.sent} sent, {len(workload.acked)} acknowledged, {len(workload.failed)} failed, "
              f"{len(records)} read from offsets {low}..{high}, {cluster.leader_changes} leader changes, "
              f"new leader after {', '.join(f'{s:.1f}' for s in cluster.elections)} s, "
              f"{time.monotonic() - started:.0f} s in all")
    if broken:
        print(f"FAILED: cluster.py {scenario}: {len(broken)} invariant(s) broken ({counts})")
        for failure in broken:
            print(describe(*failure))
        for item in information:
            print(describe(*item))
        for note in cluster.notes:
            print(f"  note: {note}")
        if workload.failed:
            first = min(workload.failed)
            print(f"  first delivery failure: v-{first:06d}: {workload.failed[first]}")
        cluster.print_log_tails()
        return 1
    extras = ", ".join(f"{len(items)} {name.split(' (')[0]}" for name, items, _ in information)
    notes = "".join(f"; note: {note}" for note in cluster.notes)
    print(f"cluster.py {scenario} ok: {counts}; {extras}{notes}")
    return 0


def main():
    if len(sys.argv) != 4 or sys.argv[3] not in SCENARIOS:
        print(f"usage: cluster.py SPATE_BINARY WORKDIR {{{'|'.join(SCENARIOS)}}}", file=sys.stderr)
        return 2
    binary, workdir, scenario = sys.argv[1:]
    # A SIGTERM (a test harness giving up) must still reach the `finally` that kills the brokers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"cluster.py {scenario}: terminated"))
    cluster = Cluster(binary, workdir, node_ids=NODE_IDS + (OUTSIDER,) if scenario == "non-voter" else NODE_IDS)
    try:
        if scenario in ("compaction", "recreated-topic", "cli-tools", "cli-failover", "leaders-everywhere"):
            return SCENARIOS[scenario](cluster)
        return run(cluster, scenario)
    except (Failure, KafkaException) as error:
        print(f"FAILED: cluster.py {scenario}: {error}")
        for note in cluster.notes:
            print(f"  note: {note}")
        cluster.print_log_tails()
        return 1
    finally:
        cluster.kill_all()


if __name__ == "__main__":
    sys.exit(main())
