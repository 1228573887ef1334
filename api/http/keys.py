"""API keys: issued once, stored hashed, checked in constant time, revocable.

A key reads ``prm_<key id>_<secret>``: the key id (16 hex digits) finds the
row, the secret (32 random bytes, URL-safe base64) is never stored -- only
``sha256(salt || secret)`` with a per-key random salt. The secrets are random
and long, so a fast salted hash is enough (no password stretching needed) and
keeps every request cheap; the comparison is ``hmac.compare_digest``.

Each key has a ``role`` (``admin``, ``ops``, ``auditor``, ``service``,
``partner``), a ``label`` (who holds it: it becomes the ``actor`` of the
commands sent with it, and the ``source`` of the sales a service publishes)
and, for the ``partner`` role only, the ``partner_id`` it is bound to.

Two implementations of the ``KeyStore`` port: :class:`SQLiteKeyStore` (a file
in the embedded mode, ``:memory:`` in tests) and :class:`PostgresKeyStore`
(table ``prm_api_keys``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

__all__ = [
    "ADMIN",
    "AUDITOR",
    "OPS",
    "PARTNER",
    "ROLES",
    "SERVICE",
    "ApiKey",
    "IssuedKey",
    "KeyStore",
    "PostgresKeyStore",
    "SQLiteKeyStore",
    "check_role",
]

ADMIN = "admin"
OPS = "ops"
AUDITOR = "auditor"
SERVICE = "service"
PARTNER = "partner"
ROLES: tuple[str, ...] = (ADMIN, OPS, AUDITOR, SERVICE, PARTNER)

TOKEN_PREFIX = "prm"
_TOKEN = re.compile(r"^prm_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")
_LABEL = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")
_DUMMY_SALT = "0" * 32
TABLE = "prm_api_keys"


@dataclass(frozen=True)
class ApiKey:
    """What a key may do, without its secret."""

    key_id: str
    role: str
    label: str
    partner_id: str | None
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "role": self.role,
            "label": self.label,
            "partner_id": self.partner_id,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class IssuedKey:
    """A new key and its token: the token is shown once and never stored."""

    key: ApiKey
    token: str


class KeyStore(Protocol):
    def create(self, role: str, *, label: str, partner_id: str | None = None) -> IssuedKey: ...

    def authenticate(self, token: str) -> ApiKey | None:
        """The active key of ``token``, or ``None`` (unknown, malformed, wrong secret or revoked)."""
        ...

    def list(self) -> list[ApiKey]: ...

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (idempotent); ``KeyError`` when there is no such key."""
        ...

    def close(self) -> None: ...


def check_role(role: str, partner_id: str | None, label: str) -> None:
    """A partner key names its partner; no other role may."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if role == PARTNER and not (partner_id and partner_id.strip()):
        raise ValueError("a partner key must be bound to a partner id (--partner P-…)")
    if role != PARTNER and partner_id is not None:
        raise ValueError(f"only partner keys are bound to a partner; a {role} key is not")
    if not _LABEL.fullmatch(label):
        raise ValueError("a key label is 1 to 100 printable characters")


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def _new_secret() -> tuple[str, str, str, str]:
    """(key id, token, salt, digest)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    return key_id, f"{TOKEN_PREFIX}_{key_id}_{secret}", salt, _digest(salt, secret)


def _split(token: str) -> tuple[str, str] | None:
    match = _TOKEN.fullmatch(token.strip())
    return (match.group(1), match.group(2)) if match else None


def _verify(row: tuple[str, str] | None, secret: str) -> bool:
    """Constant-time check of ``secret`` against a stored (salt, digest); a dummy check when there is no row."""
    salt, stored = row if row is not None else (_DUMMY_SALT, "0" * 64)
    ok = hmac.compare_digest(_digest(salt, secret), stored)
    return ok and row is not None


def _now() -> datetime:
    return datetime.now(UTC)


