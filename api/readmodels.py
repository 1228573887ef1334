"""Read-side views shared by the HTTP API and the ``prm`` command line.

Every function reads the projections' documents through a ``ProjectionStore``
and the query modules of :mod:`projections` (``ledger_queries``,
``conflict_queries``, ``dashboard_queries``); nothing here reads the event store.

* partners: the dashboards projection's partner documents (name, segment, tier
  and status timelines), with contracts and balances from the ledger;
* registrations: the dashboards registration documents (value, steps) with the
  customer and protection from the conflicts projection's account documents;
* commissions: ledger lines, balances, statements and explanations;
* dashboards: every KPI of ``kpis.md`` plus the ledger's commission figures and
  the conflict counts for the same period and partner selection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from projections import conflict_queries, dashboard_queries, ledger_queries
from projections.conflicts import ACCOUNT, registration_state
from projections.conflicts import NAME as CONFLICTS
from projections.conflicts import REGISTRATION as REGISTRATION_PARTY
from projections.dashboard_queries import DashboardData, Filters, cutoff_of, parse_period, partner_at
from projections.dashboards import PARTNER, REGISTRATION
from projections.envelope import iso, parse_time
from projections.ledger import ACCRUAL, ADJUSTMENT, CLAWBACK, DISCREPANCY, LINE, PAYOUT, PLAN, SALE
from projections.ledger import PARTNER as LEDGER_PARTNER
from projections.port import Doc, DocKey, ProjectionStore

__all__ = [
    "LedgerSnapshot",
    "all_balances",
    "commission_figures",
    "dashboard_view",
    "find_contract",
    "partner_balances",
    "partner_contracts",
    "partner_detail",
    "partner_summaries",
    "plans",
    "registration_views",
]

LEDGER = "ledger"
DASHBOARDS = "dashboards"
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso_stamp(text: str | None) -> str | None:
    """A dashboards stamp (``2026-03-01T09:59:41.000000Z``) as ISO 8601 with ``Z``."""
    return iso(parse_time(text)) if text else None


# ---------------------------------------------------------------- partners


def _summary(doc: Doc, now: datetime) -> dict[str, Any]:
    current = partner_at(doc, _FAR_FUTURE)
    in_force = partner_at(doc, now)
    segments = doc.get("segments") or [{}]
    return {
        "partner_id": doc["partner_id"],
        "name": doc.get("name"),
        "status": current.status,
        "tier": in_force.tier,
        "type": current.type,
        "region": current.region,
        "subregion": segments[-1].get("subregion"),
        "size": segments[-1].get("size"),
        "applied_at": _iso_stamp(doc.get("applied_at")),
        "approved_at": _iso_stamp(doc.get("approved_at")),
        "activated_at": _iso_stamp(doc.get("activated_at")),
        "first_sale_at": _iso_stamp(doc.get("first_sale_at")),
    }


def partner_summaries(store: ProjectionStore, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every partner known to the dashboards projection (applied at least), in id order."""
    at = now or _now()
    docs = store.load_kind(DASHBOARDS, PARTNER)
    return [_summary(docs[key], at) for key in sorted(docs) if docs[key].get("applied_at")]


def partner_contracts(store: ProjectionStore, partner_id: str) -> list[dict[str, Any]]:
    key = (LEDGER_PARTNER, partner_id)
    doc = store.load(LEDGER, [key]).get(key)
    if doc is None:
        return []
    return [_contract(c, partner_id) for c in sorted(doc["contracts"].values(), key=lambda c: c["signed_sequence"])]


def _contract(contract: Doc, partner_id: str) -> dict[str, Any]:
    return {
        "contract_id": contract["contract_id"],
        "partner_id": partner_id,
        "starts_on": contract["starts_on"],
        "ends_on": contract["ends_on"],
        "auto_renew": contract["auto_renew"],
        "status": contract["status"],
        "terminated_on": contract["terminated_on"],
        "commission_plans": contract["plans"],
        "signed_sequence": contract["signed_sequence"],
    }


def find_contract(store: ProjectionStore, contract_id: str) -> dict[str, Any] | None:
    for partner_id, doc in store.load_kind(LEDGER, LEDGER_PARTNER).items():
        contract = doc["contracts"].get(contract_id)
        if contract is not None:
            return _contract(contract, partner_id)
    return None


