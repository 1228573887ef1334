"""An exclusive unit of work keeps its working copies across batches, at most ``keep`` of them (an LRU).

A kept copy is handed out again without a read or a copy; an evicted one is read
back from the store and copied. Whatever ``keep`` and the batch size, the read
models are the same as a shared (default-mode) fold, and a replay into a cached
SQLite target gives the same ledger.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from projections.envelope import EventEnvelope
from projections.ledger import CommissionLedger
from projections.memory import InMemoryProjectionStore
from projections.replay import open_target, replay
from projections.runner import run_projections
from projections.unit_of_work import UnitOfWork
from tests.unit.test_fold_unit_of_work import CountingStore, Totals, fold, projections, sale, sample

__all__ = ["sample"]  # the module-scoped fixture, shared with the fold tests


def test_a_kept_copy_is_handed_out_again_without_a_read_or_a_copy() -> None:
    store = CountingStore()
    store.commit("p", {("k", "a"): {"items": [1]}}, [], [])
    unit = UnitOfWork(store, "p", exclusive=True)
    first = unit.get("k", "a")
    assert first == {"items": [1]} and unit.copies == 1
    unit.commit()  # got, not put: unchanged, still what the store holds
    assert unit.get("k", "a") is first and unit.copies == 1
    first["items"].append(2)
    unit.put("k", "a", first)
    unit.commit()
    again = unit.get("k", "a")
    assert again is first and unit.copies == 1 and len(store.loads) == 1
    # the store keeps its own copy of what was committed
    again["items"].append(3)
    assert store.load("p", [("k", "a")])[("k", "a")] == {"items": [1, 2]}


def test_what_a_batch_puts_is_kept_without_a_copy() -> None:
    store = CountingStore()
    unit = UnitOfWork(store, "p", exclusive=True, keep=10)
    created = {"n": 1}
    unit.put("k", "new", created)
    unit.commit()
    assert unit.get("k", "new") is created and unit.copies == 0
    assert store.load("p", [("k", "new")]) == {("k", "new"): {"n": 1}}


def test_the_least_recently_used_copy_is_evicted_and_read_back() -> None:
    store = CountingStore()
    store.commit("p", {("k", name): {"name": name} for name in "abc"}, [], [])
    unit = UnitOfWork(store, "p", exclusive=True, keep=2)
    a, b = unit.get("k", "a"), unit.get("k", "b")
    unit.commit()
    assert unit.get("k", "a") is a  # a is now the most recently used
    c = unit.get("k", "c")
    unit.commit()  # a, b, c: b (oldest use) is evicted
    assert unit.get("k", "a") is a and unit.get("k", "c") is c and unit.copies == 3
    reads = len(store.loads)
    again = unit.get("k", "b")
    assert again == {"name": "b"} and again is not b and unit.copies == 4 and len(store.loads) == reads + 1


def test_a_bounded_unit_keeps_at_most_keep_copies_and_no_snapshots() -> None:
    store = InMemoryProjectionStore()
    unit = UnitOfWork(store, "totals", exclusive=True, keep=5)
    for batch in range(10):
        for n in range(20):
            sequence = batch * 20 + n + 1
            unit.apply(Totals(), sale(sequence, partner=f"P-{sequence % 37}"), "store")
        unit.commit()
        assert len(unit._kept) <= 5 and not unit._cache and not unit._working
    totals = store.dump("totals")
    assert sum(doc["sales"] for doc in totals.values()) == 200 and len(totals) == 37


def test_deletes_drop_the_kept_copy_and_scan_sees_kept_documents() -> None:
    store = CountingStore()
    store.commit("p", {("k", "a"): {"x": 1}, ("k", "b"): {"x": 2}}, [], [])
    unit = UnitOfWork(store, "p", exclusive=True, keep=10)
    assert unit.get("k", "a") == {"x": 1}
    unit.put("k", "c", {"x": 3})
    unit.commit()
    assert dict(unit.scan("k")) == {"a": {"x": 1}, "b": {"x": 2}, "c": {"x": 3}}
    unit.delete("k", "a")
    unit.commit()
    assert unit.get("k", "a") is None and dict(unit.scan("k")) == {"b": {"x": 2}, "c": {"x": 3}}
    assert store.dump("p") == {("k", "b"): {"x": 2}, ("k", "c"): {"x": 3}}


def test_a_complete_unit_reads_nothing_until_it_evicts() -> None:
    store = CountingStore()
    unit = UnitOfWork(store, "p", complete=True, keep=1)
    unit.put("k", "a", {"x": 1})
    unit.commit()
    assert unit.get("k", "a") == {"x": 1} and unit.get("k", "missing") is None
    assert store.loads == [] and unit.complete
    unit.put("k", "b", {"x": 2})
    unit.commit()  # a is evicted: it exists in the store, unknown here
    assert not unit.complete
    assert unit.get("k", "a") == {"x": 1} and store.loads == [[("k", "a")]]
    assert unit.get("k", "missing") is None


def test_keep_is_for_exclusive_units_only() -> None:
    with pytest.raises(ValueError):
        UnitOfWork(InMemoryProjectionStore(), "p", keep=10)
    with pytest.raises(ValueError):
        UnitOfWork(InMemoryProjectionStore(), "p", exclusive=True, keep=-1)


@pytest.mark.parametrize("keep", [0, 3, 40, None])
def test_any_bound_gives_the_same_read_models(sample: list[EventEnvelope], keep: int | None) -> None:
    reference = fold(sample, batch_size=500)
    assert fold(sample, batch_size=61, exclusive=True, keep=keep) == reference
    assert fold(sample, batch_size=7, rebuild=True, keep=keep) == reference


def test_a_resumed_bounded_run_continues_from_the_checkpoints(sample: list[EventEnvelope]) -> None:
    store = InMemoryProjectionStore()
    half = len(sample) // 2
    run_projections(store, projections(), sample[:half], batch_size=90, rebuild=True, keep=4)
    stats = run_projections(store, projections(), sample, batch_size=90, exclusive=True, keep=4)
    assert stats.skipped == half and stats.applied == len(sample) - half
    assert {p.name: store.dump(p.name) for p in projections()} == fold(sample, batch_size=500)


def test_replays_with_any_bound_and_batch_size_give_the_same_sqlite_bytes(
    sample: list[EventEnvelope],
    tmp_path: Path,
) -> None:
    dumps = []
    for n, (batch_size, keep) in enumerate(((500, 20_000), (13, 0), (101, 7), (1, 50))):
        target = open_target(str(tmp_path / f"r{n}.sqlite"))
        replay(sample, target.store, [CommissionLedger()], batch_size=batch_size, keep=keep)
        target.close()
        raw = open_target(str(tmp_path / f"r{n}.sqlite"), cached=False)
        store = raw.store
        dumps.append(store.dump_raw("ledger"))  # type: ignore[attr-defined]
        raw.close()
    assert dumps[0] and all(dump == dumps[0] for dump in dumps)


def test_reducers_never_change_a_document_without_putting_it_back(sample: list[EventEnvelope]) -> None:
    """What makes kept copies safe: after every commit, each kept copy is exactly what the store holds.

    A reducer that changed a document it got without ``put``-ting it back would leave a kept copy
    that differs from the store (and a later batch would build on the unstored change).
    """
    store = InMemoryProjectionStore()
    chosen = projections()
    units = {p.name: UnitOfWork(store, p.name, exclusive=True) for p in chosen}
    batch_size = max(1, len(sample) // 12)
    for start in range(0, len(sample), batch_size):
        for projection in chosen:
            unit = units[projection.name]
            for event in sample[start : start + batch_size]:
                unit.apply(projection, event, "store")
            unit.commit()
            kept = dict(unit._kept)
            assert kept and store.load(projection.name, kept) == kept, projection.name
