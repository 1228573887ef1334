"""Hypothesis state machines: random command sequences, valid and invalid, against each state machine.

* ``PartnerMachine`` drives a :class:`Partner` aggregate with random commands and
  checks them against a small model of the lifecycle.
* ``RegistrationMachine`` drives deal registrations through the application
  service (in memory), with three partners competing for a few accounts.
* ``RefundMachine`` drives refunds of one sale through the application service
  and, side by side, a pure :class:`Sale` aggregate.

Every refused command must record nothing and leave the state unchanged.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from domain.conflicts import PARTNER_VS_PARTNER, conflict_id
from domain.errors import (
    CapacityExceeded,
    ChannelConflictBlocks,
    CurrencyMismatch,
    DomainError,
    DuplicateWithDifferentData,
    InvalidTransition,
    PartnerCannotRegister,
    RefundExceedsSale,
    ValidationFailed,
)
from domain.partner import PARTNER_STATUSES, Partner
from domain.program import TIERS, ProgramSettings, tier_rank
from domain.registration import OPEN_STATUSES, DealRegistration
from domain.sale import Sale
from tests.unit.conftest import ADMIN, ONBOARDING, T0, World, applied_partner, new_app, sale_line, state_of

MACHINE_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

ACTORS = st.sampled_from([ADMIN, ADMIN, ADMIN, ADMIN, "", "  "])
REASONS = st.sampled_from(["because", "because", "because", "because", None, "", " "])
QUARTER_ENDS = [datetime(2026, month, 1, tzinfo=UTC) for month in (4, 7, 10)] + [datetime(2027, 1, 1, tzinfo=UTC)]
REVENUES = st.sampled_from([0, 100_000_000, 500_000_000, 2_000_000_000])
FINAL = ("rejected", "terminated")


def valid(text: str | None) -> bool:
    return text is not None and bool(text.strip())


# ====================================================================== Partner


class PartnerMachine(RuleBasedStateMachine):
    """Random commands on one partner, checked against a model of the lifecycle."""

    def __init__(self) -> None:
        super().__init__()
        self.partner: Partner = applied_partner("P-SM", T0)
        self.history: list[Any] = self.partner.collect_events()
        self.clock = T0
        self.status = "applied"
        self.contracts: set[str] = set()
        self.trained = False
        self.evaluated: set[str] = set()
        self.tier_changes: list[tuple[datetime, int, str]] = []  # (effective_at, recording order, tier)
        self.recorded_events = 1
        self.final_version: int | None = None
        self.tiers_before: dict[datetime, str] = {}
        self.probes = [T0 + timedelta(days=d) for d in range(-10, 500, 17)] + QUARTER_ENDS

    # -- helpers --------------------------------------------------------

    def model_tier_at(self, when: datetime) -> str:
        current = TIERS[0]
        for effective_at, _, tier in sorted(self.tier_changes):
            if effective_at <= when:
                current = tier
        return current

    def model_latest_tier(self) -> str:
        return sorted(self.tier_changes)[-1][2] if self.tier_changes else TIERS[0]

    def attempt(self, command: Any, should_succeed: bool, refusal: type[DomainError] = DomainError) -> list[Any]:
        """Run ``command``; refused commands must raise ``refusal`` and change nothing."""
        before = copy.deepcopy(state_of(self.partner))
        self.tiers_before = {probe: self.partner.tier_at(probe) for probe in self.probes}
        try:
            command()
        except DomainError as error:
            assert not should_succeed, f"unexpected refusal: {error!r}"
            assert isinstance(error, refusal), f"expected {refusal.__name__}, got {error!r}"
            assert str(error), "a refusal explains itself"
            assert self.partner.collect_events() == []
            assert state_of(self.partner) == before
            return []
        assert should_succeed, "the command should have been refused"
        events = self.partner.collect_events()
        assert events, "a successful command records events"
        self.recorded_events += len(events)
        self.history.extend(events)
        return events

    def record_tier_changes(self, events: list[Any]) -> None:
        changes = [e for e in events if isinstance(e, Partner.TierChanged)]
        for change in changes:
            self.tier_changes.append((change.effective_at, len(self.tier_changes), change.tier))
        if changes:
            # history semantics: a change effective at e never rewrites the tier in force before e
            earliest = min(change.effective_at for change in changes)
            for probe, tier in self.tiers_before.items():
                if probe < earliest:
                    assert self.partner.tier_at(probe) == tier, f"the tier at {probe} was rewritten"

    # -- rules ----------------------------------------------------------

    @initialize(start=st.sampled_from(["applied", "onboarding", "active", "active", "suspended"]))
    def reach(self, start: str) -> None:
        """Start the random walk from a given state, reached by valid commands."""
        if start == "applied":
            return
        self.approve(ADMIN, None)
        if start == "onboarding":
            return
        self.attach_contract("C-1")
        self.record_training(ONBOARDING, ADMIN)
        self.complete_onboarding()
        if start == "suspended":
            self.suspend(ADMIN, "audit")
        assert self.partner.status == start

    @rule(hours=st.sampled_from([1, 24, 24 * 30, 24 * 100]))
    def advance(self, hours: int) -> None:
        self.clock += timedelta(hours=hours)

    @rule(actor=ACTORS, reason=REASONS)
    def approve(self, actor: str, reason: str | None) -> None:
        ok = self.status == "applied" and valid(actor)
        refusal = InvalidTransition if self.status != "applied" else ValidationFailed
        events = self.attempt(lambda: self.partner.approve(actor, self.clock, reason), ok, refusal)
        if ok:
            assert [type(e).__name__ for e in events] == ["Approved", "OnboardingStarted"]
            self.status = "onboarding"

    @rule(actor=ACTORS, reason=REASONS)
    def reject(self, actor: str, reason: str | None) -> None:
        ok = self.status == "applied" and valid(actor) and valid(reason)
        refusal = InvalidTransition if self.status != "applied" else ValidationFailed
        self.attempt(lambda: self.partner.reject(actor, reason, self.clock), ok, refusal)  # type: ignore[arg-type]
        if ok:
            self.status = "rejected"

    @rule(actor=ACTORS, reason=REASONS)
    def suspend(self, actor: str, reason: str | None) -> None:
        ok = self.status == "active" and valid(actor) and valid(reason)
        refusal = InvalidTransition if self.status != "active" else ValidationFailed
        self.attempt(lambda: self.partner.suspend(actor, reason, self.clock), ok, refusal)  # type: ignore[arg-type]
        if ok:
            self.status = "suspended"

    @rule(actor=ACTORS, reason=REASONS)
    def reinstate(self, actor: str, reason: str | None) -> None:
        ok = self.status == "suspended" and valid(actor)
        refusal = InvalidTransition if self.status != "suspended" else ValidationFailed
        self.attempt(lambda: self.partner.reinstate(actor, self.clock, reason), ok, refusal)
        if ok:
            self.status = "active"

    @rule(actor=ACTORS, reason=REASONS)
    def terminate(self, actor: str, reason: str | None) -> None:
        allowed = self.status in ("onboarding", "active", "suspended")
        ok = allowed and valid(actor) and valid(reason)
        refusal = ValidationFailed if allowed else InvalidTransition
        self.attempt(lambda: self.partner.terminate(actor, reason, self.clock), ok, refusal)  # type: ignore[arg-type]
        if ok:
            self.status = "terminated"

    @rule(contract_id=st.sampled_from(["C-1", "C-2"]))
    def attach_contract(self, contract_id: str) -> None:
        allowed = self.status in ("approved", "onboarding", "active", "suspended")
        ok = allowed and contract_id not in self.contracts
        refusal = ValidationFailed if allowed else InvalidTransition
        self.attempt(lambda: self.partner.attach_contract(contract_id, self.clock), ok, refusal)
        if ok:
            self.contracts.add(contract_id)

    @rule(course=st.sampled_from([ONBOARDING, "advanced-sales"]), actor=ACTORS)
    def record_training(self, course: str, actor: str) -> None:
        allowed = self.status in ("approved", "onboarding", "active", "suspended")
        ok = allowed and valid(actor)
        refusal = ValidationFailed if allowed else InvalidTransition
        self.attempt(lambda: self.partner.record_training(course, "lan@acme.vn", self.clock, actor), ok, refusal)
        if ok and course == ONBOARDING:
            self.trained = True

    @rule()
    def complete_onboarding(self) -> None:
        ready = self.status == "onboarding" and bool(self.contracts) and self.trained
        assert self.partner.complete_onboarding_if_ready(ADMIN, self.clock, ONBOARDING) is ready
        events = self.partner.collect_events()
        assert [type(e).__name__ for e in events] == (["Activated"] if ready else [])
        self.history.extend(events)
        if ready:
            self.recorded_events += 1
            self.status = "active"

    @rule(people=st.integers(1, 5), expires_in_days=st.sampled_from([None, 10, 400]))
    def certify(self, people: int, expires_in_days: int | None) -> None:
        allowed = self.status in ("approved", "onboarding", "active", "suspended")
        expires_at = None if expires_in_days is None else self.clock + timedelta(days=expires_in_days)
        for person in range(people):
            self.attempt(
                lambda p=person: self.partner.grant_certification(
                    "crm", f"p{p}@acme.vn", self.clock, expires_at, ADMIN
                ),
                allowed,
                InvalidTransition,
            )

    @rule(
        tier=st.sampled_from([*TIERS, "diamond"]),
        actor=ACTORS,
        reason=REASONS,
        offset_days=st.sampled_from([-30, 0, 1, 45, 120]),
    )
    def override_tier(self, tier: str, actor: str, reason: str | None, offset_days: int) -> None:
        allowed = self.status in ("onboarding", "active", "suspended")
        effective_at = self.clock + timedelta(days=offset_days)
        ok = (
            tier in TIERS
            and allowed
            and tier != self.model_latest_tier()
            and effective_at >= T0  # not before the partner applied
            and valid(actor)
            and valid(reason)
        )
        refusal = InvalidTransition if tier in TIERS and not allowed else ValidationFailed
        events = self.attempt(
            lambda: self.partner.override_tier(tier, actor, reason, effective_at),  # type: ignore[arg-type]
            ok,
            refusal,
        )
        if ok:
            assert events[0].effective_at == effective_at
            assert events[0].source == "override"
        self.record_tier_changes(events)

    @rule(quarter=st.integers(0, len(QUARTER_ENDS) - 1), revenue=REVENUES, actor=ACTORS)
    def evaluate_tier(self, quarter: int, revenue: int, actor: str) -> None:
        quarter_end = QUARTER_ENDS[quarter]
        label = f"{(quarter_end - timedelta(days=1)).year}-Q{(quarter_end - timedelta(days=1)).month // 3}"
        allowed = self.status in ("active", "suspended")
        ok = allowed and label not in self.evaluated and valid(actor)
        refusal = ValidationFailed if allowed and label not in self.evaluated else InvalidTransition
        tier_before = self.partner.tier
        events = self.attempt(
            lambda: self.partner.evaluate_tier(
                quarter_end=quarter_end, revenue_minor=revenue, settings=ProgramSettings(), actor=actor, at=self.clock
            ),
            ok,
            refusal,
        )
        if ok:
            self.evaluated.add(label)
            assert type(events[0]).__name__ == "TierEvaluated"
            assert events[0].quarter == label
            changes = [e for e in events if isinstance(e, Partner.TierChanged)]
            assert len(changes) <= 1
            for change in changes:
                assert change.effective_at == quarter_end  # the start of the next quarter
                assert change.from_tier == tier_before
                step = tier_rank(change.tier) - tier_rank(tier_before)
                assert step >= 1 or step == -1, "promotion of any size, demotion by exactly one tier"
                assert step < 0 or events[0].qualified_tier == change.tier
        self.record_tier_changes(events)

    # -- invariants -------------------------------------------------------

    @invariant()
    def status_follows_the_model(self) -> None:
        assert self.partner.status in PARTNER_STATUSES
        assert self.partner.status == self.status
        assert self.partner.can_register_deals == (self.status == "active")

    @invariant()
    def final_states_are_final(self) -> None:
        if self.final_version is None:
            if self.status in FINAL:
                self.final_version = self.partner.version
            return
        assert self.partner.status in FINAL
        assert self.partner.version == self.final_version, "an event was recorded after a final state"

    @invariant()
    def version_counts_the_recorded_events(self) -> None:
        assert self.partner.version == self.recorded_events

    @invariant()
    def tier_at_follows_the_effective_times(self) -> None:
        for probe in self.probes:
            assert self.partner.tier_at(probe) == self.model_tier_at(probe)
        assert self.partner.tier == self.model_latest_tier()
        history = [effective_at for effective_at, _ in self.partner.tier_history]
        assert history == sorted(history)

    def teardown(self) -> None:
        # every recorded event, stored and read back, rebuilds the in-memory state
        app = new_app()
        app.events.put(self.history)
        assert state_of(app.partner("P-SM")) == state_of(self.partner)
        app.close()


TestPartnerMachine = PartnerMachine.TestCase
TestPartnerMachine.settings = MACHINE_SETTINGS


# ====================================================================== Deal registrations

ACCOUNTS: list[list[dict[str, Any]]] = [
    [
        {"name": "Công ty TNHH Minh Phát", "country": "VN"},
        {"name": "Minh Phat Co., Ltd", "country": "VN"},
    ],
    [
        {"name": "Dai Viet JSC", "domain": "daiviet.vn", "country": "VN"},
        {"name": "Đại Việt Group", "domain": "https://www.daiviet.vn/contact", "country": "VN"},
    ],
    [
        {"name": "Song Hong Trading", "tax_id": "0312345678", "country": "VN"},
        {"name": "Song Hong Logistics Branch", "tax_id": "0312345678-002", "country": "VN"},
    ],
]
PARTNERS = ("P-A", "P-B", "P-C")
CAPACITY = 3
PROTECTION = timedelta(days=90)
CLOSED = ("rejected", "won", "lost", "expired", "withdrawn")


class RegistrationMachine(RuleBasedStateMachine):
    """Three partners register a few accounts; the application must keep every rule."""

    @initialize()
    def start(self) -> None:
        self.app = new_app()
        self.world = World(self.app)
        self.world.set_capacity({"registered": CAPACITY, "silver": CAPACITY, "gold": CAPACITY, "platinum": CAPACITY})
        for partner_id in PARTNERS:
            self.world.active(partner_id, T0 - timedelta(days=1), auto_renew=True)
        self.clock = T0
        self.registrations: list[str] = []
        self.account_of: dict[str, int] = {}
        self.order: dict[str, int] = {}
        self.closed: dict[str, str] = {}
        self.suspended: set[str] = set()
        self.sales = 0

    # -- helpers ----------------------------------------------------------

    def registration(self, registration_id: str) -> DealRegistration:
        return self.app.registration(registration_id)

    def pick(self, index: int, targeted: bool = False, *statuses: str) -> str:
        """A registration; when ``targeted``, preferably one in ``statuses`` (valid commands are rarer)."""
        pool = self.registrations
        if targeted:
            pool = [r for r in pool if self.registration(r).status in statuses] or pool
        return pool[index % len(pool)]

    def same_account_others(self, registration_id: str | None, partner_id: str, account: int) -> list[DealRegistration]:
        return [
            self.registration(other)
            for other in self.registrations
            if other != registration_id and self.account_of[other] == account
            if self.registration(other).partner_id != partner_id
        ]

    def expected_blockers(self, registration_id: str | None, partner_id: str, account: int) -> set[str]:
        """Other partners' registrations of the account: earlier and pending, or approved (or won) and protected."""
        blockers = set()
        for other in self.same_account_others(registration_id, partner_id, account):
            if other.status == "submitted":
                if registration_id is None or self.order[other.registration_id] < self.order[registration_id]:
                    blockers.add(other.registration_id)
            elif other.status in ("approved", "won"):
                assert other.approved_at is not None and other.protected_until is not None
                if other.approved_at <= self.clock < other.protected_until:
                    blockers.add(other.registration_id)
        return blockers

    def pair_cleared(self, own: DealRegistration, other_id: str) -> bool:
        """The pair's conflict was dismissed or decided for ``own``, on either side, in either direction."""
        other = self.registration(other_id)
        ids = (
            conflict_id(PARTNER_VS_PARTNER, other_id, own.registration_id),
            conflict_id(PARTNER_VS_PARTNER, own.registration_id, other_id),
        )
        return any(r.resolutions.get(cid) in ("dismissed", own.registration_id) for r in (own, other) for cid in ids)

    def attempt(self, command: Any, expected: type[DomainError] | None) -> Any:
        """Run an application command; a refusal must be ``expected`` and record nothing."""
        position = self.app.max_position()
        try:
            result = command()
        except DomainError as error:
            assert expected is not None, f"unexpected refusal: {error!r}"
            assert isinstance(error, expected), f"expected {expected.__name__}, got {error!r}"
            assert self.app.max_position() == position, "a refused command recorded events"
            return None
        assert expected is None, f"expected {expected.__name__}, the command succeeded"
        return result

    # -- rules ------------------------------------------------------------

    @rule(hours=st.sampled_from([1, 24, 24 * 20, 24 * 50, 24 * 95]))
    def advance(self, hours: int) -> None:
        self.clock += timedelta(hours=hours)

    @rule(partner=st.sampled_from(PARTNERS), account=st.integers(0, len(ACCOUNTS) - 1), variant=st.integers(0, 1))
    def submit(self, partner: str, account: int, variant: int) -> None:
        registration_id = f"R-{len(self.order):03d}"
        open_count = len(self.app.partner(partner).open_registrations)
        expected: type[DomainError] | None = None
        if partner in self.suspended:
            expected = PartnerCannotRegister
        elif open_count >= CAPACITY:
            expected = CapacityExceeded
        blockers = self.expected_blockers(None, partner, account)
        result = self.attempt(
            lambda: self.world.submit(registration_id, partner, ACCOUNTS[account][variant], when=self.clock), expected
        )
        if result is None:
            return
        self.order[registration_id] = len(self.order)
        self.registrations.append(registration_id)
        self.account_of[registration_id] = account
        conflicts = self.registration(registration_id).conflicts_with
        assert {c["registration_id"] for c in conflicts} == blockers
        assert result.details["conflicts"] == [c["conflict_id"] for c in conflicts]
        for conflict in conflicts:
            assert conflict["conflict_id"] == conflict_id(
                PARTNER_VS_PARTNER, conflict["registration_id"], registration_id
            )

    @precondition(lambda self: self.registrations)
    @rule(index=st.integers(0, 1000), targeted=st.booleans())
    def approve(self, index: int, targeted: bool) -> None:
        registration_id = self.pick(index, targeted, "submitted")
        registration = self.registration(registration_id)
        expected: type[DomainError] | None = None
        if registration.status != "submitted":
            expected = InvalidTransition
        else:
            blockers = {
                other
                for other in self.expected_blockers(
                    registration_id, registration.partner_id, self.account_of[registration_id]
                )
                if not self.pair_cleared(registration, other)
            }
            if blockers:
                expected = ChannelConflictBlocks
        if self.attempt(lambda: self.app.approve_registration(registration_id, actor=ADMIN, at=self.clock), expected):
            approved = self.registration(registration_id)
            assert approved.protected_until == self.clock + PROTECTION
            assert approved.is_protected_at(self.clock)

    @precondition(lambda self: self.registrations)
    @rule(
        index=st.integers(0, 1000),
        targeted=st.booleans(),
        code=st.sampled_from(["duplicate", "other", "nonsense"]),
        text=REASONS,
    )
    def reject(self, index: int, targeted: bool, code: str, text: str | None) -> None:
        registration_id = self.pick(index, targeted, "submitted")
        status = self.registration(registration_id).status
        expected: type[DomainError] | None = None
        if status != "submitted":
            expected = InvalidTransition
        elif code == "nonsense" or (code == "other" and not valid(text)):
            expected = ValidationFailed
        self.attempt(
            lambda: self.app.reject_registration(
                registration_id, actor=ADMIN, reason_code=code, reason=text, at=self.clock
            ),
            expected,
        )

    @precondition(lambda self: self.registrations)
    @rule(index=st.integers(0, 1000), targeted=st.booleans())
    def withdraw(self, index: int, targeted: bool) -> None:
        registration_id = self.pick(index, targeted, "submitted", "approved")
        expected = None if self.registration(registration_id).status in OPEN_STATUSES else InvalidTransition
        self.attempt(
            lambda: self.app.withdraw_registration(registration_id, actor="sales@partner.vn", at=self.clock), expected
        )

    @precondition(lambda self: self.registrations)
    @rule(index=st.integers(0, 1000), targeted=st.booleans())
    def extend(self, index: int, targeted: bool) -> None:
        registration_id = self.pick(index, targeted, "approved")
        registration = self.registration(registration_id)
        ok = (
            registration.status == "approved"
            and not registration.extended
            and registration.protected_until is not None
            and self.clock < registration.protected_until
        )
        before = registration.protected_until
        result = self.attempt(
            lambda: self.app.extend_protection(registration_id, actor=ADMIN, reason="budget", at=self.clock),
            None if ok else InvalidTransition,
        )
        if result is not None:
            assert before is not None
            assert self.registration(registration_id).protected_until == before + timedelta(days=30)

    @precondition(lambda self: self.registrations)
    @rule(index=st.integers(0, 1000), targeted=st.booleans())
    def lose(self, index: int, targeted: bool) -> None:
        registration_id = self.pick(index, targeted, "approved")
        expected = None if self.registration(registration_id).status == "approved" else InvalidTransition
        self.attempt(
            lambda: self.app.mark_registration_lost(registration_id, actor=ADMIN, reason="competitor", at=self.clock),
            expected,
        )

    @precondition(lambda self: self.registrations)
    @rule(index=st.integers(0, 1000), targeted=st.booleans())
    def sell(self, index: int, targeted: bool) -> None:
        registration_id = self.pick(index, targeted, "approved", "won")
        registration = self.registration(registration_id)
        protected = registration.status in ("approved", "won") and (
            registration.approved_at is not None
            and registration.protected_until is not None
            and registration.approved_at <= self.clock < registration.protected_until
        )
        status_before = registration.status
        self.sales += 1
        sale_id = f"S-{self.sales:03d}"
        self.world.sale(sale_id, registration.partner_id, self.clock, registration_id=registration_id)
        sale = self.app.sale(sale_id)
        assert sale.registration_bonus is protected
        after = self.registration(registration_id)
        if status_before == "approved" and protected:
            assert (after.status, after.won_sale_id) == ("won", sale_id)
        else:
            assert after.status == status_before

    @rule()
    def expire(self) -> None:
        due = sorted(
            r
            for r in self.registrations
            if self.registration(r).status == "approved" and self.registration(r).protected_until <= self.clock  # type: ignore[operator]
        )
        results = self.app.expire_registrations(at=self.clock)
        assert [r.business_id for r in results] == due
        for registration_id in due:
            assert self.registration(registration_id).status == "expired"

    @precondition(lambda self: any(self.registration(r).conflicts_with for r in self.registrations))
    @rule(index=st.integers(0, 1000), favour_later=st.booleans(), dismiss=st.booleans())
    def decide_conflict(self, index: int, favour_later: bool, dismiss: bool) -> None:
        candidates = [r for r in self.registrations if self.registration(r).conflicts_with]
        later_id = candidates[index % len(candidates)]
        later = self.registration(later_id)
        conflict = later.conflicts_with[index % len(later.conflicts_with)]
        cid, earlier_id = conflict["conflict_id"], conflict["registration_id"]
        earlier = self.registration(earlier_id)
        if dismiss:
            side = later if favour_later else earlier  # either registration may record the dismissal
            expected = InvalidTransition if cid in side.resolutions else None
            self.attempt(
                lambda: self.app.dismiss_conflict(
                    conflict_id=cid,
                    kind=PARTNER_VS_PARTNER,
                    registration_id=side.registration_id,
                    actor=ADMIN,
                    reason="not the same deal",
                    at=self.clock,
                ),
                expected,
            )
            return
        winner = later_id if favour_later else earlier_id
        decided = cid in later.resolutions or cid in earlier.resolutions
        protected_before = earlier.protected_until
        result = self.attempt(
            lambda: self.app.resolve_conflict(
                conflict_id=cid,
                kind=PARTNER_VS_PARTNER,
                registration_id=later_id,
                other_registration_id=earlier_id,
                winner=winner,
                actor=ADMIN,
                reason="decided by the channel manager",
                at=self.clock,
            ),
            InvalidTransition if decided else None,
        )
        if result is not None and favour_later and protected_before is not None:
            assert self.registration(earlier_id).protected_until == min(protected_before, self.clock)

    @rule(partner=st.sampled_from(PARTNERS))
    def toggle_suspension(self, partner: str) -> None:
        if partner in self.suspended:
            self.app.reinstate_partner(partner, actor=ADMIN, at=self.clock)
            self.suspended.discard(partner)
        else:
            self.app.suspend_partner(partner, actor=ADMIN, reason="audit", at=self.clock)
            self.suspended.add(partner)

    # -- invariants ---------------------------------------------------------

    @invariant()
    def closed_registrations_never_reopen(self) -> None:
        for registration_id in self.registrations:
            status = self.registration(registration_id).status
            if registration_id in self.closed:
                assert status == self.closed[registration_id], f"{registration_id} reopened"
            elif status in CLOSED:
                self.closed[registration_id] = status

    @invariant()
    def protected_only_while_approved(self) -> None:
        for registration_id in self.registrations:
            registration = self.registration(registration_id)
            for probe in (self.clock, self.clock - timedelta(days=45), self.clock + timedelta(days=45)):
                if registration.is_protected_at(probe):
                    assert registration.status == "approved"
            if registration.status == "submitted":
                assert registration.approved_at is None and registration.protected_until is None
            if registration.status in CLOSED:
                assert registration.closed_at is not None

    @invariant()
    def extended_at_most_once(self) -> None:
        for registration_id in self.registrations:
            events = list(self.app.events.get(DealRegistration.id_for(registration_id)))
            extensions = [e for e in events if isinstance(e, DealRegistration.ProtectionExtended)]
            assert len(extensions) <= 1
            assert self.registration(registration_id).extended == bool(extensions)

    @invariant()
    def open_counts_match_and_respect_the_capacity(self) -> None:
        if not hasattr(self, "app"):
            return
        for partner_id in PARTNERS:
            opened = self.app.partner(partner_id).open_registrations
            expected = [
                r
                for r in self.registrations
                if self.registration(r).partner_id == partner_id and self.registration(r).status in OPEN_STATUSES
            ]
            assert sorted(opened) == sorted(expected)
            assert len(opened) <= CAPACITY

    def teardown(self) -> None:
        if hasattr(self, "app"):
            self.app.close()


