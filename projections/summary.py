"""Programme summary: a deterministic fold of the recorded events into headline counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from projections.envelope import EventEnvelope

_REGISTRATION_OUTCOMES = {
    "approved": "approved",
    "rejected": "rejected",
    "won": "won",
    "lost": "lost",
    "expired": "expired",
    "withdrawn": "withdrawn",
}


@dataclass
class ProgrammeSummary:
    events: int = 0
    last_position: int = 0
    partner_status: dict[str, str] = field(default_factory=dict)
    partner_type: dict[str, str] = field(default_factory=dict)
    partner_region: dict[str, str] = field(default_factory=dict)
    partner_tier: dict[str, str] = field(default_factory=dict)
    registration_status: dict[str, str] = field(default_factory=dict)
    conflicts_at_submission: int = 0
    sales: Counter[str] = field(default_factory=Counter)  # "partner"/"direct" -> count
    gross_minor: Counter[tuple[str, str]] = field(default_factory=Counter)  # (channel, currency)
    refunds_minor: Counter[tuple[str, str]] = field(default_factory=Counter)
    sale_channel: dict[str, str] = field(default_factory=dict)
    opportunities: int = 0
    contracts: int = 0
    plan_versions: int = 0

    def apply(self, event: EventEnvelope) -> None:
        """Fold one event; events must arrive in store order, each once."""
        self.events += 1
        self.last_position = max(self.last_position, event.sequence)
        data = event.data
        kind, name = event.kind, event.name
        if kind == "partner":
            pid = event.subject
            if name == "applied":
                self.partner_status[pid] = "applied"
                self.partner_type[pid] = data["type"]
                self.partner_region[pid] = data["region"]
                self.partner_tier[pid] = "registered"
            elif name == "segment_changed":
                self.partner_type[pid] = data["type"]
                self.partner_region[pid] = data["region"]
            elif name == "tier_changed":
                self.partner_tier[pid] = data["tier"]
            elif name in ("approved", "rejected", "suspended", "terminated"):
                self.partner_status[pid] = name
            elif name == "onboarding_started":
                self.partner_status[pid] = "onboarding"
            elif name in ("activated", "reinstated"):
                self.partner_status[pid] = "active"
        elif kind == "registration":
            rid = event.subject
            if name == "submitted":
                self.registration_status[rid] = "submitted"
                self.conflicts_at_submission += len(data.get("conflicts_with") or [])
            elif name in _REGISTRATION_OUTCOMES:
                self.registration_status[rid] = _REGISTRATION_OUTCOMES[name]
        elif kind == "sale":
            if name == "recorded":
                channel = "partner" if data.get("partner_id") else "direct"
                self.sale_channel[event.subject] = channel
                self.sales[channel] += 1
                self.gross_minor[(channel, data["currency"])] += int(data["total_minor"])
            elif name == "refunded":
                channel = self.sale_channel.get(event.subject, "partner")
                self.refunds_minor[(channel, data["currency"])] += int(data["amount_minor"])
        elif kind == "opportunity" and name == "opened":
            self.opportunities += 1
        elif kind == "contract" and name == "signed":
            self.contracts += 1
        elif kind == "plan" and name == "version_published":
            self.plan_versions += 1

    def net_minor(self) -> dict[tuple[str, str], int]:
        keys = set(self.gross_minor) | set(self.refunds_minor)
        return {key: self.gross_minor[key] - self.refunds_minor[key] for key in sorted(keys)}

    @staticmethod
    def count(values: dict[str, str]) -> dict[str, int]:
        return dict(sorted(Counter(values.values()).items()))


def summarise(events: Iterable[EventEnvelope]) -> ProgrammeSummary:
    summary = ProgrammeSummary()
    for event in events:
        summary.apply(event)
    return summary
