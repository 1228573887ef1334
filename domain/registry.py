"""An index of open deal registrations, folded from registration events.

The command side uses it to find earlier registrations of the same customer
account by other partners (first to register wins). It is a pure fold: the
application feeds it the registration events in store order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.clock import utc
from domain.conflicts import PARTNER_VS_PARTNER, conflict_id
from domain.matching import AccountKeys, Customer, account_keys, match_keys
from domain.registration import APPROVED, SUBMITTED, WON, DealRegistration


@dataclass
class IndexedRegistration:
    registration_id: str
    partner_id: str
    customer: Customer
    keys: AccountKeys
    status: str
    position: int
    approved_at: datetime | None = None
    protected_until: datetime | None = None
    resolutions: dict[str, str] = field(default_factory=dict)

    def blocks_at(self, at: datetime) -> bool:
        if self.status == SUBMITTED:
            return True
        return (
            self.status in (APPROVED, WON)
            and self.approved_at is not None
            and self.protected_until is not None
            and self.approved_at <= at < self.protected_until
        )


class RegistrationIndex:
    """Open registrations by id, plus won ones (still protecting their account); others are dropped."""

    def __init__(self) -> None:
        self.open: dict[str, IndexedRegistration] = {}
        self._ids: dict[UUID, str] = {}
        self.position = 0

    def apply(self, event: Any, position: int) -> None:
        self.position = max(self.position, position)
        if isinstance(event, DealRegistration.Submitted):
            self._ids[event.originator_id] = event.registration_id
            self.open[event.registration_id] = IndexedRegistration(
                registration_id=event.registration_id,
                partner_id=event.partner_id,
                customer=Customer.from_dict(event.customer),
                keys=account_keys(Customer.from_dict(event.customer)),
                status=SUBMITTED,
                position=position,
            )
            return
        entry = self._entry_for(event)
        if entry is None:
            return
        if isinstance(event, DealRegistration.Approved):
            entry.status = APPROVED
            entry.approved_at = event.at
            entry.protected_until = event.protected_until
        elif isinstance(event, DealRegistration.ProtectionExtended):
            entry.protected_until = event.protected_until
        elif isinstance(event, DealRegistration.ConflictResolved):
            entry.resolutions[event.conflict_id] = event.winner
            if event.lost_protection and entry.protected_until is not None:
                entry.protected_until = min(entry.protected_until, event.at)
        elif isinstance(event, DealRegistration.ConflictDismissed):
            entry.resolutions[event.conflict_id] = "dismissed"
        elif isinstance(event, DealRegistration.Won):
            # A won account stays protected for its other partners until the protection ends.
            entry.status = WON
        elif isinstance(
            event,
            DealRegistration.Rejected | DealRegistration.Lost | DealRegistration.Expired | DealRegistration.Withdrawn,
        ):
            del self.open[entry.registration_id]
            del self._ids[event.originator_id]

    def _candidates(self, keys: AccountKeys) -> list[IndexedRegistration]:
        """Registrations that can match ``keys``: same domain or tax key, or the same country (name rule)."""
        return [
            entry
            for entry in self.open.values()
            if _same(entry.keys.country, keys.country)
            or _same(entry.keys.domain, keys.domain)
            or _same(entry.keys.tax_id, keys.tax_id)
            or _same(entry.keys.tax_key, keys.tax_key)
        ]

    def _entry_for(self, event: Any) -> IndexedRegistration | None:
        registration_id = self._ids.get(event.originator_id)
        return self.open.get(registration_id) if registration_id is not None else None

    def blocking(
        self,
        *,
        partner_id: str,
        customer: Customer,
        at: datetime,
        threshold: float,
        registration_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Other partners' registrations of the same account that block ``registration_id``.

        A registration blocks when it is pending and was submitted earlier, or
        approved and protected at ``at``. Each entry carries the conflict id and
        the matching evidence.
        """
        at = utc(at)
        own = self.open.get(registration_id) if registration_id else None
        result = []
        keys = account_keys(customer)
        for other in sorted(self._candidates(keys), key=lambda r: r.position):
            if other.partner_id == partner_id or other.registration_id == registration_id:
                continue
            if own is not None and other.status == SUBMITTED and other.position > own.position:
                continue
            if not other.blocks_at(at):
                continue
            evidence = match_keys(other.keys, keys, threshold)
            if evidence is None:
                continue
            if registration_id is not None and _pair_cleared(own, other, registration_id):
                continue
            later = registration_id or "(new)"
            result.append(
                {
                    "conflict_id": conflict_id(PARTNER_VS_PARTNER, other.registration_id, later),
                    "kind": PARTNER_VS_PARTNER,
                    "registration_id": other.registration_id,
                    "partner_id": other.partner_id,
                    "status": other.status,
                    "evidence": evidence.to_dict(),
                }
            )
        return result


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and a == b


def _pair_cleared(own: IndexedRegistration | None, other: IndexedRegistration, own_id: str) -> bool:
    """Whether the conflict between the two registrations was dismissed or decided in ``own_id``'s favour.

    The decision may be recorded on either registration and under either direction's conflict id: once
    the later registration is approved after a dismissal, it must not block the earlier one in turn.
    """
    ids = (
        conflict_id(PARTNER_VS_PARTNER, other.registration_id, own_id),
        conflict_id(PARTNER_VS_PARTNER, own_id, other.registration_id),
    )
    entries = [entry for entry in (own, other) if entry is not None]
    return any(entry.resolutions.get(cid) in ("dismissed", own_id) for entry in entries for cid in ids)
