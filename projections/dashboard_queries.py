"""KPI queries over the dashboards documents: pure functions of the documents, a period and filters.

Every KPI of ``kpis.md`` is computed here at read time by summing per-partner
documents (see :mod:`projections.dashboards`), so the figures never depend on
the order in which different partners' events were processed. Decisions where
the spec is silent are in ``docs/kpis.md``; in short:

* A period is a UTC month ``2026-03``, quarter ``2026-Q1`` or year ``2026``,
  half-open ``[start, end)``. ``as_of`` (optional) cuts it short: facts strictly
  before ``min(end, as_of)`` count, and "at period end" means at that cutoff.
* A partner is classified (type, region, tier) **once per period, at the
  cutoff**: all its figures of the period go to that segment. Comparisons with
  the previous period (growth, rank change) keep the same partners.
* Money is per currency, in integer minor units; ratios are floats computed
  from exact integers, ``None`` when undefined.
* Commission figures come from the ledger projection (:func:`commission_summary`
  takes its balances); conflicts are the conflict projection's queries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from domain.commission import month_bounds, quarter_bounds, round_half_even
from domain.program import PARTNER_TYPES, TIERS
from projections.dashboards import DIRECT, PARTNER, PARTNER_MONTH, REGISTRATION, month_key, stamp
from projections.port import Doc, ProjectionStore

PROJECTION = "dashboards"
ACTIVE_WINDOW_DAYS = 90
REGISTRATION_STEPS = ("submitted", "approved", "rejected", "won", "lost", "expired", "withdrawn")
IN_PROGRAMME = ("approved", "onboarding", "active", "suspended")
_YEAR = re.compile(r"\d{4}")
_DAY = timedelta(days=1)
_MICROSECOND = timedelta(microseconds=1)


# ---------------------------------------------------------------- periods


@dataclass(frozen=True)
class Period:
    """A UTC calendar period ``[start, end)``: ``kind`` is month, quarter or year."""

    label: str
    kind: str
    start: datetime
    end: datetime

    @property
    def months(self) -> tuple[str, ...]:
        """Month labels covered by the period, in order."""
        labels = []
        year, month = self.start.year, self.start.month
        while datetime(year, month, 1, tzinfo=UTC) < self.end:
            labels.append(f"{year:04d}-{month:02d}")
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return tuple(labels)

    def previous(self) -> Period:
        """The period of the same kind just before this one."""
        before = self.start - timedelta(days=1)
        if self.kind == "month":
            return parse_period(f"{before.year:04d}-{before.month:02d}")
        if self.kind == "quarter":
            return parse_period(f"{before.year:04d}-Q{(before.month - 1) // 3 + 1}")
        return parse_period(f"{before.year:04d}")


def parse_period(label: str | Period) -> Period:
    """``2026-03`` (month), ``2026-Q1`` (quarter) or ``2026`` (year), in UTC."""
    if isinstance(label, Period):
        return label
    text = label.strip()
    if _YEAR.fullmatch(text):
        year = int(text)
        if year < 1 or year > 9998:
            raise ValueError(f"year {text!r} is out of range")
        return Period(text, "year", datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC))
    if "Q" in text:
        start, end = quarter_bounds(text)
        return Period(text, "quarter", start, end)
    try:
        start, end = month_bounds(text)
    except ValueError:
        raise ValueError(f"period {label!r} must be a month 2026-03, a quarter 2026-Q1 or a year 2026") from None
    return Period(text, "month", start, end)


def cutoff_of(period: Period, as_of: datetime | None = None) -> datetime:
    """The instant the period is evaluated at: its end, or ``as_of`` when earlier."""
    if as_of is None:
        return period.end
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ValueError(f"as_of {as_of.isoformat()} must carry a timezone")
    return max(period.start, min(period.end, as_of.astimezone(UTC)))


# ---------------------------------------------------------------- filters


def _values(value: str | Collection[str] | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(value)


@dataclass(frozen=True)
class Filters:
    """Partner segments to keep; an empty set keeps every value. Matched at the period's cutoff."""

    types: frozenset[str] = frozenset()
    tiers: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        *,
        type: str | Collection[str] | None = None,
        tier: str | Collection[str] | None = None,
        region: str | Collection[str] | None = None,
    ) -> Filters:
        types, tiers, regions = _values(type), _values(tier), _values(region)
        unknown = sorted(types - set(PARTNER_TYPES)) + sorted(tiers - set(TIERS))
        if unknown:
            raise ValueError(f"unknown partner type or tier in filters: {', '.join(unknown)}")
        return cls(types, tiers, frozenset(r.upper() for r in regions))

    def keeps(self, partner: PartnerAt) -> bool:
        return (
            (not self.types or partner.type in self.types)
            and (not self.tiers or partner.tier in self.tiers)
            and (not self.regions or partner.region in self.regions)
        )


