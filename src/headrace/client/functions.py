"""The functions half of the SDK: OpenWhisk's REST API on the frontend (`/api/v1/namespaces/_/...`), and
declarative deployment of functions (an action, and optionally a storage-fed trigger and a rule).

    with Client.from_config() as c:
        fn = Functions(c)
        fn.deploy(FunctionSpec.from_file("thumbs", "thumbs.py", feed=FeedSpec("/raw", pattern="*.h5")))
        print(fn.invoke("thumbs", {"path": "/raw/a.h5"}, blocking=True).record)

`deploy` is idempotent: it reads what exists and writes only what differs (so a second run changes
nothing, and warm workers of an unchanged action stay warm). A directory of code is zipped
deterministically, so the same files always make the same action.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from headrace.client.storage import Client, HeadraceClientError
from headrace.functions.model import LIMITS, SCALING, STORAGE_FEED, ModelError, feed_filter

__all__ = [
    "Change",
    "FeedSpec",
    "FunctionSpec",
    "Functions",
    "Invocation",
    "load_deploy_file",
    "package_code",
]

PREFIX = "/api/v1/namespaces"
PAGE = 200
FINAL_STATES = ("done", "dead")
#: Files a directory of code leaves out of its zip.
SKIPPED_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def trigger_name(function: str) -> str:
    return f"{function}-trigger"


def rule_name(function: str) -> str:
    return f"{function}-rule"


# -- code packaging ----------------------------------------------------------------------------------------


def _zip_directory(root: Path) -> bytes:
    """The directory's files as a zip, the same bytes for the same files (sorted names, fixed times)."""
    if not (root / "__main__.py").is_file():
        raise HeadraceClientError(0, f"{root}: a directory of code needs a __main__.py at its top level")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
            for filename in sorted(filenames):
                if filename.endswith((".pyc", ".pyo")):
                    continue
                path = Path(dirpath, filename)
                info = zipfile.ZipInfo(path.relative_to(root).as_posix(), ZIP_TIME)
                info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, path.read_bytes())
    return buf.getvalue()


def package_code(path: str | os.PathLike[str]) -> tuple[str, bool]:
    """An action's code from a file or directory: (Python source, False) for a .py file, (base64 zip, True)
    for a .zip or a directory with __main__.py (zipped on the fly)."""
    p = Path(path)
    try:
        if p.is_dir():
            return base64.b64encode(_zip_directory(p)).decode("ascii"), True
        if p.suffix == ".zip":
            return base64.b64encode(p.read_bytes()).decode("ascii"), True
        if p.suffix == ".py":
            return p.read_text(encoding="utf-8"), False
    except UnicodeDecodeError as exc:
        raise HeadraceClientError(0, f"{p}: not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise HeadraceClientError(0, f"{p}: {exc.strerror or exc}") from exc
    if not p.exists():
        raise HeadraceClientError(0, f"{p}: No such file or directory")
    raise HeadraceClientError(0, f"{p}: the code must be a .py file, a .zip or a directory with __main__.py")


# -- what to deploy ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedSpec:
    """Which storage events run a function: the storage feed's parameters."""

    path: str
    recursive: bool = False
    flags: tuple[str, ...] = ("IN_CLOSE_WRITE",)
    pattern: str | None = None
    min_size: int = 0
    #: Tape steps that run it (store, restore, evict, remove); with them, flags default to IN_ATTRIB.
    tape: tuple[str, ...] = ()
    #: The event source whose events run it (`headrace source`); None: headrace's own namespace.
    source: str | None = None

    def parameters(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "recursive": self.recursive, "flags": list(self.flags)}
        if self.pattern:
            out["pattern"] = self.pattern
        if self.min_size:
            out["min_size"] = self.min_size
        if self.tape:
            out["tape"] = list(self.tape)
        if self.source:
            out["source"] = self.source
        return out

    def normalized(self) -> dict[str, Any]:
        """The parameters as the server stores them (flags expanded and sorted, path canonical)."""
        try:
            return feed_filter(self.parameters()).to_json()
        except ModelError as exc:
            raise HeadraceClientError(0, str(exc)) from exc


@dataclass(frozen=True)
class FunctionSpec:
    """A function as `headrace fn deploy` and `headrace deploy -f` describe it. Limits and scaling that
    are not given are the server's defaults, so deploying a spec always yields the same action."""

    name: str
    code: str
    binary: bool = False
    main: str = "main"
    params: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    scaling: dict[str, Any] = field(default_factory=dict)
    feed: FeedSpec | None = None
    #: The function reads and writes storage (ctx.storage): its sandbox gets the door and frontend.
    storage: bool = False

    @classmethod
    def from_file(cls, name: str, code: str | os.PathLike[str], **kw: Any) -> FunctionSpec:
        text, binary = package_code(code)
        return cls(name=name, code=text, binary=binary, **kw)

    def action_body(self) -> dict[str, Any]:
        return {
            "exec": {"kind": "python:3", "code": self.code, "main": self.main, "binary": self.binary},
            "parameters": [{"key": k, "value": v} for k, v in self.params.items()],
            "annotations": [{"key": "storage", "value": True}] if self.storage else [],
            "limits": {**{k: d for k, (_, _, d) in LIMITS.items()}, **self.limits},
            "scaling": {**{k: d for k, (_, _, d) in SCALING.items()}, "ordered": False, **self.scaling},
        }

    def trigger_body(self) -> dict[str, Any]:
        assert self.feed is not None
        return {
            "feed": {"name": STORAGE_FEED, **self.feed.parameters()},
            "parameters": [],
            "annotations": [{"key": "feed", "value": STORAGE_FEED}],
        }


@dataclass(frozen=True)
class Change:
    """What `deploy` or `remove` did to one entity: created, updated, unchanged or deleted."""

    kind: str  # action | trigger | rule
    name: str
    status: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "status": self.status}


