"""Monthly commission statements as files: CSV for spreadsheets and a printable HTML page.

Both are built from :func:`projections.ledger_queries.statement` (lines by
booking month, statuses at the end of the month or at ``as_of`` if earlier) and
are **byte-deterministic**: the same ledger documents, partner, currency, month
and ``as_of`` give the same bytes -- lines in booking order (sequence, line
id), fixed number and time formats, ``\\n`` line ends, no generation
timestamp unless one is passed in (``generated_at``). ``as_of=None`` means the
close of the month (its exclusive end): the final statement, the same whenever
it is asked for; a month still running needs an explicit ``as_of``.

CSV layout (UTF-8, header row first), column ``record``:

* ``statement`` -- partner, currency, month; ``explanation`` says the ``as_of``;
* ``opening`` -- the opening balance in ``amount_minor`` and ``balance_minor``;
* ``line`` -- one per ledger line booked in the month: kind, status, times,
  sequence (event-store position), sale, the signed amount, the running
  balance and the explanation (the arithmetic, ``" | "`` between steps);
* ``accruals``, ``clawbacks``, ``adjustments``, ``payouts`` -- the month's
  totals as signed sums of line amounts (payouts are negative: money paid out);
* ``closing`` -- ``opening + accruals + clawbacks + adjustments + payouts``.

``amount_minor`` is an integer of minor units; ``amount`` is the same value in
major units with the currency's decimals (ISO 4217 exponent).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from domain.commission import month_bounds
from projections.envelope import iso
from projections.ledger import ACCRUAL, ADJUSTMENT, CLAWBACK, LINE, PAYOUT
from projections.ledger_queries import LedgerSource, statement
from projections.port import Doc, DocKey

__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "export_statement",
    "format_minor",
    "minor_exponent",
    "statement_csv",
    "statement_html",
    "statement_keys",
    "statement_rows",
]

FORMATS = ("csv", "html")
CSV_COLUMNS = (
    "record",
    "partner_id",
    "currency",
    "month",
    "line_id",
    "kind",
    "status",
    "occurred_at",
    "booked_at",
    "sequence",
    "sale_id",
    "sale_line",
    "amount_minor",
    "amount",
    "balance_minor",
    "explanation",
)

# ISO 4217 minor-unit exponents that are not 2 (the default).
_EXPONENTS = {
    "BHD": 3, "BIF": 0, "CLF": 4, "CLP": 0, "DJF": 0, "GNF": 0, "IQD": 3, "ISK": 0, "JOD": 3, "JPY": 0, "KMF": 0,
    "KRW": 0, "KWD": 3, "LYD": 3, "OMR": 3, "PYG": 0, "RWF": 0, "TND": 3, "UGX": 0, "UYI": 0, "UYW": 4, "VND": 0,
    "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
}  # fmt: skip
_TOTALS = ((ACCRUAL, "accruals"), (CLAWBACK, "clawbacks"), (ADJUSTMENT, "adjustments"), (PAYOUT, "payouts"))


def minor_exponent(currency: str) -> int:
    return _EXPONENTS.get(currency, 2)


def format_minor(amount: int, currency: str, *, grouped: bool = False) -> str:
    """``123456, "USD"`` -> ``1234.56`` (``1,234.56`` grouped); VND has no decimals."""
    exponent = minor_exponent(currency)
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**exponent)
    text = f"{whole:,}" if grouped else str(whole)
    return f"{sign}{text}.{fraction:0{exponent}d}" if exponent else f"{sign}{text}"


def _statement(
    source: LedgerSource, partner_id: str, currency: str, month: str, as_of: datetime | None
) -> dict[str, Any]:
    _, end = month_bounds(month)
    return statement(source, partner_id, currency, month, as_of=as_of if as_of is not None else end)


def _one_line(text: str) -> str:
    return " | ".join(part.strip() for part in text.splitlines() if part.strip())


def _as_of_label(data: Mapping[str, Any]) -> str:
    return f"as of {data['as_of']}" + (" (month closed)" if data["complete"] else " (month in progress)")


def _signed_totals(data: Mapping[str, Any]) -> list[tuple[str, int]]:
    values = {
        ACCRUAL: data["accruals"],
        CLAWBACK: data["clawbacks"],
        ADJUSTMENT: data["adjustments"],
        PAYOUT: -data["payouts"],
    }
    return [(label, values[kind]) for kind, label in _TOTALS]


def statement_rows(
    source: LedgerSource, partner_id: str, currency: str, month: str, *, as_of: datetime | None = None
) -> list[list[str]]:
    """The CSV rows (header first) of a statement."""
    data = _statement(source, partner_id, currency, month, as_of)
    common = [partner_id, currency, month]

    def row(record: str, *, amount: int | None = None, balance: int | None = None, explanation: str = "") -> list[str]:
        return [
            record,
            *common,
            *[""] * 8,
            "" if amount is None else str(amount),
            "" if amount is None else format_minor(amount, currency),
            "" if balance is None else str(balance),
            explanation,
        ]

    rows = [list(CSV_COLUMNS), row("statement", explanation=_as_of_label(data))]
    balance = int(data["opening_balance"])
    rows.append(row("opening", amount=balance, balance=balance))
    for line in data["lines"]:
        balance += int(line["amount_minor"])
        rows.append(
            [
                "line",
                *common,
                line["line_id"],
                line["kind"],
                line["status"],
                line["occurred_at"],
                line["booked_at"],
                str(line["sequence"]),
                line.get("sale_id") or "",
                "" if line.get("sale_line") is None else str(line["sale_line"]),
                str(line["amount_minor"]),
                format_minor(int(line["amount_minor"]), currency),
                str(balance),
                _one_line(line["text"]),
            ]
        )
    for label, value in _signed_totals(data):
        rows.append(row(label, amount=value))
    closing = int(data["closing_balance"])
    if closing != balance:  # the statement's own identity; never expected
        raise AssertionError(f"statement of {partner_id} {currency} {month}: lines sum to {balance}, not {closing}")
    rows.append(row("closing", amount=closing, balance=closing))
    return rows


def statement_csv(
    source: LedgerSource, partner_id: str, currency: str, month: str, *, as_of: datetime | None = None
) -> bytes:
    """The statement as CSV bytes (UTF-8, ``\\n`` line ends, minimal quoting)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows(statement_rows(source, partner_id, currency, month, as_of=as_of))
    return out.getvalue().encode("utf-8")


