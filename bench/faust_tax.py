"""What faust costs on the projection path: the same handler under faust and under a plain aiokafka loop.

    .venv/bin/python bench/faust_tax.py [--events 200000] [--runs raw,parse,getmany:noop,faust:noop]
    .venv/bin/python bench/faust_tax.py --events 30000 --runs parse,getmany:all,faust:all,faust:all:2
    .venv/bin/python bench/faust_tax.py --events 100000 --runs faust:noop --profile
    .venv/bin/python bench/faust_tax.py --events 30000 --runs faust:all,faust:ledger+dashboards:1/conflicts:1

Needs the servers of ``deploy/up``. The history (``--events`` synthetic envelopes
from :mod:`bench.synthetic`, or the recorded sample itself with ``--events 0``) is
published once, routed like the relay (``consumers.relay.route``: partner events by
partner on ``prm.events.v1``, programme events on ``prm.program.v1``), **before any
consumer starts**. Every run then reads the same topics from offset 0, in the same
benchmark run:

* ``raw``: aiokafka ``getmany`` over ``prm.events.v1``, bytes only; ``parse``: the
  same with ``EventEnvelope.from_json`` (the ceiling of any consumer);
* ``DRIVER:PROJECTIONS[:PROCESSES]``: worker processes in a fresh consumer group
  and a fresh read-model schema. ``DRIVER`` is ``faust`` (:class:`ProjectionWorker`
  exactly as ``prm worker`` runs it) or ``getmany`` (a plain aiokafka loop, below,
  that calls the *same* handler: :meth:`ProjectionWorker.process_events` and
  :meth:`ProjectionWorker.process_program`, i.e. the same gate, per-partition
  batches, advisory locks, units of work, checkpoints). ``PROJECTIONS`` is ``noop``
  (a projection that handles nothing: parsing, batching, gate, checkpoints and acks
  only), ``all`` (ledger, conflicts, dashboards) or a ``+``-separated list;
* ``DRIVER:PROJECTIONS[:PROCESSES]/PROJECTIONS[:PROCESSES]…``: a deployment of
  several consumer groups on one read-model schema, e.g.
  ``faust:ledger+dashboards:2/conflicts:1`` (two workers for the partition-local
  projections, one for the channel conflicts), timed until every projection of
  every group has applied every event.

A worker's rate is timed **from its first committed batch to its last event applied**
(the benchmark polls the checkpoints in PostgreSQL every 20 ms), so process start,
the group join and the first batch's ``batch_within`` are not in it; the seconds from
the start of the processes to the first commit are printed too, with the CPU seconds
the worker processes used while timed (from ``/proc``).

``--profile``: the first worker process of each worker run is sampled by ``py-spy``
(``PRM_PYSPY`` or ``/tmp/pyspy/bin/py-spy``, installed with ``pip install --target
/tmp/pyspy py-spy``); the top functions, by own and by total samples, are printed
and the collapsed stacks are kept under ``.prm/bench/``.

``--faust-options '{"broker_max_poll_records": 5000}'``: further faust settings for the
faust workers (``WorkerConfig.faust_options``), to measure what a setting changes.

Topics and schemas are deleted at the end. Each run appends a JSON line to
``.prm/bench/faust_tax.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaProducer
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from consumers.program_gate import Record, kafka_source
from consumers.relay import route
from consumers.topics import TopicDefaults, TopicNames, admin_client, delete_topics, ensure_topics
from projections.envelope import EventEnvelope

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".prm" / "bench"
NOOP = "noop"
ALL = "ledger+conflicts+dashboards"
PYSPY = os.environ.get("PRM_PYSPY", "/tmp/pyspy/bin/py-spy")
WORKER_TREE = ""


class NoOp:
    """Handles nothing: the worker still parses, batches, gates, checkpoints and acks every event."""

    name = NOOP

    def handles(self, event: EventEnvelope) -> bool:
        return False

    def apply(self, event: EventEnvelope, view: Any) -> None:  # pragma: no cover - never handles
        raise AssertionError(event)


# --------------------------------------------------------------------------- #
# Worker processes                                                             #
# --------------------------------------------------------------------------- #
def _child(argv: list[str]) -> None:
    """``faust_tax.py --child DRIVER GROUP PREFIX SCHEMA PROJECTIONS``: one worker process."""
    from api.cli_worker import projection_specs
    from api.logs import configure_logging
    from consumers.worker import ProjectionSpec, ProjectionWorker, WorkerConfig

    driver, group, prefix, schema, projections = argv
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
        faust_options=tuple(json.loads(os.environ.get("PRM_BENCH_FAUST_OPTIONS") or "{}").items()),
    )
    if keep := os.environ.get("PRM_BENCH_KEEP_DOCS"):  # unset: the worker's default (older code has no such field)
        config = dataclasses.replace(config, keep_docs=int(keep))
    if projections == NOOP:
        specs = [ProjectionSpec(NoOp(), partition_local=True)]
    else:
        specs = projection_specs(projections.replace("+", ","))
    worker = ProjectionWorker(config, specs)
    if driver == "faust":
        worker.run()
    else:
        worker.prepare()
        asyncio.run(_getmany_loop(worker, config))


async def _getmany_loop(worker: Any, config: Any) -> None:
    """The worker's handlers driven by a plain aiokafka loop (no group: every partition, from the checkpoints)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = await worker.probe.partitions([config.events_topic, config.program_topic])
        tps = [TopicPartition(t, p) for t, ps in parts.items() for p in ps]
        consumer.assign(tps)
        sources = {kafka_source(tp.topic, tp.partition): tp for tp in tps}
        nexts = await worker._retrying(worker.writer.next_offsets, list(sources))
        for source, tp in sources.items():
            consumer.seek(tp, nexts[source])
        print(json.dumps({"event": "worker.assigned", "partitions": sorted(sources)}), flush=True)
        # Batches shaped like the faust pipeline's: up to ``batch_size`` per partition, at most 8 x in all,
        # or what ``batch_within`` seconds gave.
        program: list[Record] = []
        events: list[Record] = []
        counts: dict[int, int] = {}
        started = loop.time()
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=50, max_records=config.batch_size)
            for tp, messages in fetched.items():
                into = program if tp.topic == config.program_topic else events
                into.extend(Record(m.topic, m.partition, m.offset, m.value) for m in messages)
                if into is events:
                    counts[tp.partition] = counts.get(tp.partition, 0) + len(messages)
            full = max(counts.values(), default=0) >= config.batch_size or len(events) >= 8 * config.batch_size
            if not (full or ((program or events) and loop.time() - started >= config.batch_within)):
                continue
            if program:
                await worker.process_program(program)
            if events:
                await worker.process_events(events)
            program, events, counts, started = [], [], {}, loop.time()
    finally:
        await consumer.stop()
        await worker.probe.close()
        stopped = {"event": "worker.stopped", "applied_events": worker.applied_events}
        print(json.dumps(stopped | {"projections": worker.writer.timings()}), flush=True)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> dict[str, float]:
    """CPU seconds so far: the whole machine (busy), every ``postgres`` and every ``java`` (Kafka) process."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    out = {"machine": (sum(fields) - fields[3] - fields[4]) / tick, "postgres": 0.0, "java": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        comm = head.split("(", 1)[1]
        if comm in ("postgres", "java"):
            parts = tail.split()
            out[comm] += (int(parts[11]) + int(parts[12])) / tick
    return out


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants (py-spy wraps the worker)."""
    total = _cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(_tree_cpu(int(c)) for c in children)