def partner_detail(store: ProjectionStore, partner_id: str, *, now: datetime | None = None) -> dict[str, Any] | None:
    """One partner: its summary, timelines, contracts, balances per currency and registration counts."""
    key = (PARTNER, partner_id)
    doc = store.load(DASHBOARDS, [key]).get(key)
    if doc is None or not doc.get("applied_at"):
        return None
    at = now or _now()
    registrations = registration_views(store, partner_id=partner_id)
    counts: dict[str, int] = {}
    for registration in registrations:
        counts[registration["status"]] = counts.get(registration["status"], 0) + 1
    return {
        **_summary(doc, at),
        "segments": [_timeline_entry(e) for e in doc.get("segments") or []],
        "tiers": [_timeline_entry(e) for e in doc.get("tiers") or []],
        "statuses": [_timeline_entry(e) for e in doc.get("statuses") or []],
        "contracts": partner_contracts(store, partner_id),
        "balances": partner_balances(LedgerSnapshot.load(store), partner_id, as_of=at),
        "registrations": dict(sorted(counts.items())),
    }


def _timeline_entry(entry: Doc) -> dict[str, Any]:
    shown = {k: v for k, v in entry.items() if k != "v"}
    shown["at"] = _iso_stamp(entry["at"])
    shown["version"] = entry["v"]
    return shown


# ---------------------------------------------------------------- registrations


def _registration_status(doc: Doc) -> str:
    if doc.get("outcome"):
        return str(doc["outcome"])
    return "approved" if doc.get("approved_at") else "submitted"


def registration_views(
    store: ProjectionStore, *, partner_id: str | None = None, registration_id: str | None = None
) -> list[dict[str, Any]]:
    """Deal registrations (optionally one partner's, or one), in id order."""
    if registration_id is not None:
        wanted = (REGISTRATION, registration_id)
        found = store.load(DASHBOARDS, [wanted]).get(wanted)
        docs = {registration_id: found} if found is not None else {}
        account_key = (ACCOUNT, f"{REGISTRATION_PARTY}:{registration_id}")
        accounts = {k[1]: v for k, v in store.load(CONFLICTS, [account_key]).items()}
    else:
        docs = store.load_kind(DASHBOARDS, REGISTRATION)
        accounts = store.load_kind(CONFLICTS, ACCOUNT)
    views = []
    for rid in sorted(docs):
        doc = docs[rid]
        if not doc.get("submitted_at") or (partner_id is not None and doc.get("partner_id") != partner_id):
            continue
        account = accounts.get(f"{REGISTRATION_PARTY}:{rid}") or {}
        state = registration_state(account) if "sequence" in account else None
        views.append(
            {
                "registration_id": rid,
                "partner_id": doc["partner_id"],
                "status": _registration_status(doc),
                "customer": account.get("customer"),
                "estimated_value_minor": doc["value"],
                "currency": doc["currency"],
                "submitted_at": _iso_stamp(doc["submitted_at"]),
                "approved_at": _iso_stamp(doc.get("approved_at")),
                "closed_at": _iso_stamp(doc.get("closed_at")),
                "protected_until": iso(state.protected_until) if state and state.protected_until else None,
                "conflict_ids": list(account.get("conflicts_with") or []),
                "sequence": account.get("sequence"),
            }
        )
    return views


# ---------------------------------------------------------------- commissions


class LedgerSnapshot(dict[DocKey, Doc]):
    """The ledger's lines, sales, plans and discrepancies, loaded once for a request."""

    @classmethod
    def load(cls, store: ProjectionStore) -> LedgerSnapshot:
        snapshot = cls()
        for kind in (LINE, SALE, DISCREPANCY, PLAN):
            for key, doc in store.load_kind(LEDGER, kind).items():
                snapshot[(kind, key)] = doc
        return snapshot

    def kind(self, kind: str) -> dict[str, Doc]:
        return {key: doc for (k, key), doc in self.items() if k == kind}

    def partners(self) -> list[str]:
        return sorted({doc["partner_id"] for doc in self.kind(LINE).values()})

    def currencies(self, partner_id: str) -> list[str]:
        return sorted({doc["currency"] for doc in self.kind(LINE).values() if doc["partner_id"] == partner_id})


