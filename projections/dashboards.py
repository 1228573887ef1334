"""Performance dashboards: per-partner facts that the KPI queries aggregate at read time.

Ordering model
--------------
In production this reducer runs in several Kafka workers. One partner's events
(its partner, registration and sale events) arrive in order on one partition,
direct sales on the partition keyed ``direct``, programme events elsewhere;
different partners interleave arbitrarily. So every document below is written
by exactly **one** stream (one partner, or ``direct``), and nothing channel-wide
is stored: channel totals are sums over partner documents, computed by
:mod:`projections.dashboard_queries` at query time.

Every update is also idempotent and order-insensitive on its own: facts are
keyed by their business id (a sale, a refund, a registration step, the
aggregate version of a partner event) and an already-known fact is a no-op,
timelines are kept sorted by ``(time, version)``, and "first sale" is a
minimum. Replaying an event, from the same or another source, changes nothing;
even a fully shuffled stream gives the same documents.

Documents (kind / key)
----------------------
``partner`` / ``P-0042``
    ``name``, ``applied_at``, ``approved_at``, ``activated_at``,
    ``first_sale_at``; ``segments`` (type, region, subregion, size from ``at``),
    ``tiers`` (tier in force from ``at`` = ``effective_at``), ``statuses``
    (lifecycle status from ``at``); each timeline entry carries ``v``, the
    partner aggregate's version, and is sorted by ``(at, v)``.
``partner_month`` / ``P-0042|2026-03``
    The partner's sales and refunds whose ``occurred_at`` falls in that UTC
    month: ``sales`` by sale id, ``refunds`` by ``<sale id>/<refund id>``,
    ``totals`` per currency (``gross``, ``refunds``, ``net``, ``sales``). The
    sale facts keep their ``at``: the "active partners" KPI reads them.
``direct`` / ``2026-03``
    The same shape for direct sales (``partner_id`` null).
``registration`` / ``R-0007``
    ``partner_id``, ``submitted_at``, ``value``, ``currency``, ``approved_at``,
    ``closed_at`` and ``outcome`` (rejected, won, lost, expired, withdrawn): the
    open interval ``[submitted_at, closed_at)`` gives the pipeline at any instant.

Times are stored as fixed-width UTC stamps (``2026-03-01T09:59:41.000000Z``),
so comparing two stamps as strings compares the instants. Every time is the
business time carried by the event (``at``, ``occurred_at``, ``submitted_at``,
``effective_at``), never the recording time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from projections.envelope import EventEnvelope, parse_time
from projections.port import Doc, DocKey, ReadView

PARTNER = "partner"
PARTNER_MONTH = "partner_month"
DIRECT = "direct"
REGISTRATION = "registration"
KINDS = (PARTNER, PARTNER_MONTH, DIRECT, REGISTRATION)

_STATUS_OF_EVENT = {
    "applied": "applied",
    "approved": "approved",
    "onboarding_started": "onboarding",
    "rejected": "rejected",
    "activated": "active",
    "suspended": "suspended",
    "reinstated": "active",
    "terminated": "terminated",
}
_REGISTRATION_OUTCOMES = {"rejected", "won", "lost", "expired", "withdrawn"}
_HANDLED = (
    {f"prm.partner.{name}.v1" for name in (*_STATUS_OF_EVENT, "segment_changed", "tier_changed")}
    | {f"prm.registration.{name}.v1" for name in ("submitted", "approved", *_REGISTRATION_OUTCOMES)}
    | {"prm.sale.recorded.v1", "prm.sale.refunded.v1"}
)


def stamp(value: datetime) -> str:
    """A UTC instant as a fixed-width, lexicographically ordered string."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value.isoformat()} refused")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stamp_text(text: str) -> str:
    """Normalise an ISO 8601 instant from an event's data to :func:`stamp` form."""
    return stamp(parse_time(text))


def month_key(partner_id: str, month: str) -> str:
    return f"{partner_id}|{month}"


def new_partner_doc(partner_id: str) -> Doc:
    return {
        "partner_id": partner_id,
        "name": None,
        "applied_at": None,
        "approved_at": None,
        "activated_at": None,
        "first_sale_at": None,
        "segments": [],
        "tiers": [],
        "statuses": [],
    }


def new_month_doc(owner: str, month: str) -> Doc:
    return {"owner": owner, "month": month, "sales": {}, "refunds": {}, "totals": {}}


def new_registration_doc(registration_id: str, partner_id: str | None) -> Doc:
    return {
        "registration_id": registration_id,
        "partner_id": partner_id,
        "submitted_at": None,
        "value": None,
        "currency": None,
        "approved_at": None,
        "closed_at": None,
        "outcome": None,
    }


def _insert_entry(timeline: list[dict[str, Any]], entry: dict[str, Any]) -> bool:
    """Insert a timeline entry unless one with the same version exists; keep ``(at, v)`` order."""
    if any(existing["v"] == entry["v"] for existing in timeline):
        return False
    timeline.append(entry)
    timeline.sort(key=lambda item: (item["at"], item["v"]))
    return True


def _earliest(current: str | None, candidate: str) -> str:
    return candidate if current is None or candidate < current else current


