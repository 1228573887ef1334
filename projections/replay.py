"""The auditor's replay: rebuild read models from the recorded history into an isolated target.

``replay(events, target)`` applies the envelopes of a history (read from the
event store with :func:`projections.store_reader.read_store`, or from Kafka
offset 0 with :mod:`consumers.history`) to fresh projections -- by default the
commission ledger -- in a store that is **not** the live read models: a
PostgreSQL schema ``replay_<name>``, a SQLite file or a JSON file
(:func:`open_target`). The same reducer code that builds the live ledger builds
the replayed one, so comparing them (:mod:`projections.audit`) checks the
history, the reducer and the live pipeline at once.

Order and as-of semantics
-------------------------
The history must come in increasing ``sequence`` (event-store position): the
position is the order the reducers trust (a sale sees exactly the plan versions
and tier changes with a lower position). ``as_of=T`` keeps the events whose
**recording time** ``envelope.time <= T``: recording time is what the live
queries use to decide what was visible at ``T`` (a line is visible when
``booked_at`` -- its source event's recording time -- is at or before ``T``),
so a replay as of ``T`` reproduces what the live system showed at ``T``.

Positions and recording times are both monotone in practice (one writer
records an event and gets the next position; the timestamp is taken when the
command runs, just before the position is assigned). With concurrent writers
a lower position can carry a slightly later timestamp; the replay still trusts
the position for order and the time only for the cut, and counts
``time_inversions``: kept events that come after a dropped (later-recorded)
one, i.e. the cut at ``T`` was not a prefix of the log. A non-zero count is
reported, never hidden.

``partner=P`` keeps P's events (``partnerid == P``) and the programme-wide ones
(no partner: plan versions, recalculation requests, programme settings; direct
sales and opportunities pass too and earn nothing). A partner's ledger depends
only on those (``docs/commissions.md``), so P's lines are identical to the
live ones.

Resuming
--------
Every batch is committed with a checkpoint (source ``replay``: the highest
sequence processed, kept or filtered) in the target's own transaction. Running
the replay again on the same target continues after that sequence (the store
reader starts there; a Kafka reader starts from the partition offsets
committed with the same batch, see :class:`PositionedHistory`). The filter the
target was built with is recorded in it; resuming with another filter is
refused (start over with ``fresh=True``).
"""

from __future__ import annotations

import gc
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson

from projections.envelope import EventEnvelope, iso, parse_time
from projections.ledger import CommissionLedger
from projections.memory import InMemoryProjectionStore
from projections.port import Checkpoint, Doc, DocKey, Projection, ProjectionStore
from projections.postgres import PostgresProjectionStore
from projections.unit_of_work import UnitOfWork

__all__ = [
    "COORDINATES",
    "META",
    "REPLAY_BATCH",
    "REPLAY_KEEP",
    "REPLAY_SOURCE",
    "CachedStore",
    "JsonFileProjectionStore",
    "KafkaCoordinates",
    "PositionedHistory",
    "ReplayMismatch",
    "ReplayStats",
    "ReplayTarget",
    "SqliteProjectionStore",
    "check_resumable",
    "coordinates_of",
    "kafka_offsets",
    "open_target",
    "replay",
    "replay_filter",
    "replay_meta",
    "reset_target",
    "resume_point",
    "schema_for",
]

REPLAY_SOURCE = "replay"
"""Checkpoint source of a replay: the highest sequence processed (applied or filtered out)."""
META = "replay"
"""Projection name of the replay's own documents (its parameters and progress)."""
COORDINATES = "kafka_coordinates"
"""Projection name of the Kafka coordinates of the replayed events (replays from Kafka only)."""
REPLAY_BATCH = 2000
"""Events per committed batch of a replay by default (the resume granularity)."""
REPLAY_KEEP = 60_000
"""Working copies a replay's unit of work keeps across batches (per projection; an LRU, see ``replay``).

The bound a replay needs grows with the number of documents in use at once (partners above all): on the
synthetic programme of ``bench/replay_rate.py``, 20,000 left 0.26 copies per event at 1M events (9,000
partners) against 0.10 with 60,000, and the 1M replay ran 14 % faster; about 4 KB of memory per kept document."""
_META_KIND = "meta"
_META_KEY = "run"
_COORDINATES_KIND = "batch"
_KAFKA_PREFIX = "kafka:"
_NAME = re.compile(r"^[a-z0-9_]{1,48}$")
_FILE_SUFFIXES = {".json": "json", ".sqlite": "sqlite", ".sqlite3": "sqlite", ".db": "sqlite"}


