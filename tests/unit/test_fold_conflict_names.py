"""The conflicts' name index by length gives exactly the candidates of a search over every name.

``ChannelConflicts`` keeps each country's normalised names split by length,
with their words sorted, and compares them with ``fuzz.ratio`` only where the
lengths can reach the threshold. Here that is checked against the definition:
``token_sort_ratio`` of the normalised names over every party of the country
(the search the projection did before, on one document per country), on the
recorded sample with a threshold lowered mid-way, and on generated names.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz import fuzz, process

from api.sample import generate, run_commands
from domain.matching import normalise_name
from projections.conflicts import (
    _NAME_PREFILTER_SLACK,
    REGISTRATION,
    ChannelConflicts,
    _exact_keys,
    _reachable,
    may_reach,
    sorted_name,
)
from projections.envelope import EventEnvelope
from projections.memory import InMemoryProjectionStore
from projections.port import Doc, DocKey, ReadView
from projections.runner import run_projections
from projections.store_reader import read_store
from tests.unit.conftest import new_app


class EveryNameConflicts(ChannelConflicts):
    """The reference: candidates by ``token_sort_ratio`` over every name of the country, kept in the reducer."""

    def __init__(self) -> None:
        self.names: dict[tuple[str, str], dict[str, str]] = {}

    def _reconcile(self, view: ReadView, account: Doc) -> None:
        keys = account.get("keys")
        if keys and keys["name"] and keys["country"]:
            side = REGISTRATION if account["type"] == REGISTRATION else "deal"
            self.names.setdefault((side, keys["country"]), {})[account["ref"]] = keys["name"]
        super()._reconcile(view, account)

    def _candidates(self, view: ReadView, account: Doc, lowest_threshold: float) -> list[str]:
        keys = account["keys"]
        refs: set[str] = set()
        for index_key in _exact_keys(keys):
            refs.update((view.get("index", index_key) or {"parties": []})["parties"])
        if keys["name"] and keys["country"]:
            sides = [REGISTRATION, "deal"] if account["type"] == REGISTRATION else [REGISTRATION]
            for side in sides:
                hits = process.extract(
                    keys["name"],
                    self.names.get((side, keys["country"]), {}),
                    scorer=fuzz.token_sort_ratio,
                    score_cutoff=lowest_threshold * 100 - _NAME_PREFILTER_SLACK,
                    limit=None,
                )
                refs.update(ref for _, _, ref in hits)
        refs.discard(account["ref"])
        if account["type"] != REGISTRATION:
            refs = {ref for ref in refs if ref.startswith(REGISTRATION + ":")}
        return sorted(refs)


def _threshold_change(sequence: int, threshold_bp: int) -> EventEnvelope:
    return EventEnvelope(
        id=f"settings-{sequence}",
        type="prm.program.settings_changed.v1",
        subject="program",
        sequence=sequence,
        aggregate_id="program",
        aggregate_version=1,
        partner_id=None,
        time=datetime(2025, 6, 1, tzinfo=UTC),
        data={"changes": {"name_similarity_threshold_bp": threshold_bp}},
    )


@pytest.fixture(scope="module")
def history() -> list[EventEnvelope]:
    """The sample (seed 5) with the threshold lowered to 0.70 a third of the way, then to 0.60."""
    app = new_app()
    try:
        run_commands(app, generate(seed=5, scale=1))
        events = [dataclasses.replace(e, sequence=2 * e.sequence) for e in read_store(app)]
    finally:
        app.close()
    third = len(events) // 3
    return [
        *events[:third],
        _threshold_change(events[third - 1].sequence + 1, 7000),
        *events[third : 2 * third],
        _threshold_change(events[2 * third - 1].sequence + 1, 6000),
        *events[2 * third :],
    ]


def _outcome(store: InMemoryProjectionStore) -> dict[DocKey, Doc]:
    return {k: v for k, v in store.dump("conflicts").items() if k[0] != "index"}


@pytest.mark.parametrize("options", [{"batch_size": 500, "rebuild": True}, {"batch_size": 97}])
def test_the_name_index_finds_exactly_what_a_search_over_every_name_finds(
    history: list[EventEnvelope], options: dict[str, Any]
) -> None:
    reference, indexed = InMemoryProjectionStore(), InMemoryProjectionStore()
    run_projections(reference, [EveryNameConflicts()], history, batch_size=100_000)
    run_projections(indexed, [ChannelConflicts()], history, **options)
    expected = _outcome(reference)
    assert sum(1 for kind, _ in expected if kind == "conflict") > 25  # the lowered thresholds find more
    assert _outcome(indexed) == expected


_WORDS = st.text(alphabet=st.characters(codec="utf-8", categories=("L", "N", "Zs", "P")), min_size=1, max_size=30)


@settings(max_examples=400, deadline=None)
@given(_WORDS, _WORDS)
def test_ratio_of_sorted_names_is_their_token_sort_ratio(left: str, right: str) -> None:
    a, b = normalise_name(left), normalise_name(right)
    if a and b:
        assert fuzz.ratio(sorted_name(a), sorted_name(b)) == fuzz.token_sort_ratio(a, b)
        assert len(sorted_name(a)) == len(a)


@settings(max_examples=400, deadline=None)
@given(_WORDS, _WORDS, st.integers(min_value=1, max_value=10_000))
def test_lengths_that_cannot_reach_the_cutoff_cannot_match(left: str, right: str, threshold_bp: int) -> None:
    a, b = sorted_name(normalise_name(left) or "x"), sorted_name(normalise_name(right) or "y")
    cutoff = threshold_bp / 100 - _NAME_PREFILTER_SLACK
    if fuzz.ratio(a, b) >= cutoff:
        assert may_reach(len(a), len(b), cutoff)


@given(
    st.lists(st.integers(min_value=1, max_value=120), unique=True).map(sorted),
    st.integers(min_value=1, max_value=120),
    st.integers(min_value=1, max_value=10_000),
)
def test_reachable_lengths_are_the_lengths_that_may_reach(lengths: list[int], length: int, threshold_bp: int) -> None:
    cutoff = threshold_bp / 100 - _NAME_PREFILTER_SLACK
    assert _reachable(lengths, length, cutoff) == [m for m in lengths if may_reach(length, m, cutoff)]