NO_FILTERS = Filters()


# ---------------------------------------------------------------- documents


@dataclass
class DashboardData:
    """The dashboards documents, as loaded from a projection store."""

    partners: Mapping[str, Doc]
    partner_months: Mapping[str, Doc]
    direct: Mapping[str, Doc]
    registrations: Mapping[str, Doc]
    _by_partner: dict[str, list[Doc]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[str, list[Doc]] = {}
        for registration_id in sorted(self.registrations):
            doc = self.registrations[registration_id]
            index.setdefault(doc.get("partner_id") or "", []).append(doc)
        self._by_partner = index

    @classmethod
    def load(cls, store: ProjectionStore, projection: str = PROJECTION) -> DashboardData:
        return cls(
            partners=store.load_kind(projection, PARTNER),
            partner_months=store.load_kind(projection, PARTNER_MONTH),
            direct=store.load_kind(projection, DIRECT),
            registrations=store.load_kind(projection, REGISTRATION),
        )

    def registrations_of(self, partner_id: str) -> list[Doc]:
        return self._by_partner.get(partner_id, [])

    def month(self, partner_id: str, month: str) -> Doc | None:
        return self.partner_months.get(month_key(partner_id, month))


@dataclass(frozen=True)
class PartnerAt:
    """A partner's classification at an instant."""

    partner_id: str
    name: str | None
    type: str | None
    region: str | None
    tier: str
    status: str | None


def _last_before(timeline: list[dict[str, Any]], cutoff: str) -> dict[str, Any] | None:
    found = None
    for entry in timeline:
        if entry["at"] < cutoff:
            found = entry
    return found


def partner_at(doc: Doc, at: datetime) -> PartnerAt:
    """Segment, tier and status in force just before ``at`` (the tier by its effective time)."""
    cutoff = stamp(at)
    segments = doc.get("segments") or []
    segment = _last_before(segments, cutoff) or (segments[0] if segments else {})
    tier = _last_before(doc.get("tiers") or [], cutoff)
    status = _last_before(doc.get("statuses") or [], cutoff)
    return PartnerAt(
        partner_id=doc["partner_id"],
        name=doc.get("name"),
        type=segment.get("type"),
        region=segment.get("region"),
        tier=tier["tier"] if tier else TIERS[0],
        status=status["status"] if status else None,
    )


def select_partners(
    data: DashboardData, at: datetime, *, partner_id: str | None = None, filters: Filters | None = None
) -> list[PartnerAt]:
    """The partners a query covers, classified at ``at``, in id order."""
    keys = [partner_id] if partner_id is not None else sorted(data.partners)
    chosen = []
    for key in keys:
        doc = data.partners.get(key)
        if doc is None:
            continue
        partner = partner_at(doc, at)
        if (filters or NO_FILTERS).keeps(partner):
            chosen.append(partner)
    return chosen


# ---------------------------------------------------------------- money


@dataclass(frozen=True)
class MoneyTotals:
    """One currency's figures over a period: ``net = gross - refunds``; ``sales`` counted by occurred_at."""

    gross_minor: int = 0
    refunds_minor: int = 0
    net_minor: int = 0
    sales: int = 0

    @property
    def average_deal_minor(self) -> int | None:
        """Net revenue ÷ sales count, rounded half to even; ``None`` without sales."""
        return round_half_even(Fraction(self.net_minor, self.sales)) if self.sales else None

    def plus(self, other: MoneyTotals) -> MoneyTotals:
        return MoneyTotals(
            self.gross_minor + other.gross_minor,
            self.refunds_minor + other.refunds_minor,
            self.net_minor + other.net_minor,
            self.sales + other.sales,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "average_deal_minor": self.average_deal_minor}


def _add(into: dict[str, MoneyTotals], currency: str, amount: MoneyTotals) -> None:
    into[currency] = into.get(currency, MoneyTotals()).plus(amount)


def _month_totals(doc: Doc | None, start: str, cutoff: str, into: dict[str, MoneyTotals]) -> None:
    """Add one month document's facts in ``[start, cutoff)`` to ``into``."""
    if doc is None:
        return
    month_start, month_end = month_bounds(doc["month"])
    if start <= stamp(month_start) and stamp(month_end) <= cutoff:
        for currency, t in doc["totals"].items():
            _add(into, currency, MoneyTotals(t["gross"], t["refunds"], t["net"], t["sales"]))
        return
    for sale in doc["sales"].values():
        if start <= sale["at"] < cutoff:
            _add(into, sale["currency"], MoneyTotals(sale["amount"], 0, sale["amount"], 1))
    for refund in doc["refunds"].values():
        if start <= refund["at"] < cutoff:
            _add(into, refund["currency"], MoneyTotals(0, refund["amount"], -refund["amount"], 0))


def _partner_money(data: DashboardData, partner_id: str, period: Period, cutoff: datetime) -> dict[str, MoneyTotals]:
    totals: dict[str, MoneyTotals] = {}
    start, end = stamp(period.start), stamp(cutoff)
    for month in period.months:
        _month_totals(data.month(partner_id, month), start, end, totals)
    return totals


def _sum(parts: Iterable[dict[str, MoneyTotals]]) -> dict[str, MoneyTotals]:
    totals: dict[str, MoneyTotals] = {}
    for part in parts:
        for currency, amount in part.items():
            _add(totals, currency, amount)
    return dict(sorted(totals.items()))


def revenue(
    data: DashboardData,
    period: str | Period,
    *,
    partner_id: str | None = None,
    filters: Filters | None = None,
    as_of: datetime | None = None,
) -> dict[str, MoneyTotals]:
    """Gross, refunds, net revenue and sales count per currency of the selected partners."""
    p = parse_period(period)
    cutoff = cutoff_of(p, as_of)
    selected = select_partners(data, cutoff, partner_id=partner_id, filters=filters)
    return _sum(_partner_money(data, s.partner_id, p, cutoff) for s in selected)


def net_revenue(
    data: DashboardData,
    period: str | Period,
    *,
    partner_id: str | None = None,
    filters: Filters | None = None,
    as_of: datetime | None = None,
) -> dict[str, int]:
    """Σ sale totals - Σ refunds by ``occurred_at``, per currency, of the selected partners."""
    figures = revenue(data, period, partner_id=partner_id, filters=filters, as_of=as_of)
    return {currency: t.net_minor for currency, t in figures.items()}


def direct_revenue(
    data: DashboardData, period: str | Period, *, as_of: datetime | None = None
) -> dict[str, MoneyTotals]:
    """The same figures for direct sales (no partner); filters never apply to them."""
    p = parse_period(period)
    totals: dict[str, MoneyTotals] = {}
    start, end = stamp(p.start), stamp(cutoff_of(p, as_of))
    for month in p.months:
        _month_totals(data.direct.get(month), start, end, totals)
    return dict(sorted(totals.items()))


def channel_revenue(
    data: DashboardData, period: str | Period, *, as_of: datetime | None = None
) -> dict[str, MoneyTotals]:
    """All partners plus direct: the company's revenue per currency."""
    return _sum([revenue(data, period, as_of=as_of), direct_revenue(data, period, as_of=as_of)])


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(Fraction(numerator, denominator)) if denominator > 0 else None


@dataclass(frozen=True)
class Share:
    selected_net_minor: int
    total_net_minor: int
    share: float | None


def indirect_share(
    data: DashboardData,
    period: str | Period,
    *,
    partner_id: str | None = None,
    filters: Filters | None = None,
    as_of: datetime | None = None,
) -> dict[str, Share]:
    """Selected partners' net revenue ÷ (all partners' + direct) net revenue, per currency.

    Without a filter this is the spec's indirect share; with one, the segment's
    share of the company's revenue. ``None`` when the total is not positive.
    """
    selected = net_revenue(data, period, partner_id=partner_id, filters=filters, as_of=as_of)
    total = {c: t.net_minor for c, t in channel_revenue(data, period, as_of=as_of).items()}
    result = {}
    for currency in sorted(set(selected) | set(total)):
        part, whole = selected.get(currency, 0), total.get(currency, 0)
        result[currency] = Share(part, whole, _ratio(part, whole))
    return result


# ---------------------------------------------------------------- growth and leaderboard


@dataclass(frozen=True)
class Growth:
    current_minor: int
    previous_minor: int
    percent: float | None


def growth(
    data: DashboardData,
    period: str | Period,
    *,
    partner_id: str | None = None,
    filters: Filters | None = None,
    as_of: datetime | None = None,
) -> dict[str, Growth]:
    """Net revenue change vs the previous period, in %, per currency.

    The same partners (selected at this period's cutoff) are compared; the
    previous period is taken whole. ``percent`` is ``(cur - prev) ÷ |prev| * 100``,
    ``None`` when the previous net revenue is zero.
    """
    p = parse_period(period)
    cutoff = cutoff_of(p, as_of)
    selected = select_partners(data, cutoff, partner_id=partner_id, filters=filters)
    previous = p.previous()
    prev_cutoff = cutoff_of(previous, as_of)
    now = _sum(_partner_money(data, s.partner_id, p, cutoff) for s in selected)
    before = _sum(_partner_money(data, s.partner_id, previous, prev_cutoff) for s in selected)
    result = {}
    for currency in sorted(set(now) | set(before)):
        cur = now[currency].net_minor if currency in now else 0
        prev = before[currency].net_minor if currency in before else 0
        percent = float(Fraction(cur - prev, abs(prev)) * 100) if prev else None
        result[currency] = Growth(cur, prev, percent)
    return result


@dataclass(frozen=True)
class LeaderboardRow:
    rank: int
    partner_id: str
    name: str | None
    net_minor: int
    previous_rank: int | None
    rank_change: int | None
    """``previous_rank - rank``: positive moved up; ``None`` when not ranked in the previous period."""


def _ranks(money: Mapping[str, dict[str, MoneyTotals]], currency: str) -> list[tuple[int, str, int]]:
    """(rank, partner, net) of partners with revenue activity in ``currency``; ties share a rank (1224)."""
    rows = sorted(
        ((totals[currency].net_minor, partner_id) for partner_id, totals in money.items() if currency in totals),
        key=lambda item: (-item[0], item[1]),
    )
    ranked: list[tuple[int, str, int]] = []
    for index, (net, partner_id) in enumerate(rows):
        rank = ranked[-1][0] if ranked and ranked[-1][2] == net else index + 1
        ranked.append((rank, partner_id, net))
    return ranked


def leaderboard(
    data: DashboardData,
    period: str | Period,
    *,
    filters: Filters | None = None,
    as_of: datetime | None = None,
    top: int | None = 10,
) -> dict[str, list[LeaderboardRow]]:
    """Top partners by net revenue, per currency, with their rank change vs the previous period.

    Ranked: the selected partners with a sale or refund in that currency in the
    period. The previous ranking is over the same partners in the previous period.
    """
    p = parse_period(period)
    cutoff = cutoff_of(p, as_of)
    selected = select_partners(data, cutoff, filters=filters)
    previous = p.previous()
    prev_cutoff = cutoff_of(previous, as_of)
    names = {s.partner_id: s.name for s in selected}
    now = {s.partner_id: _partner_money(data, s.partner_id, p, cutoff) for s in selected}
    before = {s.partner_id: _partner_money(data, s.partner_id, previous, prev_cutoff) for s in selected}
    boards: dict[str, list[LeaderboardRow]] = {}
    for currency in sorted({c for totals in now.values() for c in totals}):
        previous_ranks = {partner_id: rank for rank, partner_id, _ in _ranks(before, currency)}
        rows = []
        for rank, partner_id, net in _ranks(now, currency):
            was = previous_ranks.get(partner_id)
            rows.append(LeaderboardRow(rank, partner_id, names[partner_id], net, was, was - rank if was else None))
        boards[currency] = rows[:top] if top is not None else rows
    return boards


# ---------------------------------------------------------------- registrations


def _selected_registrations(data: DashboardData, selected: Iterable[PartnerAt]) -> list[Doc]:
    return [doc for s in selected for doc in data.registrations_of(s.partner_id) if doc.get("submitted_at")]


def registration_counts(
    data: DashboardData,
    period: str | Period,
    *,
    partner_id: str | None = None,
    filters: Filters | None = None,
    as_of: datetime | None = None,
) -> dict[str, int]:
    """Registration steps taken in the period, each by its own time (submitted, approved, closed)."""
    p = parse_period(period)
    cutoff = cutoff_of(p, as_of)
    start, end = stamp(p.start), stamp(cutoff)
    counts = dict.fromkeys(REGISTRATION_STEPS, 0)
    for doc in _selected_registrations(data, select_partners(data, cutoff, partner_id=partner_id, filters=filters)):
        if start <= doc["submitted_at"] < end:
            counts["submitted"] += 1
        if doc["approved_at"] and start <= doc["approved_at"] < end:
            counts["approved"] += 1
        if doc["closed_at"] and start <= doc["closed_at"] < end:
            counts[doc["outcome"]] += 1
    return counts


@dataclass(frozen=True)
class WinRate:
    won: int
    lost: int
    rate: float | None


def win_rate(
    data: DashboardData,
    period: str | Period,
    *,
    partner_id: str | None = None,
    filters: Filters | None = None,
    as_of: datetime | None = None,
) -> WinRate:
    """won ÷ (won + lost) over registrations won or lost in the period; ``None`` when none closed so."""
    counts = registration_counts(data, period, partner_id=partner_id, filters=filters, as_of=as_of)
    won, lost = counts["won"], counts["lost"]
    return WinRate(won, lost, _ratio(won, won + lost))


@dataclass(frozen=True)
class PipelineFigure:
    registrations: int
    value_minor: int


def pipeline(
    data: DashboardData,
    period: str | Period,
    *,
    partner_id: str | None = None,
    filters: Filters | None = None,
    as_of: datetime | None = None,
) -> dict[str, PipelineFigure]:
    """Σ ``estimated_value_minor`` of registrations open at the cutoff, per currency.

    Open = submitted before the cutoff and not closed (rejected, won, lost,
    expired, withdrawn) before it.
    """
    p = parse_period(period)
    cutoff = cutoff_of(p, as_of)
    end = stamp(cutoff)
    totals: dict[str, PipelineFigure] = {}
    for doc in _selected_registrations(data, select_partners(data, cutoff, partner_id=partner_id, filters=filters)):
        if doc["submitted_at"] < end and (doc["closed_at"] is None or doc["closed_at"] >= end):
            was = totals.get(doc["currency"], PipelineFigure(0, 0))
            totals[doc["currency"]] = PipelineFigure(was.registrations + 1, was.value_minor + doc["value"])
    return dict(sorted(totals.items()))


# ---------------------------------------------------------------- partners


@dataclass(frozen=True)
class ActivePartners:
    active: int
    with_activity: int
    share: float | None
    partner_ids: list[str]
    """The active partners with activity in the window."""


def active_partners(
    data: DashboardData,
    period: str | Period,
    *,
    partner_id: str | None = None,
    filters: Filters | None = None,
    as_of: datetime | None = None,
    window_days: int = ACTIVE_WINDOW_DAYS,
) -> ActivePartners:
    """Partners ``active`` at the cutoff with a sale or registration in ``[cutoff - 90 days, cutoff)``."""
    p = parse_period(period)
    cutoff = cutoff_of(p, as_of)
    window_start = cutoff - timedelta(days=window_days)
    start, end = stamp(window_start), stamp(cutoff)
    window = Period("window", "window", window_start, cutoff)
    active = [s for s in select_partners(data, cutoff, partner_id=partner_id, filters=filters) if s.status == "active"]
    busy = []
    for partner in active:
        sold = any(
            start <= sale["at"] < end
            for month in window.months
            for doc in [data.month(partner.partner_id, month)]
            if doc is not None
            for sale in doc["sales"].values()
        )
        registered = any(start <= r["submitted_at"] < end for r in _selected_registrations(data, [partner]))
        if sold or registered:
            busy.append(partner.partner_id)
    return ActivePartners(len(active), len(busy), _ratio(len(busy), len(active)), busy)


@dataclass(frozen=True)
class FirstDealStats:
    partners: int
    median_days: float | None
    p90_days: float | None
    days: dict[str, float]
    """Days from approval to first sale, per partner of the cohort."""
    excluded: list[str]
    """Partners whose first sale falls in the period but precedes their approval (or who were never approved)."""


def _median(values: list[int]) -> Fraction:
    middle = len(values) // 2
    if len(values) % 2:
        return Fraction(values[middle])
    return Fraction(values[middle - 1] + values[middle], 2)


def time_to_first_deal(
    data: DashboardData,
    period: str | Period,
    *,
    partner_id: str | None = None,
    filters: Filters | None = None,
    as_of: datetime | None = None,
) -> FirstDealStats:
    """Days from a partner's approval to its first sale, over partners whose first sale is in the period.

    Median (mean of the two middle values for an even count) and p90 (nearest
    rank: the ⌈0.9·n⌉-th smallest).
    """
    p = parse_period(period)
    cutoff = cutoff_of(p, as_of)
    start, end = stamp(p.start), stamp(cutoff)
    elapsed: dict[str, int] = {}  # microseconds
    excluded = []
    for partner in select_partners(data, cutoff, partner_id=partner_id, filters=filters):
        doc = data.partners[partner.partner_id]
        first, approved = doc.get("first_sale_at"), doc.get("approved_at")
        if first is None or not start <= first < end:
            continue
        if approved is None or approved > first:
            excluded.append(partner.partner_id)
            continue
        elapsed[partner.partner_id] = (_instant(first) - _instant(approved)) // _MICROSECOND
    ordered = sorted(elapsed.values())
    if not ordered:
        return FirstDealStats(0, None, None, {}, excluded)
    day = _DAY // _MICROSECOND
    p90 = ordered[math.ceil(Fraction(9, 10) * len(ordered)) - 1]
    return FirstDealStats(
        partners=len(ordered),
        median_days=float(_median(ordered) / day),
        p90_days=float(Fraction(p90, day)),
        days={k: float(Fraction(v, day)) for k, v in sorted(elapsed.items())},
        excluded=excluded,
    )


def _instant(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def tier_mix(
    data: DashboardData,
    period: str | Period,
    *,
    filters: Filters | None = None,
    as_of: datetime | None = None,
) -> dict[str, int]:
    """Partners in the programme (approved, onboarding, active, suspended) per tier in force at the cutoff."""
    p = parse_period(period)
    mix = dict.fromkeys(TIERS, 0)
    for partner in select_partners(data, cutoff_of(p, as_of), filters=filters):
        if partner.status in IN_PROGRAMME:
            mix[partner.tier] += 1
    return mix


# ---------------------------------------------------------------- commission (from the ledger)


@dataclass(frozen=True)
class CommissionBalance:
    """One partner's commission figures in one currency for a period, as the ledger projection reports them.

    Summed as given (no sign change): map the ledger's statement/balances onto
    these fields in the layer that calls both read models.
    """

    partner_id: str
    currency: str
    accrued_minor: int
    clawed_back_minor: int
    paid_minor: int
    payable_minor: int


@dataclass(frozen=True)
class CommissionTotals:
    partners: int = 0
    accrued_minor: int = 0
    clawed_back_minor: int = 0
    paid_minor: int = 0
    payable_minor: int = 0


def commission_summary(
    balances: Iterable[CommissionBalance],
    data: DashboardData,
    period: str | Period,
    *,
    partner_id: str | None = None,
    filters: Filters | None = None,
    as_of: datetime | None = None,
) -> dict[str, CommissionTotals]:
    """Sum the ledger's balances of the selected partners per currency.

    Nothing is recomputed here: the commission ledger is the only source of
    commission figures. This applies the dashboards' partner selection
    (classification at the period's cutoff) to the ledger's rows.
    """
    p = parse_period(period)
    chosen = {s.partner_id for s in select_partners(data, cutoff_of(p, as_of), partner_id=partner_id, filters=filters)}
    totals: dict[str, CommissionTotals] = {}
    for row in balances:
        if row.partner_id not in chosen:
            continue
        was = totals.get(row.currency, CommissionTotals())
        totals[row.currency] = CommissionTotals(
            was.partners + 1,
            was.accrued_minor + row.accrued_minor,
            was.clawed_back_minor + row.clawed_back_minor,
            was.paid_minor + row.paid_minor,
            was.payable_minor + row.payable_minor,
        )
    return dict(sorted(totals.items()))


# ---------------------------------------------------------------- everything at once


def dashboard(
    data: DashboardData,
    period: str | Period,
    *,
    partner_id: str | None = None,
    filters: Filters | None = None,
    as_of: datetime | None = None,
    top: int = 10,
) -> dict[str, Any]:
    """Every KPI for one partner (``partner_id``) or the channel (optionally filtered), JSON-ready.

    Commission and conflicts are not here: they are the ledger's and the
    conflict projection's queries (see :func:`commission_summary`).
    """
    p = parse_period(period)
    cutoff = cutoff_of(p, as_of)
    kwargs: dict[str, Any] = {"partner_id": partner_id, "filters": filters, "as_of": as_of}
    selected = select_partners(data, cutoff, partner_id=partner_id, filters=filters)
    result: dict[str, Any] = {
        "period": p.label,
        "start": p.start.isoformat(),
        "cutoff": cutoff.isoformat(),
        "partner_id": partner_id,
        "filters": {
            "type": sorted((filters or NO_FILTERS).types),
            "tier": sorted((filters or NO_FILTERS).tiers),
            "region": sorted((filters or NO_FILTERS).regions),
        },
        "partners": [s.partner_id for s in selected],
        "revenue": {c: t.to_dict() for c, t in revenue(data, p, **kwargs).items()},
        "direct_revenue": {c: t.to_dict() for c, t in direct_revenue(data, p, as_of=as_of).items()},
        "channel_revenue": {c: t.to_dict() for c, t in channel_revenue(data, p, as_of=as_of).items()},
        "indirect_share": {c: asdict(s) for c, s in indirect_share(data, p, **kwargs).items()},
        "registrations": registration_counts(data, p, **kwargs),
        "win_rate": asdict(win_rate(data, p, **kwargs)),
        "pipeline": {c: asdict(f) for c, f in pipeline(data, p, **kwargs).items()},
        "active_partners": asdict(active_partners(data, p, **kwargs)),
        "time_to_first_deal": asdict(time_to_first_deal(data, p, **kwargs)),
        "growth": {c: asdict(g) for c, g in growth(data, p, **kwargs).items()},
    }
    if partner_id is None:
        result["tier_mix"] = tier_mix(data, p, filters=filters, as_of=as_of)
        result["leaderboard"] = {
            c: [asdict(row) for row in rows]
            for c, rows in leaderboard(data, p, filters=filters, as_of=as_of, top=top).items()
        }
    return result
