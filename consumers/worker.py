"""``prm worker``: faust workers that drive the projections from Kafka into PostgreSQL read models.

Topology
--------
One faust app (consumer group ``app_id``) with two agents: one on
``prm.events.v1`` (6 partitions, shared by the group's workers), one on
``prm.program.v1`` (1 partition). Messages are raw bytes parsed with
:meth:`EventEnvelope.from_json`; no faust Records, no RocksDB, no tables, no web
server; faust never declares topics (``prm kafka-ensure-topics`` does).

Batches and checkpoints
-----------------------
An agent collects events into batches (until one partition has ``batch_size``
events, or ``batch_within`` seconds), groups them by partition, and, in threads
of a small pool (one PostgreSQL connection per thread), for each projection:
takes an advisory lock, builds a :class:`UnitOfWork`, applies the events in
offset order, and commits the documents together with the checkpoint of each
source ``kafka:<topic>:<partition>`` (highest ``sequence`` applied, highest
offset seen). A partition-local projection gets one unit per partition, the
partitions in parallel; a shared one gets one unit for the whole batch (all its
partitions, one after the other), so its shared documents are read and
committed once per batch. Only when every unit is committed are the events
acked to faust, which commits the offsets.

* Working copies across batches (``keep_docs``, default 10,000 per lock scope):
  the documents a batch read and wrote stay in memory for the next batch of the
  same scope, as a bounded LRU, with the keys found missing. After taking the lock, the next batch asks the
  store which documents *other* writers (other partitions' scopes, other
  workers, a reset) changed since, from the revision stamped on every commit
  (``PostgresProjectionStore.changes_since``: one indexed query of keys), and
  drops those; everything else is used as it is, without reading and copying
  it again. A delete or reset by another writer drops everything. A batch that
  fails drops its scope's copies. With one conflicts writer in the group, its
  shared index documents are then never read again; with several, each reads
  what the others changed. Past ``max(1,000, copies held)`` changed keys the
  scope reads afresh instead (a rarely used scope, such as the programme
  partition's). Memory: at most ``keep_docs`` documents per scope, for every
  scope this process has held (a projection and partition, or a projection).
  Every writer must stamp revisions: a worker of a release without them would
  write unseen, so stop all of those before starting these (the first start
  adds the ``revision`` column and its index to an existing ``rm_docs``).
* A redelivered event (crash, rebalance, re-published duplicate) has a sequence
  at or below the checkpoint and is skipped; the offset still advances.
* The advisory lock serialises writers of the same documents across workers and
  threads, so the two owners of a partition during a rebalance can never
  interleave their read-modify-write cycles (the unit of work reads the
  checkpoint after taking the lock). Its scope is the partition's source for a
  projection declared ``partition_local`` (each document written by the events
  of one partition: the dashboards, the ledger; see ``api/cli_worker.py``) and
  the whole projection otherwise (safe default: the channel conflicts share
  index documents across partners, so their batches are serialised group-wide).
* The checkpoints in PostgreSQL, not Kafka's committed offsets, say what has
  been applied. When partitions are assigned (faust's ``on_rebalance_complete``,
  just before it seeks to the committed offsets) the worker commits, for each
  assigned partition, the lowest ``offset + 1`` of its checkpoints (0 when a
  projection has none, so a newly added projection rebuilds itself). So faust
  resumes exactly where the read models stand, even when faust had committed
  further (it acks skipped stale-generation messages after a rebalance).
  (aiokafka's ``seek_to_committed`` ignores a committed offset of 0, so offset 0
  is also sought explicitly.)
* A batch that would leave a hole (its first offset above ``checkpoint offset +
  1``) is refused: the worker exits and the next assignment rewinds. This
  assumes offsets without gaps (a non-transactional relay, no compaction).

Failures: a PostgreSQL or Kafka connection error is retried with backoff, for
ever, without acking; anything else (an unparsable message, a reducer raising)
is a bug: the worker logs it and exits at once with status 70 without acking,
rather than skipping an event and corrupting a read model.

Ordering between the two topics: see :mod:`consumers.program_gate`.

faust traps met (faust-streaming 0.15.3, aiokafka 0.14.0)
---------------------------------------------------------
* ``Stream.take()`` acks the buffered events in a ``finally``: when the agent
  body raises, or is cancelled at shutdown, the abandoned generator is closed
  and acks events that were never applied. The agents here iterate a
  ``noack()`` stream, batch it themselves and ack only after the commit.
* After a rebalance, faust skips *and acks* messages of the previous
  generation still in its buffers, so its committed offset can pass the
  applied one: hence the rewind above.
* One fetch loop serves every topic; a full stream buffer blocks delivery to
  the other agents. With a gate that only waits, the partner agent waiting for
  a programme event that faust no longer delivers stalls for ever (reproduced:
  a backlog of 27k events plus a plan version published meanwhile). See the gate.
* ``stream_wait_empty`` (default on) makes rebalances and SIGTERM wait until
  every message read is acked; with a batch stuck it never returns. Off here.
* aiokafka's ``seek_to_committed`` does not seek to a committed offset of 0.
* ``broker_session_timeout`` defaults to 60 s: a killed worker's partitions
  stay idle that long. Defaults here: 10 s session, 1 s heartbeat.
* faust creates ``datadir`` (default ``<id>-data`` in the working directory,
  without parents) even with memory tables; it is set under ``.prm/faust``.
* ``faust.Worker`` draws a spinner on stdout even when ``quiet``; removed.
* faust's fetch loop (``Consumer._drain_messages``) awaits
  ``wait_first(callback(message), suspend_flow.wait())`` for *every* message:
  four tasks and an ``asyncio.wait`` each, then an ``Event``, a channel put and
  a step of the stream iterator. About 100 µs of CPU per message on a shared
  2-vCPU EPYC, in the event-loop thread, under the same GIL as the projections:
  the handler with a no-op projection does about 6k events/s under faust and
  about 40k under a plain aiokafka ``getmany`` loop (``bench/faust_tax.py``,
  ``bench/RESULTS-projections.md`` section 3). No setting removes it.

Lag
---
Every ``lag_interval`` seconds the worker logs, per partition, the end offset,
faust's committed offset and the offsets applied in the read models, and per
projection the messages behind and the highest sequence applied.
:func:`projection_lag` computes the per-projection part from any projection
store, for the API.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, cast

import faust
import psycopg
import structlog
from aiokafka.errors import KafkaError

from consumers.program_gate import KafkaProbe, ProgramGate, Record, kafka_source
from consumers.topics import TopicNames
from projections.envelope import EventEnvelope
from projections.port import Checkpoint, Doc, DocKey, Projection, ProjectionStore
from projections.postgres import PostgresProjectionStore
from projections.unit_of_work import UnitOfWork

log = structlog.get_logger("prm.worker")

EXIT_FATAL = 70
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    KafkaError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True)
class ProjectionSpec:
    """A projection and how widely its documents are shared.

    ``partition_local``: every document is written by the events of one stream
    only (one partner, or ``direct``, or the programme), so partitions may be
    applied concurrently; otherwise one batch at a time, for the whole group.
    """

    projection: Projection
    partition_local: bool = False

    @property
    def name(self) -> str:
        return self.projection.name


@dataclass(frozen=True)
class WorkerConfig:
    app_id: str = "prm-projections"
    bootstrap: str = "127.0.0.1:19092"
    conninfo: str = ""
    schema: str = "public"
    topic_prefix: str = ""
    batch_size: int = 1000
    batch_within: float = 0.2
    threads: int = 4
    session_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    rebalance_timeout: float = 30.0
    gate_patience: float = 0.5
    lag_interval: float = 30.0
    shutdown_grace: float = 10.0
    # Working copies each lock scope keeps across batches (checked against other writers' revisions); 0: none.
    keep_docs: int = 10_000
    datadir: Path = Path(".prm/faust")
    # Further faust settings (name, value), over the ones above: for measurements (bench/faust_tax.py).
    faust_options: tuple[tuple[str, Any], ...] = ()

    @property
    def events_topic(self) -> str:
        return TopicNames(self.topic_prefix).events

    @property
    def program_topic(self) -> str:
        return TopicNames(self.topic_prefix).program


class OffsetGap(RuntimeError):
    """A batch starts beyond the checkpoint: applying it would skip events."""


def fatal(event: str, **details: Any) -> NoReturn:
    """Log and exit at once: nothing is acked, nothing is skipped; the next assignment resumes from PostgreSQL."""
    log.critical(event, **details)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_FATAL)


# --------------------------------------------------------------------------- #
# Thread side: PostgreSQL                                                      #
# --------------------------------------------------------------------------- #
Parsed = tuple[int, EventEnvelope]
"""A record's offset and its envelope."""


