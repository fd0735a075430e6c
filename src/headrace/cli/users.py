"""`headrace user add|list`: manage users directly in a data directory's database (an operator's tool,
run on the server host; safe while the server runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from headrace.config import Settings
from headrace.errors import HeadraceError
from headrace.extras import require_server

if TYPE_CHECKING:
    from headrace.auth.users import Users
    from headrace.db.engine import Database

user_app = typer.Typer(no_args_is_help=True, help="Manage users (on the server host).")


def open_database(data: Path | None) -> Database:
    """The database of the data directory `data` (or HEADRACE_DB), migrated; exit 1 if there is none yet."""
    # imported here: SQLAlchemy and Alembic cost every other command a quarter of a second to load
    from headrace.db.engine import Database

    settings = Settings.from_env(data_dir=data)
    if not (settings.db_url or (settings.data_dir / "headrace.db").exists()):
        typer.echo(f"headrace: no headrace database in {settings.data_dir} (run `headrace up` once)", err=True)
        raise typer.Exit(1)
    require_server(settings.db_url, "")
    db = Database(settings.database_url)
    db.migrate()
    return db


def _users(data: Path | None) -> Users:
    from headrace.auth.users import Users

    return Users(open_database(data))


@user_app.command("add")
def add(
    name: str = typer.Argument(..., help="User name"),
    data: Path | None = typer.Option(None, "--data", help="Data directory (env HEADRACE_DATA)"),
    uid: int | None = typer.Option(None, "--uid", help="Numeric uid (default: the next free from 1000)"),
    gids: str = typer.Option("", "--gids", help="Comma-separated gids, primary first (default: the uid)"),
    admin: bool = typer.Option(False, "--admin", help="Bypass permission checks"),
    key: str = typer.Option("", "--key", help="API key (default: generated and printed)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Add a user and print its API key (HTTP Basic NAME:KEY)."""
    try:
        group_ids = tuple(int(g) for g in gids.split(",") if g.strip())
    except ValueError:
        typer.echo(f"headrace: --gids must be comma-separated integers, not {gids!r}", err=True)
        raise typer.Exit(2) from None
    from headrace.auth.users import new_key

    the_key = key or new_key()
    try:
        user = _users(data).create(name, the_key, uid=uid, gids=group_ids, admin=admin, generated=not key)
    except HeadraceError as exc:
        typer.echo(f"headrace: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"username": user.username, "uid": user.uid, "gids": list(user.gids), "key": the_key}))
    else:
        typer.echo(f"user {user.username} uid={user.uid} gids={','.join(map(str, user.gids))} key={the_key}")
