"""How far the read models are: the ``ProjectionProgress`` port and its real-stack implementation.

A command returns the event-store position it recorded; a reader that wants to
see its own write waits until every projection it reads has applied every event
up to that position (``?min_position=`` on the HTTP API).

Two implementations:

* embedded: :class:`api.projector.LocalProjector` runs the projections in-process
  after each command, so its position is exact and immediately up to date;
* real stack: :class:`PostgresProjectionProgress` reads what the Kafka workers
  wrote in ``rm_checkpoints`` (one checkpoint per projection and source).

What the real stack needs, and why
----------------------------------
A Kafka worker checkpoints, per projection and per partition
(``kafka:<topic>:<partition>``), the highest event-store ``sequence`` it applied
and the ``offset`` of that record. Per partition, sequences increase with
offsets (the relay publishes in store order), but a position ``P`` may live in
any partition, so "the projection has reached ``P``" needs two more facts:

1. the relay's published position ``R`` (``prm_relay_position.position``, the
   relay records it only after the broker acknowledged the batch): nothing above
   ``R`` can have been consumed, so ``P <= R`` is required;
2. each partition's end offset (the consumer lag): a partition whose checkpoint
   offset is its last record (``offset + 1 >= end``) has had every published
   event consumed, so it holds nothing ``<= R`` that is still pending; a partition
   still behind is only known to be complete up to its checkpoint ``sequence``.

So the projection's position is ``min(R, min over partitions of bound(p))`` with
``bound(p) = R`` for a caught-up partition and ``sequence(p)`` otherwise (``0``
for a non-empty partition not consumed at all). It never overstates; it may
understate while a partition is busy, until the worker consumes a record above
``P`` there or catches up. Without a broker connection (no end offsets) only
the checkpoint sequences are known, and idle partitions keep the position
back: configure the broker for the real stack.

A projection rebuilt from the event store (``source = store``: the embedded
catch-up, a replay, or the real-stack tests without Kafka) has an exact
position: its ``store`` checkpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
import structlog
from psycopg import sql

from projections.port import Checkpoint, ProjectionStore
from projections.runner import STORE_SOURCE

__all__ = [
    "DEADLETTER_OUTCOME",
    "INBOX_TABLE",
    "RELAY_TABLE",
    "KafkaPartitionEnds",
    "PartitionEnds",
    "PostgresProjectionProgress",
    "ProgressReport",
    "ProjectionProgress",
    "projection_position",
]

RELAY_TABLE = "prm_relay_position"
INBOX_TABLE = "prm_inbox"
DEADLETTER_OUTCOME = "dead_lettered"
KAFKA_PREFIX = "kafka:"
log = structlog.get_logger("prm.api")


@dataclass(frozen=True)
class ProgressReport:
    """Where the event store and each projection are."""

    head: int
    positions: dict[str, int]
    relay_position: int | None = None
    deadletters: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def reached(self, projections: Sequence[str] | None = None) -> int:
        """The position every one of ``projections`` (all when ``None``) has reached."""
        names = list(projections) if projections is not None else list(self.positions)
        return min((self.positions.get(name, 0) for name in names), default=self.head)

    def lag(self, projections: Sequence[str] | None = None) -> int:
        return max(0, self.head - self.reached(projections))

    @property
    def relay_lag(self) -> int | None:
        return None if self.relay_position is None else max(0, self.head - self.relay_position)


class ProjectionProgress(Protocol):
    """The read side's progress: read it, or wait (bounded) until a position is reached."""

    projections: tuple[str, ...]

    def report(self) -> ProgressReport: ...

    def wait_for(self, position: int, projections: Sequence[str] | None, timeout: float) -> ProgressReport:
        """Return as soon as ``projections`` reached ``position``, or after ``timeout`` seconds."""
        ...


class PartitionEnds(Protocol):
    """End offsets (the offset the next record will get) of every partition of ``topics``."""

    def end_offsets(self, topics: Sequence[str]) -> dict[tuple[str, int], int]: ...


def _parse_kafka_source(source: str) -> tuple[str, int] | None:
    if not source.startswith(KAFKA_PREFIX):
        return None
    topic, _, partition = source[len(KAFKA_PREFIX) :].rpartition(":")
    return (topic, int(partition)) if topic and partition.isdigit() else None


def projection_position(
    checkpoints: dict[str, Checkpoint],
    *,
    relay_position: int | None,
    ends: dict[tuple[str, int], int] | None,
) -> int:
    """A projection's position from its checkpoints (see the module docstring)."""
    store = checkpoints.get(STORE_SOURCE)
    kafka = {parsed: cp for source, cp in checkpoints.items() if (parsed := _parse_kafka_source(source)) is not None}
    if not kafka:
        return store.sequence if store is not None else 0
    ceiling = relay_position if relay_position is not None else max(cp.sequence for cp in kafka.values())
    bounds: list[int] = []
    partitions = set(kafka) | set(ends or {})
    for partition in partitions:
        checkpoint = kafka.get(partition)
        end = (ends or {}).get(partition)
        if checkpoint is None:
            bounds.append(ceiling if end == 0 else 0)
        elif end is not None and checkpoint.offset is not None and checkpoint.offset + 1 >= end:
            bounds.append(ceiling)
        else:
            bounds.append(checkpoint.sequence)
    position = min([ceiling, *bounds])
    if store is not None:
        position = max(position, store.sequence)
    return position


