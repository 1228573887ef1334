"""The integer path of the accrual (``accrue_line``, ``round_half_even``, the validations) against Fractions.

``accrue_line`` sums the parts' numerators ``amount * rate_bps`` as integers and
rounds half to even with ``divmod``; ``RatePart`` and ``LineAccrual`` check their
invariants by cross-multiplication. The references below are the previous
implementation, all in ``Fraction`` arithmetic, kept here verbatim in substance:
every figure and every byte of the explanation must be the same.
"""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from domain.commission import (
    BPS_DENOMINATOR,
    TIERS,
    Accelerator,
    LineAccrual,
    PlanTerms,
    RatePart,
    accrue_line,
    fraction_to_str,
    round_half_even,
    split_by_accelerators,
)

# ---- the reference: the Fraction implementation ------------------------------------------


def reference_round_half_even(x: Fraction | int) -> int:
    value = Fraction(x)
    numerator, denominator = value.numerator, value.denominator
    floor, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice < denominator:
        return floor
    if twice > denominator:
        return floor + 1
    return floor if floor % 2 == 0 else floor + 1


def reference_explanation(
    *,
    amount: int,
    currency: str,
    tier: str,
    category: str | None,
    terms: PlanTerms,
    q_before: int,
    registration_bonus: bool,
) -> dict[str, Any]:
    """``LineAccrual.to_dict()`` as the Fraction implementation computed it."""
    base = terms.tier_rates_bps[tier]
    if category is not None:
        rates = terms.category_rates_bps.get(category)
        if rates is not None and tier in rates:
            base = rates[tier]
    bonus = terms.registration_bonus_bps if registration_bonus else 0
    accelerators = tuple(terms.accelerators.get(currency, ()))
    parts = []
    for start, end, _, extra in split_by_accelerators(amount, q_before, accelerators):
        part_amount = end - start
        rate = base + bonus + extra
        parts.append((start, end, part_amount, extra, rate, Fraction(part_amount * rate, BPS_DENOMINATOR)))
    exact = sum((p[5] for p in parts), Fraction(0))
    commission = reference_round_half_even(exact)
    terms_text = " + ".join(f"{p[2]}*{p[4]}" for p in parts) or "0"
    return {
        "amount_minor": amount,
        "currency": currency,
        "tier": tier,
        "category": category,
        "q_before": q_before,
        "q_after": q_before + amount,
        "registration_bonus": bool(registration_bonus),
        "base_bps": base,
        "bonus_bps": bonus,
        "accelerators": [acc.to_dict() for acc in accelerators],
        "parts": [
            {
                "start_minor": p[0],
                "end_minor": p[1],
                "amount_minor": p[2],
                "base_bps": base,
                "bonus_bps": bonus,
                "extra_bps": p[3],
                "rate_bps": p[4],
                "exact_commission": fraction_to_str(p[5]),
            }
            for p in parts
        ],
        "exact_commission": fraction_to_str(exact),
        "rounding": "half_even",
        "commission_minor": commission,
        "reason": None,
        "formula": (
            f"round_half_even(({terms_text}) / {BPS_DENOMINATOR}) = "
            f"round_half_even({fraction_to_str(exact)}) = {commission}"
        ),
    }


# ---- strategies -----------------------------------------------------------------------------

bps_st = st.one_of(st.integers(0, 3_000), st.sampled_from([0, 1, 5, 25, 50, 125, 2_500, 5_000, 10_000]))
# amounts that make ties likely: multiples of 2, 4, 8, 16... with odd rates give .5 exactly
amount_st = st.one_of(
    st.integers(0, 10**6),
    st.integers(0, 10**12),
    st.integers(0, 10**4).map(lambda n: n * 16),
    st.sampled_from([0, 1, 2, 4, 5, 8, 20, 40, 50, 80, 200, 2_000, 10**9]),
)
q_st = st.one_of(st.integers(-(10**7), 10**7), st.sampled_from([0, 10_000, 20_000, 9_999, 19_999, -1]))


