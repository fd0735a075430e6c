"""`headrace put` and `headrace get`: copy files and trees to and from the door, as cp would.

Every file is checked end to end with ADLER32 (see `headrace.client`). Progress bars go to stderr and
only when it is a terminal. The first failure stops the copy with one line and exit code 1.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from headrace.cli.common import CliError, client, err_console, report, usage_error
from headrace.client import Client, Entry, normalize_remote


class Transfers:
    """Progress display for a copy: one bar for the whole, one for the file in flight."""

    def __init__(self, progress: Progress, total_bytes: int | None, files: int | None) -> None:
        self.progress = progress
        self.total_bytes = total_bytes
        self.files = files
        self.done_files = 0
        self.overall: TaskID | None = None
        if files is None or files > 1:
            self.overall = progress.add_task(self._overall_label(), total=total_bytes)

    def _overall_label(self) -> str:
        of = f"/{self.files}" if self.files is not None else ""
        return f"[bold]total[/] {self.done_files}{of} files"

    def grow(self, size: int) -> None:
        """A file discovered on the way (get -r): the total grows with it."""
        if self.overall is not None:
            self.total_bytes = (self.total_bytes or 0) + size
            self.progress.update(self.overall, total=self.total_bytes)

    @contextmanager
    def file(self, label: str, size: int | None) -> Iterator[FileProgress]:
        task = self.progress.add_task(_shorten(label), total=size)
        fp = FileProgress(self, task, size)
        try:
            yield fp
        finally:
            self.progress.remove_task(task)
        self.done_files += 1
        if self.overall is not None:
            self.progress.update(self.overall, description=self._overall_label())


class FileProgress:
    """The bar of one file: `advance` takes byte counts, `start` the size once the server announces it."""

    def __init__(self, transfers: Transfers, task: TaskID, size: int | None) -> None:
        self.transfers = transfers
        self.task = task
        self.size = size

    def start(self, size: int) -> None:
        if self.size is None:
            self.size = size
            self.transfers.grow(size)
            self.transfers.progress.update(self.task, total=size)

    def advance(self, n: int) -> None:
        progress = self.transfers.progress
        progress.advance(self.task, n)
        if self.transfers.overall is not None:
            progress.advance(self.transfers.overall, n)


def _shorten(label: str, width: int = 40) -> str:
    from rich.markup import escape

    return escape(label if len(label) <= width else "…" + label[-(width - 1) :])


@contextmanager
def transfers(total_bytes: int | None, files: int | None) -> Iterator[Transfers]:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
        transient=True,
    )
    with progress:
        yield Transfers(progress, total_bytes, files)


def _local_name(path: Path) -> str:
    return path.name or path.resolve().name


# -- put -------------------------------------------------------------------------------------------------------


def _scan(top: Path) -> tuple[int, int]:
    """Files and bytes below a local directory (regular files, symbolic links followed)."""
    files = size = 0
    for root, _, names in os.walk(top):
        for name in names:
            p = os.path.join(root, name)
            if os.path.isfile(p):
                files += 1
                size += os.path.getsize(p)
    return files, size


def _remote_dir_state(c: Client, path: str) -> bool | None:
    """True if a remote directory, False if a file, None if nothing is there (or we may not look)."""
    entry = c.probe(path)
    return None if entry is None else entry.is_dir


def put(
    sources: Annotated[list[Path], typer.Argument(help="Local files (or directories, with -r)", show_default=False)],
    remote: Annotated[str, typer.Argument(help="Remote path, or an existing remote directory to copy into")],
    recursive: Annotated[
        bool, typer.Option("-r", "-R", "--recursive", help="Copy directories and their trees")
    ] = False,
) -> None:
    """Upload files (and with -r, directory trees) to the server."""
    target = normalize_remote(remote)
    for src in sources:
        if not src.exists():
            raise CliError(f"{src}: No such file or directory")
        if src.is_dir() and not recursive:
            usage_error(f"{src}: is a directory (use -r to copy it)")
    with client() as c:
        state = _remote_dir_state(c, target)
        into = state is True
        if not into and (len(sources) > 1 or remote.endswith("/")):
            raise CliError(f"{target}: {'Not a directory' if state is False else 'No such directory'}")
        plan: list[tuple[Path, str]] = [
            (src, posixpath.join(target, _local_name(src)) if into else target) for src in sources
        ]
        files = size = 0
        for src, _ in plan:
            if src.is_dir():
                n, s = _scan(src)
                files, size = files + n, size + s
            else:
                files, size = files + 1, size + src.stat().st_size
        with transfers(size, files) as t:
            for src, dest in plan:
                if src.is_dir():
                    _put_tree(c, src, dest, t)
                else:
                    _put_file(c, src, dest, t)


def _put_file(c: Client, src: Path, dest: str, t: Transfers) -> None:
    size = src.stat().st_size
    with t.file(dest, size) as fp:
        c.upload(src, dest, fp.advance)


def _put_tree(c: Client, top: Path, dest: str, t: Transfers) -> None:
    c.ensure_dir(dest)
    for root, dirs, names in os.walk(top):
        rel = os.path.relpath(root, top)
        base = dest if rel == "." else posixpath.join(dest, *Path(rel).parts)
        dirs.sort()
        for d in dirs:
            c.ensure_dir(posixpath.join(base, d))
        for name in sorted(names):
            local = Path(root, name)
            if not local.is_file():
                report(f"{local}: skipped, not a regular file")
                continue
            _put_file(c, local, posixpath.join(base, name), t)


# -- get -------------------------------------------------------------------------------------------------------


def get(
    sources: Annotated[list[str], typer.Argument(help="Remote files (or directories, with -r)", show_default=False)],
    local: Annotated[Path, typer.Argument(help="Local path, or an existing local directory to copy into")],
    recursive: Annotated[
        bool, typer.Option("-r", "-R", "--recursive", help="Copy directories and their trees")
    ] = False,
) -> None:
    """Download files (and with -r, directory trees) from the server."""
    into = local.is_dir()
    if len(sources) > 1 and not into:
        raise CliError(f"{local}: {'Not a directory' if local.exists() else 'No such directory'}")
    with client() as c:
        plan: list[tuple[str, Entry | None]] = []
        for src in sources:
            # None: the credentials may not look (a DOWNLOAD-only macaroon); the GET itself will tell.
            entry = c.probe(src)
            if entry is not None and entry.is_dir and not recursive:
                usage_error(f"{entry.path}: is a directory (use -r to copy it)")
            plan.append((normalize_remote(src), entry))
        single = len(plan) == 1 and not (plan[0][1] is not None and plan[0][1].is_dir)
        with transfers(None, 1 if single else None) as t:
            for path, entry in plan:
                name = posixpath.basename(path)
                dest = local / name if into and name else local
                if entry is not None and entry.is_dir:
                    _get_tree(c, path, dest, t)
                else:
                    _get_file(c, path, entry.size if entry is not None else None, dest, t)


def _get_file(c: Client, remote: str, size: int | None, dest: Path, t: Transfers) -> None:
    if dest.is_dir():
        raise CliError(f"{dest}: Is a directory")
    if not dest.parent.is_dir():
        raise CliError(f"{dest.parent}: No such directory")
    if size is not None:
        t.grow(size)
    with t.file(remote, size) as fp:
        c.download(remote, dest, fp.advance, on_start=fp.start)


def _get_tree(c: Client, top: str, dest: Path, t: Transfers) -> None:
    if dest.exists() and not dest.is_dir():
        raise CliError(f"{dest}: Not a directory")
    dest.mkdir(exist_ok=True)
    prefix = normalize_remote(top).rstrip("/") + "/"
    for entry in c.tree(top):
        parts = entry.path[len(prefix) :].split("/")
        if not entry.path.startswith(prefix) or any(p in ("", ".", "..") for p in parts):
            raise CliError(f"{entry.path}: unexpected name in the listing of {top}")
        local = dest.joinpath(*parts)
        if entry.is_dir:
            if local.exists() and not local.is_dir():
                raise CliError(f"{local}: Not a directory")
            local.mkdir(exist_ok=True)
        else:
            _get_file(c, entry.path, entry.size, local, t)
