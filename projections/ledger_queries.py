"""Queries over the commission ledger's documents: lines, balances, statements, explanations.

Pure functions: they read the documents written by
:class:`projections.ledger.CommissionLedger` and never change them. The source
of documents may be

* a mapping ``{(kind, key): doc}`` (``InMemoryProjectionStore.dump("ledger")``,
  ``PostgresProjectionStore.dump("ledger")``),
* a projection store (anything with ``load_kind(projection, kind)``), or
* a read view / unit of work (anything with ``scan(kind)``).

Status is computed at query time against an ``as_of`` instant, so an as-of
query gives what the live system showed then: only lines **booked** (their
source event recorded) at or before ``as_of`` are visible; a line is ``paid``
when the payout that paid it was recorded at or before ``as_of``, else
``payable`` when ``payable_at <= as_of``, else ``accrued``. ``as_of=None``
means now (the only use of the clock in this module).

Sign conventions: line amounts are what the partner earns (accruals ``>= 0``,
clawbacks ``<= 0``, adjustments either sign, payout lines ``< 0``: money paid
out); the **balance** is the sum of every visible line, i.e. commission earned
minus paid out.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from domain.commission import month_bounds
from projections.envelope import iso, parse_time
from projections.ledger import ACCRUAL, ADJUSTMENT, CLAWBACK, DISCREPANCY, LINE, PAYOUT, SALE
from projections.port import Doc, DocKey

__all__ = [
    "balances",
    "discrepancies",
    "explain",
    "line_status",
    "lines_of",
    "payable_minor",
    "statement",
]

LEDGER = "ledger"
ACCRUED = "accrued"
PAYABLE = "payable"
PAID = "paid"
_ONE_MICROSECOND = timedelta(microseconds=1)


@runtime_checkable
class _Store(Protocol):
    def load_kind(self, projection: str, kind: str) -> dict[str, Doc]: ...


@runtime_checkable
class _View(Protocol):
    def scan(self, kind: str) -> Any: ...


LedgerSource = Mapping[DocKey, Doc] | _Store | _View


def _docs(source: LedgerSource, kind: str) -> dict[str, Doc]:
    if isinstance(source, Mapping):
        return {key: doc for (k, key), doc in source.items() if k == kind}
    if isinstance(source, _Store):
        return source.load_kind(LEDGER, kind)
    return dict(source.scan(kind))


def _doc(source: LedgerSource, kind: str, key: str) -> Doc | None:
    if isinstance(source, Mapping):
        return source.get((kind, key))
    return _docs(source, kind).get(key)


def _as_of(as_of: datetime | None) -> datetime:
    return (as_of or datetime.now(UTC)).astimezone(UTC)


# ============================================================================
# Lines and status
# ============================================================================


def line_status(line: Doc, as_of: datetime) -> str:
    """``accrued`` / ``payable`` / ``paid`` of a line at the instant ``as_of``."""
    if line["kind"] == PAYOUT:
        return PAID
    if line.get("paid_by") and parse_time(line["paid_booked_at"]) <= as_of:
        return PAID
    if parse_time(line["payable_at"]) <= as_of:
        return PAYABLE
    return ACCRUED


def lines_of(
    source: LedgerSource,
    partner_id: str,
    currency: str | None = None,
    *,
    as_of: datetime | None = None,
    kinds: tuple[str, ...] | None = None,
) -> list[Doc]:
    """The partner's lines booked at or before ``as_of``, in booking order, each with its ``status`` then."""
    at = _as_of(as_of)
    found = []
    for line in _docs(source, LINE).values():
        if line["partner_id"] != partner_id or (currency is not None and line["currency"] != currency):
            continue
        if kinds is not None and line["kind"] not in kinds:
            continue
        if parse_time(line["booked_at"]) > at:
            continue
        found.append(_with_status(line, at))
    return sorted(found, key=lambda d: (d["sequence"], d["line_id"]))


def _with_status(line: Doc, at: datetime) -> Doc:
    shown = dict(line)
    shown["status"] = line_status(line, at)
    if shown["status"] != PAID and line["kind"] != PAYOUT:
        # paid later than ``at``: not visible yet
        shown.update(paid_by=None, paid_at=None, paid_booked_at=None, paid_sequence=None)
    return shown


# ============================================================================
# Balances
# ============================================================================