def commission_lines(
    snapshot: LedgerSnapshot,
    *,
    partner_id: str | None = None,
    currency: str | None = None,
    kind: str | None = None,
    status: str | None = None,
    as_of: datetime | None = None,
) -> list[Doc]:
    """Lines booked at or before ``as_of`` with their status then, for one partner or all."""
    partners = [partner_id] if partner_id is not None else snapshot.partners()
    kinds = (kind,) if kind is not None else None
    lines: list[Doc] = []
    for pid in partners:
        lines.extend(ledger_queries.lines_of(snapshot, pid, currency, as_of=as_of, kinds=kinds))
    return [line for line in lines if status is None or line["status"] == status]


def partner_balances(
    snapshot: Mapping[DocKey, Doc], partner_id: str, *, currency: str | None = None, as_of: datetime | None = None
) -> list[dict[str, Any]]:
    source = snapshot if isinstance(snapshot, LedgerSnapshot) else LedgerSnapshot(snapshot)
    currencies = [currency] if currency is not None else source.currencies(partner_id)
    return [ledger_queries.balances(source, partner_id, c, as_of) for c in currencies]


def all_balances(
    snapshot: LedgerSnapshot, *, currency: str | None = None, as_of: datetime | None = None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for partner_id in snapshot.partners():
        rows.extend(partner_balances(snapshot, partner_id, currency=currency, as_of=as_of))
    return rows


def plans(store: ProjectionStore) -> list[Doc]:
    docs = store.load_kind(LEDGER, PLAN)
    return [docs[key] for key in sorted(docs)]


def commission_figures(
    snapshot: LedgerSnapshot, start: datetime, cutoff: datetime
) -> list[dashboard_queries.CommissionBalance]:
    """Per partner and currency, for the dashboards' period ``[start, cutoff)``.

    Like revenue, the period's commission is by business time (a line's
    ``occurred_at``: the sale, refund or payout it comes from): accrued
    (accruals and recalculation adjustments), clawed back (as a positive
    amount), paid out. ``payable`` is the payable balance the ledger showed at
    the cutoff (lines booked by then). Statements, by contrast, go by booking
    month (``ledger_queries.statement``).
    """
    figures: dict[tuple[str, str], list[int]] = {}
    for line in snapshot.kind(LINE).values():
        tally = figures.setdefault((line["partner_id"], line["currency"]), [0, 0, 0])
        if not start <= parse_time(line["occurred_at"]) < cutoff:
            continue
        if line["kind"] in (ACCRUAL, ADJUSTMENT):
            tally[0] += line["amount_minor"]
        elif line["kind"] == CLAWBACK:
            tally[1] -= line["amount_minor"]
        elif line["kind"] == PAYOUT:
            tally[2] -= line["amount_minor"]
    rows = []
    for (partner_id, currency), (accrued, clawed, paid) in sorted(figures.items()):
        payable = ledger_queries.balances(snapshot, partner_id, currency, cutoff)["payable"]
        rows.append(dashboard_queries.CommissionBalance(partner_id, currency, accrued, clawed, paid, payable))
    return rows


# ---------------------------------------------------------------- dashboards


def dashboard_view(
    store: ProjectionStore,
    period: str,
    *,
    partner_id: str | None = None,
    filters: Filters | None = None,
    as_of: datetime | None = None,
    top: int = 10,
) -> dict[str, Any]:
    """Every KPI for one partner or the (filtered) channel, with commission and conflict figures.

    ``ValueError`` for a malformed period or unknown filter values.
    """
    data = DashboardData.load(store)
    p = parse_period(period)
    cutoff = cutoff_of(p, as_of)
    view = dashboard_queries.dashboard(data, p, partner_id=partner_id, filters=filters, as_of=as_of, top=top)
    balances = commission_figures(LedgerSnapshot.load(store), p.start, cutoff)
    commission = dashboard_queries.commission_summary(
        balances, data, p, partner_id=partner_id, filters=filters, as_of=as_of
    )
    view["commission"] = {currency: asdict(totals) for currency, totals in commission.items()}
    if cutoff > p.start:
        counts = conflict_queries.conflict_counts(
            conflict_queries.load_conflicts(store), p.start, cutoff, partner_id=partner_id
        )
        view["conflicts"] = {kind: asdict(c) for kind, c in counts.items()}
    else:
        view["conflicts"] = {}
    view["start"] = iso(p.start)
    view["cutoff"] = iso(cutoff)
    return view