def _instant(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(str(value)).astimezone(UTC)


def _key(row: tuple[Any, ...]) -> ApiKey:
    key_id, role, label, partner_id, created_at, revoked_at = row
    created = _instant(created_at)
    assert created is not None
    return ApiKey(str(key_id), str(role), str(label), partner_id, created, _instant(revoked_at))


_COLUMNS = "key_id, role, label, partner_id, created_at, revoked_at"


class SQLiteKeyStore:
    """Keys in a SQLite file (or ``:memory:``)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                " key_id TEXT PRIMARY KEY, role TEXT NOT NULL, label TEXT NOT NULL, partner_id TEXT,"
                " salt TEXT NOT NULL, digest TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT)"
            )

    def create(self, role: str, *, label: str, partner_id: str | None = None) -> IssuedKey:
        check_role(role, partner_id, label)
        key_id, token, salt, digest = _new_secret()
        created = _now()
        with self._lock:
            self._conn.execute(
                f"INSERT INTO {TABLE} (key_id, role, label, partner_id, salt, digest, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, role, label, partner_id, salt, digest, created.isoformat()),
            )
        return IssuedKey(ApiKey(key_id, role, label, partner_id, created), token)

    def authenticate(self, token: str) -> ApiKey | None:
        parts = _split(token)
        if parts is None:
            return None
        key_id, secret = parts
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS}, salt, digest FROM {TABLE} WHERE key_id = ?", (key_id,)
            ).fetchone()
        if not _verify((row[6], row[7]) if row else None, secret):
            return None
        key = _key(tuple(row[:6]))
        return key if key.active else None

    def list(self) -> list[ApiKey]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY created_at, key_id").fetchall()
        return [_key(tuple(row)) for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        with self._lock:
            self._conn.execute(
                f"UPDATE {TABLE} SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (_now().isoformat(), key_id),
            )
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            raise KeyError(f"no API key {key_id!r}")
        return _key(tuple(row))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresKeyStore:
    """Keys in ``<schema>.prm_api_keys``; one connection, one transaction per call."""

    def __init__(self, conninfo: str, schema: str | None = None) -> None:
        self.conninfo = conninfo
        self.schema = schema or "public"
        self.table = sql.Identifier(self.schema, TABLE)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
        return self._conn

    def _run(self, query: sql.SQL | sql.Composed, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._connection()
            try:
                cursor = conn.execute(query, params)
                return list(cursor.fetchall()) if cursor.description else []
            except psycopg.Error:
                if conn.broken or conn.closed:
                    self._conn = None
                raise

    def create_tables(self) -> None:
        self._run(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
        self._run(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " key_id text PRIMARY KEY, role text NOT NULL, label text NOT NULL, partner_id text,"
                " salt text NOT NULL, digest text NOT NULL, created_at timestamptz NOT NULL,"
                " revoked_at timestamptz)"
            ).format(self.table)
        )

    def create(self, role: str, *, label: str, partner_id: str | None = None) -> IssuedKey:
        check_role(role, partner_id, label)
        key_id, token, salt, digest = _new_secret()
        created = _now()
        self._run(
            sql.SQL(
                "INSERT INTO {} (key_id, role, label, partner_id, salt, digest, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            ).format(self.table),
            (key_id, role, label, partner_id, salt, digest, created),
        )
        return IssuedKey(ApiKey(key_id, role, label, partner_id, created), token)

    def authenticate(self, token: str) -> ApiKey | None:
        parts = _split(token)
        if parts is None:
            return None
        key_id, secret = parts
        rows = self._run(
            sql.SQL("SELECT " + _COLUMNS + ", salt, digest FROM {} WHERE key_id = %s").format(self.table), (key_id,)
        )
        row = rows[0] if rows else None
        if not _verify((row[6], row[7]) if row else None, secret):
            return None
        assert row is not None
        key = _key(tuple(row[:6]))
        return key if key.active else None

    def list(self) -> list[ApiKey]:
        rows = self._run(sql.SQL("SELECT " + _COLUMNS + " FROM {} ORDER BY created_at, key_id").format(self.table))
        return [_key(row) for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        self._run(
            sql.SQL("UPDATE {} SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL").format(self.table),
            (key_id,),
        )
        rows = self._run(sql.SQL("SELECT " + _COLUMNS + " FROM {} WHERE key_id = %s").format(self.table), (key_id,))
        if not rows:
            raise KeyError(f"no API key {key_id!r}")
        return _key(rows[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
