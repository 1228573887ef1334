"""The auditor's commands: ``prm replay``, ``prm audit diff``, ``prm explain``, ``prm statement-export``.

Composition only (settings, event store, Kafka consumer, PostgreSQL stores);
the work is :mod:`projections.replay`, :mod:`projections.audit`,
:mod:`projections.exports` and :mod:`consumers.history`. See ``docs/audit.md``.

Where the ledgers live:

* the **live** ledger: the read models the workers maintain, projection
  ``ledger`` in ``PostgresProjectionStore(PRM_DATABASE_URL, <live schema>)``;
  the live schema is ``--live-schema``, else ``PRM_DATABASE_SCHEMA``, else
  ``public`` (the worker's rule). Without ``PRM_DATABASE_URL`` (the embedded
  default) there are no persistent read models: the live ledger is computed in
  process from the embedded event store, as the embedded mode does;
* a **replayed** ledger: ``--into NAME`` / ``--replayed NAME``: the PostgreSQL
  schema ``replay_<NAME>`` (or ``.prm/replay_<NAME>.sqlite`` without a
  database), or a ``*.sqlite`` / ``*.json`` file. Never the live schema.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from api.bootstrap import StartupError, build_program
from api.settings import Settings
from projections.port import Doc, DocKey

if TYPE_CHECKING:
    from projections.replay import ReplayTarget

__all__ = ["register"]

console = Console()
err = Console(stderr=True)

AsOfOption = Annotated[
    str | None,
    typer.Option("--as-of", help="An instant with its timezone, e.g. 2026-03-31T23:59:59Z (ISO 8601)."),
]
LiveSchemaOption = Annotated[
    str | None,
    typer.Option("--live-schema", help="Schema of the live read models (default: PRM_DATABASE_SCHEMA, else public)."),
]
ReplayedOption = Annotated[
    str | None,
    typer.Option("--replayed", help="Read a replayed ledger (replay target NAME or file) instead of the live one."),
]


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def _parse_instant(text: str | None, option: str = "--as-of") -> datetime | None:
    from projections.envelope import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        _fail(f"{option} {text!r}: {exc} (use ISO 8601 with a timezone, e.g. 2026-03-31T23:59:59Z)")
        raise AssertionError from exc  # unreachable: _fail raises


def _live_schema(settings: Settings, option: str | None) -> str:
    """The live read models' schema: the option, else the worker's rule (``PRM_DATABASE_SCHEMA`` or ``public``)."""
    return option or settings.database_schema or "public"


def _quiet_kafka_logs() -> None:
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.WARNING)


class _RateColumn(ProgressColumn):
    """Events per second, averaged by rich over the recent updates."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} events/s" if speed else "— events/s", style="progress.data.speed")


def _progress_bar(disable: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=disable,
    )


def _open_target(into: str, settings: Settings, live_schema: str) -> ReplayTarget:
    from projections.replay import open_target

    try:
        return open_target(into, database_url=settings.database_url, live_schemas=[live_schema])
    except ValueError as exc:
        _fail(str(exc))
    except Exception as exc:  # psycopg.OperationalError and friends: one line
        _fail(f"cannot open the replay target {into!r}: {str(exc).strip().splitlines()[0] if str(exc) else exc}")
    raise AssertionError("unreachable")


# ============================================================================
# prm replay
# ============================================================================