_CSS = """
:root { --ink: #1d232b; --muted: #5b6573; --rule: #d9dee5; --band: #f4f6f9; --neg: #a12a2a; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 13px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 32px 28px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 15px; margin: 28px 0 8px; text-transform: uppercase; letter-spacing: 0.06em; color: var(--muted); }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 12px 0 0; }
.meta dt { color: var(--muted); }
.meta dd { margin: 0; font-weight: 600; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 8px; border-bottom: 1px solid var(--rule); text-align: left; vertical-align: top; }
th { font-size: 11px; text-transform: uppercase; letter-spacing: 0.05em; color: var(--muted); }
td.num, th.num { text-align: right; white-space: nowrap; }
.neg { color: var(--neg); }
.summary { max-width: 460px; }
.summary tr.total td { font-weight: 700; border-top: 2px solid var(--ink); border-bottom: none; }
tbody.line tr.head td { background: var(--band); border-bottom: none; }
tbody.line pre { margin: 0; padding: 2px 0 6px; font: 11px/1.5 ui-monospace, "SFMono-Regular", Menlo, Consolas,
                 monospace; white-space: pre-wrap; overflow-wrap: anywhere; color: #2f3742; }
.status { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 11px; background: #e8edf3; }
.status.paid { background: #dcefe2; } .status.payable { background: #fdf1d6; }
.empty { color: var(--muted); font-style: italic; }
footer { margin-top: 28px; color: var(--muted); font-size: 11px; }
@page { size: A4 landscape; margin: 14mm; }
@media print {
  main { max-width: none; padding: 0; }
  tbody.line { break-inside: avoid; }
  thead { display: table-header-group; }
}
""".strip()


def _money_cell(amount: int, currency: str) -> str:
    css = "num neg" if amount < 0 else "num"
    return f'<td class="{css}">{html.escape(format_minor(amount, currency, grouped=True))}</td>'


