"""Ops and auditor commands that mirror the HTTP API's reads, with rich tables or ``--json``.

``prm partners list``, ``prm partner show P-…``, ``prm conflicts list``,
``prm statement P-… --currency VND --month 2026-03``, ``prm dashboard --period 2026-Q1``.

They read the same read models through the same query functions as the API
(:mod:`api.readmodels`, :mod:`projections.ledger_queries`,
:mod:`projections.conflict_queries`): in the embedded mode the projections are
rebuilt from the event store first; on the real stack they are the workers'
PostgreSQL read models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from api.bootstrap import StartupError, build_read_models
from api.readmodels import LedgerSnapshot, dashboard_view, partner_detail, partner_summaries
from api.settings import Settings
from api.summary_view import money
from projections import ledger_queries
from projections.conflict_queries import list_conflicts, load_conflicts
from projections.dashboard_queries import Filters
from projections.port import ProjectionStore

__all__ = ["register"]

console = Console()
partners_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Partners (read models).")
partner_app = typer.Typer(no_args_is_help=True, add_completion=False, help="One partner (read models).")
conflicts_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Channel conflicts (read models).")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _fail(message: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


@contextmanager
def _read_models() -> Iterator[ProjectionStore]:
    try:
        store, close = build_read_models(Settings())
    except StartupError as exc:
        _fail(str(exc))
        raise AssertionError("unreachable") from exc
    try:
        yield store
    finally:
        close()


def _print_json(payload: Any) -> None:
    console.print_json(json.dumps(payload, default=str))


@partners_app.command("list")
def partners_list(
    status: Annotated[str | None, typer.Option(help="Only partners in this status.")] = None,
    type: Annotated[str | None, typer.Option("--type", help="Only this partner type.")] = None,
    tier: Annotated[str | None, typer.Option(help="Only this tier (in force now).")] = None,
    region: Annotated[str | None, typer.Option(help="Only this region (ISO country code).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Partners with their status, tier and segment."""
    with _read_models() as store:
        partners = [
            p
            for p in partner_summaries(store)
            if (status is None or p["status"] == status)
            and (type is None or p["type"] == type)
            and (tier is None or p["tier"] == tier)
            and (region is None or p["region"] == region.upper())
        ]
    if as_json:
        _print_json(partners)
        return
    table = Table(title=f"Partners ({len(partners)})", title_justify="left")
    for column in ("partner", "name", "status", "tier", "type", "region", "size", "applied", "first sale"):
        table.add_column(column)
    for p in partners:
        table.add_row(
            p["partner_id"],
            p["name"] or "",
            p["status"] or "",
            p["tier"],
            p["type"] or "",
            "/".join(x for x in (p["region"], p["subregion"]) if x),
            p["size"] or "",
            (p["applied_at"] or "")[:10],
            (p["first_sale_at"] or "")[:10],
        )
    console.print(table)


@partner_app.command("show")
def partner_show(partner_id: Annotated[str, typer.Argument(help="P-…")], as_json: JsonFlag = False) -> None:
    """One partner: status, tier, segment, their history, contracts, balances, registrations."""
    with _read_models() as store:
        detail = partner_detail(store, partner_id)
    if detail is None:
        _fail(f"unknown partner {partner_id!r}")
        return
    if as_json:
        _print_json(detail)
        return
    head = Table(title=f"{detail['partner_id']} {detail['name'] or ''}", title_justify="left", show_header=False)
    head.add_column("")
    head.add_column("")
    for key in ("status", "tier", "type", "region", "subregion", "size", "applied_at", "approved_at", "activated_at"):
        head.add_row(key, str(detail[key] or ""))
    head.add_row("registrations", ", ".join(f"{k} {v}" for k, v in detail["registrations"].items()) or "none")
    console.print(head)
    timeline = Table(title="Status and tier timeline", title_justify="left")
    for column in ("at", "change"):
        timeline.add_column(column)
    changes = [(e["at"], f"status {e['status']}") for e in detail["statuses"]]
    changes += [(e["at"], f"tier {e['tier']} ({e['source']})") for e in detail["tiers"]]
    for at, change in sorted(changes):
        timeline.add_row(at[:19], change)
    console.print(timeline)
    if detail["contracts"]:
        contracts = Table(title="Contracts", title_justify="left")
        for column in ("contract", "from", "to", "auto-renew", "status", "plan"):
            contracts.add_column(column)
        for c in detail["contracts"]:
            plan = c["commission_plans"][-1]["plan_id"] if c["commission_plans"] else ""
            contracts.add_row(
                c["contract_id"], c["starts_on"], c["ends_on"], "yes" if c["auto_renew"] else "no", c["status"], plan
            )
        console.print(contracts)
    if detail["balances"]:
        console.print(_balances_table(detail["balances"]))


