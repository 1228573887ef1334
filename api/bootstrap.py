"""The composition root: builds the application and its infrastructure from settings."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from eventsourcing.persistence import PersistenceError

from api.logs import configure_logging
from api.settings import Settings, postgres_env
from domain.application import PartnerProgram


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
