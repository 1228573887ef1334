"""``prm ingest`` (the inbound consumer) and ``prm publish FILE.jsonl`` (send inbound events).

The composition lives here: Kafka clients are built from :class:`api.settings.Settings`
(``PRM_KAFKA_BOOTSTRAP``), the programme from :func:`api.bootstrap.build_program`.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.bootstrap import StartupError, build_program
from api.logs import configure_logging
from api.settings import Settings
from consumers.ingest import DEFAULT_GROUP, IngestConsumer, PostgresInbox
from consumers.publisher import InvalidEvent, PendingPublish, PublishFailed, SalesPublisher
from consumers.wire import InboundTopicNames, InboundTopics

__all__ = ["build_ingest", "kafka_consumer", "kafka_producer", "register"]

PREFIX_HELP = "Prefix of the topic names (isolates an environment or a test run)."


def _fail(message: str, code: int = 2) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=code)


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.log_format, settings.log_level)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines are per connection attempt


def _servers(settings: Settings) -> list[str]:
    return [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()]


def kafka_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """An idempotent, ``acks=all`` producer of raw bytes (topics are never auto-created)."""
    config: dict[str, Any] = {
        "bootstrap_servers": _servers(settings),
        "acks": "all",
        "linger_ms": 5,
        "allow_auto_create_topics": False,
        "bootstrap_timeout_ms": 15_000,
    }
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except KafkaError as exc:  # kafka-python 3 raises KafkaTimeoutError("Unable to bootstrap …")
        raise StartupError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc} (is it running?)") from None


def kafka_consumer(settings: Settings, group: str, **overrides: Any) -> KafkaConsumer:
    """A group member with manual commits, starting from the earliest offset when the group has none."""
    config: dict[str, Any] = {
        "bootstrap_servers": _servers(settings),
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "allow_auto_create_topics": False,
        "bootstrap_timeout_ms": 15_000,
        "client_id": f"prm-ingest-{group}",
    }
    config.update(overrides)
    try:
        return KafkaConsumer(**config)
    except KafkaError as exc:  # kafka-python 3 raises KafkaTimeoutError("Unable to bootstrap …")
        raise StartupError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc} (is it running?)") from None


def _require_topics(settings: Settings, *names: str) -> None:
    """Fail clearly when a topic is missing (topics are never auto-created)."""
    try:
        probe = KafkaConsumer(
            bootstrap_servers=_servers(settings), bootstrap_timeout_ms=15_000, enable_auto_commit=False
        )
    except KafkaError as exc:
        raise StartupError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc} (is it running?)") from None
    try:
        existing = probe.topics()
    finally:
        probe.close()
    missing = [name for name in names if name not in existing]
    if missing:
        raise StartupError(
            f"missing Kafka topic(s): {', '.join(missing)} (create them first; topics are not auto-created)"
        )


def build_ingest(
    settings: Settings,
    *,
    group: str = DEFAULT_GROUP,
    topics: InboundTopicNames | None = None,
    max_batch: int = 500,
    instance_id: str | None = None,
) -> IngestConsumer:
    """The ingest consumer on the configured PostgreSQL store, its inbox and the broker.

    ``instance_id`` makes the member static (KIP-345): restarted with the same id it gets its partitions back
    at once, instead of the group waiting for the old member's session to time out.
    """
    if settings.store != "postgres":
        raise StartupError("prm ingest needs PRM_STORE=postgres (its inbox lives in the event store's database)")
    topics = topics or InboundTopics()
    program = build_program(settings)
    inbox = PostgresInbox(settings.database_url or "", settings.database_schema)
    consumer = producer = None
    try:
        inbox.setup()
        _require_topics(settings, topics.sales, topics.deadletter)
        overrides: dict[str, Any] = {"max_poll_records": max_batch}
        if instance_id:
            overrides["group_instance_id"] = instance_id
        consumer = kafka_consumer(settings, group, **overrides)
        producer = kafka_producer(settings)
        return IngestConsumer(program, consumer, producer, inbox, topics, max_batch=max_batch)
    except BaseException:
        if consumer is not None:
            consumer.close(autocommit=False)
        if producer is not None:
            producer.close()
        inbox.close()
        program.close()
        raise


def ingest(
    group: Annotated[str, typer.Option(help="Consumer group id.")] = DEFAULT_GROUP,
    topic_prefix: Annotated[str, typer.Option(envvar="PRM_TOPIC_PREFIX", help=PREFIX_HELP)] = "",
    batch: Annotated[int, typer.Option(min=1, max=5000, help="Records per poll.")] = 500,
    instance_id: Annotated[
        str | None,
        typer.Option(
            envvar="PRM_INGEST_INSTANCE_ID",
            help="Static group membership: a stable id per replica (e.g. the pod name); a restarted member "
            "takes its partitions back at once.",
        ),
    ] = None,
) -> None:
    """Consume inbound sales, refunds and opportunities into the event store (runs until SIGTERM/SIGINT).

    Invalid messages go to the dead-letter topic; infrastructure failures are retried, never skipped.
    """
    settings = Settings()
    _configure_logging(settings)
    try:
        worker = build_ingest(
            settings,
            group=group,
            topics=InboundTopics.with_prefix(topic_prefix),
            max_batch=batch,
            instance_id=instance_id,
        )
    except StartupError as exc:
        _fail(str(exc))
        return
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.run_forever(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        worker.close()
        worker.program.close()


# --------------------------------------------------------------------------- publish


@dataclass
class PublishReport:
    lines: int = 0
    sent: int = 0
    blank: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "sent": self.sent,
            "rejected": len(self.rejected),
            "failed": len(self.failed),
            "blank": self.blank,
            "rejections": self.rejected,
            "failures": self.failed,
        }


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            yield number, line.rstrip(b"\r\n")


def publish_file(
    publisher: SalesPublisher, path: Path, *, on_line: Any = None, window: int = 1000, ack_timeout_s: float = 30.0
) -> PublishReport:
    """Validate each line and send the good ones (acks awaited in windows); bad lines are reported, not sent."""
    report = PublishReport()
    pending: list[tuple[int, PendingPublish]] = []

    def settle() -> None:
        for number, item in pending:
            try:
                item.result(ack_timeout_s)
                report.sent += 1
            except PublishFailed as exc:
                report.failed.append({"line": number, "event_id": item.event_id, "error": str(exc)})
        pending.clear()

    for number, line in _lines(path):
        report.lines += 1
        if not line.strip():
            report.blank += 1
        else:
            try:
                pending.append((number, publisher.submit_raw(line)))
            except InvalidEvent as exc:
                report.rejected.append({"line": number, "code": exc.code, "detail": exc.detail})
            except KafkaError as exc:
                report.failed.append({"line": number, "event_id": None, "error": f"{type(exc).__name__}: {exc}"})
            if len(pending) >= window:
                settle()
        if on_line is not None:
            on_line(number)
    settle()
    return report


def publish(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="JSON Lines of CloudEvents.")
    ],
    topic_prefix: Annotated[str, typer.Option(envvar="PRM_TOPIC_PREFIX", help=PREFIX_HELP)] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (for scripts).")] = False,
) -> None:
    """Validate and publish inbound CloudEvents, one per line, to the sales topic.

    Lines that break the wire contract are reported (line, code, detail) and not sent.
    Exit status: 0 when every line was sent, 1 when some were rejected or not acknowledged, 2 on setup errors.
    """
    settings = Settings()
    _configure_logging(settings)
    topics = InboundTopics.with_prefix(topic_prefix)
    try:
        _require_topics(settings, topics.sales)
        producer = kafka_producer(settings, linger_ms=20)
    except StartupError as exc:
        _fail(str(exc))
        return
    total = sum(1 for _ in _lines(file))
    publisher = SalesPublisher(producer, topics)
    with Progress(
        TextColumn("[bold]publishing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=as_json or not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task("publish", total=total)
        report = publish_file(publisher, file, on_line=lambda n: progress.update(task, completed=n))
    producer.close()
    if as_json:
        typer.echo(json.dumps(report.as_dict(), ensure_ascii=False))
    else:
        _render(report, topics.sales)
    if report.rejected or report.failed:
        raise typer.Exit(code=1)


def _render(report: PublishReport, topic: str) -> None:
    console = Console()
    summary = Table(title=f"published to {topic}", show_header=False)
    summary.add_column("what")
    summary.add_column("count", justify="right")
    summary.add_row("lines", str(report.lines))
    summary.add_row("sent", f"[green]{report.sent}[/]")
    summary.add_row("rejected locally", f"[red]{len(report.rejected)}[/]" if report.rejected else "0")
    summary.add_row("not acknowledged", f"[red]{len(report.failed)}[/]" if report.failed else "0")
    if report.blank:
        summary.add_row("blank lines", str(report.blank))
    console.print(summary)
    if report.rejected:
        rejected = Table(title="rejected lines (not sent)")
        rejected.add_column("line", justify="right")
        rejected.add_column("code")
        rejected.add_column("detail", overflow="fold")
        for row in report.rejected[:100]:
            rejected.add_row(str(row["line"]), row["code"], row["detail"])
        if len(report.rejected) > 100:
            rejected.caption = f"{len(report.rejected) - 100} more: use --json for all"
        console.print(rejected)
    for row in report.failed[:20]:
        console.print(f"[red]line {row['line']}:[/] {row['error']}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("publish")(publish)


if __name__ == "__main__":  # python -m api.cli_ingest …: the two commands without the rest of the CLI
    _standalone = typer.Typer(no_args_is_help=True, add_completion=False)
    register(_standalone)
    _standalone()