@dataclass
class Applied:
    sources: list[str]
    events: int
    applied: dict[str, int] = field(default_factory=dict)


@dataclass
class _Kept:
    """A lock scope's working copies between batches (``ReadModelWriter._unit``)."""

    revision: int
    """The projection's revision counter when the batch that kept them started."""
    own: list[int]
    """The revisions of that batch's commit (its documents are the copies themselves)."""
    docs: OrderedDict[DocKey, Doc]
    absent: set[DocKey]
    """Keys that batch knew not to exist."""
    known: dict[str, set[str]]
    """Every key of the projection's ``sparse_kinds``."""


class ReadModelWriter:
    """Applies Kafka records to the projections' PostgreSQL store; called from worker threads."""

    def __init__(self, conninfo: str, schema: str, specs: Sequence[ProjectionSpec], keep_docs: int = 0) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.specs = list(specs)
        # Working copies kept across batches, per lock scope (see ``_unit``); 0: read every batch afresh.
        self.keep_docs = keep_docs
        self._kept: dict[str, _Kept] = {}
        self.reuse = {"kept": 0, "changed": 0, "dropped": 0}
        """Counts: batches that started from kept copies; keys other writers changed meanwhile; caches dropped."""
        # Partition-local projections first (the programme partition applies every projection in this order).
        self.apply_order = sorted(self.specs, key=lambda spec: not spec.partition_local)
        self._local = threading.local()
        # Seconds per projection spent taking its advisory lock and holding it (apply + commit).
        self.lock_wait_s: dict[str, float] = dict.fromkeys((s.name for s in self.specs), 0.0)
        self.locked_s: dict[str, float] = dict.fromkeys((s.name for s in self.specs), 0.0)
        self._times = threading.Lock()

    def store(self) -> PostgresProjectionStore:
        store: PostgresProjectionStore | None = getattr(self._local, "store", None)
        if store is None:
            store = PostgresProjectionStore(self.conninfo, self.schema)
            self._local.store = store
        return store

    def discard_store(self) -> None:
        store: PostgresProjectionStore | None = getattr(self._local, "store", None)
        self._local.store = None
        if store is not None:
            with suppress(psycopg.Error):
                store.close()

    @contextmanager
    def locked(self, scope: str) -> Iterator[PostgresProjectionStore]:
        """Hold the session advisory lock ``scope`` on this thread's store connection."""
        store = self.store()
        conn = store.conn
        key = f"prm-read-models:{self.schema}:{scope}"
        started = time.monotonic()
        while True:
            try:
                with conn.transaction():
                    conn.execute("SET LOCAL lock_timeout = '5s'")
                    conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
                break
            except psycopg.errors.LockNotAvailable:
                log.warning("read_model.lock_wait", scope=scope, waited_s=round(time.monotonic() - started, 1))
        try:
            yield store
        finally:
            if not conn.closed:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))

    def create_tables(self) -> None:
        try:
            with self.locked("ddl") as store:
                store.create_tables()
        except psycopg.Error:
            self.discard_store()
            raise

    def apply(self, source: str, records: Sequence[Record]) -> Applied:
        """Apply one partition's records (in order) to every projection; commit each with its checkpoint."""
        return self.apply_parsed({source: parse_records(records)}, self.apply_order)

    def apply_parsed(self, parts: Mapping[str, Sequence[Parsed]], specs: Sequence[ProjectionSpec]) -> Applied:
        """Apply parsed records of one or more partitions to ``specs``: per projection, one lock, one unit, one commit.

        A partition-local projection takes one partition at a time (its lock is the
        partition's); a shared one may take a whole batch of partitions under its
        group-wide lock, so its shared documents are read and written once per batch.
        """
        try:
            return self._apply(parts, specs)
        except psycopg.Error:
            self.discard_store()
            raise

    def _apply(self, parts: Mapping[str, Sequence[Parsed]], specs: Sequence[ProjectionSpec]) -> Applied:
        result = Applied(sources=sorted(parts), events=sum(len(envelopes) for envelopes in parts.values()))
        for spec in specs:
            if spec.partition_local:
                if len(parts) != 1:
                    raise ValueError(f"{spec.name} is partition-local: apply it one partition at a time")
                scope = f"{spec.name}:{next(iter(parts))}"
            else:
                scope = spec.name
            asked = time.monotonic()
            with self.locked(scope) as store:
                got = time.monotonic()
                unit, synced = self._unit(store, spec, scope)  # reads the checkpoints after the lock
                for source, envelopes in parts.items():
                    # The documents the projection names for these events, read in one query (after the lock).
                    unit.prefetch_events(spec.projection, (envelope for _, envelope in envelopes), source)
                applied = 0
                for source, envelopes in parts.items():
                    applied += _apply_source(unit, spec, source, envelopes, unit.checkpoint(source))
                unit.commit()
                if synced is not None:
                    self._keep(scope, unit, synced, store.last_revision)
                result.applied[spec.name] = applied
            done = time.monotonic()
            with self._times:
                self.lock_wait_s[spec.name] += got - asked
                self.locked_s[spec.name] += done - got
        return result

    def _unit(self, store: PostgresProjectionStore, spec: ProjectionSpec, scope: str) -> tuple[UnitOfWork, int | None]:
        """A unit of work for one batch under the lock ``scope``, and the revision it was synced at.

        With ``keep_docs``, the unit starts from the working copies the previous batch of the
        same scope kept, less every document another writer (another partition's scope, another
        worker, a reset) changed since: ``changes_since`` names them from the revisions the
        store stamps on each commit. The copies are taken out while the batch runs and put
        back only after its commit (``_keep``), so a batch that fails leaves nothing behind.
        The keys of the projection's ``sparse_kinds`` (if it names any) are read once, then
        kept up to date the same way.
        """
        projection = spec.name
        if self.keep_docs <= 0:
            return UnitOfWork(store, projection), None
        with self._times:
            kept = self._kept.pop(scope, None)
        unit = UnitOfWork(store, projection, exclusive=True, keep=self.keep_docs)
        changes = store.changes_since(
            projection,
            kept.revision if kept else None,
            kept.own if kept else (),
            # Past this many changed keys, reading afresh is cheaper than listing them.
            limit=max(1_000, len(kept.docs) + len(kept.absent)) if kept else None,
        )
        if kept is not None and changes.keys is not None:
            for item in changes.keys:
                kept.docs.pop(item, None)
                kept.absent.discard(item)
                if item[0] in kept.known:
                    kept.known[item[0]].add(item[1])
            with self._times:
                self.reuse["kept"] += 1
                self.reuse["changed"] += len(changes.keys)
        else:
            if kept is not None:
                with self._times:
                    self.reuse["dropped"] += 1
            sparse: Iterable[str] = getattr(spec.projection, "sparse_kinds", ())
            kept = _Kept(0, [], OrderedDict(), set(), {kind: store.keys(projection, kind) for kind in sparse})
        unit.adopt(kept.docs, kept.absent, kept.known)
        return unit, changes.revision

    def _keep(self, scope: str, unit: UnitOfWork, synced: int, committed: int | None) -> None:
        own = [committed] if committed is not None else []
        with self._times:
            self._kept[scope] = _Kept(synced, own, unit.kept, unit.absent, unit.known)

    def timings(self) -> dict[str, dict[str, float]]:
        """Per projection: seconds spent waiting for its lock and holding it, since the start."""
        with self._times:
            return {
                name: {"lock_wait_s": round(self.lock_wait_s[name], 3), "locked_s": round(self.locked_s[name], 3)}
                for name in self.locked_s
            }

    def next_offsets(self, sources: Iterable[str]) -> dict[str, int]:
        """For each source, the first offset that some projection has not applied (0 if one never saw it)."""
        wanted = list(sources)
        try:
            store = self.store()
            marks = {spec.name: store.checkpoints(spec.name) for spec in self.specs}
        except psycopg.Error:
            self.discard_store()
            raise
        out: dict[str, int] = {}
        for source in wanted:
            nexts = []
            for spec in self.specs:
                mark = marks[spec.name].get(source)
                nexts.append(mark.offset + 1 if mark is not None and mark.offset is not None else 0)
            out[source] = min(nexts) if nexts else 0
        return out

    def checkpoints(self) -> dict[str, dict[str, tuple[int, int | None]]]:
        try:
            store = self.store()
            return {
                spec.name: {s: (m.sequence, m.offset) for s, m in store.checkpoints(spec.name).items()}
                for spec in self.specs
            }
        except psycopg.Error:
            self.discard_store()
            raise


