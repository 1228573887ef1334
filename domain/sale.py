"""Sales and refunds reported by internal services, and direct opportunities from the CRM."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import event

from domain.base import PrmAggregate, register_kind, require_actor, require_text
from domain.clock import utc
from domain.errors import CurrencyMismatch, DuplicateWithDifferentData, RefundExceedsSale, ValidationFailed
from domain.money import check_currency, check_minor
from domain.registration import check_customer


def check_lines(lines: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Validate sale lines; all lines share one currency. Returns the lines and the currency."""
    if not lines:
        raise ValidationFailed("a sale needs at least one line", field="lines")
    result = []
    currencies = set()
    for index, line in enumerate(lines):
        quantity = check_minor(line.get("quantity"), f"lines[{index}].quantity", allow_zero=False)
        unit_price = check_minor(line.get("unit_price_minor"), f"lines[{index}].unit_price_minor")
        currency = check_currency(line.get("currency", ""))
        currencies.add(currency)
        result.append(
            {
                "sku": require_text(line.get("sku"), f"lines[{index}].sku"),
                "category": (line.get("category") or None),
                "quantity": quantity,
                "unit_price_minor": unit_price,
                "currency": currency,
            }
        )
    if len(currencies) != 1:
        raise CurrencyMismatch(f"all lines of a sale must share one currency, got {', '.join(sorted(currencies))}")
    return result, currencies.pop()


@register_kind
class Sale(PrmAggregate):
    KIND: ClassVar[str] = "sale"

    class Recorded(PrmAggregate.Created):
        sale_id: str
        partner_id: str | None
        registration_id: str | None
        customer: dict[str, Any]
        lines: list[dict[str, Any]]
        currency: str
        total_minor: int
        occurred_at: datetime
        source: str
        flags: list[str]
        registration_bonus: bool
        message_id: str | None

    class Refunded(PrmAggregate.Event):
        refund_id: str
        amount_minor: int
        currency: str
        occurred_at: datetime
        reason: str | None
        refunded_before_minor: int
        refunded_after_minor: int
        source: str
        message_id: str | None

        def apply(self, aggregate: Sale) -> None:
            aggregate.refunded_minor = self.refunded_after_minor
            aggregate.refunds[self.refund_id] = {
                "amount_minor": self.amount_minor,
                "currency": self.currency,
                "occurred_at": self.occurred_at,
                "reason": self.reason,
            }

    @event(Recorded)
    def __init__(
        self,
        sale_id: str,
        partner_id: str | None,
        registration_id: str | None,
        customer: dict[str, Any],
        lines: list[dict[str, Any]],
        currency: str,
        total_minor: int,
        occurred_at: datetime,
        source: str,
        flags: list[str],
        registration_bonus: bool,
        message_id: str | None,
    ) -> None:
        self.sale_id = sale_id
        self.partner_id = partner_id
        self.registration_id = registration_id
        self.customer = customer
        self.lines = lines
        self.currency = currency
        self.total_minor = total_minor
        self.occurred_at = occurred_at
        self.source = source
        self.flags = list(flags)
        self.registration_bonus = registration_bonus
        self.refunded_minor = 0
        self.refunds: dict[str, dict[str, Any]] = {}

    @staticmethod
    def create_id(sale_id: str, **_: Any) -> UUID:
        return Sale.id_for(sale_id)

    @classmethod
    def record(
        cls,
        *,
        sale_id: str,
        partner_id: str | None,
        registration_id: str | None,
        customer: dict[str, Any],
        lines: list[dict[str, Any]],
        occurred_at: datetime,
        source: str,
        flags: list[str],
        registration_bonus: bool,
        message_id: str | None = None,
    ) -> Sale:
        checked, currency = check_lines(lines)
        return cls(
            sale_id=require_text(sale_id, "sale_id"),
            partner_id=partner_id or None,
            registration_id=registration_id or None,
            customer=check_customer(customer),
            lines=checked,
            currency=currency,
            total_minor=sum(line["quantity"] * line["unit_price_minor"] for line in checked),
            occurred_at=utc(occurred_at),
            source=require_text(source, "source"),
            flags=sorted(set(flags)),
            registration_bonus=registration_bonus,
            message_id=message_id,
        )

    def same_facts(
        self,
        *,
        partner_id: str | None,
        registration_id: str | None,
        customer: dict[str, Any],
        lines: list[dict[str, Any]],
        occurred_at: datetime,
    ) -> bool:
        """Whether a re-delivered sale carries the same data as the recorded one."""
        checked, _ = check_lines(lines)
        return (
            (partner_id or None) == self.partner_id
            and (registration_id or None) == self.registration_id
            and check_customer(customer) == self.customer
            and checked == self.lines
            and utc(occurred_at) == self.occurred_at
        )

    @property
    def remaining_minor(self) -> int:
        return self.total_minor - self.refunded_minor

    def refund(
        self,
        *,
        refund_id: str,
        amount_minor: int,
        currency: str,
        occurred_at: datetime,
        reason: str | None,
        source: str,
        message_id: str | None = None,
    ) -> bool:
        """Record a refund. Returns False when the same refund was already recorded (a duplicate)."""
        refund_id = require_text(refund_id, "refund_id")
        amount_minor = check_minor(amount_minor, "amount_minor", allow_zero=False)
        occurred = utc(occurred_at)
        existing = self.refunds.get(refund_id)
        if existing is not None:
            if (existing["amount_minor"], existing["currency"], existing["occurred_at"]) == (
                amount_minor,
                currency,
                occurred,
            ):
                return False
            raise DuplicateWithDifferentData(
                f"refund {refund_id} of sale {self.sale_id} was already recorded with different data"
            )
        if currency != self.currency:
            raise CurrencyMismatch(
                f"refund {refund_id} is in {currency} but sale {self.sale_id} is in {self.currency}",
                field="currency",
            )
        if amount_minor > self.remaining_minor:
            raise RefundExceedsSale(
                f"refund {refund_id} of {amount_minor} {currency} exceeds what remains of sale {self.sale_id}"
                f" ({self.remaining_minor} of {self.total_minor} {self.currency})",
                field="amount_minor",
            )
        self.trigger_event(
            self.Refunded,
            partner_id=self.partner_id,
            refund_id=refund_id,
            amount_minor=amount_minor,
            currency=currency,
            occurred_at=occurred,
            reason=reason,
            refunded_before_minor=self.refunded_minor,
            refunded_after_minor=self.refunded_minor + amount_minor,
            source=require_text(source, "source"),
            message_id=message_id,
        )
        return True


