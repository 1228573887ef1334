"""The partner programme application: one command method per lifecycle step.

Each method loads aggregates, calls one domain method, saves, and returns a
``CommandResult`` with the aggregate id and the recorded position, so callers
can wait for projections to reach that position.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, Repository
from eventsourcing.domain import DomainEventProtocol, MutableOrImmutableAggregate
from eventsourcing.persistence import (
    JSONTranscoder,
    Notification,
    RecordConflictError,
    Recording,
    StoredEvent,
    Transcoding,
)
from eventsourcing.utils import get_topic

from domain.base import PrmAggregate, require_actor, wire_type
from domain.clock import now, utc
from domain.conflicts import CONFLICT_KINDS, PARTNER_VS_PARTNER
from domain.conflicts import conflict_id as conflict_id_of
from domain.contract import Contract
from domain.errors import (
    AlreadyExists,
    DomainError,
    DuplicateWithDifferentData,
    NotFound,
    PartnerCannotRegister,
    UnknownPartner,
    ValidationFailed,
)
from domain.matching import Customer
from domain.money import check_currency
from domain.partner import Partner
from domain.plan import CommissionPlan, Payout, check_period
from domain.program import PROGRAM_ID, Program, ProgramSettings
from domain.registration import APPROVED, WON, DealRegistration
from domain.registry import RegistrationIndex
from domain.sale import Opportunity, Sale

A = TypeVar("A", bound=PrmAggregate)


class DateAsISO(Transcoding):
    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


@dataclass(frozen=True)
class CommandResult:
    """What a command did: the aggregate, the store position reached, the events recorded."""

    aggregate_id: UUID
    business_id: str
    position: int | None
    events: list[str] = field(default_factory=list)
    duplicate: bool = False
    details: dict[str, Any] = field(default_factory=dict)


_REGISTRATION_TOPICS = [
    get_topic(cls)
    for cls in (
        DealRegistration.Submitted,
        DealRegistration.Approved,
        DealRegistration.Rejected,
        DealRegistration.ProtectionExtended,
        DealRegistration.Won,
        DealRegistration.Lost,
        DealRegistration.Expired,
        DealRegistration.Withdrawn,
        DealRegistration.ConflictResolved,
        DealRegistration.ConflictDismissed,
    )
]

_CONTRACT_TOPICS = [get_topic(Contract.Signed), get_topic(Contract.Amended)]


class PartnerProgram(Application[UUID]):
    """Commands of the partner programme over an event store chosen by the environment."""

    name = "PartnerProgram"
    log_section_size = 1000
    # Aggregates are cached and fast-forwarded from the store on each get, so
    # several processes writing the same store still see each other's events.
    env: ClassVar[dict[str, str]] = {"AGGREGATE_CACHE_MAXSIZE": "10000", "AGGREGATE_CACHE_FASTFORWARD": "y"}

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self._index = RegistrationIndex()
        self._index_lock = threading.Lock()

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())

    # ---- plumbing -----------------------------------------------------
    def _save(self, business_id: str, *aggregates: PrmAggregate | None, **details: Any) -> CommandResult:
        pending = [a for a in aggregates if a is not None]
        recordings = self.save(*pending)
        first = pending[0]
        return CommandResult(
            aggregate_id=first.id,
            business_id=business_id,
            position=max((r.notification.id for r in recordings), default=None),
            events=[wire_type(r.domain_event) for r in recordings],
            details=details,
        )

    def _get(self, cls: type[A], business_id: str, what: str) -> A:
        try:
            aggregate: PrmAggregate = self.repository.get(cls.id_for(business_id))
        except AggregateNotFoundError:
            if cls is Partner:
                raise UnknownPartner(f"unknown partner {business_id!r}", partner_id=business_id) from None
            raise NotFound(f"unknown {what} {business_id!r}", **{f"{cls.KIND}_id": business_id}) from None
        if not isinstance(aggregate, cls):
            raise NotFound(f"unknown {what} {business_id!r}")
        return aggregate

    def _exists(self, cls: type[PrmAggregate], business_id: str) -> bool:
        try:
            self.repository.get(cls.id_for(business_id))
        except AggregateNotFoundError:
            return False
        return True

    def partner(self, partner_id: str) -> Partner:
        return self._get(Partner, partner_id, "partner")

    def registration(self, registration_id: str) -> DealRegistration:
        return self._get(DealRegistration, registration_id, "registration")

    def contract(self, contract_id: str) -> Contract:
        return self._get(Contract, contract_id, "contract")

    def sale(self, sale_id: str) -> Sale:
        return self._get(Sale, sale_id, "sale")

    def plan(self, plan_id: str) -> CommissionPlan:
        return self._get(CommissionPlan, plan_id, "commission plan")

    def settings(self) -> ProgramSettings:
        try:
            program: PrmAggregate = self.repository.get(Program.id_for(PROGRAM_ID))
        except AggregateNotFoundError:
            return ProgramSettings()
        assert isinstance(program, Program)
        return program.settings

    def max_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    def _registration_index(self) -> RegistrationIndex:
        """Catch the index up with the store (called under the lock)."""
        while True:
            batch = self.notification_log.select(start=self._index.position + 1, limit=500, topics=_REGISTRATION_TOPICS)
            if not batch:
                return self._index
            for notification in batch:
                self._index.apply(self.mapper.to_domain_event(notification), notification.id)

    def _contract_in_force(self, partner: Partner, day: date) -> Contract | None:
        for contract_id in partner.contract_ids:
            contract = self.contract(contract_id)
            if contract.in_force_on(day):
                return contract
        return None

    # ---- programme ------------------------------------------------------
    def change_settings(
        self, changes: dict[str, Any], *, actor: str, reason: str, at: datetime | None = None
    ) -> CommandResult:
        try:
            program: PrmAggregate = self.repository.get(Program.id_for(PROGRAM_ID))
        except AggregateNotFoundError:
            program = Program.start()
        assert isinstance(program, Program)
        program.change_settings(changes, actor, reason, at or now())
        return self._save(PROGRAM_ID, program)

    # ---- partners -------------------------------------------------------
    def apply_partner(
        self,
        *,
        partner_id: str,
        name: str,
        type: str,
        region: str,
        size: str,
        actor: str,
        subregion: str | None = None,
        contact_email: str | None = None,
        at: datetime | None = None,
    ) -> CommandResult:
        if self._exists(Partner, partner_id):
            raise AlreadyExists(f"partner {partner_id} already exists", partner_id=partner_id)
        partner = Partner.apply_to_join(
            partner_id=partner_id,
            name=name,
            type=type,
            region=region,
            size=size,
            actor=actor,
            at=at or now(),
            subregion=subregion,
            contact_email=contact_email,
        )
        return self._save(partner_id, partner)

    def approve_partner(
        self, partner_id: str, *, actor: str, reason: str | None = None, at: datetime | None = None
    ) -> CommandResult:
        partner = self.partner(partner_id)
        partner.approve(actor, at or now(), reason)
        return self._save(partner_id, partner)

    def reject_partner(self, partner_id: str, *, actor: str, reason: str, at: datetime | None = None) -> CommandResult:
        partner = self.partner(partner_id)
        partner.reject(actor, reason, at or now())
        return self._save(partner_id, partner)

    def suspend_partner(self, partner_id: str, *, actor: str, reason: str, at: datetime | None = None) -> CommandResult:
        partner = self.partner(partner_id)
        partner.suspend(actor, reason, at or now())
        return self._save(partner_id, partner)

    def reinstate_partner(
        self, partner_id: str, *, actor: str, reason: str | None = None, at: datetime | None = None
    ) -> CommandResult:
        partner = self.partner(partner_id)
        partner.reinstate(actor, at or now(), reason)
        return self._save(partner_id, partner)

    def terminate_partner(
        self, partner_id: str, *, actor: str, reason: str, at: datetime | None = None
    ) -> CommandResult:
        partner = self.partner(partner_id)
        partner.terminate(actor, reason, at or now())
        return self._save(partner_id, partner)

    def change_segment(
        self,
        partner_id: str,
        *,
        actor: str,
        type: str | None = None,
        region: str | None = None,
        subregion: str | None = None,
        size: str | None = None,
        at: datetime | None = None,
    ) -> CommandResult:
        partner = self.partner(partner_id)
        partner.change_segment(actor, at or now(), type=type, region=region, subregion=subregion, size=size)
        return self._save(partner_id, partner)

    def override_tier(
        self, partner_id: str, *, tier: str, actor: str, reason: str, effective_at: datetime | None = None
    ) -> CommandResult:
        partner = self.partner(partner_id)
        partner.override_tier(tier, actor, reason, effective_at or now())
        return self._save(partner_id, partner)

    def evaluate_tier(
        self, partner_id: str, *, quarter_end: datetime, revenue_minor: int, actor: str, at: datetime | None = None
    ) -> CommandResult:
        partner = self.partner(partner_id)
        decision = partner.evaluate_tier(
            quarter_end=quarter_end, revenue_minor=revenue_minor, settings=self.settings(), actor=actor, at=at or now()
        )
        return self._save(partner_id, partner, qualified=decision.qualified, new_tier=decision.new_tier)

    def record_training(
        self, partner_id: str, *, course: str, person: str, actor: str, at: datetime | None = None
    ) -> CommandResult:
        partner = self.partner(partner_id)
        when = at or now()
        partner.record_training(course, person, when, actor)
        partner.complete_onboarding_if_ready(actor, when, self.settings().onboarding_course)
        return self._save(partner_id, partner)

    def grant_certification(
        self,
        partner_id: str,
        *,
        cert: str,
        person: str,
        actor: str,
        expires_at: datetime | None,
        granted_at: datetime | None = None,
    ) -> CommandResult:
        partner = self.partner(partner_id)
        partner.grant_certification(cert, person, granted_at or now(), expires_at, actor)
        return self._save(partner_id, partner)

    # ---- contracts -----------------------------------------------------
    def sign_contract(
        self,
        *,
        contract_id: str,
        partner_id: str,
        starts_on: date,
        ends_on: date,
        auto_renew: bool,
        territory: list[str],
        terms: str,
        commission_plan_id: str,
        actor: str,
        at: datetime | None = None,
    ) -> CommandResult:
        when = at or now()
        partner = self.partner(partner_id)
        if self._exists(Contract, contract_id):
            raise AlreadyExists(f"contract {contract_id} already exists", contract_id=contract_id)
        if not self._exists(CommissionPlan, commission_plan_id):
            raise NotFound(f"unknown commission plan {commission_plan_id!r}", field="commission_plan_id")
        contract = Contract.sign(
            contract_id=contract_id,
            partner_id=partner_id,
            starts_on=starts_on,
            ends_on=ends_on,
            auto_renew=auto_renew,
            territory=territory,
            terms=terms,
            commission_plan_id=commission_plan_id,
            actor=actor,
            at=when,
        )
        partner.attach_contract(contract_id, when)
        partner.complete_onboarding_if_ready(actor, when, self.settings().onboarding_course)
        return self._save(contract_id, contract, partner)

    def amend_contract(
        self,
        contract_id: str,
        *,
        actor: str,
        reason: str,
        terms: str | None = None,
        territory: list[str] | None = None,
        commission_plan_id: str | None = None,
        at: datetime | None = None,
    ) -> CommandResult:
        contract = self.contract(contract_id)
        if commission_plan_id is not None and not self._exists(CommissionPlan, commission_plan_id):
            raise NotFound(f"unknown commission plan {commission_plan_id!r}", field="commission_plan_id")
        contract.amend(
            actor=actor,
            reason=reason,
            at=at or now(),
            terms=terms,
            territory=territory,
            commission_plan_id=commission_plan_id,
        )
        return self._save(contract_id, contract)

    def renew_contract(
        self, contract_id: str, *, actor: str, ends_on: date | None = None, at: datetime | None = None
    ) -> CommandResult:
        contract = self.contract(contract_id)
        contract.renew(actor=actor, at=at or now(), ends_on=ends_on)
        return self._save(contract_id, contract)

    def terminate_contract(
        self, contract_id: str, *, actor: str, reason: str, effective_on: date | None = None, at: datetime | None = None
    ) -> CommandResult:
        when = at or now()
        contract = self.contract(contract_id)
        contract.terminate(actor=actor, reason=reason, effective_on=effective_on or when.date(), at=when)
        return self._save(contract_id, contract)

    def expire_contract(self, contract_id: str, *, actor: str, at: datetime | None = None) -> CommandResult:
        contract = self.contract(contract_id)
        contract.expire(actor=actor, at=at or now())
        return self._save(contract_id, contract)

    # ---- deal registrations ---------------------------------------------
    def submit_registration(
        self,
        *,
        registration_id: str,
        partner_id: str,
        customer: dict[str, Any],
        estimated_value_minor: int,
        currency: str,
        products: Sequence[str],
        actor: str,
        expected_close_on: date | None = None,
        submitted_at: datetime | None = None,
    ) -> CommandResult:
        when = utc(submitted_at or now())
        partner = self.partner(partner_id)
        if self._exists(DealRegistration, registration_id):
            raise AlreadyExists(f"registration {registration_id} already exists", registration_id=registration_id)
        if partner.can_register_deals and self._contract_in_force(partner, when.date()) is None:
            raise PartnerCannotRegister(
                f"partner {partner_id} has no contract in force on {when.date().isoformat()} and cannot register deals",
                partner_id=partner_id,
            )
        settings = self.settings()
        tier = partner.tier_at(when)
        with self._index_lock:
            blocking = self._registration_index().blocking(
                partner_id=partner_id,
                customer=Customer.from_dict(customer),
                at=when,
                threshold=settings.name_similarity_threshold_bp / 10_000,
                registration_id=registration_id,
            )
        registration = DealRegistration.submit(
            registration_id=registration_id,
            partner_id=partner_id,
            customer=customer,
            estimated_value_minor=estimated_value_minor,
            currency=currency,
            products=list(products),
            expected_close_on=expected_close_on,
            submitted_at=when,
            conflicts_with=blocking,
            actor=actor,
        )
        partner.open_registration(registration_id, when, settings.registration_capacity[tier], tier)
        return self._save(registration_id, registration, partner, conflicts=[b["conflict_id"] for b in blocking])

    def approve_registration(self, registration_id: str, *, actor: str, at: datetime | None = None) -> CommandResult:
        when = utc(at or now())
        registration = self.registration(registration_id)
        settings = self.settings()
        with self._index_lock:
            blocking = self._registration_index().blocking(
                partner_id=registration.partner_id,
                customer=Customer.from_dict(registration.customer),
                at=when,
                threshold=settings.name_similarity_threshold_bp / 10_000,
                registration_id=registration_id,
            )
        registration.approve(actor=actor, at=when, protection_days=settings.protection_days, blocking=blocking)
        return self._save(registration_id, registration)

    def _close(
        self, registration: DealRegistration, outcome: str, when: datetime, *others: PrmAggregate
    ) -> CommandResult:
        partner = self.partner(registration.partner_id)
        partner.close_registration(registration.registration_id, outcome, when)
        return self._save(registration.registration_id, registration, partner, *others)

    def reject_registration(
        self,
        registration_id: str,
        *,
        actor: str,
        reason_code: str,
        reason: str | None = None,
        at: datetime | None = None,
    ) -> CommandResult:
        when = at or now()
        registration = self.registration(registration_id)
        registration.reject(actor=actor, reason_code=reason_code, reason=reason, at=when)
        return self._close(registration, "rejected", when)

    def extend_protection(
        self, registration_id: str, *, actor: str, reason: str, at: datetime | None = None
    ) -> CommandResult:
        registration = self.registration(registration_id)
        registration.extend_protection(
            actor=actor, reason=reason, at=at or now(), extension_days=self.settings().protection_extension_days
        )
        return self._save(registration_id, registration)

    def mark_registration_lost(
        self, registration_id: str, *, actor: str, reason: str, at: datetime | None = None
    ) -> CommandResult:
        when = at or now()
        registration = self.registration(registration_id)
        registration.mark_lost(actor=actor, reason=reason, at=when)
        return self._close(registration, "lost", when)

    def withdraw_registration(
        self, registration_id: str, *, actor: str, reason: str | None = None, at: datetime | None = None
    ) -> CommandResult:
        when = at or now()
        registration = self.registration(registration_id)
        registration.withdraw(actor=actor, reason=reason, at=when)
        return self._close(registration, "withdrawn", when)

    def expire_registrations(self, *, at: datetime | None = None) -> list[CommandResult]:
        """Expire every approved registration whose protection has ended by ``at``."""
        when = utc(at or now())
        with self._index_lock:
            due = [
                r.registration_id
                for r in self._registration_index().open.values()
                if r.status == APPROVED and r.protected_until is not None and r.protected_until <= when
            ]
        results = []
        for registration_id in sorted(due):
            registration = self.registration(registration_id)
            registration.expire(at=when)
            results.append(self._close(registration, "expired", registration.protected_until or when))
        return results

    def resolve_conflict(
        self,
        *,
        conflict_id: str,
        kind: str,
        registration_id: str,
        winner: str,
        actor: str,
        reason: str,
        other_registration_id: str | None = None,
        at: datetime | None = None,
    ) -> CommandResult:
        """Decide a conflict; each registration involved records the decision."""
        when = at or now()
        if kind not in CONFLICT_KINDS:
            raise ValidationFailed(f"unknown conflict kind {kind!r}", field="kind")
        registrations = [self.registration(registration_id)]
        if kind == PARTNER_VS_PARTNER:
            if not other_registration_id:
                raise ValidationFailed(
                    "a partner-vs-partner conflict names both registrations", field="other_registration_id"
                )
            if other_registration_id == registration_id:
                raise ValidationFailed(
                    "a conflict is between two different registrations", field="other_registration_id"
                )
            registrations.append(self.registration(other_registration_id))
            if winner not in (registration_id, other_registration_id):
                raise ValidationFailed("the winner must be one of the two registrations", field="winner")
            expected = {
                conflict_id_of(PARTNER_VS_PARTNER, registration_id, other_registration_id),
                conflict_id_of(PARTNER_VS_PARTNER, other_registration_id, registration_id),
            }
            if conflict_id not in expected:
                raise ValidationFailed(
                    f"conflict {conflict_id} is not the conflict between {registration_id} and {other_registration_id}",
                    field="conflict_id",
                )
        for registration in registrations:
            registration.resolve_conflict(
                conflict_id=conflict_id, kind=kind, winner=winner, actor=actor, reason=reason, at=when
            )
        return self._save(registration_id, *registrations)

    def dismiss_conflict(
        self, *, conflict_id: str, kind: str, registration_id: str, actor: str, reason: str, at: datetime | None = None
    ) -> CommandResult:
        registration = self.registration(registration_id)
        registration.dismiss_conflict(conflict_id=conflict_id, kind=kind, actor=actor, reason=reason, at=at or now())
        return self._save(registration_id, registration)

    # ---- sales -----------------------------------------------------------
    def record_sale(
        self,
        *,
        sale_id: str,
        partner_id: str | None,
        customer: dict[str, Any],
        lines: list[dict[str, Any]],
        occurred_at: datetime,
        source: str,
        registration_id: str | None = None,
        message_id: str | None = None,
    ) -> CommandResult:
        """Record a sale. A re-delivered identical sale is a no-op; different data is refused."""
        occurred = utc(occurred_at)
        try:
            existing: PrmAggregate | None = self.repository.get(Sale.id_for(sale_id))
        except AggregateNotFoundError:
            existing = None
        if isinstance(existing, Sale):
            try:
                same = existing.same_facts(
                    partner_id=partner_id,
                    registration_id=registration_id,
                    customer=customer,
                    lines=lines,
                    occurred_at=occurred,
                )
            except DomainError:
                same = False
            if same:
                return CommandResult(existing.id, sale_id, None, duplicate=True)
            raise DuplicateWithDifferentData(
                f"sale {sale_id} was already recorded with different data", sale_id=sale_id
            )
        flags: list[str] = []
        partner: Partner | None = None
        registration: DealRegistration | None = None
        bonus = False
        if partner_id:
            partner = self.partner(partner_id)
            if partner.status != "active":
                flags.append(f"partner_{partner.status}")
            if self._contract_in_force(partner, occurred.date()) is None:
                flags.append("no_contract_in_force")
        if registration_id:
            if not partner_id:
                raise ValidationFailed("a direct sale cannot reference a deal registration", field="registration_id")
            try:
                registration = self.registration(registration_id)
            except NotFound:
                flags.append("registration_not_found")
                registration = None
            if registration is not None:
                if registration.partner_id != partner_id:
                    flags.append("registration_of_another_partner")
                    registration = None
                elif (
                    registration.status in (APPROVED, WON)
                    and registration.approved_at is not None
                    and (
                        registration.protected_until is not None
                        and registration.approved_at <= occurred < registration.protected_until
                    )
                ):
                    bonus = True
                else:
                    flags.append("registration_not_protected")
        sale = Sale.record(
            sale_id=sale_id,
            partner_id=partner_id,
            registration_id=registration_id,
            customer=customer,
            lines=lines,
            occurred_at=occurred,
            source=source,
            flags=flags,
            registration_bonus=bonus,
            message_id=message_id,
        )
        if registration is not None and bonus and registration.status == APPROVED:
            registration.mark_won(sale_id=sale_id, at=occurred)
            assert partner is not None
            partner.close_registration(registration.registration_id, "won", occurred)
            return self._save(sale_id, sale, registration, partner, flags=flags)
        return self._save(sale_id, sale, flags=flags)

    def refund_sale(
        self,
        *,
        sale_id: str,
        refund_id: str,
        amount_minor: int,
        currency: str,
        occurred_at: datetime,
        source: str,
        reason: str | None = None,
        message_id: str | None = None,
    ) -> CommandResult:
        sale = self.sale(sale_id)
        recorded = sale.refund(
            refund_id=refund_id,
            amount_minor=amount_minor,
            currency=currency,
            occurred_at=occurred_at,
            reason=reason,
            source=source,
            message_id=message_id,
        )
        if not recorded:
            return CommandResult(sale.id, sale_id, None, duplicate=True)
        return self._save(sale_id, sale)

    def open_opportunity(
        self,
        *,
        opportunity_id: str,
        owner: str,
        customer: dict[str, Any],
        estimated_value_minor: int,
        currency: str,
        opened_at: datetime,
        source: str,
        message_id: str | None = None,
    ) -> CommandResult:
        opportunity = Opportunity.open(
            opportunity_id=opportunity_id,
            owner=owner,
            customer=customer,
            estimated_value_minor=estimated_value_minor,
            currency=currency,
            opened_at=opened_at,
            source=source,
            message_id=message_id,
        )
        try:
            existing: PrmAggregate = self.repository.get(opportunity.id)
        except AggregateNotFoundError:
            return self._save(opportunity_id, opportunity)
        assert isinstance(existing, Opportunity)
        same = (
            existing.owner,
            existing.customer,
            existing.estimated_value_minor,
            existing.currency,
            existing.opened_at,
        ) == (
            opportunity.owner,
            opportunity.customer,
            opportunity.estimated_value_minor,
            opportunity.currency,
            opportunity.opened_at,
        )
        if not same:
            raise DuplicateWithDifferentData(f"opportunity {opportunity_id} was already recorded with different data")
        return CommandResult(existing.id, opportunity_id, None, duplicate=True)

    # ---- plans and payouts -------------------------------------------------
    def create_plan(self, *, plan_id: str, name: str, actor: str, at: datetime | None = None) -> CommandResult:
        if self._exists(CommissionPlan, plan_id):
            raise AlreadyExists(f"commission plan {plan_id} already exists", plan_id=plan_id)
        plan = CommissionPlan.create(plan_id=plan_id, name=name, actor=actor, at=at or now())
        return self._save(plan_id, plan)

    def publish_plan_version(
        self,
        plan_id: str,
        *,
        effective_from: datetime,
        terms: dict[str, Any],
        actor: str,
        reason: str,
        at: datetime | None = None,
    ) -> CommandResult:
        plan = self.plan(plan_id)
        version = plan.publish_version(
            effective_from=effective_from, terms=terms, actor=actor, reason=reason, at=at or now()
        )
        return self._save(plan_id, plan, version=version)

    def request_recalculation(
        self, plan_id: str, *, period: str, actor: str, reason: str, at: datetime | None = None
    ) -> CommandResult:
        """Record the request on the plan and on every partner with a contract on that plan.

        The partner events carry the request into each partner's ordered stream,
        so a ledger worker that sees only some partners adjusts each of them.
        """
        when = at or now()
        plan = self.plan(plan_id)
        plan.request_recalculation(period=period, actor=actor, reason=reason, at=when)
        partners = [self.partner(pid) for pid in self.partners_on_plan(plan_id)]
        for partner in partners:
            partner.request_commission_recalculation(
                plan_id=plan_id, period=plan.recalculations[-1], actor=actor, reason=reason, at=when
            )
        return self._save(plan_id, plan, *partners, partners=[p.partner_id for p in partners])

    def partners_on_plan(self, plan_id: str) -> list[str]:
        """Partners that have (or had) a contract on ``plan_id``, from the contract events in the store."""
        partners: set[str] = set()
        position = 1
        while True:
            batch = self.notification_log.select(start=position, limit=self.log_section_size, topics=_CONTRACT_TOPICS)
            if not batch:
                return sorted(partners)
            for notification in batch:
                event = self.mapper.to_domain_event(notification)
                partner_id = getattr(event, "partner_id", None)
                if getattr(event, "commission_plan_id", None) == plan_id and partner_id:
                    partners.add(partner_id)
            position = batch[-1].id + 1

    def record_payout(
        self,
        *,
        payout_id: str,
        partner_id: str,
        currency: str,
        period: str,
        amount_minor: int,
        payable_minor: int,
        actor: str,
        reference: str | None = None,
        at: datetime | None = None,
    ) -> CommandResult:
        """Record a payout of exactly the payable balance (read from the ledger by the caller)."""
        self.partner(partner_id)
        if self._exists(Payout, payout_id):
            raise AlreadyExists(f"payout {payout_id} already exists", payout_id=payout_id)
        if amount_minor != payable_minor or amount_minor <= 0:
            raise ValidationFailed(
                f"a payout pays exactly the payable balance: {payable_minor} {currency} is payable,"
                f" {amount_minor} was asked",
                field="amount_minor",
            )
        payout = Payout(
            payout_id=payout_id,
            partner_id=partner_id,
            currency=check_currency(currency),
            period=check_period(period),
            amount_minor=amount_minor,
            reference=reference,
            actor=require_actor(actor),
            at=utc(at or now()),
        )
        return self._save(payout_id, payout)

    # ---- inbound batches (the ingest consumer) -------------------------------
    def record_inbound_batch(
        self,
        commands: Sequence[InboundCommand],
        *,
        load_events: EventLoader | None = None,
        aggregates: InboundAggregates | None = None,
        insert_events: EventInserter | None = None,
        conflict_attempts: int = 5,
    ) -> list[InboundOutcome]:
        """Apply many inbound commands in order and record all their events in ONE store transaction.

        Each command runs the very method it would run on its own (``record_sale``, ``refund_sale`` or
        ``open_opportunity``, looked up on the instance), so duplicates, ``DuplicateWithDifferentData``,
        refunds above the sale (also of a sale recorded earlier in the same batch), registration wins and
        flags behave exactly as command by command. Inside the batch those methods see a working set of
        aggregates instead of the store: each aggregate is loaded once (``load_events``, when given, loads
        the whole batch's aggregates in one read; see ``EventLoader``), later commands see what earlier ones
        did, and ``save`` only collects the new events. With ``load_events``, ``aggregates`` (one per caller,
        used by one thread) keeps the aggregates a batch read (partners, contracts…) between batches: the next
        batch fast-forwards them with the same read instead of copying them out of the repository's cache.
        ``insert_events``, when given, records the batch's stored events instead of the recorder's
        ``insert_events``.

        Returns one outcome per command, in order: its ``CommandResult`` (with the position and events it
        recorded once the batch is saved), or the ``DomainError`` that refused it. A refused command leaves
        no trace: every aggregate it changed is rebuilt from the store and the events the batch had accepted
        before it. Any other exception aborts the batch (nothing is recorded) as an ``InboundBatchError``
        naming the command. A conflict with another writer on the final save (``RecordConflictError``)
        reloads the aggregates and runs the whole batch again, up to ``conflict_attempts`` times.
        """
        for command in commands:
            if command.name not in INBOUND_COMMANDS:
                raise ValueError(f"not an inbound command: {command.name!r}")
        known = aggregates if load_events is not None else None
        attempt = 0
        while True:
            attempt += 1
            batch = _InboundBatch(self, load_events, known, insert_events)
            try:
                return batch.commit(batch.run(commands))
            except RecordConflictError:
                batch.forget()
                if attempt >= conflict_attempts:
                    raise
            except BaseException:
                batch.forget()
                raise

    @property
    def repository(self) -> Repository[UUID]:
        """The store's repository; inside ``record_inbound_batch`` (same thread), the batch's working set."""
        batch = _active_batch(self)
        return batch.view if batch is not None else self._repository

    def save(
        self, *objs: MutableOrImmutableAggregate[UUID] | DomainEventProtocol[UUID] | None, **kwargs: Any
    ) -> list[Recording[UUID]]:
        """Record the pending events of ``objs``; inside ``record_inbound_batch`` (same thread), collect them."""
        batch = _active_batch(self)
        if batch is not None:
            batch.collect(objs)
            return []
        return super().save(*objs, **kwargs)


INBOUND_COMMANDS: frozenset[str] = frozenset({"record_sale", "refund_sale", "open_opportunity"})


class InboundAggregates:
    """Aggregates at their recorded state, kept between inbound batches (least recently used dropped first).

    Only ``record_inbound_batch`` changes it: it adds what a batch recorded or read, fast-forwards what it
    reuses, and forgets everything a failed attempt touched.
    """

    def __init__(self, max_size: int = 20_000) -> None:
        self.max_size = max_size
        self._items: dict[UUID, PrmAggregate] = {}

    def __len__(self) -> int:
        return len(self._items)

    def take(self, aggregate_id: UUID) -> PrmAggregate | None:
        """The aggregate, marked as recently used (``None`` if not kept)."""
        aggregate = self._items.pop(aggregate_id, None)
        if aggregate is not None:
            self._items[aggregate_id] = aggregate
        return aggregate

    def keep(self, aggregates: Mapping[UUID, PrmAggregate | None]) -> None:
        for aggregate_id, aggregate in aggregates.items():
            self._items.pop(aggregate_id, None)
            if aggregate is not None:
                self._items[aggregate_id] = aggregate
        while len(self._items) > self.max_size:
            del self._items[next(iter(self._items))]

    def forget(self, ids: Iterable[UUID]) -> None:
        for aggregate_id in ids:
            self._items.pop(aggregate_id, None)


EventLoader = Callable[[Mapping[UUID, int]], Mapping[UUID, Sequence[StoredEvent]]]
"""Bulk read of the store: for each aggregate id, its stored events with a version above the given one, in
version order (ids without such events may be left out). Lets a batch load its aggregates in one query."""

EventInserter = Callable[[Sequence[StoredEvent]], Sequence[int]]
"""Records stored events in one transaction, exactly as the application recorder's ``insert_events`` (same
table lock, optimistic-concurrency ``IntegrityError``), and returns their notification ids in order."""


@dataclass(frozen=True)
class InboundCommand:
    """One inbound command of a batch: ``name`` is ``record_sale``, ``refund_sale`` or ``open_opportunity``,
    ``args`` its keyword arguments."""

    name: str
    args: Mapping[str, Any]


InboundOutcome = CommandResult | DomainError


class InboundBatchError(Exception):
    """Command ``index`` of an inbound batch failed with something other than a ``DomainError``
    (``cause``: an infrastructure failure or a bug); nothing of the batch was recorded."""

    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(f"inbound command #{index} failed: {type(cause).__name__}: {cause}")
        self.index = index
        self.cause = cause


_ACTIVE_BATCH = threading.local()
_WIRE_TYPES: dict[type, str] = {}


def _wire_type(event: Any) -> str:
    """``wire_type(event)``, remembered per event class (it runs a regular expression)."""
    try:
        return _WIRE_TYPES[type(event)]
    except KeyError:
        name = _WIRE_TYPES[type(event)] = wire_type(event)
        return name


def _active_batch(program: PartnerProgram) -> _InboundBatch | None:
    """The inbound batch this thread is running on ``program``, if any."""
    batch: _InboundBatch | None = getattr(_ACTIVE_BATCH, "batch", None)
    return batch if batch is not None and batch.program is program else None


class _BatchRepository(Repository[UUID]):
    """What the commands of an inbound batch see as ``program.repository``: the batch's working set."""

    def __init__(self, batch: _InboundBatch) -> None:
        super().__init__(batch.program.events)
        self._batch = batch

    def get(self, aggregate_id: UUID, *, version: int | None = None, **kwargs: Any) -> Any:
        if version is not None:
            return self._batch.store.get(aggregate_id, version=version, **kwargs)
        return self._batch.get(aggregate_id)


