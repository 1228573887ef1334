"""Ingest consumer for ``prm.sales.v1``: validate, deduplicate, record, dead-letter (spec: events.md, "Inbound").

One loop, batch by batch::

    poll ≤ max_batch records
    parse every record (consumers.wire.parse_inbound: never raises)
    claim the batch in the inbox (one PostgreSQL transaction)             ─ see "the inbox" below
    for each record, in offset order per partition:
        same record again (redelivery after a crash or a rebalance) → nothing
        same id, same data, other record  → nothing (a duplicate, debug log)
        same id, different data           → dead letter ``duplicate_message_id``
        a parse Rejection                 → dead letter with its code
        new message                       → its command joins the batch's commands
    the batch's commands, in that order, in ONE store transaction          ─ see "the batch" below
        (PartnerProgram.record_inbound_batch: record_sale / refund_sale / open_opportunity with
        source = CloudEvents source, message_id = CloudEvents id); a DomainError → dead letter
    wait for the broker's ack of every dead letter of the batch
    write the outcomes to the inbox (one transaction)
    commit the offsets of the records handled (synchronously)

A dead letter is the ORIGINAL bytes, key and headers, sent to prm.deadletter.v1 with the prm-error-* and
prm-source-* headers.

The batch
---------
Every new message of a poll becomes one command of ``PartnerProgram.record_inbound_batch``, which runs each
command's own method over a working set of aggregates and saves the events of all of them in one store
transaction (one table lock instead of one per message). The outcomes are those of the commands run one by
one, in order: duplicates, different data, refunds above the sale (also of a sale recorded earlier in the
batch), registration wins, flags. A refused command leaves nothing in the batch and is dead-lettered. The
store is read once per batch (``postgres_event_loader``: every aggregate the batch needs, in one query), the
partners and contracts are kept between batches (``InboundAggregates``, fast-forwarded by that same query),
and the events are inserted with four binary arrays (``postgres_event_inserter``) under the recorder's table
lock. bench/ingest_pipeline.py measures it.

The inbox
---------
``prm_inbox(message_id primary key, topic, partition, offset, fingerprint, event_type, outcome, error_code,
recorded_position, received_at, completed_at)`` lives in the event store's database and schema. A record is
keyed by its CloudEvents ``id``; a record without a usable id (not JSON, not a CloudEvent) or one that reuses
a known id for different data is keyed by its coordinates ``kafka:<topic>:<partition>:<offset>:<digest>``
(the digest of its content: if a topic is deleted and re-created, new records at old offsets are not taken
for redeliveries).
Claiming inserts ``outcome='pending'`` rows (``ON CONFLICT DO NOTHING``) and reads back the row of every key:

- the row is this record's own (same topic, partition, offset and fingerprint): ``pending`` → handle it,
  anything else → it was handled already (a redelivery): do nothing;
- the row belongs to another record: equal fingerprints (type + data) → a duplicate, do nothing; different
  → ``duplicate_message_id`` (the record's own rejection code if it is itself invalid).

A dead-lettered id stays in the inbox too, so a redelivery does not dead-letter it twice; to replay a dead
letter after fixing its cause, publish it with a new id (or delete its inbox row first).

Crash windows (the store, the inbox, the dead-letter topic and the offsets cannot share one transaction)
------------------------------------------------------------------------------------------------------
Offsets are committed only after the store write, the dead letter's ack and the inbox outcome, so a crash at
any point makes Kafka redeliver from the last committed offset; nothing is ever skipped. For each window:

1. *Claimed (pending) but not handled* — redelivered with its coordinates; the pending row is its own, so it
   is handled then. Another record with the same id meanwhile only counts as a duplicate: the pending owner
   will still be handled, because its offset was not committed.
2. *Store written, inbox not completed* — the batch's events are one transaction: all of them are in the
   store, or none. Redelivered, the rows are still pending, the commands run again and the domain's own
   idempotency makes each a no-op: an identical ``sale_id`` (or ``refund_id`` within its sale, or
   ``opportunity_id``) re-delivery returns ``duplicate=True`` and records nothing. Registration bonuses/wins
   are saved in the same store transaction as the sale, so they are not repeated either. Counted once in the
   store; the inbox says ``duplicate`` instead of ``recorded`` for those messages.
3. *Dead letter acked, inbox not completed* — redelivered, still pending, dead-lettered again: the dead
   letter topic is at-least-once. Both copies carry the same ``prm-source-topic/partition/offset``, which
   identify the record: deduplicate on them downstream. (Kafka transactions cannot include the PostgreSQL
   inbox write, so this window cannot be closed without two-phase commit.)
4. *Inbox completed, offsets not committed* (crash, or a ``CommitFailedError`` after a rebalance) —
   redelivered to whichever member owns the partition; the row is completed and its own: skipped.
5. *Two members handle the same record* (a member that overran ``max_poll_interval_ms`` and a new owner) —
   the store's optimistic concurrency refuses the second batch's write (``RecordConflictError``): nothing of
   it is recorded, it is reloaded and run again, and then finds the duplicates; the first completed outcome
   wins in the inbox (``WHERE outcome='pending'``).

Failures
--------
- Infrastructure (PostgreSQL down, connection lost, broker errors, a concurrent-write conflict): never a dead
  letter, never a skip. The same step is retried with capped exponential backoff and jitter, logged as a
  warning; for the store, the step is the whole batch (nothing of a failed attempt was recorded). A stop
  request during such a wait abandons the batch without committing (window 1 or 2).
- A bad message (parse rejection, ``DomainError``) is dead-lettered and the consumer goes on.
- Anything else (a bug, an unforeseen input) aborts the batch's attempt, naming the command: the batch is
  retried a few times, then that message is dead-lettered as ``processing_error`` and the batch runs without
  it, so one poison message cannot stop the partition.
- After the first batch the live objects are frozen out of the cyclic GC's reach (``gc.freeze``).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, TypeVar
from uuid import UUID

import psycopg
import structlog
from eventsourcing.persistence import PersistenceError, RecordConflictError, StoredEvent
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from psycopg import sql

from consumers.wire import (
    InboundMessage,
    InboundTopicNames,
    InboundTopics,
    OpportunityOpenedEvent,
    Rejection,
    SaleRecordedEvent,
    SaleRefundedEvent,
    fingerprint_of,
    parse_inbound,
)
from domain.application import (
    EventInserter,
    EventLoader,
    InboundAggregates,
    InboundBatchError,
    InboundCommand,
    InboundOutcome,
    PartnerProgram,
)
from domain.errors import DomainError, NotFound

__all__ = [
    "DEFAULT_GROUP",
    "Backoff",
    "InboxRow",
    "IngestConsumer",
    "IngestStats",
    "PostgresInbox",
]

DEFAULT_GROUP: Final = "prm-ingest"

PENDING: Final = "pending"
RECORDED: Final = "recorded"
DUPLICATE: Final = "duplicate"
DEAD_LETTERED: Final = "dead_lettered"

H_CODE: Final = "prm-error-code"
H_DETAIL: Final = "prm-error-detail"
H_TOPIC: Final = "prm-source-topic"
H_PARTITION: Final = "prm-source-partition"
H_OFFSET: Final = "prm-source-offset"
_OWN_HEADERS: Final = frozenset({H_CODE, H_DETAIL, H_TOPIC, H_PARTITION, H_OFFSET})
_MAX_DETAIL_BYTES: Final = 1000

INFRASTRUCTURE_ERRORS: Final[tuple[type[BaseException], ...]] = (
    PersistenceError,  # eventsourcing's wrapping of psycopg errors (incl. ConnectionUnavailableError)
    RecordConflictError,  # a concurrent write to the same aggregate: retry reloads it
    psycopg.Error,  # the inbox's own connection
    KafkaError,
    OSError,
    TimeoutError,
)

T = TypeVar("T")
log = structlog.get_logger("prm.ingest")


# --------------------------------------------------------------------------- stats and backoff


@dataclass
class IngestStats:
    """Counters of what the consumer did. ``handled`` = every record polled and dealt with."""

    polled: int = 0
    recorded: int = 0
    duplicates: int = 0
    redelivered: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    abandoned_batches: int = 0

    @property
    def dead_letters(self) -> int:
        return sum(self.dead_lettered.values())

    @property
    def handled(self) -> int:
        return self.recorded + self.duplicates + self.redelivered + self.dead_letters

    def add(self, other: IngestStats) -> None:
        for name in (
            "polled",
            "recorded",
            "duplicates",
            "redelivered",
            "retries",
            "batches",
            "commits",
            "commit_failures",
            "abandoned_batches",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dead_lettered.update(other.dead_lettered)

    def as_dict(self) -> dict[str, Any]:
        return {
            "polled": self.polled,
            "recorded": self.recorded,
            "duplicates": self.duplicates,
            "redelivered": self.redelivered,
            "dead_lettered": dict(sorted(self.dead_lettered.items())),
            "retries": self.retries,
            "batches": self.batches,
            "commits": self.commits,
            "commit_failures": self.commit_failures,
            "abandoned_batches": self.abandoned_batches,
        }


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with ±20 % jitter: ``initial_s · factor^(attempt-1)``, at most ``max_s``."""

    initial_s: float = 0.05
    factor: float = 2.0
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))
        return base * random.uniform(0.8, 1.2)  # jitter, not cryptography


