"""The unit of work's reads and copies, and the runner's modes: the same read models, fewer reads.

``run_projections`` over the recorded sample programme gives the same documents
whatever the batch size and mode (``shared``: the cache is dropped at every
commit; ``exclusive``: it is kept; ``rebuild``: nothing is read back at all).
The counting store checks that a rebuild never reads and that a shared run reads
in bulk what the projections name in ``prefetch_keys``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from api.sample import generate, run_commands
from projections.conflicts import ChannelConflicts
from projections.dashboards import Dashboards
from projections.envelope import EventEnvelope
from projections.ledger import CommissionLedger
from projections.memory import InMemoryProjectionStore
from projections.port import Checkpoint, Doc, DocKey, Projection
from projections.runner import run_projections
from projections.store_reader import read_store
from projections.unit_of_work import UnitOfWork, copy_doc
from tests.helpers import Totals
from tests.helpers import sale_envelope as sale
from tests.unit.conftest import new_app


@pytest.fixture(scope="module")
def sample() -> list[EventEnvelope]:
    app = new_app()
    try:
        run_commands(app, generate(seed=5, scale=1))
        return list(read_store(app))
    finally:
        app.close()


def projections() -> list[Projection]:
    return [CommissionLedger(), ChannelConflicts(), Dashboards()]


def fold(events: list[EventEnvelope], **options: Any) -> dict[str, dict[DocKey, Doc]]:
    store = InMemoryProjectionStore()
    run_projections(store, projections(), events, **options)
    return {p.name: store.dump(p.name) for p in projections()}


class CountingStore(InMemoryProjectionStore):
    """An in-memory store that records every read."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[list[DocKey]] = []
        self.kind_loads: list[str] = []

    def load(self, projection: str, keys: Iterable[DocKey]) -> dict[DocKey, Doc]:
        wanted = list(keys)
        self.loads.append(wanted)
        return super().load(projection, wanted)

    def load_kind(self, projection: str, kind: str) -> dict[str, Doc]:
        self.kind_loads.append(kind)
        return super().load_kind(projection, kind)


# ---- same read models in every mode -------------------------------------------------
def test_every_mode_and_batch_size_gives_the_same_read_models(sample: list[EventEnvelope]) -> None:
    reference = fold(sample, batch_size=500)
    assert reference["conflicts"] and reference["ledger"] and reference["dashboards"]
    assert fold(sample, batch_size=37) == reference
    assert fold(sample, batch_size=211, exclusive=True) == reference
    assert fold(sample, batch_size=5000, rebuild=True) == reference
    assert fold(sample, batch_size=1, rebuild=True) == reference