class _InboundBatch:
    """The working state of one attempt at an inbound batch (see ``PartnerProgram.record_inbound_batch``)."""

    def __init__(
        self,
        program: PartnerProgram,
        load_events: EventLoader | None,
        known: InboundAggregates | None,
        insert_events: EventInserter | None = None,
    ) -> None:
        self.program = program
        self.store: Repository[UUID] = program._repository
        self.load_events = load_events
        self.known = known
        self.insert_events = insert_events
        self.view = _BatchRepository(self)
        # Aggregate id -> the working aggregate (None: known not to exist).
        self.working: dict[UUID, PrmAggregate | None] = {}
        # Aggregate id -> its version in the store when loaded (absent: not in the store).
        self.stored_version: dict[UUID, int] = {}
        # Aggregate id -> the events accepted so far in this batch, in order.
        self.accepted: dict[UUID, list[Any]] = {}
        # The command in progress: aggregate id -> its version when the command first got it; its events.
        self.touched: dict[UUID, int | None] = {}
        self.pending: list[Any] = []
        self.per_command: list[list[Any]] = []

    # ---- the working set -----------------------------------------------------
    def get(self, aggregate_id: UUID) -> PrmAggregate:
        try:
            aggregate = self.working[aggregate_id]
        except KeyError:
            aggregate = self._load_one(aggregate_id)
        if aggregate_id not in self.touched:
            self.touched[aggregate_id] = aggregate.version if aggregate is not None else None
        if aggregate is None:
            raise AggregateNotFoundError(aggregate_id)
        return aggregate

    def _load_one(self, aggregate_id: UUID) -> PrmAggregate | None:
        if self.load_events is not None:
            self._load_many({aggregate_id})
            return self.working[aggregate_id]
        try:
            aggregate: PrmAggregate | None = self.store.get(aggregate_id)  # a copy: the cache stays pristine
        except AggregateNotFoundError:
            aggregate = None
        self._keep(aggregate_id, aggregate)
        return aggregate

    def _keep(self, aggregate_id: UUID, aggregate: PrmAggregate | None) -> None:
        self.working[aggregate_id] = aggregate
        if aggregate is not None:
            self.stored_version[aggregate_id] = aggregate.version

    def _load_many(self, ids: set[UUID]) -> None:
        """Load ``ids`` with one call of ``load_events``: kept or cached aggregates are fast-forwarded, others
        built from all their events."""
        assert self.load_events is not None
        ids -= self.working.keys()
        if not ids:
            return
        cache = self.store.cache
        bases: dict[UUID, PrmAggregate] = {}
        after: dict[UUID, int] = {}
        for aggregate_id in ids:
            base = self.known.take(aggregate_id) if self.known is not None else None
            if base is None and cache is not None:
                try:
                    hit = cache.get(aggregate_id)
                except KeyError:
                    hit = None
                base = copy.deepcopy(hit) if isinstance(hit, PrmAggregate) else None  # the cache stays pristine
            if base is not None:
                bases[aggregate_id] = base
            after[aggregate_id] = base.version if base is not None else 0
        stored = self.load_events(after)
        to_domain_event = self.program.mapper.to_domain_event
        for aggregate_id in ids:
            aggregate: Any = bases.get(aggregate_id)
            for record in stored.get(aggregate_id, ()):
                event: Any = to_domain_event(record)
                aggregate = event.mutate(aggregate)
            self._keep(aggregate_id, aggregate if isinstance(aggregate, PrmAggregate) else None)

    def _prefetch(self, commands: Sequence[InboundCommand]) -> None:
        """Load every aggregate the commands will read, in two reads (their contracts come second)."""
        if self.load_events is None:
            return
        ids: set[UUID] = set()

        def add(cls: type[PrmAggregate], business_id: Any) -> None:
            if isinstance(business_id, str) and business_id.strip():
                ids.add(cls.id_for(business_id))

        for command in commands:
            args = command.args
            if command.name == "record_sale":
                add(Sale, args.get("sale_id"))
                add(Partner, args.get("partner_id"))
                add(DealRegistration, args.get("registration_id"))
            elif command.name == "refund_sale":
                add(Sale, args.get("sale_id"))
            else:
                add(Opportunity, args.get("opportunity_id"))
        self._load_many(ids)
        contracts = {
            Contract.id_for(contract_id)
            for aggregate in list(self.working.values())
            if isinstance(aggregate, Partner)
            for contract_id in aggregate.contract_ids
        }
        self._load_many(contracts)

    # ---- running the commands ------------------------------------------------------
    def run(self, commands: Sequence[InboundCommand]) -> list[InboundOutcome]:
        self._prefetch(commands)
        outcomes: list[InboundOutcome] = []
        _ACTIVE_BATCH.batch = self
        try:
            for index, command in enumerate(commands):
                self.touched, self.pending = {}, []
                try:
                    result = getattr(self.program, command.name)(**command.args)
                except DomainError as exc:
                    self._undo()
                    outcomes.append(exc)
                    self.per_command.append([])
                    continue
                except Exception as exc:
                    raise InboundBatchError(index, exc) from exc
                for event in self.pending:
                    self.accepted.setdefault(event.originator_id, []).append(event)
                outcomes.append(result)
                self.per_command.append(self.pending)
        finally:
            _ACTIVE_BATCH.batch = None
        return outcomes

    def collect(self, objs: Sequence[Any]) -> None:
        """``save`` inside the batch: keep the aggregates in the working set, their new events pending."""
        for obj in objs:
            if obj is None:
                continue
            if isinstance(obj, PrmAggregate):
                self.pending.extend(obj.collect_events())
                self.working[obj.id] = obj
            else:
                self.pending.append(obj)

    def _undo(self) -> None:
        """A command was refused: put back every aggregate it changed, as the batch had it before."""
        changed = {event.originator_id for event in self.pending}
        for aggregate_id, version in self.touched.items():
            aggregate = self.working.get(aggregate_id)
            if (aggregate.version if aggregate is not None else None) != version:
                changed.add(aggregate_id)
        for aggregate_id in changed:
            self.working[aggregate_id] = self._rebuild(aggregate_id)
        self.pending = []

    def _rebuild(self, aggregate_id: UUID) -> PrmAggregate | None:
        version = self.stored_version.get(aggregate_id)
        aggregate: Any = self.store.get(aggregate_id, version=version) if version is not None else None
        for event in self.accepted.get(aggregate_id, ()):
            aggregate = event.mutate(aggregate)
        return aggregate if isinstance(aggregate, PrmAggregate) else None

    # ---- recording -----------------------------------------------------------------
    def commit(self, outcomes: list[InboundOutcome]) -> list[InboundOutcome]:
        """Record every accepted event in one transaction; fill in each command's position and events."""
        events = [event for per_command in self.per_command for event in per_command]
        if not events:
            self._cache_working_set()
            return outcomes
        if self.program.snapshots is not None:
            recordings = Application.save(self.program, *events)
        elif self.insert_events is None:
            # What Application.save does without snapshots, minus its per-object protocol isinstance checks
            # (slow on Python 3.11): the events are already collected.
            recordings = self.program.events.put(events)
        else:  # what EventStore.put does, with the given inserter
            stored = [self.program.mapper.to_stored_event(event) for event in events]
            ids = self.insert_events(stored)
            if len(ids) != len(stored):
                raise RuntimeError(f"{len(stored)} events inserted, {len(ids)} notification ids returned")
            recordings = [
                Recording(event, Notification(s.originator_id, s.originator_version, s.topic, s.state, id=n))
                for event, s, n in zip(events, stored, ids, strict=True)
            ]
        positions = iter(recordings)
        results: list[InboundOutcome] = []
        for outcome, own in zip(outcomes, self.per_command, strict=True):
            if isinstance(outcome, CommandResult) and own:
                mine = [next(positions) for _ in own]
                outcome = replace(
                    outcome,
                    position=max(r.notification.id for r in mine),
                    events=[_wire_type(r.domain_event) for r in mine],
                )
            results.append(outcome)
        self._cache_working_set()
        return results

    def forget(self) -> None:
        """The attempt failed: what it touched may hold unrecorded changes."""
        if self.known is not None:
            self.known.forget(self.working)

    def _cache_working_set(self) -> None:
        """Once recorded, every working aggregate is the store's state at its version (refused commands were
        undone). Keep the partners, contracts and registrations the batch read, which the next batches read
        again, for the next batch (or cache them); not the sales and opportunities, which inbound commands
        create and rarely read again (a refund reads its sale once: the batch's bulk read loads it), and
        which would only grow the working set that Python's cyclic GC scans."""
        read = {
            i: a
            for i, a in self.working.items()
            if a is not None and i in self.stored_version and not isinstance(a, Sale | Opportunity)
        }
        if self.known is not None:
            self.known.keep(read)
            return
        cache = self.store.cache
        if cache is None:
            return
        for aggregate_id, aggregate in read.items():
            cache.put(aggregate_id, aggregate)
