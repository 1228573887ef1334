"""API keys (hashed storage, revocation, roles), and the ``prm keys`` / ``prm api`` / ops commands."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from api.cli import app as cli
from api.http.keys import SQLiteKeyStore
from tests.unit.api_world import ALPHA, World, make_world

runner = CliRunner()


def test_keys_are_stored_hashed_and_checked() -> None:
    store = SQLiteKeyStore(":memory:")
    issued = store.create("ops", label="ops@prm.test")
    assert issued.token.startswith(f"prm_{issued.key.key_id}_")
    assert store.authenticate(issued.token) == issued.key
    rows = store._conn.execute("SELECT salt, digest FROM prm_api_keys").fetchall()
    secret = issued.token.split("_", 2)[2]
    assert all(secret not in "".join(row) for row in rows)
    tampered = issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B")
    assert store.authenticate(tampered) is None
    assert store.authenticate("prm_0000000000000000_" + secret) is None
    assert store.authenticate("") is None and store.authenticate("garbage") is None
    revoked = store.revoke(issued.key.key_id)
    assert revoked.revoked_at is not None and store.authenticate(issued.token) is None
    assert store.revoke(issued.key.key_id).revoked_at == revoked.revoked_at  # idempotent
    with pytest.raises(KeyError):
        store.revoke("ffffffffffffffff")


def test_roles_and_partner_binding() -> None:
    store = SQLiteKeyStore(":memory:")
    assert store.create("partner", label="p", partner_id="P-1").key.partner_id == "P-1"
    for role, partner in (("partner", None), ("ops", "P-1"), ("root", None)):
        with pytest.raises(ValueError):
            store.create(role, label="x", partner_id=partner)
    assert [k.role for k in store.list()] == ["partner"]


@pytest.fixture
def embedded_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PRM_STORE", "sqlite")
    monkeypatch.setenv("PRM_SQLITE_PATH", str(tmp_path / "events.sqlite"))
    monkeypatch.setenv("PRM_KEYS_PATH", str(tmp_path / "keys.sqlite"))
    monkeypatch.setenv("PRM_READ_MODELS", "auto")
    monkeypatch.setenv("PRM_PROJECTION_SOURCE", "auto")
    monkeypatch.setenv("PRM_LOG_FORMAT", "json")
    return tmp_path


def test_prm_keys_create_list_revoke(embedded_env: Path) -> None:
    created = runner.invoke(cli, ["keys", "create", "--role", "partner", "--partner", "P-7", "--json"])
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    assert key["role"] == "partner" and key["partner_id"] == "P-7" and key["token"].startswith("prm_")
    assert SQLiteKeyStore(embedded_env / "keys.sqlite").authenticate(key["token"]) is not None
    listed = json.loads(runner.invoke(cli, ["keys", "list", "--json"]).output)
    assert [k["key_id"] for k in listed] == [key["key_id"]] and "token" not in listed[0]
    revoked = runner.invoke(cli, ["keys", "revoke", key["key_id"]])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert SQLiteKeyStore(embedded_env / "keys.sqlite").authenticate(key["token"]) is None
    refused = runner.invoke(cli, ["keys", "create", "--role", "partner"])
    assert refused.exit_code == 2 and "bound to a partner" in refused.output
    assert runner.invoke(cli, ["keys", "revoke", "0123456789abcdef"]).exit_code == 2


def test_prm_api_serves_with_a_session_key(embedded_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        from fastapi.testclient import TestClient

        with TestClient(app) as client:
            served["docs"] = client.get("/docs").status_code
            token = _token_of(served["output"]())
            served["me"] = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
            served["token"] = token
        served["kwargs"] = kwargs

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", fake_run)
    lines: list[str] = []
    monkeypatch.setattr("api.cli_api.console.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    served["output"] = lambda: "\n".join(lines)
    result = runner.invoke(cli, ["api", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert served["docs"] == 200 and served["me"]["role"] == "admin"
    assert served["kwargs"]["port"] == 8123 and served["kwargs"]["host"] == "127.0.0.1"
    assert any("http://127.0.0.1:8123/docs" in line for line in lines)
    # the session key is revoked when the server stops
    assert SQLiteKeyStore(embedded_env / "keys.sqlite").authenticate(served["token"]) is None


def _token_of(output: str) -> str:
    return next(word for word in output.split() if word.startswith("prm_"))


# ---------------------------------------------------------------- ops commands on the same read models


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Path]]:
    directory = tmp_path_factory.mktemp("cli")
    for world in make_world(directory):
        yield world, directory


@pytest.fixture
def cli_env(seeded: tuple[World, Path], monkeypatch: pytest.MonkeyPatch) -> World:
    world, directory = seeded
    monkeypatch.setenv("PRM_STORE", "sqlite")
    monkeypatch.setenv("PRM_SQLITE_PATH", str(directory / "events.sqlite"))
    monkeypatch.setenv("PRM_READ_MODELS", "auto")
    monkeypatch.setenv("PRM_PROJECTION_SOURCE", "auto")
    monkeypatch.setenv("PRM_LOG_FORMAT", "json")
    return world


def _json(args: list[str]) -> Any:
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_ops_commands_mirror_the_api(cli_env: World) -> None:
    world = cli_env
    assert _json(["partners", "list"]) == world.get("/v1/partners")["items"]
    shown = _json(["partner", "show", ALPHA])
    api = world.get(f"/v1/partners/{ALPHA}")
    for key in ("status", "tier", "contracts", "registrations", "statuses"):
        assert shown[key] == api[key]
    assert _json(["conflicts", "list"]) == world.get("/v1/conflicts")["items"]
    month = "2026-02"
    statement = _json(["statement", ALPHA, "--currency", "VND", "--month", month])
    api_statement = world.get(f"/v1/partners/{ALPHA}/statement", currency="VND", month=month)
    assert {k: v for k, v in statement.items() if k != "as_of"} == {
        k: v for k, v in api_statement.items() if k != "as_of"
    }
    dashboard = _json(["dashboard", "--period", "2026-Q1", "--type", "reseller"])
    assert dashboard["partners"] == [ALPHA]
    assert dashboard["revenue"] == world.get("/v1/dashboards", period="2026-Q1", type="reseller")["revenue"]


def test_ops_commands_render_tables(cli_env: World) -> None:
    for args in (
        ["partners", "list", "--status", "active"],
        ["partner", "show", ALPHA],
        ["conflicts", "list", "--status", "resolved"],
        ["statement", ALPHA, "--currency", "VND", "--month", "2026-02"],
        ["dashboard", "--period", "2026-Q1"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    assert runner.invoke(cli, ["partner", "show", "P-NOPE"]).exit_code == 2
    assert runner.invoke(cli, ["dashboard", "--period", "last week"]).exit_code == 2


def test_key_store_file_is_sqlite(embedded_env: Path) -> None:
    runner.invoke(cli, ["keys", "create", "--role", "auditor", "--label", "audit@firm"])
    with sqlite3.connect(embedded_env / "keys.sqlite") as conn:
        assert conn.execute("SELECT role, label FROM prm_api_keys").fetchall() == [("auditor", "audit@firm")]
