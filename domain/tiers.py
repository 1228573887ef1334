"""Tier rules: which tier a partner qualifies for, and what an evaluation changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from domain.program import TIERS, ProgramSettings, tier_rank


def qualified_tier(revenue_minor: int, certified_people: int, settings: ProgramSettings) -> str:
    """Highest tier whose revenue threshold **and** certification count are both met."""
    best = TIERS[0]
    for tier in TIERS[1:]:
        if revenue_minor >= settings.tier_revenue_thresholds_minor[
            tier
        ] and certified_people >= settings.tier_certifications_required.get(tier, 0):
            best = tier
    return best


@dataclass(frozen=True)
class TierDecision:
    """Outcome of one quarterly evaluation."""

    qualified: str
    new_tier: str | None  # None: no change
    effective_at: datetime | None
    quarters_below: int  # consecutive evaluations below the current tier, after this one


def decide(
    *,
    current: str,
    qualified: str,
    quarters_below_before: int,
    next_quarter_start: datetime,
    grace_quarters: int,
) -> TierDecision:
    """Apply promotion, grace and one-step demotion.

    - Promotion: to the qualified tier, effective at the start of the next quarter.
    - Below the current tier: the first ``grace_quarters`` evaluations change
      nothing; the next one demotes by exactly one tier. The count restarts
      after a demotion (each tier gets its own grace).
    """
    if tier_rank(qualified) > tier_rank(current):
        return TierDecision(qualified, qualified, next_quarter_start, 0)
    if tier_rank(qualified) == tier_rank(current):
        return TierDecision(qualified, None, None, 0)
    below = quarters_below_before + 1
    if below > grace_quarters:
        lower = TIERS[tier_rank(current) - 1]
        return TierDecision(qualified, lower, next_quarter_start, 0)
    return TierDecision(qualified, None, None, below)
