"""The `headrace` command: each sub-command lives in a module of its own and is registered here."""

from __future__ import annotations

import typer

from headrace.cli.up import up
from headrace.cli.users import user_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="headrace: storage whose every change is an event.")
app.command("up")(up)
app.add_typer(user_app, name="user")


@app.callback()
def _root() -> None:
    """headrace: storage whose every change is an event, and functions that run on those events."""


if __name__ == "__main__":
    app()
