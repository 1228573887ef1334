"""Pure commission arithmetic: accruals, accelerators, clawbacks, periods.

Everything here is deterministic and side-effect free (standard library only,
no I/O, no clock, no floats). The projections resolve the inputs from the
event history -- tier in force, plan version in force, the partner's quarterly
net revenue ``Q`` before the line, whether the registration bonus applies --
and call these functions; the same inputs always give the same lines, to the
minor unit, with the same explanation (spec: ``commissions.md``).

Conventions
-----------
* Money is an ``int`` in minor units of one currency (VND: 1 VND = 1 unit).
  Rates are ``int`` basis points (1000 bps = 10 %).
* Exact values are :class:`fractions.Fraction`; a line's commission is the
  exact sum over its parts, rounded **once**, half to even
  (:func:`round_half_even`).
* ``float`` (and ``bool`` where an amount is expected) is refused with
  ``TypeError``: a float in a money path is a bug, not data.
* Malformed data (negative amounts, unknown tiers, bad plan terms...) is refused
  with ``ValueError`` and a message naming the field.

Decisions where the spec is silent (kept here so the projections agree)
-----------------------------------------------------------------------
* **Accelerator intervals.** Cumulative revenue of a line is the half-open
  interval ``(Q, Q + A]``. Revenue exactly equal to a threshold ``t`` is *not*
  above it, so a line ending exactly at ``t`` earns no extra, and a line
  starting at ``Q = t`` earns the extra on all of its amount. ``Q`` may be
  negative (refunds in the quarter); the part below zero earns the base rate.
  The split does not depend on the order of the accelerator list (the extra of a
  part is the sum of the extras of every threshold at or below its start).
* **Terminated partner.** The line records the inputs (amount, currency, tier
  as given, category, ``Q`` before, whether a registration was referenced) with
  ``base_bps = bonus_bps = 0``, **no parts**, exact commission 0, commission 0
  and ``reason = "partner_terminated"``. No rate is looked up, so the tier is not
  validated against the plan (the caller may pass the last tier, or
  ``"terminated"``). The line still counts in ``Q`` for the partner's later
  lines: ``Q`` is revenue, not commission (the caller's concern).
* **Zero-amount line.** Allowed; no parts, commission 0, ``reason`` ``None``.
* **Category rate.** ``category_rates_bps[category][tier]`` replaces the tier
  rate only when that exact entry exists; a category without an entry for the
  tier falls back to the tier rate.
* **Currency codes** must be three upper-case letters (``"VND"``), so that a
  ``"vnd"`` typo cannot silently lose its accelerators.
* **Plan terms.** ``tier_rates_bps`` must give a rate for all four tiers.
  Accelerator thresholds must be ``>= 0`` and strictly ascending. Rates have no
  upper bound. :meth:`PlanTerms.from_dict` takes the spec's default for a
  missing top-level key (``category_rates_bps`` defaults to ``{}``), replaces
  the whole value of a present key (no deep merge), refuses unknown keys, and
  validates.
* **Clawbacks, sale level vs per line.** :func:`clawback_minor` is the spec's
  sale-level formula. :func:`clawback_by_line` applies the same cumulative
  formula to each line's commission ``C_i`` (against the sale total ``S``).
  Because each line is rounded separately, after a *partial* refund the sum of
  the per-line clawbacks can differ from the sale-level figure (cumulatively by
  at most ``(n + 1) // 2`` minor units for ``n`` lines, in either direction;
  e.g. two lines of 1 unit with 1 unit of commission each, half refunded:
  per line ``[0, 0]``, sale level ``-1``). Each line never claws back more
  than ``C_i``, and a full refund nets every line -- hence the sale,
  ``C = sum(C_i)`` -- to exactly zero. **The ledger should book the
  per-line figures** (clawback lines link to the original lines); the sale
  level figure is then informative only.
* **Sale commission ``C``** must be ``>= 0`` (it is a sum of non-negative line
  commissions); a negative ``C`` is refused.
* **Periods.** Quarters ``"2026-Q1"`` and months ``"2026-03"`` are in UTC;
  bounds are half-open ``[start, end)``. Naive datetimes are refused;
  ``9999-Q4``/``9999-12`` (end outside ``datetime``'s range) raise ``ValueError``.
* **Hold.** :func:`hold_ends_at` gives the instant ``occurred_at + hold_days``;
  whether a line becomes payable *at* that instant or strictly after it is the
  status projection's choice (recommended: payable when ``now >= hold_ends_at``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from itertools import pairwise
from types import MappingProxyType
from typing import Any, TypeGuard, cast

__all__ = [
    "BPS_DENOMINATOR",
    "DEFAULT_PLAN_TERMS",
    "MAX_HOLD_DAYS",
    "REASON_PARTNER_TERMINATED",
    "TIERS",
    "Accelerator",
    "LineAccrual",
    "PlanTerms",
    "RatePart",
    "accrue_line",
    "clawback_by_line",
    "clawback_minor",
    "fraction_from_str",
    "fraction_to_str",
    "hold_ends_at",
    "month_bounds",
    "month_of",
    "quarter_bounds",
    "quarter_of",
    "round_half_even",
    "split_by_accelerators",
]

BPS_DENOMINATOR = 10_000
"""1 bp = 1/10 000."""

TIERS: tuple[str, ...] = ("registered", "silver", "gold", "platinum")
"""Partner tiers that earn commission, lowest first."""

REASON_PARTNER_TERMINATED = "partner_terminated"
MAX_HOLD_DAYS = 3650

_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_QUARTER_RE = re.compile(r"(\d{4})-Q([1-4])")
_MONTH_RE = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
_FRACTION_RE = re.compile(r"(-?\d+)/(\d+)")


# --------------------------------------------------------------------------
# Small checks and exact-number helpers
# --------------------------------------------------------------------------


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_int(name: str, value: object) -> int:
    """An ``int`` (not a ``bool``, never a ``float``) or ``TypeError``."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int (minor units / bps), got {type(value).__name__}: {value!r}")
    return value


