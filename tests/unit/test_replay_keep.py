"""The replay's defaults: the bound on kept working copies (``REPLAY_KEEP``) and the batch size.

A replay with the default bound gives the same SQLite bytes as one that keeps nothing across
batches, and ``ReplayStats.copies`` counts the documents its units copied from the target
(not recorded in the target's run history, whose shape stays the same). ``prm replay`` declares
its ``--batch-size`` default as a literal (importing ``projections.replay`` when the CLI starts
costs about 17 ms); it must stay ``REPLAY_BATCH``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from api.cli_audit import replay_command
from projections.envelope import EventEnvelope
from projections.ledger import CommissionLedger
from projections.replay import REPLAY_BATCH, REPLAY_KEEP, open_target, replay, replay_meta
from tests.unit.test_unit_of_work_lru import sample

__all__ = ["sample"]  # the module-scoped fixture


def _replayed_bytes(events: list[EventEnvelope], path: Path, **options: int) -> tuple[dict[object, bytes], int]:
    target = open_target(str(path))
    stats = replay(events, target.store, [CommissionLedger()], **options)
    run = (replay_meta(target.store) or {})["runs"][-1]
    assert "copies" not in run  # the recorded run keeps its shape
    target.close()
    raw = open_target(str(path), cached=False)
    dump: dict[object, bytes] = raw.store.dump_raw("ledger")  # type: ignore[attr-defined]
    raw.close()
    return dump, stats.copies


def test_the_default_bound_gives_the_same_bytes_with_fewer_copies(
    sample: list[EventEnvelope],
    tmp_path: Path,
) -> None:
    assert REPLAY_KEEP >= 50_000
    by_default, kept_copies = _replayed_bytes(sample, tmp_path / "default.sqlite", batch_size=97)
    none_kept, copies = _replayed_bytes(sample, tmp_path / "none.sqlite", batch_size=97, keep=0)
    assert by_default and by_default == none_kept
    assert copies > 0 and kept_copies < copies


def test_the_cli_batch_default_is_the_replays() -> None:
    assert inspect.signature(replay_command).parameters["batch_size"].default == REPLAY_BATCH
