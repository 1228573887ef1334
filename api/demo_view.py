"""What ``prm demo`` shows: the channel dashboard, commission balances and a statement, open conflicts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from api.summary_view import money
from projections import conflict_queries, dashboard_queries, ledger_queries
from projections.conflicts import ChannelConflicts
from projections.dashboards import Dashboards
from projections.envelope import EventEnvelope
from projections.ledger import CommissionLedger
from projections.memory import InMemoryProjectionStore
from projections.port import Projection
from projections.runner import run_projections


def read_models(events: list[EventEnvelope]) -> InMemoryProjectionStore:
    """The embedded read models: the same projections the Kafka workers run, in-process."""
    store = InMemoryProjectionStore()
    projections: list[Projection] = [CommissionLedger(), ChannelConflicts(), Dashboards()]
    run_projections(store, projections, events)
    return store


def latest_quarter(data: dashboard_queries.DashboardData) -> str:
    months = sorted({key.rsplit("|", 1)[-1] for key in data.partner_months} | set(data.direct))
    last = months[-1] if months else datetime.now(UTC).strftime("%Y-%m")
    year, month = int(last[:4]), int(last[5:7])
    return f"{year}-Q{(month - 1) // 3 + 1}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def render_dashboard(console: Console, store: InMemoryProjectionStore) -> dict[str, Any]:
    data = dashboard_queries.DashboardData.load(store)
    period = latest_quarter(data)
    revenue = dashboard_queries.channel_revenue(data, period)
    partner = dashboard_queries.revenue(data, period)
    share = dashboard_queries.indirect_share(data, period)
    growth = dashboard_queries.growth(data, period)
    wins = dashboard_queries.win_rate(data, period)
    pipe = dashboard_queries.pipeline(data, period)
    active = dashboard_queries.active_partners(data, period)
    table = Table(title=f"Channel dashboard, {period}", title_justify="left")
    for column in ("currency", "net revenue", "via partners", "indirect share", "growth vs previous", "pipeline"):
        table.add_column(column, justify="left" if column == "currency" else "right")
    for currency in sorted(revenue):
        table.add_row(
            currency,
            money(revenue[currency].net_minor, currency),
            money(partner[currency].net_minor if currency in partner else 0, currency),
            _pct(share[currency].share if currency in share else None),
            "—" if currency not in growth or growth[currency].percent is None else f"{growth[currency].percent:+.1f} %",
            money(pipe[currency].value_minor if currency in pipe else 0, currency),
        )
    console.print(table)
    console.print(
        f"Win rate {_pct(wins.rate)} ({wins.won} won, {wins.lost} lost); "
        f"active partners {active.with_activity} of {active.active} ({_pct(active.share)})."
    )
    board = dashboard_queries.leaderboard(data, period, top=5)
    for currency, rows in sorted(board.items()):
        leaders = Table(title=f"Leaderboard {currency}, {period}", title_justify="left")
        for column in ("rank", "partner", "net revenue", "change"):
            leaders.add_column(column, justify="right" if column != "partner" else "left")
        for row in rows:
            change = "new" if row.rank_change is None else f"{row.rank_change:+d}"
            leaders.add_row(str(row.rank), f"{row.partner_id} {row.name or ''}", money(row.net_minor, currency), change)
        console.print(leaders)
    return {"period": period, "net_revenue": {c: t.net_minor for c, t in revenue.items()}}


def render_commissions(console: Console, store: InMemoryProjectionStore, as_of: datetime) -> dict[str, Any]:
    ledger = store.dump(ledger_queries.LEDGER)
    pairs = sorted({(line["partner_id"], line["currency"]) for (kind, _), line in ledger.items() if kind == "line"})
    rows = [(pid, cur, ledger_queries.balances(ledger, pid, cur, as_of=as_of)) for pid, cur in pairs]
    rows.sort(key=lambda r: (-r[2]["balance"], r[0], r[1]))
    table = Table(title="Commission balances (top 8)", title_justify="left")
    for column in ("partner", "currency", "accrued (held)", "payable", "paid out", "balance"):
        table.add_column(column, justify="left" if column in ("partner", "currency") else "right")
    for pid, cur, figures in rows[:8]:
        table.add_row(
            pid,
            cur,
            money(figures["accrued"], cur),
            money(figures["payable"], cur),
            money(figures["payouts"], cur),
            money(figures["balance"], cur),
        )
    console.print(table)
    if not rows:
        return {"partners": 0}
    pid, cur, _ = rows[0]
    months = sorted(
        {line["booked_at"][:7] for (kind, _), line in ledger.items() if kind == "line" and line["partner_id"] == pid}
    )
    month = months[-1]
    statement = ledger_queries.statement(ledger, pid, cur, month, as_of=as_of)
    console.print(
        f"[bold]Statement {pid} {cur} {month}[/]: opening {money(statement['opening_balance'], cur)}, "
        f"accruals {money(statement['accruals'], cur)}, clawbacks {money(statement['clawbacks'], cur)}, "
        f"adjustments {money(statement['adjustments'], cur)}, payouts {money(statement['payouts'], cur)}, "
        f"closing {money(statement['closing_balance'], cur)}; {len(statement['lines'])} lines. First line explained:"
    )
    if statement["lines"]:
        console.print(statement["lines"][0]["text"])
    return {"partners": len(pairs), "statement": {"partner": pid, "currency": cur, "month": month}}


def render_conflicts(console: Console, store: InMemoryProjectionStore) -> dict[str, Any]:
    conflicts = conflict_queries.load_conflicts(store)
    table = Table(title="Channel conflicts", title_justify="left")
    for column in ("conflict", "kind", "status", "partners", "matched by", "detected"):
        table.add_column(column)
    for conflict in conflicts:
        evidence = conflict["evidence"]
        table.add_row(
            conflict["conflict_id"],
            conflict["kind"],
            conflict["status"],
            ", ".join(conflict["partner_ids"]) or "direct",
            f"{evidence['rule']}: {evidence['left']} ~ {evidence['right']} ({evidence['score']:.2f})",
            conflict["detected_at"][:10],
        )
    console.print(table)
    return {"conflicts": len(conflicts), "open": sum(c["status"] == "open" for c in conflicts)}
