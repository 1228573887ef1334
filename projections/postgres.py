"""PostgreSQL projection store: documents as JSONB rows, checkpoints in the same transaction.

The connection is in autocommit mode: each read is a single statement (no
BEGIN/COMMIT around it), and ``commit`` writes a whole batch in one explicit
transaction with one statement per table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads

from projections.port import Checkpoint, Doc, DocKey

_SCHEMA_DDL = """
CREATE TABLE IF NOT EXISTS {docs} (
    projection text NOT NULL,
    kind text NOT NULL,
    key text NOT NULL,
    doc jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, kind, key)
);
CREATE TABLE IF NOT EXISTS {checkpoints} (
    projection text NOT NULL,
    source text NOT NULL,
    sequence bigint NOT NULL,
    "offset" bigint,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, source)
);
"""


SCHEMA_SETUP_LOCK = "prm_schema_setup"
"""Advisory-lock key taken while creating tables: two processes starting together on a fresh
database (a relay, an ingest and workers) would otherwise race in ``CREATE … IF NOT EXISTS``
and one would fail with "tuple concurrently updated" or a duplicate catalog key."""


@contextlib.contextmanager
def schema_setup_lock(conninfo: str, schema: str | None = None) -> Iterator[None]:
    """Hold the schema-setup lock (on a connection of its own) while the body creates tables.

    For DDL run by code that does not take the lock itself (the event store's
    recorder, which expects its schema to exist: ``schema`` is created first if
    given). Never nest it around :meth:`PostgresProjectionStore.create_tables`,
    which takes the same lock in its own transaction.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (SCHEMA_SETUP_LOCK,))
        try:
            if schema:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (SCHEMA_SETUP_LOCK,))


class PostgresProjectionStore:
    """Read models in ``<schema>.rm_docs`` and ``<schema>.rm_checkpoints``."""

    def __init__(self, conninfo: str, schema: str = "public") -> None:
        self.conninfo = conninfo
        self.schema = schema
        self._conn: psycopg.Connection[Any] | None = None
        self.docs = sql.Identifier(schema, "rm_docs")
        self.marks = sql.Identifier(schema, "rm_checkpoints")

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            # Autocommit: a read is one statement and one round trip; writes use explicit transactions.
            self._conn = psycopg.connect(self.conninfo, autocommit=True)
            set_json_loads(orjson.loads, self._conn)
        return self._conn

    def create_tables(self) -> None:
        """Create the schema and tables if missing (under the schema-setup lock: concurrent CREATEs collide)."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (SCHEMA_SETUP_LOCK,))
            self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            self.conn.execute(sql.SQL(_SCHEMA_DDL).format(docs=self.docs, checkpoints=self.marks))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def load(self, projection: str, keys: Iterable[DocKey]) -> dict[DocKey, Doc]:
        wanted = list(keys)
        if not wanted:
            return {}
        if len(wanted) == 1:
            ((kind, key),) = wanted
            row = self.conn.execute(
                sql.SQL("SELECT doc FROM {} WHERE projection = %s AND kind = %s AND key = %s").format(self.docs),
                (projection, kind, key),
            ).fetchone()
            return {(kind, key): row[0]} if row is not None else {}
        rows = self.conn.execute(
            sql.SQL(
                "SELECT d.kind, d.key, d.doc FROM unnest(%s::text[], %s::text[]) AS w(kind, key) "
                "JOIN {} AS d ON d.projection = %s AND d.kind = w.kind AND d.key = w.key"
            ).format(self.docs),
            ([k for k, _ in wanted], [n for _, n in wanted], projection),
        ).fetchall()
        return {(kind, key): doc for kind, key, doc in rows}

    def load_kind(self, projection: str, kind: str) -> dict[str, Doc]:
        rows = self.conn.execute(
            sql.SQL("SELECT key, doc FROM {} WHERE projection = %s AND kind = %s").format(self.docs),
            (projection, kind),
        ).fetchall()
        return dict(rows)

    def checkpoints(self, projection: str) -> dict[str, Checkpoint]:
        rows = self.conn.execute(
            sql.SQL('SELECT source, sequence, "offset" FROM {} WHERE projection = %s').format(self.marks),
            (projection,),
        ).fetchall()
        return {source: Checkpoint(source, sequence, offset) for source, sequence, offset in rows}

    def commit(
        self,
        projection: str,
        upserts: Mapping[DocKey, Doc],
        deletes: Iterable[DocKey],
        checkpoints: Iterable[Checkpoint],
    ) -> None:
        deleted = list(deletes)
        marks = list(checkpoints)
        with self.conn.transaction():
            if upserts:
                # One statement and one parameter for the whole batch: a JSON array of [kind, key, doc],
                # serialised by orjson (psycopg's text[] literal quoting of documents costs far more).
                # The keys of a mapping are distinct, as ON CONFLICT needs.
                rows = orjson.dumps([[kind, key, doc] for (kind, key), doc in upserts.items()]).decode()
                self.conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (projection, kind, key, doc) "
                        "SELECT %s, e->>0, e->>1, e->2 FROM jsonb_array_elements(%s::jsonb) AS e "
                        "ON CONFLICT (projection, kind, key) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now()"
                    ).format(self.docs),
                    (projection, rows),
                )
            if deleted:
                self.conn.execute(
                    sql.SQL(
                        "DELETE FROM {} AS d USING unnest(%s::text[], %s::text[]) AS u(kind, key) "
                        "WHERE d.projection = %s AND d.kind = u.kind AND d.key = u.key"
                    ).format(self.docs),
                    ([kind for kind, _ in deleted], [key for _, key in deleted], projection),
                )
            if marks:
                with self.conn.cursor() as cur:
                    cur.executemany(
                        sql.SQL(
                            'INSERT INTO {} (projection, source, sequence, "offset") VALUES (%s, %s, %s, %s) '
                            "ON CONFLICT (projection, source) DO UPDATE SET sequence = EXCLUDED.sequence, "
                            '"offset" = EXCLUDED."offset", updated_at = now()'
                        ).format(self.marks),
                        [(projection, m.source, m.sequence, m.offset) for m in marks],
                    )

    def reset(self, projection: str) -> None:
        with self.conn.transaction():
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE projection = %s").format(self.docs), (projection,))
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE projection = %s").format(self.marks), (projection,))

    def dump(self, projection: str) -> dict[DocKey, Doc]:
        rows = self.conn.execute(
            sql.SQL("SELECT kind, key, doc FROM {} WHERE projection = %s").format(self.docs), (projection,)
        ).fetchall()
        return {(kind, key): doc for kind, key, doc in rows}
