"""Tiers (channel.md, Partners/Tiers): qualification, quarterly evaluation, overrides, tier in force over time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.errors import InvalidTransition, ReasonRequired, ValidationFailed
from domain.partner import Partner
from domain.program import ProgramSettings
from domain.tiers import TierDecision, decide, qualified_tier
from tests.unit.conftest import ADMIN, T0, World, active_partner, at, event_names, onboarding_partner, state_of

SETTINGS = ProgramSettings()
SILVER = 100_000_000
GOLD = 500_000_000
PLATINUM = 2_000_000_000

Q1_END = datetime(2026, 4, 1, tzinfo=UTC)  # end of 2026-Q1 = start of 2026-Q2
Q2_END = datetime(2026, 7, 1, tzinfo=UTC)
Q3_END = datetime(2026, 10, 1, tzinfo=UTC)
Q4_END = datetime(2027, 1, 1, tzinfo=UTC)
JUST_BEFORE = timedelta(microseconds=1)


def certify(partner: Partner, people: int, expires_at: datetime | None = None) -> None:
    for index in range(people):
        partner.grant_certification("crm-expert", f"person{index}@acme.vn", at(0), expires_at, ADMIN)


def evaluate(
    partner: Partner, quarter_end: datetime, revenue: int, settings: ProgramSettings = SETTINGS
) -> TierDecision:
    return partner.evaluate_tier(
        quarter_end=quarter_end,
        revenue_minor=revenue,
        settings=settings,
        actor="tier-evaluator",
        at=quarter_end + timedelta(hours=2),
    )


# ------------------------------------------------------------------ qualification


@pytest.mark.parametrize(
    ("revenue", "certified", "expected"),
    [
        (0, 0, "registered"),
        (SILVER - 1, 10, "registered"),
        (SILVER, 0, "silver"),
        (GOLD - 1, 5, "silver"),
        (GOLD, 1, "silver"),  # gold needs 2 certified people
        (GOLD, 2, "gold"),
        (PLATINUM, 3, "gold"),  # platinum needs 4
        (PLATINUM, 4, "platinum"),
        (PLATINUM * 10, 100, "platinum"),
        (-5_000, 0, "registered"),  # net revenue can be negative after refunds
    ],
)
def test_qualified_tier_needs_revenue_and_certifications(revenue: int, certified: int, expected: str) -> None:
    assert qualified_tier(revenue, certified, SETTINGS) == expected


def test_qualified_tier_reads_the_settings_in_force() -> None:
    settings = SETTINGS.with_changes(
        {
            "tier_revenue_thresholds_minor": {"silver": 10, "gold": 20, "platinum": 30},
            "tier_certifications_required": {"silver": 1, "gold": 1, "platinum": 1},
        }
    )
    assert qualified_tier(10, 0, settings) == "registered"
    assert qualified_tier(30, 1, settings) == "platinum"


# ------------------------------------------------------------------ the decision


def test_promotion_takes_effect_at_the_next_quarter_start() -> None:
    decision = decide(
        current="registered", qualified="gold", quarters_below_before=0, next_quarter_start=Q1_END, grace_quarters=1
    )
    assert decision == TierDecision("gold", "gold", Q1_END, 0)


def test_staying_at_the_tier_resets_the_grace() -> None:
    decision = decide(
        current="gold", qualified="gold", quarters_below_before=1, next_quarter_start=Q1_END, grace_quarters=1
    )
    assert decision == TierDecision("gold", None, None, 0)


def test_demotion_waits_one_quarter_of_grace_then_drops_one_tier() -> None:
    first = decide(
        current="platinum", qualified="registered", quarters_below_before=0, next_quarter_start=Q1_END, grace_quarters=1
    )
    assert first == TierDecision("registered", None, None, 1)
    second = decide(
        current="platinum", qualified="registered", quarters_below_before=1, next_quarter_start=Q2_END, grace_quarters=1
    )
    assert second == TierDecision("registered", "gold", Q2_END, 0)


@pytest.mark.parametrize(("grace", "below_needed"), [(0, 1), (1, 2), (2, 3)])
def test_the_grace_is_a_setting(grace: int, below_needed: int) -> None:
    below = 0
    for evaluation in range(1, below_needed + 1):
        decision = decide(
            current="silver",
            qualified="registered",
            quarters_below_before=below,
            next_quarter_start=Q1_END,
            grace_quarters=grace,
        )
        below = decision.quarters_below
        if evaluation < below_needed:
            assert decision.new_tier is None
        else:
            assert decision.new_tier == "registered"


# ------------------------------------------------------------------ overrides and tier_at


def test_override_records_a_tier_change_with_reason_and_effective_time() -> None:
    partner = active_partner()
    partner.collect_events()

    partner.override_tier("gold", ADMIN, "strategic partner", at(10))

    events = partner.collect_events()
    assert event_names(events) == ["TierChanged"]
    change = events[0]
    assert (change.from_tier, change.tier, change.source, change.reason, change.actor) == (
        "registered",
        "gold",
        "override",
        "strategic partner",
        ADMIN,
    )
    assert change.effective_at == at(10)
    assert partner.tier == "gold"
    assert partner.tier_at(at(10) - JUST_BEFORE) == "registered"
    assert partner.tier_at(at(10)) == "gold"


@pytest.mark.parametrize("reason", [None, "", "  "])
def test_override_requires_a_reason(reason: str | None) -> None:
    partner = active_partner()
    partner.collect_events()
    with pytest.raises(ReasonRequired, match="a reason is required to override a tier"):
        partner.override_tier("gold", ADMIN, reason, at(1))  # type: ignore[arg-type]
    assert partner.collect_events() == []
    assert partner.tier == "registered"


def test_override_refusals() -> None:
    partner = active_partner()
    partner.collect_events()
    with pytest.raises(ValidationFailed, match="unknown tier 'diamond'"):
        partner.override_tier("diamond", ADMIN, "why not", at(1))
    with pytest.raises(ValidationFailed, match="partner P-1 is already registered"):
        partner.override_tier("registered", ADMIN, "no-op", at(1))
    with pytest.raises(ValidationFailed, match="actor is required"):
        partner.override_tier("gold", "", "strategic", at(1))
    with pytest.raises(InvalidTransition, match="cannot change the tier of partner P-2: it is applied"):
        Partner.apply_to_join(
            partner_id="P-2", name="B", type="agent", region="VN", size="small", actor=ADMIN, at=T0
        ).override_tier("gold", ADMIN, "strategic", at(1))
    assert partner.collect_events() == []


def test_an_onboarding_or_suspended_partner_can_be_overridden() -> None:
    onboarding = onboarding_partner()
    onboarding.override_tier("silver", ADMIN, "migrated from the old programme", at(1))
    assert onboarding.tier_at(at(1)) == "silver"
    suspended = active_partner("P-2")
    suspended.suspend(ADMIN, "audit", at(1))
    suspended.override_tier("silver", ADMIN, "audit passed, keep level", at(2))
    assert suspended.tier == "silver"


def test_tier_at_follows_the_effective_times_not_the_recording_order() -> None:
    partner = active_partner()
    partner.override_tier("gold", ADMIN, "from Q2", Q1_END)  # recorded first, effective later
    partner.override_tier("silver", ADMIN, "from Q3", Q2_END)
    partner.override_tier("platinum", ADMIN, "backdated", at(10))  # recorded last, effective earliest

    assert partner.tier_at(T0 - timedelta(days=365)) == "registered"
    assert partner.tier_at(at(10) - JUST_BEFORE) == "registered"
    assert partner.tier_at(at(10)) == "platinum"
    assert partner.tier_at(Q1_END - JUST_BEFORE) == "platinum"
    assert partner.tier_at(Q1_END) == "gold"
    assert partner.tier_at(Q2_END) == "silver"
    assert partner.tier == "silver"  # the latest by effective time


def test_tier_at_accepts_any_timezone_and_refuses_naive_times() -> None:
    partner = active_partner()
    partner.override_tier("gold", ADMIN, "strategic", Q1_END)
    from datetime import timezone

    hanoi = timezone(timedelta(hours=7))
    assert partner.tier_at(datetime(2026, 4, 1, 6, 59, tzinfo=hanoi)) == "registered"
    assert partner.tier_at(datetime(2026, 4, 1, 7, 0, tzinfo=hanoi)) == "gold"
    with pytest.raises(ValueError, match="naive datetime"):
        partner.tier_at(datetime(2026, 4, 1))


# ------------------------------------------------------------------ quarterly evaluation


def test_evaluation_promotes_from_the_next_quarter_start() -> None:
    partner = active_partner()
    partner.collect_events()

    decision = evaluate(partner, Q1_END, SILVER)

    assert decision == TierDecision("silver", "silver", Q1_END, 0)
    events = partner.collect_events()
    assert event_names(events) == ["TierEvaluated", "TierChanged"]
    evaluated, changed = events
    assert (evaluated.quarter, evaluated.revenue_minor, evaluated.qualified_tier) == ("2026-Q1", SILVER, "silver")
    assert evaluated.currency == "USD"
    assert (changed.source, changed.from_tier, changed.tier, changed.effective_at) == (
        "evaluation",
        "registered",
        "silver",
        Q1_END,
    )
    assert "promotion at 2026-Q1 evaluation" in changed.reason
    assert partner.tier_at(Q1_END - JUST_BEFORE) == "registered"
    assert partner.tier_at(Q1_END) == "silver"


def test_evaluation_can_promote_several_tiers_at_once() -> None:
    partner = active_partner()
    certify(partner, 4)
    assert evaluate(partner, Q1_END, PLATINUM).new_tier == "platinum"
    assert partner.tier_at(Q1_END) == "platinum"


def test_evaluation_without_change_records_only_the_evaluation() -> None:
    partner = active_partner()
    partner.collect_events()
    decision = evaluate(partner, Q1_END, SILVER - 1)
    assert decision.new_tier is None
    assert event_names(partner.collect_events()) == ["TierEvaluated"]
    assert partner.tier == "registered"


def test_gold_needs_two_certified_people() -> None:
    partner = active_partner()
    certify(partner, 1)
    assert evaluate(partner, Q1_END, GOLD).qualified == "silver"
    partner.grant_certification("crm-expert", "second@acme.vn", at(0), None, ADMIN)
    assert evaluate(partner, Q2_END, GOLD).qualified == "gold"
    assert partner.tier_at(Q2_END) == "gold"


def test_platinum_needs_four_certified_people() -> None:
    partner = active_partner()
    certify(partner, 3)
    assert evaluate(partner, Q1_END, PLATINUM).new_tier == "gold"
    partner.grant_certification("crm-expert", "fourth@acme.vn", at(0), None, ADMIN)
    assert evaluate(partner, Q2_END, PLATINUM).new_tier == "platinum"


def test_expired_certifications_do_not_count() -> None:
    partner = active_partner()
    certify(partner, 2, expires_at=datetime(2026, 3, 1, tzinfo=UTC))  # expired before the quarter ended
    decision = evaluate(partner, Q1_END, GOLD)
    assert decision.qualified == "silver"
    partner.collect_events()
    assert partner.certified_people(Q1_END) == 0


def test_certifications_valid_until_the_quarter_end_count() -> None:
    partner = active_partner()
    certify(partner, 2, expires_at=Q1_END)  # still valid during the last instant of the quarter
    assert evaluate(partner, Q1_END, GOLD).qualified == "gold"


def test_certifications_granted_after_the_quarter_do_not_count() -> None:
    partner = active_partner()
    for person in ("a@acme.vn", "b@acme.vn"):
        partner.grant_certification("crm-expert", person, Q1_END + timedelta(days=1), None, ADMIN)
    assert evaluate(partner, Q1_END, GOLD).qualified == "silver"


def test_one_evaluation_per_quarter() -> None:
    partner = active_partner()
    evaluate(partner, Q1_END, 0)
    partner.collect_events()
    with pytest.raises(InvalidTransition, match="quarter 2026-Q1 was already evaluated for P-1"):
        evaluate(partner, Q1_END, GOLD)
    assert partner.collect_events() == []
    assert partner.tier == "registered"
    assert partner.evaluated_quarters == ["2026-Q1"]


@pytest.mark.parametrize(
    "quarter_end",
    [datetime(2026, 3, 31, tzinfo=UTC), datetime(2026, 4, 1, 0, 0, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC)],
)
def test_quarter_end_must_be_the_start_of_a_quarter(quarter_end: datetime) -> None:
    partner = active_partner()
    partner.collect_events()
    with pytest.raises(ValidationFailed, match="quarter_end must be the first instant of a quarter"):
        evaluate(partner, quarter_end, GOLD)
    assert partner.collect_events() == []


def test_evaluation_needs_an_active_or_suspended_partner() -> None:
    with pytest.raises(InvalidTransition, match="cannot evaluate the tier of partner P-1: it is onboarding"):
        evaluate(onboarding_partner(), Q1_END, GOLD)
    suspended = active_partner()
    suspended.suspend(ADMIN, "audit", at(1))
    assert evaluate(suspended, Q1_END, SILVER).new_tier == "silver"


def test_evaluation_requires_an_actor() -> None:
    partner = active_partner()
    partner.collect_events()
    with pytest.raises(ValidationFailed, match="actor is required"):
        partner.evaluate_tier(quarter_end=Q1_END, revenue_minor=GOLD, settings=SETTINGS, actor=" ", at=Q1_END)
    assert partner.collect_events() == []
    assert partner.evaluated_quarters == []


def test_demotion_by_one_tier_after_one_quarter_of_grace() -> None:
    partner = active_partner()
    partner.override_tier("platinum", ADMIN, "migrated", at(0))

    first = evaluate(partner, Q1_END, 0)  # grace
    assert first == TierDecision("registered", None, None, 1)
    assert partner.tier_at(Q1_END) == "platinum"

    second = evaluate(partner, Q2_END, 0)  # one tier down, from the next quarter
    assert second == TierDecision("registered", "gold", Q2_END, 0)
    assert partner.tier_at(Q2_END - JUST_BEFORE) == "platinum"
    assert partner.tier_at(Q2_END) == "gold"

    assert evaluate(partner, Q3_END, 0).new_tier is None  # the new tier gets its own grace
    assert evaluate(partner, Q4_END, 0).new_tier == "silver"
    assert partner.tier_at(Q4_END) == "silver"
    assert partner.tier_at(Q3_END) == "gold"


def test_qualifying_again_cancels_the_grace() -> None:
    partner = active_partner()
    partner.override_tier("silver", ADMIN, "migrated", at(0))
    assert evaluate(partner, Q1_END, 0).quarters_below == 1
    assert evaluate(partner, Q2_END, SILVER).quarters_below == 0
    assert evaluate(partner, Q3_END, 0).new_tier is None  # a fresh grace quarter
    assert partner.tier == "silver"


def test_demotion_reason_names_the_quarter() -> None:
    partner = active_partner()
    partner.override_tier("silver", ADMIN, "migrated", at(0))
    evaluate(partner, Q1_END, 0)
    partner.collect_events()
    evaluate(partner, Q2_END, 0)
    changed = partner.collect_events()[-1]
    assert changed.reason.startswith("demotion at 2026-Q2 evaluation")
    assert (changed.from_tier, changed.tier) == ("silver", "registered")


# ------------------------------------------------------------------ through the application


def test_evaluation_through_the_application_uses_the_settings_in_force(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    app.change_settings(
        {"tier_revenue_thresholds_minor": {"silver": 1_000, "gold": 2_000, "platinum": 3_000}},
        actor=ADMIN,
        reason="pilot market",
        at=at(1),
    )

    result = app.evaluate_tier("P-1", quarter_end=Q1_END, revenue_minor=1_500, actor="evaluator", at=Q1_END)

    assert result.events == ["prm.partner.tier_evaluated.v1", "prm.partner.tier_changed.v1"]
    assert result.details == {"qualified": "silver", "new_tier": "silver"}
    partner = app.partner("P-1")
    assert partner.tier_at(Q1_END) == "silver"
    with pytest.raises(InvalidTransition, match="already evaluated"):
        app.evaluate_tier("P-1", quarter_end=Q1_END, revenue_minor=1_500, actor="evaluator", at=Q1_END)


def test_override_and_history_round_trip(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    result = app.override_tier("P-1", tier="gold", actor=ADMIN, reason="strategic", effective_at=at(3))
    assert result.events == ["prm.partner.tier_changed.v1"]
    app.grant_certification(
        "P-1", cert="crm-expert", person="a@acme.vn", actor=ADMIN, expires_at=Q4_END, granted_at=at(1)
    )
    app.evaluate_tier("P-1", quarter_end=Q1_END, revenue_minor=0, actor="evaluator", at=Q1_END)
    app.evaluate_tier("P-1", quarter_end=Q2_END, revenue_minor=0, actor="evaluator", at=Q2_END)

    partner = app.partner("P-1")
    assert partner.tier_history == [(T0, "registered"), (at(3), "gold"), (Q2_END, "silver")]
    assert partner.tier_at(at(2)) == "registered"
    assert partner.tier_at(Q2_END) == "silver"
    replayed = None
    for domain_event in app.events.get(partner.id):
        replayed = domain_event.mutate(replayed)
    assert replayed is not None
    assert state_of(replayed) == state_of(partner)


def test_a_tier_change_cannot_take_effect_before_the_partner_applied() -> None:
    partner = active_partner()  # applied at T0
    partner.collect_events()
    with pytest.raises(
        ValidationFailed, match="cannot take effect at 2026-01-04T09:00:00\\+00:00, before the partner applied"
    ):
        partner.override_tier("gold", ADMIN, "backdated", T0 - timedelta(days=1))
    late = Partner.apply_to_join(
        partner_id="P-LATE",
        name="Late",
        type="agent",
        region="VN",
        size="small",
        actor=ADMIN,
        at=Q1_END + timedelta(days=1),
    )
    late.approve(ADMIN, Q1_END + timedelta(days=1))
    late.attach_contract("C-9", Q1_END + timedelta(days=1))
    late.record_training("partner-onboarding", "x@late.vn", Q1_END + timedelta(days=1), ADMIN)
    late.complete_onboarding_if_ready(ADMIN, Q1_END + timedelta(days=1), "partner-onboarding")
    late.collect_events()
    with pytest.raises(ValidationFailed, match="before the partner applied"):
        evaluate(late, Q1_END, GOLD)  # the partner did not exist during 2026-Q1
    assert late.collect_events() == []
    assert partner.collect_events() == []
    assert partner.tier == "registered"
    partner.override_tier("gold", ADMIN, "from the application on", T0)
    assert partner.tier_at(T0) == "gold"
