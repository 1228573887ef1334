"""Compare a replayed commission ledger with the live one, and explain any line.

``diff(live_docs, replayed_docs, as_of=T)`` compares, as of the same instant
``T``, what both ledgers show (the documents of projection ``ledger``, e.g.
``PostgresProjectionStore.dump("ledger")``):

* every **line** visible at ``T`` (booked at or before ``T``), one by one: the
  same ids on both sides, and for each line every field -- amount, kind,
  partner, currency, booking time and sequence, source events, payable time,
  links, the status at ``T`` (``accrued``/``payable``/``paid``, with the payout
  that paid it) and the whole recorded **explanation** (plan version, tier,
  rates, ``Q`` before, parts, exact values, formula), down to the differing
  path;
* the **balances** per partner and currency at ``T`` (accrued, payable, paid,
  payouts, balance);
* the ledger's **discrepancy** facts visible at ``T``.

The two ledgers are **identical** exactly when there is no difference. Lines
are compared as the queries show them (:func:`projections.ledger_queries.lines_of`),
so a payout recorded after ``T`` does not count as a difference at ``T``; the
reducers' private working documents (``partner``, ``sale``...) are not compared:
they are how lines are computed, not what the ledger says.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from projections.envelope import iso, parse_time
from projections.ledger import ADJUSTMENT, CLAWBACK, DISCREPANCY, LINE, PLAN
from projections.ledger_queries import balances, explain, line_status, lines_of
from projections.port import Doc, DocKey
from projections.replay import KafkaCoordinates

__all__ = [
    "BALANCE",
    "DISCREPANCY_FACT",
    "LINE_CATEGORY",
    "AuditReport",
    "Difference",
    "diff",
    "explain_line",
    "render_explanation",
]

LINE_CATEGORY = "line"
BALANCE = "balance"
DISCREPANCY_FACT = "discrepancy"
_CATEGORY_ORDER = {LINE_CATEGORY: 0, BALANCE: 1, DISCREPANCY_FACT: 2}
_BALANCE_FIELDS = ("accrued", "payable", "paid", "payouts", "balance")
_ABSENT = ""
CSV_COLUMNS = ("category", "partner_id", "currency", "key", "field", "live", "replayed")

Docs = Mapping[DocKey, Doc]


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(frozen=True)
class Difference:
    """One difference: ``field`` is a path into the line (``amount_minor``, ``explanation.parts[1].extra_bps``),
    or ``presence`` when the line (balance, fact) exists on one side only; values are JSON, ``""`` when absent."""

    category: str
    partner_id: str
    currency: str
    key: str
    field: str
    live: str
    replayed: str

    def sort_key(self) -> tuple[int, str, str, str, str]:
        return (_CATEGORY_ORDER.get(self.category, 9), self.partner_id, self.currency, self.key, self.field)

    def to_row(self) -> list[str]:
        return [self.category, self.partner_id, self.currency, self.key, self.field, self.live, self.replayed]


@dataclass
class AuditReport:
    """The outcome of :func:`diff`. ``identical`` iff ``differences`` is empty."""

    as_of: str
    partner: str | None
    live_lines: int
    replayed_lines: int
    compared_lines: int
    balances_compared: int
    facts_compared: int
    differences: list[Difference] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences

    def keys_with_differences(self, category: str = LINE_CATEGORY) -> list[str]:
        """The line ids (or balance / fact keys) that differ, sorted."""
        return sorted({d.key for d in self.differences if d.category == category})

    def summary(self, *, listed: int = 30) -> str:
        scope = f"partner {self.partner}" if self.partner else "all partners"
        head = [
            f"Audit of the commission ledger as of {self.as_of} ({scope})",
            f"lines visible: live {self.live_lines}, replayed {self.replayed_lines}; compared {self.compared_lines}",
            f"balances compared: {self.balances_compared} partner/currency pairs; "
            f"discrepancy facts compared: {self.facts_compared}",
        ]
        if self.identical:
            return "\n".join([*head, "result: IDENTICAL (no difference)"]) + "\n"
        lines = self.keys_with_differences(LINE_CATEGORY)
        pairs = self.keys_with_differences(BALANCE)
        facts = self.keys_with_differences(DISCREPANCY_FACT)
        body = [
            f"result: DIFFERENT: {len(self.differences)} difference(s) in {len(lines)} line(s), "
            f"{len(pairs)} balance(s), {len(facts)} discrepancy fact(s)",
        ]
        for difference in self.differences[:listed]:
            body.append(
                f"- {difference.category} {difference.key} {difference.field}: "
                f"live {difference.live or '(absent)'} / replayed {difference.replayed or '(absent)'}"
            )
        if len(self.differences) > listed:
            body.append(f"... and {len(self.differences) - listed} more (see the CSV)")
        return "\n".join([*head, *body]) + "\n"

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for difference in self.differences:
            writer.writerow(difference.to_row())
        return out.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of,
            "partner": self.partner,
            "identical": self.identical,
            "live_lines": self.live_lines,
            "replayed_lines": self.replayed_lines,
            "compared_lines": self.compared_lines,
            "balances_compared": self.balances_compared,
            "facts_compared": self.facts_compared,
            "differences": len(self.differences),
            "lines_with_differences": self.keys_with_differences(LINE_CATEGORY),
            "balances_with_differences": self.keys_with_differences(BALANCE),
            "facts_with_differences": self.keys_with_differences(DISCREPANCY_FACT),
        }

    def write(self, directory: Path) -> list[Path]:
        """``summary.txt``, ``summary.json`` and ``differences.csv`` in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / "summary.txt", directory / "summary.json", directory / "differences.csv"]
        paths[0].write_text(self.summary(), encoding="utf-8")
        paths[1].write_bytes(orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n")
        paths[2].write_text(self.to_csv(), encoding="utf-8")
        return paths


# ============================================================================
# The comparison
# ============================================================================


def _lines_by_partner(docs: Docs) -> dict[str, dict[DocKey, Doc]]:
    grouped: dict[str, dict[DocKey, Doc]] = {}
    for (kind, key), doc in docs.items():
        if kind == LINE:
            grouped.setdefault(doc["partner_id"], {})[(kind, key)] = doc
    return grouped


def _paths(live: Any, replayed: Any, path: str) -> Iterator[tuple[str, str, str]]:
    """Every leaf path where ``live`` and ``replayed`` differ (JSON values)."""
    if live == replayed and type(live) is type(replayed):
        return
    if isinstance(live, dict) and isinstance(replayed, dict):
        for key in sorted(set(live) | set(replayed)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in live:
                yield sub, _ABSENT, _json(replayed[key])
            elif key not in replayed:
                yield sub, _json(live[key]), _ABSENT
            else:
                yield from _paths(live[key], replayed[key], sub)
        return
    if isinstance(live, list) and isinstance(replayed, list):
        for index in range(max(len(live), len(replayed))):
            sub = f"{path}[{index}]"
            if index >= len(live):
                yield sub, _ABSENT, _json(replayed[index])
            elif index >= len(replayed):
                yield sub, _json(live[index]), _ABSENT
            else:
                yield from _paths(live[index], replayed[index], sub)
        return
    yield path, _json(live), _json(replayed)


def diff(
    live_docs: Docs, replayed_docs: Docs, *, as_of: datetime | None = None, partner: str | None = None
) -> AuditReport:
    """Compare two ledgers (documents of projection ``ledger``) as of ``as_of`` (default: now, the same
    instant for both sides); ``partner`` restricts the comparison to that partner."""
    at = (as_of or datetime.now(UTC)).astimezone(UTC)
    live_by_partner = _lines_by_partner(live_docs)
    replayed_by_partner = _lines_by_partner(replayed_docs)
    partners = sorted(set(live_by_partner) | set(replayed_by_partner))
    if partner is not None:
        partners = [p for p in partners if p == partner]
    report = AuditReport(
        as_of=iso(at), partner=partner, live_lines=0, replayed_lines=0, compared_lines=0, balances_compared=0,
        facts_compared=0,
    )  # fmt: skip
    differences: list[Difference] = []
    for partner_id in partners:
        live_side = live_by_partner.get(partner_id, {})
        replayed_side = replayed_by_partner.get(partner_id, {})
        live_lines = {line["line_id"]: line for line in lines_of(live_side, partner_id, as_of=at)}
        replayed_lines = {line["line_id"]: line for line in lines_of(replayed_side, partner_id, as_of=at)}
        report.live_lines += len(live_lines)
        report.replayed_lines += len(replayed_lines)
        for line_id in sorted(set(live_lines) | set(replayed_lines)):
            live_line, replayed_line = live_lines.get(line_id), replayed_lines.get(line_id)
            currency = (live_line or replayed_line or {}).get("currency", "")
            if live_line is None or replayed_line is None:
                differences.append(
                    Difference(
                        LINE_CATEGORY,
                        partner_id,
                        currency,
                        line_id,
                        "presence",
                        _json(live_line["amount_minor"]) if live_line is not None else _ABSENT,
                        _json(replayed_line["amount_minor"]) if replayed_line is not None else _ABSENT,
                    )
                )
                continue
            report.compared_lines += 1
            for path, live_value, replayed_value in _paths(live_line, replayed_line, ""):
                differences.append(
                    Difference(LINE_CATEGORY, partner_id, currency, line_id, path, live_value, replayed_value)
                )
        currencies = sorted({line["currency"] for line in (*live_lines.values(), *replayed_lines.values())})
        for currency in currencies:
            report.balances_compared += 1
            live_balance = balances(live_side, partner_id, currency, at)
            replayed_balance = balances(replayed_side, partner_id, currency, at)
            for name in _BALANCE_FIELDS:
                if live_balance[name] != replayed_balance[name]:
                    differences.append(
                        Difference(
                            BALANCE,
                            partner_id,
                            currency,
                            f"{partner_id}/{currency}",
                            name,
                            _json(live_balance[name]),
                            _json(replayed_balance[name]),
                        )
                    )
    live_facts = _facts(live_docs, at, partner)
    replayed_facts = _facts(replayed_docs, at, partner)
    for key in sorted(set(live_facts) | set(replayed_facts)):
        live_fact, replayed_fact = live_facts.get(key), replayed_facts.get(key)
        partner_id = (live_fact or replayed_fact or {}).get("partner_id", "")
        if live_fact is None or replayed_fact is None:
            differences.append(
                Difference(
                    DISCREPANCY_FACT,
                    partner_id,
                    "",
                    key,
                    "presence",
                    _json(live_fact["what"]) if live_fact is not None else _ABSENT,
                    _json(replayed_fact["what"]) if replayed_fact is not None else _ABSENT,
                )
            )
            continue
        report.facts_compared += 1
        for path, live_value, replayed_value in _paths(live_fact, replayed_fact, ""):
            differences.append(Difference(DISCREPANCY_FACT, partner_id, "", key, path, live_value, replayed_value))
    report.differences = sorted(differences, key=Difference.sort_key)
    return report


def _facts(docs: Docs, at: datetime, partner: str | None) -> dict[str, Doc]:
    """Discrepancy facts visible at ``at`` (their source event recorded at or before it)."""
    return {
        key: doc
        for (kind, key), doc in docs.items()
        if kind == DISCREPANCY
        and (partner is None or doc.get("partner_id") == partner)
        and parse_time(doc["source"]["recorded_at"]) <= at
    }


# ============================================================================
# Explanations: events, plan version, tier, parts, arithmetic
# ============================================================================


def _accrual_part(explanation: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The accrual computation behind a line's explanation (accruals; adjustments keep it under ``accrual``)."""
    if explanation.get("what") == "accrual":
        return explanation
    nested = explanation.get("accrual")
    return nested if isinstance(nested, Mapping) else None


def explain_line(
    docs: Docs,
    line_id: str,
    *,
    coordinates: Mapping[int, KafkaCoordinates] | None = None,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """Everything an auditor asks about one line (raises ``KeyError`` for an unknown line).

    ``events``: the events that produced it, with their event-store position
    (``sequence``) and, when known (a replay from Kafka), their Kafka
    coordinates: the source event(s), the lines it corrects or pays and their
    sources, the plan version used and the tier change in force. Then the plan
    version, the tier, the rates, the accelerator parts, the formula and the
    arithmetic as text (:func:`projections.ledger_queries.explain`).
    """
    base = explain(docs, line_id)
    line = docs[(LINE, line_id)]
    explanation: Mapping[str, Any] = line["explanation"]
    at = (as_of or datetime.now(UTC)).astimezone(UTC)
    where = coordinates or {}
    events: list[dict[str, Any]] = []

    def add(
        role: str, sequence: int | None, event_id: str | None, event_type: str | None, recorded_at: str | None
    ) -> None:
        if any(e["sequence"] == sequence and e["role"] == role for e in events):
            return
        kafka = where.get(sequence) if sequence is not None else None
        events.append(
            {
                "role": role,
                "sequence": sequence,
                "event_id": event_id,
                "type": event_type,
                "recorded_at": recorded_at,
                "kafka": kafka.to_dict() if kafka is not None else None,
            }
        )

    source = explanation.get("source") or {}
    for event_id, sequence in zip(line["source_event_ids"], line["source_sequences"], strict=True):
        same = source.get("event_id") == event_id
        add(
            "source",
            sequence,
            event_id,
            source.get("type") if same else None,
            source.get("recorded_at") if same else None,
        )
    if line["kind"] == ADJUSTMENT:
        request = explanation.get("recalculation") or {}
        if request:
            add(
                "recalculation request",
                request.get("sequence"),
                request.get("event_id"),
                None,
                request.get("recorded_at"),
            )
    for linked_id in line.get("links", []):
        linked = docs.get((LINE, linked_id))
        if linked is None:
            continue
        linked_source = linked["explanation"].get("source") or {}
        for event_id, sequence in zip(linked["source_event_ids"], linked["source_sequences"], strict=True):
            same = linked_source.get("event_id") == event_id
            add(
                f"source of {linked_id}",
                sequence,
                event_id,
                linked_source.get("type") if same else None,
                linked_source.get("recorded_at") if same else None,
            )
    if line.get("paid_sequence") is not None and line["kind"] != "payout":
        add(f"payout {line['paid_by']}", line["paid_sequence"], None, "prm.payout.recorded.v1", line["paid_booked_at"])

    # The explanation that holds the computation: the line's own (accrual, adjustment) or, for a
    # clawback, that of the accrual it claws back (a clawback uses the original accrual).
    origin: Mapping[str, Any] = explanation
    if line["kind"] == CLAWBACK and line.get("links"):
        original = docs.get((LINE, line["links"][0]))
        if original is not None:
            origin = original["explanation"]
    accrual = _accrual_part(origin)
    plan_ref = origin.get("plan")
    plan_version: dict[str, Any] | None = None
    if plan_ref is not None:
        plan_doc = docs.get((PLAN, plan_ref["plan_id"])) or {}
        version = next((v for v in plan_doc.get("versions", []) if v["version"] == plan_ref["version"]), None)
        plan_version = {
            **plan_ref,
            "event_id": version.get("event_id") if version else None,
            "recorded_at": version.get("recorded_at") if version else None,
            "terms": version.get("terms") if version else None,
        }
        add(
            "plan version",
            plan_ref.get("recorded_sequence"),
            plan_version["event_id"],
            "prm.plan.version_published.v1",
            plan_version["recorded_at"],
        )
    tier: dict[str, Any] | None = None
    if accrual is not None:
        tier_change = origin.get("tier_change") if origin.get("what") == "accrual" else None
        tier = {"tier": accrual.get("tier"), "change": tier_change}
        if tier_change is not None:
            add("tier change in force", tier_change.get("sequence"), None, "prm.partner.tier_changed.v1", None)

    return {
        "line_id": line_id,
        "kind": line["kind"],
        "partner_id": line["partner_id"],
        "currency": line["currency"],
        "amount_minor": line["amount_minor"],
        "occurred_at": line["occurred_at"],
        "booked_at": line["booked_at"],
        "sequence": line["sequence"],
        "payable_at": line["payable_at"],
        "status": line_status(line, at),
        "status_as_of": iso(at),
        "events": sorted(events, key=lambda e: (e["sequence"] is None, e["sequence"] or 0, e["role"])),
        "plan_version": plan_version,
        "tier": tier,
        "rates": (
            {
                "base_bps": accrual.get("base_bps"),
                "base_rate_source": origin.get("base_rate_source"),
                "bonus_bps": accrual.get("bonus_bps"),
                "accelerators": accrual.get("accelerators"),
                "q_before": accrual.get("q_before"),
                "q_after": accrual.get("q_after"),
            }
            if accrual is not None
            else None
        ),
        "parts": list(accrual.get("parts", [])) if accrual is not None else [],
        "formula": explanation.get("formula"),
        "links": base["links"],
        "explanation": dict(explanation),
        "text": base["text"],
    }


def render_explanation(explained: Mapping[str, Any]) -> str:
    """The explanation as text for a terminal or a report."""
    out = [
        f"{explained['line_id']}  {explained['kind']}  {explained['amount_minor']:+d} {explained['currency']}"
        f"  partner {explained['partner_id']}  status {explained['status']} (as of {explained['status_as_of']})",
        "",
        "events:",
    ]
    for event in explained["events"]:
        kafka = event["kafka"]
        where = f"kafka {kafka['topic']}[{kafka['partition']}]@{kafka['offset']}" if kafka else "kafka: not known"
        position = event["sequence"] if event["sequence"] is not None else "?"
        out.append(f"  position {position:>8}  {event['role']}: {event['type'] or 'event'}")
        out.append(
            f"  {'':>17}id {event['event_id'] or '-'}"
            + (f", recorded {event['recorded_at']}" if event["recorded_at"] else "")
            + f", {where}"
        )
    plan = explained["plan_version"]
    if plan is not None:
        out += [
            "",
            f"plan {plan['plan_id']} version {plan['version']}: effective from {plan['effective_from']},"
            f" recorded at position {plan['recorded_sequence']}, hold {plan.get('hold_days')} days",
        ]
    tier = explained["tier"]
    if tier is not None:
        change = tier["change"]
        out.append(
            f"tier in force: {tier['tier']}"
            + (
                f" (since {change['effective_at']}, {change.get('source')}, recorded at position {change['sequence']})"
                if change
                else " (no tier change recorded before the sale: every partner starts registered)"
            )
        )
    rates = explained["rates"]
    if rates is not None:
        out.append(
            f"rates: base {rates['base_bps']} bps ({rates['base_rate_source'] or '-'}), bonus {rates['bonus_bps']} bps;"
            f" quarter revenue before {rates['q_before']}, after {rates['q_after']}"
        )
    if explained["parts"]:
        out.append("accelerator parts:")
        for part in explained["parts"]:
            out.append(
                f"  ({part['start_minor']}, {part['end_minor']}]: {part['amount_minor']} x"
                f" ({part['base_bps']} + {part['bonus_bps']} + {part['extra_bps']}) bps / 10000"
                f" = {part['exact_commission']}"
            )
    out += ["", "arithmetic:", explained["text"]]
    return "\n".join(out) + "\n"
