"""Queries over the channel-conflicts read model (documents written by ``projections.conflicts``).

The functions that take documents are pure; ``load_conflicts`` and
``conflict_detail`` only read the projection store through its port.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.clock import utc
from domain.conflicts import CONFLICT_KINDS
from projections.conflicts import ACCOUNT, CONFLICT, NAME, REGISTRATION, party_ref, registration_state
from projections.envelope import iso, parse_time
from projections.port import Doc, ProjectionStore

STATUSES = ("open", "resolved", "dismissed")
_CLOSED_REGISTRATION = ("rejected", "lost", "expired", "withdrawn")


def load_conflicts(store: ProjectionStore) -> list[Doc]:
    """Every conflict document, in detection order."""
    return sorted(store.load_kind(NAME, CONFLICT).values(), key=_order)


def _order(conflict: Doc) -> tuple[int, str]:
    return conflict["sequence"], conflict["conflict_id"]


def list_conflicts(
    conflicts: Iterable[Doc],
    *,
    kind: str | None = None,
    status: str | None = None,
    partner_id: str | None = None,
) -> list[Doc]:
    """Conflicts of ``kind``, in ``status``, involving ``partner_id`` (each filter optional), in detection order."""
    if kind is not None and kind not in CONFLICT_KINDS:
        raise ValueError(f"unknown conflict kind {kind!r}; kinds are {', '.join(CONFLICT_KINDS)}")
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown conflict status {status!r}; statuses are {', '.join(STATUSES)}")
    return sorted(
        (
            c
            for c in conflicts
            if (kind is None or c["kind"] == kind)
            and (status is None or c["status"] == status)
            and (partner_id is None or partner_id in c["partner_ids"])
        ),
        key=_order,
    )


def find_conflict(conflicts: Iterable[Doc], conflict_id: str) -> Doc | None:
    """The conflict with this id, or the one the id is an alias of (the same pair named the other way)."""
    for conflict in conflicts:
        if conflict["conflict_id"] == conflict_id or conflict_id in conflict["aliases"]:
            return conflict
    return None


def conflict_detail(store: ProjectionStore, conflict_id: str) -> dict[str, Any] | None:
    """One conflict with its evidence, and each party's status now (from the account documents).

    ``moot`` tells when a registration of the conflict has closed since (rejected,
    lost, expired or withdrawn) while the conflict is still open: a candidate
    for dismissal.
    """
    conflict = store.load(NAME, [(CONFLICT, conflict_id)]).get((CONFLICT, conflict_id))
    if conflict is None:
        conflict = find_conflict(store.load_kind(NAME, CONFLICT).values(), conflict_id)
    if conflict is None:
        return None
    parties = []
    for side in ("earlier", "later"):
        party = conflict[side]
        now: dict[str, Any] = {"side": side, "type": party["type"], "id": party["id"]}
        if party["type"] == REGISTRATION:
            key = (ACCOUNT, party_ref(REGISTRATION, party["id"]))
            account = store.load(NAME, [key]).get(key)
            state = registration_state(account) if account is not None else None
            now["status_now"] = state.status if state else None
            now["protected_until_now"] = iso(state.protected_until) if state and state.protected_until else None
        parties.append(now)
    moot = conflict["status"] == "open" and any(p.get("status_now") in _CLOSED_REGISTRATION for p in parties)
    return {"conflict": conflict, "evidence": conflict["evidence"], "parties": parties, "moot": moot}


@dataclass(frozen=True)
class ConflictCounts:
    """Conflicts of one kind in a period ``[start, end)``, by recording time."""

    opened: int = 0
    resolved: int = 0
    dismissed: int = 0
    open_at_end: int = 0


def conflict_counts(
    conflicts: Iterable[Doc], start: datetime, end: datetime, *, partner_id: str | None = None
) -> dict[str, ConflictCounts]:
    """Opened, resolved, dismissed in ``[start, end)`` and open at ``end``, for every kind.

    Opened counts by ``detected_at``; resolved and dismissed by the recording
    time of the decision in force; a conflict is open at ``end`` when it was
    detected before ``end`` and its first decision (if any) was recorded at or
    after ``end``.
    """
    start, end = utc(start), utc(end)
    if end <= start:
        raise ValueError("a period must end after it starts")
    tallies = {kind: [0, 0, 0, 0] for kind in CONFLICT_KINDS}
    for conflict in list_conflicts(conflicts, partner_id=partner_id):
        tally = tallies[conflict["kind"]]
        detected = parse_time(conflict["detected_at"])
        closed = parse_time(conflict["closed_at"]) if conflict["closed_at"] else None
        if start <= detected < end:
            tally[0] += 1
        decision = conflict["decision"]
        if decision is not None and start <= parse_time(decision["recorded_at"]) < end:
            tally[1 if decision["status"] == "resolved" else 2] += 1
        if detected < end and (closed is None or closed >= end):
            tally[3] += 1
    return {kind: ConflictCounts(*tally) for kind, tally in tallies.items()}
