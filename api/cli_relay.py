"""``prm kafka-ensure-topics`` and ``prm relay``: the Kafka side of the event store.

The composition (admin client, producer, database connections from settings) is
here; ``consumers/`` only receives what it needs.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from api.settings import Settings

if TYPE_CHECKING:
    from consumers.topics import EnsureReport

console = Console()

PrefixOption = Annotated[
    str | None,
    typer.Option("--topic-prefix", help="Prefix of every topic name (default: PRM_TOPIC_PREFIX, else none)."),
]


def _fail(message: str, code: int = 2) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=code)


def kafka_ensure_topics(
    increase_partitions: Annotated[
        bool,
        typer.Option(
            "--increase-partitions",
            help="Add partitions to topics that have fewer than wanted (moves keys: order across the change is lost).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    topic_prefix: PrefixOption = None,
) -> None:
    """Create the missing Kafka topics and report drift on existing ones (exit 1 on unresolved drift)."""
    from kafka.errors import KafkaError

    from consumers.topics import TopicDefaults, TopicError, admin_client, ensure_topics

    settings = Settings()
    defaults = TopicDefaults.from_mapping({"prefix": settings.topic_prefix if topic_prefix is None else topic_prefix})
    try:
        admin = admin_client(settings.kafka_bootstrap)
    except KafkaError as exc:
        _fail(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc} (is it running? try deploy/up)")
        return
    try:
        report = ensure_topics(admin, defaults.specs(), increase_partitions=increase_partitions)
    except (KafkaError, TopicError) as exc:
        _fail(f"cannot ensure topics on {settings.kafka_bootstrap}: {exc}")
        return
    finally:
        admin.close()
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
    else:
        _render_report(report)
    if report.unresolved_drift:
        raise typer.Exit(code=1)


def _render_report(report: EnsureReport) -> None:
    table = Table(title="Kafka topics")
    table.add_column("topic", overflow="fold")
    table.add_column("status")
    table.add_column("partitions", justify="right")
    table.add_column("retention.ms", justify="right")
    table.add_column("cleanup", overflow="fold")
    table.add_column("drift", overflow="fold")
    styles = {"created": "green", "ok": "green", "increased": "yellow", "drift": "bold red"}
    for topic in report.topics:
        table.add_row(
            topic.name,
            f"[{styles.get(topic.status, '')}]{topic.status}[/]",
            f"{topic.partitions}/{topic.wanted_partitions}",
            topic.configs.get("retention.ms", ""),
            topic.configs.get("cleanup.policy", ""),
            "; ".join(topic.drift),
        )
    console.print(table)


def relay(
    once: Annotated[bool, typer.Option("--once", help="Publish what is recorded now, then exit.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1000, help="Events per acked batch.")] = 500,
    topic_prefix: PrefixOption = None,
    relay_name: Annotated[str, typer.Option("--relay-name", help="Row of the tracking table.")] = "prm-events",
    poll_interval: Annotated[float, typer.Option("--poll-interval", min=0.01, help="Seconds between polls.")] = 0.2,
    progress_interval: Annotated[
        float, typer.Option("--progress-interval", help="Seconds between progress lines.")
    ] = 30.0,
) -> None:
    """Publish every recorded event to Kafka (at least once, in order per partner); needs PRM_STORE=postgres."""
    import psycopg

    from api.bootstrap import StartupError, build_program
    from api.logs import configure_logging
    from consumers.relay import Relay, relay_producer
    from consumers.topics import TopicNames

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    if settings.store != "postgres" or not settings.database_url:
        _fail("prm relay needs PRM_STORE=postgres and PRM_DATABASE_URL: its position is tracked next to the events")
        return
    try:
        program = build_program(settings)
    except StartupError as exc:
        _fail(str(exc))
        return
    database_url = settings.database_url
    bootstrap = settings.kafka_bootstrap

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(database_url, connect_timeout=5)

    def producer() -> Any:
        return relay_producer(bootstrap)

    worker = Relay(
        program,
        producer,
        connect,
        TopicNames(settings.topic_prefix if topic_prefix is None else topic_prefix),
        batch_size=batch_size,
        poll_interval=poll_interval,
        relay_name=relay_name,
        schema=settings.database_schema,
        progress_interval=progress_interval,
    )
    try:
        if once:
            total = _drain(worker)
            console.print(f"published {total} events; position {worker.published_position}, lag {worker.lag()}")
            return
        stop = threading.Event()
        _install_signal_handlers(stop)
        worker.run_forever(stop)
    finally:
        worker.close()
        program.close()


def _drain(worker: Any) -> int:
    """Publish until caught up; a failure is an error (no retry loop in --once)."""
    total = 0
    try:
        while True:
            published = int(worker.run_once())
            total += published
            if published == 0:
                return total
    except Exception as exc:
        _fail(f"relay stopped after {total} events: {type(exc).__name__}: {exc}", code=1)
    return total


def _install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: finish the batch in hand, record it, stop. Second: stop now."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def register(app: typer.Typer) -> None:
    app.command("kafka-ensure-topics")(kafka_ensure_topics)
    app.command("relay")(relay)
