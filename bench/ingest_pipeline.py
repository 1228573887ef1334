"""Inbound pipeline throughput: ``prm.sales.v1`` → ingest → event store → relay → ``prm.events.v1``.

    .venv/bin/python bench/ingest_pipeline.py --events 100000 [--ingest-processes 2] [--batch 500] [--profile]

Needs the servers of ``deploy/up``. In one run, on fresh uniquely prefixed topics and a fresh schema in the
PostgreSQL database ``prm_bench`` (created if missing; ``PRM_BENCH_DATABASE_URL`` to use another; the topics
and the schema are deleted at the end unless ``--keep``):

1. onboards ``--partners`` partners through ``PartnerProgram`` commands (plan, apply, approve, contract,
   onboarding training) and publishes their events with ``prm relay --once`` (not timed);
2. generates ``--events`` valid inbound CloudEvents (sales of those partners and direct sales over a pool of
   customers, VND and USD, 1-3 lines; about 3 % refunds of earlier sales, keyed by sale id like the
   publisher) and produces them to ``prm.sales.v1`` with a batching producer;
3. measures the raw kafka-python consume rate of those records: a ``KafkaConsumer`` of a fresh group, built
   like the ingest's (``api.cli_ingest.kafka_consumer``), reading every partition to its end, bytes only;
4. measures the pipeline: ``prm ingest`` (``--ingest-processes`` of them, one group) and ``prm relay`` as
   processes (as deployed), from the ingest's first inbox row to the relay's record of the last event's
   position; progress every few seconds.

``--profile`` runs the ingest process under cProfile (``--profile-relay`` the relay): the top functions are
printed and saved with the raw profile under ``bench/results/`` (the profiler slows the process: profiled
rates are not the result). The CPU time each process used during the pipeline is reported too, with the
load average: the machine may be shared.
Each run appends a JSON line to ``bench/results/ingest_pipeline.jsonl``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import pstats
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEFAULT_DB = "postgresql://prm@127.0.0.1:54329/prm_bench"  # its own database: test clean-ups never touch it
DEFAULT_KAFKA = "127.0.0.1:19092"
PLAN_ID = "STD"
ONBOARDING_COURSE = "partner-onboarding"
RELAY_NAME = "prm-events"
T0 = datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
HEADERS = [("content-type", b"application/cloudevents+json")]
SKUS = (
    ("CRM-PRO-12M", "software"),
    ("CRM-STD-12M", "software"),
    ("SVC-SUPPORT-12M", "services"),
    ("HW-GATEWAY-01", "hardware"),
)


@dataclass
class Setup:
    url: str
    bootstrap: str
    schema: str
    prefix: str
    events: int
    partners: int
    batch: int
    relay_batch: int
    seed: int
    profile: bool
    log_dir: Path
    profile_relay: bool = False
    ingest_processes: int = 1


@dataclass
class Result:
    events: int
    partners: int
    batch: int
    relay_batch: int
    ingest_processes: int = 1
    produce_s: float = 0.0
    raw_consume_s: float = 0.0
    raw_records: int = 0
    pipeline_s: float = 0.0
    pipeline_wall_s: float = 0.0
    ingest_s: float = 0.0
    recorded: int = 0
    published: int = 0
    profile: bool = False
    cpu_s: dict[str, float] = field(default_factory=dict)
    tenths: list[float] = field(default_factory=list)  # events/s relayed in each tenth of the events
    ingest_cpu_us_tenths: list[float] = field(default_factory=list)  # ingest CPU µs a message, by tenth
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def raw_rate(self) -> float:
        return self.raw_records / self.raw_consume_s if self.raw_consume_s else 0.0

    @property
    def pipeline_rate(self) -> float:
        return self.events / self.pipeline_s if self.pipeline_s else 0.0

    @property
    def ingest_rate(self) -> float:
        return self.events / self.ingest_s if self.ingest_s else 0.0


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(total_kb / 1024 / 1024, 1),
        "cpu": model,
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "code": code_version(),
    }


def code_version() -> str:
    """The checkout's commit, with ``+changes`` when the benchmarked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "domain", "consumers", "projections", "api"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+changes" if changed else commit


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: dict[str, int], database: str) -> dict[str, dict[int, float]]:
    """CPU time (user + system, seconds) so far of the given processes, of the PostgreSQL sessions on
    ``database``, of the other ``postgres`` processes, of this checkout's Kafka broker and of other ``java``
    processes (by pid), and of the whole machine (``total``: ``/proc/stat`` minus idle and iowait)."""
    of = process_cpu
    snapshot: dict[str, dict[int, float]] = {name: {pid: of(pid)} for name, pid in pids.items()}
    for group in ("postgres", "kafka", "other postgres", "other java"):
        snapshot[group] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if comm == "postgres":  # this benchmark's sessions, or the server's other work (other databases too)
            group = "postgres" if f" {database} " in f"{cmdline} " else "other postgres"
        elif comm == "java":  # the broker of this checkout's deploy/up, or another one
            group = "kafka" if str(ROOT / ".prm") in cmdline else "other java"
        else:
            continue
        snapshot[group][int(entry.name)] = of(int(entry.name))
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(x) for x in fields) - int(fields[3]) - int(fields[4])
    snapshot["total"] = {0: busy / os.sysconf("SC_CLK_TCK")}
    return snapshot


