"""Settings, read from the environment (prefix ``PRM_``) and an optional ``.env`` file.

This module and :mod:`api.bootstrap` are the only code that reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the processes need to know about their surroundings."""

    model_config = SettingsConfigDict(env_prefix="PRM_", env_file=".env", extra="ignore")

    store: Literal["sqlite", "postgres"] = Field(
        default="sqlite", description="Event store: 'sqlite' (embedded default) or 'postgres'."
    )
    sqlite_path: Path = Field(default=Path(".prm/embedded.sqlite"), description="SQLite event store file.")
    database_url: str | None = Field(
        default=None, description="PostgreSQL URL, e.g. postgresql://prm@127.0.0.1:54329/prm (store=postgres)."
    )
    database_schema: str | None = Field(default=None, description="PostgreSQL schema for the event store tables.")
    kafka_bootstrap: str = Field(default="127.0.0.1:19092", description="Kafka bootstrap servers, comma separated.")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="'json' in production, 'console' (key=value) in a terminal; 'auto' picks by TTY."
    )
    log_level: str = Field(default="INFO")
    keys_path: Path = Field(
        default=Path(".prm/api-keys.sqlite"), description="API keys of the embedded mode (SQLite file)."
    )
    read_models: Literal["auto", "memory", "postgres"] = Field(
        default="auto", description="Read models: in memory (embedded) or PostgreSQL; 'auto' follows the store."
    )
    read_model_schema: str | None = Field(
        default=None, description="PostgreSQL schema of the read models (default: the event store's schema)."
    )
    projection_source: Literal["auto", "local", "kafka"] = Field(
        default="auto",
        description="Who runs the projections: 'local' (this process, from the event store) or 'kafka' (the"
        " workers); 'auto': local for sqlite, kafka for postgres.",
    )
    topic_prefix: str = Field(default="", description="Prefix of the Kafka topic names.")
    api_wait_default_seconds: float = Field(default=5.0, ge=0, le=30, description="Default wait for min_position.")
    api_wait_max_seconds: float = Field(default=30.0, ge=0, le=300, description="Longest wait for min_position.")
    api_ready_max_lag: int = Field(default=10_000, ge=0, description="Projection lag above which /readyz fails.")

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not parts.path.strip("/"):
            raise ValueError("database_url must look like postgresql://user[:password]@host[:port]/dbname")
        return value

    def resolved_read_models(self) -> Literal["memory", "postgres"]:
        if self.read_models != "auto":
            return self.read_models
        return "memory" if self.store == "sqlite" else "postgres"

    def resolved_projection_source(self) -> Literal["local", "kafka"]:
        if self.projection_source != "auto":
            return self.projection_source
        return "local" if self.store == "sqlite" else "kafka"

    def event_store_env(self) -> dict[str, str]:
        """The eventsourcing library's settings for the chosen store (never the in-memory default)."""
        if self.store == "sqlite":
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(self.sqlite_path)}
        if not self.database_url:
            raise ValueError("PRM_STORE=postgres needs PRM_DATABASE_URL (postgresql://user@host:port/dbname)")
        return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **postgres_env(self.database_url, self.database_schema)}


def postgres_env(url: str, schema: str | None = None) -> dict[str, str]:
    parts = urlsplit(url)
    env = {
        "POSTGRES_DBNAME": parts.path.strip("/"),
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_CONNECT_TIMEOUT": "5",
    }
    if schema:
        env["POSTGRES_SCHEMA"] = schema
    return env
