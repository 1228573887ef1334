"""Rebuild every read model from scratch into PostgreSQL, next to the same fold in memory.

    .venv/bin/python bench/projection_rebuild.py [--seed 5] [--scale 5] [--batch-sizes 500,2000,5000]
        [--modes shared,rebuild] [--profile [--profile-mode rebuild|shared]]

Needs the PostgreSQL of ``deploy/up`` (``PRM_DATABASE_URL``, default the test
database). The history is the sample programme of :mod:`api.sample` (recorded
once, cached as JSON lines of envelopes under ``.prm/bench/``, see
:func:`bench.synthetic.sample_lines`). For each batch size it runs
``projections.runner.run_projections`` with the ledger, the channel conflicts and
the dashboards:

* (a) into an ``InMemoryProjectionStore`` (the fold alone);
* (b) into a ``PostgresProjectionStore`` in a fresh schema ``benchproj_<hex>``
  (documents and checkpoints committed every batch, as the workers do).

Each in two modes (``--modes``), the same for (a) and (b):

* ``shared``: ``run_projections`` with its defaults, as the store is used when other
  workers may write it: the cache is dropped at every commit, each batch reads its
  documents again (one bulk read per projection from ``prefetch_keys``, single reads
  for the rest);
* ``rebuild``: ``run_projections(..., rebuild=True)``: the projections are reset and
  folded from scratch by this process alone, so nothing is read back from the store.

The ratio (b)/(a) is the share of the fold's rate that survives the storage.
``--profile``: a further PostgreSQL run (``--profile-mode``) under cProfile (top functions
printed and saved under ``.prm/bench/``). Every schema created is dropped at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import CACHE, sample_lines

from projections.conflicts import ChannelConflicts
from projections.dashboards import Dashboards
from projections.envelope import EventEnvelope
from projections.ledger import CommissionLedger
from projections.memory import InMemoryProjectionStore
from projections.port import Projection, ProjectionStore
from projections.postgres import PostgresProjectionStore
from projections.runner import run_projections

DATABASE_URL = os.environ.get("PRM_DATABASE_URL", "postgresql://prm@127.0.0.1:54329/prm_test")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def projections() -> list[Projection]:
    return [CommissionLedger(), ChannelConflicts(), Dashboards()]


def fold(store: ProjectionStore, events: list[EventEnvelope], batch_size: int, label: str, mode: str) -> float:
    total = len(events)
    last = [time.perf_counter()]

    def progress(seen: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 5:
            say(f"  {label}: {seen:,}/{total:,}")
            last[0] = now

    started = time.perf_counter()
    stats = run_projections(
        store, projections(), events, batch_size=batch_size, progress=progress, rebuild=mode == "rebuild"
    )
    elapsed = time.perf_counter() - started
    assert stats.seen == total, stats
    return elapsed


def fresh_schema(created: list[str]) -> str:
    schema = f"benchproj_{uuid.uuid4().hex[:8]}"
    created.append(schema)
    return schema


def drop_schema(schema: str) -> None:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def postgres_run(events: list[EventEnvelope], batch_size: int, created: list[str], mode: str) -> tuple[float, int]:
    schema = fresh_schema(created)
    store = PostgresProjectionStore(DATABASE_URL, schema)
    store.create_tables()
    try:
        elapsed = fold(store, events, batch_size, f"postgres {mode} batch {batch_size}", mode)
        row = store.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(store.docs)).fetchone()
        docs = int(row[0]) if row else 0
    finally:
        store.close()
        drop_schema(schema)
        created.remove(schema)
    return elapsed, docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--scale", type=int, default=5)
    parser.add_argument("--batch-sizes", default="500,2000,5000")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-batch", type=int, default=2000)
    parser.add_argument("--modes", default="shared,rebuild", help="shared, rebuild or both (comma-separated)")
    parser.add_argument("--profile-mode", default="rebuild", choices=["shared", "rebuild"])
    args = parser.parse_args()
    lines = sample_lines(args.seed, args.scale)
    events = [EventEnvelope.from_json(raw) for raw in lines]
    n = len(events)
    say(f"{n:,} events (sample seed {args.seed}, scale {args.scale}); load {load()}")
    created: list[str] = []
    rows: list[dict[str, Any]] = []
    try:
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            for mode in args.modes.split(","):
                for _ in range(args.repeat):
                    load_before = load()
                    memory_s = fold(InMemoryProjectionStore(), events, batch_size, f"memory batch {batch_size}", mode)
                    say(f"{mode} batch {batch_size}: memory {n / memory_s:,.0f} events/s (load {load()})")
                    pg_s, docs = postgres_run(events, batch_size, created, mode)
                    say(f"{mode} batch {batch_size}: postgres {n / pg_s:,.0f} events/s, {docs:,} docs (load {load()})")
                    row = {
                        "events": n,
                        "mode": mode,
                        "batch_size": batch_size,
                        "memory_s": round(memory_s, 3),
                        "memory_per_s": round(n / memory_s, 1),
                        "postgres_s": round(pg_s, 3),
                        "postgres_per_s": round(n / pg_s, 1),
                        "ratio": round(memory_s / pg_s, 4),
                        "documents": docs,
                        "load_before": load_before,
                        "load_after": load(),
                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        if args.profile:
            say(f"profiling PostgreSQL, {args.profile_mode}, batch {args.profile_batch} (load {load()})")
            schema = fresh_schema(created)
            store = PostgresProjectionStore(DATABASE_URL, schema)
            store.create_tables()
            profiler = cProfile.Profile()
            try:
                profiler.enable()
                run_projections(
                    store, projections(), events, batch_size=args.profile_batch, rebuild=args.profile_mode == "rebuild"
                )
                profiler.disable()
            finally:
                store.close()
                drop_schema(schema)
                created.remove(schema)
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(40)
            report = CACHE / f"projection_rebuild-profile-{args.profile_mode}-{args.profile_batch}.txt"
            report.write_text(out.getvalue())
            print(out.getvalue())
            say(f"profile written to {report}")
    finally:
        for schema in list(created):
            drop_schema(schema)
    with (CACHE / "projection_rebuild.jsonl").open("a") as out_file:
        for row in rows:
            out_file.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