@dataclass(frozen=True)
class Invocation:
    """An invoke's answer: `status` 200 (success), 202 (queued, or the wait ran out), 502 (application or
    developer error) or 500; `record` the activation record when the call waited for one."""

    status: int
    activation_id: str
    record: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.record is not None


def _same_action(current: dict[str, Any], body: dict[str, Any]) -> bool:
    ex, want = current.get("exec") or {}, body["exec"]
    return (
        ex.get("kind") == want["kind"]
        and ex.get("code") == want["code"]
        and bool(ex.get("binary")) == want["binary"]
        and (ex.get("main") or "main") == want["main"]
        and current.get("parameters") == body["parameters"]
        and current.get("annotations") == body["annotations"]
        and current.get("limits") == body["limits"]
        and all((current.get("scaling") or {}).get(k) == v for k, v in body["scaling"].items())
    )


class Functions:
    """OpenWhisk's REST API through a `Client` (its credentials, its error handling)."""

    def __init__(self, client: Client, namespace: str = "_") -> None:
        self.client = client
        self.namespace = namespace

    def url(self, *parts: str) -> str:
        base = f"{self.client.config.api}{PREFIX}"
        if not parts:
            return base
        return base + "/" + "/".join(quote(p, safe="") for p in (self.namespace, *parts))

    def _call(self, method: str, *parts: str, about: str | None = None, **kw: Any) -> Any:
        response = self.client.request(method, self.url(*parts), about=about, **kw)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise HeadraceClientError(response.status_code, f"Malformed answer from the server: {exc}") from exc

    def _or_none(self, *parts: str) -> Any:
        try:
            return self._call("GET", *parts)
        except HeadraceClientError as exc:
            if exc.status == 404:
                return None
            raise

    def _pages(self, *parts: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        skip = 0
        while True:
            page = self._call("GET", *parts, params={**(params or {}), "limit": PAGE, "skip": skip})
            yield from page
            if len(page) < PAGE:
                return
            skip += len(page)

    # -- namespaces and limits --------------------------------------------------------------------------

    def namespaces(self) -> list[str]:
        return list(self.client.request("GET", self.url()).json())

    def limits(self) -> dict[str, Any]:
        return dict(self._call("GET", "limits"))

    # -- actions ----------------------------------------------------------------------------------------

    def actions(self) -> Iterator[dict[str, Any]]:
        """Every action of the namespace (listing entries: no code)."""
        return self._pages("actions")

    def action(self, name: str, *, code: bool = True) -> dict[str, Any]:
        params = None if code else {"code": "false"}
        return dict(self._call("GET", "actions", name, about=f"action {name}", params=params))

    def action_or_none(self, name: str) -> dict[str, Any] | None:
        found = self._or_none("actions", name)
        return dict(found) if found is not None else None

    def put_action(self, name: str, body: dict[str, Any], *, overwrite: bool = True) -> dict[str, Any]:
        params = {"overwrite": "true" if overwrite else "false"}
        return dict(self._call("PUT", "actions", name, about=f"action {name}", params=params, json=body))

    def delete_action(self, name: str) -> dict[str, Any]:
        return dict(self._call("DELETE", "actions", name, about=f"action {name}"))

    def invoke(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        *,
        blocking: bool = False,
        timeout_ms: int | None = None,
    ) -> Invocation:
        """Invoke an action. Non-blocking: queued, 202. Blocking: the activation record, unless the wait
        (`timeout_ms`, the server's 60 s by default) ran out first. An application error is a 502 with the
        record, not an exception."""
        query: dict[str, str] = {"blocking": "true" if blocking else "false"}
        if timeout_ms is not None:
            query["timeout"] = str(timeout_ms)
        url = self.url("actions", name)
        wait = (timeout_ms or 60_000) / 1000 + 30 if blocking else 30
        try:
            response = self.client.http.post(url, params=query, json=params or {}, timeout=wait)
        except httpx.HTTPError as exc:
            raise self.client.connection_error(exc, url) from exc
        if response.status_code not in (200, 202, 500, 502):
            raise self.client.status_error(response, f"action {name}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 500 and not (isinstance(body, dict) and "activationId" in body):
            raise self.client.status_error(response, f"action {name}")
        if not isinstance(body, dict):
            raise HeadraceClientError(response.status_code, "Malformed answer from the server")
        activation_id = str(response.headers.get("x-openwhisk-activation-id") or body.get("activationId"))
        record = body if "response" in body else None
        return Invocation(response.status_code, activation_id, record)

    # -- triggers ---------------------------------------------------------------------------------------

    def triggers(self) -> Iterator[dict[str, Any]]:
        return self._pages("triggers")

    def trigger(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", "triggers", name, about=f"trigger {name}"))

    def trigger_or_none(self, name: str) -> dict[str, Any] | None:
        found = self._or_none("triggers", name)
        return dict(found) if found is not None else None

    def put_trigger(self, name: str, body: dict[str, Any], *, overwrite: bool = True) -> dict[str, Any]:
        params = {"overwrite": "true" if overwrite else "false"}
        return dict(self._call("PUT", "triggers", name, about=f"trigger {name}", params=params, json=body))

    def delete_trigger(self, name: str) -> dict[str, Any]:
        return dict(self._call("DELETE", "triggers", name, about=f"trigger {name}"))

    def fire(self, name: str, payload: dict[str, Any] | None = None) -> str | None:
        """Fire a trigger: the trigger's activation id, or None when no active rule took it."""
        answer = self._call("POST", "triggers", name, about=f"trigger {name}", json=payload or {})
        return str(answer["activationId"]) if answer else None

    # -- rules ------------------------------------------------------------------------------------------

    def rules(self) -> Iterator[dict[str, Any]]:
        return self._pages("rules")

    def rule(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", "rules", name, about=f"rule {name}"))

    def rule_or_none(self, name: str) -> dict[str, Any] | None:
        found = self._or_none("rules", name)
        return dict(found) if found is not None else None

    def put_rule(
        self, name: str, trigger: str, action: str, *, status: str = "active", overwrite: bool = True
    ) -> dict[str, Any]:
        body = {"trigger": trigger, "action": action, "status": status}
        params = {"overwrite": "true" if overwrite else "false"}
        return dict(self._call("PUT", "rules", name, about=f"rule {name}", params=params, json=body))

    def delete_rule(self, name: str) -> dict[str, Any]:
        return dict(self._call("DELETE", "rules", name, about=f"rule {name}"))

    def set_rule_status(self, name: str, status: str) -> dict[str, Any]:
        return dict(self._call("POST", "rules", name, about=f"rule {name}", json={"status": status}))

    # -- activations and dead letters -------------------------------------------------------------------

    def activations(
        self,
        *,
        name: str | None = None,
        limit: int = 30,
        skip: int = 0,
        since: int | None = None,
        upto: int | None = None,
        docs: bool = False,
        states: tuple[str, ...] = (),
    ) -> list[dict[str, Any]]:
        """Activations, newest first: listing entries, or full records with `docs`."""
        params: dict[str, Any] = {"limit": limit, "skip": skip, "docs": "true" if docs else "false"}
        if name:
            params["name"] = name
        if since is not None:
            params["since"] = since
        if upto is not None:
            params["upto"] = upto
        if states:
            params["state"] = ",".join(states)
        return list(self._call("GET", "activations", params=params))

    def activation(self, activation_id: str) -> dict[str, Any]:
        return dict(self._call("GET", "activations", activation_id, about=f"activation {activation_id}"))

    def logs(self, activation_id: str) -> list[str]:
        answer = self._call("GET", "activations", activation_id, "logs", about=f"activation {activation_id}")
        return [str(line) for line in answer.get("logs") or []]

    def result(self, activation_id: str) -> dict[str, Any]:
        return dict(self._call("GET", "activations", activation_id, "result", about=f"activation {activation_id}"))

    def deadletters(self, *, name: str | None = None) -> Iterator[dict[str, Any]]:
        """Every dead letter of the namespace (newest first), with the arguments it would run with."""
        return self._pages("deadletters", params={"name": name} if name else None)

    def redrive(self, activation_ids: list[str] | None = None) -> int:
        """Queue dead letters again as a fresh first attempt: those named, or all; how many."""
        body = {"activationIds": activation_ids} if activation_ids is not None else {}
        return int(self._call("POST", "deadletters", "redrive", json=body)["redriven"])

    # -- deployment -------------------------------------------------------------------------------------

    def deploy(self, spec: FunctionSpec) -> list[Change]:
        """Make the function's action and, with a feed, its trigger `NAME-trigger` and rule `NAME-rule`
        (active); write only what differs from what exists."""
        changes = []
        body = spec.action_body()
        wanted = spec.feed.normalized() if spec.feed is not None else None  # refused here, before any change
        current = self.action_or_none(spec.name)
        if current is not None and _same_action(current, body):
            changes.append(Change("action", spec.name, "unchanged"))
        else:
            self.put_action(spec.name, body, overwrite=True)
            changes.append(Change("action", spec.name, "created" if current is None else "updated"))
        if spec.feed is None:
            return changes
        tname, rname = trigger_name(spec.name), rule_name(spec.name)
        trig = self.trigger_or_none(tname)
        same_trigger = (
            trig is not None
            and trig.get("feed") == STORAGE_FEED
            and trig.get("feedParameters") == wanted
            and trig.get("parameters") == []
        )
        if same_trigger:
            changes.append(Change("trigger", tname, "unchanged"))
        else:
            self.put_trigger(tname, spec.trigger_body(), overwrite=True)
            changes.append(Change("trigger", tname, "created" if trig is None else "updated"))
        rule = self.rule_or_none(rname)
        same_rule = (
            rule is not None
            and rule.get("status") == "active"
            and (rule.get("trigger") or {}).get("name") == tname
            and (rule.get("action") or {}).get("name") == spec.name
        )
        if same_rule:
            changes.append(Change("rule", rname, "unchanged"))
        else:
            self.put_rule(rname, tname, spec.name, overwrite=True)
            changes.append(Change("rule", rname, "created" if rule is None else "updated"))
        return changes

    def remove(self, name: str) -> list[Change]:
        """Delete a function: its rule and trigger (if it has them), then its action."""
        changes: list[Change] = []
        for kind, entity, delete in (
            ("rule", rule_name(name), self.delete_rule),
            ("trigger", trigger_name(name), self.delete_trigger),
            ("action", name, self.delete_action),
        ):
            try:
                delete(entity)
            except HeadraceClientError as exc:
                if exc.status != 404 or (kind == "action" and not changes):
                    raise
                continue
            changes.append(Change(kind, entity, "deleted"))
        return changes


# -- headrace.yaml -----------------------------------------------------------------------------------------

#: Keys of a function in headrace.yaml: the `headrace fn deploy` options, named as in the file.
FUNCTION_KEYS = {
    "code", "main", "params", "timeout", "memory", "logs", "min_scale", "max_scale", "retries",
    "max_event_age", "idle_seconds", "ordered", "trigger", "storage",
}  # fmt: skip
TRIGGER_KEYS = {"path", "recursive", "pattern", "on", "min_size", "source"}
_SCALING_KEYS = {
    "min_scale": "minScale", "max_scale": "maxScale", "retries": "retries",
    "max_event_age": "maxEventAge", "idle_seconds": "idleSeconds",
}  # fmt: skip


def _number(where: str, value: Any, *, integer: bool = True) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise HeadraceClientError(0, f"{where} must be {'an integer' if integer else 'a number'}, not {value!r}")
    return value


def normalize_flags(values: list[str] | tuple[str, ...] | str) -> tuple[str, ...]:
    """Inotify flag names from a list or a comma-separated string, upper-cased, IN_ added where missing."""
    items = values.split(",") if isinstance(values, str) else [str(v) for v in values]
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            name = part.strip().upper()
            if name and not name.startswith("IN_"):
                name = "IN_" + name
            if name and name not in out:
                out.append(name)
    return tuple(out)


_ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_env(value: Any, where: str) -> Any:
    """A string parameter with `${VAR}` or `${VAR:-default}` in it, the variable's value put in (as a shell
    would); other values as they are. An unset variable without a default is an error."""
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        got = os.environ.get(m["name"])
        if got:
            return got
        if m["default"] is None:
            raise HeadraceClientError(0, f"{where}: the environment variable {m['name']} is not set")
        return m["default"]

    return _ENV_REF.sub(sub, value)


def spec_from_mapping(name: str, raw: Any, base: Path, where: str) -> FunctionSpec:
    """One function of a headrace.yaml (`where` names it in messages; code paths are relative to `base`)."""
    if not isinstance(raw, dict):
        raise HeadraceClientError(0, f"{where} must be a mapping of settings")
    unknown = sorted(set(raw) - FUNCTION_KEYS)
    if unknown:
        raise HeadraceClientError(0, f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(FUNCTION_KEYS))})")
    if not isinstance(raw.get("code"), str):
        raise HeadraceClientError(0, f"{where}.code is required: the function's .py file, .zip or directory")
    code = Path(raw["code"]).expanduser()
    params = raw.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise HeadraceClientError(0, f"{where}.params must be a mapping of names to values")
    params = {k: expand_env(v, f"{where}.params.{k}") for k, v in params.items()}
    main = raw.get("main", "main")
    if not isinstance(main, str):
        raise HeadraceClientError(0, f"{where}.main must be a function name")
    limits: dict[str, int] = {}
    if "timeout" in raw:
        limits["timeout"] = round(_number(f"{where}.timeout", raw["timeout"], integer=False) * 1000)
    for key in ("memory", "logs"):
        if key in raw:
            limits[key] = _number(f"{where}.{key}", raw[key])
    scaling: dict[str, Any] = {}
    for key, wire in _SCALING_KEYS.items():
        if key in raw:
            scaling[wire] = _number(f"{where}.{key}", raw[key], integer=key in ("min_scale", "max_scale", "retries"))
    if "ordered" in raw:
        if not isinstance(raw["ordered"], bool):
            raise HeadraceClientError(0, f"{where}.ordered must be true or false")
        scaling["ordered"] = raw["ordered"]
    storage = raw.get("storage", False)
    if not isinstance(storage, bool):
        raise HeadraceClientError(0, f"{where}.storage must be true or false")
    feed = None
    trig = raw.get("trigger")
    if trig is not None:
        if not isinstance(trig, dict):
            raise HeadraceClientError(0, f"{where}.trigger must be a mapping (path, recursive, pattern, on, min_size)")
        # YAML 1.1 reads a bare `on:` key as the boolean true
        trig = {("on" if k is True else k): v for k, v in trig.items()}
        unknown = sorted(set(trig) - TRIGGER_KEYS)
        if unknown:
            raise HeadraceClientError(
                0, f"{where}.trigger: unknown key {unknown[0]!r} (known: {', '.join(sorted(TRIGGER_KEYS))})"
            )
        if not isinstance(trig.get("path"), str):
            raise HeadraceClientError(0, f"{where}.trigger.path is required: the directory to watch")
        on = trig.get("on", ["IN_CLOSE_WRITE"])
        if not isinstance(on, str | list):
            raise HeadraceClientError(0, f"{where}.trigger.on must be a list of inotify flags")
        pattern = trig.get("pattern")
        if pattern is not None and not isinstance(pattern, str):
            raise HeadraceClientError(0, f"{where}.trigger.pattern must be a glob such as '*.h5'")
        recursive = trig.get("recursive", False)
        if not isinstance(recursive, bool):
            raise HeadraceClientError(0, f"{where}.trigger.recursive must be true or false")
        source = trig.get("source")
        if source is not None and not isinstance(source, str):
            raise HeadraceClientError(0, f"{where}.trigger.source must be an event source's name")
        feed = FeedSpec(
            path=trig["path"],
            recursive=recursive,
            flags=normalize_flags(on),
            pattern=pattern,
            min_size=_number(f"{where}.trigger.min_size", trig.get("min_size", 0)),
            source=source or None,
        )
    return FunctionSpec.from_file(
        name,
        code if code.is_absolute() else base / code,
        main=main,
        params=dict(params),
        limits=limits,
        scaling=scaling,
        feed=feed,
        storage=storage,
    )


def load_deploy_file(path: str | os.PathLike[str]) -> list[FunctionSpec]:
    """The functions of a headrace.yaml (see docs/functions.md for the format)."""
    import yaml

    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise HeadraceClientError(0, f"{file}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise HeadraceClientError(0, f"{file}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("functions"), dict) or not data["functions"]:
        raise HeadraceClientError(0, f"{file}: expected a mapping `functions:` of function names to their settings")
    unknown = sorted(set(data) - {"functions"})
    if unknown:
        raise HeadraceClientError(0, f"{file}: unknown top-level key {unknown[0]!r} (known: functions)")
    return [
        spec_from_mapping(str(name), raw, file.parent, f"{file.name}: functions.{name}")
        for name, raw in data["functions"].items()
    ]
