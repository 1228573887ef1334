"""A unit that adopts what an earlier unit kept: its copies, the keys it found missing, and known kinds' keys.

This is how the Kafka workers carry documents from batch to batch
(``consumers.worker.ReadModelWriter``); whether other writers changed them is the
store's revisions' business (tests/integration/test_read_model_revisions.py).
Here: what each adopted piece saves in reads, and that it stays true after the
unit's own commits.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest

from projections.unit_of_work import UnitOfWork
from tests.unit.test_fold_unit_of_work import CountingStore


def next_unit(store: CountingStore, previous: UnitOfWork | None, keep: int = 10) -> UnitOfWork:
    unit = UnitOfWork(store, "p", exclusive=True, keep=keep)
    if previous is None:
        unit.adopt(OrderedDict(), set(), {"sparse": set()})
    else:
        unit.adopt(previous.kept, previous.absent, previous.known)
    return unit


def test_kept_copies_and_missing_keys_are_not_read_again() -> None:
    store = CountingStore()
    store.commit("p", {("k", "a"): {"n": 1}}, [], [])
    first = next_unit(store, None)
    assert first.get("k", "a") == {"n": 1}
    assert first.get("k", "nope") is None
    first.commit()
    reads = len(store.loads)
    second = next_unit(store, first)
    assert second.get("k", "a") == {"n": 1} and second.get("k", "nope") is None
    assert len(store.loads) == reads and second.copies == 0
    # A missing key that gets written is missing no more, for this unit and the next.
    second.put("k", "nope", {"n": 2})
    second.commit()
    third = next_unit(store, second)
    assert third.get("k", "nope") == {"n": 2} and len(store.loads) == reads


def test_a_known_kind_is_never_read_for_a_key_it_does_not_hold() -> None:
    store = CountingStore()
    first = next_unit(store, None, keep=0)  # keeps no copy: "x" will be read again, "y" never
    assert first.get("sparse", "x") is None and first.get("sparse", "y") is None
    assert store.loads == []
    first.put("sparse", "x", {"v": 1})
    first.commit()
    assert first.known == {"sparse": {"x"}}
    second = next_unit(store, first, keep=0)
    assert second.get("sparse", "x") == {"v": 1} and second.get("sparse", "y") is None
    assert store.loads == [[("sparse", "x")]]
    second.delete("sparse", "x")
    second.commit()
    assert second.known == {"sparse": set()}
    assert next_unit(store, second).get("sparse", "x") is None and len(store.loads) == 1


def test_missing_keys_are_bounded() -> None:
    store = CountingStore()
    unit = next_unit(store, None, keep=1)
    for i in range(4_001):
        assert unit.get("k", f"m{i}") is None
    unit.commit()
    assert unit.absent == set()  # more than 4 x max(keep, 1,000): forgotten at once
    unit = next_unit(store, unit, keep=1)
    assert unit.get("k", "m1") is None
    unit.commit()
    assert unit.absent == {("k", "m1")}


def test_adopt_needs_an_exclusive_unit_not_used_yet() -> None:
    store = CountingStore()
    with pytest.raises(ValueError):
        UnitOfWork(store, "p").adopt(OrderedDict())
    unit = UnitOfWork(store, "p", exclusive=True, keep=5)
    unit.put("k", "a", {})
    with pytest.raises(ValueError):
        unit.adopt(OrderedDict())