class _Abandon(Exception):
    """A stop was requested while waiting for infrastructure: leave the batch uncommitted."""


# --------------------------------------------------------------------------- the inbox


class InboxRow(NamedTuple):
    message_id: str
    topic: str
    partition: int
    offset: int
    fingerprint: str
    outcome: str


@dataclass(frozen=True)
class _Completion:
    key: str
    topic: str
    partition: int
    offset: int
    outcome: str
    error_code: str | None
    position: int | None


class PostgresInbox:
    """The ``prm_inbox`` table: which message ids were seen, where, and what came of them.

    One connection, reopened after a failure; every call is one transaction. Errors propagate (the
    consumer retries them as infrastructure failures).
    """

    def __init__(self, url: str, schema: str | None = None, *, table: str = "prm_inbox", connect_timeout: int = 5):
        self._url = url
        self._schema = schema
        self._table = sql.Identifier(schema, table) if schema else sql.Identifier(table)
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._connect_timeout)
        return self._conn

    def _transaction(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        conn = self._connection()
        try:
            with conn.pipeline(), conn.transaction():  # pipelined: its statements need fewer round trips
                return work(conn)
        except psycopg.Error:
            if conn.broken or conn.closed:
                self.close()
            raise

    def setup(self) -> None:
        """Create the table if needed (serialised by an advisory lock: concurrent CREATEs can collide)."""

        def create(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('prm_inbox'))")
            if self._schema:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema)))
            conn.execute(
                sql.SQL(
                    """
                    CREATE TABLE IF NOT EXISTS {} (
                        message_id text PRIMARY KEY,
                        topic text NOT NULL,
                        "partition" integer NOT NULL,
                        "offset" bigint NOT NULL,
                        fingerprint text NOT NULL,
                        event_type text,
                        outcome text NOT NULL,
                        error_code text,
                        recorded_position bigint,
                        received_at timestamptz NOT NULL DEFAULT now(),
                        completed_at timestamptz
                    )
                    """
                ).format(self._table)
            )

        self._transaction(create)

    def claim(self, claims: Sequence[InboxRow], event_types: Sequence[str | None]) -> dict[str, InboxRow]:
        """Insert ``pending`` rows for keys not seen yet; return the row of every key (ours or earlier)."""
        if not claims:
            return {}

        def work(conn: psycopg.Connection[Any]) -> dict[str, InboxRow]:
            inserted = conn.execute(
                sql.SQL(
                    """
                    INSERT INTO {} (message_id, topic, "partition", "offset", fingerprint, event_type, outcome)
                    SELECT * FROM unnest(%b::text[], %b::text[], %b::int[], %b::bigint[], %b::text[], %b::text[],
                                         %b::text[])
                    ON CONFLICT (message_id) DO NOTHING
                    RETURNING message_id, topic, "partition", "offset", fingerprint, outcome
                    """
                ).format(self._table),
                (
                    [c.message_id for c in claims],
                    [c.topic for c in claims],
                    [c.partition for c in claims],
                    [c.offset for c in claims],
                    [c.fingerprint for c in claims],
                    list(event_types),
                    [PENDING] * len(claims),
                ),
            ).fetchall()
            rows = {row[0]: InboxRow(*row) for row in inserted}
            # Only the keys already there (redeliveries, duplicates) need reading back: usually none.
            earlier = [c.message_id for c in claims if c.message_id not in rows]
            if earlier:
                found = conn.execute(
                    sql.SQL(
                        'SELECT message_id, topic, "partition", "offset", fingerprint, outcome FROM {}'
                        " WHERE message_id = ANY(%b::text[])"
                    ).format(self._table),
                    (earlier,),
                ).fetchall()
                rows.update((row[0], InboxRow(*row)) for row in found)
            return rows

        return self._transaction(work)

    def complete(self, completions: Sequence[_Completion]) -> None:
        """Record the outcomes of handled records (only over their own, still pending, rows)."""
        if not completions:
            return

        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                sql.SQL(
                    """
                    UPDATE {} AS i
                       SET outcome = u.outcome, error_code = u.error_code, recorded_position = u.position,
                           completed_at = now()
                      FROM unnest(%b::text[], %b::text[], %b::int[], %b::bigint[], %b::text[], %b::text[],
                                  %b::bigint[]) AS u(message_id, topic, "partition", "offset", outcome,
                                                     error_code, position)
                     WHERE i.message_id = u.message_id AND i.topic = u.topic AND i."partition" = u."partition"
                       AND i."offset" = u."offset" AND i.outcome = 'pending'
                    """
                ).format(self._table),
                (
                    [c.key for c in completions],
                    [c.topic for c in completions],
                    [c.partition for c in completions],
                    [c.offset for c in completions],
                    [c.outcome for c in completions],
                    [c.error_code for c in completions],
                    [c.position for c in completions],
                ),
            )

        self._transaction(work)

    def get(self, message_id: str) -> InboxRow | None:
        def work(conn: psycopg.Connection[Any]) -> InboxRow | None:
            row = conn.execute(
                sql.SQL(
                    'SELECT message_id, topic, "partition", "offset", fingerprint, outcome FROM {}'
                    " WHERE message_id = %s"
                ).format(self._table),
                (message_id,),
            ).fetchone()
            return InboxRow(*row) if row else None

        return self._transaction(work)

    def outcome_counts(self) -> dict[str, int]:
        def work(conn: psycopg.Connection[Any]) -> dict[str, int]:
            rows = conn.execute(sql.SQL("SELECT outcome, count(*) FROM {} GROUP BY outcome").format(self._table))
            return {str(outcome): int(count) for outcome, count in rows.fetchall()}

        return self._transaction(work)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


