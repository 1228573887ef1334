"""The sample programme end to end on the real stack: the read models equal the in-process run.

Requirement: the sample programme published through ``prm.sales.v1`` and the command path produces, after
the workers catch up, exactly the ledger, conflicts and KPIs that the in-process run produces from the
same events.

* ``prm ingest``, ``prm relay`` and ``prm worker --projections ledger,conflicts,dashboards`` run as
  subprocesses on a fresh PostgreSQL schema and a unique topic prefix;
* the sample's ``command`` steps go through a ``PartnerProgram`` on the same schema, in time order; its
  ``inbound`` steps are published as CloudEvents on ``<prefix>prm.sales.v1`` (kafka-python, keyed like
  ``SalesPublisher``) where they occur in the sequence. After each contiguous run of inbound steps the test
  waits until the ingest has recorded all of them (its inbox) before applying the next commands, which
  may depend on them (and the inbound steps on the commands before them);
* then it waits for the relay's tracked position to reach the store's last position and for every
  projection's checkpoint to cover the end offset of every partition of the events and programme topics;
* finally the PostgreSQL read models equal ``run_projections`` over ``read_store(program)`` in memory, with
  the projections built exactly as ``prm worker`` builds them; the dead-letter topic holds nothing, and the
  store holds every sale, refund and opportunity of the sample exactly once.

Every wait is a bounded poll on a position, an offset or a count; nothing sleeps to let something happen.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from psycopg import sql

from api.bootstrap import build_program
from api.cli_worker import projection_specs
from api.sample import INBOUND, OPPORTUNITY_OPENED, SALE_RECORDED, SALE_REFUNDED, Step, generate, to_cloudevent
from api.settings import Settings
from consumers.program_gate import kafka_source
from consumers.topics import TopicDefaults, TopicNames, admin_client, delete_topics, ensure_topics
from consumers.worker import projection_lag
from domain.application import PartnerProgram
from projections.memory import InMemoryProjectionStore
from projections.port import Doc, DocKey
from projections.postgres import PostgresProjectionStore
from projections.runner import run_projections
from projections.store_reader import read_store
from tests.helpers import checkpoint_offsets

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("PRM_TEST_E2E_SEED", "11"))
QUARTERS = int(os.environ.get("PRM_TEST_E2E_QUARTERS", "6"))
PROJECTIONS = "ledger,conflicts,dashboards"
NAMES = tuple(PROJECTIONS.split(","))
DEADLINE = 120.0
STEP_DEADLINE = 60.0
RELAY_NAME = "prm-events"
CE_HEADERS = [("content-type", b"application/cloudevents+json")]


# --------------------------------------------------------------------------- polling


def wait_until(
    condition: Callable[[], bool], what: str, timeout: float = DEADLINE, tail: Callable[[], str] = str
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds with ``tail()`` (the processes' logs)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tail()}", pytrace=False)
        time.sleep(0.02)


# --------------------------------------------------------------------------- the processes


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n" + "\n".join(text)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(timeout=timeout)


@dataclass
class Stack:
    """``prm ingest``, ``prm relay`` and ``prm worker`` on one schema and one topic prefix."""

    pg_url: str
    schema: str
    bootstrap: str
    topics: TopicNames
    workdir: Path
    processes: list[Process] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("PRM_") or key in ("PRM_TEST_DATABASE_URL", "PRM_KAFKA_BOOTSTRAP")
        }
        env.update(
            {
                "PRM_STORE": "postgres",
                "PRM_DATABASE_URL": self.pg_url,
                "PRM_DATABASE_SCHEMA": self.schema,
                "PRM_TOPIC_PREFIX": self.topics.prefix,
                "PRM_KAFKA_BOOTSTRAP": self.bootstrap,
                "PRM_LOG_FORMAT": "json",
                "PRM_LOG_LEVEL": "INFO",
            }
        )
        return env

    def start(self, name: str, *args: str) -> Process:
        prm = Path(sys.executable).with_name("prm")
        command = [str(prm)] if prm.exists() else [sys.executable, "-m", "api.cli"]
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                [*command, *args], env=self.env(), cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT
            )
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def start_all(self) -> None:
        self.start("ingest", "ingest", "--group", f"e2e-ingest-{uuid.uuid4().hex[:8]}")
        self.start("relay", "relay", "--poll-interval", "0.05")
        self.start(
            "worker",
            "worker",
            "--workers-id",
            f"e2e-workers-{uuid.uuid4().hex[:8]}",
            "--topic-prefix",
            self.topics.prefix,
            "--schema",
            self.schema,
            "--projections",
            PROJECTIONS,
            "--session-timeout",
            "6",
        )

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.processes)

    def all_alive(self) -> None:
        dead = [p for p in self.processes if p.popen.poll() is not None]
        if dead:
            pytest.fail("process(es) exited early:\n" + "\n".join(p.tail() for p in dead), pytrace=False)

    def stop_all(self) -> dict[str, int]:
        return {p.name: p.stop() for p in self.processes}

    def critical(self) -> list[str]:
        return [f"{p.name}: {r}" for p in self.processes for r in p.records() if r.get("level") in ("critical",)]


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[TopicNames]:
    defaults = TopicDefaults(prefix=f"e2e{uuid.uuid4().hex[:10]}.")
    admin = admin_client(kafka_bootstrap, client_id="prm-test-e2e")
    try:
        ensure_topics(admin, defaults.specs())
        yield defaults.names
    finally:
        try:
            delete_topics(admin, defaults.names.all())
        finally:
            admin.close()


@pytest.fixture
def stack(pg_url: str, pg_schema: str, kafka_bootstrap: str, topics: TopicNames, tmp_path: Path) -> Iterator[Stack]:
    """Torn down before ``pg_schema`` (which drops the schema) and ``topics``: every process is gone by then."""
    s = Stack(pg_url, pg_schema, kafka_bootstrap, topics, tmp_path)
    try:
        yield s
    finally:
        s.stop_all()


# --------------------------------------------------------------------------- observing the stack


def end_offsets(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """``kafka:<topic>:<partition>`` -> end offset, for every partition of ``topics``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        return {kafka_source(tp.topic, tp.partition): end for tp, end in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def inbox_outcomes(conn: psycopg.Connection[Any], schema: str) -> Counter[str]:
    """The ingest inbox's rows by outcome (empty before the ingest created its table)."""
    exists = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".prm_inbox',)).fetchone()
    if not exists or exists[0] is None:
        return Counter()
    query = sql.SQL("SELECT outcome, count(*) FROM {} GROUP BY outcome").format(sql.Identifier(schema, "prm_inbox"))
    return Counter({str(outcome): int(count) for outcome, count in conn.execute(query).fetchall()})


def relay_position(conn: psycopg.Connection[Any], schema: str) -> int:
    exists = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".prm_relay_position',)).fetchone()
    if not exists or exists[0] is None:
        return 0
    row = conn.execute(
        sql.SQL("SELECT position FROM {} WHERE relay_name = %s").format(sql.Identifier(schema, "prm_relay_position")),
        (RELAY_NAME,),
    ).fetchone()
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------- driving the sample


class InboundPublisher:
    """Publishes inbound steps the way ``SalesPublisher`` does: key = sale id (refunds too) or opportunity id."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
        self.sent = 0

    def publish(self, steps: list[Step]) -> None:
        futures = []
        for step in steps:
            event = to_cloudevent(step)
            value = json.dumps(event, ensure_ascii=False).encode()
            futures.append(self.producer.send(self.topic, value, key=event["subject"].encode(), headers=CE_HEADERS))
        self.producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)
        self.sent += len(steps)

    def close(self) -> None:
        self.producer.close()


def apply_command(program: PartnerProgram, step: Step) -> None:
    getattr(program, step.name)(**copy.deepcopy(step.args))


def drive(stack: Stack, program: PartnerProgram, steps: list[Step]) -> None:
    """Commands in order; each contiguous run of inbound steps published, then awaited in the ingest's inbox."""
    publisher = InboundPublisher(stack.bootstrap, stack.topics.sales)
    try:
        with psycopg.connect(stack.pg_url, autocommit=True) as conn:
            for is_inbound, group in itertools.groupby(steps, key=lambda s: s.kind == INBOUND):
                run = list(group)
                if not is_inbound:
                    for step in run:
                        apply_command(program, step)
                    continue
                publisher.publish(run)
                wanted = publisher.sent

                def recorded(wanted: int = wanted) -> bool:
                    outcomes = inbox_outcomes(conn, stack.schema)
                    assert outcomes["dead_lettered"] == 0, f"dead letters: {outcomes}\n{stack.tails()}"
                    assert outcomes["duplicate"] == 0, f"duplicates: {outcomes}"
                    if outcomes["recorded"] < wanted:
                        stack.all_alive()
                        return False
                    return True

                wait_until(recorded, f"the ingest to record {wanted} inbound messages", STEP_DEADLINE, stack.tails)
    finally:
        publisher.close()


# --------------------------------------------------------------------------- the test


def test_sample_through_ingest_relay_and_workers_equals_the_in_process_run(
    stack: Stack, pg_url: str, pg_schema: str, kafka_bootstrap: str, topics: TopicNames
) -> None:
    started = time.monotonic()
    steps = generate(seed=SEED, scale=1, quarters=QUARTERS)
    inbound = [s for s in steps if s.kind == INBOUND]
    assert inbound and len(inbound) < len(steps)

    stack.start_all()
    program = build_program(Settings(store="postgres", database_url=pg_url, database_schema=pg_schema, _env_file=None))
    try:
        drive(stack, program, steps)
        max_position = program.max_position()
        envelopes = list(read_store(program))
    finally:
        program.close()
    assert envelopes[-1].sequence == max_position

    with psycopg.connect(pg_url, autocommit=True) as conn:
        # The relay has published (and been acked for) everything recorded.
        wait_until(
            lambda: relay_position(conn, pg_schema) >= max_position,
            f"the relay to publish up to position {max_position}",
            tail=stack.tails,
        )
        ends = {
            source: end for source, end in end_offsets(kafka_bootstrap, [topics.events, topics.program]).items() if end
        }
        assert sum(ends.values()) >= len(envelopes), "at least one message per recorded event"

        # Every projection has applied every partition up to its end.
        def caught_up() -> bool:
            marks = checkpoint_offsets(conn, pg_schema)
            done = all(marks.get(n, {}).get(s, -1) >= end - 1 for n in NAMES for s, end in ends.items())
            if not done:
                stack.all_alive()
            return done

        wait_until(caught_up, f"every projection to reach {ends}", tail=stack.tails)
        assert relay_position(conn, pg_schema) == max_position
        assert inbox_outcomes(conn, pg_schema) == Counter({"recorded": len(inbound)})

    # Nothing went to the dead-letter topic.
    assert sum(end_offsets(kafka_bootstrap, [topics.deadletter]).values()) == 0
    # Nothing was lost: every sale, refund and opportunity of the sample is in the store exactly once.
    recorded: dict[str, list[str]] = {}
    for envelope in envelopes:
        if envelope.type in (SALE_RECORDED, OPPORTUNITY_OPENED):
            recorded.setdefault(envelope.type, []).append(envelope.subject)
        elif envelope.type == SALE_REFUNDED:
            recorded.setdefault(envelope.type, []).append(str(envelope.data.get("refund_id")))
    for type_, key in (
        (SALE_RECORDED, "sale_id"),
        (SALE_REFUNDED, "refund_id"),
        (OPPORTUNITY_OPENED, "opportunity_id"),
    ):
        sent = sorted(str(s.args[key]) for s in inbound if s.name == type_)
        assert sorted(recorded.get(type_, [])) == sent, f"{type_}: store and sample differ"

    # The in-process run over the same events, with the projections built as ``prm worker`` builds them.
    specs = projection_specs(PROJECTIONS)
    assert tuple(spec.name for spec in specs) == NAMES
    memory = InMemoryProjectionStore()
    run_projections(memory, [spec.projection for spec in specs], envelopes)

    store = PostgresProjectionStore(pg_url, pg_schema)
    try:
        lag = projection_lag(store, NAMES, end_offsets=ends, max_position=max_position)
        for name in NAMES:
            assert lag[name].messages_behind == 0, lag[name]
            assert lag[name].sequence_behind == 0, lag[name]
            actual: dict[DocKey, Doc] = store.dump(name)
            want: dict[DocKey, Doc] = memory.dump(name)
            differing = sorted(k for k in set(actual) | set(want) if actual.get(k) != want.get(k))
            assert not differing, (
                f"{name}: {len(differing)} documents differ from the in-process run, e.g. {differing[:5]}"
            )
            assert len(actual) == len(want) > 0
    finally:
        store.close()

    # A clean shutdown: every process was still running, stops on SIGTERM with 0, and logged nothing critical.
    stack.all_alive()
    codes = stack.stop_all()
    assert codes == {"ingest": 0, "relay": 0, "worker": 0}, f"{codes}\n{stack.tails()}"
    assert not stack.critical(), "\n".join(stack.critical())
    print(  # noqa: T201 - shown with pytest -s
        f"\ne2e sample seed={SEED} quarters={QUARTERS}: {len(steps)} steps ({len(inbound)} inbound), "
        f"{len(envelopes)} events, {time.monotonic() - started:.1f}s"
    )
