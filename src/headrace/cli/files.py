"""`headrace ls | stat | mkdir | mv | rm`: the namespace, through the frontend's dCache namespace API."""

from __future__ import annotations

import posixpath
import stat as stat_mode
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from headrace.cli.common import client, json_option, print_json, print_json_array
from headrace.client import Client, Entry, normalize_remote

JsonFlag = Annotated[bool, json_option()]


def mode_string(entry: Entry) -> str:
    kind = {"DIR": stat_mode.S_IFDIR, "LINK": stat_mode.S_IFLNK}.get(entry.type, stat_mode.S_IFREG)
    return stat_mode.filemode(kind | (entry.mode or 0))


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def long_line(entry: Entry) -> str:
    uid = "-" if entry.uid is None else str(entry.uid)
    gid = "-" if entry.gid is None else str(entry.gid)
    return f"{mode_string(entry)} {uid:>5} {gid:>5} {entry.size:>14} {when(entry.mtime)} {entry.name}"


def ls(
    path: Annotated[str, typer.Argument(help="Remote directory or file")] = "/",
    long: Annotated[bool, typer.Option("-l", "--long", help="Mode, owner, size and time of each entry")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List a directory (children are fetched page by page, so any size streams)."""
    with client() as c:
        # The listing itself says whether `path` is a file; it needs LIST only, not READ_METADATA.
        top, children = c.listing(path)
        entries: Iterator[Entry] = children if top.is_dir else iter([top])
        if as_json:
            print_json_array(e.to_json() for e in entries)
            return
        out = sys.stdout
        console = Console(highlight=False) if out.isatty() else None
        for entry in entries:
            line = long_line(entry) if long else entry.name
            if console is not None and entry.is_dir:
                console.print(Text(line, style="bold blue"), soft_wrap=True)
            else:
                out.write(line + "\n")


def stat(
    path: Annotated[str, typer.Argument(help="Remote file or directory")],
    as_json: JsonFlag = False,
) -> None:
    """Show a file's or directory's attributes: type, size, mode, times, locality, checksums."""
    with client() as c:
        entry = c.stat(path, qos=True)
    if as_json:
        print_json(entry.to_json())
        return
    rows = [
        ("Path", entry.path),
        ("Type", entry.type),
        ("Size", str(entry.size)),
        ("Mode", f"{mode_string(entry)} ({entry.mode or 0:04o})"),
        ("Owner", f"uid={entry.uid} gid={entry.gid}"),
        ("Modified", when(entry.mtime)),
        ("Created", when(entry.creation_time)),
        ("PNFS-ID", entry.pnfsid),
    ]
    if entry.mime_type:
        rows.append(("MIME type", entry.mime_type))
    if entry.locality:
        rows.append(("Locality", entry.locality))
    if entry.raw.get("currentQos"):
        target = entry.raw.get("targetQos")  # only while the file is changing to it
        rows.append(("QoS", str(entry.raw["currentQos"]) + (f" -> {target}" if target else "")))
    rows.extend((name, value) for name, value in sorted(entry.checksums.items()))
    width = max(len(k) for k, _ in rows)
    sys.stdout.write("".join(f"{k + ':':<{width + 1}} {v}\n" for k, v in rows))


def mkdir(
    paths: Annotated[list[str], typer.Argument(help="Remote directories to create")],
    parents: Annotated[
        bool, typer.Option("-p", "--parents", help="Create missing parents; no error if it exists")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create directories."""
    _each(paths, lambda c, p: c.mkdir(p, parents=parents), as_json)


def mv(
    src: Annotated[str, typer.Argument(help="Remote file or directory to move")],
    dst: Annotated[str, typer.Argument(help="New path, or an existing directory to move it into")],
    as_json: JsonFlag = False,
) -> None:
    """Move or rename a file or directory (into DST when DST is an existing directory, as mv does)."""
    source, target = normalize_remote(src), normalize_remote(dst)
    with client() as c:
        existing = c.probe(target)
        if existing is not None and existing.is_dir and source != "/":
            target = posixpath.join(target, posixpath.basename(source))
        c.move(source, target)
    if as_json:
        print_json({"status": "success", "source": source, "destination": target})


def rm(
    paths: Annotated[list[str], typer.Argument(help="Remote files or directories to delete")],
    recursive: Annotated[
        bool, typer.Option("-r", "-R", "--recursive", help="Delete directories and everything below")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete files and empty directories; with -r, whole trees."""
    _each(paths, lambda c, p: c.remove(p, recursive=recursive), as_json)


def _each(paths: list[str], action: Callable[[Client, str], None], as_json: bool) -> None:
    """Apply `action` to each path in order (stopping at the first error), then report the paths done."""
    done: list[str] = []
    with client() as c:
        for p in paths:
            action(c, p)
            done.append(normalize_remote(p))
    if as_json:
        print_json({"status": "success", "paths": done})
