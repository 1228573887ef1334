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
    exclusive: bool = False,
    rebuild: bool = False,
    keep: int | None = None,
) -> RunStats:
    """Apply ``events`` (in store order) to each projection; commit every ``batch_size`` events.

    Each batch is read ahead (one ``store.load`` per projection for the keys its
    ``prefetch_keys`` names), then applied projection by projection (they share
    no documents), then committed with the checkpoints. ``exclusive``: nobody
    else writes these projections in ``store`` meanwhile, so documents stay
    cached across batches. ``rebuild``: forget every document and checkpoint of
    these projections first (``store.reset``), then fold from scratch, exclusively,
    without reading the store at all. ``keep`` (exclusive or rebuild only): how many
    working copies each unit keeps across batches (an LRU; ``None``: all of them),
    see :mod:`projections.unit_of_work`. An error ends the run: its units, whose
    copies may hold the failed batch's changes, are dropped with it.
    """
    batch_size = max(1, batch_size)
    if rebuild:
        for projection in projections:
            store.reset(projection.name)
    units = {p.name: UnitOfWork(store, p.name, exclusive=exclusive, complete=rebuild, keep=keep) for p in projections}
    stats = RunStats()
    batch: list[EventEnvelope] = []

    def flush() -> None:
        applied = [False] * len(batch)
        for projection in projections:
            unit = units[projection.name]
            unit.prefetch_events(projection, batch, source)
            for i, event in enumerate(batch):
                if unit.apply(projection, event, source):
                    applied[i] = True
        for unit in units.values():
            unit.commit()
        stats.applied += sum(applied)
        stats.skipped += len(batch) - sum(applied)
        batch.clear()

    for event in events:
        stats.seen += 1
        stats.last_sequence = max(stats.last_sequence, event.sequence)
        batch.append(event)
        if len(batch) >= batch_size:
            flush()
            if progress is not None:
                progress(stats.seen)
    flush()
    if progress is not None:
        progress(stats.seen)
    return stats
