"""The projection port: reducers read documents through a view and return changes.

A projection is a deterministic reducer: ``apply(event, view) -> None`` reads
the current documents it needs from ``view`` and writes new ones back to it
(``put``/``delete``). The view is a unit of work: the changes of a whole batch
of events, and the tracking of where that batch ended, are committed to the
store in one transaction, so a redelivered event is a no-op.

Documents are JSON objects identified by ``(kind, key)`` within one projection.
Tracking is per *source* (``store`` for the event store's log,
``kafka:<topic>:<partition>`` for a Kafka partition): the highest event-store
position (``sequence``) applied from that source. Within one source the
sequence only grows, except for re-published duplicates, which are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from projections.envelope import EventEnvelope

Doc = dict[str, Any]
DocKey = tuple[str, str]


class ReadView(Protocol):
    """What a reducer may read and write while it applies one event."""

    def get(self, kind: str, key: str) -> Doc | None: ...

    def scan(self, kind: str) -> Iterator[tuple[str, Doc]]:
        """Every document of ``kind`` (key, doc), in key order, including uncommitted changes."""
        ...

    def put(self, kind: str, key: str, doc: Doc) -> None: ...

    def delete(self, kind: str, key: str) -> None: ...


class Projection(Protocol):
    """A named, deterministic reducer over recorded events."""

    name: str

    def handles(self, event: EventEnvelope) -> bool: ...

    def apply(self, event: EventEnvelope, view: ReadView) -> None: ...


class Prefetching(Protocol):
    """Optional for a projection: the documents it will read for an event, so a batch reads them at once.

    A hint only: a key it names that the reducer does not read costs a row in
    the batch's read; a key it omits is read on its own when the reducer asks.
    """

    def prefetch_keys(self, event: EventEnvelope) -> Iterable[DocKey]: ...


def prefetcher(projection: Projection) -> Callable[[EventEnvelope], Iterable[DocKey]] | None:
    """The projection's ``prefetch_keys`` if it has one."""
    hint: Callable[[EventEnvelope], Iterable[DocKey]] | None = getattr(projection, "prefetch_keys", None)
    return hint


@dataclass(frozen=True)
class Checkpoint:
    source: str
    sequence: int
    offset: int | None = None


class ProjectionStore(Protocol):
    """Storage of documents and checkpoints for any number of projections."""

    def load(self, projection: str, keys: Iterable[DocKey]) -> dict[DocKey, Doc]:
        """The committed documents for ``keys`` (missing keys are absent)."""
        ...

    def load_kind(self, projection: str, kind: str) -> dict[str, Doc]:
        """Every committed document of ``kind``."""
        ...

    def checkpoints(self, projection: str) -> dict[str, Checkpoint]: ...

    def commit(
        self,
        projection: str,
        upserts: Mapping[DocKey, Doc],
        deletes: Iterable[DocKey],
        checkpoints: Iterable[Checkpoint],
    ) -> None:
        """Apply the changes and move the checkpoints, atomically."""
        ...

    def reset(self, projection: str) -> None:
        """Forget every document and checkpoint of ``projection`` (rebuild from scratch)."""
        ...
