"""Embedded read side: the projections run in-process, caught up from the event store.

``LocalProjector`` reads the events recorded after its position (``read_store``)
and applies them to the ledger, conflicts and dashboards projections
(``run_projections``) under a lock. The API calls :meth:`LocalProjector.catch_up`
after each command, so a command's position is reached before its response is
sent and ``?min_position=`` is immediately satisfiable. It also implements the
``ProjectionProgress`` port for the embedded mode.

It works on any ``ProjectionStore``: an ``InMemoryProjectionStore`` in the
embedded mode, a ``PostgresProjectionStore`` when the real stack is run without
the Kafka workers (its checkpoints then have the source ``store``).

``PartnerHistory`` indexes the recorded events by partner, for the partner
timelines: it is fed by the projector (or catches up from the store itself).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence

from api.progress import ProgressReport
from domain.application import PartnerProgram
from projections.conflicts import ChannelConflicts
from projections.dashboards import Dashboards
from projections.envelope import EventEnvelope
from projections.ledger import CommissionLedger
from projections.metrics import Gauges
from projections.port import Projection, ProjectionStore
from projections.runner import STORE_SOURCE, run_projections
from projections.store_reader import read_store

__all__ = ["LocalProjector", "PartnerHistory", "default_projections"]


def default_projections() -> list[Projection]:
    """The read models of the product, in the order they are applied.

    Events are applied in total (store) order here, so the ledger recalculates
    every partner as soon as a recalculation is requested.
    """
    return [CommissionLedger(recalculate_on_request=True), ChannelConflicts(), Dashboards()]


class PartnerHistory:
    """Every recorded event that concerns a partner, by partner, in store order."""

    def __init__(self, program: PartnerProgram | None = None) -> None:
        self.program = program
        self._events: dict[str, list[EventEnvelope]] = {}
        self._position = 0
        self._lock = threading.Lock()

    @property
    def position(self) -> int:
        return self._position

    def feed(self, events: Iterable[EventEnvelope]) -> None:
        with self._lock:
            for event in events:
                if event.sequence <= self._position:
                    continue
                if event.partner_id:
                    self._events.setdefault(event.partner_id, []).append(event)
                self._position = event.sequence

    def catch_up(self) -> None:
        """Read the events recorded since the last one seen (when not fed by a projector)."""
        if self.program is not None:
            self.feed(read_store(self.program, start=self._position + 1))

    def of(self, partner_id: str) -> list[EventEnvelope]:
        with self._lock:
            return list(self._events.get(partner_id, []))

    def partners(self) -> list[str]:
        with self._lock:
            return sorted(self._events)


class LocalProjector:
    """Runs the projections in-process over the event store, under a lock."""

    def __init__(
        self,
        program: PartnerProgram,
        store: ProjectionStore,
        projections: Sequence[Projection] | None = None,
        *,
        history: PartnerHistory | None = None,
        gauges: Gauges | None = None,
        poll_seconds: float = 0.05,
    ) -> None:
        self.program = program
        self.store = store
        self._projections = list(projections) if projections is not None else default_projections()
        self.projections = tuple(p.name for p in self._projections)
        self.history = history
        self.gauges = gauges
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._position = self._stored_position()

    def _stored_position(self) -> int:
        """Where the store's ``store`` checkpoints say every projection is (the lowest)."""
        positions = []
        for name in self.projections:
            checkpoint = self.store.checkpoints(name).get(STORE_SOURCE)
            positions.append(checkpoint.sequence if checkpoint is not None else 0)
        return min(positions, default=0)

    @property
    def position(self) -> int:
        return self._position

    def catch_up(self) -> int:
        """Apply every event recorded since the last catch-up; return the position reached."""
        with self._lock:
            start = self._position + 1
            history_start = self.history.position + 1 if self.history is not None else start
            if self.history is not None and history_start < start:
                self.history.feed(read_store(self.program, start=history_start, stop=start - 1))
            stats = run_projections(self.store, self._projections, self._tap(read_store(self.program, start=start)))
            if stats.seen:
                self._position = max(self._position, stats.last_sequence)
            reached = self._position
        if self.gauges is not None:
            head = self.program.max_position()
            self.gauges.set_store_position(head)
            for name in self.projections:
                self.gauges.set_projection(name, position=reached, head=head)
        return reached

    def _tap(self, events: Iterator[EventEnvelope]) -> Iterator[EventEnvelope]:
        for event in events:
            if self.history is not None:
                self.history.feed((event,))
            yield event

    # ---- ProjectionProgress ----------------------------------------------
    def report(self) -> ProgressReport:
        head = self.program.max_position()
        return ProgressReport(head=head, positions=dict.fromkeys(self.projections, min(self._position, head)))

    def wait_for(self, position: int, projections: Sequence[str] | None, timeout: float) -> ProgressReport:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self.catch_up()
            report = self.report()
            if report.reached(projections) >= position or time.monotonic() >= deadline:
                return report
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))
