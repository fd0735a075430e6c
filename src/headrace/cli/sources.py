"""`headrace source add | list | get | rm`: event sources (other systems' storage events entering headrace's
log), through the frontend's `/api/v1/sources`. Administrators add and remove them; a reader lists and shows
the sources they may read."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from headrace.cli.common import client, json_option, print_json, usage_error
from headrace.client import Client

JsonFlag = Annotated[bool, json_option()]
SOURCES = "/api/v1/sources"
FORMATS = ("billing", "cloudevents")
MODES = ("inotify", "scan", "auto")

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Event sources: add, list, get, rm.")


def _url(c: Client, name: str | None = None) -> str:
    return f"{c.config.api}{SOURCES}" + (f"/{c._quote(name)}" if name is not None else "")


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        usage_error(f"--option takes KEY=VALUE, not {text!r}")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The source's name (letters, digits, '_', '.', '-')")],
    kind: Annotated[str, typer.Option("--kind", help="dcache-sse, kafka, s3 or directory")],
    url: Annotated[str | None, typer.Option("--url", help="dcache-sse: the remote's /api/v1 base URL")] = None,
    path: Annotated[str | None, typer.Option("--path", help="dcache-sse: the watched remote directory")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", help="Also every directory below --path")] = False,
    bearer: Annotated[str | None, typer.Option("--bearer", help="A bearer token for the remote")] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="A file on the server holding the token (re-read)")
    ] = None,
    basic: Annotated[str | None, typer.Option("--basic", help="USER:KEY for the remote")] = None,
    door: Annotated[str | None, typer.Option("--door", help="WebDAV base URL functions read files through")] = None,
    bootstrap: Annotated[str | None, typer.Option("--bootstrap", help="kafka: the brokers")] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="kafka: the topic")] = None,
    group: Annotated[str | None, typer.Option("--group", help="kafka: the consumer group")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="kafka: billing or cloudevents")] = None,
    secret: Annotated[str | None, typer.Option("--secret", help="s3: what a notification must carry")] = None,
    root: Annotated[str | None, typer.Option("--root", help="directory: the tree, on the server")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="directory: inotify, scan or auto")] = None,
    interval: Annotated[float | None, typer.Option("--interval", help="directory: seconds between scans")] = None,
    options: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Another option of the kind, KEY=VALUE (repeatable)")
    ] = None,
    reader: Annotated[
        list[str] | None, typer.Option("--reader", help="A user who may trigger on it and read its files")
    ] = None,
    reader_group: Annotated[
        list[int] | None, typer.Option("--reader-group", help="A group id whose users may (repeatable)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a source, or replace the one of that name (administrators)."""
    if sum(x is not None for x in (bearer, token_file, basic)) > 1:
        usage_error("Give one credential: --bearer, --token-file or --basic")
    if fmt is not None and fmt not in FORMATS:
        usage_error(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if mode is not None and mode not in MODES:
        usage_error(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    body: dict[str, Any] = {"kind": kind}
    given: dict[str, Any] = {
        "url": url, "path": path, "recursive": True if recursive else None, "bearer": bearer,
        "token_file": str(token_file.absolute()) if token_file is not None else None, "basic": basic,
        "door": door, "bootstrap": bootstrap, "topic": topic, "group": group, "format": fmt, "secret": secret,
        "root": str(Path(root).absolute()) if root is not None else None, "mode": mode, "interval": interval,
    }  # fmt: skip
    body.update({k: v for k, v in given.items() if v is not None})
    for text in options or []:
        key, value = _option(text)
        body[key] = value
    body["readers"] = {"users": list(reader or []), "groups": list(reader_group or [])}
    with client() as c:
        r = c.request("PUT", _url(c, name), about=name, json=body)
    data = r.json()
    if as_json:
        print_json(data)
    else:
        sys.stdout.write(f"source {name} {'added' if r.status_code == 201 else 'replaced'} ({kind})\n")


@app.command("list")
def listing(as_json: JsonFlag = False) -> None:
    """The sources you may read (an administrator: all), with what they have received."""
    with client() as c:
        rows: list[dict[str, Any]] = c.request("GET", _url(c)).json()
    if as_json:
        print_json(rows)
        return
    for s in rows:
        st = s.get("state") or {}
        line = f"{s['name']:<20} {s['kind']:<11} {st.get('received', 0):>9} events  last {_when(st.get('lastEvent'))}"
        if st.get("lastError"):
            line += f"  error: {st['lastError']}"
        sys.stdout.write(line + "\n")


@app.command("get")
def get(name: Annotated[str, typer.Argument(help="The source's name")], as_json: JsonFlag = False) -> None:
    """A source's configuration (credentials hidden), readers and state."""
    with client() as c:
        data: dict[str, Any] = c.request("GET", _url(c, name), about=name).json()
    if as_json:
        print_json(data)
        return
    state = data.pop("state", {}) or {}
    readers = data.pop("readers", {}) or {}
    out = sys.stdout
    for key in ("name", "kind"):
        out.write(f"{key}: {data.pop(key)}\n")
    for key in ("created", "updated"):
        out.write(f"{key}: {_when(data.pop(key, None))}\n")
    data.pop("version", None)
    for key, value in data.items():
        out.write(f"{key}: {json.dumps(value) if not isinstance(value, str) else value}\n")
    users, groups = readers.get("users") or [], readers.get("groups") or []
    out.write(f"readers: {', '.join([*users, *(f'group {g}' for g in groups)]) or 'administrators only'}\n")
    out.write(f"running: {'yes' if state.get('running') else 'no'}\n")
    out.write(f"received: {state.get('received', 0)} events, last {_when(state.get('lastEvent'))}\n")
    out.write(f"position: {state.get('position') or '-'}\n")
    if "lag" in state:
        out.write(f"lag: {state['lag']}\n")
    if state.get("lastError"):
        out.write(f"last error: {state['lastError']} ({_when(state.get('lastErrorTime'))})\n")


@app.command("rm")
def rm(name: Annotated[str, typer.Argument(help="The source's name")], as_json: JsonFlag = False) -> None:
    """Remove a source (administrators); the events it delivered stay in the log."""
    with client() as c:
        c.request("DELETE", _url(c, name), about=name)
    if as_json:
        print_json({"status": "success", "name": name})


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="source")
