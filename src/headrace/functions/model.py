"""OpenWhisk's entities as headrace holds them: validation of what clients send (limits, code, names, feed
parameters) and the JSON shapes clients get back. Pure: no I/O. `ModelError` carries a 400 sentence."""

from __future__ import annotations

import ast
import base64
import binascii
import fnmatch
import io
import json
import re
import zipfile
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from headrace.events.selectors import EVENT_FLAGS, SelectorError, parse_flags
from headrace.events.sources.base import NAME_PATTERN

#: What names an event source (`PUT /api/v1/sources/{name}`).
SOURCE_NAME = re.compile(NAME_PATTERN)

#: A JSON object whose keys are the user's: an action's parameters and result, an event's payload, the
#: arguments an activation runs with. Everything else has a typed shape (here, functions/entities.py,
#: functions/records.py, functions/messages.py).
JSONObject = dict[str, Any]


class KeyValue(TypedDict):
    """One entry of OpenWhisk's parameters and annotations lists; the value is any JSON."""

    key: str
    value: Any


class Limits(TypedDict):
    """An action's limits, as stored and as the API shows them: timeout ms, memory MB, logs MB, concurrency."""

    timeout: int
    memory: int
    logs: int
    concurrency: int


class ScalingSettings(TypedDict, total=False):
    """An action's `scaling` object as stored and shown (headrace's own); functions/entities.Scaling reads
    it with its defaults."""

    minScale: float
    maxScale: float
    retries: float
    maxEventAge: float
    idleSeconds: float
    ordered: bool


class Exec(TypedDict, total=False):
    """An action's `exec`: Python code (text, or a base64 zip with `binary`) with its entry point, or a
    sequence's components. `kind` is always there."""

    kind: str
    code: str
    main: str
    binary: bool
    components: list[str]


STORAGE_FEED = "/whisk.system/storage/changes"
KINDS = ("python:3", "python:3.11", "python:3.12", "python:default", "sequence")

# (minimum, maximum, default) as OpenWhisk's defaults: timeout ms, memory MB, logs MB, concurrency.
LIMITS: dict[str, tuple[int, int, int]] = {
    "timeout": (100, 300_000, 60_000),
    "memory": (128, 4096, 256),
    "logs": (0, 10, 10),
    "concurrency": (1, 100, 1),
}
# headrace's own per-action settings (annotations in OpenWhisk's terms; a "scaling" object here).
SCALING: dict[str, tuple[float, float, float]] = {
    "minScale": (0, 64, 0),
    "maxScale": (1, 64, 4),
    "retries": (0, 20, 2),
    "maxEventAge": (1, 7 * 86400, 6 * 3600),  # seconds: older events are dead-lettered, not run
    "idleSeconds": (0, 86400, 60),  # scale to zero after this long without work
}
MAX_PARAMETERS_BYTES = 1024 * 1024
#: OpenWhisk's entity name (EntityName.REGEX, ASCII \w): a letter, digit or '_' first (so never '.' or '..',
#: which would name a directory when an action's code is laid out on disk), then letters, digits and
#: '_@.- ', no space last; at most 256 characters (ENTITY_NAME_MAX_LENGTH).
NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_@ .\-]{0,254}[A-Za-z0-9_@.\-])?")


class ModelError(ValueError):
    """Bad input; str() is the sentence the client reads (HTTP 400)."""


def check_name(name: str, what: str = "name") -> str:
    if not NAME.fullmatch(name):
        raise ModelError(
            f"The {what} {name!r} is not valid: start with a letter, digit or '_', then use letters, digits, "
            "'_', '@', '.', '-' and spaces (not last), at most 256 characters."
        )
    return name


