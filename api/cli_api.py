"""``prm api``: serve the HTTP API with uvicorn.

In the embedded mode (``PRM_STORE=sqlite``, the default) the projections run in
this process (``LocalProjector``) and ``--sample`` loads the sample programme
into an empty store first. An admin key is created for the session, printed,
and revoked when the server stops.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from api.bootstrap import StartupError, build_api_services, build_program
from api.logs import configure_logging
from api.settings import Settings
from domain.application import PartnerProgram

__all__ = ["register"]

console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    sample: Annotated[
        bool, typer.Option("--sample/--no-sample", help="Load the sample programme into an empty embedded store.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the sample programme.")] = 42,
    session_key: Annotated[
        bool, typer.Option("--session-key/--no-session-key", help="Create an admin key for this session.")
    ] = True,
) -> None:
    """Serve the HTTP API (docs at /docs); embedded: projections in-process, optional sample data."""
    import uvicorn

    from api.http.app import create_app

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    try:
        program = build_program(settings)
    except StartupError as exc:
        _fail(str(exc))
        return
    if sample:
        if settings.store != "sqlite":
            _fail("--sample loads the embedded (sqlite) store only")
        if program.max_position() > 0:
            console.print(f"the embedded store already holds {program.max_position()} events: sample not loaded")
        else:
            _load_sample(program, seed)
    try:
        console.print("[bold]building the read models…[/]")
        services = build_api_services(settings, program=program)
    except StartupError as exc:
        _fail(str(exc))
        return
    issued = services.keys.create("admin", label="session-admin") if session_key else None
    base = f"http://{host}:{port}"
    console.print(f"[bold]prm API[/] ({services.mode} mode, {services.progress.report().head} events)")
    console.print(f"  docs     {base}/docs")
    console.print(f"  openapi  {base}/openapi.json")
    console.print(f"  health   {base}/healthz  {base}/readyz  {base}/metrics", soft_wrap=True)
    if issued is not None:
        console.print("  admin key for this session (revoked on exit):")
        console.print(f"    {issued.token}", highlight=False, soft_wrap=True)
        console.print(
            f"  try: curl -H 'Authorization: Bearer {issued.token}' {base}/v1/partners", highlight=False, soft_wrap=True
        )
    try:
        uvicorn.run(create_app(services), host=host, port=port, access_log=False, log_config=None)
    finally:
        if issued is not None:
            services.keys.revoke(issued.key.key_id)
        services.close()


def _load_sample(program: PartnerProgram, seed: int) -> None:
    from api.sample import generate, run_commands

    steps = generate(seed=seed)
    with Progress(
        TextColumn("[bold]loading sample programme"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task("load", total=len(steps))
        summary = run_commands(program, steps, progress=lambda done, total: progress.update(task, completed=done))
    console.print(f"sample programme loaded: {summary.steps} steps, {summary.events} events")


def register(app: typer.Typer) -> None:
    app.command("api")(serve)