class ReplayMismatch(ValueError):
    """The target holds a replay with other parameters: resuming it would mix two histories."""


# ============================================================================
# Kafka-like sources: positions to commit with each batch
# ============================================================================


@dataclass(frozen=True, order=True)
class KafkaCoordinates:
    topic: str
    partition: int
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@runtime_checkable
class PositionedHistory(Protocol):
    """A history that knows where it is in its own log (e.g. Kafka partitions and offsets).

    ``checkpoints()``: positions to commit with the batch that ends at the last
    event yielded (a Kafka reader: ``kafka:<topic>:<partition>`` with the next
    offset to read); ``last_coordinates``: where the last event yielded was read.
    """

    def __iter__(self) -> Iterator[EventEnvelope]: ...

    def checkpoints(self) -> list[Checkpoint]: ...

    @property
    def last_coordinates(self) -> KafkaCoordinates | None: ...


# ============================================================================
# The replay
# ============================================================================


@dataclass
class ReplayStats:
    """What a replay did. ``seen`` counts events read in this run (after the resume point)."""

    seen: int = 0
    applied: int = 0
    filtered: int = 0
    already_applied: int = 0
    resumed_from: int = 0
    last_sequence: int = 0
    time_inversions: int = 0
    batches: int = 0
    elapsed_s: float = 0.0
    copies: int = 0
    """Documents the units of work copied from the target (kept copies are not copied again); not recorded
    in the target's run history."""

    @property
    def rate(self) -> float:
        """Events read per second."""
        return self.seen / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "applied": self.applied,
            "filtered": self.filtered,
            "already_applied": self.already_applied,
            "resumed_from": self.resumed_from,
            "last_sequence": self.last_sequence,
            "time_inversions": self.time_inversions,
            "batches": self.batches,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.rate, 1),
        }


def _params(projections: Sequence[Projection], as_of: datetime | None, partner: str | None) -> dict[str, Any]:
    return {
        "projections": sorted(p.name for p in projections),
        "as_of": iso(as_of) if as_of is not None else None,
        "partner": partner,
    }


def replay_meta(target: ProjectionStore) -> Doc | None:
    """The parameters and progress recorded in a replay target (``None`` if nothing was replayed into it)."""
    return target.load(META, [(_META_KIND, _META_KEY)]).get((_META_KIND, _META_KEY))


def resume_point(target: ProjectionStore, projections: Sequence[Projection] | None = None) -> int:
    """The sequence a replay into ``target`` continues after (0: from the start)."""
    names = [p.name for p in projections] if projections is not None else [CommissionLedger.name]
    points = []
    for name in names:
        checkpoint = target.checkpoints(name).get(REPLAY_SOURCE)
        points.append(checkpoint.sequence if checkpoint is not None else 0)
    return min(points, default=0)


def kafka_offsets(target: ProjectionStore, projection: str = CommissionLedger.name) -> dict[tuple[str, int], int]:
    """Next offset to read per ``(topic, partition)``, committed with the replay's last batch."""
    offsets: dict[tuple[str, int], int] = {}
    for source, checkpoint in target.checkpoints(projection).items():
        if source.startswith(_KAFKA_PREFIX) and checkpoint.offset is not None:
            topic, _, partition = source[len(_KAFKA_PREFIX) :].rpartition(":")
            offsets[(topic, int(partition))] = checkpoint.offset
    return offsets


