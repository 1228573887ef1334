"""``prm worker``: the faust projection workers (Kafka -> PostgreSQL read models).

Composition only: settings are read here, the worker itself is
:mod:`consumers.worker`. What it reads from :class:`api.settings.Settings`:

* ``database_url`` (``PRM_DATABASE_URL``): the read models' database (required);
* ``database_schema`` (``PRM_DATABASE_SCHEMA``): the read models' schema unless
  ``--schema`` is given (``public`` when neither is set);
* ``kafka_bootstrap`` (``PRM_KAFKA_BOOTSTRAP``), ``log_format``, ``log_level``.

The consumer group (``--workers-id``), the projections (``--projections``) and
the topic prefix (``--topic-prefix``) are command-line options only, with no
setting behind them. The read models have no schema setting of their own: they
share the event store's ``database_schema``.

Projections are looked up by name in :data:`PROJECTIONS`. The ledger and the
conflicts are imported lazily, so a missing or broken module is a clear error
naming the projection rather than an import failure of the whole command line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console

from api.bootstrap import StartupError, check_postgres
from api.logs import configure_logging
from api.settings import Settings
from consumers.worker import ProjectionSpec, WorkerConfig

__all__ = ["DEFAULT_PROJECTIONS", "PROJECTIONS", "UnknownProjection", "projection_specs", "register", "worker"]

DEFAULT_PROJECTIONS = "ledger,conflicts,dashboards"


class UnknownProjection(ValueError):
    """A projection name that is not registered, or whose module cannot be imported."""


def _dashboards() -> ProjectionSpec:
    from projections.dashboards import Dashboards

    # Every dashboards document is written by one stream (a partner, ``direct``): partitions run in parallel.
    return ProjectionSpec(Dashboards(), partition_local=True)


def _ledger() -> ProjectionSpec:
    from projections.ledger import CommissionLedger

    # A Kafka worker must not recalculate every partner when the request arrives (see the ledger's docstring),
    # and that is what makes the ledger partition-local: with ``recalculate_on_request=False``
    # * a partner event (``prm.events.v1``, keyed by its partner) writes only documents of that partner:
    #   ``partner``, ``partner_month``, ``registration`` and ``discrepancy`` are keyed by the partner id;
    #   ``sale`` and ``line`` by ids of that partner's own sales, refunds and payouts (a refund event
    #   carries its sale's partner; a refund naming another partner's sale only reads it and books a
    #   discrepancy of its own partner);
    # * a plan event (``prm.program.v1`` only) writes only ``plan`` and ``recalculations``; partner events
    #   read them, by sequence, after the programme gate. (With ``True`` a recalculation request would
    #   rewrite every partner's documents from the programme partition: not partition-local.)
    return ProjectionSpec(CommissionLedger(recalculate_on_request=False), partition_local=True)


def _conflicts() -> ProjectionSpec:
    from projections.conflicts import ChannelConflicts

    # Index documents (domain, tax id, names per country) are shared by every partner: serialised.
    return ProjectionSpec(ChannelConflicts(), partition_local=False)


PROJECTIONS: dict[str, Callable[[], ProjectionSpec]] = {
    "dashboards": _dashboards,
    "ledger": _ledger,
    "conflicts": _conflicts,
}


def projection_specs(names: str) -> list[ProjectionSpec]:
    """The specs for a comma-separated list of projection names (in that order, without duplicates)."""
    wanted = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
    if not wanted:
        raise UnknownProjection("no projection named (choose among: " + ", ".join(sorted(PROJECTIONS)) + ")")
    specs = []
    for name in wanted:
        factory = PROJECTIONS.get(name)
        if factory is None:
            raise UnknownProjection(f"unknown projection {name!r} (known: {', '.join(sorted(PROJECTIONS))})")
        try:
            specs.append(factory())
        except ImportError as exc:
            raise UnknownProjection(f"projection {name!r} is not available: {exc}") from None
    return specs


def _fail(message: str, code: int = 2) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=code)


def worker(
    workers_id: Annotated[
        str, typer.Option("--workers-id", "--app-id", help="faust app id = Kafka consumer group of the workers.")
    ] = "prm-projections",
    projections: Annotated[
        str, typer.Option("--projections", help="Comma-separated projections to drive.")
    ] = DEFAULT_PROJECTIONS,
    topic_prefix: Annotated[
        str, typer.Option("--topic-prefix", help="Prefix of every topic name (side-by-side environments, tests).")
    ] = "",
    schema: Annotated[
        str | None, typer.Option("--schema", help="Read-model schema (default: PRM_DATABASE_SCHEMA, else public).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Events per batch (at most).")] = 1000,
    batch_within: Annotated[float, typer.Option(min=0.001, help="Seconds a partial batch may wait.")] = 0.2,
    threads: Annotated[int, typer.Option(min=1, help="PostgreSQL writer threads (one connection each).")] = 4,
    session_timeout: Annotated[float, typer.Option(min=1.0, help="Kafka group session timeout, seconds.")] = 10.0,
    gate_patience: Annotated[
        float, typer.Option(min=0.0, help="Seconds to wait for the programme owner before reading it ourselves.")
    ] = 0.5,
    lag_interval: Annotated[float, typer.Option(min=0.0, help="Seconds between lag reports (0: none).")] = 30.0,
    keep_docs: Annotated[
        int,
        typer.Option(
            min=0,
            help="Documents each projection's lock scope keeps between batches, re-read only when another "
            "writer changed them (0: read every batch afresh).",
        ),
    ] = WorkerConfig.keep_docs,
) -> None:
    """Run a projection worker: consume prm.events.v1 and prm.program.v1 into the PostgreSQL read models."""
    import psycopg
    from aiokafka.errors import KafkaError

    from consumers.program_gate import MissingTopics
    from consumers.worker import ProjectionWorker

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    quiet = logging.getLogger().getEffectiveLevel() > logging.DEBUG
    for noisy in ("faust", "mode", "aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING if quiet else logging.DEBUG)
    if not settings.database_url:
        _fail("prm worker needs PRM_DATABASE_URL (postgresql://user@host:port/dbname) for the read models")
        return
    try:
        check_postgres(settings.database_url)
        specs = projection_specs(projections)
    except (StartupError, UnknownProjection) as exc:
        _fail(str(exc))
        return
    config = WorkerConfig(
        app_id=workers_id,
        bootstrap=settings.kafka_bootstrap,
        conninfo=settings.database_url,
        schema=schema or settings.database_schema or "public",
        topic_prefix=topic_prefix,
        batch_size=batch_size,
        batch_within=batch_within,
        threads=threads,
        session_timeout=session_timeout,
        heartbeat_interval=min(1.0, session_timeout / 4),
        gate_patience=gate_patience,
        lag_interval=lag_interval,
        keep_docs=keep_docs,
    )
    try:
        ProjectionWorker(config, specs).run(loglevel="DEBUG" if not quiet else "WARNING")
    except MissingTopics as exc:
        _fail(str(exc))
    except (KafkaError, OSError) as exc:
        _fail(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc!r} (is it running? try deploy/up)")
    except psycopg.Error as exc:
        _fail(f"cannot prepare the read models in schema {config.schema}: {exc}")


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
