"""Commission plans and their versions."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import event

from domain.base import PrmAggregate, register_kind, require_actor, require_reason, require_text
from domain.clock import utc
from domain.commission import PlanTerms
from domain.errors import OverlappingPlanVersion, ValidationFailed


def check_period(period: str) -> str:
    """A month ``2026-03`` or a quarter ``2026-Q1``."""
    text = period.strip()
    ok = (
        len(text) == 7
        and text[:4].isdigit()
        and text[4] == "-"
        and ((text[5:].isdigit() and 1 <= int(text[5:]) <= 12) or (text[5] == "Q" and text[6] in "1234"))
    )
    if not ok:
        raise ValidationFailed(
            f"period {period!r} must be a month like 2026-03 or a quarter like 2026-Q1", field="period"
        )
    return text


@register_kind
class CommissionPlan(PrmAggregate):
    KIND: ClassVar[str] = "plan"

    class Created(PrmAggregate.Created):
        plan_id: str
        partner_id: str | None
        name: str
        actor: str
        at: datetime

    class VersionPublished(PrmAggregate.Event):
        plan_id: str
        version: int
        effective_from: datetime
        terms: dict[str, Any]
        actor: str
        reason: str
        at: datetime

        def apply(self, aggregate: CommissionPlan) -> None:
            aggregate.versions.append(
                {"version": self.version, "effective_from": self.effective_from, "terms": self.terms}
            )

    class RecalculationRequested(PrmAggregate.Event):
        plan_id: str
        period: str
        actor: str
        reason: str
        at: datetime

        def apply(self, aggregate: CommissionPlan) -> None:
            aggregate.recalculations.append(self.period)

    @event(Created)
    def __init__(self, plan_id: str, partner_id: str | None, name: str, actor: str, at: datetime) -> None:
        self.plan_id = plan_id
        self.partner_id = None
        self.name = name
        self.versions: list[dict[str, Any]] = []
        self.recalculations: list[str] = []

    @staticmethod
    def create_id(plan_id: str, **_: Any) -> UUID:
        return CommissionPlan.id_for(plan_id)

    @classmethod
    def create(cls, *, plan_id: str, name: str, actor: str, at: datetime) -> CommissionPlan:
        return cls(
            plan_id=require_text(plan_id, "plan_id"),
            partner_id=None,
            name=require_text(name, "name"),
            actor=require_actor(actor),
            at=utc(at),
        )

    def publish_version(
        self, *, effective_from: datetime, terms: dict[str, Any], actor: str, reason: str, at: datetime
    ) -> int:
        effective_from = utc(effective_from)
        for existing in self.versions:
            if existing["effective_from"] == effective_from:
                raise OverlappingPlanVersion(
                    f"plan {self.plan_id} already has version {existing['version']} effective from"
                    f" {effective_from.isoformat()}; versions must start at distinct instants",
                    field="effective_from",
                )
        try:
            checked = PlanTerms.from_dict(terms)
            checked.validate()
        except ValueError as exc:
            raise ValidationFailed(f"invalid plan terms: {exc}", field="terms") from exc
        version = len(self.versions) + 1
        self.trigger_event(
            self.VersionPublished,
            partner_id=None,
            plan_id=self.plan_id,
            version=version,
            effective_from=effective_from,
            terms=checked.to_dict(),
            actor=require_actor(actor),
            reason=require_reason(reason, "publish a plan version"),
            at=utc(at),
        )
        return version

    def request_recalculation(self, *, period: str, actor: str, reason: str, at: datetime) -> None:
        if not self.versions:
            raise ValidationFailed(f"plan {self.plan_id} has no version to recalculate with")
        self.trigger_event(
            self.RecalculationRequested,
            partner_id=None,
            plan_id=self.plan_id,
            period=check_period(period),
            actor=require_actor(actor),
            reason=require_reason(reason, "request a recalculation"),
            at=utc(at),
        )


@register_kind
class Payout(PrmAggregate):
    """A payment to a partner of its payable commission balance in one currency."""

    KIND: ClassVar[str] = "payout"

    class Recorded(PrmAggregate.Created):
        payout_id: str
        partner_id: str
        currency: str
        period: str
        amount_minor: int
        reference: str | None
        actor: str
        at: datetime

    @event(Recorded)
    def __init__(
        self,
        payout_id: str,
        partner_id: str,
        currency: str,
        period: str,
        amount_minor: int,
        reference: str | None,
        actor: str,
        at: datetime,
    ) -> None:
        self.payout_id = payout_id
        self.partner_id = partner_id
        self.currency = currency
        self.period = period
        self.amount_minor = amount_minor
        self.reference = reference
        self.at = at

    @staticmethod
    def create_id(payout_id: str, **_: Any) -> UUID:
        return Payout.id_for(payout_id)