@contextmanager
def _batch_gc(enabled: bool) -> Iterator[Callable[[], None]]:
    """Keep Python's cyclic garbage collector off the replay's growing heap.

    A replay holds many long-lived documents (the target's cache, the history
    read ahead); every full collection walks all of them, so the cost per event
    grows with the size of the programme (measured: scale 10 ran at less than
    half the rate of scale 1). Objects that exist at the start, then the
    documents committed with each batch, are frozen (ignored by the collector)
    and young collections are made rarer; everything is restored at the end.
    The young generations are collected just before each freeze, so the garbage
    cycles a batch made are freed then, never frozen.
    """
    if not enabled:
        yield lambda: None
        return
    threshold = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(max(threshold[0], 100_000), max(threshold[1], 50), max(threshold[2], 100))

    def collect_then_freeze() -> None:
        # Collect the batch's garbage cycles first: a frozen cycle is never collected, so freezing without
        # collecting kept such garbage alive for the whole replay (kafka-python's parsed fetch responses,
        # ``PartitionRecords``, are cycles until drained). The young generations hold only what the batch
        # made, so this collection is short.
        gc.collect(1)
        gc.freeze()

    try:
        yield collect_then_freeze
    finally:
        gc.set_threshold(*threshold)
        if frozen_before == 0:
            gc.unfreeze()


