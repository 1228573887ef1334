"""The partner: lifecycle, segments, tiers in force over time, people's training and certifications."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import event

from domain.base import PrmAggregate, register_kind, require_actor, require_reason, require_text
from domain.clock import quarter_label, quarter_start, utc
from domain.errors import CapacityExceeded, InvalidTransition, PartnerCannotRegister, ValidationFailed
from domain.program import PARTNER_SIZES, PARTNER_TYPES, TIERS, ProgramSettings, tier_rank
from domain.tiers import TierDecision, decide, qualified_tier

APPLIED = "applied"
APPROVED = "approved"
REJECTED = "rejected"
ONBOARDING = "onboarding"
ACTIVE = "active"
SUSPENDED = "suspended"
TERMINATED = "terminated"
PARTNER_STATUSES = (APPLIED, APPROVED, REJECTED, ONBOARDING, ACTIVE, SUSPENDED, TERMINATED)


def check_segments(partner_type: str, region: str, size: str) -> None:
    if partner_type not in PARTNER_TYPES:
        raise ValidationFailed(
            f"unknown partner type {partner_type!r}; types are {', '.join(PARTNER_TYPES)}", field="type"
        )
    if size not in PARTNER_SIZES:
        raise ValidationFailed(f"unknown size {size!r}; sizes are {', '.join(PARTNER_SIZES)}", field="size")
    if len(region) != 2 or not region.isalpha() or not region.isupper():
        raise ValidationFailed(
            f"region {region!r} must be an ISO 3166-1 alpha-2 country code such as VN", field="region"
        )


@register_kind
class Partner(PrmAggregate):
    KIND: ClassVar[str] = "partner"

    # ---- events -------------------------------------------------------
    class Applied(PrmAggregate.Created):
        partner_id: str
        name: str
        type: str
        region: str
        subregion: str | None
        size: str
        contact_email: str | None
        actor: str
        at: datetime

    class Approved(PrmAggregate.Event):
        actor: str
        reason: str | None
        at: datetime

        def apply(self, aggregate: Partner) -> None:
            aggregate.status = APPROVED
            aggregate.approved_at = self.at

    class OnboardingStarted(PrmAggregate.Event):
        actor: str
        at: datetime

        def apply(self, aggregate: Partner) -> None:
            aggregate.status = ONBOARDING

    class Rejected(PrmAggregate.Event):
        actor: str
        reason: str
        at: datetime

        def apply(self, aggregate: Partner) -> None:
            aggregate.status = REJECTED

    class Activated(PrmAggregate.Event):
        """Onboarding completed: a contract is signed and the onboarding training done."""

        actor: str
        contract_id: str
        at: datetime

        def apply(self, aggregate: Partner) -> None:
            aggregate.status = ACTIVE
            aggregate.activated_at = self.at

    class Suspended(PrmAggregate.Event):
        actor: str
        reason: str
        at: datetime

        def apply(self, aggregate: Partner) -> None:
            aggregate.status = SUSPENDED

    class Reinstated(PrmAggregate.Event):
        actor: str
        reason: str | None
        at: datetime

        def apply(self, aggregate: Partner) -> None:
            aggregate.status = ACTIVE

    class Terminated(PrmAggregate.Event):
        actor: str
        reason: str
        at: datetime

        def apply(self, aggregate: Partner) -> None:
            aggregate.status = TERMINATED
            aggregate.terminated_at = self.at

    class SegmentChanged(PrmAggregate.Event):
        type: str
        region: str
        subregion: str | None
        size: str
        actor: str
        at: datetime

        def apply(self, aggregate: Partner) -> None:
            aggregate.type = self.type
            aggregate.region = self.region
            aggregate.subregion = self.subregion
            aggregate.size = self.size

    class TierEvaluated(PrmAggregate.Event):
        quarter: str
        revenue_minor: int
        currency: str
        certified_people: int
        qualified_tier: str
        quarters_below: int
        actor: str
        at: datetime

        def apply(self, aggregate: Partner) -> None:
            aggregate.quarters_below = self.quarters_below
            aggregate.evaluated_quarters.append(self.quarter)

    class TierChanged(PrmAggregate.Event):
        """``tier`` is in force from ``effective_at``; ``source`` is evaluation or override."""

        from_tier: str
        tier: str
        effective_at: datetime
        source: str
        reason: str
        actor: str

        def apply(self, aggregate: Partner) -> None:
            aggregate.tier_history.append((self.effective_at, self.tier))
            aggregate.tier_history.sort(key=lambda item: item[0])

    class TrainingCompleted(PrmAggregate.Event):
        course: str
        person: str
        at: datetime
        actor: str

        def apply(self, aggregate: Partner) -> None:
            aggregate.trainings.append({"course": self.course, "person": self.person, "at": self.at})

    class CertificationGranted(PrmAggregate.Event):
        cert: str
        person: str
        granted_at: datetime
        expires_at: datetime | None
        actor: str

        def apply(self, aggregate: Partner) -> None:
            aggregate.certifications[f"{self.cert}\x1f{self.person}"] = (self.granted_at, self.expires_at)

    class ContractAttached(PrmAggregate.Event):
        contract_id: str
        at: datetime

        def apply(self, aggregate: Partner) -> None:
            aggregate.contract_ids.append(self.contract_id)

    class RegistrationOpened(PrmAggregate.Event):
        registration_id: str
        at: datetime

        def apply(self, aggregate: Partner) -> None:
            aggregate.open_registrations.append(self.registration_id)

    class RegistrationClosed(PrmAggregate.Event):
        registration_id: str
        outcome: str
        at: datetime

        def apply(self, aggregate: Partner) -> None:
            if self.registration_id in aggregate.open_registrations:
                aggregate.open_registrations.remove(self.registration_id)

    class CommissionRecalculationRequested(PrmAggregate.Event):
        """A plan recalculation reaches this partner's ledger (fanned out from the plan's request)."""

        plan_id: str
        period: str
        actor: str
        reason: str
        at: datetime

    # ---- creation -----------------------------------------------------
    @event(Applied)
    def __init__(
        self,
        partner_id: str,
        name: str,
        type: str,
        region: str,
        subregion: str | None,
        size: str,
        contact_email: str | None,
        actor: str,
        at: datetime,
    ) -> None:
        self.partner_id = partner_id
        self.name = name
        self.type = type
        self.region = region
        self.subregion = subregion
        self.size = size
        self.contact_email = contact_email
        self.status = APPLIED
        self.applied_at = at
        self.approved_at: datetime | None = None
        self.activated_at: datetime | None = None
        self.terminated_at: datetime | None = None
        self.tier_history: list[tuple[datetime, str]] = [(at, TIERS[0])]
        self.quarters_below = 0
        self.evaluated_quarters: list[str] = []
        self.trainings: list[dict[str, Any]] = []
        self.certifications: dict[str, tuple[datetime, datetime | None]] = {}
        self.contract_ids: list[str] = []
        self.open_registrations: list[str] = []

    @staticmethod
    def create_id(partner_id: str, **_: Any) -> UUID:
        return Partner.id_for(partner_id)

    @classmethod
    def apply_to_join(
        cls,
        *,
        partner_id: str,
        name: str,
        type: str,
        region: str,
        size: str,
        actor: str,
        at: datetime,
        subregion: str | None = None,
        contact_email: str | None = None,
    ) -> Partner:
        partner_id = require_text(partner_id, "partner_id")
        check_segments(type, region, size)
        return cls(
            partner_id=partner_id,
            name=require_text(name, "name"),
            type=type,
            region=region,
            subregion=subregion or None,
            size=size,
            contact_email=contact_email or None,
            actor=require_actor(actor),
            at=utc(at),
        )

    # ---- queries ------------------------------------------------------
    @property
    def tier(self) -> str:
        """The latest tier decided (it may take effect in the future)."""
        return self.tier_history[-1][1]

    def tier_at(self, at: datetime) -> str:
        """The tier in force at instant ``at``."""
        at = utc(at)
        current = TIERS[0]
        for effective_at, tier in self.tier_history:
            if effective_at <= at:
                current = tier
        return current

    def certified_people(self, at: datetime) -> int:
        at = utc(at)
        people = {
            key.split("\x1f", 1)[1]
            for key, (granted_at, expires_at) in self.certifications.items()
            if granted_at <= at and (expires_at is None or expires_at > at)
        }
        return len(people)

    def has_completed(self, course: str) -> bool:
        return any(t["course"] == course for t in self.trainings)

    @property
    def can_register_deals(self) -> bool:
        return self.status == ACTIVE

    # ---- lifecycle ----------------------------------------------------
    def _require(self, action: str, *allowed: str) -> None:
        if self.status not in allowed:
            raise InvalidTransition(
                f"cannot {action} partner {self.partner_id}: it is {self.status} (allowed from {', '.join(allowed)})",
                partner_id=self.partner_id,
                status=self.status,
            )

    def approve(self, actor: str, at: datetime, reason: str | None = None) -> None:
        self._require("approve", APPLIED)
        actor = require_actor(actor)
        self.trigger_event(self.Approved, partner_id=self.partner_id, actor=actor, reason=reason, at=utc(at))
        self.trigger_event(self.OnboardingStarted, partner_id=self.partner_id, actor=actor, at=utc(at))

    def reject(self, actor: str, reason: str, at: datetime) -> None:
        self._require("reject", APPLIED)
        self.trigger_event(
            self.Rejected,
            partner_id=self.partner_id,
            actor=require_actor(actor),
            reason=require_reason(reason, "reject a partner"),
            at=utc(at),
        )

    def complete_onboarding_if_ready(self, actor: str, at: datetime, course: str) -> bool:
        """Activate when a contract is signed and the onboarding course completed."""
        if self.status != ONBOARDING or not self.contract_ids or not self.has_completed(course):
            return False
        self.trigger_event(
            self.Activated,
            partner_id=self.partner_id,
            actor=require_actor(actor),
            contract_id=self.contract_ids[0],
            at=utc(at),
        )
        return True

    def suspend(self, actor: str, reason: str, at: datetime) -> None:
        self._require("suspend", ACTIVE)
        self.trigger_event(
            self.Suspended,
            partner_id=self.partner_id,
            actor=require_actor(actor),
            reason=require_reason(reason, "suspend a partner"),
            at=utc(at),
        )

    def reinstate(self, actor: str, at: datetime, reason: str | None = None) -> None:
        self._require("reinstate", SUSPENDED)
        self.trigger_event(
            self.Reinstated, partner_id=self.partner_id, actor=require_actor(actor), reason=reason, at=utc(at)
        )

    def terminate(self, actor: str, reason: str, at: datetime) -> None:
        self._require("terminate", ONBOARDING, ACTIVE, SUSPENDED)
        self.trigger_event(
            self.Terminated,
            partner_id=self.partner_id,
            actor=require_actor(actor),
            reason=require_reason(reason, "terminate a partner"),
            at=utc(at),
        )

    def change_segment(
        self,
        actor: str,
        at: datetime,
        *,
        type: str | None = None,
        region: str | None = None,
        subregion: str | None = None,
        size: str | None = None,
    ) -> None:
        self._require("change the segment of", APPLIED, APPROVED, ONBOARDING, ACTIVE, SUSPENDED)
        new_type = type or self.type
        new_region = region or self.region
        new_size = size or self.size
        new_subregion = subregion if subregion is not None else self.subregion
        check_segments(new_type, new_region, new_size)
        if (new_type, new_region, new_subregion, new_size) == (self.type, self.region, self.subregion, self.size):
            raise ValidationFailed("the segment is unchanged")
        self.trigger_event(
            self.SegmentChanged,
            partner_id=self.partner_id,
            type=new_type,
            region=new_region,
            subregion=new_subregion,
            size=new_size,
            actor=require_actor(actor),
            at=utc(at),
        )

    # ---- tiers --------------------------------------------------------
    def override_tier(self, tier: str, actor: str, reason: str, effective_at: datetime) -> None:
        tier_rank(tier)
        self._require("change the tier of", ONBOARDING, ACTIVE, SUSPENDED)
        if tier == self.tier:
            raise ValidationFailed(f"partner {self.partner_id} is already {tier}")
        _check_not_before_application(self, utc(effective_at))
        self.trigger_event(
            self.TierChanged,
            partner_id=self.partner_id,
            from_tier=self.tier,
            tier=tier,
            effective_at=utc(effective_at),
            source="override",
            reason=require_reason(reason, "override a tier"),
            actor=require_actor(actor),
        )

    def evaluate_tier(
        self,
        *,
        quarter_end: datetime,
        revenue_minor: int,
        settings: ProgramSettings,
        actor: str,
        at: datetime,
    ) -> TierDecision:
        """Quarter-end evaluation on trailing-four-quarter net revenue and certifications.

        ``quarter_end`` is the first instant of the next quarter (exclusive end
        of the evaluated quarter). Each quarter is evaluated at most once.
        """
        self._require("evaluate the tier of", ACTIVE, SUSPENDED)
        quarter_end = utc(quarter_end)
        if quarter_end != quarter_start(quarter_end):
            raise ValidationFailed("quarter_end must be the first instant of a quarter (e.g. 2026-04-01T00:00Z)")
        _check_not_before_application(self, quarter_end)
        evaluated = quarter_label(quarter_end - _ONE_SECOND)
        if evaluated in self.evaluated_quarters:
            raise InvalidTransition(f"quarter {evaluated} was already evaluated for {self.partner_id}")
        certified = self.certified_people(quarter_end - _ONE_SECOND)
        qualified = qualified_tier(revenue_minor, certified, settings)
        decision = decide(
            current=self.tier,
            qualified=qualified,
            quarters_below_before=self.quarters_below,
            next_quarter_start=quarter_end,
            grace_quarters=settings.demotion_grace_quarters,
        )
        actor = require_actor(actor)
        self.trigger_event(
            self.TierEvaluated,
            partner_id=self.partner_id,
            quarter=evaluated,
            revenue_minor=revenue_minor,
            currency=settings.program_currency,
            certified_people=certified,
            qualified_tier=qualified,
            quarters_below=decision.quarters_below,
            actor=actor,
            at=utc(at),
        )
        if decision.new_tier is not None and decision.effective_at is not None:
            direction = "promotion" if tier_rank(decision.new_tier) > tier_rank(self.tier) else "demotion"
            self.trigger_event(
                self.TierChanged,
                partner_id=self.partner_id,
                from_tier=self.tier,
                tier=decision.new_tier,
                effective_at=decision.effective_at,
                source="evaluation",
                reason=f"{direction} at {evaluated} evaluation: qualifies for {qualified}",
                actor=actor,
            )
        return decision

    # ---- people ------------------------------------------------------
    def record_training(self, course: str, person: str, at: datetime, actor: str) -> None:
        self._require("record training for", APPROVED, ONBOARDING, ACTIVE, SUSPENDED)
        self.trigger_event(
            self.TrainingCompleted,
            partner_id=self.partner_id,
            course=require_text(course, "course"),
            person=require_text(person, "person"),
            at=utc(at),
            actor=require_actor(actor),
        )

    def grant_certification(
        self, cert: str, person: str, granted_at: datetime, expires_at: datetime | None, actor: str
    ) -> None:
        self._require("certify people of", APPROVED, ONBOARDING, ACTIVE, SUSPENDED)
        if expires_at is not None and utc(expires_at) <= utc(granted_at):
            raise ValidationFailed("a certification must expire after it is granted")
        self.trigger_event(
            self.CertificationGranted,
            partner_id=self.partner_id,
            cert=require_text(cert, "cert"),
            person=require_text(person, "person"),
            granted_at=utc(granted_at),
            expires_at=utc(expires_at) if expires_at is not None else None,
            actor=require_actor(actor),
        )

    # ---- links to other aggregates ------------------------------------
    def attach_contract(self, contract_id: str, at: datetime) -> None:
        self._require("sign a contract with", APPROVED, ONBOARDING, ACTIVE, SUSPENDED)
        if contract_id in self.contract_ids:
            raise ValidationFailed(f"contract {contract_id} is already attached to {self.partner_id}")
        self.trigger_event(self.ContractAttached, partner_id=self.partner_id, contract_id=contract_id, at=utc(at))

    def open_registration(self, registration_id: str, at: datetime, capacity: int, tier: str) -> None:
        if self.status != ACTIVE:
            raise_cannot_register(self)
        if len(self.open_registrations) >= capacity:
            raise CapacityExceeded(
                f"partner {self.partner_id} already has {len(self.open_registrations)} open registrations,"
                f" the cap for tier {tier} is {capacity}; close or withdraw some before submitting more",
                partner_id=self.partner_id,
                open=len(self.open_registrations),
                capacity=capacity,
            )
        self.trigger_event(
            self.RegistrationOpened, partner_id=self.partner_id, registration_id=registration_id, at=utc(at)
        )

    def request_commission_recalculation(
        self, *, plan_id: str, period: str, actor: str, reason: str, at: datetime
    ) -> None:
        self.trigger_event(
            self.CommissionRecalculationRequested,
            partner_id=self.partner_id,
            plan_id=plan_id,
            period=period,
            actor=require_actor(actor),
            reason=require_reason(reason, "request a recalculation"),
            at=utc(at),
        )

    def close_registration(self, registration_id: str, outcome: str, at: datetime) -> None:
        if registration_id not in self.open_registrations:
            return
        self.trigger_event(
            self.RegistrationClosed,
            partner_id=self.partner_id,
            registration_id=registration_id,
            outcome=outcome,
            at=utc(at),
        )


def raise_cannot_register(partner: Partner) -> None:
    raise PartnerCannotRegister(
        f"partner {partner.partner_id} is {partner.status} and cannot register new deals (only active partners can)",
        partner_id=partner.partner_id,
        status=partner.status,
    )


def _check_not_before_application(partner: Partner, effective_at: datetime) -> None:
    """A tier change effective before the application would sort before the initial ``registered``
    entry of ``tier_history`` and be silently shadowed by it: refuse it."""
    if effective_at < partner.applied_at:
        raise ValidationFailed(
            f"a tier change for {partner.partner_id} cannot take effect at {effective_at.isoformat()},"
            f" before the partner applied ({partner.applied_at.isoformat()})",
            field="effective_at",
        )


_ONE_SECOND = timedelta(seconds=1)
