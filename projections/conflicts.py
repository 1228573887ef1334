"""Channel conflicts (channel.md, "Channel conflicts"), detected as events arrive, in any order.

Every registration, opportunity and sale is stored as an *account document*
(customer, pre-normalised matching keys, party, and for registrations a
status timeline by sequence). Each new document, and each change to a
registration's timeline, is compared with the stored documents of the other
parties it could conflict with, and each conflict is recomputed as a pure
function of the two documents: so whichever of two events is processed second
finds the conflict, and a registration event that arrives late (a withdrawal
recorded before the other party, say) removes a conflict that the state known
so far suggested. The end result does not depend on how the per-partner
streams interleave. See docs/conflicts.md.

Document kinds of the ``conflicts`` projection:

- ``account`` / ``registration:R-1``, ``opportunity:O-1``, ``sale:S-1``: the parties;
- ``index`` / ``domain:<host>``, ``tax:<id>``: the parties holding that domain or tax key;
- ``index`` / ``name-lengths:<side>:<CC>`` (side ``registration`` or ``deal``): the lengths of the names
  of that side in that country, and ``names:<side>:<CC>:<n>``: those names of length ``n`` by party, each
  name normalised with its words sorted (what ``token_sort_ratio`` compares). A name can only reach a
  similarity of ``2 min(n, m) / (n + m)`` with a name of length ``m``, so a search reads only the lengths that
  can reach the threshold, and a new party rewrites one small document instead of the country's whole list.
  (Before this layout, one ``names:<side>:<CC>`` document held every name of the country: a conflicts read
  model written by an older version must be rebuilt.)
- ``conflict`` / conflict id: the conflicts;
- ``decision`` / conflict id: resolutions and dismissals recorded for that id;
- ``settings`` / ``name_similarity``: the name-similarity threshold by sequence.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rapidfuzz import fuzz, process

from domain.conflicts import DIRECT_VS_PARTNER, PARTNER_VS_PARTNER, SALE_OUTSIDE_REGISTRATION, conflict_id
from domain.matching import Customer, account_keys, match_accounts
from domain.program import DEFAULT_SETTINGS
from domain.registration import APPROVED, SUBMITTED, WON
from projections.envelope import EventEnvelope, iso, parse_time
from projections.port import Doc, DocKey, ReadView

NAME = "conflicts"
ACCOUNT = "account"
INDEX = "index"
CONFLICT = "conflict"
DECISION = "decision"
SETTINGS = "settings"
THRESHOLD_KEY = "name_similarity"

REGISTRATION = "registration"
OPPORTUNITY = "opportunity"
SALE = "sale"

_REGISTRATION_UPDATES = frozenset(
    {
        "approved",
        "rejected",
        "protection_extended",
        "won",
        "lost",
        "expired",
        "withdrawn",
        "conflict_resolved",
        "conflict_dismissed",
    }
)
_DECISIONS = {"conflict_resolved": "resolved", "conflict_dismissed": "dismissed"}
_HANDLED = frozenset(
    {f"prm.registration.{name}.v1" for name in {"submitted", *_REGISTRATION_UPDATES}}
    | {"prm.sale.recorded.v1", "prm.opportunity.opened.v1", "prm.program.settings_changed.v1"}
)
_PROTECTING = (APPROVED, WON)
_PARTY_OF = {REGISTRATION: REGISTRATION, OPPORTUNITY: OPPORTUNITY, SALE: SALE}
# Pre-filter names a hair below the threshold, then let ``match_accounts`` decide exactly.
_NAME_PREFILTER_SLACK = 1e-6


def party_ref(party_type: str, party_id: str) -> str:
    return f"{party_type}:{party_id}"


def lengths_key(side: str, country: str) -> str:
    """Index key of the name lengths present on one side (``registration`` or ``deal``) in one country."""
    return f"name-lengths:{side}:{country}"


def names_key(side: str, country: str, length: int) -> str:
    """Index key of the sorted names of ``length`` characters of one side in one country."""
    return f"names:{side}:{country}:{length}"


def sorted_name(name: str) -> str:
    """A normalised name with its words sorted: ``fuzz.ratio`` of two of these is their ``token_sort_ratio``.

    Normalised names are words of letters and digits joined by single spaces
    (``domain.matching.normalise_name``), so splitting on a space is exactly
    rapidfuzz's whitespace split.
    """
    return " ".join(sorted(name.split(" ")))


def may_reach(length: int, other: int, cutoff: float) -> bool:
    """Whether names of ``length`` and ``other`` characters can score ``cutoff`` (0..100) or more.

    The Indel distance of two strings is at least the difference of their
    lengths, so the ratio is at most ``200 min / (length + other)``; one point
    of slack keeps float rounding on the safe side (a wider search, never a narrower one).
    """
    return 200 * min(length, other) + (length + other) >= cutoff * (length + other)


def _reachable(lengths: list[int], length: int, cutoff: float) -> list[int]:
    """The ``lengths`` (sorted) that :func:`may_reach` ``length`` at ``cutoff``: a contiguous run around it.

    ``may_reach(length, m)`` grows with ``m`` up to ``length`` and falls after it, so
    the run is the integers ``low..high`` found by stepping out from ``length``.
    """
    if not lengths:
        return []
    low, high = length, length
    while low > 1 and low > lengths[0] and may_reach(length, low - 1, cutoff):
        low -= 1
    while high < lengths[-1] and may_reach(length, high + 1, cutoff):
        high += 1
    return lengths[bisect_left(lengths, low) : bisect_right(lengths, high)]


def _sides(party_type: str) -> list[str]:
    """The name-index sides a party is compared with: a registration with both, a deal with registrations."""
    return [REGISTRATION, "deal"] if party_type == REGISTRATION else [REGISTRATION]


def _side(party_type: str) -> str:
    return REGISTRATION if party_type == REGISTRATION else "deal"


@dataclass(frozen=True)
class RegistrationState:
    """A registration as known before a given sequence."""

    status: str
    protected_from: datetime | None = None
    protected_until: datetime | None = None

    def protects(self, at: datetime) -> bool:
        return (
            self.status in _PROTECTING
            and self.protected_from is not None
            and self.protected_until is not None
            and self.protected_from <= at < self.protected_until
        )


def registration_state(account: Doc, before: int | None = None) -> RegistrationState | None:
    """Fold a registration's timeline over the events recorded before ``before`` (all when None).

    None when the registration was not yet submitted then. Mirrors the command
    side's index (``domain.registry``): protection from approval to
    ``protected_until``, moved by extensions and cut by a lost conflict; a won
    registration keeps protecting its account until then.
    """
    if "sequence" not in account or (before is not None and account["sequence"] >= before):
        return None
    status, start, until = SUBMITTED, None, None
    for entry in account["timeline"]:
        if before is not None and entry["sequence"] >= before:
            break
        event = entry["event"]
        if event == "approved":
            status, start, until = APPROVED, parse_time(entry["at"]), parse_time(entry["protected_until"])
        elif event == "protection_extended":
            until = parse_time(entry["protected_until"])
        elif event == "conflict_resolved":
            if entry["lost_protection"] and until is not None:
                until = min(until, parse_time(entry["at"]))
        elif event != "conflict_dismissed":
            status = event  # won, rejected, lost, expired, withdrawn
    return RegistrationState(status, start, until)


def _threshold_bp(changes: list[dict[str, Any]], before: int) -> int:
    """The name-similarity threshold (basis points) in force for an event at ``before``."""
    value = DEFAULT_SETTINGS.name_similarity_threshold_bp
    for change in changes:
        if change["sequence"] >= before:
            break
        value = change["threshold_bp"]
    return int(value)


def _insert(entries: list[dict[str, Any]], entry: dict[str, Any]) -> bool:
    """Insert ``entry`` keeping ``entries`` sorted by sequence; False if that sequence is already there."""
    if any(e["sequence"] == entry["sequence"] for e in entries):
        return False
    entries.append(entry)
    entries.sort(key=lambda e: e["sequence"])
    return True


def _keys(customer: Customer) -> dict[str, Any]:
    """The account document's keys, from the customer's (memoised) ``account_keys``: a new dict each time."""
    keys = account_keys(customer)
    taxes = {keys.tax_key, keys.tax_id} - {None}
    return {
        "domain": keys.domain,
        "tax": sorted(t for t in taxes if t is not None),
        "name": keys.name,
        "country": keys.country,
    }


def _exact_keys(keys: dict[str, Any]) -> list[str]:
    """Index keys of the exact rules: the normalised domain, the tax id and its parent key."""
    return ([f"domain:{keys['domain']}"] if keys["domain"] else []) + [f"tax:{t}" for t in keys["tax"]]


def _pair(a: Doc, b: Doc) -> tuple[str, Doc, Doc] | None:
    """The kind of conflict two parties could have, with the earlier (protected) party first."""
    if a["type"] != REGISTRATION:
        a, b = b, a
    if a["type"] != REGISTRATION:
        return None
    if b["type"] == REGISTRATION:
        if a["partner_id"] == b["partner_id"]:
            return None
        first, second = (a, b) if a["sequence"] < b["sequence"] else (b, a)
        return PARTNER_VS_PARTNER, first, second
    if b["partner_id"] is None:
        return DIRECT_VS_PARTNER, a, b
    if b["partner_id"] == a["partner_id"]:
        return None
    return SALE_OUTSIDE_REGISTRATION, a, b


def _summary(account: Doc) -> dict[str, Any]:
    summary = {
        "type": account["type"],
        "id": account["id"],
        "partner_id": account["partner_id"],
        "sequence": account["sequence"],
        "at": account["at"],
        "customer": account["customer"],
    }
    for extra in ("owner", "registration_id"):
        if extra in account:
            summary[extra] = account[extra]
    return summary


def detect(kind: str, first: Doc, second: Doc, threshold_bp: int) -> dict[str, Any] | None:
    """The conflict between ``first`` (a registration) and the later party ``second``, or None.

    Evaluated as of ``second``'s event: ``first``'s timeline before that
    sequence, at ``second``'s business time (submitted, opened or occurred).
    """
    sequence = second["sequence"]
    state = registration_state(first, before=sequence)
    if state is None:
        return None
    blocks = (kind == PARTNER_VS_PARTNER and state.status == SUBMITTED) or state.protects(parse_time(second["at"]))
    if not blocks:
        return None
    threshold = threshold_bp / 10_000
    evidence = match_accounts(Customer.from_dict(first["customer"]), Customer.from_dict(second["customer"]), threshold)
    if evidence is None:
        return None
    cid = conflict_id(kind, first["id"], second["id"])
    earlier = _summary(first) | {
        "status": state.status,
        "protected_from": iso(state.protected_from) if state.protected_from else None,
        "protected_until": iso(state.protected_until) if state.protected_until else None,
    }
    parties = (first, second)
    return {
        "conflict_id": cid,
        "kind": kind,
        "aliases": [conflict_id(kind, second["id"], first["id"])] if kind == PARTNER_VS_PARTNER else [],
        "earlier": earlier,
        "later": _summary(second),
        "registration_ids": [p["id"] for p in parties if p["type"] == REGISTRATION],
        "partner_ids": sorted({p["partner_id"] for p in parties if p["partner_id"] is not None}),
        "opportunity_id": second["id"] if second["type"] == OPPORTUNITY else None,
        "sale_id": second["id"] if second["type"] == SALE else None,
        "evidence": evidence.to_dict() | {"threshold": threshold},
        "detected_at": second["recorded_at"],
        "sequence": sequence,
        "reported_by_command_side": cid in second["conflicts_with"] if kind == PARTNER_VS_PARTNER else None,
    }


def with_decisions(conflict: dict[str, Any], decisions: list[dict[str, Any]]) -> dict[str, Any]:
    """The conflict with its status: the latest decision rules; it closed at the first one."""
    ordered = sorted({d["sequence"]: d for d in decisions}.values(), key=lambda d: d["sequence"])
    latest = ordered[-1] if ordered else None
    return conflict | {
        "status": latest["status"] if latest else "open",
        "decision": latest,
        "decisions": ordered,
        "closed_at": ordered[0]["recorded_at"] if ordered else None,
    }


class ChannelConflicts:
    """The channel-conflicts projection (a reducer over recorded events)."""

    name = NAME
    sparse_kinds = frozenset({CONFLICT, DECISION})
    """Kinds looked up for every candidate pair, though few pairs have one: a writer that keeps documents
    across batches (``consumers.worker.ReadModelWriter``) reads their keys once instead of each missing one."""

    def handles(self, event: EventEnvelope) -> bool:
        return event.type in _HANDLED

    def prefetch_keys(self, event: EventEnvelope) -> list[DocKey]:
        """The documents ``apply`` reads first for ``event`` (see ``projections.port.Prefetching``).

        Not named: the accounts, conflicts and decisions of the candidates found
        (they depend on the index), and name lengths outside the range the default
        threshold can reach (read when a lower threshold is in force).
        """
        kind, name, data = event.kind, event.name, event.data
        wanted: list[DocKey] = [(SETTINGS, THRESHOLD_KEY)]
        if kind == REGISTRATION and name != "submitted":
            wanted.append((ACCOUNT, party_ref(REGISTRATION, event.subject)))
            if name in _DECISIONS and "conflict_id" in data:
                wanted.append((DECISION, data["conflict_id"]))
            return wanted
        party = _PARTY_OF.get(kind)
        if party is None:
            return wanted
        wanted.append((ACCOUNT, party_ref(party, data[f"{party}_id"])))
        keys = _keys(Customer.from_dict(data["customer"]))
        wanted.extend((INDEX, k) for k in _exact_keys(keys))
        if keys["name"] and keys["country"]:
            length = len(sorted_name(keys["name"]))
            cutoff = DEFAULT_SETTINGS.name_similarity_threshold_bp / 100 - _NAME_PREFILTER_SLACK
            reach = [m for m in range(1, 2 * length + 2) if may_reach(length, m, cutoff)]
            wanted.append((INDEX, names_key(_side(party), keys["country"], length)))
            for side in {_side(party), *_sides(party)}:
                wanted.append((INDEX, lengths_key(side, keys["country"])))
            for side in _sides(party):
                wanted.extend((INDEX, names_key(side, keys["country"], m)) for m in reach)
        return wanted

    def apply(self, event: EventEnvelope, view: ReadView) -> None:
        kind, name, data = event.kind, event.name, event.data
        if kind == REGISTRATION and name == "submitted":
            self._add_party(view, event, REGISTRATION, data["registration_id"], data["submitted_at"])
        elif kind == REGISTRATION:
            self._update_registration(view, event)
        elif kind == OPPORTUNITY:
            self._add_party(view, event, OPPORTUNITY, data["opportunity_id"], data["opened_at"])
        elif kind == SALE:
            self._add_party(view, event, SALE, data["sale_id"], data["occurred_at"])
        elif kind == "program" and "name_similarity_threshold_bp" in data["changes"]:
            self._change_threshold(view, event.sequence, data["changes"]["name_similarity_threshold_bp"])

    # ---- account documents ------------------------------------------------
    def _add_party(self, view: ReadView, event: EventEnvelope, party_type: str, party_id: str, at: str) -> None:
        ref = party_ref(party_type, party_id)
        existing = view.get(ACCOUNT, ref)
        if existing is not None and "sequence" in existing:
            return  # re-delivered
        data = event.data
        customer = Customer.from_dict(data["customer"])
        keys = _keys(customer)
        account: Doc = {
            "ref": ref,
            "type": party_type,
            "id": party_id,
            "partner_id": data.get("partner_id") or None,
            "customer": customer.to_dict(),
            "keys": keys,
            "sequence": event.sequence,
            "at": iso(parse_time(at)),
            "recorded_at": iso(event.time),
        }
        if party_type == REGISTRATION:
            account["conflicts_with"] = sorted(c["conflict_id"] for c in data.get("conflicts_with") or [])
            # Later events of the registration may have been seen first (kept in a stub).
            account["timeline"] = existing["timeline"] if existing else []
        elif party_type == SALE:
            account["registration_id"] = data.get("registration_id")
        else:
            account["owner"] = data.get("owner")
        view.put(ACCOUNT, ref, account)
        for index_key in _exact_keys(keys):
            entry = view.get(INDEX, index_key) or {"parties": []}
            entry["parties"] = sorted({*entry["parties"], ref})
            view.put(INDEX, index_key, entry)
        if keys["name"] and keys["country"]:
            side, name = _side(party_type), sorted_name(keys["name"])
            directory = view.get(INDEX, lengths_key(side, keys["country"])) or {"lengths": []}
            if len(name) not in directory["lengths"]:
                directory["lengths"] = sorted([*directory["lengths"], len(name)])
                view.put(INDEX, lengths_key(side, keys["country"]), directory)
            bucket = view.get(INDEX, names_key(side, keys["country"], len(name))) or {"names": {}}
            bucket["names"][ref] = name
            view.put(INDEX, names_key(side, keys["country"], len(name)), bucket)
        self._reconcile(view, account)

    def _update_registration(self, view: ReadView, event: EventEnvelope) -> None:
        data, ref = event.data, party_ref(REGISTRATION, event.subject)
        entry: dict[str, Any] = {"sequence": event.sequence, "event": event.name, "at": data["at"]}
        if "protected_until" in data:
            entry["protected_until"] = data["protected_until"]
        if event.name == "conflict_resolved":
            entry["lost_protection"] = bool(data["lost_protection"])
        account = view.get(ACCOUNT, ref) or {"ref": ref, "type": REGISTRATION, "id": event.subject, "timeline": []}
        if not _insert(account["timeline"], entry):
            return  # re-delivered
        if event.name in _DECISIONS:
            self._record_decision(view, event)
        view.put(ACCOUNT, ref, account)
        self._reconcile(view, account)

    def _record_decision(self, view: ReadView, event: EventEnvelope) -> None:
        data = event.data
        decision: dict[str, Any] = {
            "sequence": event.sequence,
            "status": _DECISIONS[event.name],
            "registration_id": event.subject,
            "winner": data.get("winner"),
            "by": data["actor"],
            "reason": data["reason"],
            "at": data["at"],
            "recorded_at": iso(event.time),
        }
        doc = view.get(DECISION, data["conflict_id"]) or {"kind": data["kind"], "decisions": []}
        if _insert(doc["decisions"], decision):
            view.put(DECISION, data["conflict_id"], doc)

    def _change_threshold(self, view: ReadView, sequence: int, threshold_bp: int) -> None:
        doc = view.get(SETTINGS, THRESHOLD_KEY) or {"changes": []}
        if not _insert(doc["changes"], {"sequence": sequence, "threshold_bp": int(threshold_bp)}):
            return
        view.put(SETTINGS, THRESHOLD_KEY, doc)
        # Name matches decided after this change may differ: look at every registration again.
        for _, account in list(view.scan(ACCOUNT)):
            if account["type"] == REGISTRATION:
                self._reconcile(view, account)

    # ---- detection ----------------------------------------------------------
    def _reconcile(self, view: ReadView, account: Doc) -> None:
        """Recompute every conflict between ``account`` and the parties whose customer may match it."""
        if "sequence" not in account:
            return
        changes = (view.get(SETTINGS, THRESHOLD_KEY) or {"changes": []})["changes"]
        lowest = min([DEFAULT_SETTINGS.name_similarity_threshold_bp, *(c["threshold_bp"] for c in changes)])
        for ref in self._candidates(view, account, lowest / 10_000):
            other = view.get(ACCOUNT, ref)
            pair = _pair(account, other) if other is not None else None
            if pair is None:
                continue
            kind, first, second = pair
            cid = conflict_id(kind, first["id"], second["id"])
            found = detect(kind, first, second, _threshold_bp(changes, second["sequence"]))
            existing = view.get(CONFLICT, cid)
            if found is None:
                if existing is not None:
                    view.delete(CONFLICT, cid)  # what was known so far suggested a conflict; it was not one
                continue
            conflict = with_decisions(found, self._decisions(view, [cid, *found["aliases"]]))
            if conflict != existing:
                view.put(CONFLICT, cid, conflict)

    @staticmethod
    def _decisions(view: ReadView, conflict_ids: list[str]) -> list[dict[str, Any]]:
        return [d for cid in conflict_ids for d in (view.get(DECISION, cid) or {"decisions": []})["decisions"]]

    def _candidates(self, view: ReadView, account: Doc, lowest_threshold: float) -> list[str]:
        """Refs of other parties that may be the same account (a superset of ``match_accounts``)."""
        keys = account["keys"]
        refs: set[str] = set()
        for index_key in _exact_keys(keys):
            refs.update((view.get(INDEX, index_key) or {"parties": []})["parties"])
        if keys["name"] and keys["country"]:
            name = sorted_name(keys["name"])
            cutoff = lowest_threshold * 100 - _NAME_PREFILTER_SLACK
            # Every reachable bucket's names in one list, compared in one call (a call per bucket cost
            # as much as the comparisons); the refs are a set, so the order of the hits does not matter.
            names: list[str] = []
            owners: list[str] = []
            for side in _sides(account["type"]):
                directory = view.get(INDEX, lengths_key(side, keys["country"]))
                for length in _reachable(directory["lengths"] if directory is not None else [], len(name), cutoff):
                    bucket = view.get(INDEX, names_key(side, keys["country"], length))
                    if bucket is not None:
                        names.extend(bucket["names"].values())
                        owners.extend(bucket["names"])
            if names:
                # fuzz.ratio on sorted names is token_sort_ratio, without re-sorting every stored name.
                hits = process.extract(name, names, scorer=fuzz.ratio, score_cutoff=cutoff, limit=None)
                refs.update(owners[index] for _, _, index in hits)
        refs.discard(account["ref"])
        if account["type"] != REGISTRATION:
            refs = {ref for ref in refs if ref.startswith(REGISTRATION + ":")}
        return sorted(refs)
