"""``prm worker`` against the real Kafka and PostgreSQL: the read models equal an in-process replay.

The history is a real one: the sample programme recorded by ``PartnerProgram``
on PostgreSQL, read back as envelopes and published the way the relay does it
(programme events on the programme topic, flushed before anything later; the
rest keyed by partner or ``direct``). Workers run as ``prm worker``
subprocesses, each test with its own topic prefix, consumer group and
read-model schema. Nothing sleeps to let something happen: every wait polls the
checkpoints, the read models or the worker's log, with a deadline.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaProducer
from psycopg import sql

from api.bootstrap import build_program
from api.settings import Settings
from consumers.program_gate import kafka_source
from consumers.topics import TopicDefaults, TopicNames, admin_client, delete_topics, ensure_topics
from consumers.worker import projection_lag
from projections.dashboards import Dashboards
from projections.envelope import EventEnvelope
from projections.memory import InMemoryProjectionStore
from projections.port import Doc, DocKey, Projection
from projections.postgres import PostgresProjectionStore
from projections.runner import run_projections
from projections.store_reader import read_store
from tests.helpers import checkpoint_offsets as read_checkpoint_offsets

pytestmark = pytest.mark.integration

SEED = 11
DEADLINE = 180.0
PROGRAM_KINDS = {"plan", "program"}


def _replay_projections() -> dict[str, Callable[[], Projection]]:
    """Each projection the workers drive, built as an in-process, total-order replay would build it."""
    found: dict[str, Callable[[], Projection]] = {"dashboards": Dashboards}
    try:
        from projections.ledger import CommissionLedger

        found["ledger"] = CommissionLedger
    except ImportError:
        pass
    try:
        from projections.conflicts import ChannelConflicts

        found["conflicts"] = ChannelConflicts
    except ImportError:
        pass
    return found


REPLAY = _replay_projections()
NAMES = tuple(REPLAY)


# --------------------------------------------------------------------------- #
# The history and what an undisturbed replay gives                            #
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="session")
def history(pg_url: str) -> list[EventEnvelope]:
    """The sample programme recorded on a fresh PostgreSQL event store, as envelopes in position order."""
    from api.sample import generate, run_commands

    schema = f"t_hist_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    program = build_program(Settings(store="postgres", database_url=pg_url, database_schema=schema))
    try:
        run_commands(program, generate(seed=SEED))
        envelopes = list(read_store(program))
    finally:
        program.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    assert any(e.kind == "plan" for e in envelopes[10:]), "a plan version recorded after sales exercises the gate"
    return envelopes


@pytest.fixture(scope="session")
def expected(history: list[EventEnvelope]) -> dict[str, dict[DocKey, Doc]]:
    """Documents of each projection from ``run_projections`` over the history, in memory."""
    out = {}
    for name, factory in REPLAY.items():
        store = InMemoryProjectionStore()
        run_projections(store, [factory()], history)
        out[name] = store.dump(name)
    return out


# --------------------------------------------------------------------------- #
# Kafka: topics and a publisher that follows the relay's rules                #
# --------------------------------------------------------------------------- #
@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[TopicNames]:
    defaults = TopicDefaults(prefix=f"t{uuid.uuid4().hex[:10]}.")
    admin = admin_client(kafka_bootstrap, client_id="prm-test-worker")
    try:
        ensure_topics(admin, defaults.specs())
        yield defaults.names
        delete_topics(admin, defaults.names.all())
    finally:
        admin.close()


class Publisher:
    """Publishes envelopes like the relay: routing, keys, and the programme flush rule."""

    def __init__(self, bootstrap: str, topics: TopicNames) -> None:
        self.topics = topics
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self.last_offsets: dict[str, int] = {}
        self.sent = 0
        self._futures: list[Any] = []

    def route(self, envelope: EventEnvelope) -> tuple[str, bytes]:
        if envelope.kind in PROGRAM_KINDS:
            return self.topics.program, envelope.subject.encode()
        return self.topics.events, (envelope.partner_id or "direct").encode()

    def publish(self, envelope: EventEnvelope) -> None:
        topic, key = self.route(envelope)
        self._futures.append(self.producer.send(topic, envelope.to_json(), key=key))
        self.sent += 1
        if topic == self.topics.program:
            self.flush()  # nothing later goes out before the programme event is on Kafka

    def flush(self) -> None:
        self.producer.flush()
        for future in self._futures:
            meta = future.get(timeout=30)
            source = kafka_source(meta.topic, meta.partition)
            self.last_offsets[source] = max(self.last_offsets.get(source, -1), meta.offset)
        self._futures = []

    def publish_all(self, envelopes: list[EventEnvelope]) -> None:
        for envelope in envelopes:
            self.publish(envelope)
        self.flush()

    def close(self) -> None:
        self.producer.close()


@pytest.fixture
def publisher(kafka_bootstrap: str, topics: TopicNames) -> Iterator[Publisher]:
    pub = Publisher(kafka_bootstrap, topics)
    yield pub
    pub.close()


# --------------------------------------------------------------------------- #
# Workers as subprocesses                                                      #
# --------------------------------------------------------------------------- #
@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == event]

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout=timeout)

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])


@dataclass
class Cluster:
    """Starts ``prm worker`` processes of one consumer group; kills what is left at the end."""

    pg_url: str
    schema: str
    bootstrap: str
    topics: TopicNames
    workdir: Path
    group: str = field(default_factory=lambda: f"test-worker-{uuid.uuid4().hex[:10]}")
    started: list[Worker] = field(default_factory=list)

    def start(self, *extra: str, name: str | None = None) -> Worker:
        name = name or f"w{len(self.started)}"
        log_path = self.workdir / f"{name}.log"
        env = {
            **os.environ,
            "PRM_DATABASE_URL": self.pg_url,
            "PRM_KAFKA_BOOTSTRAP": self.bootstrap,
            "PRM_LOG_FORMAT": "json",
            "PRM_LOG_LEVEL": "INFO",
        }
        env.pop("PRM_DATABASE_SCHEMA", None)
        args = [
            sys.executable,
            "-m",
            "api.cli",
            "worker",
            "--workers-id",
            self.group,
            "--topic-prefix",
            self.topics.prefix,
            "--schema",
            self.schema,
            "--projections",
            ",".join(NAMES),
            "--session-timeout",
            "6",
            "--lag-interval",
            "2",
            *extra,
        ]
        with log_path.open("ab") as out:
            process = subprocess.Popen(args, env=env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT)
        worker = Worker(name, process, log_path)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.signal(signal.SIGKILL)
        for worker in self.started:
            worker.wait()

    def failures(self) -> list[str]:
        """Critical log lines (a refused batch, a failing reducer) of every worker started."""
        return [f"{w.name}: {r}" for w in self.started for r in w.records() if r.get("level") == "critical"]


@pytest.fixture
def cluster(pg_url: str, pg_schema: str, kafka_bootstrap: str, topics: TopicNames, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(pg_url, pg_schema, kafka_bootstrap, topics, tmp_path)
    yield c
    c.stop_all()
    assert not c.failures(), "\n".join(c.failures())


# --------------------------------------------------------------------------- #
# Waiting on positions                                                         #
# --------------------------------------------------------------------------- #
def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE, on_timeout: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout}")
        time.sleep(0.05)


def checkpoint_offsets(pg_url: str, schema: str) -> dict[str, dict[str, int]]:
    """projection -> source -> highest offset applied."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return read_checkpoint_offsets(conn, schema)


