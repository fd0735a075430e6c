"""The `headrace` command: each sub-command lives in a module of its own and is registered here."""

from __future__ import annotations

import os

import typer

from headrace import __version__
from headrace.cli import catalogue, demo, events, files, functions, roles, sources, tape, token, transfer, whoami
from headrace.cli.common import HeadraceGroup
from headrace.cli.pool import pool
from headrace.cli.up import up
from headrace.cli.users import user_app
from headrace.tls import use_ca_file

app = typer.Typer(
    cls=HeadraceGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="headrace: storage whose every change is an event.",
)
app.command("up")(up)
app.command("pool")(pool)
app.command("ls")(files.ls)
app.command("stat")(files.stat)
app.command("mkdir")(files.mkdir)
app.command("mv")(files.mv)
app.command("rm")(files.rm)
app.command("put")(transfer.put)
app.command("get")(transfer.get)
app.add_typer(token.app, name="token")
app.add_typer(user_app, name="user")
app.add_typer(events.app, name="events")
app.add_typer(catalogue.app, name="catalogue")
app.command("demo")(demo.demo)
functions.register(app)
roles.register(app)
tape.register(app)
sources.register(app)
whoami.register(app)


def _version(value: bool) -> None:
    if value:
        print(f"headrace {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print headrace's version and exit."
    ),
    ca_file: str | None = typer.Option(
        None, "--ca-file", help="Trust the CAs in this PEM bundle too, for https:// servers (env HEADRACE_CA_FILE)"
    ),
) -> None:
    """headrace: storage whose every change is an event, and functions that run on those events."""
    if ca_file:
        use_ca_file(os.path.abspath(ca_file))


if __name__ == "__main__":
    app()
