"""``PartnerProgram.record_inbound_batch``: many inbound commands, one save, the same outcomes as one by one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import StoredEvent

from domain.application import (
    CommandResult,
    EventLoader,
    InboundAggregates,
    InboundBatchError,
    InboundCommand,
    InboundOutcome,
    PartnerProgram,
)
from domain.errors import DomainError, ValidationFailed
from domain.sale import Sale
from tests.unit.conftest import ADMIN, MINH_PHAT_VI, World, at, new_app, sale_line


def sale(sale_id: str, partner_id: str | None, days: float, **extra: Any) -> InboundCommand:
    args: dict[str, Any] = {
        "sale_id": sale_id,
        "partner_id": partner_id,
        "registration_id": None,
        "customer": dict(MINH_PHAT_VI),
        "lines": [sale_line(3, 12_000_000)],
        "occurred_at": at(days),
        "source": "erp/hanoi",
        "message_id": f"m-{sale_id}",
    }
    args.update(extra)
    return InboundCommand("record_sale", args)


def refund(sale_id: str, refund_id: str, amount: int, currency: str = "VND", days: float = 40) -> InboundCommand:
    return InboundCommand(
        "refund_sale",
        {
            "sale_id": sale_id,
            "refund_id": refund_id,
            "amount_minor": amount,
            "currency": currency,
            "occurred_at": at(days),
            "reason": "returned",
            "source": "billing",
            "message_id": f"m-{refund_id}",
        },
    )


def opportunity(opportunity_id: str, value: int = 90_000_000) -> InboundCommand:
    return InboundCommand(
        "open_opportunity",
        {
            "opportunity_id": opportunity_id,
            "owner": "hanh.vu@prm.vn",
            "customer": {"name": "Công ty Bình Minh", "country": "VN"},
            "estimated_value_minor": value,
            "currency": "VND",
            "opened_at": at(5),
            "source": "crm",
            "message_id": f"m-{opportunity_id}-{value}",
        },
    )


COMMANDS = [
    sale("S-1", "P-1", 10),
    sale("S-1", "P-1", 10),  # the same again: a duplicate
    sale("S-1", "P-1", 10, lines=[sale_line(4, 12_000_000)]),  # different data: refused
    refund("S-1", "RF-1", 30_000_000),
    refund("S-1", "RF-2", 6_000_001),  # above what remains (36M - 30M): refused
    refund("S-1", "RF-1", 30_000_000),  # the same refund again: a duplicate
    refund("S-1", "RF-3", 6_000_000, currency="USD"),  # another currency: refused
    refund("S-1", "RF-3", 6_000_000),  # exactly what remains
    sale("S-2", "P-1", 30, registration_id="R-1"),  # within the protection: bonus, the registration is won
    sale("S-3", "P-1", 31, registration_id="R-1"),  # bonus again, no second `won`
    sale("S-4", "P-404", 10),  # unknown partner
    refund("S-404", "RF-9", 1),  # unknown sale
    sale("S-5", None, 10, registration_id="R-1"),  # a direct sale cannot reference a registration
    sale("S-6", "P-2", 12),  # a suspended partner: flagged
    sale("S-7", None, 12, lines=[sale_line(currency="VND"), sale_line(currency="USD")]),  # mixed currencies
    opportunity("O-1"),
    opportunity("O-1"),  # a duplicate
    opportunity("O-1", value=1),  # different data: refused
    sale("S-8", "P-1", 13),
    refund("S-8", "RF-8", 36_000_000),  # the whole of a sale recorded earlier in the same batch
    refund("S-8", "RF-8b", 1),  # nothing remains
]


def world(app: PartnerProgram | None = None) -> World:
    """Two active partners (P-2 then suspended) and an approved registration R-1 of P-1."""
    w = World(app or new_app())
    w.active("P-1")
    w.active("P-2")
    w.app.suspend_partner("P-2", actor=ADMIN, reason="unpaid invoices", at=at(1))
    w.submit("R-1", "P-1", {"name": "Công ty Bình Minh", "country": "VN"}, when=at(1))
    w.app.approve_registration("R-1", actor=ADMIN, at=at(2))
    return w


def one_by_one(app: PartnerProgram, commands: Sequence[InboundCommand]) -> list[InboundOutcome]:
    outcomes: list[InboundOutcome] = []
    for command in commands:
        try:
            outcomes.append(getattr(app, command.name)(**command.args))
        except DomainError as exc:
            outcomes.append(exc)
    return outcomes


def popo_loader(app: PartnerProgram) -> EventLoader:
    def load(after: Mapping[UUID, int]) -> dict[UUID, list[StoredEvent]]:
        return {i: list(app.recorder.select_events(i, gt=v)) for i, v in after.items()}

    return load


def summary(outcome: InboundOutcome) -> tuple[Any, ...]:
    if isinstance(outcome, DomainError):
        return ("refused", type(outcome).__name__, str(outcome))
    return ("ok", outcome.business_id, outcome.position, outcome.events, outcome.duplicate, outcome.details)


def stored(app: PartnerProgram) -> list[tuple[Any, ...]]:
    """Every stored event: position, aggregate, version, topic and state (the creation time left out)."""
    rows = []
    for n in app.notification_log.select(start=1, limit=1000):
        event = app.mapper.to_domain_event(n)
        data = {k: v for k, v in vars(event).items() if k != "timestamp"}
        rows.append((n.id, n.originator_id, n.originator_version, n.topic, repr(sorted(data.items()))))
    return rows


def batched(app: PartnerProgram, commands: Sequence[InboundCommand], sizes: Sequence[int], **kwargs: Any) -> list[Any]:
    outcomes: list[InboundOutcome] = []
    start = 0
    index = 0
    while start < len(commands):
        size = sizes[index % len(sizes)]
        outcomes += app.record_inbound_batch(commands[start : start + size], **kwargs)
        start += size
        index += 1
    return outcomes


@pytest.mark.parametrize(
    ("sizes", "with_loader"),
    [((len(COMMANDS),), False), ((len(COMMANDS),), True), ((1,), True), ((3, 7), True), ((5,), False)],
)
def test_a_batch_records_exactly_what_the_commands_record_one_by_one(sizes: tuple[int, ...], with_loader: bool) -> None:
    expected_world, batch_world = world(), world()
    expected = one_by_one(expected_world.app, COMMANDS)
    app = batch_world.app
    kwargs: dict[str, Any] = {"load_events": popo_loader(app), "aggregates": InboundAggregates()} if with_loader else {}
    outcomes = batched(app, COMMANDS, sizes, **kwargs)

    assert [summary(o) for o in outcomes] == [summary(o) for o in expected]
    assert stored(app) == stored(expected_world.app)
    kinds = [o[1] if o[0] == "refused" else ("duplicate" if o[4] else "recorded") for o in map(summary, outcomes)]
    assert kinds == [
        "recorded",
        "duplicate",
        "DuplicateWithDifferentData",
        "recorded",
        "RefundExceedsSale",
        "duplicate",
        "CurrencyMismatch",
        "recorded",
        "recorded",
        "recorded",
        "UnknownPartner",
        "NotFound",
        "ValidationFailed",
        "recorded",
        "CurrencyMismatch",
        "recorded",
        "duplicate",
        "DuplicateWithDifferentData",
        "recorded",
        "recorded",
        "RefundExceedsSale",
    ]
    won = outcomes[8]
    assert isinstance(won, CommandResult)
    assert won.events == ["prm.sale.recorded.v1", "prm.registration.won.v1", "prm.partner.registration_closed.v1"]
    assert app.registration("R-1").status == "won"
    assert app.sale("S-6").flags == ["partner_suspended"]
    assert app.sale("S-1").refunded_minor == app.sale("S-1").total_minor
    # the aggregates read after the batch equal those rebuilt from the store
    for sale_id in ("S-1", "S-2", "S-8"):
        assert batch_world.reloaded_equals(app.sale(sale_id))


def test_a_refused_command_leaves_no_trace_even_after_changing_an_aggregate() -> None:
    w = world()
    app = w.app
    real_refund = app.refund_sale

    def refund_then_refuse(**kwargs: Any) -> CommandResult:
        if kwargs["refund_id"] == "RF-BAD":
            app.sale(kwargs["sale_id"]).refund(**{k: v for k, v in kwargs.items() if k != "sale_id"})
            raise ValidationFailed("refused after the change")
        return real_refund(**kwargs)

    app.refund_sale = refund_then_refuse  # type: ignore[method-assign]
    commands = [sale("S-1", "P-1", 10), refund("S-1", "RF-BAD", 30_000_000), refund("S-1", "RF-1", 36_000_000)]
    outcomes = app.record_inbound_batch(commands)

    assert isinstance(outcomes[1], ValidationFailed)
    last = outcomes[2]
    assert isinstance(last, CommandResult) and last.events == ["prm.sale.refunded.v1"]
    recorded = app.sale("S-1")
    assert list(recorded.refunds) == ["RF-1"] and recorded.refunded_minor == 36_000_000
    assert recorded.version == 2


def test_a_conflict_with_another_writer_reloads_and_runs_the_batch_again() -> None:
    w = world()
    app = w.app
    real_record_sale = app.record_sale
    attempts: list[str] = []

    def record_sale(**kwargs: Any) -> CommandResult:
        attempts.append(kwargs["sale_id"])
        if attempts == ["S-1", "S-2"]:  # meanwhile another process records S-1, which this batch found new
            first = sale("S-1", "P-1", 10).args
            other = Sale.record(
                **{k: v for k, v in first.items() if k != "message_id"}, flags=[], registration_bonus=False
            )
            Application.save(app, *other.collect_events())
        return real_record_sale(**kwargs)

    app.record_sale = record_sale  # type: ignore[method-assign]
    outcomes = app.record_inbound_batch([sale("S-1", "P-1", 10), sale("S-2", "P-1", 11)])

    assert attempts == ["S-1", "S-2", "S-1", "S-2"]
    first, second = outcomes
    assert isinstance(first, CommandResult) and first.duplicate and first.position is None
    assert isinstance(second, CommandResult) and second.events == ["prm.sale.recorded.v1"]
    assert app.sale("S-1").version == 1


def test_an_unexpected_error_aborts_the_batch_and_names_the_command() -> None:
    w = world()
    app = w.app
    before = app.max_position()
    real_record_sale: Callable[..., CommandResult] = app.record_sale

    def record_sale(**kwargs: Any) -> CommandResult:
        if kwargs["sale_id"] == "S-2":
            raise ZeroDivisionError("a bug")
        return real_record_sale(**kwargs)

    app.record_sale = record_sale  # type: ignore[method-assign]
    with pytest.raises(InboundBatchError) as caught:
        app.record_inbound_batch([sale("S-1", "P-1", 10), sale("S-2", "P-1", 11), sale("S-3", "P-1", 12)])
    assert caught.value.index == 1 and isinstance(caught.value.cause, ZeroDivisionError)
    assert app.max_position() == before
    # outside a batch, the application saves as usual
    assert real_record_sale(**sale("S-1", "P-1", 10).args).position == before + 1


def test_only_inbound_commands_are_accepted() -> None:
    app = new_app()
    with pytest.raises(ValueError, match="not an inbound command"):
        app.record_inbound_batch([InboundCommand("terminate_partner", {"partner_id": "P-1"})])


def test_kept_aggregates_are_bounded_least_recently_used_first() -> None:
    kept = InboundAggregates(max_size=2)
    w = world()
    partner_1, partner_2 = w.app.partner("P-1"), w.app.partner("P-2")
    registration = w.app.registration("R-1")
    kept.keep({partner_1.id: partner_1, partner_2.id: partner_2})
    assert kept.take(partner_1.id) is partner_1  # now the most recently used
    kept.keep({registration.id: registration})
    assert len(kept) == 2
    assert kept.take(partner_2.id) is None and kept.take(partner_1.id) is partner_1
    kept.forget([partner_1.id])
    assert kept.take(partner_1.id) is None


def test_the_batch_sees_later_events_of_a_kept_aggregate() -> None:
    """Kept aggregates are fast-forwarded: a partner suspended between two batches flags the next sale."""
    w = world()
    app = w.app
    options: dict[str, Any] = {"load_events": popo_loader(app), "aggregates": InboundAggregates()}
    app.record_inbound_batch([sale("S-1", "P-1", 10)], **options)
    app.suspend_partner("P-1", actor=ADMIN, reason="audit", at=at(11))
    app.record_inbound_batch([sale("S-2", "P-1", 12)], **options)
    assert app.sale("S-1").flags == [] and app.sale("S-2").flags == ["partner_suspended"]
