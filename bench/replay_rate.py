"""Replay rate from Kafka next to the raw kafka-python read rate of the same topics, in one run.

    .venv/bin/python bench/replay_rate.py [--sizes 100000,1000000] [--target sqlite|memory] [--profile]
    .venv/bin/python bench/replay_rate.py --sizes 1000000 --variants 2000:20000,2000:60000,2000:20000 [--spy]

Needs the Kafka of ``deploy/up``. For each size N it creates fresh topics under a
unique prefix ``benchproj-<hex>.`` (``consumers.topics.TopicDefaults``), publishes a
synthetic history of N envelopes (:mod:`bench.synthetic`) routed exactly as the
relay routes them (``consumers.relay.route``: plan/programme events on
``prm.program.v1`` keyed by subject, the rest on ``prm.events.v1`` keyed by
partner or ``direct``), then measures on the same messages:

1. raw read: a kafka-python consumer (the history consumer's settings) reading
   every partition of both topics from offset 0 to the end offsets, bytes only;
2. replay: ``consumers.history.read_history`` -> ``projections.replay.replay``
   with the commission ledger into a SQLite file (cached, as ``prm replay --into
   x.sqlite`` does) or an in-memory store;
3. the raw read again (the machine is shared: a drift between 1 and 3 shows the load moved).

``--variants BATCH:KEEP[:OPTION],...``: several replays of the same published topics, one after the other (A/B
comparisons on identical data). Each replay row has its rate in each tenth of the events (``tenths``: both
sizes cover the same timeline of the sample, so tenth i of 100k and tenth i of 1M hold the same mix of event
types), the cyclic GC seconds per tenth and the unit-of-work copies per event. OPTION (SQLite target, probes):
``nocache`` (no ``CachedStore``), ``walN`` (``PRAGMA wal_autocheckpoint=N``), ``pagecacheN`` (N MB page
cache), ``mmapN`` (``PRAGMA mmap_size``, N MB). ``--spy``: py-spy samples each Kafka replay (raw stacks and
the top functions in the row; ``PRM_PYSPY`` names the binary).

``--profile``: a further replay of the smallest size (or ``--profile-size``) under cProfile (top functions printed).
Each replay row also has the process's resident memory right after the replay (the target's cache still
alive), its peak so far (publishing included) and the time spent in cyclic garbage collections.
Topics are deleted at the end. Results: printed, and appended as JSON to
``.prm/bench/replay_rate.jsonl``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import logging
import os
import pstats
import re
import resource
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import CACHE, synthetic

from consumers.history import history_consumer, read_history
from consumers.relay import route
from consumers.topics import TopicDefaults, TopicNames, admin_client, delete_topics, ensure_topics
from projections.envelope import EventEnvelope
from projections.memory import InMemoryProjectionStore
from projections.replay import REPLAY_BATCH, REPLAY_KEEP, open_target, replay

BOOTSTRAP = os.environ.get("PRM_KAFKA_BOOTSTRAP", "127.0.0.1:19092")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def publish(names: TopicNames, count: int) -> tuple[int, float]:
    producer = KafkaProducer(
        bootstrap_servers=BOOTSTRAP, linger_ms=20, batch_size=512 * 1024, acks=1, max_request_size=4 * 1024 * 1024
    )
    started = time.perf_counter()
    size = 0
    for n, raw in enumerate(synthetic(count), 1):
        envelope = EventEnvelope.from_json(raw)
        target = route(envelope, names)
        producer.send(target.topic, value=raw, key=target.key.encode())
        size += len(raw)
        if target.topic == names.program:
            producer.flush()  # as the relay: nothing after a programme event before it is acked
        if n % 100_000 == 0:
            say(f"published {n:,}/{count:,} ({n / (time.perf_counter() - started):,.0f}/s)")
    producer.flush()
    producer.close()
    return size, time.perf_counter() - started


def raw_read(names: TopicNames) -> dict[str, Any]:
    """kafka-python, the history consumer's settings, every partition to its end offset, bytes only."""
    consumer = history_consumer(BOOTSTRAP)
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in (names.events, names.program)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        count = size = 0
        total = sum(ends.values())
        started = time.perf_counter()
        last_report = started
        while remaining:
            batches = consumer.poll(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    size += len(record.value)
                count += len(records)
                if records and records[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
                    consumer.pause(tp)
            now = time.perf_counter()
            if now - last_report > 5:
                say(f"  raw read {count:,}/{total:,}")
                last_report = now
        elapsed = time.perf_counter() - started
    finally:
        consumer.close(autocommit=False)
    return {"records": count, "bytes": size, "elapsed_s": round(elapsed, 3), "per_s": round(count / elapsed, 1)}


def _rss_mb() -> int:
    """Resident memory of this process now (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return -1


def _tenths(marks: list[tuple[int, float, float]], total: int) -> list[dict[str, Any]]:
    """Rate and GC seconds in each tenth of the events, from ``(events read, seconds, gc seconds)`` after each
    commit (the commit that crosses a tenth's boundary closes that tenth)."""
    rows: list[dict[str, Any]] = []
    previous = (0, 0.0, 0.0)
    for tenth in range(1, 11):
        boundary = total * tenth // 10
        mark = next((m for m in marks if m[0] >= boundary), None)
        if mark is None or mark[0] <= previous[0]:
            continue
        events, seconds = mark[0] - previous[0], mark[1] - previous[1]
        rows.append(
            {
                "tenth": tenth,
                "events": events,
                "per_s": round(events / seconds, 1) if seconds > 0 else None,
                "us_per_event": round(1e6 * seconds / events, 1),
                "gc_s": round(mark[2] - previous[2], 3),
            }
        )
        previous = mark
    return rows


class _Spy:
    """py-spy sampling this process (``PRM_PYSPY``: the py-spy binary, default ``/tmp/pyspy/bin/py-spy``)."""

    def __init__(self, out: Path) -> None:
        import subprocess

        binary = os.environ.get("PRM_PYSPY", "/tmp/pyspy/bin/py-spy")
        env = dict(os.environ, PYTHONPATH=str(Path(binary).resolve().parents[1]))
        self.out = out
        command = [binary, "record", "--pid", str(os.getpid()), "-r", "100", "--nonblocking", "--threads", "-f", "raw"]
        self.process = subprocess.Popen(
            [*command, "-o", str(out)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attached before the replay starts

    def stop(self) -> dict[str, Any]:
        import signal

        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)
        # the main thread only (the others are the Kafka clients' I/O threads, mostly idle); functions without
        # their line numbers
        main = f"thread ({threading.main_thread().native_id})"
        own: dict[str, int] = {}
        total: dict[str, int] = {}
        samples = 0
        for line in self.out.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            count = int(count_text)
            frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
            if not frames[0].startswith(main):
                continue
            samples += count
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames):
                total[frame] = total.get(frame, 0) + count
        top = sorted(own.items(), key=lambda item: -item[1])[:40]
        cumulative = sorted(total.items(), key=lambda item: -item[1])[:60]
        return {"samples": samples, "raw": str(self.out), "own": top, "cumulative": cumulative}


def run_replay(
    names: TopicNames | None,
    target_kind: str,
    batch_size: int,
    count: int = 0,
    keep: int = REPLAY_KEEP,
    spy: Path | None = None,
    option: str = "",
) -> dict[str, Any]:
    """Replay from Kafka (``names``) or, with ``names=None``, from the generator (``count`` events, no Kafka).

    ``spy``: sample the replay with py-spy into that file (raw stacks) and report the top functions."""
    with tempfile.TemporaryDirectory(prefix="benchproj-") as tmp:
        closer = None
        if target_kind == "sqlite":
            target = open_target(str(Path(tmp) / "replay.sqlite"), cached=option != "nocache")
            store: Any = target.store
            closer = target.close
            sqlite_store = getattr(target.store, "store", target.store)
            if option.startswith("wal"):  # probe: WAL auto-checkpoint interval (pages)
                sqlite_store._conn.execute(f"PRAGMA wal_autocheckpoint={int(option[3:])}")
            elif option.startswith("pagecache"):  # probe: SQLite page cache (MB)
                sqlite_store._conn.execute(f"PRAGMA cache_size=-{int(option[9:]) * 1024}")
            elif option.startswith("mmap"):  # probe: SQLite memory-mapped I/O (MB)
                sqlite_store._conn.execute(f"PRAGMA mmap_size={int(option[4:]) * 1024 * 1024}")
        else:
            store = InMemoryProjectionStore()
        history: Any
        if names is not None:
            history = read_history(BOOTSTRAP, prefix=names.prefix)
            total = history.total_records
        else:
            history = (EventEnvelope.from_json(raw) for raw in synthetic(count))
            total = count
        last_report = [time.perf_counter()]
        marks: list[tuple[int, float, float]] = []

        def progress(seen: int, _last: int) -> None:
            now = time.perf_counter()
            marks.append((seen, now - started, gc_time[0]))
            if now - last_report[0] > 5:
                say(f"  replay {seen:,}/{total:,}")
                last_report[0] = now

        gc_time = [0.0, 0.0]  # total, start of the current collection

        def gc_watch(phase: str, _info: dict[str, Any]) -> None:
            if phase == "start":
                gc_time[1] = time.perf_counter()
            else:
                gc_time[0] += time.perf_counter() - gc_time[1]

        spying = _Spy(spy) if spy is not None else None
        gc.callbacks.append(gc_watch)
        started = time.perf_counter()
        try:
            stats = replay(history, store, batch_size=batch_size, progress=progress, source="kafka", keep=keep)
            rss_mb = _rss_mb()  # the target's cache is still alive
        finally:
            gc.callbacks.remove(gc_watch)
            elapsed = time.perf_counter() - started
            spied = spying.stop() if spying is not None else None
            if closer is not None:
                closer()
    result = {
        "events": stats.seen,
        "applied": stats.applied,
        "kafka_records": history.stats.records if names is not None else None,
        "duplicates": history.stats.duplicates if names is not None else None,
        "elapsed_s": round(elapsed, 3),
        "per_s": round(stats.seen / elapsed, 1),
        "gc_s": round(gc_time[0], 3),
        "copies_per_event": round(stats.copies / max(stats.seen, 1), 4),
        "rss_after_mb": rss_mb,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "tenths": _tenths(marks, stats.seen),
    }
    if spied is not None:
        result["spy"] = spied
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--target", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--batch-size", type=int, default=REPLAY_BATCH, help="default: the replay's (%(default)s)")
    parser.add_argument(
        "--keep", type=int, default=REPLAY_KEEP, help="working copies kept across batches (default: %(default)s)"
    )
    parser.add_argument(
        "--variants",
        default="",
        help="BATCH:KEEP[:OPTION],... replayed one after the other on the same published topics of each size "
        "(default: --batch-size:--keep once); the raw read runs before the first and after the last",
    )
    parser.add_argument(
        "--spy", action="store_true", help="sample each Kafka replay with py-spy (raw stacks under .prm/bench/)"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--from-generator",
        action="store_true",
        help="replay the synthetic history straight from the generator (no Kafka): the fold and target alone",
    )
    parser.add_argument("--profile-only", action="store_true", help="only the profiled replay (smallest size)")
    parser.add_argument("--profile-size", type=int, default=0, help="events of the profiled replay (default: smallest)")
    args = parser.parse_args()
    for noisy in ("kafka", "kafka.conn", "kafka.coordinator"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = [
        (int(fields[0]), int(fields[1]), fields[2] if len(fields) > 2 else "")
        for fields in (item.split(":") for item in args.variants.split(",") if item)
    ] or [(args.batch_size, args.keep, "")]
    admin = admin_client(BOOTSTRAP, client_id="benchproj")
    results: list[dict[str, Any]] = []
    created: list[str] = []
    try:
        for count in sizes if args.from_generator else []:
            load_before = load()
            say(f"N={count:,}: replay from the generator into {args.target} (load {load_before})")
            rep = run_replay(None, args.target, args.batch_size, count, args.keep)
            row = {
                "n": count,
                "source": "generator",
                "target": args.target,
                "batch_size": args.batch_size,
                "keep": args.keep,
            }
            row.update(replay=rep, load_before=load_before, load_after=load())
            row["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            say(f"N={count:,}: replay from the generator {rep['per_s']:,.0f}/s (load {load()})")
            results.append(row)
            print(json.dumps(row), flush=True)
        for count in sizes if not (args.profile_only or args.from_generator) else []:
            defaults = TopicDefaults(prefix=f"benchproj-{uuid.uuid4().hex[:8]}.")
            names = defaults.names
            ensure_topics(admin, defaults.specs())
            created.extend(names.all())
            say(f"N={count:,}: publishing to {names.prefix}* (load {load()})")
            size, pub_s = publish(names, count)
            say(f"N={count:,}: published {size / 1e6:,.0f} MB in {pub_s:.1f} s; raw read (load {load()})")
            raw1 = raw_read(names)
            say(f"N={count:,}: raw read {raw1['per_s']:,.0f}/s (load {load()})")
            rows = []
            for batch_size, keep, option in variants:
                load_before = load()
                say(
                    f"N={count:,}: replay into {args.target} {option}, batch {batch_size:,}, keep {keep:,} "
                    f"(load {load_before})"
                )
                spy = CACHE / f"replay_rate-spy-{count}-{batch_size}-{keep}{option}.txt" if args.spy else None
                rep = run_replay(names, args.target, batch_size, keep=keep, spy=spy, option=option)
                say(
                    f"N={count:,}: replay {rep['per_s']:,.0f}/s, {rep['copies_per_event']} copies/event, "
                    f"RSS {rep['rss_after_mb']:,} MB, GC {rep['gc_s']} s (load {load()}); per tenth: "
                    + " ".join(f"{t['per_s']:,.0f}" for t in rep["tenths"])
                )
                rows.append(
                    {
                        "n": count,
                        "target": args.target,
                        "batch_size": batch_size,
                        "keep": keep,
                        "option": option,
                        "raw_read": raw1,
                        "replay": rep,
                        "load_before": load_before,
                        "load_after": load(),
                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                )
            raw2 = raw_read(names)
            say(f"N={count:,}: raw read again {raw2['per_s']:,.0f}/s (load {load()})")
            for row in rows:
                rep = row["replay"]
                row["raw_read_after"] = raw2
                row["ratio"] = round(rep["per_s"] / raw1["per_s"], 4)
                row["ratio_vs_mean_raw"] = round(2 * rep["per_s"] / (raw1["per_s"] + raw2["per_s"]), 4)
                results.append(row)
                print(json.dumps(row), flush=True)
            delete_topics(admin, names.all())
            created = [t for t in created if t not in names.all()]
        if args.profile or args.profile_only:
            defaults = TopicDefaults(prefix=f"benchproj-{uuid.uuid4().hex[:8]}.")
            names = defaults.names
            ensure_topics(admin, defaults.specs())
            created.extend(names.all())
            count = args.profile_size or min(sizes)
            publish(names, count)
            say(f"profiling the replay of {count:,} events (load {load()})")
            profiler = cProfile.Profile()
            profiler.enable()
            rep = run_replay(names, args.target, args.batch_size, keep=args.keep)
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(45)
            report = CACHE / f"replay_rate-profile-{count}.txt"
            report.write_text(out.getvalue())
            print(out.getvalue())
            print(json.dumps({"profiled": rep, "load": load(), "profile": str(report)}), flush=True)
    finally:
        if created:
            delete_topics(admin, created)
        admin.close()
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "replay_rate.jsonl").open("a") as out_file:
        for row in results:
            out_file.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