def _require_non_negative(name: str, value: object) -> int:
    number = _require_int(name, value)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {number}")
    return number


def _require_currency(currency: object) -> str:
    if not isinstance(currency, str) or _CURRENCY_RE.fullmatch(currency) is None:
        raise ValueError(f"currency must be an ISO 4217 code of three upper-case letters, got {currency!r}")
    return currency


def _div_half_even(numerator: int, denominator: int) -> int:
    """``round_half_even(Fraction(numerator, denominator))`` on integers (``denominator > 0``).

    The rounding does not depend on the representation of the rational: with
    ``n = g*n'`` and ``d = g*d'``, ``n // d == n' // d'`` and ``2*(n % d) < d`` iff
    ``2*(n' % d') < d'``, so no reduction to lowest terms is needed.
    """
    floor, remainder = divmod(numerator, denominator)  # 0 <= remainder < denominator
    twice = 2 * remainder
    if twice < denominator:
        return floor
    if twice > denominator:
        return floor + 1
    return floor if floor % 2 == 0 else floor + 1


def round_half_even(x: Fraction | int) -> int:
    """Round an exact rational to the nearest integer, ties to the even one.

    ``0.5 -> 0``, ``1.5 -> 2``, ``2.5 -> 2``, ``-0.5 -> 0``, ``-1.5 -> -2``.
    Floats are refused (``TypeError``).
    """
    if isinstance(x, bool) or not isinstance(x, int | Fraction):
        raise TypeError(f"round_half_even takes a Fraction or an int, got {type(x).__name__}: {x!r}")
    return _div_half_even(x.numerator, x.denominator)  # an int is n/1; a Fraction's denominator is > 0


def fraction_to_str(value: Fraction) -> str:
    """``Fraction(7, 2) -> "7/2"``; always ``"n/d"`` (``"5/1"`` for 5), lowest terms."""
    return f"{value.numerator}/{value.denominator}"


def fraction_from_str(text: str) -> Fraction:
    """Inverse of :func:`fraction_to_str` (``"n/d"`` with ``d > 0``)."""
    match = _FRACTION_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None or int(match.group(2)) == 0:
        raise ValueError(f"expected an exact fraction 'n/d' with d > 0, got {text!r}")
    return Fraction(int(match.group(1)), int(match.group(2)))