def key_values(raw: Any, what: str) -> list[KeyValue]:
    """OpenWhisk's [{"key", "value"}] lists (parameters, annotations)."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(p, dict) and isinstance(p.get("key"), str) for p in raw):
        raise ModelError(f'{what} must be a list of {{"key": ..., "value": ...}} objects.')
    if len(json.dumps(raw)) > MAX_PARAMETERS_BYTES:
        raise ModelError(f"{what} exceed the allowed size of {MAX_PARAMETERS_BYTES} bytes.")
    return [{"key": p["key"], "value": p.get("value")} for p in raw]


def as_dict(kv: list[KeyValue]) -> JSONObject:
    return {p["key"]: p["value"] for p in kv}


def default_limits() -> Limits:
    return {"timeout": LIMITS["timeout"][2], "memory": LIMITS["memory"][2], "logs": LIMITS["logs"][2],
            "concurrency": LIMITS["concurrency"][2]}  # fmt: skip


def limits(raw: Any, current: Limits | None = None) -> Limits:
    out: dict[str, Any] = {**(current or default_limits())}
    if raw is None:
        return cast(Limits, out)
    if not isinstance(raw, dict):
        raise ModelError("limits must be an object.")
    for k, v in raw.items():
        if k not in LIMITS:
            raise ModelError(f"Unknown limit {k!r} (known: {', '.join(LIMITS)}).")
        lo, hi, _ = LIMITS[k]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            unit = {"timeout": " milliseconds", "memory": " MB", "logs": " MB"}.get(k, "")
            raise ModelError(f"The {k} limit must be an integer between {lo} and {hi}{unit}, not {v!r}.")
        out[k] = v
    return cast(Limits, out)  # the keys checked above


def scaling(raw: Any, current: ScalingSettings | None = None) -> ScalingSettings:
    out: dict[str, Any] = {**(current or {k: d for k, (_, _, d) in SCALING.items()})}
    if raw is None:
        return cast(ScalingSettings, out)
    if not isinstance(raw, dict):
        raise ModelError("scaling must be an object.")
    for k, v in raw.items():
        if k == "ordered":
            if not isinstance(v, bool):
                raise ModelError("scaling.ordered must be true or false.")
            out[k] = v
            continue
        if k not in SCALING:
            raise ModelError(f"Unknown scaling setting {k!r} (known: {', '.join([*SCALING, 'ordered'])}).")
        lo, hi, _ = SCALING[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise ModelError(f"scaling.{k} must be a number between {lo:g} and {hi:g}, not {v!r}.")
        out[k] = v
    if out["minScale"] > out["maxScale"]:
        raise ModelError("scaling.minScale must not exceed scaling.maxScale.")
    return cast(ScalingSettings, out)  # the keys checked above


def _syntax(source: str, filename: str) -> ast.Module:
    try:
        return ast.parse(source, filename)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        raise ModelError(f"The action's code has a syntax error at {filename} {where}: {exc.msg}") from exc


def _has_main(tree: ast.Module, main: str) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == main:
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == main for t in node.targets):
            return True
        if isinstance(node, ast.ImportFrom | ast.Import) and any((a.asname or a.name) == main for a in node.names):
            return True
    return False


def check_exec(raw: Any) -> Exec:
    """Validate an action's `exec`: Python code as text, a base64 zip with __main__.py, or a sequence."""
    if not isinstance(raw, dict):
        raise ModelError('exec is required: {"kind": "python:3", "code": "..."}.')
    kind = raw.get("kind", "python:3")
    if kind not in KINDS:
        raise ModelError(f"Unsupported kind {kind!r}: headrace runs {', '.join(KINDS)}.")
    if kind == "sequence":
        components = raw.get("components")
        if not isinstance(components, list) or not components or not all(isinstance(c, str) for c in components):
            raise ModelError('A sequence needs "components": a list of action names.')
        return {"kind": "sequence", "components": components}
    main = raw.get("main") or "main"
    if not isinstance(main, str) or not main.isidentifier():
        raise ModelError(f"exec.main must be a Python function name, not {main!r}.")
    code = raw.get("code")
    if not isinstance(code, str) or not code.strip():
        raise ModelError("exec.code is required: the action's Python source, or a base64 zip with binary true.")
    binary = bool(raw.get("binary", False))
    if binary or code.startswith("UEsDB"):  # "PK\x03\x04" in base64: a zip
        source = _zip_main(code)
        filename = "__main__.py"
        binary = True
    else:
        source, filename = code, "__main__.py"
    tree = _syntax(source, filename)
    if not _has_main(tree, main):
        raise ModelError(f"The action's code defines no function {main!r} at the top level of {filename}.")
    return {"kind": "python:3" if kind.startswith("python") else kind, "code": code, "main": main, "binary": binary}