def balances(source: LedgerSource, partner_id: str, currency: str, as_of: datetime | None = None) -> dict[str, Any]:
    """``accrued`` (held), ``payable`` (a payout now would pay it), ``paid`` (lines paid), ``payouts``
    (money paid out) and ``balance`` (earned minus paid out), in minor units, as of ``as_of``."""
    at = _as_of(as_of)
    totals = {ACCRUED: 0, PAYABLE: 0, PAID: 0}
    payouts = 0
    balance = 0
    for line in lines_of(source, partner_id, currency, as_of=at):
        balance += line["amount_minor"]
        if line["kind"] == PAYOUT:
            payouts -= line["amount_minor"]
        else:
            totals[line["status"]] += line["amount_minor"]
    return {
        "partner_id": partner_id,
        "currency": currency,
        "as_of": iso(at),
        "accrued": totals[ACCRUED],
        "payable": totals[PAYABLE],
        "paid": totals[PAID],
        "payouts": payouts,
        "balance": balance,
    }


def payable_minor(source: LedgerSource, partner_id: str, currency: str, at: datetime) -> int:
    """What a payout recorded now with ``at`` would pay: every unpaid line (payout lines aside) of the
    partner and currency with ``payable_at <= at`` -- the reducer's own rule for a payout event."""
    return sum(
        line["amount_minor"]
        for line in _docs(source, LINE).values()
        if line["partner_id"] == partner_id
        and line["currency"] == currency
        and line["kind"] != PAYOUT
        and not line.get("paid_by")
        and parse_time(line["payable_at"]) <= at
    )


# ============================================================================
# Statements
# ============================================================================


def statement(
    source: LedgerSource, partner_id: str, currency: str, month: str, as_of: datetime | None = None
) -> dict[str, Any]:
    """Monthly statement by **booking** month (spec "Status, statements and payouts").

    ``closing = opening + accruals + clawbacks + adjustments - payouts``; the
    lines of the month are listed with their explanation and their status at
    the end of the month (or at ``as_of`` if earlier), so the statement of a
    past month is the same whenever it is asked for.
    """
    start, end = month_bounds(month)
    at = _as_of(as_of)
    status_at = min(at, end - _ONE_MICROSECOND)
    opening = 0
    sums = {ACCRUAL: 0, CLAWBACK: 0, ADJUSTMENT: 0, PAYOUT: 0}
    shown: list[Doc] = []
    for line in lines_of(source, partner_id, currency, as_of=at):
        booked = parse_time(line["booked_at"])
        if booked < start:
            opening += line["amount_minor"]
        elif booked < end:
            sums[line["kind"]] += line["amount_minor"]
            entry = _with_status(line, status_at)
            entry["text"] = _text(line)
            shown.append(entry)
    payouts = -sums[PAYOUT]
    closing = opening + sums[ACCRUAL] + sums[CLAWBACK] + sums[ADJUSTMENT] - payouts
    return {
        "partner_id": partner_id,
        "currency": currency,
        "month": month,
        "as_of": iso(at),
        "complete": at >= end,
        "opening_balance": opening,
        "accruals": sums[ACCRUAL],
        "clawbacks": sums[CLAWBACK],
        "adjustments": sums[ADJUSTMENT],
        "payouts": payouts,
        "closing_balance": closing,
        "lines": shown,
    }


# ============================================================================
# Explanations
# ============================================================================


def explain(source: LedgerSource, line_id: str) -> dict[str, Any]:
    """A line's explanation: the JSON recorded with it, its linked lines, and the arithmetic as text."""
    line = _doc(source, LINE, line_id)
    if line is None:
        raise KeyError(f"no ledger line {line_id!r}")
    links = []
    for linked_id in line.get("links", []):
        linked = _doc(source, LINE, linked_id)
        if linked is not None:
            links.append({"line_id": linked_id, "kind": linked["kind"], "amount_minor": linked["amount_minor"]})
    sale = _doc(source, SALE, line["sale_id"]) if line.get("sale_id") else None
    return {
        "line_id": line_id,
        "kind": line["kind"],
        "partner_id": line["partner_id"],
        "currency": line["currency"],
        "amount_minor": line["amount_minor"],
        "occurred_at": line["occurred_at"],
        "booked_at": line["booked_at"],
        "source_event_ids": line["source_event_ids"],
        "source_sequences": line["source_sequences"],
        "links": links,
        "sale": {"sale_id": sale["sale_id"], "total_minor": sale["total_minor"]} if sale is not None else None,
        "explanation": line["explanation"],
        "text": _text(line),
    }


