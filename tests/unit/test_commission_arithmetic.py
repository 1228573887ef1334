"""Commission arithmetic (spec: commissions.md): accruals, accelerators, clawbacks.

Hand-worked examples carry their arithmetic in comments; the properties at the
end check the invariants on generated inputs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.commission import (
    DEFAULT_PLAN_TERMS,
    REASON_PARTNER_TERMINATED,
    TIERS,
    Accelerator,
    LineAccrual,
    PlanTerms,
    RatePart,
    accrue_line,
    clawback_by_line,
    clawback_minor,
    fraction_from_str,
    fraction_to_str,
    hold_ends_at,
    month_bounds,
    month_of,
    quarter_bounds,
    quarter_of,
    round_half_even,
    split_by_accelerators,
)

T = DEFAULT_PLAN_TERMS


def accrue(
    amount: int,
    *,
    currency: str = "USD",
    tier: str = "gold",
    category: str | None = None,
    q_before: int = 0,
    bonus: bool = False,
    terms: PlanTerms = T,
    terminated: bool = False,
) -> LineAccrual:
    return accrue_line(
        amount_minor=amount,
        currency=currency,
        tier=tier,
        category=category,
        terms=terms,
        q_before=q_before,
        registration_bonus=bonus,
        partner_terminated=terminated,
    )


def rates(line: LineAccrual) -> list[tuple[int, int, int]]:
    """(amount, extra_bps, rate_bps) of each part."""
    return [(p.amount_minor, p.extra_bps, p.rate_bps) for p in line.parts]


def claw(total: int, commission: int, before: int, after: int) -> int:
    return clawback_minor(
        sale_total_minor=total,
        sale_commission_minor=commission,
        refunded_before_minor=before,
        refunded_after_minor=after,
    )


# ---------------------------------------------------------------------------
# round_half_even
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(1, 2), 0),  # 0.5 -> 0 (down to even)
        (Fraction(3, 2), 2),  # 1.5 -> 2 (up to even)
        (Fraction(5, 2), 2),  # 2.5 -> 2 (down to even)
        (Fraction(7, 2), 4),  # 3.5 -> 4 (up to even)
        (Fraction(-1, 2), 0),  # -0.5 -> 0
        (Fraction(-3, 2), -2),  # -1.5 -> -2
        (Fraction(-5, 2), -2),  # -2.5 -> -2
        (Fraction(5001, 10000), 1),  # just above the tie
        (Fraction(4999, 10000), 0),  # just below the tie
        (Fraction(-4999, 10000), 0),
        (Fraction(-5001, 10000), -1),
        (Fraction(12, 1), 12),
        (7, 7),
    ],
)
def test_round_half_even(value: Fraction | int, expected: int) -> None:
    assert round_half_even(value) == expected


def test_round_half_even_refuses_floats() -> None:
    with pytest.raises(TypeError):
        round_half_even(0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        round_half_even(True)


@given(st.fractions())
def test_round_half_even_is_nearest_with_ties_to_even(x: Fraction) -> None:
    r = round_half_even(x)
    assert abs(x - r) <= Fraction(1, 2)
    if abs(x - r) == Fraction(1, 2):
        assert r % 2 == 0
    assert r == round(x)  # Python's Fraction.__round__ is also half-to-even


def test_fraction_strings() -> None:
    assert fraction_to_str(Fraction(7, 2)) == "7/2"
    assert fraction_to_str(Fraction(5)) == "5/1"
    assert fraction_to_str(Fraction(-3, 4)) == "-3/4"
    assert fraction_from_str("-3/4") == Fraction(-3, 4)
    for bad in ("1/0", "0.5", "1 / 2", "", "1/-2"):
        with pytest.raises(ValueError):
            fraction_from_str(bad)


# ---------------------------------------------------------------------------
# Rate sources
# ---------------------------------------------------------------------------


def test_tier_rate() -> None:
    # gold 1000 bps, USD, Q = 0, far below the first threshold (10_000_000):
    # 1_234_567 * 1000 / 10000 = 123_456.7 -> 123_457
    line = accrue(1_234_567, tier="gold")
    assert (line.base_bps, line.bonus_bps) == (1000, 0)
    assert rates(line) == [(1_234_567, 0, 1000)]
    assert line.exact_commission == Fraction(1_234_567, 10)
    assert line.commission_minor == 123_457
    assert line.reason is None


@pytest.mark.parametrize(
    ("tier", "expected"),
    # 200_000 * bps / 10000
    [("registered", 10_000), ("silver", 16_000), ("gold", 20_000), ("platinum", 24_000)],
)
def test_each_default_tier_rate(tier: str, expected: int) -> None:
    assert accrue(200_000, tier=tier).commission_minor == expected


def test_category_rate_replaces_tier_rate() -> None:
    terms = PlanTerms(
        tier_rates_bps=T.tier_rates_bps,
        category_rates_bps={"software": {"gold": 1500}},
        registration_bonus_bps=200,
        accelerators=T.accelerators,
        hold_days=30,
    )
    terms.validate()
    # category rate defined for gold: 200_000 * 1500 / 10000 = 30_000
    line = accrue(200_000, tier="gold", category="software", terms=terms)
    assert line.base_bps == 1500
    assert line.commission_minor == 30_000
    # no entry for silver in "software": tier rate 800 -> 200_000 * 800 / 10000
    assert accrue(200_000, tier="silver", category="software", terms=terms).base_bps == 800
    # unknown category and no category: tier rate 1000 -> 20_000
    assert accrue(200_000, category="hardware", terms=terms).commission_minor == 20_000
    assert accrue(200_000, category=None, terms=terms).commission_minor == 20_000


def test_registration_bonus_is_added() -> None:
    # silver 800 + bonus 200 = 1000 bps: 150_000 * 1000 / 10000 = 15_000
    line = accrue(150_000, tier="silver", bonus=True)
    assert (line.base_bps, line.bonus_bps) == (800, 200)
    assert rates(line) == [(150_000, 0, 1000)]
    assert line.commission_minor == 15_000
    # without the bonus: 150_000 * 800 / 10000 = 12_000
    assert accrue(150_000, tier="silver").commission_minor == 12_000


def test_bonus_adds_to_a_category_rate() -> None:
    terms = PlanTerms.from_dict({"category_rates_bps": {"services": {"platinum": 300}}})
    # 300 + 200 = 500 bps: 1_000_001 * 500 / 10000 = 50_000.05 -> 50_000
    line = accrue(1_000_001, tier="platinum", category="services", bonus=True, terms=terms)
    assert (line.base_bps, line.bonus_bps) == (300, 200)
    assert line.exact_commission == Fraction(5_000_005, 100)
    assert line.commission_minor == 50_000


# ---------------------------------------------------------------------------
# Accelerators (marginal)
# ---------------------------------------------------------------------------


def test_usd_line_crossing_one_threshold() -> None:
    # gold 1000, Q before = 9_000_000, A = 2_000_000 -> revenue (9_000_000, 11_000_000]
    #   (9_000_000, 10_000_000]  1_000_000 * 1000 / 10000 = 100_000
    #   (10_000_000, 11_000_000] 1_000_000 * 1200 / 10000 = 120_000   (+200 above 10M)
    #   total 220_000
    line = accrue(2_000_000, q_before=9_000_000)
    assert [(p.start_minor, p.end_minor) for p in line.parts] == [
        (9_000_000, 10_000_000),
        (10_000_000, 11_000_000),
    ]
    assert rates(line) == [(1_000_000, 0, 1000), (1_000_000, 200, 1200)]
    assert line.commission_minor == 220_000
    assert line.q_after == 11_000_000


def test_vnd_line_crossing_two_thresholds() -> None:
    # platinum 1200 + bonus 200 = 1400, Q before = 800_000_000 VND,
    # A = 4_500_000_000 -> revenue (800_000_000, 5_300_000_000]
    #   (0.8e9, 1e9]  200_000_000 * 1400 / 10000 =  28_000_000
    #   (1e9, 5e9]  4_000_000_000 * 1600 / 10000 = 640_000_000   (+200)
    #   (5e9, 5.3e9]  300_000_000 * 1900 / 10000 =  57_000_000   (+200 +300)
    #   total 725_000_000 VND
    line = accrue(4_500_000_000, currency="VND", tier="platinum", bonus=True, q_before=800_000_000)
    assert rates(line) == [
        (200_000_000, 0, 1400),
        (4_000_000_000, 200, 1600),
        (300_000_000, 500, 1900),
    ]
    assert line.commission_minor == 725_000_000


def test_usd_line_crossing_two_thresholds_with_rounding() -> None:
    # silver 800, Q before = 9_500_000 cents, A = 41_000_003 -> (9_500_000, 50_500_003]
    #   500_000 * 800 / 10000      =    40_000
    #   40_000_000 * 1000 / 10000  = 4_000_000
    #   500_003 * 1300 / 10000     =    65_000.39
    #   sum 4_105_000.39 -> 4_105_000
    line = accrue(41_000_003, tier="silver", q_before=9_500_000)
    assert rates(line) == [(500_000, 0, 800), (40_000_000, 200, 1000), (500_003, 500, 1300)]
    assert line.exact_commission == Fraction(410_500_039, 100)
    assert line.commission_minor == 4_105_000


def test_line_ending_exactly_at_a_threshold_earns_no_extra() -> None:
    # (0, 10_000_000]: revenue equal to 10_000_000 is not above it.
    line = accrue(10_000_000)
    assert rates(line) == [(10_000_000, 0, 1000)]
    assert line.commission_minor == 1_000_000
    # the next line starts exactly at the threshold: all of it is above.
    # 100 * 1200 / 10000 = 12
    nxt = accrue(100, q_before=line.q_after)
    assert rates(nxt) == [(100, 200, 1200)]
    assert nxt.commission_minor == 12


def test_currency_without_accelerators() -> None:
    # EUR has no accelerator list: gold 1000 on everything, however large Q.
    # 100_000_000 * 1000 / 10000 = 10_000_000
    line = accrue(100_000_000, currency="EUR", q_before=900_000_000)
    assert rates(line) == [(100_000_000, 0, 1000)]
    assert line.accelerators == ()
    assert line.commission_minor == 10_000_000


def test_rounded_once_per_line_not_per_part() -> None:
    # gold, Q before = 9_999_985, A = 30 -> (9_999_985, 10_000_015]
    #   15 * 1000 / 10000 = 1.5
    #   15 * 1200 / 10000 = 1.8
    #   sum 3.3 -> 3   (rounding each part would give 2 + 2 = 4)
    line = accrue(30, q_before=9_999_985)
    assert [p.exact_commission for p in line.parts] == [Fraction(3, 2), Fraction(9, 5)]
    assert line.exact_commission == Fraction(33, 10)
    assert line.commission_minor == 3


@pytest.mark.parametrize(
    ("amount", "exact", "expected"),
    [
        # registered 500 bps = amount / 20
        (10, Fraction(1, 2), 0),  # 0.5 -> 0
        (30, Fraction(3, 2), 2),  # 1.5 -> 2
        (50, Fraction(5, 2), 2),  # 2.5 -> 2
        (70, Fraction(7, 2), 4),  # 3.5 -> 4
        (11, Fraction(11, 20), 1),  # 0.55 -> 1
    ],
)
def test_rounding_ties_on_a_line(amount: int, exact: Fraction, expected: int) -> None:
    line = accrue(amount, tier="registered")
    assert line.exact_commission == exact
    assert line.commission_minor == expected


def test_vnd_has_no_minor_unit() -> None:
    # amounts are whole VND; silver 800: 1_234_567 * 800 / 10000 = 98_765.36 -> 98_765
    assert accrue(1_234_567, currency="VND", tier="silver").commission_minor == 98_765
    # ties in VND: registered 500 = amount / 20
    # 1_000_010 / 20 = 50_000.5 -> 50_000 ; 1_000_030 / 20 = 50_001.5 -> 50_002
    assert accrue(1_000_010, currency="VND", tier="registered").commission_minor == 50_000
    assert accrue(1_000_030, currency="VND", tier="registered").commission_minor == 50_002


def test_negative_q_after_refunds() -> None:
    # Refunds pushed the quarter's net to -500_000. gold, A = 10_600_000
    # -> revenue (-500_000, 10_100_000]
    #   (-500_000, 10_000_000]   10_500_000 * 1000 / 10000 = 1_050_000
    #   (10_000_000, 10_100_000]    100_000 * 1200 / 10000 =    12_000
    #   total 1_062_000
    line = accrue(10_600_000, q_before=-500_000)
    assert [(p.start_minor, p.end_minor) for p in line.parts] == [
        (-500_000, 10_000_000),
        (10_000_000, 10_100_000),
    ]
    assert line.commission_minor == 1_062_000
    # A line that stays below zero: (-2_000_000, -1_000_000], base rate only.
    below = accrue(1_000_000, q_before=-2_000_000)
    assert rates(below) == [(1_000_000, 0, 1000)]
    assert below.commission_minor == 100_000


def test_split_by_accelerators_directly() -> None:
    accs = T.accelerators["USD"]
    assert split_by_accelerators(0, 5, accs) == []
    assert split_by_accelerators(20, 9_999_990, accs) == [
        (9_999_990, 10_000_000, 10, 0),
        (10_000_000, 10_000_010, 10, 200),
    ]
    # entirely above both thresholds: extra is 200 + 300
    assert split_by_accelerators(7, 60_000_000, accs) == [(60_000_000, 60_000_007, 7, 500)]
    # from below zero across both thresholds
    assert split_by_accelerators(60_000_000, -1, accs) == [
        (-1, 10_000_000, 10_000_001, 0),
        (10_000_000, 50_000_000, 40_000_000, 200),
        (50_000_000, 59_999_999, 9_999_999, 500),
    ]
    # the order of the list does not matter
    assert split_by_accelerators(60_000_000, -1, tuple(reversed(accs))) == (split_by_accelerators(60_000_000, -1, accs))
    with pytest.raises(ValueError):
        split_by_accelerators(-1, 0, accs)


def test_zero_amount_line() -> None:
    line = accrue(0, q_before=123)
    assert line.parts == ()
    assert line.commission_minor == 0
    assert line.reason is None


def test_terminated_partner_earns_nothing() -> None:
    line = accrue(5_000_000, tier="gold", bonus=True, q_before=9_000_000, terminated=True)
    assert line.commission_minor == 0
    assert line.exact_commission == 0
    assert line.reason == REASON_PARTNER_TERMINATED
    assert (line.base_bps, line.bonus_bps, line.parts) == (0, 0, ())
    assert line.tier == "gold"
    assert line.q_after == 14_000_000
    explanation = line.to_dict()
    assert explanation["reason"] == "partner_terminated"
    assert explanation["formula"] == "0 (partner_terminated)"
    # no rate is looked up, so the tier is recorded as given
    assert accrue(1, tier="terminated", terminated=True).tier == "terminated"


def test_invalid_line_inputs() -> None:
    with pytest.raises(ValueError, match="amount_minor"):
        accrue(-1)
    with pytest.raises(TypeError):
        accrue(100.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        accrue(100, q_before=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown tier"):
        accrue(100, tier="diamond")
    with pytest.raises(ValueError, match="currency"):
        accrue(100, currency="usd")


def test_explanation_is_json_friendly_and_complete() -> None:
    line = accrue(2_000_000, q_before=9_000_000, bonus=True)
    explanation = line.to_dict()
    assert json.loads(json.dumps(explanation)) == explanation
    assert explanation == {
        "amount_minor": 2_000_000,
        "currency": "USD",
        "tier": "gold",
        "category": None,
        "q_before": 9_000_000,
        "q_after": 11_000_000,
        "registration_bonus": True,
        "base_bps": 1000,
        "bonus_bps": 200,
        "accelerators": [
            {"above_minor": 10_000_000, "extra_bps": 200},
            {"above_minor": 50_000_000, "extra_bps": 300},
        ],
        "parts": [
            {
                "start_minor": 9_000_000,
                "end_minor": 10_000_000,
                "amount_minor": 1_000_000,
                "base_bps": 1000,
                "bonus_bps": 200,
                "extra_bps": 0,
                "rate_bps": 1200,
                "exact_commission": "120000/1",
            },
            {
                "start_minor": 10_000_000,
                "end_minor": 11_000_000,
                "amount_minor": 1_000_000,
                "base_bps": 1000,
                "bonus_bps": 200,
                "extra_bps": 200,
                "rate_bps": 1400,
                "exact_commission": "140000/1",
            },
        ],
        "exact_commission": "260000/1",
        "rounding": "half_even",
        "commission_minor": 260_000,
        "reason": None,
        "formula": "round_half_even((1000000*1200 + 1000000*1400) / 10000) = round_half_even(260000/1) = 260000",
    }


def test_rate_part_checks_its_arithmetic() -> None:
    part = RatePart.of(start_minor=0, end_minor=10, base_bps=500, bonus_bps=0, extra_bps=0)
    assert part.exact_commission == Fraction(1, 2)
    with pytest.raises(ValueError):
        RatePart(0, 10, 9, 500, 0, 0, 500, Fraction(1, 2))
    with pytest.raises(ValueError):
        RatePart(0, 10, 10, 500, 0, 0, 600, Fraction(1, 2))
    with pytest.raises(ValueError):
        RatePart(0, 10, 10, 500, 0, 0, 500, Fraction(1))


# ---------------------------------------------------------------------------
# Clawbacks
# ---------------------------------------------------------------------------


def test_partial_then_full_refund_sums_to_minus_c() -> None:
    # S = 1_000_000, C = 33_333
    # refund 1: R 0 -> 333_333: 333_333 * 33_333 / 1_000_000 = 11_110.988889 -> 11_111
    #           clawback = -(11_111 - 0) = -11_111
    # refund 2: R 333_333 -> 1_000_000: 33_333 - 11_111 -> clawback -22_222
    # total -33_333 = -C
    first = claw(1_000_000, 33_333, 0, 333_333)
    second = claw(1_000_000, 33_333, 333_333, 1_000_000)
    assert (first, second) == (-11_111, -22_222)
    assert first + second == -33_333


def test_unit_refunds_never_claw_back_more_than_c() -> None:
    # S = 3, C = 2, refunds of 1 unit each:
    #   R=1: rhe(2/3) = 1 -> -1      running -1
    #   R=2: rhe(4/3) = 1 -> 0       running -1
    #   R=3: rhe(6/3) = 2 -> -1      running -2 = -C
    assert [claw(3, 2, r - 1, r) for r in (1, 2, 3)] == [-1, 0, -1]
    # S = 4, C = 2 (ties): rhe(1/2)=0, rhe(1)=1, rhe(3/2)=2, rhe(2)=2
    assert [claw(4, 2, r - 1, r) for r in (1, 2, 3, 4)] == [0, -1, -1, 0]


def test_clawback_edge_cases() -> None:
    assert claw(0, 0, 0, 0) == 0  # S == 0
    assert claw(100, 7, 40, 40) == 0  # an empty refund claws nothing
    assert claw(100, 0, 0, 100) == 0  # nothing accrued, nothing clawed back
    for before, after in ((-1, 0), (10, 5), (0, 101)):
        with pytest.raises(ValueError):
            claw(100, 7, before, after)
    with pytest.raises(ValueError):
        claw(100, -7, 0, 10)
    with pytest.raises(TypeError):
        claw(100, 7, 0, 10.0)  # type: ignore[arg-type]


def test_clawback_by_line() -> None:
    # Sale of three lines, S = 1_000_000 + 400_000 + 25 = 1_400_025,
    # C_i = 100_000, 48_000, 3; refund R 0 -> 700_003:
    #   700_003 * 100_000 / 1_400_025 = 49_999.32 -> 49_999
    #   700_003 *  48_000 / 1_400_025 = 23_999.67 -> 24_000
    #   700_003 *       3 / 1_400_025 =      1.4999796 -> 1
    commissions, amounts = [100_000, 48_000, 3], [1_000_000, 400_000, 25]
    first = clawback_by_line(commissions, amounts, 0, 700_003)
    assert first == [-49_999, -24_000, -1]
    rest = clawback_by_line(commissions, amounts, 700_003, 1_400_025)
    assert rest == [-50_001, -24_000, -2]
    assert [a + b for a, b in zip(first, rest, strict=True)] == [-c for c in commissions]


def test_per_line_and_sale_level_can_differ_on_a_partial_refund() -> None:
    # Two lines of 1 unit, 1 unit of commission each; S = 2, C = 2; refund R = 1:
    #   per line: rhe(1 * 1 / 2) = rhe(0.5) = 0 -> [0, 0]
    #   sale:     rhe(1 * 2 / 2) = 1           -> -1
    # After the full refund both agree (-1 each, -2 for the sale).
    assert clawback_by_line([1, 1], [1, 1], 0, 1) == [0, 0]
    assert claw(2, 2, 0, 1) == -1
    assert clawback_by_line([1, 1], [1, 1], 1, 2) == [-1, -1]
    assert claw(2, 2, 1, 2) == -1


def test_clawback_by_line_validation() -> None:
    with pytest.raises(ValueError, match="same length"):
        clawback_by_line([1], [1, 2], 0, 1)
    with pytest.raises(ValueError):
        clawback_by_line([1, 2], [1, 2], 0, 4)
    assert clawback_by_line([], [], 0, 0) == []
    assert clawback_by_line([0, 0], [0, 0], 0, 0) == [0, 0]


# ---------------------------------------------------------------------------
# Plan terms
# ---------------------------------------------------------------------------


def test_default_plan_terms_match_the_spec() -> None:
    T.validate()
    assert dict(T.tier_rates_bps) == {
        "registered": 500,
        "silver": 800,
        "gold": 1000,
        "platinum": 1200,
    }
    assert T.registration_bonus_bps == 200
    assert T.accelerators["VND"] == (
        Accelerator(1_000_000_000, 200),
        Accelerator(5_000_000_000, 300),
    )
    assert T.accelerators["USD"] == (Accelerator(10_000_000, 200), Accelerator(50_000_000, 300))
    assert T.hold_days == 30
    assert dict(T.category_rates_bps) == {}


def test_from_dict_fills_missing_keys_with_defaults() -> None:
    assert PlanTerms.from_dict({}) == T
    terms = PlanTerms.from_dict({"hold_days": 14, "accelerators": {}})
    assert terms.hold_days == 14
    assert dict(terms.accelerators) == {}
    assert terms.tier_rates_bps == T.tier_rates_bps


def test_plan_terms_are_immutable_copies() -> None:
    tiers = {"registered": 1, "silver": 2, "gold": 3, "platinum": 4}
    terms = PlanTerms(tiers, {}, 0, {}, 0)
    tiers["gold"] = 999
    assert terms.tier_rates_bps["gold"] == 3
    with pytest.raises(TypeError):
        terms.tier_rates_bps["gold"] = 5  # type: ignore[index]


def _terms(**changes: Any) -> dict[str, Any]:
    data = T.to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_terms(tier_rates_bps={**T.to_dict()["tier_rates_bps"], "gold": -1}), "negative rate"),
        (_terms(tier_rates_bps={**T.to_dict()["tier_rates_bps"], "diamond": 1}), "unknown tier"),
        (_terms(tier_rates_bps={"gold": 1000}), "missing rate"),
        (_terms(tier_rates_bps={**T.to_dict()["tier_rates_bps"], "gold": 10.5}), "integer"),
        (_terms(tier_rates_bps={**T.to_dict()["tier_rates_bps"], "gold": True}), "integer"),
        (_terms(category_rates_bps={"software": {"gold": -5}}), "negative rate"),
        (_terms(category_rates_bps={"software": {"bronze": 5}}), "unknown tier"),
        (_terms(category_rates_bps={"": {"gold": 5}}), "non-empty"),
        (_terms(registration_bonus_bps=-200), "registration_bonus_bps"),
        (_terms(registration_bonus_bps="200"), "registration_bonus_bps"),
        (
            _terms(
                accelerators={
                    "USD": [
                        {"above_minor": 50, "extra_bps": 300},
                        {"above_minor": 10, "extra_bps": 200},
                    ]
                }
            ),
            "sorted",
        ),
        (
            _terms(
                accelerators={
                    "USD": [
                        {"above_minor": 10, "extra_bps": 300},
                        {"above_minor": 10, "extra_bps": 200},
                    ]
                }
            ),
            "duplicate threshold",
        ),
        (_terms(accelerators={"USD": [{"above_minor": 10, "extra_bps": -1}]}), "extra_bps"),
        (_terms(accelerators={"USD": [{"above_minor": -10, "extra_bps": 1}]}), "above_minor"),
        (_terms(accelerators={"USD": [{"above_minor": 10}]}), "keys"),
        (_terms(accelerators={"usd": []}), "currency"),
        (_terms(accelerators={"USD": "fast"}), "list"),
        (_terms(hold_days=-1), "hold_days"),
        (_terms(hold_days=3651), "hold_days"),
        (_terms(hold_days=None), "hold_days"),
        (_terms(bonus=1), "unknown key"),
    ],
)
def test_invalid_plan_terms_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PlanTerms.from_dict(data)


def test_validate_on_constructed_terms() -> None:
    terms = PlanTerms(T.tier_rates_bps, {}, 200, {}, 3650)
    terms.validate()  # 3650 is the maximum
    bad = PlanTerms(
        T.tier_rates_bps,
        {},
        200,
        {"VND": (Accelerator(5, 1), Accelerator(1, 1))},
        30,
    )
    with pytest.raises(ValueError, match=r"accelerators\[VND\]\[1\].*sorted"):
        bad.validate()


# ---------------------------------------------------------------------------
# Periods
# ---------------------------------------------------------------------------


def test_quarter_and_month_of() -> None:
    assert quarter_of(datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)) == "2026-Q1"
    assert quarter_of(datetime(2026, 4, 1, tzinfo=UTC)) == "2026-Q2"
    assert quarter_of(datetime(2026, 12, 31, 12, tzinfo=UTC)) == "2026-Q4"
    # 2026-04-01T01:00+02:00 is 2026-03-31T23:00Z: still Q1 / March in UTC
    plus_two = datetime(2026, 4, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert quarter_of(plus_two) == "2026-Q1"
    assert month_of(plus_two) == "2026-03"
    assert month_of(datetime(2026, 1, 5, tzinfo=UTC)) == "2026-01"
    with pytest.raises(ValueError, match="naive"):
        quarter_of(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        month_of(datetime(2026, 1, 1))


def test_period_bounds() -> None:
    assert quarter_bounds("2026-Q1") == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 4, 1, tzinfo=UTC),
    )
    assert quarter_bounds("2026-Q4") == (
        datetime(2026, 10, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert month_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    for bad in ("2026-Q5", "2026Q1", "26-Q1", "2026-q1", "0000-Q1", "9999-Q4"):
        with pytest.raises(ValueError):
            quarter_bounds(bad)
    for bad in ("2026-13", "2026-3", "2026-00"):
        with pytest.raises(ValueError):
            month_bounds(bad)


def test_hold_ends_at() -> None:
    at = datetime(2026, 1, 15, 10, tzinfo=UTC)
    assert hold_ends_at(at, 30) == datetime(2026, 2, 14, 10, tzinfo=UTC)
    with pytest.raises(ValueError):
        hold_ends_at(datetime(2026, 1, 15), 30)


@given(
    st.datetimes(
        min_value=datetime(1000, 1, 1),
        max_value=datetime(9999, 9, 30),  # 9999-Q4 has no end in datetime's range
        timezones=st.just(UTC),
    )
)
def test_period_of_lies_within_its_bounds(dt: datetime) -> None:
    start, end = quarter_bounds(quarter_of(dt))
    assert start <= dt < end
    start, end = month_bounds(month_of(dt))
    assert start <= dt < end


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

thresholds_st = st.lists(
    st.builds(
        Accelerator,
        above_minor=st.integers(0, 10**12),
        extra_bps=st.integers(0, 2000),
    ),
    max_size=5,
    unique_by=lambda a: a.above_minor,
).map(lambda accs: tuple(sorted(accs, key=lambda a: a.above_minor)))

amount_st = st.integers(0, 10**12)
q_st = st.integers(-(10**12), 10**12)


@given(amount_st, q_st, thresholds_st)
def test_parts_are_contiguous_ascending_and_sum_to_the_amount(
    amount: int, q: int, accs: tuple[Accelerator, ...]
) -> None:
    parts = split_by_accelerators(amount, q, accs)
    assert sum(p[2] for p in parts) == amount
    assert all(p[2] > 0 and p[1] - p[0] == p[2] for p in parts)
    if parts:
        assert parts[0][0] == q
        assert parts[-1][1] == q + amount
    for left, right in zip(parts, parts[1:], strict=False):
        assert left[1] == right[0]
        assert left[3] <= right[3]  # extras are non-negative: rates only go up
    for start, end, _, extra in parts:
        # no threshold strictly inside a part; extra = thresholds at or below start
        assert not any(start < a.above_minor < end for a in accs)
        assert extra == sum(a.extra_bps for a in accs if a.above_minor <= start)


@given(
    st.integers(0, 300),
    st.integers(-50, 400),
    st.lists(
        st.builds(Accelerator, above_minor=st.integers(0, 400), extra_bps=st.integers(0, 50)),
        max_size=4,
        unique_by=lambda a: a.above_minor,
    ),
)
def test_split_matches_unit_by_unit_brute_force(amount: int, q: int, accs: list[Accelerator]) -> None:
    # revenue unit u in (Q, Q+A] earns the extras of every threshold t < u
    expected = sum(sum(a.extra_bps for a in accs if a.above_minor < u) for u in range(q + 1, q + amount + 1))
    parts = split_by_accelerators(amount, q, accs)
    assert sum(p[2] * p[3] for p in parts) == expected


plan_terms_st = st.builds(
    PlanTerms,
    tier_rates_bps=st.fixed_dictionaries({t: st.integers(0, 5000) for t in TIERS}),
    category_rates_bps=st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.dictionaries(st.sampled_from(TIERS), st.integers(0, 5000)),
        max_size=3,
    ),
    registration_bonus_bps=st.integers(0, 1000),
    accelerators=st.dictionaries(st.from_regex(r"[A-Z]{3}", fullmatch=True), thresholds_st, max_size=3),
    hold_days=st.integers(0, 3650),
)


@given(
    plan_terms_st,
    amount_st,
    q_st,
    st.sampled_from(TIERS),
    st.one_of(st.none(), st.text(min_size=1, max_size=8)),
    st.booleans(),
    st.sampled_from(["USD", "VND", "EUR", "ABC"]),
)
def test_commission_is_the_rounded_sum_of_exact_parts(
    terms: PlanTerms,
    amount: int,
    q: int,
    tier: str,
    category: str | None,
    bonus: bool,
    currency: str,
) -> None:
    line = accrue(
        amount,
        currency=currency,
        tier=tier,
        category=category,
        q_before=q,
        bonus=bonus,
        terms=terms,
    )
    assert sum(p.amount_minor for p in line.parts) == amount
    exact = sum(
        (Fraction(p.amount_minor * (p.base_bps + p.bonus_bps + p.extra_bps), 10_000) for p in line.parts),
        Fraction(0),
    )
    assert line.exact_commission == exact
    assert line.commission_minor == round_half_even(exact)
    assert line.commission_minor >= 0
    assert all(p.base_bps == line.base_bps and p.bonus_bps == line.bonus_bps for p in line.parts)
    assert line.bonus_bps == (terms.registration_bonus_bps if bonus else 0)
    assert json.loads(json.dumps(line.to_dict())) == line.to_dict()


@given(st.integers(0, 10**11), st.integers(0, 10**11), q_st, st.sampled_from(["USD", "VND"]))
def test_exact_commission_is_additive_over_consecutive_lines(first: int, second: int, q: int, currency: str) -> None:
    # Marginal accelerators: splitting a line in two at Q + first changes nothing exactly.
    whole = accrue(first + second, q_before=q, currency=currency)
    a = accrue(first, q_before=q, currency=currency)
    b = accrue(second, q_before=a.q_after, currency=currency)
    assert whole.exact_commission == a.exact_commission + b.exact_commission


@st.composite
def refund_sequences(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    """(S, C, cumulative refunds ending at S, non-decreasing, may repeat)."""
    total = draw(st.integers(1, 10**12))
    commission = draw(st.integers(0, 10**11))
    cuts = draw(st.lists(st.integers(0, total), max_size=10))
    return total, commission, [*sorted(cuts), total]


@given(refund_sequences())
def test_clawbacks_sum_to_minus_c_and_never_exceed_it(
    sale: tuple[int, int, list[int]],
) -> None:
    total, commission, cumulative = sale
    before, running = 0, 0
    for after in cumulative:
        step = claw(total, commission, before, after)
        assert -commission <= step <= 0
        running += step
        assert -commission <= running <= 0
        before = after
    assert running == -commission


@given(
    st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 10**8)), min_size=1, max_size=6),
    st.data(),
)
def test_clawback_by_line_full_refund_nets_each_line_to_zero(lines: list[tuple[int, int]], data: st.DataObject) -> None:
    amounts = [a for a, _ in lines]
    commissions = [c for _, c in lines]
    total = sum(amounts)
    cuts = data.draw(st.lists(st.integers(0, total), max_size=8))
    cumulative = [*sorted(cuts), total]
    net = [0] * len(lines)
    before = 0
    for after in cumulative:
        steps = clawback_by_line(commissions, amounts, before, after)
        assert all(-c <= s <= 0 for s, c in zip(steps, commissions, strict=True))
        net = [n + s for n, s in zip(net, steps, strict=True)]
        # cumulatively, per line and sale level differ by at most (n + 1) / 2 units
        sale_level = claw(total, sum(commissions), 0, after)
        assert abs(sum(net) - sale_level) <= (len(lines) + 1) // 2
        assert all(-c <= n <= 0 for n, c in zip(net, commissions, strict=True))
        before = after
    if total > 0:
        assert [c + n for c, n in zip(commissions, net, strict=True)] == [0] * len(lines)
    else:
        assert net == [0] * len(lines)


@given(plan_terms_st)
def test_plan_terms_round_trip(terms: PlanTerms) -> None:
    terms.validate()
    data = terms.to_dict()
    via_json = json.loads(json.dumps(data))
    assert via_json == data
    again = PlanTerms.from_dict(via_json)
    assert again == terms
    assert again.to_dict() == data