def _balances_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Commission balances", title_justify="left")
    for column in ("currency", "accrued (held)", "payable", "paid", "paid out", "balance"):
        table.add_column(column, justify="right")
    for b in rows:
        c = b["currency"]
        table.add_row(
            c,
            money(b["accrued"], c),
            money(b["payable"], c),
            money(b["paid"], c),
            money(b["payouts"], c),
            money(b["balance"], c),
        )
    return table


@conflicts_app.command("list")
def conflicts_list(
    status: Annotated[str | None, typer.Option(help="open, resolved or dismissed.")] = None,
    kind: Annotated[
        str | None, typer.Option(help="partner_vs_partner, direct_vs_partner or sale_outside_registration.")
    ] = None,
    partner: Annotated[str | None, typer.Option("--partner", help="Only conflicts involving this partner.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Channel conflicts with their evidence and status."""
    with _read_models() as store:
        try:
            conflicts = list_conflicts(load_conflicts(store), kind=kind, status=status, partner_id=partner)
        except ValueError as exc:
            _fail(str(exc))
            return
    if as_json:
        _print_json(conflicts)
        return
    table = Table(title=f"Channel conflicts ({len(conflicts)})", title_justify="left")
    for column in ("conflict", "kind", "status", "partners", "parties", "matched by", "detected"):
        table.add_column(column)
    for c in conflicts:
        parties = f"{c['earlier']['id']} ← {c['later']['id']}"
        table.add_row(
            c["conflict_id"],
            c["kind"],
            c["status"],
            ", ".join(c["partner_ids"]),
            parties,
            str(c["evidence"].get("rule", "")),
            c["detected_at"][:19],
        )
    console.print(table)


def statement(
    partner_id: Annotated[str, typer.Argument(help="P-…")],
    currency: Annotated[str, typer.Option(help="Ledger currency, e.g. VND.")],
    month: Annotated[str, typer.Option(help="Booking month, e.g. 2026-03.")],
    as_json: JsonFlag = False,
) -> None:
    """A partner's monthly commission statement, with each line explained."""
    with _read_models() as store:
        try:
            body = ledger_queries.statement(LedgerSnapshot.load(store), partner_id, currency.upper(), month)
        except ValueError as exc:
            _fail(str(exc))
            return
    if as_json:
        _print_json(body)
        return
    c = body["currency"]
    head = Table(title=f"Statement {partner_id} {c} {month}", title_justify="left", show_header=False)
    head.add_column("")
    head.add_column("", justify="right")
    for key in ("opening_balance", "accruals", "clawbacks", "adjustments", "payouts", "closing_balance"):
        head.add_row(key.replace("_", " "), money(body[key], c))
    head.add_row("complete", "yes" if body["complete"] else f"no (as of {body['as_of'][:19]})")
    console.print(head)
    lines = Table(title=f"Lines ({len(body['lines'])})", title_justify="left")
    for column in ("line", "kind", "amount", "status", "occurred", "booked"):
        lines.add_column(column, justify="right" if column == "amount" else "left")
    for line in body["lines"]:
        lines.add_row(
            line["line_id"],
            line["kind"],
            money(line["amount_minor"], c),
            line["status"],
            line["occurred_at"][:10],
            line["booked_at"][:10],
        )
    console.print(lines)


def dashboard(
    period: Annotated[str, typer.Option(help="A month 2026-03, a quarter 2026-Q1 or a year 2026.")],
    partner: Annotated[str | None, typer.Option("--partner", help="One partner's dashboard.")] = None,
    type: Annotated[list[str] | None, typer.Option("--type", help="Partner types to keep (repeatable).")] = None,
    tier: Annotated[list[str] | None, typer.Option("--tier", help="Tiers to keep (repeatable).")] = None,
    region: Annotated[list[str] | None, typer.Option("--region", help="Regions to keep (repeatable).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every KPI of a period for the channel (optionally filtered) or one partner."""
    with _read_models() as store:
        try:
            view = dashboard_view(
                store, period, partner_id=partner, filters=Filters.of(type=type, tier=tier, region=region)
            )
        except ValueError as exc:
            _fail(str(exc))
            return
    if as_json:
        _print_json(view)
        return
    _render_dashboard(view)


def _render_dashboard(view: dict[str, Any]) -> None:
    who = view["partner_id"] or "channel"
    console.print(f"[bold]Dashboard {view['period']}[/] ({who}, {len(view['partners'])} partners)")
    money_table = Table(title="Revenue", title_justify="left")
    for column in ("currency", "gross", "refunds", "net", "sales", "avg deal", "growth %", "pipeline", "commission"):
        money_table.add_column(column, justify="right")
    currencies = sorted(set(view["revenue"]) | set(view["pipeline"]) | set(view["commission"]))
    for c in currencies:
        r = view["revenue"].get(c, {})
        g = view["growth"].get(c, {})
        p = view["pipeline"].get(c, {})
        k = view["commission"].get(c, {})
        money_table.add_row(
            c,
            money(r.get("gross_minor", 0), c),
            money(r.get("refunds_minor", 0), c),
            money(r.get("net_minor", 0), c),
            str(r.get("sales", 0)),
            money(r["average_deal_minor"], c) if r.get("average_deal_minor") is not None else "",
            f"{g['percent']:.1f}" if g.get("percent") is not None else "",
            money(p.get("value_minor", 0), c),
            money(k.get("accrued_minor", 0), c),
        )
    console.print(money_table)
    figures = Table(title="Programme", title_justify="left", show_header=False)
    figures.add_column("")
    figures.add_column("")
    figures.add_row("registrations", ", ".join(f"{k} {v}" for k, v in view["registrations"].items()))
    rate = view["win_rate"]["rate"]
    figures.add_row("win rate", f"{rate:.0%}" if rate is not None else "n/a")
    active = view["active_partners"]
    figures.add_row("active partners", f"{active['with_activity']} of {active['active']} with activity")
    first = view["time_to_first_deal"]
    if first["median_days"] is not None:
        figures.add_row("time to first deal", f"median {first['median_days']:.1f} d, p90 {first['p90_days']:.1f} d")
    if "tier_mix" in view:
        figures.add_row("tier mix", ", ".join(f"{k} {v}" for k, v in view["tier_mix"].items()))
    conflicts = view["conflicts"].items()
    figures.add_row("conflicts", ", ".join(f"{k}: {v['opened']} opened, {v['open_at_end']} open" for k, v in conflicts))
    console.print(figures)
    for currency, rows in (view.get("leaderboard") or {}).items():
        board = Table(title=f"Leaderboard {currency}", title_justify="left")
        for column in ("rank", "partner", "name", "net", "change"):
            board.add_column(column)
        for row in rows:
            change = row["rank_change"]
            board.add_row(
                str(row["rank"]),
                row["partner_id"],
                row["name"] or "",
                money(row["net_minor"], currency),
                "new" if change is None else f"{change:+d}",
            )
        console.print(board)


def register(app: typer.Typer) -> None:
    app.add_typer(partners_app, name="partners")
    app.add_typer(partner_app, name="partner")
    app.add_typer(conflicts_app, name="conflicts")
    app.command("statement")(statement)
    app.command("dashboard")(dashboard)