def _apply_source(
    unit: UnitOfWork, spec: ProjectionSpec, source: str, envelopes: Sequence[Parsed], previous: Checkpoint | None
) -> int:
    """Apply one partition's events to ``unit`` in offset order and move its checkpoint; returns how many applied."""
    sequence = previous.sequence if previous is not None else 0
    known = previous.offset if previous is not None and previous.offset is not None else None
    applied = 0
    for offset, envelope in envelopes:
        if known is not None and offset > known + 1:
            raise OffsetGap(
                f"{spec.name}: {source} offset {offset} follows checkpoint offset {known}: "
                f"{offset - known - 1} message(s) would be skipped"
            )
        if unit.apply(spec.projection, envelope, source, offset):
            applied += 1
            sequence = envelope.sequence
        known = offset if known is None else max(known, offset)
    if known is not None:
        unit.advance(source, sequence, known)
    return applied


def parse_records(records: Sequence[Record]) -> list[Parsed]:
    """``(offset, envelope)`` of each record; an unparsable one raises ``ValueError`` (a bug: the worker exits)."""
    return [(record.offset, _parse(record)) for record in records]


def _parse(record: Record) -> EventEnvelope:
    try:
        return EventEnvelope.from_json(record.value)
    except Exception as exc:
        raise ValueError(
            f"unparsable event at {record.topic}[{record.partition}]@{record.offset}: {exc!r}; "
            f"value starts {record.value[:120]!r}"
        ) from exc


