"""PostgreSQL projection store: documents as JSONB rows, checkpoints in the same transaction.

The connection is in autocommit mode: each read is a single statement (no
BEGIN/COMMIT around it), and ``commit`` writes a whole batch in one explicit
transaction with one statement per table.

Revisions
---------
Every commit of a projection takes the next number of that projection's
counter (``rm_revisions``) and stamps the documents it writes with it. The
counter row is locked from the first statement of the commit to its end, so
revisions are assigned in commit order: once a reader sees revision ``R``,
every commit numbered ``R`` or below is visible. A commit that deletes
documents (and ``reset``) is also listed in the counter's ``deleted`` (the
last :data:`DELETES_KEPT`). :meth:`PostgresProjectionStore.changes_since`
uses this to tell a writer that keeps documents across its batches (the Kafka
workers, :class:`consumers.worker.ReadModelWriter`) which of them other
writers changed since it last looked: one indexed query of keys, instead of
reading every document again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
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
    revision bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (projection, kind, key)
);
ALTER TABLE {docs} ADD COLUMN IF NOT EXISTS revision bigint NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS {revision_index} ON {docs} (projection, revision);
CREATE TABLE IF NOT EXISTS {revisions} (
    projection text PRIMARY KEY,
    revision bigint NOT NULL,
    deleted bigint[] NOT NULL DEFAULT '{{}}'
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


DELETES_KEPT = 64
"""How many of a projection's latest deleting commits the revision counter lists (deletes are rare:
a conflict that turned out not to be one, a reset); a reader that fell further behind reads everything."""


@dataclass(frozen=True)
class Changes:
    """What other writers changed in a projection since a reader's revision.

    (:meth:`PostgresProjectionStore.changes_since`.)

    ``revision``: the counter when asked. ``keys``: the documents written since by commits other
    than the reader's own, or ``None`` when the reader must forget everything it holds (documents
    were deleted or reset by another writer, or the reader's revision is unknown or too old).
    """

    revision: int
    keys: list[DocKey] | None


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
        self.revisions = sql.Identifier(schema, "rm_revisions")
        self.last_revision: int | None = None
        """The revision of this store's last ``commit`` (``None`` before the first, or if it wrote nothing)."""

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
            self.conn.execute(
                sql.SQL(_SCHEMA_DDL).format(
                    docs=self.docs,
                    checkpoints=self.marks,
                    revisions=self.revisions,
                    revision_index=sql.Identifier("rm_docs_revision"),
                )
            )

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

    def keys(self, projection: str, kind: str) -> set[str]:
        """Every key of ``kind`` (without the documents)."""
        rows = self.conn.execute(
            sql.SQL("SELECT key FROM {} WHERE projection = %s AND kind = %s").format(self.docs), (projection, kind)
        ).fetchall()
        return {key for (key,) in rows}

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
        if not upserts and not deleted and not marks:
            self.last_revision = None
            return
        with self.conn.transaction():
            revision = self._next_revision(projection, deleting=bool(deleted))
            if upserts:
                # One statement and one parameter for the whole batch: a JSON array of [kind, key, doc],
                # serialised by orjson (psycopg's text[] literal quoting of documents costs far more).
                # The keys of a mapping are distinct, as ON CONFLICT needs.
                rows = orjson.dumps([[kind, key, doc] for (kind, key), doc in upserts.items()]).decode()
                self.conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (projection, kind, key, doc, revision) "
                        "SELECT %s, e->>0, e->>1, e->2, %s FROM jsonb_array_elements(%s::jsonb) AS e "
                        "ON CONFLICT (projection, kind, key) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now(), "
                        "revision = EXCLUDED.revision"
                    ).format(self.docs),
                    (projection, revision, rows),
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
        self.last_revision = revision

    def _next_revision(self, projection: str, *, deleting: bool) -> int:
        """Take the projection's next revision (inside the caller's transaction; the row stays locked until it ends)."""
        row = self.conn.execute(
            sql.SQL(
                "INSERT INTO {r} (projection, revision, deleted) VALUES (%(p)s, 1, "
                "CASE WHEN %(d)s THEN ARRAY[1::bigint] ELSE '{{}}'::bigint[] END) "
                "ON CONFLICT (projection) DO UPDATE SET revision = {r}.revision + 1, deleted = CASE WHEN %(d)s "
                "THEN ({r}.deleted || ({r}.revision + 1))[greatest(1, cardinality({r}.deleted) + 2 - %(k)s):] "
                "ELSE {r}.deleted END RETURNING revision"
            ).format(r=self.revisions),
            {"p": projection, "d": deleting, "k": DELETES_KEPT},
        ).fetchone()
        assert row is not None
        return int(row[0])

    def changes_since(
        self, projection: str, revision: int | None, own: Collection[int] = (), limit: int | None = None
    ) -> Changes:
        """The documents of ``projection`` that commits other than ``own`` wrote after ``revision``.

        ``revision``: the counter as the reader last saw it (``None``: never). ``own``: the revisions
        of the reader's own commits since then (their documents are what the reader wrote). Keys
        only: the reader drops what it holds of them and reads them again when needed. More than
        ``limit`` keys: "forget everything" instead (a reader that holds fewer documents than
        others changed gains nothing from the list, e.g. one that ran rarely).
        """
        row = self.conn.execute(
            sql.SQL("SELECT revision, deleted FROM {} WHERE projection = %s").format(self.revisions), (projection,)
        ).fetchone()
        current, deleted = (int(row[0]), [int(d) for d in row[1]]) if row is not None else (0, [])
        if revision is None or current < revision:
            return Changes(current, None)
        if current - revision <= len(own) and set(range(revision + 1, current + 1)) <= set(own):
            return Changes(current, [])  # no commit since, or only the reader's own
        foreign_deletes = [d for d in deleted if d > revision and d not in own]
        if foreign_deletes or (len(deleted) >= DELETES_KEPT and deleted[0] > revision):
            return Changes(current, None)
        mine = sorted(own)
        rows = self.conn.execute(
            sql.SQL(
                "SELECT kind, key FROM {} WHERE projection = %s AND revision > %s AND revision <> ALL(%s::bigint[]) "
                "LIMIT %s"
            ).format(self.docs),
            (projection, revision, mine, None if limit is None else limit + 1),
        ).fetchall()
        if limit is not None and len(rows) > limit:
            return Changes(current, None)
        return Changes(current, [(kind, key) for kind, key in rows])

    def reset(self, projection: str) -> None:
        with self.conn.transaction():
            self._next_revision(projection, deleting=True)
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE projection = %s").format(self.docs), (projection,))
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE projection = %s").format(self.marks), (projection,))

    def dump(self, projection: str) -> dict[DocKey, Doc]:
        rows = self.conn.execute(
            sql.SQL("SELECT kind, key, doc FROM {} WHERE projection = %s").format(self.docs), (projection,)
        ).fetchall()
        return {(kind, key): doc for kind, key, doc in rows}
