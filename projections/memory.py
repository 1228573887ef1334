"""In-memory projection store: unit tests and the embedded mode.

Documents are copied in and out (a JSON round trip, :func:`projections.unit_of_work.copy_doc`),
so the store holds what a database would: nobody outside changes a stored document.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from projections.port import Checkpoint, Doc, DocKey
from projections.unit_of_work import copy_doc


class InMemoryProjectionStore:
    def __init__(self) -> None:
        self._docs: dict[str, dict[DocKey, Doc]] = {}
        self._checkpoints: dict[str, dict[str, Checkpoint]] = {}
        self._lock = threading.Lock()

    def load(self, projection: str, keys: Iterable[DocKey]) -> dict[DocKey, Doc]:
        docs = self._docs.get(projection, {})
        with self._lock:
            return {k: copy_doc(docs[k]) for k in keys if k in docs}

    def load_kind(self, projection: str, kind: str) -> dict[str, Doc]:
        with self._lock:
            docs = self._docs.get(projection, {})
            return {key: copy_doc(doc) for (c, key), doc in docs.items() if c == kind}

    def checkpoints(self, projection: str) -> dict[str, Checkpoint]:
        with self._lock:
            return dict(self._checkpoints.get(projection, {}))

    def commit(
        self,
        projection: str,
        upserts: Mapping[DocKey, Doc],
        deletes: Iterable[DocKey],
        checkpoints: Iterable[Checkpoint],
    ) -> None:
        with self._lock:
            docs = self._docs.setdefault(projection, {})
            for key, doc in upserts.items():
                docs[key] = copy_doc(doc)
            for key in deletes:
                docs.pop(key, None)
            marks = self._checkpoints.setdefault(projection, {})
            for checkpoint in checkpoints:
                marks[checkpoint.source] = checkpoint

    def reset(self, projection: str) -> None:
        with self._lock:
            self._docs.pop(projection, None)
            self._checkpoints.pop(projection, None)

    def dump(self, projection: str) -> dict[DocKey, Doc]:
        """Every document of ``projection`` (for comparisons in tests and audits)."""
        with self._lock:
            return {key: copy_doc(doc) for key, doc in self._docs.get(projection, {}).items()}
