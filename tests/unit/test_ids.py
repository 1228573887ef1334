"""Deterministic aggregate ids: the same business id always gives the same id, remembered or not."""

from __future__ import annotations

from uuid import UUID, uuid5

import pytest

from domain.ids import PRM_NAMESPACE, aggregate_id, event_id


def test_an_aggregate_id_is_the_uuid5_of_kind_and_stripped_business_id() -> None:
    expected = uuid5(PRM_NAMESPACE, "sale:S-1")
    assert aggregate_id("sale", "S-1") == expected
    assert aggregate_id("sale", "  S-1 ") == expected
    assert aggregate_id("sale", "S-1") == expected  # remembered: the same answer
    assert aggregate_id("partner", "S-1") != expected


def test_ids_stay_the_same_once_forgotten() -> None:
    first = [aggregate_id("sale", f"S-{n}") for n in range(20_000)]  # more than the cache keeps
    assert [aggregate_id("sale", f"S-{n}") for n in range(20_000)] == first
    assert first[0] == UUID(str(uuid5(PRM_NAMESPACE, "sale:S-0")))


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_a_blank_business_id_is_refused_every_time(blank: str) -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="must not be empty"):
            aggregate_id("sale", blank)


def test_event_ids_are_uuid5_of_aggregate_and_version() -> None:
    aggregate = aggregate_id("partner", "P-1")
    assert event_id(aggregate, 3) == uuid5(aggregate, "3")