def cpu_used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds between two snapshots, per group (processes that ended in between are not counted)."""
    return {
        name: round(sum(t - before.get(name, {}).get(pid, 0.0) for pid, t in pids.items()), 2)
        for name, pids in after.items()
    }


# --------------------------------------------------------------------------- setup


def ensure_database(url: str) -> None:
    """Create the benchmark's database when it is missing (connecting to ``postgres`` on the same server)."""
    parts = urlsplit(url)
    name = parts.path.strip("/")
    try:
        psycopg.connect(url, connect_timeout=5).close()
        return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    print(f"created database {name}")


def settings_env(setup: Setup) -> dict[str, str]:
    return {
        **os.environ,
        "PRM_STORE": "postgres",
        "PRM_DATABASE_URL": setup.url,
        "PRM_DATABASE_SCHEMA": setup.schema,
        "PRM_KAFKA_BOOTSTRAP": setup.bootstrap,
        "PRM_TOPIC_PREFIX": setup.prefix,
        "PRM_LOG_FORMAT": "json",
        "PRM_LOG_LEVEL": "INFO",
    }


def create_topics(setup: Setup) -> None:
    from consumers.topics import TopicDefaults, admin_client, ensure_topics

    admin = admin_client(setup.bootstrap)
    try:
        ensure_topics(admin, TopicDefaults(prefix=setup.prefix).specs())
    finally:
        admin.close()


def delete_topics(setup: Setup) -> None:
    from consumers.topics import TopicDefaults, admin_client
    from consumers.topics import delete_topics as delete

    admin = admin_client(setup.bootstrap)
    try:
        delete(admin, TopicDefaults(prefix=setup.prefix).names.all())
    finally:
        admin.close()


def partner_ids(count: int) -> list[str]:
    return [f"P-{n:04d}" for n in range(1, count + 1)]


def region_of(partner_id: str) -> str:
    return "VN" if int(partner_id[2:]) % 3 else "US"


def onboard(setup: Setup) -> int:
    """Plan, then each partner applies, is approved, signs a contract and completes onboarding."""
    from api.bootstrap import build_program
    from api.settings import Settings

    program = build_program(
        Settings(store="postgres", database_url=setup.url, database_schema=setup.schema, kafka_bootstrap="")
    )
    try:
        at = T0 - timedelta(days=40)
        program.create_plan(plan_id=PLAN_ID, name="Standard", actor="admin", at=at)
        for partner_id in partner_ids(setup.partners):
            region = region_of(partner_id)
            program.apply_partner(
                partner_id=partner_id,
                name=f"Partner {partner_id}",
                type="reseller",
                region=region,
                size="small",
                actor="portal",
                at=at,
            )
            program.approve_partner(partner_id, actor="channel-manager", at=at)
            program.sign_contract(
                contract_id=f"K-{partner_id}",
                partner_id=partner_id,
                starts_on=date(2026, 1, 1),
                ends_on=date(2027, 12, 31),
                auto_renew=False,
                territory=[region],
                terms="standard reseller terms",
                commission_plan_id=PLAN_ID,
                actor="legal",
                at=at,
            )
            program.record_training(
                partner_id, course=ONBOARDING_COURSE, person=f"lead@{partner_id.lower()}.example", actor="lms", at=at
            )
        return program.max_position()
    finally:
        program.close()


