"""The ingest's binary array parameters reach PostgreSQL as the lists psycopg itself would send."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.adapt import PyFormat

from consumers.ingest import (
    ByteaArray,
    Int4Array,
    Int8Array,
    TextArray,
    UUIDArray,
    _BinaryArray,
    _BinaryArrayDumper,
)

pytestmark = pytest.mark.integration

CASES: list[tuple[type[_BinaryArray], str, list[Any]]] = [
    (TextArray, "text", ["a", "", "Việt Nam 😀", "line\nbreak\t'quote\" \\ {braces},", "x" * 5000]),
    (TextArray, "text", [None, "pending", None]),
    (TextArray, "text", []),
    (Int4Array, "int", [0, 1, -1, 2**31 - 1, -(2**31)]),
    (Int4Array, "int", [None, 5]),
    (Int8Array, "bigint", [0, 1, -1, 2**63 - 1, -(2**63), 1_000_000]),
    (Int8Array, "bigint", [None, None]),
    (Int8Array, "bigint", []),
    (ByteaArray, "bytea", [b"", b"\x00\xff\\x00", bytes(range(256)), b'{"state":1}']),
    (ByteaArray, "bytea", [None, b"1"]),
    (UUIDArray, "uuid", [uuid.UUID(int=0), uuid.uuid4(), uuid.UUID("6f1d3c4e-2b7a-5c90-9e8d-7a41b2c3d4e5")]),
    (UUIDArray, "uuid", [None]),
]


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_url, autocommit=True) as connection:
        yield connection


@pytest.mark.parametrize(("cls", "sql_type", "values"), CASES)
def test_the_server_receives_what_a_plain_list_sends(
    conn: psycopg.Connection[Any], cls: type[_BinaryArray], sql_type: str, values: list[Any]
) -> None:
    assert isinstance(conn.adapters.get_dumper(cls, PyFormat.BINARY)(cls, conn), _BinaryArrayDumper)
    row = conn.execute(
        f"SELECT %b::{sql_type}[], %b::{sql_type}[] IS NOT DISTINCT FROM %b::{sql_type}[],"
        f" cardinality(%b::{sql_type}[]), array_lower(%b::{sql_type}[], 1)",
        (cls(values), cls(values), list(values), cls(values), cls(values)),
    ).fetchone()
    assert row is not None
    received, same_as_plain_list, cardinality, lower = row
    assert received == values
    assert same_as_plain_list is True
    assert cardinality == len(values)
    assert lower == (1 if values else None)


def test_unnest_of_several_arrays_lines_them_up(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT * FROM unnest(%b::text[], %b::int[], %b::bigint[], %b::text[])",
        (TextArray(["k1", "k2"]), Int4Array([0, 5]), Int8Array([10, 2**40]), TextArray([None, "e"])),
    ).fetchall()
    assert rows == [("k1", 0, 10, None), ("k2", 5, 2**40, "e")]


def test_values_out_of_range_are_refused_like_psycopg_refuses_them(conn: psycopg.Connection[Any]) -> None:
    # psycopg would send a numeric[] and the cast would fail; the binary array refuses to pack it.
    with pytest.raises(struct.error):
        conn.execute("SELECT %b::bigint[]", (Int8Array([2**63]),))