# --------------------------------------------------------------------------- bulk reads of the event store


def postgres_event_loader(program: PartnerProgram) -> EventLoader | None:
    """An ``EventLoader`` over the programme's PostgreSQL event table (``None`` on another store).

    One query per call: the stored events of every requested aggregate above the requested version, so a
    batch loads (or fast-forwards) all its aggregates at once instead of one query per aggregate. It reads
    eventsourcing's table (``originator_id, originator_version, topic, state``, primary key on the first two)
    through the recorder's own connection pool.
    """
    recorder = program.recorder
    datastore = getattr(recorder, "datastore", None)
    table = getattr(recorder, "events_table_name", None)
    if datastore is None or not isinstance(table, str) or not hasattr(datastore, "get_connection"):
        return None
    id_type = "uuid" if getattr(datastore, "originator_id_type", "uuid") == "uuid" else "text"
    query = sql.SQL(
        "SELECT e.originator_id, e.originator_version, e.topic, e.state"
        " FROM unnest({id_type}, %b::bigint[]) AS q(id, after)"
        " JOIN {table} AS e ON e.originator_id = q.id AND e.originator_version > q.after"
        " ORDER BY e.originator_id, e.originator_version"
    ).format(
        id_type=sql.SQL(f"%b::{id_type}[]"),
        table=sql.Identifier(datastore.schema, table),
    )

    def load(after: Mapping[UUID, int]) -> dict[UUID, list[StoredEvent]]:
        if not after:
            return {}
        events: dict[UUID, list[StoredEvent]] = {}
        with datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(query, (list(after), list(after.values())))
            for row in cursor.fetchall():
                originator_id = row["originator_id"]
                events.setdefault(originator_id, []).append(
                    StoredEvent(originator_id, row["originator_version"], row["topic"], bytes(row["state"]))
                )
        return events

    return load