# --------------------------------------------------------------------------
# Plan terms
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Accelerator:
    """Quarterly revenue above ``above_minor`` earns ``extra_bps`` more (marginal)."""

    above_minor: int
    extra_bps: int

    def to_dict(self) -> dict[str, int]:
        return {"above_minor": self.above_minor, "extra_bps": self.extra_bps}

    @classmethod
    def from_dict(cls, data: object, *, where: str = "accelerator") -> Accelerator:
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object {{above_minor, extra_bps}}, got {data!r}")
        keys = set(data)
        if keys != {"above_minor", "extra_bps"}:
            raise ValueError(
                f"{where}: expected exactly the keys above_minor and extra_bps, got {sorted(map(str, keys))}"
            )
        above, extra = data["above_minor"], data["extra_bps"]
        if not _is_int(above) or not _is_int(extra):
            raise ValueError(f"{where}: above_minor and extra_bps must be integers, got {above!r} and {extra!r}")
        return cls(above_minor=above, extra_bps=extra)


def _freeze_rates(value: object) -> object:
    if isinstance(value, Mapping):
        return MappingProxyType(dict(value))
    return value


def _freeze_categories(value: object) -> object:
    if isinstance(value, Mapping):
        return MappingProxyType({key: _freeze_rates(rates) for key, rates in value.items()})
    return value


def _freeze_accelerators(value: object) -> object:
    if isinstance(value, Mapping):
        return MappingProxyType(
            {
                key: tuple(accs) if isinstance(accs, Iterable) and not isinstance(accs, str | bytes) else accs
                for key, accs in value.items()
            }
        )
    return value