def discrepancies(source: LedgerSource, partner_id: str | None = None) -> list[Doc]:
    """What the ledger refused to accept silently, by key."""
    docs = _docs(source, DISCREPANCY)
    return [docs[key] for key in sorted(docs) if partner_id is None or docs[key]["partner_id"] == partner_id]


def _text(line: Doc) -> str:
    ex = line["explanation"]
    head = (
        f"{line['line_id']}: {line['kind']} {line['amount_minor']:+d} {line['currency']} for {line['partner_id']}"
        f" (occurred {line['occurred_at']}, booked {line['booked_at']} at sequence {line['sequence']},"
        f" payable from {line['payable_at']})"
    )
    if line["kind"] == ACCRUAL:
        body = _accrual_text(ex)
    elif line["kind"] == CLAWBACK:
        body = [
            f"refund {ex['refund_id']} of {ex['refund_minor']} on sale total {ex['sale_total_minor']}:"
            f" cumulative refunds {ex['refunded_before_minor']} -> {ex['refunded_after_minor']},"
            f" line commission {ex['line_commission_minor']}",
            f"clawback = {ex['formula']}",
            f"claws back {', '.join(line['links'])}",
        ]
    elif line["kind"] == ADJUSTMENT:
        request = ex["recalculation"]
        plan = ex["plan"]
        body = [
            f"recalculation of plan {request['plan_id']} for {request['period']} requested at sequence"
            f" {request['sequence']} ({request.get('reason')})",
            f"re-rated with version {plan['version']} (effective from {plan['effective_from']},"
            f" recorded at sequence {plan['recorded_sequence']}); previously version"
            f" {ex['previous']['plan_version']}, gross {ex['previous']['gross_minor']}",
            *_accrual_text(ex["accrual"], indent="  "),
            f"refunded so far {ex['refunded_minor']} of {ex['sale_total_minor']}",
            f"adjustment = new net - old net = {ex['formula']}",
        ]
    else:
        body = [ex["formula"], f"paid lines: {', '.join(ex['paid_lines']) or 'none'}"]
        if not ex["matches_payable"]:
            body.append(f"DISCREPANCY: paid {ex['amount_minor']}, payable was {ex['payable_minor']}")
    return "\n".join([head, *(f"  {part}" for part in body)])


def _accrual_text(ex: Mapping[str, Any], indent: str = "") -> list[str]:
    lines: list[str] = []
    sale = ex.get("sale")
    if sale is not None:
        lines.append(
            f"sale {sale['sale_id']} line {sale['line']}: {sale['quantity']} x {sale['unit_price_minor']}"
            f" = {ex['amount_minor']} {ex['currency']} ({ex['category'] or 'no category'})"
        )
    plan = ex.get("plan")
    if plan is not None:
        contract = ex.get("contract") or {}
        lines.append(
            f"plan {plan['plan_id']} version {plan['version']} (effective from {plan['effective_from']},"
            f" recorded at sequence {plan['recorded_sequence']})"
            + (
                f" via contract {contract['contract_id']} ({contract['plan_source']})"
                if contract.get("contract_id")
                else ""
            )
        )
    lines.append(
        f"tier {ex['tier']}; base {ex['base_bps']} bps"
        + (f" ({ex['base_rate_source']})" if ex.get("base_rate_source") else "")
        + f"; registration bonus {ex['bonus_bps']} bps"
    )
    registration = ex.get("registration")
    if registration is not None:
        lines.append(f"registration {registration['registration_id']}: {registration['why']}")
    lines.append(f"Q before {ex['q_before']}, after {ex['q_after']}")
    for part in ex["parts"]:
        lines.append(
            f"part ({part['start_minor']}, {part['end_minor']}]: {part['amount_minor']} x"
            f" ({part['base_bps']} + {part['bonus_bps']} + {part['extra_bps']}) bps"
            f" = {part['exact_commission']}"
        )
    lines.append(f"commission = {ex['formula']}")
    return [f"{indent}{text}" for text in lines]