def statement_html(
    source: LedgerSource,
    partner_id: str,
    currency: str,
    month: str,
    *,
    as_of: datetime | None = None,
    generated_at: datetime | None = None,
    partner_name: str | None = None,
) -> bytes:
    """A self-contained, printable HTML page of the statement, with each line's explanation."""
    data = _statement(source, partner_id, currency, month, as_of)
    e = html.escape
    title = f"Commission statement {partner_id} {currency} {month}"
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        "<main>",
        "<header>",
        "<h1>Commission statement</h1>",
        '<dl class="meta">',
        f"<dt>Partner</dt><dd>{e(partner_id)}{' — ' + e(partner_name) if partner_name else ''}</dd>",
        f"<dt>Month</dt><dd>{e(month)} (lines booked in the month, UTC)</dd>",
        f"<dt>Currency</dt><dd>{e(currency)} (amounts in major units)</dd>",
        f"<dt>Statement</dt><dd>{e(_as_of_label(data))}</dd>",
        "</dl>",
        "</header>",
        "<h2>Summary</h2>",
        '<table class="summary">',
        "<tbody>",
        f"<tr><td>Opening balance</td>{_money_cell(int(data['opening_balance']), currency)}</tr>",
    ]
    for label, value in _signed_totals(data):
        out.append(f"<tr><td>{e(label.capitalize())}</td>{_money_cell(value, currency)}</tr>")
    out += [
        f'<tr class="total"><td>Closing balance</td>{_money_cell(int(data["closing_balance"]), currency)}</tr>',
        "</tbody>",
        "</table>",
        f"<h2>Lines ({len(data['lines'])})</h2>",
        "<table>",
        "<thead><tr><th>Line</th><th>Kind</th><th>Status</th><th>Occurred</th><th>Booked</th>"
        '<th class="num">Position</th><th class="num">Amount</th><th class="num">Balance</th></tr></thead>',
    ]
    balance = int(data["opening_balance"])
    if not data["lines"]:
        out.append('<tbody><tr><td class="empty" colspan="8">No line booked in this month.</td></tr></tbody>')
    for line in data["lines"]:
        amount = int(line["amount_minor"])
        balance += amount
        out += [
            '<tbody class="line">',
            '<tr class="head">'
            f"<td><strong>{e(line['line_id'])}</strong></td>"
            f"<td>{e(line['kind'])}</td>"
            f'<td><span class="status {e(line["status"])}">{e(line["status"])}</span></td>'
            f"<td>{e(line['occurred_at'])}</td>"
            f"<td>{e(line['booked_at'])}</td>"
            f'<td class="num">{line["sequence"]}</td>'
            f"{_money_cell(amount, currency)}"
            f"{_money_cell(balance, currency)}"
            "</tr>",
            f'<tr><td colspan="8"><pre>{e(line["text"])}</pre></td></tr>',
            "</tbody>",
        ]
    out += [
        "</table>",
        "<footer>",
        "Amounts are exact: each line's commission is computed with rational arithmetic and rounded once, half to"
        " even, to the minor unit. Positions are event-store positions; every line can be rebuilt by replaying"
        " the recorded events.",
    ]
    if generated_at is not None:
        out.append(f"<br>Generated at {e(iso(generated_at))}.")
    out += ["</footer>", "</main>", "</body>", "</html>", ""]
    return "\n".join(out).encode("utf-8")


def export_statement(
    source: LedgerSource,
    partner_id: str,
    currency: str,
    month: str,
    fmt: str,
    *,
    as_of: datetime | None = None,
    generated_at: datetime | None = None,
) -> bytes:
    """``fmt`` is ``csv`` or ``html``."""
    if fmt == "csv":
        return statement_csv(source, partner_id, currency, month, as_of=as_of)
    if fmt == "html":
        return statement_html(source, partner_id, currency, month, as_of=as_of, generated_at=generated_at)
    raise ValueError(f"unknown statement format {fmt!r}: use one of {', '.join(FORMATS)}")


def statement_keys(docs: Mapping[DocKey, Doc]) -> list[tuple[str, str, str]]:
    """``(partner, currency, booking month)`` of every statement with at least one line, sorted."""
    return sorted(
        {(doc["partner_id"], doc["currency"], doc["booked_month"]) for (kind, _), doc in docs.items() if kind == LINE}
    )
