"""The commission ledger: a deterministic reducer from recorded events to ledger lines.

Spec: ``/work/shared/spec/commissions.md``; every decision where it is silent is
written down in ``docs/commissions.md``. The arithmetic is
:mod:`domain.commission` (never re-implemented here): this module only resolves
the inputs of each line from the event history -- the plan version, the tier in
force, the registration bonus, the partner's quarterly revenue ``Q`` -- and
books the result.

Order and determinism
---------------------
The output depends only on the events and their ``sequence`` (event-store
position), never on the wall clock or on which topic a worker read first:

* everything a partner's lines depend on (partner lifecycle and tiers,
  contracts, registrations, sales, refunds, payouts) lives in documents keyed
  by that partner, and those events arrive in order for one partner;
* plan versions are programme documents that record their ``sequence``; a sale
  at ``s`` uses only versions with ``sequence < s``;
* a recalculation request is a programme document too; it is applied to a
  partner's lines "as of" its sequence ``r``. With ``recalculate_on_request``
  (total order: embedded mode, replays) it is applied to every partner when
  the request is processed; in any mode, a partner event at ``s > r`` first
  applies the requests ``< s`` not yet applied to that partner (at that moment
  the partner's documents are exactly its state as of ``r``), so both paths
  give the same lines.

Documents (``kind`` / ``key``), all JSON-ready:

* ``plan`` / plan id -- name and versions ``{version, effective_from, terms,
  sequence, ...}`` (programme stream);
* ``recalculations`` / ``index`` -- the recalculation requests in sequence
  order (programme stream);
* ``partner`` / partner id -- termination, tier changes, contracts, ``Q`` per
  currency and quarter, the unpaid-line index, dedupe marks;
* ``partner_month`` / ``<partner>/<YYYY-MM>`` -- the partner's sale ids by
  month of ``occurred_at`` (what a recalculation looks at);
* ``registration`` / ``<partner>/<registration id>`` -- approval, protection,
  closing;
* ``sale`` / sale id -- the sale's lines with their current gross and net
  commission (what clawbacks and adjustments start from) and its refunds;
* ``line`` / line id -- the ledger lines: ``L-<sale>-<n>`` accruals,
  ``CB-<sale>-<refund>-<n>`` clawbacks, ``ADJ-<recalculation seq>-<sale>-<n>``
  adjustments, ``PAY-<payout>`` payouts;
* ``discrepancy`` / ``<partner>/<what>/<id>`` -- facts the ledger would not
  silently accept (a payout different from the payable balance, a refund above
  the sale...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from fractions import Fraction
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, cast

import orjson

from domain.commission import (
    DEFAULT_PLAN_TERMS,
    TIERS,
    LineAccrual,
    PlanTerms,
    accrue_line,
    clawback_by_line,
    fraction_to_str,
    hold_ends_at,
    month_bounds,
    month_of,
    quarter_bounds,
    quarter_of,
    round_half_even,
)
from domain.contract import Contract
from projections.envelope import EventEnvelope, iso, parse_time
from projections.port import Doc, DocKey, ReadView

__all__ = [
    "ACCRUAL",
    "ADJUSTMENT",
    "CLAWBACK",
    "DISCREPANCY",
    "LINE",
    "PARTNER",
    "PARTNER_MONTH",
    "PAYOUT",
    "PLAN",
    "REASON_INVALID_PLAN_TERMS",
    "REASON_NO_COMMISSION_PLAN",
    "REASON_NO_PLAN_VERSION",
    "RECALCULATIONS",
    "REGISTRATION",
    "SALE",
    "CommissionLedger",
    "Recalculation",
    "period_bounds",
    "recalculate",
    "select_plan_version",
]

# ---- document kinds -------------------------------------------------------
PLAN = "plan"
RECALCULATIONS = "recalculations"
RECALCULATIONS_KEY = "index"
PARTNER = "partner"
PARTNER_MONTH = "partner_month"
REGISTRATION = "registration"
SALE = "sale"
LINE = "line"
DISCREPANCY = "discrepancy"

# ---- line kinds -----------------------------------------------------------
ACCRUAL = "accrual"
CLAWBACK = "clawback"
ADJUSTMENT = "adjustment"
PAYOUT = "payout"

# ---- reasons for a zero accrual (besides partner_terminated) ---------------
REASON_NO_COMMISSION_PLAN = "no_commission_plan"
REASON_NO_PLAN_VERSION = "no_plan_version"
REASON_INVALID_PLAN_TERMS = "invalid_plan_terms"

_Handler = Callable[[EventEnvelope, Doc, ReadView], None]
_CONTRACT_EVENTS = {"signed", "amended", "renewed", "terminated", "expired"}
_REGISTRATION_CLOSINGS = {"rejected": "rejected", "lost": "lost", "expired": "expired", "withdrawn": "withdrawn"}


# ============================================================================
# Small helpers
# ============================================================================


@lru_cache(maxsize=16384)
def _t(text: str) -> datetime:
    """``parse_time``, memoised: the same instants (plan versions, tier changes, contract amendments,
    registration windows, payable dates) are read again for every sale of a partner. ``datetime`` is
    immutable, so sharing one parsed value is exact."""
    return parse_time(text)


@lru_cache(maxsize=4096)
def _iso(value: datetime) -> str:
    """``iso``, memoised: one event's recording time is written into each of its lines. ``iso`` and
    ``month_of`` depend on the instant only (both convert to UTC), and equal ``datetime``s are the same
    instant, so a cache entry shared by equal values in other zones is still exact."""
    return iso(value)


@lru_cache(maxsize=4096)
def _month_of(value: datetime) -> str:
    return month_of(value)


_TERMS_CACHE: dict[bytes, PlanTerms | None] = {}
_TERMS_CACHE_MAX = 512


def _plan_terms(raw: Any) -> PlanTerms | None:
    """``PlanTerms.from_dict(raw)`` (``None`` if invalid), parsed and validated once per distinct content.

    ``from_dict`` is a pure function of the terms' JSON value and ``PlanTerms`` is frozen with
    read-only mappings, so the cache is keyed by the canonical JSON of the terms (sorted keys): two
    versions with the same content share one parsed value, and a new plan version -- different
    content -- is parsed on first use. No invalidation is needed because nothing is keyed by plan id
    or version number, only by content.
    """
    try:
        key: bytes | None = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not JSON (e.g. non-string keys): parse without caching
        key = None
    if key is not None and key in _TERMS_CACHE:
        return _TERMS_CACHE[key]
    try:
        terms: PlanTerms | None = PlanTerms.from_dict(raw)
    except ValueError:
        terms = None
    if key is not None:
        if len(_TERMS_CACHE) >= _TERMS_CACHE_MAX:
            _TERMS_CACHE.clear()
        _TERMS_CACHE[key] = terms
    return terms


def _key(*parts: str) -> str:
    return "/".join(parts)


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """UTC ``[start, end)`` of a month ``2026-03`` or a quarter ``2026-Q1``."""
    return quarter_bounds(period) if "Q" in period else month_bounds(period)


def _months_of(period: str) -> list[str]:
    start, end = period_bounds(period)
    months = []
    year, month = start.year, start.month
    while datetime(year, month, 1, tzinfo=start.tzinfo) < end:
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def select_plan_version(plan: Doc | None, occurred_at: datetime, before_sequence: int) -> Doc | None:
    """The version with the greatest ``effective_from <= occurred_at``, among those recorded before ``before_sequence``.

    Spec "Plans": a version recorded later never rewrites existing lines.
    """
    if plan is None:
        return None
    candidates = [
        v
        for v in plan.get("versions", [])
        if v["sequence"] < before_sequence and _t(v["effective_from"]) <= occurred_at
    ]
    if not candidates:
        return None
    chosen: Doc = max(candidates, key=lambda v: (_t(v["effective_from"]), v["sequence"]))
    return chosen


def _version_ref(plan_id: str, version: Doc) -> dict[str, Any]:
    return {
        "plan_id": plan_id,
        "version": version["version"],
        "effective_from": version["effective_from"],
        "recorded_sequence": version["sequence"],
        "hold_days": version["terms"].get("hold_days"),
    }


def _zero_accrual(
    *, amount: int, currency: str, tier: str, category: str | None, q_before: int, bonus: bool, reason: str
) -> LineAccrual:
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
        reason=reason,
        q_before=q_before,
        registration_bonus=bonus,
    )


def _base_rate_source(terms: PlanTerms | None, tier: str, category: str | None) -> str | None:
    """Which entry of the plan gave ``base_bps`` (``accrue_line``'s rule)."""
    if terms is None:
        return None
    if category is not None and tier in terms.category_rates_bps.get(category, {}):
        return f"category_rates_bps[{category}][{tier}]"
    return f"tier_rates_bps[{tier}]"


def _source(event: EventEnvelope) -> dict[str, Any]:
    return {"event_id": event.id, "type": event.type, "sequence": event.sequence, "recorded_at": _iso(event.time)}


def _new_line(
    *,
    line_id: str,
    kind: str,
    partner_id: str,
    currency: str,
    amount: int,
    occurred_at: str,
    booked_at: datetime,
    sequence: int,
    sources: list[dict[str, Any]],
    payable_at: str,
    explanation: dict[str, Any],
    sale_id: str | None = None,
    sale_line: int | None = None,
    links: Sequence[str] = (),
) -> Doc:
    return {
        "line_id": line_id,
        "kind": kind,
        "partner_id": partner_id,
        "currency": currency,
        "amount_minor": amount,
        "sale_id": sale_id,
        "sale_line": sale_line,
        "occurred_at": occurred_at,
        "booked_at": _iso(booked_at),
        "booked_month": _month_of(booked_at),
        "sequence": sequence,
        "source_event_ids": [s["event_id"] for s in sources],
        "source_sequences": [s["sequence"] for s in sources],
        "payable_at": payable_at,
        "paid_by": None,
        "paid_at": None,
        "paid_booked_at": None,
        "paid_sequence": None,
        "links": list(links),
        "explanation": explanation,
    }


# ============================================================================
# Partner state: tiers, termination, contracts, registrations
# ============================================================================


def _new_partner(partner_id: str) -> Doc:
    return {
        "partner_id": partner_id,
        "last_sequence": 0,
        "recalculated_through": 0,
        "applied_at": None,
        "terminated": None,
        "tiers": [],
        "contracts": {},
        "q": {},
        "unpaid": {},
    }


def _tier_at(partner: Doc, at: datetime) -> tuple[str, dict[str, Any] | None]:
    """The tier in force at ``at`` among the tier changes in the doc (all recorded before), and the change used."""
    chosen: dict[str, Any] | None = None
    for change in partner["tiers"]:
        if _t(change["effective_at"]) <= at and (
            chosen is None
            or (_t(change["effective_at"]), change["sequence"]) >= (_t(chosen["effective_at"]), chosen["sequence"])
        ):
            chosen = change
    return (chosen["tier"] if chosen is not None else TIERS[0]), chosen


def _terminated_at(partner: Doc, at: datetime) -> bool:
    terminated = partner.get("terminated")
    return terminated is not None and _t(terminated["at"]) <= at


def _contract_in_force(contract: Doc, day: date) -> bool:
    """The domain's own rule (``Contract.in_force_on``) applied to the contract's recorded state."""
    return _in_force(
        contract["starts_on"],
        contract["ends_on"],
        contract["auto_renew"],
        contract["status"],
        contract["terminated_on"],
        day,
    )


@lru_cache(maxsize=65536)
def _in_force(
    starts_on: str, ends_on: str, auto_renew: bool, status: str, terminated_on: str | None, day: date
) -> bool:
    """Memoised on the recorded state (strings, a bool, a date: all immutable and hashable)."""
    state = SimpleNamespace(
        starts_on=date.fromisoformat(starts_on),
        ends_on=date.fromisoformat(ends_on),
        auto_renew=auto_renew,
        status=status,
        terminated_on=date.fromisoformat(terminated_on) if terminated_on else None,
    )
    return Contract.in_force_on(cast(Contract, state), day)


def _plan_of_contract(contract: Doc, at: datetime) -> str:
    """The plan of the contract at ``at``: the signed plan, or the last amendment made at or before ``at``."""
    plan_id: str = contract["plans"][0]["plan_id"]
    for entry in contract["plans"][1:]:
        if entry["from"] is not None and _t(entry["from"]) <= at:
            plan_id = entry["plan_id"]
    return plan_id


def _resolve_plan(partner: Doc, occurred_at: datetime) -> tuple[str | None, dict[str, Any]]:
    """Plan id for a sale at ``occurred_at`` and how it was chosen."""
    contracts = list(partner["contracts"].values())
    if not contracts:
        return None, {"contract_id": None, "in_force": False, "plan_source": None}
    day = occurred_at.date()
    in_force = [c for c in contracts if _contract_in_force(c, day)]
    if in_force:
        contract = max(in_force, key=lambda c: (c["starts_on"], c["signed_sequence"]))
        source = "contract_in_force"
    else:
        contract = max(contracts, key=lambda c: c["signed_sequence"])
        source = "most_recent_contract"
    plan_id = _plan_of_contract(contract, occurred_at)
    return plan_id, {
        "contract_id": contract["contract_id"],
        "in_force": bool(in_force),
        "plan_source": source,
        "plan_id": plan_id,
    }


def _registration_bonus(
    registration: Doc | None, registration_id: str | None, occurred_at: datetime
) -> tuple[bool, dict[str, Any] | None]:
    """Whether the registration bonus applies, and why (spec "Plans", ``registration_bonus_bps``)."""
    if registration_id is None:
        return False, None
    info: dict[str, Any] = {"registration_id": registration_id}
    if registration is None:
        info.update(eligible=False, why="not a registration of this partner recorded before the sale")
        return False, info
    info.update(
        approved_at=registration["approved_at"],
        protected_until=registration["protected_until"],
        status=registration["status"],
    )
    closed = registration["closed"]
    approved = registration["approved_at"]
    until = registration["protected_until"]
    if closed is not None:
        why = f"{closed['outcome']} before the sale (sequence {closed['sequence']})"
    elif approved is None or until is None:
        why = "not approved before the sale"
    elif occurred_at < _t(approved):
        why = "approved after the sale occurred"
    elif occurred_at >= _t(until):
        why = "protection had ended when the sale occurred"
    else:
        info.update(eligible=True, why="approved_at <= occurred_at < protected_until")
        return True, info
    info.update(eligible=False, why=why)
    return False, info


# ============================================================================
# Recalculation: a per-partner operation
# ============================================================================


@dataclass
class Recalculation:
    """What one recalculation request does to one partner: new adjustment lines and the updated sales."""

    lines: list[Doc] = field(default_factory=list)
    sales: dict[str, Doc] = field(default_factory=dict)
    checked: int = 0


def recalculate(partner: Doc, sales: Mapping[str, Doc], plan: Doc | None, request: Doc) -> Recalculation:
    """Adjustment lines of one partner for a recalculation ``request`` (pure).

    ``request`` = ``{sequence, event_id, plan_id, period, at, recorded_at, actor, reason}``.
    Every accrual line of the partner's sales recorded before the request, with
    ``occurred_at`` in the period and rated with ``plan_id``, is re-rated with
    the version that the plan versions recorded before the request select; the
    other inputs (tier, ``Q`` before, registration bonus, category, amount) are
    those the line was accrued with. The adjustment is the change of the line's
    net commission: ``(C' - rhe(R*C'/S)) - (C - rhe(R*C/S))`` with ``C`` the
    gross commission so far, ``C'`` the recalculated one, ``R`` the sale's
    cumulative refunds and ``S`` its total, so later clawbacks (cumulative, on
    ``C'``) still net a full refund to exactly zero.
    """
    result = Recalculation()
    sequence: int = request["sequence"]
    plan_id: str = request["plan_id"]
    start, end = period_bounds(request["period"])
    booked_at = _t(request["recorded_at"])
    for sale in sorted(sales.values(), key=lambda s: s["sequence"]):
        if sale["partner_id"] != partner["partner_id"] or sale["sequence"] >= sequence:
            continue
        occurred = _t(sale["occurred_at"])
        if not start <= occurred < end:
            continue
        updated = None
        news: list[tuple[int, LineAccrual, Doc]] = []
        for index, line in enumerate(sale["lines"]):
            if line["plan_id"] != plan_id or line["terminated"]:
                continue
            version = select_plan_version(plan, occurred, sequence)
            if version is None:
                continue
            result.checked += 1
            terms = _plan_terms(version["terms"])
            if terms is None:
                continue
            accrual = accrue_line(
                amount_minor=line["amount_minor"],
                currency=sale["currency"],
                tier=line["tier"],
                category=line["category"],
                terms=terms,
                q_before=line["q_before"],
                registration_bonus=line["registration_bonus"],
            )
            if accrual.commission_minor != line["gross_minor"]:
                news.append((index, accrual, version))
        if not news:
            continue
        updated = _copy_sale(sale)
        amounts = [ln["amount_minor"] for ln in updated["lines"]]
        refunded = updated["refunded_minor"]
        new_gross = [ln["gross_minor"] for ln in updated["lines"]]
        for index, accrual, _ in news:
            new_gross[index] = accrual.commission_minor
        # net = gross + cumulative clawback of the refunds so far, per line (domain arithmetic)
        new_net = [g + c for g, c in zip(new_gross, clawback_by_line(new_gross, amounts, 0, refunded), strict=True)]
        for index, accrual, version in news:
            line = updated["lines"][index]
            adjustment = new_net[index] - line["net_minor"]
            line_id = f"ADJ-{sequence}-{sale['sale_id']}-{line['n']}"
            plan_ref = _version_ref(plan_id, version)
            total = updated["total_minor"]
            explanation = {
                "what": "recalculation adjustment",
                "recalculation": dict(request),
                "plan": plan_ref,
                "previous": {
                    "gross_minor": line["gross_minor"],
                    "net_minor": line["net_minor"],
                    "plan_version": line["plan_version"],
                },
                "accrual": accrual.to_dict(),
                "base_rate_source": _base_rate_source(terms, line["tier"], line["category"]),
                "sale_total_minor": total,
                "refunded_minor": refunded,
                "gross_minor": accrual.commission_minor,
                "net_minor": new_net[index],
                "adjustment_minor": adjustment,
                "formula": (
                    f"({accrual.commission_minor} - rhe({refunded}*{accrual.commission_minor}/{total}))"
                    f" - ({line['gross_minor']} - rhe({refunded}*{line['gross_minor']}/{total}))"
                    f" = {new_net[index]} - {line['net_minor']} = {adjustment}"
                ),
            }
            payable_at = iso(hold_ends_at(occurred, version["terms"]["hold_days"]))
            result.lines.append(
                _new_line(
                    line_id=line_id,
                    kind=ADJUSTMENT,
                    partner_id=partner["partner_id"],
                    currency=updated["currency"],
                    amount=adjustment,
                    occurred_at=updated["occurred_at"],
                    booked_at=booked_at,
                    sequence=sequence,
                    sources=[
                        {"event_id": request["event_id"], "sequence": sequence},
                        {"event_id": updated["event_id"], "sequence": updated["sequence"]},
                    ],
                    payable_at=payable_at,
                    explanation=explanation,
                    sale_id=updated["sale_id"],
                    sale_line=line["n"],
                    links=[line["line_id"], *line["adjusted_by"]],
                )
            )
            line["gross_minor"] = accrual.commission_minor
            line["net_minor"] = new_net[index]
            line["plan_version"] = version["version"]
            line["adjusted_by"].append(line_id)
        result.sales[updated["sale_id"]] = updated
    return result


def _copy_sale(sale: Doc) -> Doc:
    copied = dict(sale)
    copied["lines"] = [dict(line, adjusted_by=list(line["adjusted_by"])) for line in sale["lines"]]
    copied["refunds"] = dict(sale["refunds"])
    return copied


# ============================================================================
# The reducer
# ============================================================================


class CommissionLedger:
    """The ``ledger`` projection.

    ``recalculate_on_request``: apply a recalculation request to every partner
    when the request is processed. Right only when events are applied in total
    order (embedded mode, replays from the event store); a Kafka worker must
    pass ``False`` (see ``docs/commissions.md``), and then each partner's lines
    are recalculated when its next event with a higher sequence arrives.
    """

    name = "ledger"

    def __init__(self, *, recalculate_on_request: bool = True) -> None:
        self.recalculate_on_request = recalculate_on_request

    # ---- Projection protocol ------------------------------------------------
    def handles(self, event: EventEnvelope) -> bool:
        if event.kind == "plan":
            return event.name in ("created", "version_published", "recalculation_requested")
        # Every event of a partner: even the ones that book nothing may carry
        # a pending recalculation to that partner (see ``_catch_up``).
        return event.partner_id is not None

    def prefetch_keys(self, event: EventEnvelope) -> list[DocKey]:
        """The documents :meth:`apply` reads for ``event`` (``projections.port.Prefetching``).

        Every partner event reads its ``partner`` document and the ``recalculations``
        index (``_catch_up``); then, by handler: a sale its ``sale`` (the dedupe check),
        its ``partner_month`` bucket and, if it names one, its ``registration``; a refund
        the ``sale`` it refunds; a registration event its ``registration``; a payout its
        ``PAY-`` line (the dedupe check). A plan event reads its ``plan`` (and a
        recalculation request the index). Not named, read on their own when needed:
        the plan a sale is rated with (it depends on the partner's contracts), the
        lines a payout pays, and what a pending recalculation reads.
        """
        data = event.data
        if event.kind == "plan":
            plan_keys: list[DocKey] = [(PLAN, data.get("plan_id") or event.subject)]
            if event.name == "recalculation_requested":
                plan_keys.append((RECALCULATIONS, RECALCULATIONS_KEY))
            return plan_keys
        partner_id = event.partner_id
        if partner_id is None:
            return []
        keys: list[DocKey] = [(PARTNER, partner_id), (RECALCULATIONS, RECALCULATIONS_KEY)]
        kind, name = event.kind, event.name
        if kind == "sale" and name == "recorded":
            keys.append((SALE, data.get("sale_id") or event.subject))
            occurred = data.get("occurred_at")
            if isinstance(occurred, str):
                keys.append((PARTNER_MONTH, _key(partner_id, _month_of(_t(occurred)))))
            registration_id = data.get("registration_id")
            if registration_id is not None:
                keys.append((REGISTRATION, _key(partner_id, registration_id)))
        elif kind == "sale" and name == "refunded":
            keys.append((SALE, event.subject))
        elif kind == "registration":
            keys.append((REGISTRATION, _key(partner_id, data.get("registration_id") or event.subject)))
        elif kind == "payout" and name == "recorded":
            keys.append((LINE, f"PAY-{data.get('payout_id') or event.subject}"))
        return keys

    def apply(self, event: EventEnvelope, view: ReadView) -> None:
        if event.kind == "plan":
            self._apply_plan_event(event, view)
            return
        partner_id = event.partner_id
        if partner_id is None:
            return  # direct sales and opportunities earn nothing
        partner = view.get(PARTNER, partner_id) or _new_partner(partner_id)
        if event.sequence <= partner["last_sequence"]:
            return  # already applied (re-delivery from another source)
        changed = self._catch_up(partner, view, before=event.sequence)
        handler = self._handler(event)
        if handler is not None:
            handler(event, partner, view)
            partner["last_sequence"] = event.sequence
            changed = True
        if changed:
            view.put(PARTNER, partner_id, partner)

    def _handler(self, event: EventEnvelope) -> _Handler | None:
        kind, name = event.kind, event.name
        if kind == "partner" and name in ("applied", "tier_changed", "terminated"):
            return cast(_Handler, getattr(self, f"_partner_{name}"))
        if kind == "contract" and name in _CONTRACT_EVENTS:
            return self._contract_event
        if kind == "registration":
            return self._registration_event
        if kind == "sale" and name == "recorded":
            return self._sale_recorded
        if kind == "sale" and name == "refunded":
            return self._sale_refunded
        if kind == "payout" and name == "recorded":
            return self._payout_recorded
        return None

    # ---- programme stream -------------------------------------------------------
    def _apply_plan_event(self, event: EventEnvelope, view: ReadView) -> None:
        data = event.data
        plan_id = data.get("plan_id") or event.subject
        plan = view.get(PLAN, plan_id) or {"plan_id": plan_id, "name": None, "created_sequence": None, "versions": []}
        if event.name == "created":
            if plan["created_sequence"] is None:
                plan.update(name=data.get("name"), created_sequence=event.sequence)
                view.put(PLAN, plan_id, plan)
        elif event.name == "version_published":
            if all(v["version"] != data["version"] for v in plan["versions"]):
                plan["versions"].append(
                    {
                        "version": data["version"],
                        "effective_from": iso(_t(data["effective_from"])),
                        "terms": data["terms"],
                        "sequence": event.sequence,
                        "event_id": event.id,
                        "recorded_at": iso(event.time),
                        "reason": data.get("reason"),
                    }
                )
                plan["versions"].sort(key=lambda v: v["sequence"])
                view.put(PLAN, plan_id, plan)
        elif event.name == "recalculation_requested":
            index = view.get(RECALCULATIONS, RECALCULATIONS_KEY) or {"requests": []}
            if any(r["sequence"] == event.sequence for r in index["requests"]):
                return
            request = {
                "sequence": event.sequence,
                "event_id": event.id,
                "plan_id": plan_id,
                "period": data["period"],
                "at": data.get("at"),
                "recorded_at": iso(event.time),
                "actor": data.get("actor"),
                "reason": data.get("reason"),
            }
            index["requests"].append(request)
            index["requests"].sort(key=lambda r: r["sequence"])
            view.put(RECALCULATIONS, RECALCULATIONS_KEY, index)
            if self.recalculate_on_request:
                for partner_id, partner in list(view.scan(PARTNER)):
                    if self._catch_up(partner, view, before=event.sequence + 1):
                        view.put(PARTNER, partner_id, partner)

    def _catch_up(self, partner: Doc, view: ReadView, *, before: int) -> bool:
        """Apply the recalculation requests with ``recalculated_through < sequence < before`` to ``partner``."""
        index = view.get(RECALCULATIONS, RECALCULATIONS_KEY)
        if index is None:
            return False
        through = partner["recalculated_through"]
        pending = [r for r in index["requests"] if through < r["sequence"] < before]
        for request in pending:
            self._recalculate_partner(partner, view, request)
            partner["recalculated_through"] = request["sequence"]
        return bool(pending)

    def _recalculate_partner(self, partner: Doc, view: ReadView, request: Doc) -> None:
        partner_id = partner["partner_id"]
        sales: dict[str, Doc] = {}
        for month in _months_of(request["period"]):
            bucket = view.get(PARTNER_MONTH, _key(partner_id, month))
            for sale_id in (bucket or {}).get("sales", []):
                sale = view.get(SALE, sale_id)
                if sale is not None:
                    sales[sale_id] = sale
        if not sales:
            return
        outcome = recalculate(partner, sales, view.get(PLAN, request["plan_id"]), request)
        for sale_id, sale in outcome.sales.items():
            view.put(SALE, sale_id, sale)
        for line in outcome.lines:
            self._book(partner, view, line)

    # ---- partner lifecycle ----------------------------------------------------
    def _partner_applied(self, event: EventEnvelope, partner: Doc, view: ReadView) -> None:
        partner["applied_at"] = event.data.get("at")

    def _partner_tier_changed(self, event: EventEnvelope, partner: Doc, view: ReadView) -> None:
        data = event.data
        partner["tiers"].append(
            {
                "tier": data["tier"],
                "effective_at": iso(_t(data["effective_at"])),
                "source": data.get("source"),
                "sequence": event.sequence,
            }
        )

    def _partner_terminated(self, event: EventEnvelope, partner: Doc, view: ReadView) -> None:
        if partner["terminated"] is None:
            partner["terminated"] = {
                "at": iso(_t(event.data["at"])),
                "sequence": event.sequence,
                "reason": event.data.get("reason"),
            }

    # ---- contracts --------------------------------------------------------------
    def _contract_event(self, event: EventEnvelope, partner: Doc, view: ReadView) -> None:
        data = event.data
        contract_id = data.get("contract_id") or event.subject
        contracts = partner["contracts"]
        if event.name == "signed":
            contracts[contract_id] = {
                "contract_id": contract_id,
                "starts_on": data["starts_on"],
                "ends_on": data["ends_on"],
                "auto_renew": bool(data["auto_renew"]),
                "status": "signed",
                "terminated_on": None,
                "signed_sequence": event.sequence,
                "plans": [{"plan_id": data["commission_plan_id"], "from": None, "sequence": event.sequence}],
            }
            return
        contract = contracts.get(contract_id)
        if contract is None:
            return
        if event.name == "amended":
            if data["commission_plan_id"] != _plan_of_contract(contract, _t(data["at"])):
                contract["plans"].append(
                    {"plan_id": data["commission_plan_id"], "from": iso(_t(data["at"])), "sequence": event.sequence}
                )
        elif event.name == "renewed":
            contract["ends_on"] = data["ends_on"]
        elif event.name == "terminated":
            contract["status"] = "terminated"
            contract["terminated_on"] = data["effective_on"]
        elif event.name == "expired":
            contract["status"] = "expired"

    # ---- registrations ------------------------------------------------------------
    def _registration_event(self, event: EventEnvelope, partner: Doc, view: ReadView) -> None:
        data = event.data
        registration_id = data.get("registration_id") or event.subject
        key = _key(partner["partner_id"], registration_id)
        registration = view.get(REGISTRATION, key)
        if event.name == "submitted":
            if registration is None:
                view.put(
                    REGISTRATION,
                    key,
                    {
                        "registration_id": registration_id,
                        "partner_id": partner["partner_id"],
                        "status": "submitted",
                        "approved_at": None,
                        "protected_until": None,
                        "closed": None,
                        "won_sale_id": None,
                    },
                )
            return
        if registration is None:
            return
        if event.name == "approved":
            registration.update(
                status="approved",
                approved_at=iso(_t(data["at"])),
                protected_until=iso(_t(data["protected_until"])),
            )
        elif event.name == "protection_extended":
            registration["protected_until"] = iso(_t(data["protected_until"]))
        elif event.name == "won":
            registration.update(status="won", won_sale_id=data.get("sale_id"))
        elif event.name in _REGISTRATION_CLOSINGS:
            outcome = _REGISTRATION_CLOSINGS[event.name]
            registration.update(
                status=outcome,
                closed={"outcome": outcome, "at": iso(_t(data["at"])), "sequence": event.sequence},
            )
        elif event.name == "conflict_resolved":
            if data.get("lost_protection") and registration["protected_until"] is not None:
                registration["protected_until"] = iso(min(_t(registration["protected_until"]), _t(data["at"])))
        else:
            return
        view.put(REGISTRATION, key, registration)

    # ---- sales ----------------------------------------------------------------------
    def _sale_recorded(self, event: EventEnvelope, partner: Doc, view: ReadView) -> None:
        data = event.data
        partner_id: str = partner["partner_id"]
        sale_id: str = data.get("sale_id") or event.subject
        if view.get(SALE, sale_id) is not None:
            return
        occurred = _t(data["occurred_at"])
        currency: str = data["currency"]
        quarter = quarter_of(occurred)

        terminated = _terminated_at(partner, occurred)
        tier, tier_change = _tier_at(partner, occurred)
        plan_id, contract_info = _resolve_plan(partner, occurred)
        plan = view.get(PLAN, plan_id) if plan_id is not None else None
        version = select_plan_version(plan, occurred, event.sequence)
        terms = _plan_terms(version["terms"]) if version is not None else None
        registration_id = data.get("registration_id")
        registration = (
            view.get(REGISTRATION, _key(partner_id, registration_id)) if registration_id is not None else None
        )
        bonus, registration_info = _registration_bonus(registration, registration_id, occurred)
        if registration_id is not None and bool(data.get("registration_bonus")) != bonus:
            self._discrepancy(
                view,
                partner_id,
                "registration_bonus",
                sale_id,
                event,
                detail=(
                    f"the sale event says registration_bonus={data.get('registration_bonus')}, the ledger's "
                    f"reading of the registration's events says {bonus}; the ledger books its own reading"
                ),
                expected=bonus,
                recorded=data.get("registration_bonus"),
            )

        flags = sorted(set(data.get("flags") or []))
        if contract_info["plan_source"] == "most_recent_contract":
            flags = sorted({*flags, "no_contract_in_force"})
        q_by_quarter = partner["q"].setdefault(currency, {})
        q = int(q_by_quarter.get(quarter, 0))
        source = _source(event)
        hold_days = terms.hold_days if terms is not None else 0
        payable_at = iso(hold_ends_at(occurred, hold_days))
        occurred_iso = iso(occurred)
        sale_lines: list[Doc] = []
        for n, raw in enumerate(data["lines"], start=1):
            amount = int(raw["quantity"]) * int(raw["unit_price_minor"])
            category = raw.get("category")
            if terminated:
                accrual = accrue_line(
                    amount_minor=amount,
                    currency=currency,
                    tier=tier,
                    category=category,
                    terms=terms or DEFAULT_PLAN_TERMS,
                    q_before=q,
                    registration_bonus=bonus,
                    partner_terminated=True,
                )
            elif plan_id is None or terms is None:
                reason = (
                    REASON_NO_COMMISSION_PLAN
                    if plan_id is None
                    else REASON_NO_PLAN_VERSION
                    if version is None
                    else REASON_INVALID_PLAN_TERMS
                )
                accrual = _zero_accrual(
                    amount=amount,
                    currency=currency,
                    tier=tier,
                    category=category,
                    q_before=q,
                    bonus=bonus,
                    reason=reason,
                )
            else:
                accrual = accrue_line(
                    amount_minor=amount,
                    currency=currency,
                    tier=tier,
                    category=category,
                    terms=terms,
                    q_before=q,
                    registration_bonus=bonus,
                )
            q += amount
            line_id = f"L-{sale_id}-{n}"
            explanation = {
                "what": "accrual",
                **accrual.to_dict(),
                "plan": _version_ref(plan_id, version) if plan_id is not None and version is not None else None,
                "plan_id": plan_id,
                "base_rate_source": _base_rate_source(terms, tier, category) if accrual.reason is None else None,
                "contract": contract_info,
                "tier_change": tier_change,
                "quarter": quarter,
                "registration": registration_info,
                "flags": flags,
                "sale": {
                    "sale_id": sale_id,
                    "line": n,
                    "sku": raw.get("sku"),
                    "quantity": raw["quantity"],
                    "unit_price_minor": raw["unit_price_minor"],
                },
                "source": source,
            }
            self._book(
                partner,
                view,
                _new_line(
                    line_id=line_id,
                    kind=ACCRUAL,
                    partner_id=partner_id,
                    currency=currency,
                    amount=accrual.commission_minor,
                    occurred_at=occurred_iso,
                    booked_at=event.time,
                    sequence=event.sequence,
                    sources=[source],
                    payable_at=payable_at,
                    explanation=explanation,
                    sale_id=sale_id,
                    sale_line=n,
                ),
            )
            sale_lines.append(
                {
                    "line_id": line_id,
                    "n": n,
                    "category": category,
                    "amount_minor": amount,
                    "tier": tier,
                    "q_before": accrual.q_before,
                    "registration_bonus": bonus,
                    "terminated": terminated,
                    "plan_id": plan_id,
                    "plan_version": version["version"] if version is not None else None,
                    "reason": accrual.reason,
                    "commission_minor": accrual.commission_minor,
                    "gross_minor": accrual.commission_minor,
                    "net_minor": accrual.commission_minor,
                    "payable_at": payable_at,
                    "adjusted_by": [],
                }
            )
        q_by_quarter[quarter] = q
        view.put(
            SALE,
            sale_id,
            {
                "sale_id": sale_id,
                "partner_id": partner_id,
                "currency": currency,
                "total_minor": sum(line["amount_minor"] for line in sale_lines),
                "occurred_at": occurred_iso,
                "sequence": event.sequence,
                "event_id": event.id,
                "registration_id": registration_id,
                "refunded_minor": 0,
                "refunds": {},
                "lines": sale_lines,
            },
        )
        month_key = _key(partner_id, month_of(occurred))
        bucket = view.get(PARTNER_MONTH, month_key) or {
            "partner_id": partner_id,
            "month": month_of(occurred),
            "sales": [],
        }
        bucket["sales"].append(sale_id)
        view.put(PARTNER_MONTH, month_key, bucket)

    def _sale_refunded(self, event: EventEnvelope, partner: Doc, view: ReadView) -> None:
        data = event.data
        partner_id: str = partner["partner_id"]
        sale_id = event.subject
        refund_id: str = data["refund_id"]
        sale = view.get(SALE, sale_id)
        if sale is None or sale["partner_id"] != partner_id:
            self._discrepancy(
                view, partner_id, "refund", f"{sale_id}/{refund_id}", event, detail=f"refund of unknown sale {sale_id}"
            )
            return
        if refund_id in sale["refunds"]:
            return
        if data.get("currency") != sale["currency"]:
            self._discrepancy(
                view,
                partner_id,
                "refund",
                f"{sale_id}/{refund_id}",
                event,
                detail=f"refund in {data.get('currency')} of a sale in {sale['currency']}: not booked",
            )
            return
        occurred = _t(data["occurred_at"])
        total: int = sale["total_minor"]
        before: int = sale["refunded_minor"]
        asked = int(data["amount_minor"])
        after = min(before + asked, total)
        if after != before + asked:
            self._discrepancy(
                view,
                partner_id,
                "refund",
                f"{sale_id}/{refund_id}",
                event,
                detail=f"cumulative refunds {before + asked} above the sale total {total}: capped at the total",
                expected=total - before,
                recorded=asked,
            )
        if data.get("refunded_before_minor", before) != before:
            self._discrepancy(
                view,
                partner_id,
                "refund_cumulative",
                f"{sale_id}/{refund_id}",
                event,
                detail="the refund event's refunded_before_minor differs from the ledger's; the ledger's is used",
                expected=before,
                recorded=data.get("refunded_before_minor"),
            )
        gross = [line["gross_minor"] for line in sale["lines"]]
        amounts = [line["amount_minor"] for line in sale["lines"]]
        clawbacks = clawback_by_line(gross, amounts, before, after)
        source = _source(event)
        for line, clawback, commission in zip(sale["lines"], clawbacks, gross, strict=True):
            line_id = f"CB-{sale_id}-{refund_id}-{line['n']}"
            before_part = round_half_even(Fraction(before * commission, total)) if total else 0
            after_part = round_half_even(Fraction(after * commission, total)) if total else 0
            explanation = {
                "what": "clawback",
                "refund_id": refund_id,
                "refund_minor": after - before,
                "refund_occurred_at": iso(occurred),
                "sale_total_minor": total,
                "line_commission_minor": commission,
                "original_commission_minor": line["commission_minor"],
                "refunded_before_minor": before,
                "refunded_after_minor": after,
                "exact_before": fraction_to_str(Fraction(before * commission, total)) if total else "0/1",
                "exact_after": fraction_to_str(Fraction(after * commission, total)) if total else "0/1",
                "formula": (
                    f"-(rhe({after}*{commission}/{total}) - rhe({before}*{commission}/{total}))"
                    f" = -({after_part} - {before_part}) = {clawback}"
                ),
                "clawback_minor": clawback,
                "source": source,
            }
            payable_at = iso(max(_t(line["payable_at"]), occurred))
            self._book(
                partner,
                view,
                _new_line(
                    line_id=line_id,
                    kind=CLAWBACK,
                    partner_id=partner_id,
                    currency=sale["currency"],
                    amount=clawback,
                    occurred_at=iso(occurred),
                    booked_at=event.time,
                    sequence=event.sequence,
                    sources=[source],
                    payable_at=payable_at,
                    explanation=explanation,
                    sale_id=sale_id,
                    sale_line=line["n"],
                    links=[line["line_id"], *line["adjusted_by"]],
                ),
            )
            line["net_minor"] += clawback
        sale["refunded_minor"] = after
        sale["refunds"][refund_id] = {
            "amount_minor": asked,
            "booked_minor": after - before,
            "occurred_at": iso(occurred),
            "sequence": event.sequence,
        }
        view.put(SALE, sale_id, sale)
        q_by_quarter = partner["q"].setdefault(sale["currency"], {})
        quarter = quarter_of(occurred)
        q_by_quarter[quarter] = int(q_by_quarter.get(quarter, 0)) - (after - before)

    # ---- payouts ----------------------------------------------------------------------
    def _payout_recorded(self, event: EventEnvelope, partner: Doc, view: ReadView) -> None:
        data = event.data
        partner_id: str = partner["partner_id"]
        payout_id: str = data.get("payout_id") or event.subject
        line_id = f"PAY-{payout_id}"
        if view.get(LINE, line_id) is not None:
            return
        currency: str = data["currency"]
        at = _t(data["at"])
        amount = int(data["amount_minor"])
        unpaid: dict[str, Doc] = partner["unpaid"].get(currency, {})
        due = sorted(lid for lid, entry in unpaid.items() if _t(entry["payable_at"]) <= at)
        payable = sum(int(unpaid[lid]["amount_minor"]) for lid in due)
        for lid in due:
            line = view.get(LINE, lid)
            if line is not None:
                line.update(
                    paid_by=payout_id, paid_at=iso(at), paid_booked_at=iso(event.time), paid_sequence=event.sequence
                )
                view.put(LINE, lid, line)
            del unpaid[lid]
        source = _source(event)
        payout_line = _new_line(
            line_id=line_id,
            kind=PAYOUT,
            partner_id=partner_id,
            currency=currency,
            amount=-amount,
            occurred_at=iso(at),
            booked_at=event.time,
            sequence=event.sequence,
            sources=[source],
            payable_at=iso(at),
            explanation={
                "what": "payout",
                "payout_id": payout_id,
                "period": data.get("period"),
                "at": iso(at),
                "reference": data.get("reference"),
                "amount_minor": amount,
                "payable_minor": payable,
                "matches_payable": amount == payable,
                "paid_lines": due,
                "formula": f"pays {len(due)} line(s) payable at {iso(at)}: sum = {payable}; paid {amount}",
                "source": source,
            },
            links=due,
        )
        payout_line.update(
            paid_by=payout_id, paid_at=iso(at), paid_booked_at=iso(event.time), paid_sequence=event.sequence
        )
        view.put(LINE, line_id, payout_line)
        if amount != payable:
            self._discrepancy(
                view,
                partner_id,
                "payout",
                payout_id,
                event,
                detail=(
                    f"payout {payout_id} of {amount} {currency} differs from the payable balance {payable} at "
                    f"{iso(at)}; the lines payable then are marked paid and the difference stays in the balance"
                ),
                expected=payable,
                recorded=amount,
            )

    # ---- booking ------------------------------------------------------------------------
    def _book(self, partner: Doc, view: ReadView, line: Doc) -> None:
        view.put(LINE, line["line_id"], line)
        partner["unpaid"].setdefault(line["currency"], {})[line["line_id"]] = {
            "payable_at": line["payable_at"],
            "amount_minor": line["amount_minor"],
        }

    def _discrepancy(
        self,
        view: ReadView,
        partner_id: str,
        what: str,
        ident: str,
        event: EventEnvelope,
        *,
        detail: str,
        expected: object = None,
        recorded: object = None,
    ) -> None:
        view.put(
            DISCREPANCY,
            _key(partner_id, what, ident),
            {
                "partner_id": partner_id,
                "what": what,
                "id": ident,
                "detail": detail,
                "expected": expected,
                "recorded": recorded,
                "source": _source(event),
            },
        )
