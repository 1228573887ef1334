"""Read the event store's notification log as envelopes, in position order."""

from __future__ import annotations

from collections.abc import Iterator

from domain.application import PartnerProgram
from projections.envelope import EventEnvelope, envelope_of


def read_store(
    program: PartnerProgram, start: int = 1, stop: int | None = None, batch: int = 1000
) -> Iterator[EventEnvelope]:
    """Every recorded event from position ``start`` (inclusive) to ``stop`` (inclusive, or the end)."""
    batch = min(batch, program.log_section_size)
    position = start
    while True:
        notifications = program.notification_log.select(start=position, limit=batch, stop=stop)
        if not notifications:
            return
        for notification in notifications:
            yield envelope_of(program.mapper.to_domain_event(notification), notification.id)
        position = notifications[-1].id + 1
