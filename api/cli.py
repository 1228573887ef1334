"""The ``prm`` command line."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from api.bootstrap import StartupError, build
from api.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Partner relationship management backend.")
console = Console()


def _fail(message: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the sample programme.")] = 42,
    scale: Annotated[int, typer.Option(min=1, help="Multiply partners and volume.")] = 1,
    fresh: Annotated[bool, typer.Option(help="Start from an empty embedded store.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Load the sample programme into the embedded store and summarise it."""
    from api.demo_view import read_models, render_commissions, render_conflicts, render_dashboard
    from api.sample import generate, run_commands
    from api.summary_view import render_summary, summary_to_dict
    from projections.store_reader import read_store
    from projections.summary import summarise

    settings = Settings()
    if settings.store == "sqlite" and fresh and settings.sqlite_path.exists():
        settings.sqlite_path.unlink()
    try:
        container = build(settings)
    except StartupError as exc:
        _fail(str(exc))
        return
    program = container.program
    steps = generate(seed=seed, scale=scale)
    with Progress(
        TextColumn("[bold]loading sample programme"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=as_json or not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task("load", total=len(steps))
        run_commands(program, steps, progress=lambda done, total: progress.update(task, completed=done))
    events = list(read_store(program))
    container.close()
    summary = summarise(events)
    store = read_models(events)
    as_of = events[-1].time if events else None
    if as_of is None:
        _fail("the sample programme recorded nothing")
        return
    quiet = Console(file=io.StringIO()) if as_json else console
    if not as_json:
        render_summary(console, summary, store=str(settings.sqlite_path) if settings.store == "sqlite" else "postgres")
    shown = {
        "summary": summary_to_dict(summary),
        "dashboard": render_dashboard(quiet, store),
        "commissions": render_commissions(quiet, store, as_of),
        "conflicts": render_conflicts(quiet, store),
    }
    if as_json:
        console.print_json(json.dumps(shown))


@app.command()
def check() -> None:
    """Check that the configured event store can be reached."""
    try:
        container = build()
    except StartupError as exc:
        _fail(str(exc))
        return
    position = container.program.max_position()
    container.close()
    console.print(f"event store ok ({container.settings.store}), {position} events recorded")


@app.command("sample-export")
def sample_export(
    out: Annotated[Path, typer.Argument(help="JSON Lines file of inbound CloudEvents.")],
    seed: int = 42,
    scale: int = 1,
) -> None:
    """Write the sample programme's inbound sales events (what internal services publish) as JSON Lines."""
    from api.sample import generate, to_cloudevent

    steps = [s for s in generate(seed=seed, scale=scale) if s.kind == "inbound"]
    with out.open("w", encoding="utf-8") as handle:
        for step in steps:
            handle.write(json.dumps(to_cloudevent(step), ensure_ascii=False) + "\n")
    console.print(f"wrote {len(steps)} events to {out}")


def _register_command_groups() -> None:
    """Command groups live in their own modules (``api/cli_*.py``), each with ``register(app)``."""
    import importlib
    import pkgutil

    import api

    for module in sorted(m.name for m in pkgutil.iter_modules(api.__path__) if m.name.startswith("cli_")):
        importlib.import_module(f"api.{module}").register(app)


_register_command_groups()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