def replay(
    events: Iterable[EventEnvelope],
    target_store: ProjectionStore,
    projections: Sequence[Projection] | None = None,
    *,
    as_of: datetime | None = None,
    partner: str | None = None,
    batch_size: int = REPLAY_BATCH,
    progress: Callable[[int, int], None] | None = None,
    source: str | None = None,
    fresh: bool = False,
    tune_gc: bool = True,
    keep: int = REPLAY_KEEP,
) -> ReplayStats:
    """Apply ``events`` (in increasing ``sequence``) to ``projections`` in ``target_store``.

    ``as_of``: keep only events recorded at or before that instant; ``partner``:
    keep that partner's events and the programme-wide ones. Commits every
    ``batch_size`` events with the checkpoint; events at or below the target's
    checkpoint are skipped, so re-running continues an interrupted replay.
    ``progress(events read, last sequence)`` is called after each commit.
    ``source`` (``store``/``kafka``) is only recorded. ``fresh``: forget what the
    target holds first. ``tune_gc``: see ``_batch_gc`` (process-wide, restored at the end).

    The replay is the only writer of its target, so its units of work are
    exclusive and keep the working copies of the ``keep`` most recently used
    documents across batches (see :mod:`projections.unit_of_work`); a failed batch
    ends the replay (the exception propagates, the units are dropped) and a new
    run resumes from the last committed one.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    chosen: Sequence[Projection] = list(projections) if projections is not None else [CommissionLedger()]
    if not chosen:
        raise ValueError("nothing to replay: no projection")
    with _batch_gc(tune_gc) as freeze:
        return _replay(events, target_store, chosen, as_of, partner, batch_size, progress, source, fresh, freeze, keep)


def _replay(
    events: Iterable[EventEnvelope],
    target_store: ProjectionStore,
    chosen: Sequence[Projection],
    as_of: datetime | None,
    partner: str | None,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
    source: str | None,
    fresh: bool,
    freeze: Callable[[], None],
    keep: int,
) -> ReplayStats:
    if fresh:
        reset_target(target_store, chosen)
    meta = check_resumable(target_store, chosen, as_of=as_of, partner=partner)
    stats = ReplayStats(resumed_from=resume_point(target_store, chosen))
    if source is not None and source not in meta["sources"]:
        meta["sources"] = sorted({*meta["sources"], source})
    meta["complete"] = False
    target_store.commit(META, {(_META_KIND, _META_KEY): meta}, [], [])

    units = {p.name: UnitOfWork(target_store, p.name, exclusive=True, keep=keep) for p in chosen}
    positioned = events if isinstance(events, PositionedHistory) else None
    coordinates: list[list[Any]] = []
    started = time.perf_counter()
    pending = 0
    dropped_after: datetime | None = None  # earliest recording time of a dropped event (as-of cut)
    last_time = parse_time(meta["last_recorded_at"]) if meta.get("last_recorded_at") else None

    def commit() -> None:
        extra = positioned.checkpoints() if positioned is not None else []
        if coordinates:
            key = f"{coordinates[0][0]:020d}"
            target_store.commit(COORDINATES, {(_COORDINATES_KIND, key): {"entries": list(coordinates)}}, [], [])
            coordinates.clear()
        for unit in units.values():
            for mark in extra:
                unit.advance(mark.source, mark.sequence, mark.offset)
            unit.commit()
        # where the committed history ends (after the projections' own transaction: at worst it lags one batch)
        meta.update(
            last_sequence=max(meta.get("last_sequence") or 0, stats.last_sequence),
            last_recorded_at=iso(last_time) if last_time is not None else meta.get("last_recorded_at"),
        )
        target_store.commit(META, {(_META_KIND, _META_KEY): meta}, [], [])
        freeze()
        stats.copies = sum(unit.copies for unit in units.values())
        stats.batches += 1
        stats.elapsed_s = time.perf_counter() - started
        if progress is not None:
            progress(stats.seen, stats.last_sequence)

    for event in events:
        stats.seen += 1
        if event.sequence <= stats.last_sequence:
            raise ValueError(
                f"history out of order: sequence {event.sequence} after {stats.last_sequence} (event {event.id})"
            )
        stats.last_sequence = event.sequence
        if event.sequence <= stats.resumed_from:
            stats.already_applied += 1
            continue
        kept = partner is None or event.partner_id is None or event.partner_id == partner
        if as_of is not None and event.time > as_of:
            if kept and dropped_after is None:
                dropped_after = event.time
            kept = False
        elif last_time is None or event.time > last_time:
            last_time = event.time  # where the history read ends (``prm audit diff`` compares there)
        if kept:
            if dropped_after is not None:
                stats.time_inversions += 1
            applied = False
            for projection in chosen:
                applied = units[projection.name].apply(projection, event, REPLAY_SOURCE) or applied
            stats.applied += int(applied)
            if positioned is not None and positioned.last_coordinates is not None:
                where = positioned.last_coordinates
                coordinates.append([event.sequence, where.topic, where.partition, where.offset])
        else:
            stats.filtered += 1
            for unit in units.values():
                unit.advance(REPLAY_SOURCE, event.sequence)
        pending += 1
        if pending >= batch_size:
            commit()
            pending = 0
    commit()
    stats.last_sequence = max(stats.last_sequence, stats.resumed_from)
    meta.update(complete=True, runs=[*meta.get("runs", []), stats.to_dict()][-20:])
    target_store.commit(META, {(_META_KIND, _META_KEY): meta}, [], [])
    return stats


def reset_target(target: ProjectionStore, projections: Sequence[Projection] | None = None) -> None:
    """Forget a previous replay in ``target`` (its projections, parameters and Kafka coordinates)."""
    names = [p.name for p in projections] if projections is not None else [CommissionLedger.name]
    for name in sorted({*names, META, COORDINATES}):
        target.reset(name)


def check_resumable(
    target: ProjectionStore,
    projections: Sequence[Projection] | None = None,
    *,
    as_of: datetime | None = None,
    partner: str | None = None,
) -> Doc:
    """The target's replay record, if a replay with these parameters may continue in it (else ``ReplayMismatch``)."""
    chosen: Sequence[Projection] = list(projections) if projections is not None else [CommissionLedger()]
    params = _params(chosen, as_of, partner)
    meta = replay_meta(target)
    if meta is None:
        if resume_point(target, chosen) > 0:
            raise ReplayMismatch("the target holds read models that no replay recorded: refusing to write into it")
        return {
            "format": "prm-replay/1",
            "params": params,
            "sources": [],
            "last_sequence": 0,
            "last_recorded_at": None,
            "runs": [],
        }
    if meta.get("params") != params:
        raise ReplayMismatch(
            f"the target holds a replay with {_describe(meta.get('params') or {})}, not {_describe(params)}:"
            " resume it with the same parameters, or start over (fresh)"
        )
    return meta


