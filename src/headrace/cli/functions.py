"""`headrace fn | activations | deadletters | deploy -f`: functions, through the frontend's OpenWhisk API.

A function is an action NAME and, when it runs on storage events, a trigger NAME-trigger fed by the storage
feed and an active rule NAME-rule between them. `fn deploy` and `deploy -f headrace.yaml` write only what
differs from what exists, so running them again changes nothing (`headrace.client.functions.Functions.deploy`).

Every command that prints data takes `--json`; `--follow` streams JSON lines. Errors are one line on stderr
and a non-zero exit; a blocking invoke whose function failed exits 1 after printing its record (with --json).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from headrace.cli.common import CliError, client, json_option, print_json, print_json_array, report, usage_error
from headrace.client.functions import (
    FINAL_STATES,
    Change,
    FeedSpec,
    Functions,
    FunctionSpec,
    load_deploy_file,
    normalize_flags,
    rule_name,
    trigger_name,
)

fn_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Functions: deploy, list, invoke, delete.")
activations_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Activations: the runs of functions, their results and logs."
)
deadletters_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Dead letters: activations that failed their last attempt."
)

JsonFlag = Annotated[bool, json_option()]
POLL_SECONDS = 0.5
FOLLOW_MARGIN_MS = 5000
FOLLOW_MAX_WINDOW = 2000
STATUS_WORDS = {0: "success", 1: "application error", 2: "developer error", 3: "internal error"}


@contextmanager
def functions() -> Iterator[Functions]:
    with client() as c:
        yield Functions(c)


def register(app: typer.Typer) -> None:
    """Add these commands to the `headrace` command."""
    from headrace.cli import whisk  # noqa: F401  (fn package|trigger|rule: they add themselves to fn_app)

    app.add_typer(fn_app, name="fn")
    app.add_typer(activations_app, name="activations")
    app.add_typer(deadletters_app, name="deadletters")
    app.command("deploy")(deploy_file)


# -- output helpers ----------------------------------------------------------------------------------------


def when(ms: Any) -> str:
    return datetime.fromtimestamp(int(ms) / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns aligned with two spaces, the header upper-case; nothing but the header for no rows."""
    cells = [[str(h).upper() for h in headers], *[["-" if v is None else str(v) for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = sys.stdout
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")


def print_changes(changes: list[Change], as_json: bool) -> None:
    if as_json:
        print_json([c.to_json() for c in changes])
        return
    for c in changes:
        sys.stdout.write(f"{c.kind} {c.name}: {c.status}\n")


def parse_params(values: list[str] | None) -> dict[str, Any]:
    """--param k=v: the value as JSON when it parses (5, true, {"a": 1}), else as the string itself."""
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            usage_error(f"--param: expected KEY=VALUE, not {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def status_word(record: dict[str, Any]) -> str:
    code = record.get("statusCode", (record.get("response") or {}).get("statusCode"))
    if code is None:
        return "-"
    return STATUS_WORDS.get(int(code), str(code))


def error_of(record: dict[str, Any]) -> str:
    result = (record.get("response") or {}).get("result")
    if isinstance(result, dict) and "error" in result:
        return str(result["error"])
    return ""


def _activation_row(a: dict[str, Any]) -> list[Any]:
    return [
        a.get("activationId"),
        a.get("name"),
        a.get("state"),
        status_word(a),
        when(a.get("start")),
        f"{a.get('duration', 0)} ms" if a.get("end") else "-",
        a.get("attempt", 1),
    ]


ACTIVATION_HEADERS = ("id", "name", "state", "status", "start", "duration", "attempt")


# -- fn ----------------------------------------------------------------------------------------------------


@fn_app.command("deploy")
def deploy(
    name: Annotated[str, typer.Argument(help="The function's name (its action; NAME-trigger and NAME-rule)")],
    file: Annotated[Path, typer.Argument(help="A .py file, a .zip with __main__.py, or a directory (zipped)")],
    on: Annotated[
        list[str] | None, typer.Option("--on", help="Inotify flag that runs it (repeatable; IN_CLOSE_WRITE)")
    ] = None,
    path: Annotated[str | None, typer.Option("--path", help="Run on storage events in this directory")] = None,
    pattern: Annotated[str | None, typer.Option("--pattern", help="Only for file names matching this glob")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", help="Also in every directory below --path")] = False,
    min_size: Annotated[int, typer.Option("--min-size", help="Only for files of at least this many bytes")] = 0,
    tape: Annotated[
        list[str] | None,
        typer.Option("--on-tape", help="Run when a file reaches or leaves tape: store, restore, evict, remove"),
    ] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="Run on the events of this event source (`headrace source`)")
    ] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="A parameter KEY=VALUE (repeatable)")] = None,
    main: Annotated[str, typer.Option("--main", help="The function to call")] = "main",
    timeout: Annotated[float | None, typer.Option("--timeout", help="Time limit in seconds (default 60)")] = None,
    memory: Annotated[int | None, typer.Option("--memory", help="Memory limit in MB (default 256)")] = None,
    min_scale: Annotated[int | None, typer.Option("--min-scale", help="Workers kept warm (default 0)")] = None,
    max_scale: Annotated[int | None, typer.Option("--max-scale", help="Most workers at once (default 4)")] = None,
    retries: Annotated[int | None, typer.Option("--retries", help="Retries of a failed event (default 2)")] = None,
    ordered: Annotated[bool, typer.Option("--ordered", help="Run one path's events one at a time, in order")] = False,
    storage: Annotated[bool, typer.Option("--storage", help="Let it read and write storage (ctx.storage)")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Make or update a function: the action NAME and, with --path, a storage-fed trigger and a rule."""
    if path is None and (on or pattern or recursive or min_size or tape or source):
        usage_error(
            "--on, --on-tape, --pattern, --recursive, --min-size and --source need --path (the directory to watch)"
        )
    limits: dict[str, int] = {}
    if timeout is not None:
        limits["timeout"] = round(timeout * 1000)
    if memory is not None:
        limits["memory"] = memory
    scaling: dict[str, Any] = {"ordered": ordered}
    for key, value in (("minScale", min_scale), ("maxScale", max_scale), ("retries", retries)):
        if value is not None:
            scaling[key] = value
    feed = None
    if path is not None:
        flags = normalize_flags(on) if on else ("IN_ATTRIB",) if tape else ("IN_CLOSE_WRITE",)
        feed = FeedSpec(
            path=path, recursive=recursive, flags=flags, pattern=pattern, min_size=min_size, tape=tuple(tape or ()),
            source=source,
        )  # fmt: skip
    spec = FunctionSpec.from_file(
        name, file, main=main, params=parse_params(param), limits=limits, scaling=scaling, feed=feed, storage=storage
    )
    with functions() as fn:
        print_changes(fn.deploy(spec), as_json)


@fn_app.command("list")
def list_functions(as_json: JsonFlag = False) -> None:
    """List the functions (actions), with the storage trigger of each, if any."""
    with functions() as fn:
        actions = list(fn.actions())
        triggers = {t["name"]: t for t in fn.triggers()}
    if as_json:
        print_json_array(actions)
        return
    rows = []
    for a in sorted(actions, key=lambda a: str(a["name"])):
        t = triggers.get(trigger_name(a["name"]))
        limits = a.get("limits") or {}
        rows.append(
            [
                a["name"],
                a.get("version"),
                (a.get("exec") or {}).get("kind"),
                f"{limits.get('memory', '-')} MB",
                f"{limits.get('timeout', 0) / 1000:g} s",
                when(a.get("updated")),
                _feed_text(t) if t else "-",
            ]
        )
    table(("name", "version", "kind", "memory", "timeout", "updated", "runs on"), rows)


def _feed_text(trigger: dict[str, Any]) -> str:
    p = trigger.get("feedParameters") or {}
    if not p:
        return "-"
    where = str(p.get("path", "/")) + ("/**" if p.get("recursive") else "")
    parts = [where, *(f"{p['pattern']}" for _ in [0] if p.get("pattern")), ",".join(p.get("flags") or [])]
    if p.get("min_size"):
        parts.append(f">={p['min_size']} B")
    if p.get("source"):
        parts.append(f"from {p['source']}")
    return " ".join(parts)


@fn_app.command("get")
def get(
    name: Annotated[str, typer.Argument(help="The function's name")],
    code: Annotated[bool, typer.Option("--code", help="Print the action's code (a .py file's text)")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show a function: its action's settings and its trigger and rule."""
    with functions() as fn:
        action = fn.action(name, code=code or as_json)
        trigger = fn.trigger_or_none(trigger_name(name))
        rule = fn.rule_or_none(rule_name(name))
    if as_json:
        print_json({"action": action, "trigger": trigger, "rule": rule})
        return
    ex = action.get("exec") or {}
    if code:
        if ex.get("binary"):
            raise CliError(f"action {name}: the code is a zip; `--json` prints it in base64")
        sys.stdout.write(str(ex.get("code", "")))
        return
    limits, scaling = action.get("limits") or {}, action.get("scaling") or {}
    lines = [
        ("Name", f"{action['name']} (version {action.get('version')})"),
        ("Kind", f"{ex.get('kind')}, main {ex.get('main', 'main')}, {'zip' if ex.get('binary') else 'source'}"),
        (
            "Limits",
            f"timeout {limits.get('timeout', 0) / 1000:g} s, memory {limits.get('memory')} MB, "
            f"logs {limits.get('logs')} MB",
        ),
        ("Scaling", ", ".join(f"{k} {v}" for k, v in scaling.items())),
        ("Parameters", ", ".join(f"{p['key']}={json.dumps(p['value'])}" for p in action.get("parameters") or [])),
        ("Trigger", f"{trigger['name']}: {_feed_text(trigger)}" if trigger else "-"),
        ("Rule", f"{rule['name']}: {rule.get('status')}" if rule else "-"),
    ]
    for label, value in lines:
        sys.stdout.write(f"{label + ':':<12}{value or '-'}\n")


@fn_app.command("delete")
def delete(name: Annotated[str, typer.Argument(help="The function's name")], as_json: JsonFlag = False) -> None:
    """Delete a function: its rule, its trigger and its action."""
    with functions() as fn:
        print_changes(fn.remove(name), as_json)


@fn_app.command("invoke")
def invoke(
    name: Annotated[str, typer.Argument(help="The function's name")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="An argument KEY=VALUE (repeatable)")] = None,
    blocking: Annotated[bool, typer.Option("--blocking", "-b", help="Wait for the result")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run a function once with the given arguments. Without --blocking, print the activation's id; with it,
    the result (--json: the whole activation record)."""
    with functions() as fn:
        answer = fn.invoke(name, parse_params(param), blocking=blocking)
    record = answer.record
    if record is None:
        if as_json:
            print_json({"activationId": answer.activation_id})
        else:
            sys.stdout.write(answer.activation_id + "\n")
        if blocking:
            report(f"activation {answer.activation_id} is still running; see `headrace activations get` later")
        return
    if as_json:
        print_json(record)
    elif answer.status == 200:
        print_json((record.get("response") or {}).get("result", {}))
    if answer.status != 200:
        raise CliError(f"activation {answer.activation_id} of {name} failed: {status_word(record)}: {error_of(record)}")


# -- activations -------------------------------------------------------------------------------------------


@activations_app.command("list")
def activations_list(
    name: Annotated[str | None, typer.Option("--name", help="Only this function's activations")] = None,
    limit: Annotated[int, typer.Option("--limit", help="How many, newest first (at most 200)")] = 30,
    state: Annotated[
        list[str] | None, typer.Option("--state", help="Only in this state: queued, running, done, dead (repeatable)")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Then print new activations as they finish")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List activations, newest first; with --follow, keep printing activations as they finish."""
    if not 1 <= limit <= 200:
        usage_error(f"--limit must be between 1 and 200, not {limit}")
    states = tuple(s.strip() for v in state or [] for s in v.split(",") if s.strip())
    with functions() as fn:
        rows = fn.activations(name=name, limit=limit, states=states)
        if not follow:
            if as_json:
                print_json_array(rows)
            else:
                table(ACTIVATION_HEADERS, [_activation_row(a) for a in rows])
            return
        _follow(fn, rows, name, states, as_json)


def _follow(
    fn: Functions, first: list[dict[str, Any]], name: str | None, states: tuple[str, ...], as_json: bool
) -> None:
    """Print the finished activations of `first` (oldest first), then each activation as it finishes.

    Each poll lists the activations queued since `since`. `since` moves forward (to a little before the
    latest end seen) only when every one of those has finished, so that a long or retried activation is
    never missed; those of `first` that had not finished are looked up by id."""
    printed: set[str] = set()
    header = not as_json

    def emit(batch: list[dict[str, Any]]) -> None:
        nonlocal header
        fresh = [a for a in batch if a.get("state") in FINAL_STATES and a["activationId"] not in printed]
        fresh = [a for a in fresh if not states or a.get("state") in states]
        fresh.sort(key=lambda a: (a.get("end") or 0, a["activationId"]))
        for a in fresh:
            printed.add(a["activationId"])
            if as_json:
                sys.stdout.write(json.dumps(a, ensure_ascii=False) + "\n")
            else:
                if header:
                    table(ACTIVATION_HEADERS, [])
                    header = False
                sys.stdout.write("  ".join(str(v) for v in _activation_row(a)) + "\n")
        sys.stdout.flush()

    def latest(batch: list[dict[str, Any]]) -> int:
        return max((max(int(a.get("start") or 0), int(a.get("end") or 0)) for a in batch), default=0)

    emit(first)
    pending = {a["activationId"] for a in first if a.get("state") not in FINAL_STATES}
    # activations queued after the listing was read are newer than anything in it (less a margin for
    # transactions that committed just after it)
    since = max(0, latest(first) - FOLLOW_MARGIN_MS)
    while True:
        time.sleep(POLL_SECONDS)
        window: list[dict[str, Any]] = []
        skip = 0
        while True:
            page = fn.activations(name=name, limit=200, skip=skip, since=since)
            window.extend(page)
            if len(page) < 200 or skip >= FOLLOW_MAX_WINDOW:
                break
            skip += 200
        for activation_id in sorted(pending):
            record = fn.activation(activation_id)
            if record.get("state") in FINAL_STATES:
                pending.discard(activation_id)
                window.append(record)
        emit(window)
        if window and all(a.get("state") in FINAL_STATES for a in window):
            since = max(since, latest(window) - FOLLOW_MARGIN_MS)


@activations_app.command("get")
def activations_get(
    activation_id: Annotated[str, typer.Argument(help="The activation's id")], as_json: JsonFlag = False
) -> None:
    """Show an activation: its state, status, times, result and logs."""
    with functions() as fn:
        record = fn.activation(activation_id)
    if as_json:
        print_json(record)
        return
    response = record.get("response") or {}
    # the action in its owner's namespace (a shared one's is not the record's, the caller's); a trigger's has none
    path = next(
        (a["value"] for a in record.get("annotations") or [] if a.get("key") == "path"),
        f"{record['namespace']}/{record['name']}",
    )
    rows = [
        ("Activation", record["activationId"]),
        ("Name", f"{path} (version {record.get('version')})"),
        ("State", f"{record.get('state')} (attempt {record.get('attempt', 1)})"),
        ("Status", str(response.get("status"))),
        ("Start", when(record.get("start"))),
        ("Duration", f"{record.get('duration', 0)} ms" if record.get("end") else "-"),
    ]
    if record.get("cause"):
        rows.append(("Cause", str(record["cause"])))
    if record.get("eventOffset") is not None:
        rows.append(("Event", str(record["eventOffset"])))
    rows.append(("Result", json.dumps(response.get("result", {}), ensure_ascii=False)))
    for label, value in rows:
        sys.stdout.write(f"{label + ':':<12}{value}\n")
    logs = record.get("logs") or []
    sys.stdout.write("Logs:" + ("\n" if logs else "       -\n"))
    for line in logs:
        sys.stdout.write(f"  {line}\n")


@activations_app.command("logs")
def activations_logs(
    activation_id: Annotated[str, typer.Argument(help="The activation's id")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait for the activation to finish")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Print an activation's log lines; with --follow, wait for an unfinished one (and each retry) to end."""
    with functions() as fn:
        if not follow:
            logs = fn.logs(activation_id)
            if as_json:
                print_json({"logs": logs})
            else:
                sys.stdout.writelines(line + "\n" for line in logs)
            return
        shown: tuple[int, int] = (0, 0)  # (attempt, lines of it printed)
        while True:
            record = fn.activation(activation_id)
            attempt, logs = int(record.get("attempt") or 1), list(record.get("logs") or [])
            ran = record.get("state") in FINAL_STATES or (record.get("response") or {}).get("statusCode") is not None
            if ran:
                # a retry queued again keeps the logs of the attempt before it: print each attempt once
                done_attempt = attempt if record.get("state") in FINAL_STATES else attempt - 1
                start = shown[1] if shown[0] == done_attempt else 0
                if shown[0] != done_attempt or start < len(logs):
                    for line in logs[start:]:
                        sys.stdout.write((json.dumps(line) if as_json else line) + "\n")
                    shown = (done_attempt, len(logs))
                sys.stdout.flush()
            if record.get("state") in FINAL_STATES:
                return
            time.sleep(POLL_SECONDS)


@activations_app.command("result")
def activations_result(
    activation_id: Annotated[str, typer.Argument(help="The activation's id")], as_json: JsonFlag = False
) -> None:
    """Print an activation's result (--json: with its status)."""
    with functions() as fn:
        answer = fn.result(activation_id)
    print_json(answer if as_json else answer.get("result", {}))


# -- dead letters ------------------------------------------------------------------------------------------


@deadletters_app.command("list")
def deadletters_list(
    name: Annotated[str | None, typer.Option("--name", help="Only this function's dead letters")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the dead letters, newest first: the event's path, the attempts made, the last error."""
    with functions() as fn:
        rows = list(fn.deadletters(name=name))
    if as_json:
        print_json_array(rows)
        return
    table(
        ("id", "name", "attempt", "end", "path", "error"),
        [
            [
                d["activationId"],
                d["name"],
                d.get("attempt"),
                when(d.get("end")),
                (d.get("args") or {}).get("path", "-"),
                error_of(d)[:80],
            ]
            for d in rows
        ],
    )


@deadletters_app.command("redrive")
def deadletters_redrive(
    ids: Annotated[list[str] | None, typer.Argument(help="Dead letters to run again (default: all)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Queue dead letters again (those named, or all of them) as a fresh first attempt."""
    with functions() as fn:
        n = fn.redrive(list(ids) if ids else None)
    if as_json:
        print_json({"redriven": n})
    else:
        sys.stdout.write(f"redriven {n}\n")


# -- deploy -f ---------------------------------------------------------------------------------------------


def deploy_file(
    file: Annotated[Path, typer.Option("--file", "-f", help="The headrace.yaml to deploy")],
    as_json: JsonFlag = False,
) -> None:
    """Deploy the functions a headrace.yaml describes; only what differs is written, so it is idempotent."""
    specs = load_deploy_file(file)
    changes: list[Change] = []
    with functions() as fn:
        for spec in specs:
            changes.extend(fn.deploy(spec))
    print_changes(changes, as_json)