TestRegistrationMachine = RegistrationMachine.TestCase
TestRegistrationMachine.settings = MACHINE_SETTINGS


# ====================================================================== Sale refunds

SALE_TOTAL = 10_000
SALE_TIME = T0 + timedelta(days=1)


class RefundMachine(RuleBasedStateMachine):
    """Refunds of one sale, through the application and on a pure aggregate side by side."""

    @initialize()
    def start(self) -> None:
        self.app = new_app()
        self.world = World(self.app)
        self.world.active("P-1", T0 - timedelta(days=1))
        lines = [sale_line(2, 3_000, currency="VND"), sale_line(1, 4_000, currency="VND", sku="ADDON")]
        self.world.sale("S-1", "P-1", SALE_TIME, lines=lines)
        self.pure = Sale.record(
            sale_id="S-1",
            partner_id="P-1",
            registration_id=None,
            customer={"name": "Công ty TNHH Minh Phát", "country": "VN"},
            lines=lines,
            occurred_at=SALE_TIME,
            source="erp/hanoi",
            flags=[],
            registration_bonus=False,
        )
        self.pure.collect_events()
        self.model: dict[str, tuple[int, str, datetime]] = {}

    @rule(
        refund_id=st.sampled_from([f"RF-{n}" for n in range(6)]),
        amount=st.one_of(st.integers(1, 4_000), st.sampled_from([SALE_TOTAL, SALE_TOTAL + 1, 0, -1])),
        currency=st.sampled_from(["VND", "VND", "VND", "USD"]),
        day=st.integers(1, 3),
    )
    def refund(self, refund_id: str, amount: int, currency: str, day: int) -> None:
        occurred = SALE_TIME + timedelta(days=day)
        remaining = SALE_TOTAL - sum(a for a, _, _ in self.model.values())
        expected: type[DomainError] | None = None
        duplicate = False
        if amount <= 0:
            expected = ValidationFailed
        elif refund_id in self.model:
            if self.model[refund_id] == (amount, currency, occurred):
                duplicate = True
            else:
                expected = DuplicateWithDifferentData
        elif currency != "VND":
            expected = CurrencyMismatch
        elif amount > remaining:
            expected = RefundExceedsSale

        arguments: dict[str, Any] = {
            "refund_id": refund_id,
            "amount_minor": amount,
            "currency": currency,
            "occurred_at": occurred,
            "reason": "returned",
            "source": "billing",
        }
        position = self.app.max_position()
        pure_before = copy.deepcopy(state_of(self.pure))
        try:
            result = self.app.refund_sale(sale_id="S-1", **arguments)
        except DomainError as error:
            assert expected is not None and isinstance(error, expected), repr(error)
            assert self.app.max_position() == position
            try:
                self.pure.refund(**arguments)
            except DomainError as pure_error:
                assert type(pure_error) is type(error)
            else:
                raise AssertionError("the pure aggregate accepted a refund the application refused")
            assert self.pure.collect_events() == []
            assert state_of(self.pure) == pure_before
            return
        assert expected is None, f"expected {expected}"
        assert result.duplicate is duplicate
        assert self.pure.refund(**arguments) is not duplicate
        if duplicate:
            assert self.app.max_position() == position
            assert self.pure.collect_events() == []
        else:
            assert result.events == ["prm.sale.refunded.v1"]
            assert len(self.pure.collect_events()) == 1
            self.model[refund_id] = (amount, currency, occurred)

    @invariant()
    def refunds_never_exceed_the_sale_and_add_up(self) -> None:
        if not hasattr(self, "app"):
            return
        stored = self.app.sale("S-1")
        total_refunded = sum(a for a, _, _ in self.model.values())
        assert stored.total_minor == SALE_TOTAL
        assert 0 <= stored.refunded_minor <= stored.total_minor
        assert stored.refunded_minor == total_refunded
        assert sum(r["amount_minor"] for r in stored.refunds.values()) == total_refunded
        assert set(stored.refunds) == set(self.model)
        assert stored.remaining_minor == SALE_TOTAL - total_refunded
        # the persisted sale equals the one kept in memory (bar identity and timestamps)
        assert stored.refunds == self.pure.refunds
        assert stored.refunded_minor == self.pure.refunded_minor
        assert stored.version == self.pure.version

    def teardown(self) -> None:
        if hasattr(self, "app"):
            self.app.close()


TestRefundMachine = RefundMachine.TestCase
TestRefundMachine.settings = MACHINE_SETTINGS