def _describe(params: Mapping[str, Any]) -> str:
    return (
        f"as_of={params.get('as_of') or 'none'}, partner={params.get('partner') or 'all'},"
        f" projections={','.join(params.get('projections') or [])}"
    )


def replay_filter(meta: Doc | None) -> tuple[datetime | None, str | None]:
    """``(as_of, partner)`` a target was replayed with."""
    params = (meta or {}).get("params") or {}
    as_of = params.get("as_of")
    return (parse_time(as_of) if as_of else None), params.get("partner")


def coordinates_of(target: ProjectionStore, sequences: Iterable[int]) -> dict[int, KafkaCoordinates]:
    """Where the events with these sequences were read on Kafka, if the target was replayed from Kafka."""
    wanted = set(sequences)
    found: dict[int, KafkaCoordinates] = {}
    if not wanted:
        return found
    for doc in target.load_kind(COORDINATES, _COORDINATES_KIND).values():
        for sequence, topic, partition, offset in doc["entries"]:
            if sequence in wanted:
                found[sequence] = KafkaCoordinates(topic, partition, offset)
    return found


# ============================================================================
# Targets: never the live read models
# ============================================================================


def schema_for(name: str) -> str:
    """PostgreSQL schema of the replay target ``name``: ``replay_<name>``."""
    if not _NAME.match(name):
        raise ValueError(f"replay target name {name!r}: use 1-48 lower-case letters, digits or underscores")
    return f"replay_{name}"


class TargetStore(ProjectionStore, Protocol):
    """A projection store that can also list every document of a projection."""

    def dump(self, projection: str) -> dict[DocKey, Doc]: ...


@dataclass
class ReplayTarget:
    """Where a replay writes: ``kind`` is ``postgres``, ``sqlite`` or ``json``; ``where`` names it for people."""

    kind: str
    where: str
    store: TargetStore
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for closer in reversed(self.closers):
            closer()
        self.closers.clear()

    def dump(self, projection: str = CommissionLedger.name) -> dict[DocKey, Doc]:
        """Every document of ``projection`` in the target."""
        return self.store.dump(projection)


def open_target(
    into: str,
    *,
    database_url: str | None = None,
    live_schemas: Iterable[str] = (),
    default_dir: Path = Path(".prm"),
    cached: bool = True,
) -> ReplayTarget:
    """The isolated store named by ``into``.

    * ``*.json`` -> a JSON file; ``*.sqlite``/``*.sqlite3``/``*.db`` -> a SQLite file;
    * a bare name (``[a-z0-9_]+``) -> the PostgreSQL schema ``replay_<name>`` when a
      ``database_url`` is given, else the SQLite file ``<default_dir>/replay_<name>.sqlite``.

    ``live_schemas`` are refused as targets. ``cached``: keep the target's
    documents in memory (a replay is the only writer of its target).
    """
    suffix = Path(into).suffix.lower()
    closers: list[Callable[[], None]] = []
    if suffix in _FILE_SUFFIXES or "/" in into:
        kind = _FILE_SUFFIXES.get(suffix)
        if kind is None:
            raise ValueError(f"replay target file {into!r}: use a .json, .sqlite or .db file")
        path = Path(into)
        where = str(path)
    else:
        schema = schema_for(into)
        if database_url:
            if schema in set(live_schemas):
                raise ValueError(f"refusing to replay into the live read models ({schema})")
            pg = PostgresProjectionStore(database_url, schema)
            pg.create_tables()
            closers.append(pg.close)
            target = ReplayTarget("postgres", f"PostgreSQL schema {schema}", pg, closers)
            if cached:
                target.store = CachedStore(pg)
            return target
        kind = "sqlite"
        path = default_dir / f"{schema}.sqlite"
        where = str(path)
    if kind == "json":
        json_store = JsonFileProjectionStore(path)
        closers.append(json_store.close)
        return ReplayTarget("json", f"JSON file {where}", json_store, closers)
    sqlite_store = SqliteProjectionStore(path)
    closers.append(sqlite_store.close)
    target = ReplayTarget("sqlite", f"SQLite file {where}", sqlite_store, closers)
    if cached:
        target.store = CachedStore(sqlite_store)
    return target