@st.composite
def plan_terms(draw: st.DrawFn) -> PlanTerms:
    tier_rates = {tier: draw(bps_st) for tier in TIERS}
    categories = {}
    for category in draw(st.lists(st.sampled_from(["hardware", "software", "services"]), unique=True, max_size=2)):
        categories[category] = {tier: draw(bps_st) for tier in draw(st.lists(st.sampled_from(TIERS), unique=True))}
    accelerators: dict[str, tuple[Accelerator, ...]] = {}
    for currency in draw(st.lists(st.sampled_from(["USD", "VND"]), unique=True, max_size=2)):
        thresholds = sorted(
            draw(st.sets(st.one_of(st.integers(0, 10**7), st.sampled_from([0, 1, 10_000, 20_000, 50_000])), max_size=4))
        )
        accelerators[currency] = tuple(Accelerator(t, draw(bps_st)) for t in thresholds)
    terms = PlanTerms(
        tier_rates_bps=tier_rates,
        category_rates_bps=categories,
        registration_bonus_bps=draw(bps_st),
        accelerators=accelerators,
        hold_days=30,
    )
    terms.validate()
    return terms


# ---- properties -------------------------------------------------------------------------


@settings(max_examples=1_500, deadline=None)
@given(
    amount=amount_st,
    q_before=q_st,
    terms=plan_terms(),
    tier=st.sampled_from(TIERS),
    category=st.one_of(st.none(), st.sampled_from(["hardware", "software", "services"])),
    currency=st.sampled_from(["USD", "VND", "EUR"]),
    bonus=st.booleans(),
)
def test_accrue_line_equals_the_fraction_implementation_byte_for_byte(
    amount: int, q_before: int, terms: PlanTerms, tier: str, category: str | None, currency: str, bonus: bool
) -> None:
    accrual = accrue_line(
        amount_minor=amount,
        currency=currency,
        tier=tier,
        category=category,
        terms=terms,
        q_before=q_before,
        registration_bonus=bonus,
    )
    expected = reference_explanation(
        amount=amount,
        currency=currency,
        tier=tier,
        category=category,
        terms=terms,
        q_before=q_before,
        registration_bonus=bonus,
    )
    assert accrual.to_dict() == expected
    assert json.dumps(accrual.to_dict(), sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert accrual.exact_commission == sum((part.exact_commission for part in accrual.parts), Fraction(0))
    assert accrual.commission_minor == reference_round_half_even(accrual.exact_commission)


@settings(max_examples=1_500, deadline=None)
@given(st.one_of(st.fractions(), st.integers(-(10**30), 10**30)))
@example(Fraction(1, 2))
@example(Fraction(-1, 2))
@example(Fraction(5, 2))
@example(Fraction(-5, 2))
@example(Fraction(12_345, 10_000))
@example(Fraction(5_000, 10_000))
@example(Fraction(15_000, 10_000))
def test_round_half_even_equals_the_fraction_implementation(x: Fraction | int) -> None:
    assert round_half_even(x) == reference_round_half_even(x)


@settings(max_examples=1_500, deadline=None)
@given(
    numerator=st.integers(-(10**15), 10**15),
    tie=st.integers(-(10**9), 10**9),
)
def test_ties_over_ten_thousand(numerator: int, tie: int) -> None:
    """``n/10000`` in general and exactly ``k + 1/2`` (``n = 10000*k + 5000``)."""
    for n in (numerator, tie * BPS_DENOMINATOR + BPS_DENOMINATOR // 2):
        assert round_half_even(Fraction(n, BPS_DENOMINATOR)) == reference_round_half_even(Fraction(n, BPS_DENOMINATOR))


def test_a_tie_rounds_to_even_in_an_accrual() -> None:
    # 5 * 1000 bps = 5000 / 10000 = 1/2 -> 0; 15 * 1000 = 15000/10000 = 3/2 -> 2; 25 * 1000 -> 5/2 -> 2
    terms = PlanTerms(
        tier_rates_bps=dict.fromkeys(TIERS, 1_000),
        category_rates_bps={},
        registration_bonus_bps=0,
        accelerators={},
        hold_days=0,
    )
    figures = [
        accrue_line(
            amount_minor=amount,
            currency="USD",
            tier="gold",
            category=None,
            terms=terms,
            q_before=0,
            registration_bonus=False,
        ).commission_minor
        for amount in (5, 15, 25, 35)
    ]
    assert figures == [0, 2, 2, 4]


# ---- the validations: the same inputs are refused ------------------------------------------------


def reference_rate_part_valid(start: int, end: int, amount: int, base: int, bonus: int, extra: int,
                              rate: int, exact: Fraction) -> bool:  # fmt: skip
    if end - start != amount or amount < 0:
        return False
    if rate != base + bonus + extra:
        return False
    return exact == Fraction(amount * rate, BPS_DENOMINATOR)


@settings(max_examples=1_000, deadline=None)
@given(
    start=st.integers(-1_000, 1_000),
    amount=st.integers(0, 10**6),
    rate=st.integers(0, 5_000),
    delta=st.one_of(st.just(Fraction(0)), st.fractions(max_denominator=20_000)),
)
def test_rate_part_refuses_what_the_fraction_check_refused(start: int, amount: int, rate: int, delta: Fraction) -> None:
    exact = Fraction(amount * rate, BPS_DENOMINATOR) + delta
    valid = reference_rate_part_valid(start, start + amount, amount, rate, 0, 0, rate, exact)
    try:
        RatePart(
            start_minor=start, end_minor=start + amount, amount_minor=amount, base_bps=rate, bonus_bps=0,
            extra_bps=0, rate_bps=rate, exact_commission=exact,
        )  # fmt: skip
    except ValueError:
        assert not valid
    else:
        assert valid


@settings(max_examples=1_000, deadline=None)
@given(
    amounts=st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 5_000)), max_size=4),
    exact_delta=st.one_of(st.just(Fraction(0)), st.fractions(max_denominator=20_000)),
    commission_delta=st.sampled_from([0, 0, 0, -1, 1]),
)
def test_line_accrual_refuses_what_the_fraction_check_refused(
    amounts: list[tuple[int, int]], exact_delta: Fraction, commission_delta: int
) -> None:
    parts = []
    start = 0
    for amount, rate in amounts:
        parts.append(RatePart.of(start_minor=start, end_minor=start + amount, base_bps=rate, bonus_bps=0, extra_bps=0))
        start += amount
    exact = sum((p.exact_commission for p in parts), Fraction(0)) + exact_delta
    commission = reference_round_half_even(exact) + commission_delta
    valid = exact == sum((p.exact_commission for p in parts), Fraction(0)) and commission == reference_round_half_even(
        exact
    )
    try:
        LineAccrual(
            amount_minor=start, currency="USD", tier="gold", category=None, base_bps=0, bonus_bps=0,
            parts=tuple(parts), exact_commission=exact, commission_minor=commission, reason=None, q_before=0,
        )  # fmt: skip
    except ValueError:
        assert not valid
    else:
        assert valid


def test_an_int_exact_commission_is_still_accepted_and_checked() -> None:
    part = RatePart(
        start_minor=0, end_minor=10, amount_minor=10, base_bps=1_000, bonus_bps=0, extra_bps=0, rate_bps=1_000,
        exact_commission=1,  # type: ignore[arg-type]
    )  # fmt: skip
    assert part.exact_commission == 1
    with pytest.raises(ValueError, match="exact_commission"):
        RatePart(
            start_minor=0, end_minor=10, amount_minor=10, base_bps=1_000, bonus_bps=0, extra_bps=0, rate_bps=1_000,
            exact_commission=2,  # type: ignore[arg-type]
        )  # fmt: skip