def replay_command(
    source: Annotated[str, typer.Option("--source", help="Where the history is read: kafka (offset 0) or store.")],
    as_of: AsOfOption = None,
    partner: Annotated[
        str | None, typer.Option("--partner", help="Only this partner's events (and the programme-wide ones).")
    ] = None,
    into: Annotated[
        str, typer.Option("--into", help="Replay target: NAME (schema replay_NAME) or a .sqlite / .json file.")
    ] = "audit",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Events per committed batch.")] = 2000,
    fresh: Annotated[bool, typer.Option("--fresh", help="Forget what the target holds and start over.")] = False,
    topic_prefix: Annotated[str, typer.Option("--topic-prefix", help="Prefix of the Kafka topic names.")] = "",
    live_schema: LiveSchemaOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Rebuild the commission ledger from the full history into an isolated target (resumable)."""
    from projections.replay import (
        ReplayMismatch,
        check_resumable,
        kafka_offsets,
        replay,
        reset_target,
        resume_point,
    )

    if source not in ("kafka", "store"):
        _fail(f"--source {source!r}: use kafka or store")
    instant = _parse_instant(as_of)
    settings = Settings()
    target = _open_target(into, settings, _live_schema(settings, live_schema))
    try:
        if fresh:
            reset_target(target.store)
        try:
            check_resumable(target.store, as_of=instant, partner=partner)
        except ReplayMismatch as exc:
            _fail(f"{target.where}: {exc}")
        resumed = resume_point(target.store)
        events: Iterable[Any]
        duplicates: Any = None
        if source == "store":
            from projections.store_reader import read_store

            try:
                program = build_program(settings)
            except StartupError as exc:
                _fail(str(exc))
                return
            total = max(program.max_position() - resumed, 0)
            events = read_store(program, start=resumed + 1)
            closer = program.close
        else:
            from kafka.errors import KafkaError

            from consumers.history import HistoryError, read_history

            _quiet_kafka_logs()
            try:
                history = read_history(
                    settings.kafka_bootstrap,
                    prefix=topic_prefix,
                    start_offsets=kafka_offsets(target.store),
                    after_sequence=resumed,
                )
            except (KafkaError, HistoryError) as exc:
                _fail(f"cannot read the history from Kafka at {settings.kafka_bootstrap}: {exc}")
                return
            total = history.total_records
            events = history
            duplicates = history.stats
            closer = history.close
        label = f"replay from {source}" + (f" (after position {resumed})" if resumed else "")
        with _progress_bar(disable=as_json or not sys.stderr.isatty()) as bar:
            task = bar.add_task(label, total=total or None)
            try:
                stats = replay(
                    events,
                    target.store,
                    as_of=instant,
                    partner=partner,
                    batch_size=batch_size,
                    progress=lambda seen, _last: bar.update(task, completed=seen),
                    source=source,
                )
            except KeyboardInterrupt:
                bar.stop()
                done = resume_point(target.store)
                err.print(
                    f"interrupted: {target.where} holds every event up to position {done};"
                    " run the same command again to continue"
                )
                raise typer.Exit(code=130) from None
            except Exception as exc:
                bar.stop()
                _fail(f"replay failed: {exc} ({target.where} keeps its last committed batch)")
                return
            finally:
                closer()
            bar.update(task, completed=stats.seen, total=max(stats.seen, 1))
        outcome = {
            "target": target.where,
            "source": source,
            "as_of": as_of,
            "partner": partner,
            **stats.to_dict(),
        }
        if duplicates is not None:
            outcome["kafka_records"] = duplicates.records
            outcome["kafka_duplicates_dropped"] = duplicates.duplicates
        if as_json:
            console.print_json(json.dumps(outcome))
        else:
            console.print(
                f"replayed {stats.seen} events from {source} into {target.where}: {stats.applied} applied,"
                f" {stats.filtered} filtered out, up to position {stats.last_sequence}"
                f" in {stats.elapsed_s:.2f} s ({stats.rate:,.0f} events/s)"
                + (f"; resumed after position {resumed}" if resumed else "")
                + (f"; {duplicates.duplicates} duplicate(s) dropped" if duplicates is not None else "")
            )
            if stats.time_inversions:
                err.print(
                    f"[yellow]warning:[/] {stats.time_inversions} kept event(s) come after a later-recorded one:"
                    " recording times are not monotone in positions around --as-of (see docs/audit.md)"
                )
    finally:
        target.close()


# ============================================================================
# Ledgers
# ============================================================================


def _live_docs(settings: Settings, live_schema: str | None) -> dict[DocKey, Doc]:
    """The live ledger's documents (PostgreSQL read models; in process from the embedded store otherwise)."""
    if settings.database_url:
        from projections.postgres import PostgresProjectionStore

        store = PostgresProjectionStore(settings.database_url, _live_schema(settings, live_schema))
        try:
            return store.dump("ledger")
        except Exception as exc:
            _fail(f"cannot read the live read models: {str(exc).strip().splitlines()[0] if str(exc) else exc}")
            raise AssertionError from exc
        finally:
            store.close()
    from projections.ledger import CommissionLedger
    from projections.memory import InMemoryProjectionStore
    from projections.runner import run_projections
    from projections.store_reader import read_store

    try:
        program = build_program(settings)
    except StartupError as exc:
        _fail(str(exc))
        raise AssertionError from exc
    try:
        memory = InMemoryProjectionStore()
        run_projections(memory, [CommissionLedger()], read_store(program))
        return memory.dump("ledger")
    finally:
        program.close()


def _replayed(name: str, settings: Settings, live_schema: str | None) -> tuple[ReplayTarget, dict[DocKey, Doc], Doc]:
    from projections.replay import replay_meta

    target = _open_target(name, settings, _live_schema(settings, live_schema))
    meta = replay_meta(target.store)
    if meta is None:
        target.close()
        _fail(f"{target.where} holds no replay: run prm replay --into {name} first")
    return target, target.dump("ledger"), meta or {}


# ============================================================================
# prm audit diff
# ============================================================================


def audit_diff(
    replayed: Annotated[str, typer.Option("--replayed", help="The replay target to compare with the live ledger.")],
    report: Annotated[
        Path | None, typer.Option("--report", help="Directory for summary.txt, summary.json, differences.csv.")
    ] = None,
    as_of: AsOfOption = None,
    partner: Annotated[str | None, typer.Option("--partner", help="Compare this partner only.")] = None,
    live_schema: LiveSchemaOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Compare a replayed ledger with the live one, line by line; exit 0 only when identical."""
    from projections.audit import diff
    from projections.envelope import parse_time
    from projections.replay import replay_filter

    settings = Settings()
    target, replayed_docs, meta = _replayed(replayed, settings, live_schema)
    target.close()
    replay_as_of, replay_partner = replay_filter(meta)
    if partner is not None and replay_partner is not None and partner != replay_partner:
        _fail(f"the replay {replayed!r} holds partner {replay_partner} only, not {partner}")
    instant = _parse_instant(as_of)
    if instant is None:
        # The instant the replayed history ends: its --as-of, or the recording time of its last event.
        instant = replay_as_of or (parse_time(meta["last_recorded_at"]) if meta.get("last_recorded_at") else None)
    if replay_as_of is not None and instant is not None and instant > replay_as_of:
        _fail(f"the replay {replayed!r} stops at {meta['params']['as_of']}: compare at or before that instant")
    if not meta.get("complete"):
        err.print(f"[yellow]warning:[/] the replay {replayed!r} was interrupted: run prm replay again to finish it")
    outcome = diff(_live_docs(settings, live_schema), replayed_docs, as_of=instant, partner=partner or replay_partner)
    if report is not None:
        for path in outcome.write(report):
            err.print(f"wrote {path}")
    if as_json:
        console.print_json(json.dumps(outcome.to_dict()))
    else:
        console.print(outcome.summary(), end="", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code=0 if outcome.identical else 1)


# ============================================================================
# prm explain
# ============================================================================


def explain_command(
    line_id: Annotated[str, typer.Argument(help="A ledger line id: L-…, CB-…, ADJ-…, PAY-…")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON.")] = False,
    replayed: ReplayedOption = None,
    as_of: AsOfOption = None,
    live_schema: LiveSchemaOption = None,
) -> None:
    """Explain one ledger line: its events (positions, Kafka coordinates), plan version, tier, parts, arithmetic."""
    from projections.audit import explain_line, render_explanation
    from projections.replay import coordinates_of

    settings = Settings()
    instant = _parse_instant(as_of)
    target = None
    if replayed is not None:
        target, docs, _ = _replayed(replayed, settings, live_schema)
    else:
        docs = _live_docs(settings, live_schema)
    try:
        explained = explain_line(docs, line_id, as_of=instant)
        if target is not None:  # a replay from Kafka knows where each event was read
            sequences = [e["sequence"] for e in explained["events"] if e["sequence"] is not None]
            coordinates = coordinates_of(target.store, sequences)
            if coordinates:
                explained = explain_line(docs, line_id, coordinates=coordinates, as_of=instant)
    except KeyError:
        _fail(f"no ledger line {line_id!r}" + (f" in the replay {replayed!r}" if replayed else " in the live ledger"))
        return
    finally:
        if target is not None:
            target.close()
    if as_json:
        console.print_json(json.dumps(explained))
    else:
        console.print(render_explanation(explained), end="", highlight=False, markup=False, soft_wrap=True)


# ============================================================================
# prm statement-export
# ============================================================================


def statement_export(
    partner: Annotated[str, typer.Argument(help="Partner id, e.g. P-0042.")],
    month: Annotated[str, typer.Option("--month", help="Booking month, YYYY-MM.")],
    currency: Annotated[str, typer.Option("--currency", help="ISO 4217 code, e.g. VND.")],
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or html.")] = "csv",
    as_of: AsOfOption = None,
    replayed: ReplayedOption = None,
    live_schema: LiveSchemaOption = None,
) -> None:
    """Export a partner's monthly statement as CSV or printable HTML (byte-deterministic)."""
    from domain.commission import month_bounds
    from projections.exports import FORMATS, export_statement

    if fmt not in FORMATS:
        _fail(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    try:
        _, end = month_bounds(month)
    except ValueError as exc:
        _fail(f"--month {month!r}: {exc}")
        return
    instant = _parse_instant(as_of)
    if instant is None and end > datetime.now(UTC):
        instant = datetime.now(UTC)  # a month still running: as of now (printed in the statement)
    settings = Settings()
    if replayed is not None:
        target, docs, _ = _replayed(replayed, settings, live_schema)
        target.close()
    else:
        docs = _live_docs(settings, live_schema)
    content = export_statement(docs, partner, currency.upper(), month, fmt, as_of=instant)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(content)
    console.print(f"wrote the {fmt} statement of {partner} {currency.upper()} {month} to {out} ({len(content)} bytes)")


def register(app: typer.Typer) -> None:
    app.command("replay")(replay_command)
    audit = typer.Typer(no_args_is_help=True, help="Compare replayed ledgers with the live one.")
    audit.command("diff")(audit_diff)
    app.add_typer(audit, name="audit")
    app.command("explain")(explain_command)
    app.command("statement-export")(statement_export)