def test_a_rebuild_resets_what_the_store_held(sample: list[EventEnvelope]) -> None:
    store = InMemoryProjectionStore()
    run_projections(store, projections(), sample[: len(sample) // 2], batch_size=100)
    store.commit("dashboards", {("partner", "P-GHOST"): {"stale": True}}, [], [Checkpoint("store", 10**9)])
    run_projections(store, projections(), sample, batch_size=300, rebuild=True)
    assert {p.name: store.dump(p.name) for p in projections()} == fold(sample, batch_size=500)


def test_a_resumed_exclusive_run_continues_from_the_checkpoints(sample: list[EventEnvelope]) -> None:
    store = InMemoryProjectionStore()
    half = len(sample) // 2
    run_projections(store, projections(), sample[:half], batch_size=250, rebuild=True)
    stats = run_projections(store, projections(), sample, batch_size=250, exclusive=True)
    assert stats.skipped == half and stats.applied == len(sample) - half
    assert {p.name: store.dump(p.name) for p in projections()} == fold(sample, batch_size=500)


# ---- reads ---------------------------------------------------------------------------
def test_a_rebuild_reads_nothing_from_the_store(sample: list[EventEnvelope]) -> None:
    store = CountingStore()
    run_projections(store, projections(), sample, batch_size=400, rebuild=True)
    assert store.loads == [] and store.kind_loads == []


def test_a_shared_run_reads_what_prefetch_keys_names_in_one_load_per_batch(sample: list[EventEnvelope]) -> None:
    store = CountingStore()
    batch = 300
    run_projections(store, [Dashboards()], sample, batch_size=batch)
    batches = -(-len(sample) // batch)
    # Dashboards names every document it reads: one bulk read per batch, never a single-key read.
    assert 0 < len(store.loads) <= batches
    assert all(len(keys) > 1 for keys in store.loads)


def test_prefetch_covers_most_reads_of_the_conflicts(sample: list[EventEnvelope]) -> None:
    store = CountingStore()
    run_projections(store, [ChannelConflicts()], sample, batch_size=300)
    bulk = sum(len(keys) for keys in store.loads if len(keys) > 1)
    singles = sum(1 for keys in store.loads if len(keys) == 1)
    assert bulk > 0 and singles < bulk


def test_the_exclusive_cache_survives_commits() -> None:
    store = CountingStore()
    unit = UnitOfWork(store, "totals", exclusive=True)
    unit.apply(Totals(), sale(1), "store")
    unit.commit()
    reads = len(store.loads)
    unit.apply(Totals(), sale(2), "store")
    unit.commit()
    assert len(store.loads) == reads
    assert store.load("totals", [("partner", "P-1")]) == {("partner", "P-1"): {"revenue": 20, "sales": 2}}


def test_the_shared_cache_is_read_afresh_after_a_commit_by_someone_else() -> None:
    store = InMemoryProjectionStore()
    unit = UnitOfWork(store, "totals")
    unit.apply(Totals(), sale(1), "store")
    unit.commit()
    store.commit("totals", {("partner", "P-1"): {"revenue": 100, "sales": 5}}, [], [])  # another worker
    unit.apply(Totals(), sale(2), "store")
    unit.commit()
    assert store.load("totals", [("partner", "P-1")])[("partner", "P-1")] == {"revenue": 110, "sales": 6}


def test_prefetch_asks_once_for_unknown_keys_only() -> None:
    store = CountingStore()
    store.commit("p", {("k", "a"): {"x": 1}}, [], [])
    unit = UnitOfWork(store, "p")
    assert unit.prefetch([("k", "a"), ("k", "b"), ("k", "a")]) == 2
    assert unit.prefetch([("k", "a"), ("k", "b")]) == 0
    assert unit.get("k", "a") == {"x": 1} and unit.get("k", "b") is None
    assert store.loads == [[("k", "a"), ("k", "b")]]
    assert UnitOfWork(store, "p", complete=True).prefetch([("k", "a")]) == 0


def test_a_complete_unit_knows_missing_keys_without_asking() -> None:
    store = CountingStore()
    unit = UnitOfWork(store, "p", complete=True)
    assert unit.get("k", "a") is None
    assert list(unit.scan("k")) == []
    unit.put("k", "b", {"y": 1})
    assert list(unit.scan("k")) == [("b", {"y": 1})]
    unit.commit()
    assert unit.get("k", "b") == {"y": 1} and list(unit.scan("k")) == [("b", {"y": 1})]
    unit.delete("k", "b")
    unit.commit()
    assert unit.get("k", "b") is None and list(unit.scan("k")) == []
    assert store.loads == [] and store.kind_loads == []


# ---- copies --------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}])
def test_a_document_is_copied_once_per_batch_and_the_store_never_shares_it(options: Mapping[str, Any]) -> None:
    # The default (shared) mode. An exclusive unit keeps its copies across batches instead
    # (tests/unit/test_unit_of_work_lru.py).
    store = InMemoryProjectionStore()
    store.commit("p", {("k", "a"): {"items": [1]}}, [], [])
    unit = UnitOfWork(store, "p", **options)
    first = unit.get("k", "a")
    assert first is not None and unit.get("k", "a") is first  # the same copy within the batch
    first["items"].append(2)  # changed without a put: the store and the next batch do not see it
    assert store.load("p", [("k", "a")])[("k", "a")] == {"items": [1]}
    unit.commit()
    again = unit.get("k", "a")
    assert again == {"items": [1]} and again is not first
    again["items"].append(3)
    unit.put("k", "a", again)
    unit.commit()
    again["items"].append(4)  # (reducers keep no reference past a commit; the store has its own copy anyway)
    assert store.load("p", [("k", "a")])[("k", "a")] == {"items": [1, 3]}
    fresh = UnitOfWork(store, "p", **options).get("k", "a")
    assert fresh == {"items": [1, 3]}


def test_copy_doc_is_a_json_copy_and_falls_back_to_deepcopy() -> None:
    doc: Doc = {"a": [1, {"b": 'é"\\'}], "n": None, "f": 0.1, "big": 2**63 - 1}
    copied = copy_doc(doc)
    assert copied == doc and copied is not doc and copied["a"] is not doc["a"]
    odd: Doc = {"huge": 2**70, "t": (1, 2)}
    assert copy_doc(odd) == odd


def test_the_runner_applies_each_event_once_per_projection_in_batches() -> None:
    events = [sale(i, partner=f"P-{i % 3}", amount=i) for i in range(1, 51)]
    store = InMemoryProjectionStore()
    seen: list[int] = []
    stats = run_projections(store, [Totals()], events, batch_size=7, progress=seen.append)
    assert (stats.seen, stats.applied, stats.skipped, stats.last_sequence) == (50, 50, 0, 50)
    assert seen == [7, 14, 21, 28, 35, 42, 49, 50]
    again = run_projections(store, [Totals()], [*events[40:], dataclasses.replace(events[0], sequence=51)])
    assert (again.applied, again.skipped) == (1, 10)