class CachedStore:
    """A write-through cache over a projection store that only this process writes (a replay target).

    The cache holds each committed document as its JSON bytes -- exactly what a
    SQLite target stores, serialised once per commit for both -- not as Python
    objects. A million-event replay keeps about a million documents: as nested
    dicts they took 2.7 GB and every ``orjson`` call on the fragmented heap got
    twice as slow as the history grew; as bytes they are a fraction of that, and
    invisible to the cyclic garbage collector. Commits go to the underlying store
    first (in its transaction), then to the cache.

    Every read parses the bytes, so each document handed out is a fresh value
    that nothing else holds (a :class:`_JsonDoc`): whatever a caller does to it
    never changes the cache, and no committed object is shared with a reducer.
    """

    def __init__(self, store: TargetStore) -> None:
        self.store = store
        self._raw: dict[str, dict[str, dict[str, bytes]]] = {}

    def _loaded(self, projection: str) -> dict[str, dict[str, bytes]]:
        by_kind = self._raw.get(projection)
        if by_kind is None:
            by_kind = {}
            if isinstance(self.store, SqliteProjectionStore):
                raws = self.store.dump_raw(projection)
            else:
                raws = {item: orjson.dumps(doc) for item, doc in self.store.dump(projection).items()}
            for (kind, key), raw in raws.items():
                by_kind.setdefault(kind, {})[key] = _compact(raw)
            self._raw[projection] = by_kind
        return by_kind

    def load(self, projection: str, keys: Iterable[DocKey]) -> dict[DocKey, Doc]:
        by_kind = self._loaded(projection)
        found: dict[DocKey, Doc] = {}
        for kind, key in keys:
            raw = by_kind.get(kind, {}).get(key)
            if raw is not None:
                found[(kind, key)] = _JsonDoc.parse(raw)
        return found

    def load_kind(self, projection: str, kind: str) -> dict[str, Doc]:
        return {key: _JsonDoc.parse(raw) for key, raw in self._loaded(projection).get(kind, {}).items()}

    def checkpoints(self, projection: str) -> dict[str, Checkpoint]:
        return self.store.checkpoints(projection)

    def commit(
        self,
        projection: str,
        upserts: Mapping[DocKey, Doc],
        deletes: Iterable[DocKey],
        checkpoints: Iterable[Checkpoint],
    ) -> None:
        deleted = list(deletes)
        raws = {item: orjson.dumps(doc) for item, doc in upserts.items()}
        if isinstance(self.store, SqliteProjectionStore):
            self.store.commit_raw(projection, raws, deleted, list(checkpoints))
        else:
            self.store.commit(projection, upserts, deleted, list(checkpoints))
        by_kind = self._loaded(projection)
        for (kind, key), raw in raws.items():
            docs = by_kind.get(kind)
            if docs is None:
                docs = by_kind[kind] = {}
            docs[key] = _compact(raw)
        for kind, key in deleted:
            by_kind.get(kind, {}).pop(key, None)

    def reset(self, projection: str) -> None:
        self.store.reset(projection)
        self._raw.pop(projection, None)

    def dump(self, projection: str) -> dict[DocKey, Doc]:
        return {
            (kind, key): orjson.loads(raw)
            for kind, docs in self._loaded(projection).items()
            for key, raw in docs.items()
        }


def _compact(raw: bytes) -> bytes:
    """An exact-size copy of ``raw``. ``orjson.dumps`` (3.13) returns bytes that keep the whole output
    buffer it grew (measured: about 32 KB for a 1.7 KB document): cached as they are, a million documents
    took 7 GB. The copy costs about 0.4 µs."""
    return memoryview(raw).tobytes()