class Dashboards:
    """Reducer of the performance dashboards (see the module docstring for the documents)."""

    name = "dashboards"

    def handles(self, event: EventEnvelope) -> bool:
        return event.type in _HANDLED

    def prefetch_keys(self, event: EventEnvelope) -> list[DocKey]:
        """The documents ``apply`` reads for ``event`` (see ``projections.port.Prefetching``)."""
        kind = event.kind
        if kind == "partner":
            return [(PARTNER, event.subject)]
        if kind == "registration":
            return [(REGISTRATION, event.subject)]
        if kind == "sale":
            occurred = parse_time(event.data["occurred_at"])
            month = f"{occurred.year:04d}-{occurred.month:02d}"
            if not event.partner_id:
                return [(DIRECT, month)]
            return [(PARTNER_MONTH, month_key(event.partner_id, month)), (PARTNER, event.partner_id)]
        return []

    def apply(self, event: EventEnvelope, view: ReadView) -> None:
        kind = event.kind
        if kind == "partner":
            self._partner(event, view)
        elif kind == "registration":
            self._registration(event, view)
        elif kind == "sale":
            self._sale(event, view)

    # ---- partners -------------------------------------------------------
    def _partner(self, event: EventEnvelope, view: ReadView) -> None:
        data = event.data
        partner_id = event.subject
        doc = view.get(PARTNER, partner_id) or new_partner_doc(partner_id)
        version = event.aggregate_version
        name = event.name
        changed = False
        if name == "applied":
            at = stamp_text(data["at"])
            doc["name"] = data["name"]
            doc["applied_at"] = at
            segment = {
                "at": at,
                "v": version,
                "type": data["type"],
                "region": data["region"],
                "subregion": data.get("subregion"),
                "size": data["size"],
            }
            _insert_entry(doc["segments"], segment)
            _insert_entry(doc["tiers"], {"at": at, "v": version, "tier": "registered", "source": "initial"})
            changed = True
        elif name == "segment_changed":
            changed = _insert_entry(
                doc["segments"],
                {
                    "at": stamp_text(data["at"]),
                    "v": version,
                    "type": data["type"],
                    "region": data["region"],
                    "subregion": data.get("subregion"),
                    "size": data["size"],
                },
            )
        elif name == "tier_changed":
            changed = _insert_entry(
                doc["tiers"],
                {"at": stamp_text(data["effective_at"]), "v": version, "tier": data["tier"], "source": data["source"]},
            )
        if name in _STATUS_OF_EVENT:
            at = stamp_text(data["at"])
            status = _STATUS_OF_EVENT[name]
            changed = _insert_entry(doc["statuses"], {"at": at, "v": version, "status": status}) or changed
            if status == "approved":
                doc["approved_at"] = _earliest(doc["approved_at"], at)
            elif name == "activated":
                doc["activated_at"] = _earliest(doc["activated_at"], at)
        if changed:
            view.put(PARTNER, partner_id, doc)

    # ---- registrations ---------------------------------------------------
    def _registration(self, event: EventEnvelope, view: ReadView) -> None:
        data = event.data
        registration_id = event.subject
        doc = view.get(REGISTRATION, registration_id) or new_registration_doc(registration_id, event.partner_id)
        before = dict(doc)
        name = event.name
        if doc["partner_id"] is None:
            doc["partner_id"] = event.partner_id
        if name == "submitted":
            doc["submitted_at"] = stamp_text(data["submitted_at"])
            doc["value"] = int(data["estimated_value_minor"])
            doc["currency"] = data["currency"]
        elif name == "approved":
            doc["approved_at"] = stamp_text(data["at"])
        elif name in _REGISTRATION_OUTCOMES:
            doc["closed_at"] = stamp_text(data["at"])
            doc["outcome"] = name
        if doc != before:
            view.put(REGISTRATION, registration_id, doc)

    # ---- sales and refunds -----------------------------------------------
    def _sale(self, event: EventEnvelope, view: ReadView) -> None:
        data = event.data
        sale_id = event.subject
        partner_id = event.partner_id
        occurred = parse_time(data["occurred_at"])
        at = stamp(occurred)
        month = f"{occurred.year:04d}-{occurred.month:02d}"
        kind, key = (PARTNER_MONTH, month_key(partner_id, month)) if partner_id else (DIRECT, month)
        owner = partner_id or DIRECT
        doc = view.get(kind, key) or new_month_doc(owner, month)
        currency = data["currency"]
        if event.name == "recorded":
            if sale_id in doc["sales"]:
                return
            amount = int(data["total_minor"])
            doc["sales"][sale_id] = {"at": at, "currency": currency, "amount": amount}
            totals = _totals(doc, currency)
            totals["gross"] += amount
            totals["net"] += amount
            totals["sales"] += 1
            if partner_id:
                partner = view.get(PARTNER, partner_id) or new_partner_doc(partner_id)
                first = _earliest(partner["first_sale_at"], at)
                if first != partner["first_sale_at"]:
                    partner["first_sale_at"] = first
                    view.put(PARTNER, partner_id, partner)
        else:
            refund_key = f"{sale_id}/{data['refund_id']}"
            if refund_key in doc["refunds"]:
                return
            amount = int(data["amount_minor"])
            doc["refunds"][refund_key] = {"at": at, "currency": currency, "amount": amount, "sale_id": sale_id}
            totals = _totals(doc, currency)
            totals["refunds"] += amount
            totals["net"] -= amount
        view.put(kind, key, doc)


def _totals(doc: Doc, currency: str) -> dict[str, int]:
    totals: dict[str, int] = doc["totals"].setdefault(currency, {"gross": 0, "refunds": 0, "net": 0, "sales": 0})
    return totals