def postgres_event_inserter(program: PartnerProgram) -> EventInserter | None:
    """An ``EventInserter`` over the programme's PostgreSQL event table (``None`` on another store).

    The recorder's own ``insert_events`` sends the events as one array of its composite type, which psycopg
    dumps in text format, escaping every byte of every state: about 60 µs an event, most of the ingest's
    store write (measured in bench/). This does the same transaction with four arrays in binary format
    (about 14 µs an event): ``SET LOCAL lock_timeout``, ``LOCK TABLE … IN EXCLUSIVE MODE`` (the commit order
    of the notification ids, which the relay relies on), ``NOTIFY`` on the recorder's channel, then the
    ``INSERT … RETURNING notification_id``. Errors come out as eventsourcing's (``get_connection`` maps them):
    a primary-key violation (another writer got the aggregate version first) is its ``IntegrityError``.
    ``None`` when the recorder is set up otherwise (database functions enabled): the recorder then inserts.
    """
    recorder = program.recorder
    datastore = getattr(recorder, "datastore", None)
    table = getattr(recorder, "events_table_name", None)
    channel = getattr(recorder, "channel_name", None)
    lock_timeout = getattr(datastore, "lock_timeout", None)
    if (
        datastore is None
        or not isinstance(table, str)
        or not isinstance(channel, str)
        or not isinstance(lock_timeout, int)
        or getattr(datastore, "enable_db_functions", True)
        or not hasattr(datastore, "get_connection")
    ):
        return None
    id_type = "uuid" if getattr(datastore, "originator_id_type", "uuid") == "uuid" else "text"
    qualified = sql.Identifier(datastore.schema, table)
    statements = [
        sql.SQL("SET LOCAL lock_timeout = '{}s'").format(sql.SQL(str(lock_timeout))),
        sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(qualified),
        sql.SQL("NOTIFY {}").format(sql.Identifier(channel)),
    ]
    insert = sql.SQL(
        "INSERT INTO {table} (originator_id, originator_version, topic, state)"
        " SELECT * FROM unnest({ids}, %b::bigint[], %b::text[], %b::bytea[]) RETURNING notification_id"
    ).format(table=qualified, ids=sql.SQL(f"%b::{id_type}[]"))

    def insert_events(stored: Sequence[StoredEvent]) -> list[int]:
        if not stored:
            return []
        with datastore.get_connection() as conn, conn.pipeline(), conn.transaction(), conn.cursor() as cursor:
            for statement in statements:  # pipelined with the insert: one round trip, and one for the commit
                cursor.execute(statement)
            cursor.execute(
                insert,
                (
                    [e.originator_id for e in stored],
                    [e.originator_version for e in stored],
                    [e.topic for e in stored],
                    [e.state for e in stored],
                ),
            )
            return [row["notification_id"] for row in cursor.fetchall()]

    return insert_events