def _zip_main(code: str) -> str:
    try:
        data = base64.b64decode(code, validate=True)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
            if "__main__.py" not in names:
                raise ModelError("The action's zip has no __main__.py at its top level.")
            return z.read("__main__.py").decode("utf-8")
    except (binascii.Error, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ModelError(f"The action's code is not a valid base64 zip: {exc}") from exc


# -- the storage feed -------------------------------------------------------------------------------------

#: The tape steps a storage feed can fire on (headrace.tape.catalog writes them as an ATTRIB's detail "tape").
TAPE_STEPS = ("store", "restore", "evict", "remove")


@dataclass(frozen=True)
class FeedFilter:
    """Which storage events fire a trigger fed by /whisk.system/storage/changes."""

    path: str
    recursive: bool = False
    flags: frozenset[str] = frozenset({"IN_CLOSE_WRITE"})
    pattern: str | None = None
    min_size: int = 0
    #: Tape steps that fire it (store, restore, evict, remove: an IN_ATTRIB with that step); empty: any event.
    tape: frozenset[str] = frozenset()
    #: The event source it follows (events/sources); None: headrace's own namespace.
    source: str | None = None

    def to_json(self) -> JSONObject:
        out: JSONObject = {"path": self.path, "recursive": self.recursive, "flags": sorted(self.flags)}
        if self.pattern:
            out["pattern"] = self.pattern
        if self.min_size:
            out["min_size"] = self.min_size
        if self.tape:
            out["tape"] = sorted(self.tape)
        if self.source:
            out["source"] = self.source
        return out

    def matches_name(self, name: str | None, size: int | None) -> bool:
        if self.pattern and not fnmatch.fnmatchcase(name or "", self.pattern):
            return False
        return not (self.min_size and (size or 0) < self.min_size)


def feed_filter(raw: JSONObject) -> FeedFilter:
    unknown = sorted(
        set(raw)
        - {
            "path", "recursive", "flags", "pattern", "min_size", "tape", "source",
            "lifecycleEvent", "triggerName", "authKey",
        }
    )  # fmt: skip
    if unknown:
        raise ModelError(
            f"Unknown storage feed parameter {unknown[0]!r} "
            "(known: path, recursive, flags, pattern, min_size, tape, source)."
        )
    source = raw.get("source") or None
    if source is not None and (not isinstance(source, str) or not SOURCE_NAME.fullmatch(source)):
        raise ModelError(f"The storage feed's source must be a source's name, not {source!r}.")
    path = raw.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ModelError(f"The storage feed's path must be an absolute path, not {path!r}.")
    path = "/" + path.strip("/") if path != "/" else "/"
    recursive = raw.get("recursive", False)
    if isinstance(recursive, str):
        recursive = recursive.lower() in ("1", "true", "yes")
    tape_raw = raw.get("tape") or []
    if isinstance(tape_raw, str):
        tape_raw = [t for t in re.split(r"[,\s|]+", tape_raw) if t]
    if not isinstance(tape_raw, list) or not all(isinstance(t, str) and t in TAPE_STEPS for t in tape_raw):
        raise ModelError(f"The storage feed's tape steps are a list of: {', '.join(TAPE_STEPS)}.")
    flags_raw = raw.get("flags", ["IN_ATTRIB"] if tape_raw else ["IN_CLOSE_WRITE"])
    if isinstance(flags_raw, str):
        flags_raw = [f for f in re.split(r"[,\s|]+", flags_raw) if f]
    if not isinstance(flags_raw, list) or not flags_raw:
        raise ModelError("The storage feed's flags must be a list of inotify flag names.")
    try:
        flags, modifiers = parse_flags(flags_raw)
    except SelectorError as exc:
        raise ModelError(f"The storage feed's flags: {exc} (known: {', '.join(EVENT_FLAGS)}).") from exc
    if modifiers:
        raise ModelError(f"The storage feed takes event flags only, not {', '.join(sorted(modifiers))}.")
    pattern = raw.get("pattern")
    if pattern is not None and not isinstance(pattern, str):
        raise ModelError("The storage feed's pattern must be a glob string such as '*.h5'.")
    min_size = raw.get("min_size", 0)
    try:
        min_size = int(min_size)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"The storage feed's min_size must be a number of bytes, not {min_size!r}.") from exc
    if min_size < 0:
        raise ModelError("The storage feed's min_size must not be negative.")
    if tape_raw and "IN_ATTRIB" not in flags:
        raise ModelError("A storage feed on tape steps needs the flag IN_ATTRIB (a tape step is an attribute change).")
    return FeedFilter(
        path=path,
        recursive=bool(recursive),
        flags=frozenset(flags),
        pattern=pattern or None,
        min_size=min_size,
        tape=frozenset(tape_raw),
        source=source,
    )