class _JsonDoc(dict[str, Any]):
    """A document read from a :class:`CachedStore`, with the JSON bytes it was parsed from.

    A deep copy (what a unit of work makes before handing a document to a reducer)
    parses the bytes again: the same value, several times faster than a generic
    ``copy.deepcopy``. Readers do not change what a store returns, so the bytes match the content.
    """

    __slots__ = ("raw",)
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes) -> _JsonDoc:
        doc = cls(orjson.loads(raw))
        doc.raw = raw
        return doc

    def __deepcopy__(self, memo: dict[int, Any]) -> Doc:
        copied: Doc = orjson.loads(self.raw)
        return copied


_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS rm_docs (
    projection TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    doc BLOB NOT NULL,
    PRIMARY KEY (projection, kind, key)
);
CREATE TABLE IF NOT EXISTS rm_checkpoints (
    projection TEXT NOT NULL,
    source TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    "offset" INTEGER,
    PRIMARY KEY (projection, source)
);
"""


class SqliteProjectionStore:
    """Read models in a SQLite file (tables ``rm_docs`` and ``rm_checkpoints``), one transaction per commit."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # Only replays write here, and a replay target can always be rebuilt from the history: no fsync
        # (a process crash keeps every committed batch -- the WAL is in the OS's cache -- and the replay
        # resumes from its checkpoint; after a power loss the file may lose its last batches or be
        # damaged, and ``--fresh`` rebuilds it). Checkpoints of the WAL no longer wait on the disk.
        self._conn.execute("PRAGMA synchronous=OFF")
        # A replay target grows to hundreds of MB; the default page cache (2 MB) makes every upsert of a
        # large history read B-tree pages back from the OS. 256 MB of cache (allocated as used).
        self._conn.execute("PRAGMA cache_size=-262144")
        self._conn.executescript(_SQLITE_DDL)

    def close(self) -> None:
        self._conn.close()

    def load(self, projection: str, keys: Iterable[DocKey]) -> dict[DocKey, Doc]:
        found: dict[DocKey, Doc] = {}
        for kind, key in keys:
            row = self._conn.execute(
                "SELECT doc FROM rm_docs WHERE projection = ? AND kind = ? AND key = ?", (projection, kind, key)
            ).fetchone()
            if row is not None:
                found[(kind, key)] = orjson.loads(row[0])
        return found

    def load_kind(self, projection: str, kind: str) -> dict[str, Doc]:
        rows = self._conn.execute(
            "SELECT key, doc FROM rm_docs WHERE projection = ? AND kind = ?", (projection, kind)
        ).fetchall()
        return {key: orjson.loads(doc) for key, doc in rows}

    def checkpoints(self, projection: str) -> dict[str, Checkpoint]:
        rows = self._conn.execute(
            'SELECT source, sequence, "offset" FROM rm_checkpoints WHERE projection = ?', (projection,)
        ).fetchall()
        return {source: Checkpoint(source, sequence, offset) for source, sequence, offset in rows}

    def commit(
        self,
        projection: str,
        upserts: Mapping[DocKey, Doc],
        deletes: Iterable[DocKey],
        checkpoints: Iterable[Checkpoint],
    ) -> None:
        self.commit_raw(projection, {item: orjson.dumps(doc) for item, doc in upserts.items()}, deletes, checkpoints)

    def commit_raw(
        self,
        projection: str,
        upserts: Mapping[DocKey, bytes],
        deletes: Iterable[DocKey],
        checkpoints: Iterable[Checkpoint],
    ) -> None:
        """``commit`` with the documents already serialised (``orjson.dumps``)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO rm_docs (projection, kind, key, doc) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (projection, kind, key) DO UPDATE SET doc = excluded.doc",
                [(projection, kind, key, raw) for (kind, key), raw in upserts.items()],
            )
            conn.executemany(
                "DELETE FROM rm_docs WHERE projection = ? AND kind = ? AND key = ?",
                [(projection, kind, key) for kind, key in deletes],
            )
            conn.executemany(
                'INSERT INTO rm_checkpoints (projection, source, sequence, "offset") VALUES (?, ?, ?, ?) '
                "ON CONFLICT (projection, source) DO UPDATE SET sequence = excluded.sequence, "
                '"offset" = excluded."offset"',
                [(projection, m.source, m.sequence, m.offset) for m in checkpoints],
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def reset(self, projection: str) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("DELETE FROM rm_docs WHERE projection = ?", (projection,))
        self._conn.execute("DELETE FROM rm_checkpoints WHERE projection = ?", (projection,))
        self._conn.execute("COMMIT")

    def dump(self, projection: str) -> dict[DocKey, Doc]:
        return {item: orjson.loads(raw) for item, raw in self.dump_raw(projection).items()}

    def dump_raw(self, projection: str) -> dict[DocKey, bytes]:
        """Every document of ``projection`` as stored (JSON bytes)."""
        rows = self._conn.execute("SELECT kind, key, doc FROM rm_docs WHERE projection = ?", (projection,)).fetchall()
        return {(kind, key): bytes(doc) for kind, key, doc in rows}


class JsonFileProjectionStore:
    """Read models kept in memory and saved to one JSON file (sorted keys, atomic replace).

    The file is rewritten on a commit at most every ``flush_s`` seconds and on
    ``close()``; each write holds documents and checkpoints together, so a
    replay interrupted between two writes resumes from the last one. Meant
    for small replays (one partner, a sample); use SQLite or PostgreSQL for a
    whole programme.
    """

    FORMAT = "prm-read-models/1"

    def __init__(self, path: Path | str, *, flush_s: float = 2.0) -> None:
        self.path = Path(path)
        self.flush_s = flush_s
        self._memory = InMemoryProjectionStore()
        self._names: set[str] = set()
        self._dirty = False
        self._flushed_at = time.monotonic()
        if self.path.exists():
            saved = orjson.loads(self.path.read_bytes())
            if saved.get("format") != self.FORMAT:
                raise ValueError(f"{self.path} is not a read-model file ({self.FORMAT})")
            for name, content in saved["projections"].items():
                self._names.add(name)
                self._memory.commit(
                    name,
                    {(kind, key): doc for kind, key, doc in content["docs"]},
                    [],
                    [Checkpoint(s, q, o) for s, q, o in content["checkpoints"]],
                )

    def load(self, projection: str, keys: Iterable[DocKey]) -> dict[DocKey, Doc]:
        return self._memory.load(projection, keys)

    def load_kind(self, projection: str, kind: str) -> dict[str, Doc]:
        return self._memory.load_kind(projection, kind)

    def checkpoints(self, projection: str) -> dict[str, Checkpoint]:
        return self._memory.checkpoints(projection)

    def commit(
        self,
        projection: str,
        upserts: Mapping[DocKey, Doc],
        deletes: Iterable[DocKey],
        checkpoints: Iterable[Checkpoint],
    ) -> None:
        self._memory.commit(projection, upserts, deletes, checkpoints)
        self._names.add(projection)
        self._dirty = True
        if time.monotonic() - self._flushed_at >= self.flush_s:
            self.flush()

    def reset(self, projection: str) -> None:
        self._memory.reset(projection)
        self._names.discard(projection)
        self._dirty = True
        self.flush()

    def dump(self, projection: str) -> dict[DocKey, Doc]:
        return self._memory.dump(projection)

    def flush(self) -> None:
        if not self._dirty and self.path.exists():
            return
        content = {
            "format": self.FORMAT,
            "projections": {
                name: {
                    "docs": [[kind, key, doc] for (kind, key), doc in sorted(self._memory.dump(name).items())],
                    "checkpoints": [
                        [m.source, m.sequence, m.offset] for _, m in sorted(self._memory.checkpoints(name).items())
                    ],
                }
                for name in sorted(self._names)
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_bytes(orjson.dumps(content, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))
        os.replace(temporary, self.path)
        self._dirty = False
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        self.flush()
