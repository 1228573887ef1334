"""A batch of events applied to one projection, committed once with its checkpoints."""

from __future__ import annotations

import copy
from collections.abc import Iterator

from projections.envelope import EventEnvelope
from projections.port import Checkpoint, Doc, DocKey, Projection, ProjectionStore

_DELETED: Doc = {}


class UnitOfWork:
    """Implements ``ReadView`` over a store with an overlay of uncommitted changes."""

    def __init__(self, store: ProjectionStore, projection: str) -> None:
        self.store = store
        self.projection = projection
        self._overlay: dict[DocKey, Doc] = {}
        self._cache: dict[DocKey, Doc | None] = {}
        self._kinds_loaded: set[str] = set()
        self._checkpoints = dict(store.checkpoints(projection))
        self._moved: dict[str, Checkpoint] = {}

    # ---- ReadView -------------------------------------------------------
    def get(self, kind: str, key: str) -> Doc | None:
        item = (kind, key)
        if item in self._overlay:
            doc = self._overlay[item]
            return None if doc is _DELETED else doc
        if item not in self._cache:
            if kind in self._kinds_loaded:
                self._cache[item] = None
            else:
                self._cache[item] = self.store.load(self.projection, [item]).get(item)
        cached = self._cache[item]
        return copy.deepcopy(cached) if cached is not None else None

    def scan(self, kind: str) -> Iterator[tuple[str, Doc]]:
        if kind not in self._kinds_loaded:
            for key, doc in self.store.load_kind(self.projection, kind).items():
                self._cache.setdefault((kind, key), doc)
            self._kinds_loaded.add(kind)
        keys = {k for (c, k) in self._cache if c == kind} | {k for (c, k) in self._overlay if c == kind}
        for key in sorted(keys):
            found = self.get(kind, key)
            if found is not None:
                yield key, found

    def put(self, kind: str, key: str, doc: Doc) -> None:
        self._overlay[(kind, key)] = doc

    def delete(self, kind: str, key: str) -> None:
        self._overlay[(kind, key)] = _DELETED

    # ---- batch ----------------------------------------------------------
    def seen(self, source: str, sequence: int) -> bool:
        """Whether an event with ``sequence`` from ``source`` was already applied."""
        checkpoint = self._moved.get(source) or self._checkpoints.get(source)
        return checkpoint is not None and sequence <= checkpoint.sequence

    def advance(self, source: str, sequence: int, offset: int | None = None) -> None:
        self._moved[source] = Checkpoint(source, sequence, offset)

    def apply(self, projection: Projection, event: EventEnvelope, source: str, offset: int | None = None) -> bool:
        """Apply one event unless already applied from this source. Returns whether it was applied."""
        if self.seen(source, event.sequence):
            return False
        if projection.handles(event):
            projection.apply(event, self)
        self.advance(source, event.sequence, offset)
        return True

    def commit(self) -> None:
        upserts = {k: v for k, v in self._overlay.items() if v is not _DELETED}
        deletes = [k for k, v in self._overlay.items() if v is _DELETED]
        self.store.commit(self.projection, upserts, deletes, self._moved.values())
        # Other workers may write the same store: read afresh in the next batch.
        self._cache = {}
        self._kinds_loaded = set()
        self._checkpoints.update(self._moved)
        self._overlay = {}
        self._moved = {}
