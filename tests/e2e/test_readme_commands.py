"""The README's two commands stay true: CI runs the test command, and the main job works as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", quick_start, flags=re.S)]


def test_the_readme_gives_one_command_for_the_main_job_and_one_for_the_tests() -> None:
    assert readme_commands() == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test\b", script, flags=re.M) or "make test ||" in script


def test_the_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)
    assert "prm demo" in makefile and "pytest" in makefile and "deploy/up" in makefile


def test_the_main_job_runs_on_the_embedded_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.cli import app

    monkeypatch.setenv("PRM_STORE", "sqlite")
    monkeypatch.setenv("PRM_SQLITE_PATH", str(tmp_path / "embedded.sqlite"))
    monkeypatch.setenv("PRM_LOG_FORMAT", "json")
    result = CliRunner().invoke(app, ["demo", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    summary = shown["summary"]
    assert summary["events"] == summary["last_position"] > 3000
    assert sum(summary["partners"]["by_status"].values()) == 30
    assert set(summary["partners"]["by_type"]) == {"reseller", "distributor", "referral", "agent"}
    assert {row["currency"] for row in summary["net_revenue_minor"]} == {"VND", "USD"}
    assert shown["conflicts"]["conflicts"] >= 3
    assert shown["commissions"]["partners"] > 10
    assert set(shown["dashboard"]["net_revenue"]) == {"VND", "USD"}
