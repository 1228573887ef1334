"""A batch of events applied to one projection, committed once with its checkpoints.

Reads and copies
----------------
Documents the store returns are kept in a cache and treated as read-only
snapshots: a reducer is handed a *copy*, made once per document and batch (the
first ``get`` of a key in a batch), so a reducer may change what it got and
``put`` it back. Later ``get``s of the same key in the same batch return that
same copy (or what was ``put``). Reducers therefore never change a document they
got without putting it back in the same event. The copy is a JSON round trip
(documents are JSON by contract, and that is what a database gives back), with
``copy.deepcopy`` as the fallback for a value JSON cannot carry.

A batch's keys can be read up front with one ``store.load`` (:meth:`UnitOfWork.prefetch`,
fed by a projection's optional ``prefetch_keys(event)``); a key no hint named is
still read on its own when first needed.

Modes
-----
* default: other processes may write the same store (Kafka workers of other
  partitions), so the cache and the working copies are dropped at every commit
  and each batch reads (and copies) afresh;
* ``exclusive=True``: nobody else writes this projection in this store while the
  unit lives (a rebuild, a replay, the embedded projector): what was read or
  committed stays known across batches, and the *working copies* -- the
  documents handed to reducers, and the documents they ``put`` -- are kept
  across commits and handed out again as they are, without a new copy (see
  below); ``keep=N`` bounds them to the ``N`` most recently used (an LRU): an
  evicted document is read back from the store (and copied) when next needed,
  and the store snapshots are then dropped at each commit as in the default
  mode, so the unit's memory stays bounded whatever the size of the history;
* ``complete=True`` (implies ``exclusive``): in addition, the store held no
  document of this projection when the unit was created (a rebuild after
  ``reset``), so a key that is not known does not exist and nothing is ever read
  -- until ``keep`` evicts a document: from then on, unknown keys are read.

Why a working copy may outlive its batch (``exclusive``)
--------------------------------------------------------
A kept copy is reused only if its content is, at every commit, exactly what the
store holds for its key. That holds because:

* reducers keep no reference to a document past the event that got it, and
  never change a document they got without ``put``-ting it back in the same
  event (audited: ``CommissionLedger``, ``ChannelConflicts``, ``Dashboards``), so
  a copy that was got and not put is unchanged, and one that was put is what
  the commit wrote;
* the store keeps its own serialisation or copy of what it is given at commit,
  never the object itself: ``CachedStore`` and ``SqliteProjectionStore`` store
  ``orjson.dumps`` bytes, ``PostgresProjectionStore`` sends one ``orjson``
  array, ``InMemoryProjectionStore`` (and the JSON file store over it) store a
  ``copy_doc``; so changing a kept copy later never changes the store, and
  nothing but this unit writes the projection;
* a batch that fails (a reducer raises, the commit raises) leaves its copies
  possibly changed but uncommitted: the unit must then be dropped, not committed
  or used again. The replay and ``run_projections`` let the error end the run (a
  new run makes new units and resumes from the committed checkpoints).

The Kafka workers share a store with other writers, yet keep copies across batches:
each batch is a new exclusive unit, under the projection's lock, that
adopts (:meth:`UnitOfWork.adopt`) what the previous unit of the same lock kept, less the
documents another writer changed meanwhile (the store's revisions say which:
``PostgresProjectionStore.changes_since``); a failed batch's unit is dropped with
its copies (``consumers.worker.ReadModelWriter``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping

import orjson

from projections.envelope import EventEnvelope
from projections.port import Checkpoint, Doc, DocKey, Projection, ProjectionStore, prefetcher

_DELETED: Doc = {}


def copy_doc(doc: Doc) -> Doc:
    """A deep copy of a JSON document (a JSON round trip; ``copy.deepcopy`` for what JSON cannot carry).

    A store's own document type (a ``dict`` subclass, such as the replay cache's,
    which keeps the bytes it was parsed from) is copied by its ``__deepcopy__``.
    """
    if type(doc) is not dict:
        return copy.deepcopy(doc)
    try:
        copied: Doc = orjson.loads(orjson.dumps(doc))
    except TypeError:  # orjson.JSONEncodeError: a tuple key, an int above 64 bits, a non-JSON value
        return copy.deepcopy(doc)
    return copied


class UnitOfWork:
    """Implements ``ReadView`` over a store with an overlay of uncommitted changes."""

    def __init__(
        self,
        store: ProjectionStore,
        projection: str,
        *,
        exclusive: bool = False,
        complete: bool = False,
        keep: int | None = None,
    ) -> None:
        self.exclusive = exclusive or complete
        if keep is not None and (keep < 0 or not self.exclusive):
            raise ValueError("keep: a number >= 0, for an exclusive unit only")
        self.store = store
        self.projection = projection
        self.complete = complete
        self.keep = keep
        self._overlay: dict[DocKey, Doc] = {}
        self._working: dict[DocKey, Doc] = {}  # this batch's working copies
        self._kept: OrderedDict[DocKey, Doc] = OrderedDict()  # exclusive: earlier batches' copies, oldest use first
        self._cache: dict[DocKey, Doc | None] = {}
        self._absent: set[DocKey] = set()  # exclusive and bounded: keys known not to exist, across batches
        self._known: dict[str, set[str]] = {}  # adopted: every key of these kinds (any other does not exist)
        self._kinds_loaded: set[str] = set()
        self._checkpoints = dict(store.checkpoints(projection))
        self._moved: dict[str, Checkpoint] = {}
        self.copies = 0
        """Documents copied so far (a store read handed to a reducer); kept copies are not copied again."""

    # ---- ReadView -------------------------------------------------------
    def get(self, kind: str, key: str) -> Doc | None:
        item = (kind, key)
        doc = self._overlay.get(item)
        if doc is not None:
            return None if doc is _DELETED else doc
        doc = self._working.get(item)
        if doc is not None:
            return doc
        if self._kept:
            doc = self._kept.pop(item, None)
            if doc is not None:
                self._working[item] = doc
                return doc
        if item in self._absent:
            return None
        if self._known:
            known = self._known.get(kind)
            if known is not None and key not in known:
                return None
        if item in self._cache:
            cached = self._cache[item]
        elif self.complete or kind in self._kinds_loaded:
            cached = self._cache[item] = None
        else:
            cached = self._cache[item] = self.store.load(self.projection, [item]).get(item)
        if cached is None:
            return None
        self.copies += 1
        doc = self._working[item] = copy_doc(cached)
        return doc

    def scan(self, kind: str) -> Iterator[tuple[str, Doc]]:
        if kind not in self._kinds_loaded and not self.complete:
            for key, doc in self.store.load_kind(self.projection, kind).items():
                self._cache.setdefault((kind, key), doc)
            self._kinds_loaded.add(kind)
        keys = {k for (c, k) in self._cache if c == kind}
        keys.update(k for (c, k) in self._overlay if c == kind)
        keys.update(k for (c, k) in self._working if c == kind)
        keys.update(k for (c, k) in self._kept if c == kind)
        for key in sorted(keys):
            found = self.get(kind, key)
            if found is not None:
                yield key, found

    def put(self, kind: str, key: str, doc: Doc) -> None:
        self._overlay[(kind, key)] = doc

    def delete(self, kind: str, key: str) -> None:
        self._overlay[(kind, key)] = _DELETED

    # ---- reads ahead ----------------------------------------------------
    def prefetch(self, keys: Iterable[DocKey]) -> int:
        """Read the documents of ``keys`` not known yet with one ``store.load``; returns how many keys were asked."""
        if self.complete:
            return 0
        wanted = sorted(
            {
                item
                for item in keys
                if item not in self._cache
                and item not in self._overlay
                and item not in self._working
                and item not in self._kept
                and item not in self._absent
                and (item[0] not in self._known or item[1] in self._known[item[0]])
                and item[0] not in self._kinds_loaded
            }
        )
        if not wanted:
            return 0
        found = self.store.load(self.projection, wanted)
        for item in wanted:
            self._cache[item] = found.get(item)
        return len(wanted)

    def prefetch_events(self, projection: Projection, events: Iterable[EventEnvelope], source: str) -> int:
        """:meth:`prefetch` the keys that ``projection`` names for the ``events`` it will apply (if it names any)."""
        hint = prefetcher(projection)
        if self.complete or hint is None:
            return 0
        keys: list[DocKey] = []
        for event in events:
            if not self.seen(source, event.sequence) and projection.handles(event):
                keys.extend(hint(event))
        return self.prefetch(keys)

    # ---- batch ----------------------------------------------------------
    def seen(self, source: str, sequence: int) -> bool:
        """Whether an event with ``sequence`` from ``source`` was already applied."""
        checkpoint = self.checkpoint(source)
        return checkpoint is not None and sequence <= checkpoint.sequence

    def checkpoint(self, source: str) -> Checkpoint | None:
        """The checkpoint of ``source`` as this unit knows it (committed, or moved in this batch)."""
        return self._moved.get(source) or self._checkpoints.get(source)

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
        if self.exclusive:
            self._keep_working_copies(upserts, deletes)
        else:
            # Other workers may write the same store: read afresh in the next batch.
            self._cache = {}
            self._kinds_loaded = set()
            self._working = {}
        self._checkpoints.update(self._moved)
        self._overlay = {}
        self._moved = {}

    # ---- working copies across units ------------------------------------
    @property
    def kept(self) -> OrderedDict[DocKey, Doc]:
        """Exclusive: the working copies kept after the last commit (an LRU, oldest use first)."""
        return self._kept

    @property
    def absent(self) -> set[DocKey]:
        """Exclusive and bounded (``keep``): keys known, after the last commit, not to exist in the store."""
        return self._absent

    @property
    def known(self) -> dict[str, set[str]]:
        """Kinds whose every key is known (see :meth:`adopt`), kept up to date by each commit."""
        return self._known

    def adopt(
        self,
        kept: OrderedDict[DocKey, Doc],
        absent: set[DocKey] | None = None,
        known: dict[str, set[str]] | None = None,
    ) -> None:
        """Start from the working copies another unit of this projection kept (:attr:`kept`), before any read.

        For a writer that holds the projection's lock batch after batch but builds a new
        unit each time (the Kafka workers): what it kept is, as of its last commit, what
        the store held, provided the caller first drops every key that another writer
        changed since (``PostgresProjectionStore.changes_since``). The same holds for the
        keys it knew to be missing (:attr:`absent`), and for ``known``: every key of those
        kinds that exists (a projection's ``sparse_kinds``, looked up far more often than
        they exist). Any other key is read from the store (the unit is not ``complete``).
        """
        if not self.exclusive or self._working or self._overlay:
            raise ValueError("adopt: an exclusive unit, before it is used")
        self._kept = kept
        self._absent = absent if absent is not None else set()
        self._known = known if known is not None else {}
        self.complete = False

    def _keep_working_copies(self, upserts: Mapping[DocKey, Doc], deletes: Iterable[DocKey]) -> None:
        """After a commit, exclusive: keep this batch's copies (and what was put) for the next batches.

        Nobody else writes this projection, and the store keeps its own serialisation or copy
        of what it was given (see the module's docstring): every kept object is, as of this
        commit, exactly what the store holds for its key, and no reducer holds it any more.
        """
        working = self._working
        kept = self._kept
        cache = self._cache
        absent = self._absent
        known = self._known
        for item in deletes:
            working.pop(item, None)
            kept.pop(item, None)
            cache[item] = None
            if item[0] in known:
                known[item[0]].discard(item[1])
        for item, doc in upserts.items():
            kept.pop(item, None)
            absent.discard(item)
            working[item] = doc
            if item[0] in known:
                known[item[0]].add(item[1])
        # This batch's documents become the most recently used (a kept copy that was got was moved
        # out of ``kept`` by ``get``); their store snapshots are no longer needed.
        for item in working:
            cache.pop(item, None)
        kept.update(working)
        self._working = {}
        if self.keep is None:
            return
        evicted = len(kept) - self.keep
        for _ in range(evicted):
            kept.popitem(last=False)
        if evicted > 0:
            # An evicted document exists in the store but is no longer known here: read it when needed.
            self.complete = False
        if not self.complete:
            # Bounded: store snapshots live for one batch, as in the default mode; only the kept
            # copies (at most ``keep``) survive, and the keys found missing (at most ``4 * keep``,
            # then forgotten all at once: reading a key again is only slower).
            absent.update(item for item, doc in cache.items() if doc is None)
            if len(absent) > 4 * max(self.keep, 1_000):
                absent.clear()
            self._cache = {}
            self._kinds_loaded = set()
