"""`headrace stage | release | qos | locality | bulk`: tape, through the frontend's dCache bulk API
(`/api/v1/bulk-requests`) and namespace API, as ada does it."""

from __future__ import annotations

import re
import sys
import time
from typing import Annotated, Any

import typer

from headrace.cli.common import CliError, client, json_option, print_json, usage_error
from headrace.client import Client, HeadraceClientError, normalize_remote

JsonFlag = Annotated[bool, json_option()]
BULK = "/api/v1/bulk-requests"
NAMESPACE = "/api/v1/namespace"
QOS = ("disk", "tape", "disk+tape")
_LIFETIME = re.compile(r"^(\d+)\s*([smhdw]?)$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

bulk_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Bulk requests: list, show, cancel, clear.")


def lifetime_seconds(text: str) -> int:
    """`7d`, `12h`, `30m`, `90s` or a number of seconds."""
    m = _LIFETIME.match(text.strip())
    if not m or int(m.group(1)) <= 0:
        usage_error(f"--lifetime must be a positive duration such as 7d, 12h, 30m or 3600, not {text!r}")
    return int(m.group(1)) * _SECONDS[m.group(2).lower()]


def _url(c: Client, path: str) -> str:
    return f"{c.config.api}{path}"


def submit(c: Client, activity: str, paths: list[str], arguments: dict[str, Any], expand: str) -> str:
    """A bulk request; its id."""
    body = {"activity": activity, "target": [normalize_remote(p) for p in paths], "arguments": arguments,
            "expand_directories": expand}  # fmt: skip
    response = c.request("POST", _url(c, BULK), json=body)
    url = response.headers.get("request-url", "")
    if not url:
        raise CliError("the server answered the bulk request without a request-url")
    return str(url).rstrip("/").rsplit("/", 1)[1]


def request_info(c: Client, rid: str) -> dict[str, Any]:
    """The request's status with all its targets (page after page)."""
    data: dict[str, Any] = c.request("GET", _url(c, f"{BULK}/{rid}"), about=rid).json()
    targets = list(data.get("targets") or [])
    while data.get("nextId", -1) != -1:
        data = c.request("GET", _url(c, f"{BULK}/{rid}"), about=rid, params={"offset": data["nextId"]}).json()
        targets += data.get("targets") or []
    data["targets"] = targets
    return data


def wait_for_request(c: Client, rid: str) -> dict[str, Any]:
    delay = 0.05
    while True:
        data = request_info(c, rid)
        if data.get("status") in ("COMPLETED", "CANCELLED"):
            return data
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def _print_targets(data: dict[str, Any]) -> None:
    out = sys.stdout
    for t in data.get("targets") or []:
        line = f"{t.get('state', '?'):<10} {t.get('target', '')}"
        if t.get("errorMessage"):
            line += f"  ({t['errorMessage']})"
        out.write(line + "\n")


def _finish(data: dict[str, Any], as_json: bool) -> None:
    """Print a finished request; exit 1 when a target failed (the request's lines say which)."""
    if as_json:
        print_json(data)
    else:
        sys.stdout.write(f"request {data['uid']}: {data['status']}\n")
        _print_targets(data)
    failed = [t for t in data.get("targets") or [] if t.get("state") in ("FAILED", "CANCELLED")]
    if failed:
        raise CliError(f"{len(failed)} of {len(data['targets'])} targets of request {data['uid']} did not complete")


def _started(c: Client, rid: str, what: str, as_json: bool) -> None:
    if as_json:
        print_json({"uid": rid, "url": _url(c, f"{BULK}/{rid}")})
    else:
        sys.stdout.write(f"{what} request {rid}  (`headrace bulk get {rid}` shows its progress)\n")


def stage(
    paths: Annotated[list[str], typer.Argument(help="Remote files, or directories (their files are staged)")],
    lifetime: Annotated[str, typer.Option("--lifetime", help="How long the files stay pinned on disk")] = "1d",
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Stage whole trees")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every file is on disk (or failed)")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Bring files from tape back to disk and pin them there (dCache's bulk STAGE)."""
    seconds = lifetime_seconds(lifetime)
    with client() as c:
        rid = submit(c, "STAGE", paths, {"lifetime": seconds, "lifetimeUnit": "SECONDS"},
                     "ALL" if recursive else "TARGETS")  # fmt: skip
        if wait:
            _finish(wait_for_request(c, rid), as_json)
        else:
            _started(c, rid, "stage", as_json)


def release(
    paths: Annotated[list[str], typer.Argument(help="Remote files (or directories: their files)")],
    request_id: Annotated[
        str | None, typer.Option("--request-id", help="Only the pins of this stage request (default: all yours)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Release your pins of files, so that their disk copies may be evicted (dCache's bulk RELEASE)."""
    with client() as c:
        rid = submit(c, "RELEASE", paths, {"id": request_id} if request_id else {}, "TARGETS")
        _finish(wait_for_request(c, rid), as_json)


def _stat(c: Client, path: str) -> dict[str, Any]:
    path = normalize_remote(path)
    url = f"{c.config.api}{NAMESPACE}{c._quote(path)}"
    data: dict[str, Any] = c.request("GET", url, about=path, params={"locality": "true", "qos": "true"}).json()
    return {
        "path": path,
        "type": data.get("fileType"),
        "locality": data.get("fileLocality"),
        "currentQos": data.get("currentQos"),
        "targetQos": data.get("targetQos"),
    }


def qos(
    path: Annotated[str, typer.Argument(help="Remote file or directory")],
    target: Annotated[str | None, typer.Argument(help="New QoS: disk, tape or disk+tape (none: show it)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show a file's QoS, or change it (tape: flushed, then its disk copy may go; disk: its tape copy goes)."""
    if target is not None and target not in QOS:
        usage_error(f"QoS must be one of {', '.join(QOS)}, not {target!r}")
    with client() as c:
        if target is not None:
            remote = normalize_remote(path)
            url = f"{c.config.api}{NAMESPACE}{c._quote(remote)}"
            c.request("POST", url, about=remote, json={"action": "qos", "target": target})
        info = _stat(c, path)
    if as_json:
        print_json(info)
        return
    changing = info["targetQos"] and info["targetQos"] != info["currentQos"]
    line = f"{info['path']}: {info['currentQos'] or '-'}"
    if changing:
        line += f" -> {info['targetQos']}"
    if info["locality"]:
        line += f"  ({info['locality']})"
    sys.stdout.write(line + "\n")


def locality(
    paths: Annotated[list[str], typer.Argument(help="Remote files")],
    as_json: JsonFlag = False,
) -> None:
    """Where files are: ONLINE (disk), NEARLINE (tape only) or ONLINE_AND_NEARLINE."""
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    with client() as c:
        for p in paths:
            try:
                info = _stat(c, p)
                rows.append({"path": info["path"], "locality": info["locality"] or "NONE"})
            except HeadraceClientError as exc:
                rows.append({"path": normalize_remote(p), "error": str(exc)})
                errors.append(str(exc))
    if as_json:
        print_json(rows)
    else:
        width = max(len(r["path"]) for r in rows)
        for r in rows:
            if "locality" in r:
                sys.stdout.write(f"{r['path']:<{width}}  {r['locality']}\n")
    if errors:
        raise CliError(errors[0] if len(errors) == 1 else f"{errors[0]} (and {len(errors) - 1} more)")


@bulk_app.command("list")
def bulk_list(
    status: Annotated[
        str | None, typer.Option("--status", help="Only these: queued, started, completed, cancelled (comma list)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Your bulk requests (an admin's: everyone's)."""
    with client() as c:
        params = {"status": status} if status else {}
        rows: list[dict[str, Any]] = c.request("GET", _url(c, BULK), params=params).json()
    if as_json:
        print_json(rows)
        return
    for r in rows:
        sys.stdout.write(f"{r['uid']}  {r['activity']:<10} {r['status']:<9} {r['active']:>6} active  {r['owner']}\n")


@bulk_app.command("get")
def bulk_get(rid: Annotated[str, typer.Argument(help="Request id")], as_json: JsonFlag = False) -> None:
    """A bulk request's status and each target's state."""
    with client() as c:
        data = request_info(c, rid)
    if as_json:
        print_json(data)
        return
    sys.stdout.write(f"request {data['uid']}: {data.get('activity', '')} {data['status']}\n")
    _print_targets(data)


@bulk_app.command("cancel")
def bulk_cancel(rid: Annotated[str, typer.Argument(help="Request id")], as_json: JsonFlag = False) -> None:
    """Cancel what a bulk request has not done yet."""
    with client() as c:
        c.request("PATCH", _url(c, f"{BULK}/{rid}"), about=rid, json={"action": "cancel"})
    if as_json:
        print_json({"status": "success", "uid": rid})


@bulk_app.command("clear")
def bulk_clear(
    rid: Annotated[str, typer.Argument(help="Request id")],
    force: Annotated[bool, typer.Option("--force", help="Cancel it first if it still runs")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Forget a finished bulk request (pins it made stay)."""
    with client() as c:
        params = {"cancelIfRunning": "true"} if force else {}
        c.request("DELETE", _url(c, f"{BULK}/{rid}"), about=rid, params=params)
    if as_json:
        print_json({"status": "success", "uid": rid})


def register(app: typer.Typer) -> None:
    """Add the tape commands to the `headrace` command."""
    app.command("stage")(stage)
    app.command("release")(release)
    app.command("qos")(qos)
    app.command("locality")(locality)
    app.add_typer(bulk_app, name="bulk")
