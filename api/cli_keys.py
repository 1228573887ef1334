"""``prm keys``: create, list and revoke API keys (the HTTP API's authentication).

A key is printed once, when it is created; only its salted hash is stored.
"""

from __future__ import annotations

import getpass
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from api.bootstrap import StartupError, build_key_store
from api.http.keys import ROLES
from api.settings import Settings

__all__ = ["register"]

keys_app = typer.Typer(no_args_is_help=True, add_completion=False, help="API keys: create, list, revoke.")
console = Console()


def _fail(message: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


@keys_app.command("create")
def create(
    role: Annotated[str, typer.Option("--role", help=f"One of {', '.join(ROLES)}.")],
    partner: Annotated[str | None, typer.Option("--partner", help="The partner a partner key is bound to.")] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Who holds the key (recorded as the actor of its commands).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the key as JSON.")] = False,
) -> None:
    """Create a key; the secret is shown once."""
    try:
        store = build_key_store(Settings())
    except StartupError as exc:
        _fail(str(exc))
        return
    try:
        issued = store.create(role, label=label or _default_label(role, partner), partner_id=partner)
    except ValueError as exc:
        _fail(str(exc))
        return
    finally:
        store.close()
    if as_json:
        console.print_json(json.dumps({**issued.key.to_dict(), "token": issued.token}))
        return
    scope = f" for partner {partner}" if partner else ""
    console.print(f"created {role} key [bold]{issued.key.key_id}[/] ({issued.key.label}){scope}")
    console.print("the key (shown once, keep it secret):")
    console.print(issued.token, highlight=False, soft_wrap=True)


def _default_label(role: str, partner: str | None) -> str:
    if partner:
        return f"partner:{partner}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "cli"
    return f"{role}:{user}"


@keys_app.command("list")
def list_keys(as_json: Annotated[bool, typer.Option("--json", help="Print the keys as JSON.")] = False) -> None:
    """Every key, active and revoked (never the secrets)."""
    try:
        store = build_key_store(Settings())
    except StartupError as exc:
        _fail(str(exc))
        return
    try:
        keys = store.list()
    finally:
        store.close()
    if as_json:
        console.print_json(json.dumps([k.to_dict() for k in keys]))
        return
    table = Table(title=f"API keys ({len(keys)})", title_justify="left")
    for column in ("key id", "role", "partner", "label", "created", "revoked"):
        table.add_column(column)
    for key in keys:
        table.add_row(
            key.key_id,
            key.role,
            key.partner_id or "",
            key.label,
            key.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            key.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if key.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key id (see prm keys list).")]) -> None:
    """Revoke a key: it stops working at once."""
    try:
        store = build_key_store(Settings())
    except StartupError as exc:
        _fail(str(exc))
        return
    try:
        key = store.revoke(key_id)
    except KeyError:
        _fail(f"no API key {key_id!r}")
        return
    finally:
        store.close()
    console.print(f"revoked {key.role} key {key.key_id} ({key.label})")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