# --------------------------------------------------------------------------- #
# Lag                                                                          #
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class SourceLag:
    source: str
    sequence: int | None
    offset: int | None
    end_offset: int | None

    @property
    def behind(self) -> int | None:
        """Messages of this partition not yet applied (None without an end offset)."""
        if self.end_offset is None:
            return None
        return max(0, self.end_offset - (self.offset + 1 if self.offset is not None else 0))


@dataclass(frozen=True)
class ProjectionLag:
    projection: str
    sources: dict[str, SourceLag]
    applied_sequence: int
    max_position: int | None

    @property
    def messages_behind(self) -> int | None:
        counts = [s.behind for s in self.sources.values()]
        if not counts or any(c is None for c in counts):
            return None
        return sum(c for c in counts if c is not None)

    @property
    def sequence_behind(self) -> int | None:
        """Event-store positions between the highest applied and ``max_position`` (0: the last event is in)."""
        if self.max_position is None:
            return None
        return max(0, self.max_position - self.applied_sequence)


def projection_lag(
    store: ProjectionStore,
    projections: Iterable[str],
    *,
    end_offsets: Mapping[str, int] | None = None,
    max_position: int | None = None,
) -> dict[str, ProjectionLag]:
    """Lag of each projection from its checkpoints.

    ``end_offsets`` maps sources (``kafka:<topic>:<partition>``, see
    :func:`kafka_source`) to their end offsets: every listed source is
    reported, even one the projection has never seen. ``max_position`` is the
    event store's last position, when the caller knows it. ``applied_sequence``
    is the highest sequence applied from any source: with ``max_position`` it
    says whether the last recorded event has reached the projection; the
    per-source message counts say how much is still queued.
    """
    ends = dict(end_offsets or {})
    out: dict[str, ProjectionLag] = {}
    for name in projections:
        marks = store.checkpoints(name)
        sources: dict[str, SourceLag] = {}
        for source in sorted(set(marks) | set(ends)):
            mark = marks.get(source)
            sources[source] = SourceLag(
                source=source,
                sequence=mark.sequence if mark is not None else None,
                offset=mark.offset if mark is not None else None,
                end_offset=ends.get(source),
            )
        applied = max((m.sequence for m in marks.values()), default=0)
        out[name] = ProjectionLag(projection=name, sources=sources, applied_sequence=applied, max_position=max_position)
    return out


