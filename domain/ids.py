"""Deterministic aggregate ids from business ids.

The same business id always gives the same aggregate id, so a command can be
retried and an inbound message can be replayed without creating a second
aggregate.
"""

from __future__ import annotations

from functools import lru_cache
from uuid import UUID, uuid5

# A fixed namespace for this product; never change it (ids are persisted).
PRM_NAMESPACE = UUID("6f1d3c4e-2b7a-5c90-9e8d-7a41b2c3d4e5")


# A command derives the same few ids several times (the sale, its partner, contract and
# registration), and a batch of up to a few thousand commands derives them once more to prefetch;
# ``uuid5`` is pure, so recent ones are remembered. Bounded: a million sales must not grow the process.
@lru_cache(maxsize=8192)
def aggregate_id(kind: str, business_id: str) -> UUID:
    """Aggregate id for ``kind`` (``partner``, ``registration``…) and a business id."""
    if not business_id or not business_id.strip():
        raise ValueError(f"{kind} id must not be empty")
    return uuid5(PRM_NAMESPACE, f"{kind}:{business_id.strip()}")


def event_id(originator_id: UUID, originator_version: int) -> UUID:
    """Stable id of a recorded event: the same event always has the same id."""
    return uuid5(originator_id, str(originator_version))