# --------------------------------------------------------------------------- #
# History, raw reads                                                           #
# --------------------------------------------------------------------------- #
def history(events: int, seed: int, scale: int) -> list[bytes]:
    from synthetic import sample_lines, synthetic

    if events <= 0:
        return sample_lines(seed, scale)
    return list(synthetic(events, seed=seed, scale=scale))


def publish(bootstrap: str, names: TopicNames, lines: list[bytes]) -> dict[str, int]:
    """Publish as the relay routes; programme events flushed before anything recorded after them."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=512 * 1024, acks=1)
    futures = []
    for raw in lines:
        where = route(EventEnvelope.from_json(raw), names)
        futures.append(producer.send(where.topic, raw, key=where.key.encode()))
        if where.topic == names.program:
            producer.flush()
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
        started = 0.0
        while remaining:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            if batch and not started:
                started = time.perf_counter()
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


# --------------------------------------------------------------------------- #
# Worker runs                                                                  #
# --------------------------------------------------------------------------- #
def create_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def applied_offsets(conn: psycopg.Connection[Any], schema: str, projections: list[str]) -> dict[str, int]:
    """Per source: events applied by every projection (lowest ``offset + 1``)."""
    if conn.execute("SELECT to_regclass(%s)", (f'"{schema}".rm_checkpoints',)).fetchone() in (None, (None,)):
        return {}
    rows = conn.execute(
        sql.SQL('SELECT projection, source, "offset" FROM {} WHERE "offset" IS NOT NULL').format(
            sql.Identifier(schema, "rm_checkpoints")
        )
    ).fetchall()
    marks: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for projection, source, offset in rows:
        marks[source][projection] = offset + 1
    return {s: min(by.get(p, 0) for p in projections) for s, by in marks.items()}


@dataclass
class WorkerRun:
    label: str
    events: int
    timed_events: int
    seconds: float
    to_first_commit: float
    cpu_seconds: float
    shares: list[int]
    machine_cpu: dict[str, float]
    timings: list[Any]
    profile: str | None = None

    @property
    def rate(self) -> float:
        return self.timed_events / self.seconds if self.seconds > 0 else 0.0


def workers_run(
    url: str,
    bootstrap: str,
    names: TopicNames,
    last: dict[str, int],
    driver: str,
    groups: list[tuple[str, int]],
    profile: bool,
    timeout: float,
) -> WorkerRun:
    """Start ``count`` worker processes for each ``(projections, count)`` of ``groups`` (one consumer group
    each, one read-model schema for all) and time them until every projection has applied every event."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    group = f"bench-{uuid.uuid4().hex[:8]}"
    create_schema(url, schema)
    env = {**os.environ, "PRM_DATABASE_URL": url, "PRM_KAFKA_BOOTSTRAP": bootstrap, "PRM_LOG_FORMAT": "json"}
    if WORKER_TREE:
        env["PYTHONPATH"] = WORKER_TREE  # the workers import the code of another checkout (before/after)
    commands: list[list[str]] = []
    names_of: list[str] = []
    for g, (projections, count) in enumerate(groups):
        command = [sys.executable, str(Path(__file__).resolve()), "--child", driver, f"{group}-g{g}", names.prefix]
        commands += [[*command, schema, projections]] * count
        names_of += [NOOP] if projections == NOOP else [n for n in projections.split("+") if n]
    logs = [Path(tempfile.mkstemp(prefix=f"{group}-w{i}-", suffix=".log")[1]) for i in range(len(commands))]
    spelled = "/".join(f"{projections}:{count}" for projections, count in groups)
    stacks = OUT / f"faust_tax-{driver}-{spelled.replace('/', '-')}-{group}.collapsed" if profile else None
    total = sum(o + 1 for o in last.values())
    processes: list[subprocess.Popen[bytes]] = []
    try:
        launched = time.perf_counter()
        for i, (command, log) in enumerate(zip(commands, logs, strict=True)):
            argv = command
            if stacks is not None and i == 0:
                argv = [PYSPY, "record", "--format", "raw", "--rate", "200", "--threads", "--gil"]
                argv += ["-o", str(stacks), "--", *command]
            with log.open("wb") as out:
                processes.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        first_at = 0.0
        first_applied = 0
        cpu_first = 0.0
        machine_first: dict[str, float] = {}
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                applied = applied_offsets(conn, schema, names_of)
                done = sum(applied.values())
                now = time.perf_counter()
                if done and not first_at:
                    first_at, first_applied = now, done
                    cpu_first = sum(_tree_cpu(p.pid) for p in processes)
                    machine_first = _machine_cpu()
                if done >= total:
                    break
                if any(p.poll() is not None for p in processes):
                    raise RuntimeError(f"a worker exited: {[p.returncode for p in processes]}; logs {logs}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"workers did not catch up in {timeout} s: {done} of {total}")
                time.sleep(0.02)
        finished = time.perf_counter()
        cpu = sum(_tree_cpu(p.pid) for p in processes) - cpu_first
        machine = {k: round(v - machine_first[k], 2) for k, v in _machine_cpu().items()}
        shares = []
        timings = []
        for process, log in zip(processes, logs, strict=True):
            process.send_signal(signal.SIGINT if stacks is not None and process is processes[0] else signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            stopped = [json.loads(x) for x in log.read_text(errors="replace").splitlines() if '"worker.stopped"' in x]
            shares.append(stopped[-1]["applied_events"] if stopped else -1)
            timings.append(stopped[-1].get("projections") if stopped else None)
        label = " + ".join(f"{driver} worker x{count}, {projections}" for projections, count in groups)
        return WorkerRun(
            label,
            total,
            total - first_applied,
            finished - first_at,
            first_at - launched,
            cpu,
            shares,
            machine,
            timings,
            str(stacks),
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        drop_schema(url, schema)
        for log in logs:
            log.unlink(missing_ok=True)


def summarize_stacks(path: Path, top: int = 30) -> str:
    """Top functions of py-spy's collapsed stacks, by own samples and by total samples (per thread)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):
            inclusive[frame] += count
    lines = [f"{total} samples; by thread: " + ", ".join(f"{t} {c}" for t, c in threads.most_common())]
    lines.append("-- own samples --")
    lines += [f"{c:7d} {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines.append("-- total samples --")
    lines += [f"{c:7d} {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="synthetic events (0: the recorded sample)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--scale", type=int, default=5)
    parser.add_argument("--runs", default="raw,parse,getmany:noop,faust:noop")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--worker-tree",
        default="",
        help="a checkout (git worktree) whose code the workers run, e.g. the commit before a change",
    )
    parser.add_argument(
        "--faust-options",
        default="",
        help="JSON object of faust settings for the faust workers, e.g. '{\"broker_max_poll_records\": 5000}'",
    )
    parser.add_argument(
        "--keep-docs", type=int, default=None, help="the workers' keep_docs (default: WorkerConfig's; 0: none)"
    )
    parser.add_argument("--timeout", type=float, default=280.0, help="seconds a worker run may take")
    parser.add_argument(
        "--database-url", default=os.environ.get("PRM_TEST_DATABASE_URL", "postgresql://prm@127.0.0.1:54329/prm_test")
    )
    parser.add_argument("--bootstrap", default=os.environ.get("PRM_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    args = parser.parse_args()
    global WORKER_TREE
    WORKER_TREE = str(Path(args.worker_tree).resolve()) if args.worker_tree else ""
    if args.faust_options:
        os.environ["PRM_BENCH_FAUST_OPTIONS"] = json.dumps(json.loads(args.faust_options))
    if args.keep_docs is not None:
        os.environ["PRM_BENCH_KEEP_DOCS"] = str(args.keep_docs)
    OUT.mkdir(parents=True, exist_ok=True)
    lines = history(args.events, args.seed, args.scale)
    started_at = datetime.now(UTC)
    print(f"{len(lines)} events, {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)

    admin = admin_client(args.bootstrap, client_id="prm-bench")
    defaults = TopicDefaults(prefix=f"bench{uuid.uuid4().hex[:8]}.")
    names = defaults.names
    ensure_topics(admin, defaults.specs())
    rows: list[dict[str, Any]] = []
    try:
        t = time.perf_counter()
        last = publish(args.bootstrap, names, lines)
        print(f"published in {time.perf_counter() - t:.1f} s: {last}", flush=True)
        for run in [r.strip() for r in args.runs.split(",") if r.strip()]:
            load_before = os.getloadavg()
            if run in ("raw", "parse"):
                n, seconds = asyncio.run(
                    raw_consume(args.bootstrap, names.events, defaults.events_partitions, run == "parse")
                )
                row: dict[str, Any] = {"run": run, "events": n, "seconds": seconds, "rate": n / seconds}
            else:
                driver, _, spelled = run.partition(":")
                groups = []
                for part in spelled.split("/"):
                    projections, _, count = part.partition(":")
                    groups.append((ALL if projections == "all" else projections, int(count or 1)))
                result = workers_run(
                    args.database_url, args.bootstrap, names, last, driver, groups, args.profile, args.timeout
                )
                row = {
                    "run": run,
                    "label": result.label,
                    "events": result.events,
                    "timed_events": result.timed_events,
                    "seconds": result.seconds,
                    "rate": result.rate,
                    "to_first_commit_s": result.to_first_commit,
                    "cpu_s": result.cpu_seconds,
                    "cpu_us_per_event": 1e6 * result.cpu_seconds / max(result.timed_events, 1),
                    "shares": result.shares,
                    "cpu_s_while_timed": result.machine_cpu,
                    "lock_timings": result.timings,
                }
                if args.profile and result.profile and Path(result.profile).exists():
                    report = summarize_stacks(Path(result.profile))
                    Path(result.profile).with_suffix(".txt").write_text(report)
                    print(report, flush=True)
            row |= {"load_before": load_before, "load_after": os.getloadavg()}
            if WORKER_TREE:
                row["worker_tree"] = WORKER_TREE
            if args.faust_options and run.startswith("faust"):
                row["faust_options"] = json.loads(args.faust_options)
            if args.keep_docs is not None:
                row["keep_docs"] = args.keep_docs
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        delete_topics(admin, names.all())
        admin.close()
    with (OUT / "faust_tax.jsonl").open("a") as out:
        for row in rows:
            out.write(json.dumps({"at": started_at.isoformat(), "history": len(lines), **row}) + "\n")
    print(f"\n{'run':<28} {'events':>8} {'s':>7} {'events/s':>9} {'first commit s':>14} {'CPU µs/ev':>9}  load")
    for row in rows:
        print(
            f"{row['run']:<28} {row['events']:>8} {row['seconds']:>7.2f} {row['rate']:>9.0f} "
            f"{row.get('to_first_commit_s', 0):>14.2f} {row.get('cpu_us_per_event', 0):>9.0f}  "
            f"{' '.join(f'{x:.2f}' for x in row['load_before'])} -> {' '.join(f'{x:.2f}' for x in row['load_after'])}"
        )


if __name__ == "__main__":
    main()