def inbound(setup: Setup) -> Iterator[tuple[bytes, bytes, str]]:
    """``--events`` valid inbound CloudEvents: (key, value, kind); about 3 % refunds of earlier sales."""
    from api.sample import INBOUND, SALE_RECORDED, SALE_REFUNDED, Step, to_cloudevent

    rng = random.Random(setup.seed)
    partners = partner_ids(setup.partners)
    customers = [
        {
            "name": f"Khách hàng {n:05d}",
            "domain": f"kh{n:05d}.example.vn",
            "tax_id": f"01{n:08d}",
            "country": "VN",
        }
        for n in range(10_000)
    ]
    refundable: deque[tuple[str, int, str]] = deque(maxlen=5000)  # sale id, total, currency
    run = setup.prefix.strip(".")
    for n in range(setup.events):
        at = T0 + timedelta(seconds=n)
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if refundable and rng.random() < 0.03:
            sale_id, total, currency = refundable.popleft()
            data: dict[str, Any] = {
                "sale_id": sale_id,
                "refund_id": f"RF-{n:07d}",
                "amount_minor": rng.randint(1, max(1, total // 2)),
                "currency": currency,
                "occurred_at": _iso(at),
                "reason": "returned",
            }
            step = Step(INBOUND, SALE_REFUNDED, {**data, "id": message_id, "source": "billing/bench"}, at)
            yield sale_id.encode(), orjson.dumps(to_cloudevent(step)), "refund"
            continue
        partner_id = rng.choice(partners) if rng.random() < 0.9 else None
        currency = "USD" if partner_id and region_of(partner_id) == "US" else "VND"
        unit = 100 if currency == "USD" else 1_000_000
        lines: list[dict[str, Any]] = []
        for _ in range(rng.randint(1, 3)):
            sku, category = rng.choice(SKUS)
            lines.append(
                {
                    "sku": sku,
                    "category": category,
                    "quantity": rng.randint(1, 5),
                    "unit_price_minor": rng.randint(1, 500) * unit,
                    "currency": currency,
                }
            )
        sale_id = f"S-{run}-{n:07d}"
        data = {
            "sale_id": sale_id,
            "partner_id": partner_id,
            "registration_id": None,
            "customer": rng.choice(customers),
            "lines": lines,
            "occurred_at": _iso(at),
        }
        if rng.random() < 0.06:
            refundable.append((sale_id, sum(x["quantity"] * x["unit_price_minor"] for x in lines), currency))
        step = Step(INBOUND, SALE_RECORDED, {**data, "id": message_id, "source": "erp/bench"}, at)
        yield sale_id.encode(), orjson.dumps(to_cloudevent(step)), "sale"


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def produce(setup: Setup, topic: str) -> tuple[int, float, dict[str, int]]:
    producer = KafkaProducer(
        bootstrap_servers=setup.bootstrap, linger_ms=50, batch_size=1024 * 1024, max_request_size=8 * 1024 * 1024
    )
    kinds: dict[str, int] = {}
    count = 0
    started = time.perf_counter()
    for key, value, kind in inbound(setup):
        producer.send(topic, value=value, key=key, headers=HEADERS)
        kinds[kind] = kinds.get(kind, 0) + 1
        count += 1
        if count % 100_000 == 0:
            print(f"  produced {count:,} ({count / (time.perf_counter() - started):,.0f}/s)", flush=True)
    producer.flush(timeout=600)
    elapsed = time.perf_counter() - started
    producer.close()
    return count, elapsed, kinds


def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        return dict(consumer.end_offsets(partitions))
    finally:
        consumer.close()


# --------------------------------------------------------------------------- (a) raw consume


def raw_consume(setup: Setup, topic: str, batch: int) -> tuple[int, float]:
    """Read ``topic`` to its end with a fresh group, bytes only (no deserializer): the ceiling of any consumer."""
    from api.cli_ingest import kafka_consumer
    from api.settings import Settings

    ends = end_offsets(setup.bootstrap, topic)
    settings = Settings(kafka_bootstrap=setup.bootstrap)
    consumer = kafka_consumer(settings, f"bench-raw-{uuid.uuid4().hex[:8]}", max_poll_records=batch)
    consumer.subscribe([topic])
    remaining = {tp for tp, end in ends.items() if end > 0}
    count = 0
    nbytes = 0
    started = None
    try:
        while remaining:
            polled = consumer.poll(timeout_ms=1000, max_records=batch)
            if started is None and polled:
                started = time.perf_counter()
            for tp, records in polled.items():
                for record in records:
                    nbytes += len(record.value)
                count += len(records)
                if records and records[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
        assert started is not None
        elapsed = time.perf_counter() - started
    finally:
        consumer.close(autocommit=False)
    print(f"  raw: {count:,} records, {nbytes / 1e6:,.0f} MB in {elapsed:.2f}s", flush=True)
    return count, elapsed


# --------------------------------------------------------------------------- (b) the pipeline


def start(setup: Setup, name: str, args: list[str], profile_to: Path | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable]
    if profile_to is not None:
        command += ["-m", "cProfile", "-o", str(profile_to)]
    command += ["-m", "api.cli", *args]
    log = (setup.log_dir / f"{name}.log").open("ab")
    return subprocess.Popen(command, cwd=ROOT, env=settings_env(setup), stdout=log, stderr=subprocess.STDOUT)


def relay_once(setup: Setup) -> None:
    subprocess.run(
        [sys.executable, "-m", "api.cli", "relay", "--once", "--relay-name", RELAY_NAME],
        cwd=ROOT,
        env=settings_env(setup),
        check=True,
        stdout=subprocess.DEVNULL,
    )


@dataclass
class Progress:
    store_position: int = 0
    relay_position: int = 0
    relay_updated: datetime | None = None


def progress(conn: psycopg.Connection[Any], schema: str) -> Progress:
    """Cheap to ask every second even at millions of events: two index lookups."""
    state = Progress()
    row = conn.execute(
        sql.SQL("SELECT max(notification_id) FROM {}").format(sql.Identifier(schema, "partnerprogram_events"))
    ).fetchone()
    state.store_position = int(row[0] or 0) if row else 0
    try:
        row = conn.execute(
            sql.SQL("SELECT position, updated_at FROM {} WHERE relay_name = %s").format(
                sql.Identifier(schema, "prm_relay_position")
            ),
            (RELAY_NAME,),
        ).fetchone()
    except psycopg.errors.UndefinedTable:
        row = None
    if row:
        state.relay_position, state.relay_updated = int(row[0]), row[1]
    return state


def interpolate(samples: list[tuple[float, float]], x: float) -> float:
    """``y`` at ``x`` on the polyline of ``(x, y)`` samples (``x`` non-decreasing)."""
    for (x0, y0), (x1, y1) in itertools.pairwise(samples):
        if x0 <= x <= x1 and x1 > x0:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return samples[-1][1] if x >= samples[-1][0] else samples[0][1]


def by_tenth(samples: list[tuple[float, float]], total: int) -> list[float]:
    """The increase of ``y`` over each tenth of ``x`` in ``0..total``."""
    marks = [interpolate(samples, total * k / 10) for k in range(11)]
    return [b - a for a, b in itertools.pairwise(marks)]


def inbox_summary(conn: psycopg.Connection[Any], schema: str) -> tuple[dict[str, int], datetime, datetime]:
    """Outcome counts, first claim and last completion (one scan of the inbox, at the end)."""
    rows = conn.execute(
        sql.SQL("SELECT outcome, count(*), min(received_at), max(completed_at) FROM {} GROUP BY outcome").format(
            sql.Identifier(schema, "prm_inbox")
        )
    ).fetchall()
    counts = {str(outcome): int(n) for outcome, n, _, _ in rows}
    first = min(r[2] for r in rows)
    last = max(r[3] for r in rows if r[3] is not None)
    return counts, first, last


def pipeline(setup: Setup, onboarded: int, result: Result) -> Path | None:
    """Start ``prm ingest`` and ``prm relay``; wait until every event is stored and relayed.

    Every message of this benchmark is valid and records exactly one event, so the run is over when the relay
    has recorded position ``onboarded + events``; the inbox is checked at the end.
    """
    profile_to = RESULTS / f"ingest_{setup.events}.prof" if setup.profile else None
    relay_profile = RESULTS / f"relay_{setup.events}.prof" if setup.profile_relay else None
    group = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    expected = onboarded + setup.events
    conn = psycopg.connect(setup.url, autocommit=True)
    launched = time.perf_counter()
    ingests = [
        start(
            setup,
            f"ingest-{n}" if n else "ingest",
            ["ingest", "--group", group, "--batch", str(setup.batch)],
            profile_to if n == 0 else None,
        )
        for n in range(setup.ingest_processes)
    ]
    relay = start(
        setup,
        "relay",
        ["relay", "--relay-name", RELAY_NAME, "--batch-size", str(setup.relay_batch), "--poll-interval", "0.05"],
        relay_profile,
    )
    pids = {f"ingest-{n}" if n else "ingest": p.pid for n, p in enumerate(ingests)} | {"relay": relay.pid}
    processes = {name: ingests[n] for n, name in enumerate(list(pids)[:-1])} | {"relay": relay}
    database = urlsplit(setup.url).path.strip("/")
    cpu_before: dict[str, dict[int, float]] | None = None
    last_print = last_change = time.perf_counter()
    last_stored = last_relayed = 0
    printed = (0, 0)
    samples: list[tuple[float, int, int, float]] = []  # (seconds, stored, relayed, ingest CPU seconds)
    try:
        while True:
            time.sleep(0.1 if cpu_before is None else 1.0)
            for name, process in processes.items():
                if process.poll() is not None:
                    tail = (setup.log_dir / f"{name}.log").read_text()[-3000:]
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
            state = progress(conn, setup.schema)
            now = time.perf_counter()
            if cpu_before is None and state.store_position > onboarded:
                cpu_before = cpu_snapshot(pids, database)  # the first batch is in: start-up is over
            stored = state.store_position - onboarded
            relayed = max(state.relay_position - onboarded, 0)
            if stored != last_stored or relayed != last_relayed:
                last_change = now
            elif now - last_change > 180:
                raise RuntimeError(f"no progress for 3 minutes: stored {stored:,}, relayed {relayed:,}")
            if now - last_print >= 5:
                span = now - last_print
                print(
                    f"  [{now - launched:7.1f}s] stored {stored:,}/{setup.events:,}"
                    f" ({(stored - printed[0]) / span:,.0f}/s), relayed {relayed:,}"
                    f" ({(relayed - printed[1]) / span:,.0f}/s)",
                    flush=True,
                )
                last_print, printed = now, (stored, relayed)
            last_stored, last_relayed = stored, relayed
            samples.append((now, stored, relayed, sum(process_cpu(p.pid) for p in ingests)))
            if state.relay_position >= expected:
                cpu_after = cpu_snapshot(pids, database)
                break
        result.pipeline_wall_s = time.perf_counter() - launched
        tenth = setup.events / 10
        result.tenths = [
            round(tenth / s) if s > 0 else 0.0 for s in by_tenth([(r, t) for t, _, r, _ in samples], setup.events)
        ]
        result.ingest_cpu_us_tenths = [
            round(c / tenth * 1e6) for c in by_tenth([(st, c) for _, st, _, c in samples], setup.events)
        ]
        counts, first_received, last_completed = inbox_summary(conn, setup.schema)
        assert state.relay_updated is not None
        result.pipeline_s = (state.relay_updated - first_received).total_seconds()
        result.ingest_s = (last_completed - first_received).total_seconds()
        result.recorded = state.store_position - onboarded
        result.published = relayed
        if cpu_before is not None:
            result.cpu_s = cpu_used(cpu_before, cpu_after)
        if counts != {"recorded": setup.events}:
            print(f"  note: inbox outcomes {counts}, expected {{'recorded': {setup.events}}}", flush=True)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
        conn.close()
    return profile_to


def events_on_topic(setup: Setup) -> int:
    from consumers.topics import TopicNames

    return sum(end_offsets(setup.bootstrap, TopicNames(setup.prefix).events).values())


def report_profile(path: Path, top: int = 35) -> str:
    buffer = io.StringIO()
    stats = pstats.Stats(str(path), stream=buffer)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    text = buffer.getvalue()
    text_path = path.with_suffix(".txt")
    text_path.write_text(text)
    print(text)
    print(f"profile saved: {path} and {text_path}")
    return text


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="inbound messages to send")
    parser.add_argument("--partners", type=int, default=200, help="partners to onboard")
    parser.add_argument("--batch", type=int, default=500, help="ingest records per poll (one store transaction)")
    parser.add_argument("--relay-batch", type=int, default=1000, help="relay events per acked batch (max 1000)")
    parser.add_argument("--seed", type=int, default=20260301)
    parser.add_argument("--profile", action="store_true", help="run the ingest under cProfile")
    parser.add_argument("--profile-relay", action="store_true", help="run the relay under cProfile")
    parser.add_argument("--ingest-processes", type=int, default=1, help="ingest processes in the group")
    parser.add_argument("--keep", action="store_true", help="keep the topics and the schema")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    setup = Setup(
        url=os.environ.get("PRM_BENCH_DATABASE_URL", DEFAULT_DB),
        bootstrap=os.environ.get("PRM_KAFKA_BOOTSTRAP", DEFAULT_KAFKA),
        schema=f"bench_{run}",
        prefix=f"bench-{run}.",
        events=args.events,
        partners=args.partners,
        batch=args.batch,
        relay_batch=args.relay_batch,
        seed=args.seed,
        profile=args.profile,
        log_dir=ROOT / ".prm" / "bench" / run,
        profile_relay=args.profile_relay,
        ingest_processes=args.ingest_processes,
    )
    setup.log_dir.mkdir(parents=True, exist_ok=True)
    ensure_database(setup.url)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = Result(
        setup.events, setup.partners, setup.batch, setup.relay_batch, setup.ingest_processes, profile=setup.profile
    )
    result.machine = machine()
    from consumers.topics import TopicNames

    names = TopicNames(setup.prefix)
    print(f"run {run}: {setup.events:,} events, schema {setup.schema}, topics {setup.prefix}*, logs {setup.log_dir}")
    with psycopg.connect(setup.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(setup.schema)))
    try:
        create_topics(setup)
        started = time.perf_counter()
        onboarded = onboard(setup)
        relay_once(setup)
        baseline = events_on_topic(setup)
        print(
            f"onboarded {setup.partners} partners ({onboarded} events, relayed) in {time.perf_counter() - started:.1f}s"
        )

        sent, result.produce_s, kinds = produce(setup, names.sales)
        print(f"produced {sent:,} {kinds} in {result.produce_s:.1f}s = {sent / result.produce_s:,.0f}/s")

        print("raw kafka-python consume ...", flush=True)
        result.raw_records, result.raw_consume_s = raw_consume(setup, names.sales, setup.batch)
        print(f"raw consume: {result.raw_records:,} in {result.raw_consume_s:.2f}s = {result.raw_rate:,.0f}/s")

        print("pipeline: prm ingest + prm relay ...", flush=True)
        profile_to = pipeline(setup, onboarded, result)
        on_topic = events_on_topic(setup) - baseline
        print(
            f"pipeline: {result.events:,} messages → {result.recorded:,} events stored → {result.published:,}"
            f" relayed ({on_topic:,} new records on {names.events}) in {result.pipeline_s:.1f}s"
            f" (wall {result.pipeline_wall_s:.1f}s incl. start-up)"
        )
        ratio = result.pipeline_rate / result.raw_rate if result.raw_rate else 0.0
        print()
        print(f"| raw kafka-python consume | {result.raw_rate:>10,.0f} msg/s |")
        print(f"| ingest alone (inbox)     | {result.ingest_rate:>10,.0f} msg/s |")
        print(f"| pipeline end to end      | {result.pipeline_rate:>10,.0f} events/s |")
        print(f"| ratio pipeline / raw     | {ratio:>10.1%} |")
        print(f"events/s by tenth of the events: {result.tenths}")
        print(f"ingest CPU µs a message, by tenth: {result.ingest_cpu_us_tenths}")
        if result.cpu_s:
            cpus = ", ".join(f"{k} {v:.1f}s" for k, v in result.cpu_s.items())
            print(f"CPU during the pipeline ({result.pipeline_s:.1f}s x {os.cpu_count()} CPUs): {cpus}")
        result.machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        print(f"load average at start {result.machine['loadavg_at_start']}, at end {result.machine['loadavg_at_end']}")
        line = {**asdict(result), "raw_rate": result.raw_rate, "pipeline_rate": result.pipeline_rate}
        line.update(ingest_rate=result.ingest_rate, ratio=ratio, run=run)
        with (RESULTS / "ingest_pipeline.jsonl").open("a") as out:
            out.write(json.dumps(line) + "\n")
        for path in (profile_to, RESULTS / f"relay_{setup.events}.prof" if setup.profile_relay else None):
            if path is not None and path.exists():
                report_profile(path)
    finally:
        if not args.keep:
            delete_topics(setup)
            with psycopg.connect(setup.url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(setup.schema)))


if __name__ == "__main__":
    main()