def applied_count(pg_url: str, schema: str, sources: list[str]) -> int:
    """Messages applied by every projection (sum over partitions of the lowest next offset)."""
    marks = checkpoint_offsets(pg_url, schema)
    return sum(min(marks.get(name, {}).get(source, -1) + 1 for name in NAMES) for source in sources)


def progress_reaches(cluster: Cluster, sources: list[str], count: int) -> Callable[[], bool]:
    return lambda: applied_count(cluster.pg_url, cluster.schema, sources) >= count


def caught_up(pg_url: str, schema: str, last_offsets: dict[str, int]) -> bool:
    marks = checkpoint_offsets(pg_url, schema)
    return all(marks.get(name, {}).get(source, -1) >= last for name in NAMES for source, last in last_offsets.items())


def wait_caught_up(cluster: Cluster, publisher: Publisher, workers: list[Worker]) -> None:
    wait_until(
        lambda: caught_up(cluster.pg_url, cluster.schema, publisher.last_offsets),
        f"every projection to reach {publisher.last_offsets}",
        on_timeout="\n---\n".join(w.tail() for w in workers),
    )


def assert_read_models_equal(cluster: Cluster, expected: dict[str, dict[DocKey, Doc]]) -> None:
    store = PostgresProjectionStore(cluster.pg_url, cluster.schema)
    try:
        for name in NAMES:
            actual = store.dump(name)
            want = expected[name]
            differing = sorted(k for k in set(actual) | set(want) if actual.get(k) != want.get(k))
            assert not differing, f"{name}: {len(differing)} documents differ from the replay, e.g. {differing[:5]}"
            assert len(actual) == len(want) > 0
    finally:
        store.close()


