"""`headrace catalogue search`: the dataset records the XFEL catalogue function keeps (examples/xfel/catalogue.py).

The function writes SciCat-shaped records into a SQLite database (its `catalogue` parameter); this reads the
same database, by default `$HEADRACE_CATALOGUE` or the file the example's headrace.yaml names.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sqlite3
from pathlib import Path
from typing import Annotated, Any

import typer

from headrace.cli.common import CliError, json_option, print_json_array, usage_error

app = typer.Typer(no_args_is_help=True, add_completion=False, help="The dataset catalogue the XFEL example keeps.")

DEFAULT_CATALOGUE = "~/.local/share/headrace/catalogue.sqlite"


def default_catalogue() -> Path:
    return Path(os.environ.get("HEADRACE_CATALOGUE") or DEFAULT_CATALOGUE).expanduser()


def search_records(
    db: Path,
    *,
    text: str | None = None,
    proposal: int | None = None,
    run: int | None = None,
    path: str | None = None,
    kind: str | None = None,
    removed: bool = False,
    limit: int = 0,
) -> list[dict[str, Any]]:
    """Records matching every filter given, by path; `text` is a case-insensitive substring of the path."""
    if not db.exists():
        raise CliError(f"{db}: no catalogue here (deploy examples/xfel and write some files, or give --db)")
    where: list[str] = []
    args: list[Any] = []
    if not removed:
        where.append("removed = 0")
    if proposal is not None:
        where.append("proposal = ?")
        args.append(proposal)
    if run is not None:
        where.append("run = ?")
        args.append(run)
    if text:
        where.append("instr(lower(path), lower(?)) > 0")
        args.append(text)
    sql = "SELECT path, removed, record FROM datasets"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY path"
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            rows = conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise CliError(f"{db}: not a catalogue database ({exc})") from exc
    out = []
    for p, gone, record in rows:
        if path and not fnmatch.fnmatchcase(p, path):
            continue
        rec = json.loads(record) if record else {"datablocks": [{"path": p}]}
        if kind and rec.get("type") != kind:
            continue
        rec["removed"] = bool(gone)
        out.append(rec)
        if limit and len(out) >= limit:
            break
    return out


@app.command("search")
def search(
    text: Annotated[str | None, typer.Argument(help="A part of the path (case-insensitive)")] = None,
    proposal: Annotated[int | None, typer.Option(help="Proposal number (METADATA/proposalNumber)")] = None,
    run: Annotated[int | None, typer.Option(help="Run number (METADATA/runNumber)")] = None,
    path: Annotated[str | None, typer.Option(help="A glob on the whole path, e.g. '/exp/*/raw/r0042/*'")] = None,
    kind: Annotated[str | None, typer.Option("--type", help="raw or derived")] = None,
    removed: Annotated[bool, typer.Option("--removed", help="Also records of files since deleted")] = False,
    limit: Annotated[int, typer.Option(help="At most this many records (0: all)")] = 0,
    db: Annotated[Path | None, typer.Option(help="The catalogue database (default $HEADRACE_CATALOGUE)")] = None,
    as_json: Annotated[bool, json_option()] = False,
) -> None:
    """Search the dataset records: one line each (path, size, run, type), or the records with --json."""
    if kind not in (None, "raw", "derived"):
        usage_error(f"--type is raw or derived, not {kind!r}")
    if limit < 0:
        usage_error("--limit is 0 or more")
    records = search_records(
        (db or default_catalogue()).expanduser(),
        text=text, proposal=proposal, run=run, path=path, kind=kind, removed=removed, limit=limit,
    )  # fmt: skip
    if as_json:
        print_json_array(records)
        return
    for rec in records:
        meta = rec.get("scientificMetadata") or {}
        run_text = (
            f"p{meta['proposal']}/r{meta['runNumber']:04d}" if "runNumber" in meta and "proposal" in meta else "-"
        )
        state = " (removed)" if rec["removed"] else ""
        typer.echo(f"{rec['datablocks'][0]['path']}  {rec.get('size', '-')}  {run_text}  {rec.get('type', '-')}{state}")
