"""PostgreSQL projection store: documents as JSONB rows, checkpoints in the same transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

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


def _dumps(doc: Doc) -> Any:
    return Jsonb(doc, dumps=lambda obj: orjson.dumps(obj).decode())


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
            self._conn = psycopg.connect(self.conninfo, autocommit=False)
        return self._conn

    def create_tables(self) -> None:
        with self.conn.transaction():
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
        kinds = [k for k, _ in wanted]
        names = [n for _, n in wanted]
        with self.conn.transaction():
            rows = self.conn.execute(
                sql.SQL(
                    "SELECT kind, key, doc FROM {} WHERE projection = %s AND (kind, key) IN "
                    "(SELECT * FROM unnest(%s::text[], %s::text[]))"
                ).format(self.docs),
                (projection, kinds, names),
            ).fetchall()
        return {(kind, key): doc for kind, key, doc in rows}

    def load_kind(self, projection: str, kind: str) -> dict[str, Doc]:
        with self.conn.transaction():
            rows = self.conn.execute(
                sql.SQL("SELECT key, doc FROM {} WHERE projection = %s AND kind = %s").format(self.docs),
                (projection, kind),
            ).fetchall()
        return dict(rows)

    def checkpoints(self, projection: str) -> dict[str, Checkpoint]:
        with self.conn.transaction():
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
        with self.conn.transaction(), self.conn.cursor() as cur:
            if upserts:
                cur.executemany(
                    sql.SQL(
                        "INSERT INTO {} (projection, kind, key, doc) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT (projection, kind, key) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now()"
                    ).format(self.docs),
                    [(projection, kind, key, _dumps(doc)) for (kind, key), doc in upserts.items()],
                )
            if deleted:
                cur.executemany(
                    sql.SQL("DELETE FROM {} WHERE projection = %s AND kind = %s AND key = %s").format(self.docs),
                    [(projection, kind, key) for kind, key in deleted],
                )
            if marks:
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
        with self.conn.transaction():
            rows = self.conn.execute(
                sql.SQL("SELECT kind, key, doc FROM {} WHERE projection = %s").format(self.docs), (projection,)
            ).fetchall()
        return {(kind, key): doc for kind, key, doc in rows}