def sequences(cluster: Cluster) -> dict[tuple[str, str], int]:
    store = PostgresProjectionStore(cluster.pg_url, cluster.schema)
    try:
        return {(name, s): m.sequence for name in NAMES for s, m in store.checkpoints(name).items()}
    finally:
        store.close()


# --------------------------------------------------------------------------- #
# Tests                                                                        #
# --------------------------------------------------------------------------- #
def test_one_worker_builds_the_read_models_of_a_replay(
    cluster: Cluster, publisher: Publisher, history: list[EventEnvelope], expected: dict[str, dict[DocKey, Doc]]
) -> None:
    publisher.publish_all(history)
    worker = cluster.start()
    wait_caught_up(cluster, publisher, [worker])

    assert_read_models_equal(cluster, expected)
    store = PostgresProjectionStore(cluster.pg_url, cluster.schema)
    ends = {source: last + 1 for source, last in publisher.last_offsets.items()}
    lag = projection_lag(store, NAMES, end_offsets=ends, max_position=history[-1].sequence)
    store.close()
    for name in NAMES:
        assert lag[name].messages_behind == 0
        assert lag[name].sequence_behind == 0
    wait_until(lambda: bool(worker.events("worker.lag")), "a lag report", on_timeout=worker.tail())

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.tail()
    stopping = worker.events("worker.stopping")
    assert stopping and stopping[-1]["applied_events"] == len(history)


def test_two_workers_share_the_partitions(
    cluster: Cluster, publisher: Publisher, history: list[EventEnvelope], expected: dict[str, dict[DocKey, Doc]]
) -> None:
    first, second = cluster.start(), cluster.start()
    all_sources = {kafka_source(cluster.topics.events, p) for p in range(6)} | {kafka_source(cluster.topics.program, 0)}

    def shared() -> bool:
        latest = [w.events("worker.assigned") for w in (first, second)]
        if not all(latest):
            return False
        a, b = (set(entries[-1]["partitions"]) for entries in latest)
        return bool(a) and bool(b) and not (a & b) and a | b == all_sources

    wait_until(shared, "both workers to hold a share of the partitions", on_timeout=first.tail() + second.tail())
    publisher.publish_all(history)
    wait_caught_up(cluster, publisher, [first, second])
    assert_read_models_equal(cluster, expected)

    for worker in (first, second):
        worker.signal(signal.SIGTERM)
    for worker in (first, second):
        assert worker.wait() == 0, worker.tail()
        assert worker.events("worker.stopping")[-1]["applied_events"] > 0, "each worker applied its share"