@register_kind
class Opportunity(PrmAggregate):
    """An opportunity opened by our own (direct) sales team, reported by the CRM."""

    KIND: ClassVar[str] = "opportunity"

    class Opened(PrmAggregate.Created):
        opportunity_id: str
        partner_id: str | None
        owner: str
        customer: dict[str, Any]
        estimated_value_minor: int
        currency: str
        opened_at: datetime
        source: str
        message_id: str | None

    @event(Opened)
    def __init__(
        self,
        opportunity_id: str,
        partner_id: str | None,
        owner: str,
        customer: dict[str, Any],
        estimated_value_minor: int,
        currency: str,
        opened_at: datetime,
        source: str,
        message_id: str | None,
    ) -> None:
        self.opportunity_id = opportunity_id
        self.partner_id = None
        self.owner = owner
        self.customer = customer
        self.estimated_value_minor = estimated_value_minor
        self.currency = currency
        self.opened_at = opened_at
        self.source = source

    @staticmethod
    def create_id(opportunity_id: str, **_: Any) -> UUID:
        return Opportunity.id_for(opportunity_id)

    @classmethod
    def open(
        cls,
        *,
        opportunity_id: str,
        owner: str,
        customer: dict[str, Any],
        estimated_value_minor: int,
        currency: str,
        opened_at: datetime,
        source: str,
        message_id: str | None = None,
    ) -> Opportunity:
        return cls(
            opportunity_id=require_text(opportunity_id, "opportunity_id"),
            partner_id=None,
            owner=require_actor(owner),
            customer=check_customer(customer),
            estimated_value_minor=check_minor(estimated_value_minor, "estimated_value_minor"),
            currency=check_currency(currency),
            opened_at=utc(opened_at),
            source=require_text(source, "source"),
            message_id=message_id,
        )