# --------------------------------------------------------------------------- the consumer

Action = Literal["process", "redelivered", "duplicate", "conflict"]


@dataclass
class _Item:
    record: Any  # kafka ConsumerRecord
    parsed: InboundMessage | Rejection
    fingerprint: str
    key: str = ""
    action: Action = "process"
    outcome: str | None = None
    error_code: str | None = None
    position: int | None = None
    dead_letter: tuple[str, str] | None = None  # (code, detail) to send
    future: Any = None  # the dead letter's send future

    @property
    def coordinates(self) -> tuple[str, int, int]:
        return (self.record.topic, self.record.partition, self.record.offset)

    @property
    def message_id(self) -> str | None:
        if isinstance(self.parsed, Rejection):
            return self.parsed.message_id
        return self.parsed.id

    @property
    def event_type(self) -> str | None:
        if isinstance(self.parsed, Rejection):
            return self.parsed.event_type
        return self.parsed.type

    def coordinate_key(self) -> str:
        topic, partition, offset = self.coordinates
        return f"kafka:{topic}:{partition}:{offset}:{self.fingerprint[:16]}"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: IngestConsumer) -> None:
        self._owner = owner

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        log.info("partitions revoked", partitions=_names(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        partitions = sorted(assigned)
        self._owner.assignments.append(frozenset(partitions))
        log.info("partitions assigned", partitions=_names(partitions))

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        log.warning("partitions lost", partitions=_names(lost))


def _names(partitions: Iterable[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions)]


class IngestConsumer:
    """Consumes the inbound topic into the partner programme; see the module docstring for the guarantees.

    ``consumer`` is a ``KafkaConsumer`` built with ``group_id``, ``enable_auto_commit=False`` and
    ``auto_offset_reset='earliest'`` and not yet subscribed; ``producer`` a ``KafkaProducer`` (``acks='all'``)
    for the dead letters; ``inbox`` a :class:`PostgresInbox` on the event store's database.
    """

    def __init__(
        self,
        program: PartnerProgram,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        inbox: PostgresInbox,
        topics: InboundTopicNames | None = None,
        *,
        max_batch: int = 500,
        backoff: Backoff | None = None,
        max_unexpected_attempts: int = 3,
        ack_timeout_s: float = 30.0,
        stop_event: threading.Event | None = None,
        progress_every_s: float = 10.0,
    ) -> None:
        self.program = program
        self.consumer = consumer
        self.producer = producer
        self.inbox = inbox
        self.topics = topics or InboundTopics()
        self.max_batch = max_batch
        self.backoff = backoff or Backoff()
        self.max_unexpected_attempts = max_unexpected_attempts
        self.ack_timeout_s = ack_timeout_s
        self.stop_event = stop_event or threading.Event()
        self.progress_every_s = progress_every_s
        self.stats = IngestStats()
        self.assignments: list[frozenset[TopicPartition]] = []
        self._batch_stats = IngestStats()
        self._load_events = postgres_event_loader(program)
        self._aggregates = InboundAggregates()
        self._insert_events = postgres_event_inserter(program)
        self.consumer.subscribe([self.topics.sales], listener=_Rebalance(self))

    # ---- loop ------------------------------------------------------------------------------------
    def run_forever(self, stop_event: threading.Event | None = None, *, poll_timeout_ms: int = 1000) -> IngestStats:
        """Poll and ingest until ``stop_event`` is set; the batch in hand is finished (or safely abandoned)."""
        if stop_event is not None:
            self.stop_event = stop_event
        log.info("ingest started", topic=self.topics.sales, deadletter=self.topics.deadletter)
        started = last_report = time.monotonic()
        reported = 0
        frozen = False
        while not self.stop_event.is_set():
            self.run_once(poll_timeout_ms)
            if not frozen and self.stats.batches:
                # Warmed up (modules, the programme, the first aggregates): move what is alive now out of the
                # cyclic GC's reach, so that its full collections do not scan it again and again.
                gc.freeze()
                frozen = True
            now = time.monotonic()
            if now - last_report >= self.progress_every_s:
                rate = (self.stats.handled - reported) / (now - last_report)
                log.info("ingest progress", rate_per_s=round(rate, 1), **self.stats.as_dict())
                last_report, reported = now, self.stats.handled
        log.info("ingest stopped", seconds=round(time.monotonic() - started, 1), **self.stats.as_dict())
        return self.stats

    def run_once(self, timeout_ms: int = 1000) -> IngestStats:
        """Poll one batch and ingest it. Returns what this batch did (``self.stats`` keeps the totals)."""
        self._batch_stats = stats = IngestStats()
        try:
            batch = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_batch)
        except KafkaError as exc:
            log.warning("poll failed; retrying", error=repr(exc))
            stats.retries += 1
            self._sleep(self.backoff.delay(1))
            self._account(stats)
            return stats
        if not batch:
            self._account(stats)
            return stats
        stats.batches = 1
        items = [self._prepare(record) for tp in sorted(batch) for record in batch[tp]]
        stats.polled = len(items)
        try:
            self._ingest(items)
        except _Abandon:
            stats.abandoned_batches += 1
            log.warning("stop requested while waiting for infrastructure: batch left uncommitted", size=len(items))
        self._account(stats)
        return stats

    def _account(self, batch: IngestStats) -> None:
        """Add a batch to the totals by swapping in a new object: other threads may read ``stats`` meanwhile."""
        totals = IngestStats()
        totals.add(self.stats)
        totals.add(batch)
        self.stats = totals

    def close(self) -> None:
        """Close the Kafka clients (offsets are only ever committed explicitly) and the inbox connection."""
        try:
            self.producer.flush(timeout=self.ack_timeout_s)
        except KafkaError as exc:  # pragma: no cover - best effort on the way out
            log.warning("producer flush failed on close", error=repr(exc))
        self.consumer.close(autocommit=False)
        self.producer.close(timeout=self.ack_timeout_s)
        self.inbox.close()

    # ---- one batch --------------------------------------------------------------------------------
    def _prepare(self, record: Any) -> _Item:
        parsed = parse_inbound(record.value)
        if isinstance(parsed, Rejection):
            fingerprint = parsed.fingerprint or hashlib.sha256(record.value or b"").hexdigest()
        else:
            fingerprint = fingerprint_of(parsed)
        return _Item(record=record, parsed=parsed, fingerprint=fingerprint)

    def _ingest(self, items: list[_Item]) -> None:
        self._retry("inbox claim", lambda: self._claim(items))
        to_apply = [item for item in items if self._handle(item)]
        self._apply_batch(to_apply)
        self._settle_dead_letters(items)
        completions = [
            _Completion(item.key, *item.coordinates, item.outcome, item.error_code, item.position)
            for item in items
            if item.outcome is not None
        ]
        self._retry("inbox outcome", lambda: self.inbox.complete(completions))
        self._commit(items)

    def _claim(self, items: list[_Item]) -> None:
        """Decide, for each record, whether it is new, a redelivery, a duplicate or a conflicting re-use of an id."""
        keys: dict[str, _Item] = {}
        first_key = []
        for item in items:
            message_id = item.message_id
            key = message_id if message_id is not None else item.coordinate_key()
            first_key.append(key)
            keys.setdefault(key, item)
        rows = self.inbox.claim(
            [InboxRow(k, *i.coordinates, i.fingerprint, PENDING) for k, i in keys.items()],
            [i.event_type for i in keys.values()],
        )
        decisions: list[tuple[str, Action]] = []
        conflicts: dict[str, _Item] = {}
        for item, key in zip(items, first_key, strict=True):
            row = rows[key]
            if (row.topic, row.partition, row.offset, row.fingerprint) == (*item.coordinates, item.fingerprint):
                decisions.append((key, "process" if row.outcome == PENDING else "redelivered"))
            elif row.fingerprint == item.fingerprint:
                decisions.append((key, "duplicate"))
            else:
                own = item.coordinate_key()
                conflicts[own] = item
                decisions.append((own, "conflict"))
        if conflicts:
            own_rows = self.inbox.claim(
                [InboxRow(k, *i.coordinates, i.fingerprint, PENDING) for k, i in conflicts.items()],
                [i.event_type for i in conflicts.values()],
            )
            decisions = [
                (key, "redelivered" if action == "conflict" and own_rows[key].outcome != PENDING else action)
                for key, action in decisions
            ]
        for item, (key, action) in zip(items, decisions, strict=True):
            item.key, item.action = key, action

    def _handle(self, item: _Item) -> bool:
        """Deal with a record that needs no command (redelivery, duplicate, rejection); True if it needs one."""
        stats = self._batch_stats
        if item.action == "redelivered":
            stats.redelivered += 1
            log.debug("redelivered record already handled", key=item.key, **_where(item))
            return False
        if item.action == "duplicate":
            stats.duplicates += 1
            log.debug("duplicate message id with the same data: skipped", message_id=item.message_id, **_where(item))
            return False
        if isinstance(item.parsed, Rejection):
            self._dead_letter(item, item.parsed.code, item.parsed.detail)
            return False
        if item.action == "conflict":
            self._dead_letter(
                item,
                "duplicate_message_id",
                f"message id {item.parsed.id!r} was already used for a different {item.parsed.type} message",
            )
            return False
        return True

    def _apply_batch(self, items: list[_Item]) -> None:
        """Run the commands of ``items`` in one store transaction (``PartnerProgram.record_inbound_batch``).

        Infrastructure failures are retried (never skipped); a command that keeps failing unexpectedly is
        dead-lettered as ``processing_error`` and the batch runs again without it; domain refusals are
        dead-lettered. Nothing of a failed attempt is in the store: the batch is one transaction.
        """
        remaining = list(items)
        commands: list[InboundCommand] = []
        for item in remaining:
            assert not isinstance(item.parsed, Rejection)  # _handle dead-lettered the rejections
            commands.append(_command(item.parsed))
        infra_attempts = 0
        unexpected: Counter[int] = Counter()  # id(item) -> attempts
        while remaining:
            try:
                outcomes = self.program.record_inbound_batch(
                    commands,
                    load_events=self._load_events,
                    aggregates=self._aggregates,
                    insert_events=self._insert_events,
                )
            except InboundBatchError as exc:
                item = remaining[exc.index]
                if isinstance(exc.cause, INFRASTRUCTURE_ERRORS):
                    infra_attempts += 1
                    self._wait_after_failure(
                        "store", exc.cause, infra_attempts, message_id=item.message_id, **_where(item)
                    )
                    continue
                unexpected[id(item)] += 1
                if unexpected[id(item)] >= self.max_unexpected_attempts:
                    log.error("message keeps failing unexpectedly: dead-lettered", exc_info=exc.cause, **_where(item))
                    del remaining[exc.index], commands[exc.index]
                    self._dead_letter(item, "processing_error", f"{type(exc.cause).__name__}: {exc.cause}")
                    continue
                self._wait_after_failure(
                    "store",
                    exc.cause,
                    unexpected[id(item)],
                    unexpected=True,
                    message_id=item.message_id,
                    **_where(item),
                )
                continue
            except INFRASTRUCTURE_ERRORS as exc:  # loading the batch's aggregates, or its one save
                infra_attempts += 1
                self._wait_after_failure("store", exc, infra_attempts, batch=len(remaining))
                continue
            for item, outcome in zip(remaining, outcomes, strict=True):
                self._settle_outcome(item, outcome)
            return

    def _settle_outcome(self, item: _Item, outcome: InboundOutcome) -> None:
        stats = self._batch_stats
        if isinstance(outcome, DomainError):
            self._dead_letter(item, _domain_code(outcome), str(outcome))
            return
        item.position = outcome.position
        if outcome.duplicate:
            item.outcome = DUPLICATE
            stats.duplicates += 1
            log.debug("duplicate of a recorded fact: no-op", message_id=item.message_id, **_where(item))
        else:
            item.outcome = RECORDED
            stats.recorded += 1

    # ---- dead letters ----------------------------------------------------------------------------
    def _dead_letter(self, item: _Item, code: str, detail: str) -> None:
        record = item.record
        item.outcome, item.error_code, item.dead_letter = DEAD_LETTERED, code, (code, detail)
        self._batch_stats.dead_lettered[code] += 1
        log.info(
            "dead letter",
            code=code,
            detail=detail,
            message_id=item.message_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        self._retry("dead-letter send", functools.partial(self._send_dead_letter, item))

    def _send_dead_letter(self, item: _Item) -> None:
        assert item.dead_letter is not None
        code, detail = item.dead_letter
        record = item.record
        headers = [(k, v) for k, v in (record.headers or []) if k not in _OWN_HEADERS]
        headers += [
            (H_CODE, code.encode()),
            (H_DETAIL, _truncate_utf8(detail, _MAX_DETAIL_BYTES)),
            (H_TOPIC, record.topic.encode()),
            (H_PARTITION, str(record.partition).encode()),
            (H_OFFSET, str(record.offset).encode()),
        ]
        value = record.value
        if value is None and record.key is None:
            value = b""  # Kafka needs a key or a value; an empty record stays empty
        item.future = self.producer.send(self.topics.deadletter, value=value, key=record.key, headers=headers)

    def _settle_dead_letters(self, items: list[_Item]) -> None:
        """Wait for the broker's ack of each dead letter; resend those that failed (never give up)."""
        for item in items:
            if item.future is None:
                continue
            attempts = 0
            while True:
                try:
                    item.future.get(timeout=self.ack_timeout_s)
                    break
                except INFRASTRUCTURE_ERRORS as exc:
                    attempts += 1
                    self._wait_after_failure("dead-letter ack", exc, attempts, offset=item.record.offset)
                    self._retry("dead-letter send", functools.partial(self._send_dead_letter, item))

    # ---- offsets ---------------------------------------------------------------------------------
    def _commit(self, handled: list[_Item]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for item in handled:
            record = item.record
            epoch = record.leader_epoch if record.leader_epoch is not None else -1
            offsets[TopicPartition(record.topic, record.partition)] = OffsetAndMetadata(record.offset + 1, "", epoch)
        if not offsets:
            return
        attempts = 0
        while True:
            try:
                self.consumer.commit(offsets=offsets)
                self._batch_stats.commits += 1
                return
            except CommitFailedError as exc:
                # The group rebalanced: another member owns (some of) these partitions now. The inbox already
                # has every outcome, so the redelivery there is skipped as "redelivered".
                self._batch_stats.commit_failures += 1
                log.warning("offset commit refused after a rebalance; records will be redelivered", error=str(exc))
                return
            except KafkaError as exc:
                attempts += 1
                self._wait_after_failure("offset commit", exc, attempts)

    # ---- retrying --------------------------------------------------------------------------------
    def _retry(self, what: str, step: Callable[[], T]) -> T:
        attempts = 0
        while True:
            try:
                return step()
            except INFRASTRUCTURE_ERRORS as exc:
                attempts += 1
                self._wait_after_failure(what, exc, attempts)

    def _wait_after_failure(
        self, what: str, exc: BaseException, attempt: int, *, unexpected: bool = False, **context: Any
    ) -> None:
        self._batch_stats.retries += 1
        delay = self.backoff.delay(attempt)
        log.warning(
            f"{'unexpected' if unexpected else 'infrastructure'} failure; retrying the same step",
            step=what,
            attempt=attempt,
            retry_in_s=round(delay, 3),
            error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
            **context,
        )
        if self._sleep(delay):
            raise _Abandon

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless a stop is requested; True when it is."""
        return self.stop_event.wait(seconds)


def _command(message: InboundMessage) -> InboundCommand:
    """The application command of a valid inbound message (source = CloudEvents source, message_id = its id)."""
    if isinstance(message, SaleRecordedEvent):
        sale = message.data
        return InboundCommand(
            "record_sale",
            {
                "sale_id": sale.sale_id,
                "partner_id": sale.partner_id,
                "registration_id": sale.registration_id,
                "customer": sale.customer.model_dump(),
                "lines": [line.model_dump() for line in sale.lines],
                "occurred_at": sale.occurred_at,
                "source": message.source,
                "message_id": message.id,
            },
        )
    if isinstance(message, SaleRefundedEvent):
        refund = message.data
        return InboundCommand(
            "refund_sale",
            {
                "sale_id": refund.sale_id,
                "refund_id": refund.refund_id,
                "amount_minor": refund.amount_minor,
                "currency": refund.currency,
                "occurred_at": refund.occurred_at,
                "reason": refund.reason,
                "source": message.source,
                "message_id": message.id,
            },
        )
    if isinstance(message, OpportunityOpenedEvent):
        opportunity = message.data
        return InboundCommand(
            "open_opportunity",
            {
                "opportunity_id": opportunity.opportunity_id,
                "owner": opportunity.owner,
                "customer": opportunity.customer.model_dump(),
                "estimated_value_minor": opportunity.estimated_value_minor,
                "currency": opportunity.currency,
                "opened_at": opportunity.opened_at,
                "source": message.source,
                "message_id": message.id,
            },
        )
    raise TypeError(f"no handler for {type(message).__name__}")  # pragma: no cover - the union is closed


def _where(item: _Item) -> dict[str, Any]:
    record = item.record
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def _domain_code(exc: DomainError) -> str:
    if type(exc) is NotFound and "sale_id" in exc.details:
        return "unknown_sale"
    return exc.code


def _truncate_utf8(text: str, limit: int) -> bytes:
    data = text.encode()
    if len(data) <= limit:
        return data
    return data[: limit - 3].decode(errors="ignore").encode() + "…".encode()
