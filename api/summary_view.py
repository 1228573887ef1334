"""Rendering the programme summary for people (rich) and scripts (JSON)."""

from __future__ import annotations

from typing import Any

from rich.columns import Columns
from rich.console import Console
from rich.table import Table

from projections.summary import ProgrammeSummary


def _counts(title: str, rows: dict[str, int]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    for key, value in rows.items():
        table.add_row(key, f"{value:,}")
    return table


def money(amount_minor: int, currency: str) -> str:
    """Minor units shown in major units (VND has none; USD/EUR have two decimals)."""
    digits = 0 if currency in {"VND", "JPY", "KRW"} else 2
    if digits == 0:
        return f"{amount_minor:,} {currency}"
    sign = "-" if amount_minor < 0 else ""
    major, minor = divmod(abs(amount_minor), 10**digits)
    return f"{sign}{major:,}.{minor:0{digits}d} {currency}"


def summary_to_dict(summary: ProgrammeSummary) -> dict[str, Any]:
    return {
        "events": summary.events,
        "last_position": summary.last_position,
        "partners": {
            "by_status": summary.count(summary.partner_status),
            "by_type": summary.count(summary.partner_type),
            "by_tier": summary.count(summary.partner_tier),
            "by_region": summary.count(summary.partner_region),
        },
        "registrations": summary.count(summary.registration_status),
        "conflicts_at_submission": summary.conflicts_at_submission,
        "sales": dict(summary.sales),
        "net_revenue_minor": [
            {"channel": channel, "currency": currency, "amount_minor": amount}
            for (channel, currency), amount in summary.net_minor().items()
        ],
        "opportunities": summary.opportunities,
        "contracts": summary.contracts,
        "plan_versions": summary.plan_versions,
    }


def render_summary(console: Console, summary: ProgrammeSummary, *, store: str) -> None:
    console.rule("[bold]Partner programme")
    console.print(
        f"{summary.events:,} events recorded (last position {summary.last_position:,}) in {store}; "
        f"{len(summary.partner_status)} partners, {summary.contracts} contracts, "
        f"{summary.plan_versions} commission plan versions."
    )
    console.print(
        Columns(
            [
                _counts("Partners by status", summary.count(summary.partner_status)),
                _counts("Partners by type", summary.count(summary.partner_type)),
                _counts("Partners by tier", summary.count(summary.partner_tier)),
                _counts("Deal registrations", summary.count(summary.registration_status)),
            ]
        )
    )
    revenue = Table(title="Net revenue by channel", title_justify="left")
    revenue.add_column("channel")
    revenue.add_column("currency")
    revenue.add_column("sales", justify="right")
    revenue.add_column("net revenue", justify="right")
    for (channel, currency), amount in summary.net_minor().items():
        revenue.add_row(channel, currency, f"{summary.sales[channel]:,}", money(amount, currency))
    console.print(revenue)
    console.print(
        f"Channel conflicts flagged at submission: {summary.conflicts_at_submission}; "
        f"direct-sales opportunities from the CRM: {summary.opportunities}."
    )
