"""The composition root: builds the application and its infrastructure from settings."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from eventsourcing.persistence import PersistenceError

from api.logs import configure_logging
from api.settings import Settings, postgres_env
from domain.application import CommandResult, PartnerProgram
from projections.postgres import schema_setup_lock

if TYPE_CHECKING:
    from api.http.keys import KeyStore
    from api.http.services import ApiServices
    from projections.metrics import Gauges
    from projections.port import ProjectionStore


class StartupError(Exception):
    """A component could not start; the message is one readable line."""


@dataclass
class Container:
    settings: Settings
    program: PartnerProgram

    def close(self) -> None:
        self.program.close()


def build_program(settings: Settings) -> PartnerProgram:
    """The partner programme on the configured event store; fails fast and clearly."""
    try:
        env = settings.event_store_env()
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    if settings.store == "postgres":
        check_postgres(settings.database_url or "")
    try:
        if settings.store == "postgres":
            # The recorder creates its tables on start; processes starting together take turns.
            with schema_setup_lock(settings.database_url or "", settings.database_schema):
                return PartnerProgram(env=env)
        return PartnerProgram(env=env)
    except (PersistenceError, psycopg.Error, OSError) as exc:
        raise StartupError(f"cannot open the {settings.store} event store: {exc}") from None


def check_postgres(url: str) -> None:
    env = postgres_env(url)
    where = f"{env['POSTGRES_HOST']}:{env['POSTGRES_PORT']}/{env['POSTGRES_DBNAME']}"
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StartupError(f"cannot reach PostgreSQL at {where}: {first_line} (is it running? try deploy/up)") from None


def build(settings: Settings | None = None) -> Container:
    settings = settings or Settings()
    configure_logging(settings.log_format, settings.log_level)
    return Container(settings=settings, program=build_program(settings))


# ---------------------------------------------------------------- HTTP API


def build_key_store(settings: Settings) -> KeyStore:
    """API keys: a SQLite file in the embedded mode, ``prm_api_keys`` in PostgreSQL otherwise."""
    from api.http.keys import PostgresKeyStore, SQLiteKeyStore

    if settings.store == "sqlite":
        try:
            return SQLiteKeyStore(settings.keys_path)
        except (sqlite3.Error, OSError) as exc:
            raise StartupError(f"cannot open the API key store {settings.keys_path}: {exc}") from None
    if not settings.database_url:
        raise StartupError("PRM_STORE=postgres needs PRM_DATABASE_URL (postgresql://user@host:port/dbname)")
    check_postgres(settings.database_url)
    store = PostgresKeyStore(settings.database_url, schema=settings.database_schema)
    try:
        with schema_setup_lock(settings.database_url):
            store.create_tables()
    except psycopg.Error as exc:
        raise StartupError(f"cannot create the API key table: {exc}") from None
    return store


def build_projection_store(settings: Settings) -> ProjectionStore:
    """Read models in memory (embedded) or in PostgreSQL (``rm_docs``/``rm_checkpoints``)."""
    from projections.memory import InMemoryProjectionStore
    from projections.postgres import PostgresProjectionStore

    if settings.resolved_read_models() == "memory":
        return InMemoryProjectionStore()
    if not settings.database_url:
        raise StartupError("PostgreSQL read models need PRM_DATABASE_URL (postgresql://user@host:port/dbname)")
    check_postgres(settings.database_url)
    store = PostgresProjectionStore(
        settings.database_url, schema=settings.read_model_schema or settings.database_schema or "public"
    )
    try:
        store.create_tables()
    except psycopg.Error as exc:
        raise StartupError(f"cannot create the read-model tables: {exc}") from None
    return store


def _broker_check(settings: Settings) -> Callable[[], str]:
    def check() -> str:
        import socket

        servers = [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()]
        errors = []
        for server in servers:
            host, _, port = server.rpartition(":")
            try:
                with socket.create_connection((host or server, int(port or 9092)), timeout=1.0):
                    return f"broker {server} reachable"
            except (OSError, ValueError) as exc:
                errors.append(f"{server}: {exc}")
        raise ConnectionError("; ".join(errors) or "no bootstrap server configured")

    return check


def build_api_services(
    settings: Settings | None = None,
    *,
    program: PartnerProgram | None = None,
    keys: KeyStore | None = None,
    gauges: Gauges | None = None,
) -> ApiServices:
    """Everything the HTTP API needs, from settings (see ``api.http.services.ApiServices``).

    ``projection_source=local``: a ``LocalProjector`` runs the projections in this
    process after every command (embedded mode; or PostgreSQL read models kept
    by this process, one API process only). ``kafka``: the workers keep the
    PostgreSQL read models; progress comes from their checkpoints, the relay
    position and the broker's end offsets.
    """
    from api.http.services import ApiServices
    from api.progress import KafkaPartitionEnds, PostgresProjectionProgress
    from api.projector import LocalProjector, PartnerHistory
    from consumers.topics import TopicNames
    from projections.metrics import gauges as default_gauges

    settings = settings or Settings()
    program = program or build_program(settings)
    gauges = gauges or default_gauges()
    keys = keys or build_key_store(settings)
    store = build_projection_store(settings)
    source = settings.resolved_projection_source()
    common: dict[str, Any] = {
        "program": program,
        "store": store,
        "keys": keys,
        "gauges": gauges,
        "wait_default": min(settings.api_wait_default_seconds, settings.api_wait_max_seconds),
        "wait_max": settings.api_wait_max_seconds,
        "max_ready_lag": settings.api_ready_max_lag,
        "closers": [keys.close, program.close],
    }
    if source == "local":
        history = PartnerHistory()
        projector = LocalProjector(program, store, history=history, gauges=gauges)
        projector.catch_up()

        def follow(_result: CommandResult) -> None:
            projector.catch_up()

        return ApiServices(
            progress=projector,
            history=history,
            mode="embedded" if settings.store == "sqlite" else "local",
            after_command=follow,
            **common,
        )
    if settings.resolved_read_models() != "postgres" or not settings.database_url:
        raise StartupError("projection_source=kafka reads the workers' read models: it needs PostgreSQL read models")
    topics = TopicNames(settings.topic_prefix)
    bootstrap = [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()]

    def consumer() -> Any:
        from kafka import KafkaConsumer

        return KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)

    ends = KafkaPartitionEnds(consumer)
    progress = PostgresProjectionProgress(
        store=store,
        head=program.max_position,
        conninfo=settings.database_url,
        schema=settings.database_schema,
        topics=(topics.events, topics.program),
        ends=ends,
    )
    services = ApiServices(
        progress=progress,
        history=PartnerHistory(program),
        mode="kafka",
        readiness={"broker": _broker_check(settings)},
        **common,
    )
    services.closers.append(progress.close)
    return services


def build_read_models(settings: Settings | None = None) -> tuple[ProjectionStore, Callable[[], None]]:
    """The read models for a one-off query (the ``prm`` ops commands) and how to release them.

    With local projections (the embedded mode) they are rebuilt from the event
    store into memory (or caught up in PostgreSQL); with Kafka workers they are
    the workers' PostgreSQL read models as they stand.
    """
    from api.projector import LocalProjector

    settings = settings or Settings()
    store = build_projection_store(settings)
    closers: list[Callable[[], None]] = []
    close_store = getattr(store, "close", None)
    if callable(close_store):
        closers.append(close_store)
    if settings.resolved_projection_source() == "local":
        program = build_program(settings)
        closers.append(program.close)
        LocalProjector(program, store).catch_up()

    def close() -> None:
        for closer in reversed(closers):
            closer()

    return store, close