class KafkaPartitionEnds:
    """End offsets read from the broker with a group-less kafka-python consumer.

    Never cached: an end offset read before the relay position would let a
    partition look caught up with events it has not received yet.
    """

    def __init__(self, consumer_factory: Callable[[], Any]) -> None:
        self._factory = consumer_factory
        self._consumer: Any = None
        self._lock = threading.Lock()

    def end_offsets(self, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        from kafka import TopicPartition

        with self._lock:
            if self._consumer is None:
                self._consumer = self._factory()
            partitions = [
                TopicPartition(topic, p)
                for topic in sorted(topics)
                for p in sorted(self._consumer.partitions_for_topic(topic) or ())
            ]
            offsets = self._consumer.end_offsets(partitions) if partitions else {}
            return {(tp.topic, tp.partition): int(offset) for tp, offset in offsets.items()}

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None


class PostgresProjectionProgress:
    """Progress of read models kept in PostgreSQL by the workers (or by a store catch-up).

    ``head`` reads the event store's highest position; the relay position and the
    dead-letter count come from the event store's database (``RELAY_TABLE`` and
    ``INBOX_TABLE`` in ``schema``) when those tables exist; ``ends`` gives the
    partitions' end offsets of ``topics`` when a broker is configured.
    """

    def __init__(
        self,
        *,
        store: ProjectionStore,
        head: Callable[[], int],
        conninfo: str,
        schema: str | None = None,
        projections: Sequence[str] = ("ledger", "conflicts", "dashboards"),
        topics: Sequence[str] = (),
        ends: PartitionEnds | None = None,
        poll_seconds: float = 0.05,
        relay_name: str | None = None,
    ) -> None:
        self.store = store
        self._head = head
        self.conninfo = conninfo
        self.schema = schema or "public"
        self.projections = tuple(projections)
        self.topics = tuple(topics)
        self.ends = ends
        self.poll_seconds = poll_seconds
        self.relay_name = relay_name
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
        return self._conn

    def _table_exists(self, conn: psycopg.Connection[Any], table: str) -> bool:
        row = conn.execute("SELECT to_regclass(%s)", (f'"{self.schema}"."{table}"',)).fetchone()
        return bool(row and row[0])

    def _relay_and_deadletters(self) -> tuple[int | None, int | None]:
        with self._lock:
            try:
                conn = self._connection()
                relay: int | None = None
                deadletters: int | None = None
                if self._table_exists(conn, RELAY_TABLE):
                    query = sql.SQL("SELECT max(position) FROM {}").format(sql.Identifier(self.schema, RELAY_TABLE))
                    params: tuple[Any, ...] = ()
                    if self.relay_name:
                        query = sql.SQL("SELECT max(position) FROM {} WHERE relay_name = %s").format(
                            sql.Identifier(self.schema, RELAY_TABLE)
                        )
                        params = (self.relay_name,)
                    row = conn.execute(query, params).fetchone()
                    relay = int(row[0]) if row and row[0] is not None else 0
                if self._table_exists(conn, INBOX_TABLE):
                    row = conn.execute(
                        sql.SQL("SELECT count(*) FROM {} WHERE outcome = %s").format(
                            sql.Identifier(self.schema, INBOX_TABLE)
                        ),
                        (DEADLETTER_OUTCOME,),
                    ).fetchone()
                    deadletters = int(row[0]) if row else 0
                return relay, deadletters
            except psycopg.Error:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise

    def report(self) -> ProgressReport:
        # Order matters: the relay position first, then the end offsets (which then include every
        # event up to it), then the checkpoints (which only grow).
        head = self._head()
        relay, deadletters = self._relay_and_deadletters()
        ends = None
        if self.ends is not None and self.topics:
            try:
                ends = self.ends.end_offsets(self.topics)
            except Exception as exc:  # the broker is down: positions from the checkpoints alone (never more)
                log.warning("progress: no end offsets from the broker", error=f"{type(exc).__name__}: {exc}")
        positions = {
            name: min(head, projection_position(self.store.checkpoints(name), relay_position=relay, ends=ends))
            for name in self.projections
        }
        return ProgressReport(head=head, positions=positions, relay_position=relay, deadletters=deadletters)

    def wait_for(self, position: int, projections: Sequence[str] | None, timeout: float) -> ProgressReport:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            report = self.report()
            if report.reached(projections) >= position or time.monotonic() >= deadline:
                return report
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        if isinstance(self.ends, KafkaPartitionEnds):
            self.ends.close()