def test_sigkill_at_random_points_while_events_flow(
    cluster: Cluster, publisher: Publisher, history: list[EventEnvelope], expected: dict[str, dict[DocKey, Doc]]
) -> None:
    seed = int(os.environ.get("PRM_TEST_CHAOS_SEED", random.SystemRandom().randrange(1_000_000)))
    rng = random.Random(seed)
    total = len(history)
    kill_points = sorted(rng.sample(range(total // 10, total - total // 10), 3))
    sources = [kafka_source(cluster.topics.events, p) for p in range(6)] + [kafka_source(cluster.topics.program, 0)]
    window = 400
    failure: list[BaseException] = []
    stop = threading.Event()

    def publish() -> None:
        # Keep events flowing while the workers die: stay at most ``window`` events ahead of the read models.
        try:
            for index, envelope in enumerate(history):
                while index - applied_count(cluster.pg_url, cluster.schema, sources) > window:
                    if stop.wait(0.02):
                        return
                publisher.publish(envelope)
            publisher.flush()
        except BaseException as exc:  # pragma: no cover - reported by the test thread
            failure.append(exc)

    thread = threading.Thread(target=publish, name="publisher", daemon=True)
    thread.start()
    try:
        for point in kill_points:
            workers = [cluster.start(), cluster.start()]
            wait_until(
                progress_reaches(cluster, sources, point),
                f"progress to {point} events (seed {seed})",
                on_timeout="\n---\n".join(w.tail() for w in workers),
            )
            rng.shuffle(workers)
            for worker in workers:
                worker.signal(signal.SIGKILL)
            for worker in workers:
                assert worker.wait() == -signal.SIGKILL
        survivors = [cluster.start(), cluster.start()]
        thread.join(timeout=DEADLINE)
        assert not thread.is_alive() and not failure, f"publisher: {failure} (seed {seed})"
        wait_caught_up(cluster, publisher, survivors)
    finally:
        stop.set()
    assert_read_models_equal(cluster, expected)


def test_a_republished_suffix_changes_nothing(
    cluster: Cluster, publisher: Publisher, history: list[EventEnvelope], expected: dict[str, dict[DocKey, Doc]]
) -> None:
    publisher.publish_all(history)
    worker = cluster.start()
    wait_caught_up(cluster, publisher, [worker])
    before = sequences(cluster)

    # What the relay does after a crash: publish again every event after its last recorded position,
    # with the same ids and sequences; here from before the last plan version, so both topics get duplicates.
    last_plan = max(i for i, e in enumerate(history) if e.kind in PROGRAM_KINDS)
    suffix = history[last_plan - 50 :]
    publisher.publish_all(suffix)
    wait_caught_up(cluster, publisher, [worker])

    assert sequences(cluster) == before
    assert_read_models_equal(cluster, expected)


@pytest.mark.skipif("ledger" not in NAMES, reason="the gate matters for the ledger's plan versions")
def test_the_gate_reads_the_programme_itself_when_its_owner_is_stuck(
    cluster: Cluster, publisher: Publisher, history: list[EventEnvelope], expected: dict[str, dict[DocKey, Doc]]
) -> None:
    first, second = cluster.start("--gate-patience", "0.3"), cluster.start("--gate-patience", "0.3")
    program_source = kafka_source(cluster.topics.program, 0)

    def owner() -> Worker | None:
        for worker in (first, second):
            assigned = worker.events("worker.assigned")
            if assigned and program_source in assigned[-1]["partitions"]:
                other = second if worker is first else first
                if other.events("worker.assigned") and other.events("worker.assigned")[-1]["partitions"]:
                    return worker
        return None

    wait_until(lambda: owner() is not None, "the programme partition to be assigned")
    stuck = owner()
    assert stuck is not None
    running = second if stuck is first else first

    last_plan = max(i for i, e in enumerate(history) if e.kind in PROGRAM_KINDS)
    publisher.publish_all(history[: last_plan - 20])
    wait_caught_up(cluster, publisher, [first, second])

    stuck.signal(signal.SIGSTOP)  # holds the programme partition, applies nothing
    try:
        publisher.publish_all(history[last_plan - 20 :])
        wait_until(
            lambda: bool(running.events("program_gate.catching_up")),
            "the running worker to read the programme partition itself",
            on_timeout=running.tail(),
        )
        stuck.signal(signal.SIGKILL)
        wait_caught_up(cluster, publisher, [running])
    finally:
        stuck.signal(signal.SIGKILL)
    assert_read_models_equal(cluster, expected)


def test_a_projection_reset_in_postgres_is_rebuilt_from_the_topics(
    cluster: Cluster, publisher: Publisher, history: list[EventEnvelope], expected: dict[str, dict[DocKey, Doc]]
) -> None:
    """The read models' checkpoints, not the group's committed offsets, say where to resume."""
    publisher.publish_all(history)
    first = cluster.start()
    wait_caught_up(cluster, publisher, [first])
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.tail()  # the group has now committed the end of every partition

    store = PostgresProjectionStore(cluster.pg_url, cluster.schema)
    store.reset("dashboards")  # a new projection, or one being rebuilt
    store.close()
    second = cluster.start()
    wait_caught_up(cluster, publisher, [second])

    resumed = second.events("worker.assigned")[0]["resume_at"]
    assert set(resumed.values()) == {0}, resumed
    assert_read_models_equal(cluster, expected)
