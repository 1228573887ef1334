"""Deal registrations: submission, approval with a protection period, and the outcomes."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import event

from domain.base import PrmAggregate, register_kind, require_actor, require_reason, require_text
from domain.clock import utc
from domain.errors import ChannelConflictBlocks, InvalidTransition, ValidationFailed
from domain.money import check_currency, check_minor

SUBMITTED = "submitted"
APPROVED = "approved"
REJECTED = "rejected"
WON = "won"
LOST = "lost"
EXPIRED = "expired"
WITHDRAWN = "withdrawn"
OPEN_STATUSES = (SUBMITTED, APPROVED)
REGISTRATION_STATUSES = (SUBMITTED, APPROVED, REJECTED, WON, LOST, EXPIRED, WITHDRAWN)
REJECTION_REASONS = (
    "duplicate",
    "existing_customer",
    "direct_sales_active",
    "outside_territory",
    "insufficient_information",
    "other",
)


def check_customer(customer: dict[str, Any]) -> dict[str, Any]:
    name = require_text(customer.get("name"), "customer.name")
    country = customer.get("country")
    if country is not None:
        country = str(country).strip().upper()
        if len(country) != 2 or not country.isalpha():
            raise ValidationFailed(f"customer.country {country!r} is not an ISO country code", field="customer.country")
    return {
        "name": name,
        "domain": (customer.get("domain") or None),
        "tax_id": (customer.get("tax_id") or None),
        "country": country,
    }


@register_kind
class DealRegistration(PrmAggregate):
    KIND: ClassVar[str] = "registration"
    partner_id: str

    class Submitted(PrmAggregate.Created):
        registration_id: str
        partner_id: str
        customer: dict[str, Any]
        estimated_value_minor: int
        currency: str
        products: list[str]
        expected_close_on: date | None
        submitted_at: datetime
        conflicts_with: list[dict[str, Any]]
        actor: str

    class Approved(PrmAggregate.Event):
        actor: str
        at: datetime
        protected_until: datetime

        def apply(self, aggregate: DealRegistration) -> None:
            aggregate.status = APPROVED
            aggregate.approved_at = self.at
            aggregate.protected_until = self.protected_until

    class Rejected(PrmAggregate.Event):
        actor: str
        reason_code: str
        reason: str
        at: datetime

        def apply(self, aggregate: DealRegistration) -> None:
            aggregate.status = REJECTED
            aggregate.closed_at = self.at

    class ProtectionExtended(PrmAggregate.Event):
        actor: str
        reason: str
        previous_until: datetime
        protected_until: datetime
        at: datetime

        def apply(self, aggregate: DealRegistration) -> None:
            aggregate.protected_until = self.protected_until
            aggregate.extended = True

    class Won(PrmAggregate.Event):
        sale_id: str
        at: datetime

        def apply(self, aggregate: DealRegistration) -> None:
            aggregate.status = WON
            aggregate.closed_at = self.at
            aggregate.won_sale_id = self.sale_id

    class Lost(PrmAggregate.Event):
        actor: str
        reason: str
        at: datetime

        def apply(self, aggregate: DealRegistration) -> None:
            aggregate.status = LOST
            aggregate.closed_at = self.at

    class Expired(PrmAggregate.Event):
        at: datetime

        def apply(self, aggregate: DealRegistration) -> None:
            aggregate.status = EXPIRED
            aggregate.closed_at = self.at

    class Withdrawn(PrmAggregate.Event):
        actor: str
        reason: str | None
        at: datetime

        def apply(self, aggregate: DealRegistration) -> None:
            aggregate.status = WITHDRAWN
            aggregate.closed_at = self.at

    class ConflictResolved(PrmAggregate.Event):
        """A channel conflict involving this registration was decided.

        ``winner`` names the winning party (a registration id, ``direct`` or a
        partner id). When this registration loses, it loses its protection.
        """

        conflict_id: str
        kind: str
        winner: str
        lost_protection: bool
        actor: str
        reason: str
        at: datetime

        def apply(self, aggregate: DealRegistration) -> None:
            aggregate.resolutions[self.conflict_id] = self.winner
            if self.lost_protection and aggregate.protected_until is not None:
                aggregate.protected_until = min(aggregate.protected_until, self.at)

    class ConflictDismissed(PrmAggregate.Event):
        conflict_id: str
        kind: str
        actor: str
        reason: str
        at: datetime

        def apply(self, aggregate: DealRegistration) -> None:
            aggregate.resolutions[self.conflict_id] = "dismissed"

    @event(Submitted)
    def __init__(
        self,
        registration_id: str,
        partner_id: str,
        customer: dict[str, Any],
        estimated_value_minor: int,
        currency: str,
        products: list[str],
        expected_close_on: date | None,
        submitted_at: datetime,
        conflicts_with: list[dict[str, Any]],
        actor: str,
    ) -> None:
        self.registration_id = registration_id
        self.partner_id = partner_id
        self.customer = customer
        self.estimated_value_minor = estimated_value_minor
        self.currency = currency
        self.products = list(products)
        self.expected_close_on = expected_close_on
        self.submitted_at = submitted_at
        self.conflicts_with = list(conflicts_with)
        self.status = SUBMITTED
        self.approved_at: datetime | None = None
        self.protected_until: datetime | None = None
        self.extended = False
        self.closed_at: datetime | None = None
        self.won_sale_id: str | None = None
        self.resolutions: dict[str, str] = {}

    @staticmethod
    def create_id(registration_id: str, **_: Any) -> UUID:
        return DealRegistration.id_for(registration_id)

    @classmethod
    def submit(
        cls,
        *,
        registration_id: str,
        partner_id: str,
        customer: dict[str, Any],
        estimated_value_minor: int,
        currency: str,
        products: list[str],
        expected_close_on: date | None,
        submitted_at: datetime,
        conflicts_with: list[dict[str, Any]],
        actor: str,
    ) -> DealRegistration:
        return cls(
            registration_id=require_text(registration_id, "registration_id"),
            partner_id=partner_id,
            customer=check_customer(customer),
            estimated_value_minor=check_minor(estimated_value_minor, "estimated_value_minor"),
            currency=check_currency(currency),
            products=[require_text(p, "products[]") for p in products],
            expected_close_on=expected_close_on,
            submitted_at=utc(submitted_at),
            conflicts_with=conflicts_with,
            actor=require_actor(actor),
        )

    # ---- queries ------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def is_protected_at(self, at: datetime) -> bool:
        """Approved, not closed, and ``approved_at <= at < protected_until``."""
        return (
            self.status == APPROVED
            and self.approved_at is not None
            and self.protected_until is not None
            and self.approved_at <= utc(at) < self.protected_until
        )

    def _require(self, action: str, *allowed: str) -> None:
        if self.status not in allowed:
            raise InvalidTransition(
                f"cannot {action} registration {self.registration_id}: it is {self.status}"
                f" (allowed from {', '.join(allowed)})",
                registration_id=self.registration_id,
                status=self.status,
            )

    # ---- commands -----------------------------------------------------
    def approve(self, *, actor: str, at: datetime, protection_days: int, blocking: list[dict[str, Any]]) -> None:
        """Approve unless an earlier registration of the same account by another partner blocks it."""
        self._require("approve", SUBMITTED)
        # A conflict stops blocking only when dismissed or decided in this registration's favour.
        cleared = ("dismissed", self.registration_id, self.partner_id)
        unresolved = [b for b in blocking if self.resolutions.get(b["conflict_id"]) not in cleared]
        if unresolved:
            first = unresolved[0]
            decided = self.resolutions.get(first["conflict_id"])
            hint = (
                f"conflict {first['conflict_id']} was resolved in favour of {decided}"
                if decided is not None
                else f"resolve conflict {first['conflict_id']} first"
            )
            raise ChannelConflictBlocks(
                f"registration {self.registration_id} cannot be approved: the same customer account is"
                f" registered by partner {first['partner_id']} ({first['registration_id']}, {first['status']})"
                f" earlier; {hint}",
                conflicts=[b["conflict_id"] for b in unresolved],
            )
        at = utc(at)
        self.trigger_event(
            self.Approved,
            partner_id=self.partner_id,
            actor=require_actor(actor),
            at=at,
            protected_until=at + timedelta(days=protection_days),
        )

    def reject(self, *, actor: str, reason_code: str, at: datetime, reason: str | None = None) -> None:
        self._require("reject", SUBMITTED)
        if reason_code not in REJECTION_REASONS:
            raise ValidationFailed(
                f"unknown rejection reason {reason_code!r}; use one of {', '.join(REJECTION_REASONS)}",
                field="reason_code",
            )
        text = (
            require_reason(reason, "reject with reason 'other'") if reason_code == "other" else (reason or reason_code)
        )
        self.trigger_event(
            self.Rejected,
            partner_id=self.partner_id,
            actor=require_actor(actor),
            reason_code=reason_code,
            reason=text,
            at=utc(at),
        )

    def extend_protection(self, *, actor: str, reason: str, at: datetime, extension_days: int) -> None:
        self._require("extend the protection of", APPROVED)
        if self.extended:
            raise InvalidTransition(f"the protection of {self.registration_id} was already extended once")
        assert self.protected_until is not None
        if utc(at) >= self.protected_until:
            raise InvalidTransition(f"the protection of {self.registration_id} has already ended")
        self.trigger_event(
            self.ProtectionExtended,
            partner_id=self.partner_id,
            actor=require_actor(actor),
            reason=require_reason(reason, "extend a protection"),
            previous_until=self.protected_until,
            protected_until=self.protected_until + timedelta(days=extension_days),
            at=utc(at),
        )

    def mark_won(self, *, sale_id: str, at: datetime) -> None:
        self._require("mark as won", APPROVED)
        self.trigger_event(self.Won, partner_id=self.partner_id, sale_id=sale_id, at=utc(at))

    def mark_lost(self, *, actor: str, reason: str, at: datetime) -> None:
        self._require("mark as lost", APPROVED)
        self.trigger_event(
            self.Lost,
            partner_id=self.partner_id,
            actor=require_actor(actor),
            reason=require_reason(reason, "mark a registration lost"),
            at=utc(at),
        )

    def expire(self, *, at: datetime) -> None:
        self._require("expire", APPROVED)
        assert self.protected_until is not None
        if utc(at) < self.protected_until:
            raise InvalidTransition(
                f"registration {self.registration_id} is protected until {self.protected_until.isoformat()}"
            )
        self.trigger_event(self.Expired, partner_id=self.partner_id, at=self.protected_until)

    def withdraw(self, *, actor: str, at: datetime, reason: str | None = None) -> None:
        self._require("withdraw", SUBMITTED, APPROVED)
        self.trigger_event(
            self.Withdrawn, partner_id=self.partner_id, actor=require_actor(actor), reason=reason, at=utc(at)
        )

    def resolve_conflict(
        self, *, conflict_id: str, kind: str, winner: str, actor: str, reason: str, at: datetime
    ) -> None:
        if conflict_id in self.resolutions:
            raise InvalidTransition(f"conflict {conflict_id} is already decided ({self.resolutions[conflict_id]})")
        self.trigger_event(
            self.ConflictResolved,
            partner_id=self.partner_id,
            conflict_id=conflict_id,
            kind=kind,
            winner=require_text(winner, "winner"),
            lost_protection=winner not in (self.registration_id, self.partner_id),
            actor=require_actor(actor),
            reason=require_reason(reason, "resolve a conflict"),
            at=utc(at),
        )

    def dismiss_conflict(self, *, conflict_id: str, kind: str, actor: str, reason: str, at: datetime) -> None:
        if conflict_id in self.resolutions:
            raise InvalidTransition(f"conflict {conflict_id} is already decided ({self.resolutions[conflict_id]})")
        self.trigger_event(
            self.ConflictDismissed,
            partner_id=self.partner_id,
            conflict_id=conflict_id,
            kind=kind,
            actor=require_actor(actor),
            reason=require_reason(reason, "dismiss a conflict"),
            at=utc(at),
        )
