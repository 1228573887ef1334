"""Partner contracts: signed, amended, renewed, terminated, expired."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import event

from domain.base import PrmAggregate, register_kind, require_actor, require_reason, require_text
from domain.clock import utc
from domain.errors import InvalidTransition, ValidationFailed

IN_FORCE = "signed"
TERMINATED = "terminated"
EXPIRED = "expired"


def _term_length(start: date, end: date) -> timedelta:
    """Length of one contract term. ``ends_on`` is covered (see ``in_force_on``), so both days count:
    2026-01-01..2026-12-31 is 365 days and renews to 2027-12-31."""
    return end - start + timedelta(days=1)


@register_kind
class Contract(PrmAggregate):
    KIND: ClassVar[str] = "contract"

    class Signed(PrmAggregate.Created):
        contract_id: str
        partner_id: str
        starts_on: date
        ends_on: date
        auto_renew: bool
        territory: list[str]
        terms: str
        commission_plan_id: str
        actor: str
        at: datetime

    class Amended(PrmAggregate.Event):
        terms_version: int
        terms: str
        territory: list[str]
        commission_plan_id: str
        actor: str
        reason: str
        at: datetime

        def apply(self, aggregate: Contract) -> None:
            aggregate.terms_version = self.terms_version
            aggregate.terms = self.terms
            aggregate.territory = list(self.territory)
            aggregate.commission_plan_id = self.commission_plan_id

    class Renewed(PrmAggregate.Event):
        previous_ends_on: date
        ends_on: date
        automatic: bool
        actor: str
        at: datetime

        def apply(self, aggregate: Contract) -> None:
            aggregate.ends_on = self.ends_on

    class Terminated(PrmAggregate.Event):
        actor: str
        reason: str
        effective_on: date
        at: datetime

        def apply(self, aggregate: Contract) -> None:
            aggregate.status = TERMINATED
            aggregate.terminated_on = self.effective_on

    class Expired(PrmAggregate.Event):
        ended_on: date
        actor: str
        at: datetime

        def apply(self, aggregate: Contract) -> None:
            aggregate.status = EXPIRED

    @event(Signed)
    def __init__(
        self,
        contract_id: str,
        partner_id: str,
        starts_on: date,
        ends_on: date,
        auto_renew: bool,
        territory: list[str],
        terms: str,
        commission_plan_id: str,
        actor: str,
        at: datetime,
    ) -> None:
        self.contract_id = contract_id
        self.partner_id = partner_id
        self.starts_on = starts_on
        self.ends_on = ends_on
        self.auto_renew = auto_renew
        self.territory = list(territory)
        self.terms = terms
        self.terms_version = 1
        self.commission_plan_id = commission_plan_id
        self.term_length = _term_length(starts_on, ends_on)  # auto-renewal repeats the signed length
        self.status = IN_FORCE
        self.signed_at = at
        self.terminated_on: date | None = None

    @staticmethod
    def create_id(contract_id: str, **_: Any) -> UUID:
        return Contract.id_for(contract_id)

    @classmethod
    def sign(
        cls,
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
        at: datetime,
    ) -> Contract:
        if ends_on <= starts_on:
            raise ValidationFailed("a contract must end after it starts", field="ends_on")
        return cls(
            contract_id=require_text(contract_id, "contract_id"),
            partner_id=partner_id,
            starts_on=starts_on,
            ends_on=ends_on,
            auto_renew=bool(auto_renew),
            territory=_territory(territory),
            terms=require_text(terms, "terms"),
            commission_plan_id=require_text(commission_plan_id, "commission_plan_id"),
            actor=require_actor(actor),
            at=utc(at),
        )

    def in_force_on(self, day: date) -> bool:
        """Whether the contract covers ``day``.

        An auto-renewing contract that was not terminated keeps renewing for
        the same length, whether or not the renewal has been recorded yet.
        """
        if day < self.starts_on:
            return False
        if self.status == TERMINATED:
            return (
                self.terminated_on is not None and day < self.terminated_on and (self.auto_renew or day <= self.ends_on)
            )
        if self.status == EXPIRED:
            return day <= self.ends_on
        return self.auto_renew or day <= self.ends_on

    def covers_country(self, country: str | None) -> bool:
        return not self.territory or (country is not None and country.upper() in self.territory)

    def _require_open(self, action: str) -> None:
        if self.status != IN_FORCE:
            raise InvalidTransition(f"cannot {action} contract {self.contract_id}: it is {self.status}")

    def amend(
        self,
        *,
        actor: str,
        reason: str,
        at: datetime,
        terms: str | None = None,
        territory: list[str] | None = None,
        commission_plan_id: str | None = None,
    ) -> None:
        self._require_open("amend")
        if terms is None and territory is None and commission_plan_id is None:
            raise ValidationFailed("an amendment must change the terms, the territory or the plan")
        self.trigger_event(
            self.Amended,
            partner_id=self.partner_id,
            terms_version=self.terms_version + 1,
            terms=terms if terms is not None else self.terms,
            territory=_territory(territory) if territory is not None else list(self.territory),
            commission_plan_id=commission_plan_id or self.commission_plan_id,
            actor=require_actor(actor),
            reason=require_reason(reason, "amend a contract"),
            at=utc(at),
        )

    def renew(self, *, actor: str, at: datetime, ends_on: date | None = None, automatic: bool = False) -> None:
        self._require_open("renew")
        new_end = ends_on or self.ends_on + self.term_length
        if new_end <= self.ends_on:
            raise ValidationFailed("a renewal must move the end date later", field="ends_on")
        self.trigger_event(
            self.Renewed,
            partner_id=self.partner_id,
            previous_ends_on=self.ends_on,
            ends_on=new_end,
            automatic=automatic,
            actor=require_actor(actor),
            at=utc(at),
        )

    def terminate(self, *, actor: str, reason: str, effective_on: date, at: datetime) -> None:
        self._require_open("terminate")
        self.trigger_event(
            self.Terminated,
            partner_id=self.partner_id,
            actor=require_actor(actor),
            reason=require_reason(reason, "terminate a contract"),
            effective_on=effective_on,
            at=utc(at),
        )

    def expire(self, *, actor: str, at: datetime) -> None:
        self._require_open("expire")
        if self.auto_renew:
            raise InvalidTransition(f"contract {self.contract_id} renews automatically; terminate it instead")
        if utc(at).date() <= self.ends_on:
            raise InvalidTransition(f"contract {self.contract_id} runs until {self.ends_on.isoformat()}")
        self.trigger_event(
            self.Expired, partner_id=self.partner_id, ended_on=self.ends_on, actor=require_actor(actor), at=utc(at)
        )


def _territory(countries: list[str]) -> list[str]:
    result = []
    for country in countries:
        code = country.strip().upper()
        if len(code) != 2 or not code.isalpha():
            raise ValidationFailed(f"territory entry {country!r} is not an ISO country code", field="territory")
        result.append(code)
    return sorted(set(result))