@dataclass(frozen=True)
class PlanTerms:
    """The money terms of one plan version (what the arithmetic needs).

    Mappings are copied and made read-only on construction, so a ``PlanTerms``
    cannot change after it was used to rate a line. Construction does not
    validate: call :meth:`validate` (``from_dict`` does).
    """

    tier_rates_bps: Mapping[str, int]
    category_rates_bps: Mapping[str, Mapping[str, int]]
    registration_bonus_bps: int
    accelerators: Mapping[str, tuple[Accelerator, ...]]
    hold_days: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "tier_rates_bps", _freeze_rates(self.tier_rates_bps))
        object.__setattr__(self, "category_rates_bps", _freeze_categories(self.category_rates_bps))
        object.__setattr__(self, "accelerators", _freeze_accelerators(self.accelerators))

    # -- validation ---------------------------------------------------------

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first problem found; ``None`` if valid."""
        tiers = ", ".join(TIERS)
        _validate_tier_rates("tier_rates_bps", self.tier_rates_bps)
        missing = [tier for tier in TIERS if tier not in self.tier_rates_bps]
        if missing:
            raise ValueError(f"tier_rates_bps: missing rate for tier(s) {', '.join(missing)} (tiers are {tiers})")

        if not isinstance(self.category_rates_bps, Mapping):
            raise ValueError(
                f"category_rates_bps: expected a mapping {{category: {{tier: bps}}}}, got {self.category_rates_bps!r}"
            )
        for category, rates in self.category_rates_bps.items():
            if not isinstance(category, str) or not category:
                raise ValueError(f"category_rates_bps: category names must be non-empty strings, got {category!r}")
            _validate_tier_rates(f"category_rates_bps[{category!r}]", rates)

        bonus = self.registration_bonus_bps
        if not _is_int(bonus) or bonus < 0:
            raise ValueError(f"registration_bonus_bps: must be an integer >= 0, got {bonus!r}")

        if not isinstance(self.accelerators, Mapping):
            raise ValueError(
                f"accelerators: expected a mapping {{currency: [accelerator, ...]}}, got {self.accelerators!r}"
            )
        for currency, accs in self.accelerators.items():
            if not isinstance(currency, str) or _CURRENCY_RE.fullmatch(currency) is None:
                raise ValueError(
                    f"accelerators: currency must be three upper-case letters (ISO 4217), got {currency!r}"
                )
            if not isinstance(accs, tuple):
                raise ValueError(f"accelerators[{currency}]: expected a list of accelerators, got {accs!r}")
            previous: int | None = None
            for index, acc in enumerate(accs):
                where = f"accelerators[{currency}][{index}]"
                if not isinstance(acc, Accelerator):
                    raise ValueError(f"{where}: expected an Accelerator, got {acc!r}")
                if not _is_int(acc.above_minor) or acc.above_minor < 0:
                    raise ValueError(f"{where}: above_minor must be an integer >= 0, got {acc.above_minor!r}")
                if not _is_int(acc.extra_bps) or acc.extra_bps < 0:
                    raise ValueError(
                        f"{where}: extra_bps must be an integer >= 0 (no negative rates), got {acc.extra_bps!r}"
                    )
                if previous is not None and acc.above_minor == previous:
                    raise ValueError(f"{where}: duplicate threshold above_minor={acc.above_minor}")
                if previous is not None and acc.above_minor < previous:
                    raise ValueError(
                        f"{where}: accelerators must be sorted by above_minor, {acc.above_minor} comes after {previous}"
                    )
                previous = acc.above_minor

        hold = self.hold_days
        if not _is_int(hold):
            raise ValueError(f"hold_days: must be an integer, got {hold!r}")
        if hold < 0:
            raise ValueError(f"hold_days: must be >= 0, got {hold}")
        if hold > MAX_HOLD_DAYS:
            raise ValueError(f"hold_days: must be <= {MAX_HOLD_DAYS}, got {hold}")

    # -- (de)serialisation --------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, keys sorted (deterministic); ``from_dict`` inverts it."""
        return {
            "tier_rates_bps": {tier: self.tier_rates_bps[tier] for tier in sorted(self.tier_rates_bps)},
            "category_rates_bps": {
                category: {tier: rates[tier] for tier in sorted(rates)}
                for category, rates in sorted(self.category_rates_bps.items())
            },
            "registration_bonus_bps": self.registration_bonus_bps,
            "accelerators": {
                currency: [acc.to_dict() for acc in accs] for currency, accs in sorted(self.accelerators.items())
            },
            "hold_days": self.hold_days,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PlanTerms:
        """Parse and validate; a missing top-level key takes the spec's default."""
        if not isinstance(data, Mapping):
            raise ValueError(f"plan terms: expected an object, got {data!r}")
        known = {
            "tier_rates_bps",
            "category_rates_bps",
            "registration_bonus_bps",
            "accelerators",
            "hold_days",
        }
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(f"plan terms: unknown key(s) {', '.join(unknown)}")
        defaults = DEFAULT_PLAN_TERMS

        tier_rates: object = data.get("tier_rates_bps", defaults.tier_rates_bps)
        if not isinstance(tier_rates, Mapping):
            raise ValueError(f"tier_rates_bps: expected an object {{tier: bps}}, got {tier_rates!r}")

        categories: object = data.get("category_rates_bps", {})
        if not isinstance(categories, Mapping):
            raise ValueError(f"category_rates_bps: expected an object {{category: {{tier: bps}}}}, got {categories!r}")
        for category, rates in categories.items():
            if not isinstance(rates, Mapping):
                raise ValueError(f"category_rates_bps[{category!r}]: expected an object {{tier: bps}}, got {rates!r}")

        raw_accs: object = data.get("accelerators", defaults.accelerators)
        if not isinstance(raw_accs, Mapping):
            raise ValueError(f"accelerators: expected an object {{currency: [...]}}, got {raw_accs!r}")
        accelerators: dict[object, tuple[Accelerator, ...]] = {}
        for currency, accs in raw_accs.items():
            if isinstance(accs, str | bytes) or not isinstance(accs, Sequence):
                raise ValueError(f"accelerators[{currency}]: expected a list, got {accs!r}")
            accelerators[currency] = tuple(
                acc
                if isinstance(acc, Accelerator)
                else Accelerator.from_dict(acc, where=f"accelerators[{currency}][{index}]")
                for index, acc in enumerate(accs)
            )

        # The casts are checked by validate() just below (ValueError on bad data).
        terms = cls(
            tier_rates_bps=cast("Mapping[str, int]", tier_rates),
            category_rates_bps=cast("Mapping[str, Mapping[str, int]]", categories),
            registration_bonus_bps=cast(int, data.get("registration_bonus_bps", defaults.registration_bonus_bps)),
            accelerators=cast("Mapping[str, tuple[Accelerator, ...]]", accelerators),
            hold_days=cast(int, data.get("hold_days", defaults.hold_days)),
        )
        terms.validate()
        return terms


def _validate_tier_rates(where: str, rates: object) -> None:
    if not isinstance(rates, Mapping):
        raise ValueError(f"{where}: expected a mapping {{tier: bps}}, got {rates!r}")
    for tier, bps in rates.items():
        if tier not in TIERS:
            raise ValueError(f"{where}: unknown tier {tier!r} (tiers are {', '.join(TIERS)})")
        if not _is_int(bps):
            raise ValueError(f"{where}[{tier}]: rate must be an integer number of bps, got {bps!r}")
        if bps < 0:
            raise ValueError(f"{where}[{tier}]: negative rate {bps} bps")


DEFAULT_PLAN_TERMS = PlanTerms(
    tier_rates_bps={"registered": 500, "silver": 800, "gold": 1000, "platinum": 1200},
    category_rates_bps={},
    registration_bonus_bps=200,
    accelerators={
        "VND": (Accelerator(1_000_000_000, 200), Accelerator(5_000_000_000, 300)),
        "USD": (Accelerator(10_000_000, 200), Accelerator(50_000_000, 300)),
    },
    hold_days=30,
)
"""The spec's defaults."""


# --------------------------------------------------------------------------
# Accrual
# --------------------------------------------------------------------------


def split_by_accelerators(
    amount_minor: int, q_before: int, accelerators: Sequence[Accelerator]
) -> list[tuple[int, int, int, int]]:
    """Marginal split of a line's cumulative-revenue interval ``(Q, Q + A]``.

    The interval is cut at every threshold ``t`` strictly inside it. The part
    ``(s, e]`` earns the sum of the ``extra_bps`` of every threshold ``t <= s``
    (it lies in ``(t, inf)``): cumulative, and revenue equal to ``t`` is not
    above ``t``. Returns ``(start, end, amount, extra_bps)`` in ascending order,
    without empty parts (so ``[]`` for ``A = 0``). ``Q`` may be negative.
    """
    amount = _require_non_negative("amount_minor", amount_minor)
    start = _require_int("q_before", q_before)
    end = start + amount
    for acc in accelerators:
        _require_int("above_minor", acc.above_minor)
        _require_int("extra_bps", acc.extra_bps)
    if amount == 0:
        return []
    cuts = sorted({acc.above_minor for acc in accelerators if start < acc.above_minor < end})
    bounds = [start, *cuts, end]
    parts: list[tuple[int, int, int, int]] = []
    for low, high in pairwise(bounds):
        extra = sum(acc.extra_bps for acc in accelerators if acc.above_minor <= low)
        parts.append((low, high, high - low, extra))
    return parts


@dataclass(frozen=True)
class RatePart:
    """One marginal part of a line: revenue ``(start_minor, end_minor]`` at one rate."""

    start_minor: int
    end_minor: int
    amount_minor: int
    base_bps: int
    bonus_bps: int
    extra_bps: int
    rate_bps: int
    exact_commission: Fraction

    def __post_init__(self) -> None:
        if self.end_minor - self.start_minor != self.amount_minor or self.amount_minor < 0:
            raise ValueError(
                f"RatePart: amount {self.amount_minor} does not match ({self.start_minor}, {self.end_minor}]"
            )
        if self.rate_bps != self.base_bps + self.bonus_bps + self.extra_bps:
            raise ValueError("RatePart: rate_bps must equal base_bps + bonus_bps + extra_bps")
        exact = self.exact_commission
        if type(exact) is Fraction:
            # a/b == c/10000 iff a*10000 == c*b (b > 0): no Fraction arithmetic
            equal = exact.numerator * BPS_DENOMINATOR == self.amount_minor * self.rate_bps * exact.denominator
        else:
            equal = exact == Fraction(self.amount_minor * self.rate_bps, BPS_DENOMINATOR)
        if not equal:
            raise ValueError("RatePart: exact_commission must equal amount_minor * rate_bps / 10000")

    @classmethod
    def of(
        cls,
        *,
        start_minor: int,
        end_minor: int,
        base_bps: int,
        bonus_bps: int,
        extra_bps: int,
    ) -> RatePart:
        amount = end_minor - start_minor
        rate = base_bps + bonus_bps + extra_bps
        return cls(
            start_minor=start_minor,
            end_minor=end_minor,
            amount_minor=amount,
            base_bps=base_bps,
            bonus_bps=bonus_bps,
            extra_bps=extra_bps,
            rate_bps=rate,
            exact_commission=Fraction(amount * rate, BPS_DENOMINATOR),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_minor": self.start_minor,
            "end_minor": self.end_minor,
            "amount_minor": self.amount_minor,
            "base_bps": self.base_bps,
            "bonus_bps": self.bonus_bps,
            "extra_bps": self.extra_bps,
            "rate_bps": self.rate_bps,
            "exact_commission": fraction_to_str(self.exact_commission),
        }


@dataclass(frozen=True)
class LineAccrual:
    """The accrual of one sale line and its explanation.

    ``q_before`` is the partner's net revenue in the currency for the quarter
    before this line; ``q_after`` (``q_before + amount_minor``) is the ``Q``
    before the next line of the same sale.
    """

    amount_minor: int
    currency: str
    tier: str
    category: str | None
    base_bps: int
    bonus_bps: int
    parts: tuple[RatePart, ...]
    exact_commission: Fraction
    commission_minor: int
    reason: str | None
    q_before: int
    registration_bonus: bool = False
    accelerators: tuple[Accelerator, ...] = field(default=())

    def __post_init__(self) -> None:
        exact = self.exact_commission
        if type(exact) is Fraction and all(type(part) is RatePart for part in self.parts):
            # Each part was checked: its exact commission is amount_minor * rate_bps / 10000, so the sum of
            # the parts is (sum of amount_minor * rate_bps) / 10000, compared by cross-multiplication.
            numerator = sum(part.amount_minor * part.rate_bps for part in self.parts)
            if exact.numerator * BPS_DENOMINATOR != numerator * exact.denominator:
                raise ValueError("LineAccrual: exact_commission must be the sum of the parts' exact commissions")
            if self.commission_minor != _div_half_even(exact.numerator, exact.denominator):
                raise ValueError("LineAccrual: commission_minor must be round_half_even(exact_commission)")
            return
        if exact != sum((part.exact_commission for part in self.parts), Fraction(0)):
            raise ValueError("LineAccrual: exact_commission must be the sum of the parts' exact commissions")
        if self.commission_minor != round_half_even(exact):
            raise ValueError("LineAccrual: commission_minor must be round_half_even(exact_commission)")

    @property
    def q_after(self) -> int:
        return self.q_before + self.amount_minor

    def formula(self) -> str:
        """The arithmetic in one line.

        E.g. ``round_half_even((15*1000 + 15*1200) / 10000)
        = round_half_even(33/10) = 3``.
        """
        if self.reason is not None:
            return f"0 ({self.reason})"
        terms = " + ".join(f"{part.amount_minor}*{part.rate_bps}" for part in self.parts) or "0"
        return (
            f"round_half_even(({terms}) / {BPS_DENOMINATOR}) = "
            f"round_half_even({fraction_to_str(self.exact_commission)}) = "
            f"{self.commission_minor}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The explanation: inputs, parts, arithmetic (JSON-friendly, ``"n/d"``)."""
        return {
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "tier": self.tier,
            "category": self.category,
            "q_before": self.q_before,
            "q_after": self.q_after,
            "registration_bonus": self.registration_bonus,
            "base_bps": self.base_bps,
            "bonus_bps": self.bonus_bps,
            "accelerators": [acc.to_dict() for acc in self.accelerators],
            "parts": [part.to_dict() for part in self.parts],
            "exact_commission": fraction_to_str(self.exact_commission),
            "rounding": "half_even",
            "commission_minor": self.commission_minor,
            "reason": self.reason,
            "formula": self.formula(),
        }


def accrue_line(
    *,
    amount_minor: int,
    currency: str,
    tier: str,
    category: str | None,
    terms: PlanTerms,
    q_before: int,
    registration_bonus: bool,
    partner_terminated: bool = False,
) -> LineAccrual:
    """Commission of one sale line (spec "Accrual for a sale", steps 1-5).

    ``base`` = category rate for the tier if defined, else the tier rate;
    ``bonus`` = ``registration_bonus_bps`` if ``registration_bonus``; parts from
    the currency's accelerators (none if the currency has no list);
    ``commission = round_half_even(sum(part * (base + bonus + extra)) / 10000)``,
    rounded once per line. A terminated partner's line earns 0 with reason
    ``partner_terminated`` and no parts.
    """
    amount = _require_int("amount_minor", amount_minor)
    if amount < 0:
        raise ValueError(f"amount_minor of a sale line must be >= 0, got {amount} (refunds are clawbacks)")
    q = _require_int("q_before", q_before)
    _require_currency(currency)
    if not isinstance(tier, str) or not tier:
        raise ValueError(f"tier must be a non-empty string, got {tier!r}")
    if category is not None and not isinstance(category, str):
        raise ValueError(f"category must be a string or None, got {category!r}")

    if partner_terminated:
        return LineAccrual(
            amount_minor=amount,
            currency=currency,
            tier=tier,
            category=category,
            base_bps=0,
            bonus_bps=0,
            parts=(),
            exact_commission=Fraction(0),
            commission_minor=0,
            reason=REASON_PARTNER_TERMINATED,
            q_before=q,
            registration_bonus=bool(registration_bonus),
        )

    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r} (tiers are {', '.join(TIERS)})")
    if tier not in terms.tier_rates_bps:
        raise ValueError(f"plan terms have no rate for tier {tier!r}")
    base = terms.tier_rates_bps[tier]
    if category is not None:
        category_rates = terms.category_rates_bps.get(category)
        if category_rates is not None and tier in category_rates:
            base = category_rates[tier]
    bonus = terms.registration_bonus_bps if registration_bonus else 0
    for name, bps in (("base rate", base), ("registration bonus", bonus)):
        if not _is_int(bps) or bps < 0:
            raise ValueError(f"plan terms: {name} must be an integer >= 0 bps, got {bps!r}")

    accelerators = tuple(terms.accelerators.get(currency, ()))
    for acc in accelerators:
        if not _is_int(acc.extra_bps) or acc.extra_bps < 0:
            raise ValueError(f"plan terms: accelerator extra_bps must be an integer >= 0, got {acc.extra_bps!r}")
    parts = tuple(
        RatePart.of(
            start_minor=start,
            end_minor=end,
            base_bps=base,
            bonus_bps=bonus,
            extra_bps=extra,
        )
        for start, end, _, extra in split_by_accelerators(amount, q, accelerators)
    )
    # The exact commission is an integer over 10 000: sum the numerators, round once with divmod.
    numerator = sum(part.amount_minor * part.rate_bps for part in parts)
    exact = Fraction(numerator, BPS_DENOMINATOR)
    return LineAccrual(
        amount_minor=amount,
        currency=currency,
        tier=tier,
        category=category,
        base_bps=base,
        bonus_bps=bonus,
        parts=parts,
        exact_commission=exact,
        commission_minor=_div_half_even(numerator, BPS_DENOMINATOR),
        reason=None,
        q_before=q,
        registration_bonus=bool(registration_bonus),
        accelerators=accelerators,
    )


# --------------------------------------------------------------------------
# Clawbacks
# --------------------------------------------------------------------------


def _cumulative_clawback(commission: int, total: int, before: int, after: int) -> int:
    if total == 0:
        return 0
    return -(
        round_half_even(Fraction(after * commission, total)) - round_half_even(Fraction(before * commission, total))
    )


def _check_refunds(total: int, before: object, after: object) -> tuple[int, int]:
    r_before = _require_int("refunded_before", before)
    r_after = _require_int("refunded_after", after)
    if not 0 <= r_before <= r_after <= total:
        raise ValueError(
            "refunds must satisfy 0 <= refunded_before <= refunded_after <= sale "
            "total, "
            f"got {r_before}, {r_after}, {total}"
        )
    return r_before, r_after


def clawback_minor(
    *,
    sale_total_minor: int,
    sale_commission_minor: int,
    refunded_before_minor: int,
    refunded_after_minor: int,
) -> int:
    """Sale-level clawback of one refund (<= 0), on cumulative refunds.

    ``-(rhe(R_after * C / S) - rhe(R_before * C / S))``; ``S == 0`` gives 0.
    Summed over refunds reaching ``S`` it is exactly ``-C``, and the running
    total never goes below ``-C``.
    """
    total = _require_non_negative("sale_total_minor", sale_total_minor)
    commission = _require_non_negative("sale_commission_minor", sale_commission_minor)
    before, after = _check_refunds(total, refunded_before_minor, refunded_after_minor)
    return _cumulative_clawback(commission, total, before, after)


def clawback_by_line(
    line_commissions: Sequence[int],
    line_amounts: Sequence[int],
    refunded_before: int,
    refunded_after: int,
) -> list[int]:
    """Per-line clawbacks of one refund (each <= 0), in the order of the lines.

    For line ``i``: ``-(rhe(R_after * C_i / S) - rhe(R_before * C_i / S))`` with
    ``S = sum(line_amounts)`` (the refund is spread over the lines in
    proportion to their amounts, and each line claws back its own commission
    rate on its share). A full refund nets every line to exactly zero. The sum
    may differ from :func:`clawback_minor` for a partial refund (rounding per
    line); the ledger books these per-line figures.
    """
    if len(line_commissions) != len(line_amounts):
        raise ValueError(
            "line_commissions and line_amounts must have the same length, got "
            f"{len(line_commissions)} and {len(line_amounts)}"
        )
    commissions = [_require_non_negative(f"line_commissions[{i}]", c) for i, c in enumerate(line_commissions)]
    amounts = [_require_non_negative(f"line_amounts[{i}]", a) for i, a in enumerate(line_amounts)]
    total = sum(amounts)
    before, after = _check_refunds(total, refunded_before, refunded_after)
    return [_cumulative_clawback(commission, total, before, after) for commission in commissions]


# --------------------------------------------------------------------------
# Periods (UTC)
# --------------------------------------------------------------------------


def _utc(dt: datetime) -> datetime:
    if not isinstance(dt, datetime):
        raise TypeError(f"expected a datetime, got {type(dt).__name__}: {dt!r}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()} refused: times must carry a timezone")
    try:
        return dt.astimezone(UTC)
    except OverflowError as error:
        raise ValueError(f"datetime {dt.isoformat()} is out of range in UTC") from error


def quarter_of(dt: datetime) -> str:
    """Calendar quarter of ``dt`` in UTC, e.g. ``"2026-Q1"``."""
    at = _utc(dt)
    return f"{at.year:04d}-Q{(at.month - 1) // 3 + 1}"


def month_of(dt: datetime) -> str:
    """Calendar month of ``dt`` in UTC, e.g. ``"2026-03"``."""
    at = _utc(dt)
    return f"{at.year:04d}-{at.month:02d}"


def _month_start(year: int, month: int, label: str) -> datetime:
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    try:
        return datetime(year, month, 1, tzinfo=UTC)
    except ValueError as error:
        raise ValueError(f"period {label!r} is out of the supported range") from error


def quarter_bounds(q: str) -> tuple[datetime, datetime]:
    """UTC bounds ``[start, end)`` of a quarter label such as ``"2026-Q1"``."""
    match = _QUARTER_RE.fullmatch(q) if isinstance(q, str) else None
    if match is None:
        raise ValueError(f"expected a quarter label like '2026-Q1', got {q!r}")
    year, quarter = int(match.group(1)), int(match.group(2))
    first_month = 3 * (quarter - 1) + 1
    return _month_start(year, first_month, q), _month_start(year, first_month + 3, q)


def month_bounds(m: str) -> tuple[datetime, datetime]:
    """UTC bounds ``[start, end)`` of a month label such as ``"2026-03"``."""
    match = _MONTH_RE.fullmatch(m) if isinstance(m, str) else None
    if match is None:
        raise ValueError(f"expected a month label like '2026-03', got {m!r}")
    year, month = int(match.group(1)), int(match.group(2))
    return _month_start(year, month, m), _month_start(year, month + 1, m)


def hold_ends_at(occurred_at: datetime, hold_days: int) -> datetime:
    """The instant ``occurred_at + hold_days`` (UTC): the refund window closes."""
    days = _require_non_negative("hold_days", hold_days)
    return _utc(occurred_at) + timedelta(days=days)
