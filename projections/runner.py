"""Drive projections over a stream of envelopes, in batches, with checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from projections.envelope import EventEnvelope
from projections.port import Projection, ProjectionStore
from projections.unit_of_work import UnitOfWork

STORE_SOURCE = "store"


@dataclass
class RunStats:
    seen: int = 0
    applied: int = 0
    skipped: int = 0
    last_sequence: int = 0


def run_projections(
    store: ProjectionStore,
    projections: Sequence[Projection],
    events: Iterable[EventEnvelope],
    *,
    source: str = STORE_SOURCE,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> RunStats:
    """Apply ``events`` (in store order) to each projection; commit every ``batch_size`` events."""
    units = {p.name: UnitOfWork(store, p.name) for p in projections}
    stats = RunStats()
    pending = 0
    for event in events:
        stats.seen += 1
        applied = False
        for projection in projections:
            applied = units[projection.name].apply(projection, event, source) or applied
        if applied:
            stats.applied += 1
        else:
            stats.skipped += 1
        stats.last_sequence = max(stats.last_sequence, event.sequence)
        pending += 1
        if pending >= batch_size:
            for unit in units.values():
                unit.commit()
            pending = 0
            if progress is not None:
                progress(stats.seen)
    for unit in units.values():
        unit.commit()
    if progress is not None:
        progress(stats.seen)
    return stats
