"""What faust costs on the projection path: raw aiokafka consume vs ``prm worker`` (one and two processes).

    .venv/bin/python bench/faust_tax.py [--scale 5] [--seed 5] [--projections dashboards]

Needs the servers of ``deploy/up``. It records the sample programme once (SQLite,
cached under ``.prm/bench/``), publishes it like the relay to fresh prefixed
topics, then measures, on the same messages:

1. raw aiokafka ``getmany`` over ``prm.events.v1`` (bytes only, then with
   ``EventEnvelope.from_json``): the ceiling of any consumer;
2. ``run_projections`` into PostgreSQL in-process (no Kafka): the projection
   and storage cost alone;
3. the worker with a no-op projection (faust, batching, gate, checkpoints, acks:
   the framework's own cost), then ``prm worker`` with one process, then two
   processes of one group: once
   every worker has its assignment, the events are published and the clock
   runs until every checkpoint has reached the last offset (the publisher is
   faster than the workers, so this is the workers' rate).

Topics and schemas are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaProducer
from psycopg import sql

from consumers.program_gate import kafka_source
from consumers.topics import TopicDefaults, admin_client, delete_topics, ensure_topics
from projections.envelope import EventEnvelope
from projections.postgres import PostgresProjectionStore
from projections.runner import run_projections

ROOT = Path(__file__).resolve().parents[1]
PROGRAM_KINDS = {"plan", "program"}
NOOP = "noop"


class NoOp:
    """Handles nothing: the worker still parses, batches, gates, checkpoints and acks every event."""

    name = NOOP

    def handles(self, event: EventEnvelope) -> bool:
        return False

    def apply(self, event: EventEnvelope, view: Any) -> None:  # pragma: no cover - never handles
        raise AssertionError(event)


def run_noop_worker(argv: list[str]) -> None:
    """``faust_tax.py --noop-worker GROUP PREFIX SCHEMA``: ``prm worker`` with the no-op projection."""
    from api.logs import configure_logging
    from consumers.worker import ProjectionSpec, ProjectionWorker, WorkerConfig

    group, prefix, schema = argv
    configure_logging("json", os.environ.get("PRM_LOG_LEVEL", "INFO"))
    for noisy in ("faust", "mode", "aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = WorkerConfig(
        app_id=group,
        bootstrap=os.environ["PRM_KAFKA_BOOTSTRAP"],
        conninfo=os.environ["PRM_DATABASE_URL"],
        schema=schema,
        topic_prefix=prefix,
        lag_interval=0,
    )
    ProjectionWorker(config, [ProjectionSpec(NoOp(), partition_local=True)]).run()


def sample(seed: int, scale: int) -> list[bytes]:
    cache = ROOT / ".prm" / "bench" / f"sample-seed{seed}-scale{scale}.jsonl"
    if not cache.exists():
        from api.bootstrap import build_program
        from api.sample import generate, run_commands
        from api.settings import Settings
        from projections.store_reader import read_store

        cache.parent.mkdir(parents=True, exist_ok=True)
        print(f"recording the sample programme (seed {seed}, scale {scale}) into {cache} ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            program = build_program(Settings(store="sqlite", sqlite_path=Path(tmp) / "events.sqlite"))
            run_commands(program, generate(seed=seed, scale=scale))
            with cache.open("wb") as out:
                for envelope in read_store(program):
                    out.write(envelope.to_json() + b"\n")
            program.close()
    return cache.read_bytes().splitlines()


def publish(bootstrap: str, names: Any, lines: list[bytes]) -> dict[str, int]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=256 * 1024)
    futures = []
    for raw in lines:
        envelope = EventEnvelope.from_json(raw)
        if envelope.kind in PROGRAM_KINDS:
            futures.append(producer.send(names.program, raw, key=envelope.subject.encode()))
            producer.flush()
        else:
            futures.append(producer.send(names.events, raw, key=(envelope.partner_id or "direct").encode()))
    producer.flush()
    last: dict[str, int] = {}
    for future in futures:
        meta = future.get(timeout=60)
        source = kafka_source(meta.topic, meta.partition)
        last[source] = max(last.get(source, -1), meta.offset)
    producer.close()
    return last


async def raw_consume(bootstrap: str, topic: str, partitions: int, parse: bool) -> tuple[int, float]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        count = 0
        started = time.perf_counter()
        while remaining:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, messages in batch.items():
                for message in messages:
                    if parse:
                        EventEnvelope.from_json(message.value)
                    count += 1
                if messages and messages[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
        return count, time.perf_counter() - started
    finally:
        await consumer.stop()


def create_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def in_process(url: str, lines: list[bytes], projections: list[str]) -> tuple[int, float]:
    from api.cli_worker import projection_specs

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    create_schema(url, schema)
    try:
        store = PostgresProjectionStore(url, schema)
        store.create_tables()
        envelopes = [EventEnvelope.from_json(raw) for raw in lines]
        specs = projection_specs(",".join(projections))
        started = time.perf_counter()
        run_projections(store, [s.projection for s in specs], envelopes, batch_size=1000)
        elapsed = time.perf_counter() - started
        store.close()
        return len(envelopes), elapsed
    finally:
        drop_schema(url, schema)


def caught_up(url: str, schema: str, projections: list[str], last: dict[str, int]) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".rm_checkpoints',)).fetchone()
        if not exists or exists[0] is None:
            return False
        rows = conn.execute(
            sql.SQL('SELECT projection, source, "offset" FROM {} WHERE "offset" IS NOT NULL').format(
                sql.Identifier(schema, "rm_checkpoints")
            )
        ).fetchall()
    offsets = {(p, s): o for p, s, o in rows}
    return all(offsets.get((p, s), -1) >= o for p in projections for s, o in last.items())


def workers_run(
    url: str, bootstrap: str, defaults: TopicDefaults, lines: list[bytes], projections: list[str], count: int
) -> tuple[int, float, list[int]]:
    """Start ``count`` workers on empty topics, publish, wait until caught up; events/s between commits."""
    names = defaults.names
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    group = f"bench-{uuid.uuid4().hex[:8]}"
    create_schema(url, schema)
    env = {**os.environ, "PRM_DATABASE_URL": url, "PRM_KAFKA_BOOTSTRAP": bootstrap, "PRM_LOG_FORMAT": "json"}
    logs = [Path(tempfile.mkstemp(prefix=f"{group}-w{i}-", suffix=".log")[1]) for i in range(count)]
    if projections == [NOOP]:
        command = [sys.executable, __file__, "--noop-worker", group, names.prefix, schema]
    else:
        command = [sys.executable, "-m", "api.cli", "worker", "--workers-id", group, "--topic-prefix", names.prefix]
        command += ["--schema", schema, "--lag-interval", "0", "--projections", ",".join(projections)]
    processes = []
    try:
        for log in logs:
            with log.open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        cwd=ROOT,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        all_sources = {kafka_source(names.events, p) for p in range(defaults.events_partitions)} | {
            kafka_source(names.program, 0)
        }

        def assignments() -> list[set[str]]:
            out = []
            for log in logs:
                latest: set[str] = set()
                for line in log.read_text(errors="replace").splitlines():
                    if line.startswith("{") and '"worker.assigned"' in line:
                        latest = set(json.loads(line)["partitions"])
                out.append(latest)
            return out

        deadline = time.monotonic() + 120
        while True:
            current = assignments()
            if all(current) and set().union(*current) == all_sources and sum(map(len, current)) == len(all_sources):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not assigned: {current}")
            time.sleep(0.1)
        started = time.perf_counter()
        last = publish(bootstrap, names, lines)
        deadline = time.monotonic() + 600
        while not caught_up(url, schema, projections, last):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not catch up")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        shares = []
        for process, log in zip(processes, logs, strict=True):
            process.terminate()
            process.wait(timeout=60)
            stopped = [json.loads(x) for x in log.read_text().splitlines() if '"worker.stopped"' in x]
            shares.append(stopped[-1]["applied_events"] if stopped else -1)
        return len(lines), elapsed, shares
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        drop_schema(url, schema)
        for log in logs:
            log.unlink(missing_ok=True)


def main() -> None:
    if sys.argv[1:2] == ["--noop-worker"]:
        run_noop_worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--scale", type=int, default=5)
    parser.add_argument("--projections", default="dashboards")
    parser.add_argument(
        "--database-url", default=os.environ.get("PRM_TEST_DATABASE_URL", "postgresql://prm@127.0.0.1:54329/prm_test")
    )
    parser.add_argument("--bootstrap", default=os.environ.get("PRM_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    args = parser.parse_args()
    projections = [p.strip() for p in args.projections.split(",") if p.strip()]
    lines = sample(args.seed, args.scale)
    print(f"{len(lines)} events; projections: {', '.join(projections)}; {os.cpu_count()} CPUs", flush=True)

    results: list[tuple[str, int, float]] = []
    admin = admin_client(args.bootstrap, client_id="prm-bench")
    defaults = TopicDefaults(prefix=f"bench{uuid.uuid4().hex[:8]}.")
    ensure_topics(admin, defaults.specs())
    try:
        publish(args.bootstrap, defaults.names, lines)
        for parse in (False, True):
            n, t = asyncio.run(raw_consume(args.bootstrap, defaults.names.events, defaults.events_partitions, parse))
            results.append((f"raw aiokafka getmany{' + from_json' if parse else ''}", n, t))
        n, t = in_process(args.database_url, lines, projections)
        results.append(("run_projections -> PostgreSQL, in-process", n, t))
    finally:
        delete_topics(admin, defaults.names.all())
    for names, count in (([NOOP], 1), (projections, 1), (projections, 2)):
        defaults = TopicDefaults(prefix=f"bench{uuid.uuid4().hex[:8]}.")
        ensure_topics(admin, defaults.specs())
        try:
            n, t, shares = workers_run(args.database_url, args.bootstrap, defaults, lines, names, count)
            what = "no-op projection" if names == [NOOP] else ",".join(names)
            results.append((f"prm worker x{count}, {what} (events per worker: {shares})", n, t))
        finally:
            delete_topics(admin, defaults.names.all())
    admin.close()

    width = max(len(name) for name, _, _ in results)
    print(f"\n{'path'.ljust(width)}  {'events':>7}  {'seconds':>8}  {'events/s':>9}")
    for name, n, t in results:
        print(f"{name.ljust(width)}  {n:>7}  {t:>8.2f}  {n / t:>9.0f}")


if __name__ == "__main__":
    main()