# --------------------------------------------------------------------------- #
# Async side: faust                                                            #
# --------------------------------------------------------------------------- #
class _BatchPipeline:
    """Batches a faust stream, handles batches one at a time, acks after.

    A batch is submitted when one partition has ``size`` events in it, when it
    holds ``size * MAX_PARTITIONS_PER_BATCH`` events, or ``within`` seconds
    after its first event. faust delivers the partitions round-robin, so
    counting ``size`` per partition (not per batch) keeps every partition's
    unit of work near ``size`` events: with 6 partitions, a 1,000-event batch
    counted in total left units of about 170 events, each paying the lock,
    checkpoint and commit round trips and reading its documents afresh.

    Not ``Stream.take``: that acks in a ``finally`` even when the batch was not applied.
    """

    MAX_PARTITIONS_PER_BATCH = 8

    def __init__(self, stream: Any, handle: Any, config: WorkerConfig, name: str) -> None:
        self.stream = stream.noack()
        self.handle = handle
        self.size = config.batch_size
        self.within = config.batch_within
        self.grace = config.shutdown_grace
        self.name = name
        self._buffer: list[Any] = []
        self._per_partition: dict[int, int] = {}
        self._started = 0.0
        self._queue: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=1)
        self._submit_lock = asyncio.Lock()
        self._current: asyncio.Future[None] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        committer = asyncio.ensure_future(self._commit_loop())
        flusher = asyncio.ensure_future(self._flush_loop())
        counts = self._per_partition
        cap = self.size * self.MAX_PARTITIONS_PER_BATCH
        try:
            async for event in self.stream.events():
                if not self._buffer:
                    self._started = loop.time()
                self._buffer.append(event)
                partition = event.message.partition
                counts[partition] = n = counts.get(partition, 0) + 1
                if n >= self.size or len(self._buffer) >= cap:
                    await self._submit()
        finally:
            # Graceful stop: no new batch starts; the one in progress may reach PostgreSQL and be acked.
            flusher.cancel()
            committer.cancel()
            current = self._current
            if current is not None and not current.done():
                await asyncio.wait({current}, timeout=self.grace)
                current.cancel()

    async def _submit(self) -> None:
        async with self._submit_lock:
            if not self._buffer:
                return
            batch, self._buffer = self._buffer, []
            self._per_partition.clear()
            await self._queue.put(batch)

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.within / 2)
            if self._buffer and loop.time() - self._started >= self.within:
                await self._submit()

    async def _commit_loop(self) -> None:
        while True:
            batch = await self._queue.get()
            self._current = asyncio.ensure_future(self._handle(batch))
            try:
                await asyncio.shield(self._current)
            finally:
                self._current = None

    async def _handle(self, batch: list[Any]) -> None:
        try:
            started = time.perf_counter()
            await self.handle([_record(event) for event in batch])
            ack = self.stream.ack
            for event in batch:
                await ack(event)
            log.debug(
                "worker.batch", agent=self.name, events=len(batch), seconds=round(time.perf_counter() - started, 4)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fatal("worker.batch_failed", agent=self.name, error=repr(exc))


class ProjectionWorker:
    """The faust app, its agents, the ordering gate, the rewind on assignment and the lag reports."""

    def __init__(self, config: WorkerConfig, specs: Sequence[ProjectionSpec]) -> None:
        if not specs:
            raise ValueError("the worker needs at least one projection")
        self.config = config
        self.specs = list(specs)
        self.writer = ReadModelWriter(config.conninfo, config.schema, self.specs, keep_docs=config.keep_docs)
        self.pool = ThreadPoolExecutor(max_workers=max(1, config.threads), thread_name_prefix="prm-read-model")
        self.probe = KafkaProbe(config.bootstrap, client_id=f"{config.app_id}-probe")
        self.gate = ProgramGate(
            topic=config.program_topic,
            probe=self.probe,
            applied_offset=self._program_applied_offset,
            apply=self._apply_program,
            patience=config.gate_patience,
        )
        self.applied_events = 0
        self._pipelines = 0
        self._last_report = (time.monotonic(), 0)
        self.app: Any = None

    # ---- faust ----------------------------------------------------------
    def _build_app(self) -> Any:
        c = self.config
        app = faust.App(
            c.app_id,
            broker=[f"kafka://{host.strip()}" for host in c.bootstrap.split(",") if host.strip()],
            processing_guarantee="at_least_once",
            store="memory://",
            autodiscover=False,
            topic_allow_declare=False,
            topic_disable_leader=True,
            web_enabled=False,
            consumer_auto_offset_reset="earliest",
            # Do not hold rebalances and shutdown until every message read is acked: the advisory
            # locks and checkpoints make overlapping owners safe, and a batch waiting in the gate
            # would otherwise hang SIGTERM (faust's wait_empty loops until everything is acked).
            stream_wait_empty=False,
            key_serializer="raw",
            value_serializer="raw",
            broker_session_timeout=c.session_timeout,
            broker_heartbeat_interval=c.heartbeat_interval,
            broker_rebalance_timeout=c.rebalance_timeout,
            datadir=str(c.datadir / c.app_id),
            **dict(c.faust_options),
        )
        events = app.topic(c.events_topic, key_serializer="raw", value_serializer="raw")
        program = app.topic(c.program_topic, key_serializer="raw", value_serializer="raw")

        async def events_agent(stream: Any) -> None:
            await self._run_pipeline(_BatchPipeline(stream, self.process_events, c, "events"))

        async def program_agent(stream: Any) -> None:
            await self._run_pipeline(_BatchPipeline(stream, self.process_program, c, "program"))

        app.agent(events, name=f"{c.app_id}.events")(events_agent)
        app.agent(program, name=f"{c.app_id}.program")(program_agent)
        # mode's handler type wants ``signal`` as a required keyword: cast rather than mirror it.
        app.on_rebalance_complete.connect(cast(Any, self._on_rebalance_complete))
        app.on_before_shutdown.connect(cast(Any, self._on_shutdown))
        if c.lag_interval > 0:
            app.timer(c.lag_interval, name=f"{c.app_id}.lag")(self._report_lag)
        return app

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _write(self, parts: Mapping[str, Sequence[Parsed]], specs: Sequence[ProjectionSpec]) -> Applied:
        """Apply parsed partitions to ``specs``; retry infrastructure failures for ever, die on anything else."""
        delay = 0.1
        while True:
            try:
                result: Applied = await self._in_thread(self.writer.apply_parsed, parts, specs)
                return result
            except TRANSIENT_ERRORS as exc:
                log.warning("read_model.retry", sources=sorted(parts), error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception as exc:
                fatal(
                    "worker.apply_failed",
                    projections=[spec.name for spec in specs],
                    offsets={s: [e[0][0], e[-1][0]] for s, e in parts.items() if e},
                    error=repr(exc),
                )

    async def _parse(self, by_source: Mapping[str, Sequence[Record]]) -> dict[str, list[Parsed]]:
        try:
            parsed: dict[str, list[Parsed]] = await self._in_thread(
                lambda: {source: parse_records(records) for source, records in by_source.items()}
            )
        except Exception as exc:
            fatal("worker.unparsable", error=repr(exc))
        return parsed

    async def _apply(self, source: str, records: list[Record]) -> None:
        """Apply one partition's records to every projection (the programme partition)."""
        parts = await self._parse({source: records})
        await self._write(parts, self.writer.apply_order)
        self.applied_events += len(records)

    async def _program_applied_offset(self) -> int:
        source = self.gate.source
        nexts: dict[str, int] = await self._retrying(self.writer.next_offsets, [source])
        return nexts[source] - 1

    async def _retrying(self, fn: Any, *args: Any) -> Any:
        delay = 0.1
        while True:
            try:
                return await self._in_thread(fn, *args)
            except TRANSIENT_ERRORS as exc:
                log.warning("read_model.retry", call=getattr(fn, "__name__", str(fn)), error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _apply_program(self, records: list[Record]) -> None:
        await self._apply(self.gate.source, records)

    async def process_program(self, records: list[Record]) -> None:
        """Apply a batch of the programme partition (the handler of the programme agent)."""
        await self._apply(self.gate.source, records)
        self.gate.note_applied(max(r.offset for r in records))

    async def process_events(self, records: list[Record]) -> None:
        """Apply a batch of ``prm.events.v1`` once the gate allows it (the handler of the partner agent).

        Each partition-local projection runs per partition, the partitions in
        parallel (threads); each shared projection takes the whole batch in one
        unit of work under its group-wide lock, concurrently with them.
        Independent of faust: ``bench/faust_tax.py`` drives the same handler from a plain aiokafka loop.
        """
        by_source: dict[str, list[Record]] = {}
        for record in records:
            by_source.setdefault(kafka_source(record.topic, record.partition), []).append(record)
        # The programme end offset is read after the batch was fetched: every programme
        # event recorded before an event of this batch is below it (the relay's flush rule).
        end = await self._retrying_async(self.gate.end_offset)
        await self.gate.wait_for(end)
        parts = await self._parse(by_source)
        local = [spec for spec in self.writer.apply_order if spec.partition_local]
        shared = [spec for spec in self.writer.apply_order if not spec.partition_local]
        jobs = [self._write({source: envelopes}, local) for source, envelopes in parts.items()] if local else []
        if shared:
            jobs.append(self._write(parts, shared))
        await asyncio.gather(*jobs)
        self.applied_events += len(records)

    async def _retrying_async(self, fn: Any) -> Any:
        delay = 0.1
        while True:
            try:
                return await fn()
            except TRANSIENT_ERRORS as exc:
                log.warning("kafka.retry", call=getattr(fn, "__name__", str(fn)), error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _on_rebalance_complete(self, sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """Point the group's committed offsets at the read models' checkpoints before faust seeks to them."""
        try:
            ours = {self.config.events_topic, self.config.program_topic}
            assigned = [tp for tp in self.app.consumer.assignment() if tp.topic in ours]
            if not assigned:
                log.info("worker.assigned", partitions=[])
                return
            sources = {kafka_source(tp.topic, tp.partition): tp for tp in assigned}
            nexts: dict[str, int] = await self._retrying(self.writer.next_offsets, list(sources))
            offsets = {tp: nexts[source] for source, tp in sources.items()}
            committed = await self.app.consumer._thread.commit(offsets)
            for tp, offset in offsets.items():
                if offset == 0:
                    # aiokafka's seek_to_committed() skips a committed offset of 0 ("if offset and
                    # offset > 0"), which would leave the position at the old committed offset.
                    await self.app.consumer.seek(tp, 0)
            log.info(
                "worker.assigned",
                partitions=sorted(sources),
                resume_at={s: nexts[s] for s in sorted(sources)},
                rewound=bool(committed),
            )
        except Exception as exc:
            # Not fatal: faust then resumes from Kafka's committed offsets, and a hole is refused by apply().
            log.warning("worker.rewind_failed", error=repr(exc))

    async def _on_shutdown(self, sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        log.info("worker.stopping", applied_events=self.applied_events)

    async def _run_pipeline(self, pipeline: _BatchPipeline) -> None:
        self._pipelines += 1
        try:
            await pipeline.run()
        finally:
            self._pipelines -= 1
            # The probe serves the batches until the last one is done (agents stop after on_before_shutdown).
            if self._pipelines == 0 and self.app is not None and self.app.should_stop:
                try:
                    await self.probe.close()
                except Exception as exc:
                    log.warning("worker.probe_close_failed", error=repr(exc))
                log.info("worker.stopped", applied_events=self.applied_events, projections=self.writer.timings())

    async def _report_lag(self) -> None:
        try:
            c = self.config
            parts = await self.probe.partitions([c.events_topic, c.program_topic])
            tps = [(topic, p) for topic, ps in parts.items() for p in ps]
            ends = await self.probe.end_offsets(tps)
            group = await self.probe.group_offsets(c.app_id)
            marks: dict[str, dict[str, tuple[int, int | None]]] = await self._in_thread(self.writer.checkpoints)
        except Exception as exc:
            log.warning("worker.lag_unavailable", error=repr(exc))
            return
        end_by_source = {kafka_source(t, p): end for (t, p), end in ends.items()}
        partitions = {}
        for (topic, p), end in sorted(ends.items()):
            source = kafka_source(topic, p)
            applied = [off for m in marks.values() if (off := m.get(source, (0, None))[1]) is not None]
            applied_next = min(applied) + 1 if len(applied) == len(marks) else 0
            committed = group.get((topic, p))
            partitions[source] = {
                "end": end,
                "committed": committed,
                "consumer_lag": end - committed if committed is not None else end,
                "applied_lag": end - applied_next,
            }
        projections = {}
        for name, by_source in marks.items():
            behind = 0
            for source, end in end_by_source.items():
                offset = by_source.get(source, (0, None))[1]
                behind += max(0, end - (offset + 1 if offset is not None else 0))
            projections[name] = {
                "messages_behind": behind,
                "applied_sequence": max((seq for seq, _ in by_source.values()), default=0),
            }
        now = time.monotonic()
        then, count = self._last_report
        self._last_report = (now, self.applied_events)
        rate = (self.applied_events - count) / (now - then) if now > then else 0.0
        log.info(
            "worker.lag",
            partitions=partitions,
            projections=projections,
            events_per_s=round(rate, 1),
            gate_catch_ups=self.gate.helped,
            timings=self.writer.timings(),
            kept_copies=dict(self.writer.reuse),
        )

    # ---- running ----------------------------------------------------------
    def prepare(self) -> None:
        """Check that our topics exist, then create the read-model tables (before faust starts)."""

        async def check() -> None:
            probe = KafkaProbe(self.config.bootstrap, client_id=f"{self.config.app_id}-check")
            try:
                await probe.partitions([self.config.events_topic, self.config.program_topic])
            finally:
                await probe.close()

        asyncio.run(check())
        # asyncio.run() leaves no current loop: give faust (built next) a fresh one.
        asyncio.set_event_loop(asyncio.new_event_loop())
        self.writer.create_tables()
        # faust creates its data directory without parents.
        self.config.datadir.mkdir(parents=True, exist_ok=True)

    def run(self, loglevel: str = "WARNING") -> NoReturn:
        """Run until SIGTERM/SIGINT (graceful: the batch in progress is finished and acked)."""
        self.prepare()
        log.info(
            "worker.starting",
            app_id=self.config.app_id,
            topics=[self.config.events_topic, self.config.program_topic],
            projections=[s.name for s in self.specs],
            schema=self.config.schema,
            pid=os.getpid(),
        )
        self.app = self._build_app()
        worker = faust.Worker(self.app, loglevel=loglevel, quiet=True, redirect_stdouts=False, override_logging=False)
        worker.spinner = None  # faust draws a terminal spinner on stdout whatever ``quiet`` says
        worker.execute_from_commandline()
        raise SystemExit(0)  # pragma: no cover  (execute_from_commandline exits)


def _record(event: Any) -> Record:
    message = event.message
    value = event.value
    if not isinstance(value, bytes | bytearray):
        value = bytes(value or b"")
    return Record(message.topic, message.partition, message.offset, bytes(value))
