"""OpenWhisk's REST API on the frontend (`/api/v1/namespaces/...`): actions (and sequences), triggers
(with headrace's storage feed), rules, activations, limits, and headrace's dead letters.

Every answer under the prefix is OpenWhisk's, errors included: `{"error": "...", "code": "<transaction id>"}`
for a bad or missing credential (401), another user's namespace (403), an unknown name or route (404), a
refused body (400), an existing name without `?overwrite=true` (409). The routes catch their own errors
(`_OpenWhiskRoute`) and a catch-all route answers the paths no route matches, so that the frontend's
dCache-shaped handlers never see a request under this prefix.

Entities live in the database (`FunctionStore`); after every change the controller reloads them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Literal, Protocol, overload

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from headrace.auth.access import Principal
from headrace.errors import Forbidden, HeadraceError, NotFound, Unauthorized
from headrace.events.sources.store import SourceStore
from headrace.functions import model, names, packages, records, web
from headrace.functions.entities import (
    ActionFields,
    ActionRow,
    ActivationRow,
    Binding,
    EntityRow,
    PackageFields,
    PackageRow,
    RuleFields,
    RuleRow,
    TriggerFields,
    TriggerRow,
)
from headrace.functions.errors import FORBIDDEN, WhiskError
from headrace.functions.model import MAX_PARAMETERS_BYTES, STORAGE_FEED, JSONObject, ModelError
from headrace.functions.store import Exists, FunctionStore, Kind
from headrace.functions.throttle import Throttle, concurrency_refusal
from headrace.http_common import WWW_AUTHENTICATE, principal_of
from headrace.storage.service import StorageService

log = logging.getLogger("headrace.functions")

PREFIX = "/api/v1/namespaces"
NOT_FOUND = "The requested resource does not exist."
__all__ = ["FORBIDDEN", "NOT_FOUND", "PREFIX", "WhiskError", "install", "namespace_of", "whisk_error"]
DEFAULT_LIST = 30
MAX_LIST = 200
DEFAULT_BLOCKING_MS = 60_000
MAX_BLOCKING_MS = 600_000
FEED_KEYS = ("path", "recursive", "flags", "pattern", "min_size", "tape", "source")
STATES = ("queued", "running", "done", "dead")


class Functions(Protocol):
    """What the API needs of the functions back end: the embedded `Controller`, or a frontend's
    `RemoteFunctions` when invokers run the activations (functions/gateway.py)."""

    store: FunctionStore
    max_workers: int

    async def reload(self) -> None: ...

    def invocations_in_flight(self, namespace: str) -> int: ...

    async def invoke(
        self, namespace: str, action: str, params: JSONObject, *, cause: str | None = None, subject: str | None = None
    ) -> tuple[str, asyncio.Future[ActivationRow]]: ...

    async def fire(self, namespace: str, trigger: TriggerRow, payload: JSONObject) -> str | None: ...

    async def redrive(self, namespace: str, ids: list[str] | None) -> int: ...


def whisk_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenWhisk's error body; `code` is a fresh transaction id, also sent as X-Request-ID."""
    tid = uuid.uuid4().hex
    h = {"X-Request-ID": tid, **(headers or {})}
    if status == 401:
        h.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)
    return JSONResponse({"error": message, "code": tid}, status_code=status, headers=h)


def _error_for(exc: Exception) -> JSONResponse:
    if isinstance(exc, WhiskError):
        return whisk_error(exc.status, exc.message, exc.headers)
    if isinstance(exc, ModelError):
        return whisk_error(400, str(exc))
    if isinstance(exc, Unauthorized):
        if exc.detail == "Authentication required":
            return whisk_error(401, "The resource requires authentication, which was not supplied with the request.")
        return whisk_error(401, f"The supplied authentication is invalid: {exc.detail}.", exc.headers)
    if isinstance(exc, Forbidden):
        return whisk_error(403, exc.detail)
    if isinstance(exc, NotFound):
        return whisk_error(404, NOT_FOUND)
    if isinstance(exc, HeadraceError):
        return whisk_error(exc.status, exc.detail, exc.headers)
    if isinstance(exc, RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()) if x not in ('query', 'path', 'body'))}: {e.get('msg')}"
            for e in exc.errors()
        )
        return whisk_error(400, f"The request content was malformed: {problems}")
    if isinstance(exc, StarletteHTTPException):
        message = NOT_FOUND if exc.status_code == 404 else str(exc.detail)
        return whisk_error(exc.status_code, message)
    log.exception("functions API: internal error", exc_info=exc)
    return whisk_error(500, "The server encountered an internal error; the request could not be completed.")


class _OpenWhiskRoute(APIRoute):
    """A route whose every failure (authentication and request validation included) is answered in
    OpenWhisk's shape here, before the application's exception handlers could answer in dCache's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return _error_for(exc)

        return guarded


# -- request helpers ---------------------------------------------------------------------------------------


def namespace_of(p: Principal, ns: str) -> str:
    """The namespace a path names: `_` is the caller's own; any other user's is refused (403), and so is a
    macaroon that is limited to some paths or activities."""
    own = caller_of(p)
    if ns in ("_", own):
        return own
    model.check_name(ns, "namespace")
    raise WhiskError(403, f"The supplied authentication is not authorized to access '{ns}'.")


def target_of(p: Principal, ns: str) -> tuple[str, str]:
    """(the caller's namespace, the namespace the path names) for routes that may read another namespace's
    shared packages."""
    own = caller_of(p)
    return own, own if ns in ("_", own) else model.check_name(ns, "namespace")


def caller_of(p: Principal) -> str:
    """The caller's own namespace; 401 without credentials, 403 for a token limited to paths or activities."""
    if p.method == "anonymous":
        raise Unauthorized("Authentication required")
    r = p.restrictions
    limited = r is not None and (
        r.activities is not None or r.root != "/" or any(path != "/" for path in r.paths) or bool(r.grants)
    )
    if limited:
        # functions run with all of their owner's rights: a token limited to paths or activities (a macaroon's
        # caveats, a capability JWT's scopes) may not deploy or run them
        what = "A capability token" if p.method == "jwt" else "A macaroon"
        raise WhiskError(403, f"{what} limited to paths or activities may not use the functions API.")
    return p.subject.username


async def _body(request: Request, *, max_bytes: int | None = None) -> JSONObject:
    raw = await request.body()
    if max_bytes is not None and len(raw) > max_bytes:
        raise WhiskError(413, f"The request content exceeds the maximum allowed size of {max_bytes} bytes.")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the parser's limit
        raise WhiskError(400, f"The request content was malformed: {exc}") from exc
    if not isinstance(data, dict):
        raise WhiskError(400, "The request content was malformed: a JSON object was expected.")
    return data


def _paging(limit: int, skip: int) -> tuple[int, int]:
    if not 0 <= limit <= MAX_LIST:
        raise WhiskError(400, f"The value {limit} is not in the range of 0 to {MAX_LIST} for 'limit'.")
    if skip < 0:
        raise WhiskError(400, f"The value {skip} for 'skip' must not be negative.")
    return limit or MAX_LIST, skip


def _states(raw: str | None) -> tuple[str, ...] | None:
    if not raw:
        return None
    states = tuple(s.strip() for s in raw.split(",") if s.strip())
    unknown = [s for s in states if s not in STATES]
    if unknown:
        raise WhiskError(400, f"Unknown state {unknown[0]!r}: use {', '.join(STATES)}.")
    return states


def _shown(doc: Any) -> Any:
    """An entity's document as OpenWhisk shows one inside a package: namespace "ns/pkg", name "name"."""
    pkg, _, short = str(doc["name"]).rpartition("/")
    if pkg:
        doc["namespace"], doc["name"] = f"{doc['namespace']}/{pkg}", short
    return doc


def _package(row: PackageRow, actions: list[ActionRow] | None = None, params: JSONObject | None = None) -> JSONObject:
    """A package (or binding) as OpenWhisk shows it; `actions` for a GET."""
    doc: JSONObject = {
        "namespace": row["namespace"],
        "name": row["name"],
        "version": f"0.0.{row['version']}",
        "publish": bool(row["publish"]),
        "binding": dict(row["binding"]) if row["binding"] else {},
        "annotations": list(row["annotations"]),
        "updated": row["updated"],
    }
    if actions is None:
        return doc
    doc["parameters"] = (
        [{"key": k, "value": v} for k, v in params.items()] if params is not None else list(row["parameters"])
    )
    doc["actions"] = [
        {"name": a["name"].rpartition("/")[2], "version": f"0.0.{a['version']}", "annotations": a["annotations"]}
        for a in actions
    ]
    return doc


def install(app: FastAPI, service: StorageService, controller: Functions) -> None:
    """Mount the functions API on the frontend."""
    api = APIRouter(tags=["functions"], route_class=_OpenWhiskRoute)
    authenticated = Depends(principal_of(service))
    store = controller.store
    db = service.db
    settings = service.settings
    invokes = Throttle(settings.fn_invokes_per_minute)
    fires = Throttle(settings.fn_fires_per_minute)

    # (store's entity methods are called in lambdas: through db.read(store.get, kind, ...) mypy would take
    # their first overload, whatever the kind)

    @overload
    async def get_or_404(kind: Literal["actions"], namespace: str, name: str) -> ActionRow: ...
    @overload
    async def get_or_404(kind: Literal["triggers"], namespace: str, name: str) -> TriggerRow: ...
    @overload
    async def get_or_404(kind: Literal["rules"], namespace: str, name: str) -> RuleRow: ...
    async def get_or_404(kind: Kind, namespace: str, name: str) -> EntityRow:
        row = await db.read(lambda: store.get(kind, namespace, name))
        if row is None:
            raise WhiskError(404, NOT_FOUND)
        return row

    @overload
    async def put_entity(
        kind: Literal["actions"], namespace: str, name: str, values: ActionFields, overwrite: bool
    ) -> ActionRow: ...
    @overload
    async def put_entity(
        kind: Literal["triggers"], namespace: str, name: str, values: TriggerFields, overwrite: bool
    ) -> TriggerRow: ...
    @overload
    async def put_entity(
        kind: Literal["rules"], namespace: str, name: str, values: RuleFields, overwrite: bool
    ) -> RuleRow: ...
    @overload
    async def put_entity(
        kind: Literal["packages"], namespace: str, name: str, values: PackageFields, overwrite: bool
    ) -> PackageRow: ...
    async def put_entity(kind: Kind, namespace: str, name: str, values: Any, overwrite: bool) -> Any:
        try:
            row = await db.write(store.put, kind, namespace, name, values, overwrite=overwrite)
        except Exists:
            raise WhiskError(409, "resource already exists") from None
        await controller.reload()
        return row

    @overload
    async def delete_entity(kind: Literal["actions"], namespace: str, name: str) -> ActionRow: ...
    @overload
    async def delete_entity(kind: Literal["triggers"], namespace: str, name: str) -> TriggerRow: ...
    @overload
    async def delete_entity(kind: Literal["rules"], namespace: str, name: str) -> RuleRow: ...
    @overload
    async def delete_entity(kind: Literal["packages"], namespace: str, name: str) -> PackageRow: ...
    async def delete_entity(kind: Kind, namespace: str, name: str) -> EntityRow:
        row = await db.write(lambda: store.remove(kind, namespace, name))
        if row is None:
            raise WhiskError(404, NOT_FOUND)
        await controller.reload()
        return row

    async def activation_or_404(namespace: str, activation_id: str) -> ActivationRow:
        row = await db.read(store.activation, activation_id)
        if row is None or (row.get("subject") or row["namespace"]) != namespace:
            raise WhiskError(404, NOT_FOUND)
        return row

    # -- namespaces and limits ----------------------------------------------------------------------------

    @api.get(PREFIX, summary="The caller's namespaces")
    async def namespaces(p: Principal = authenticated) -> Response:
        return JSONResponse([namespace_of(p, "_")])

    @api.get(PREFIX + "/{ns}/limits", summary="The namespace's limits and the actions' limit ranges")
    async def limits(ns: str, p: Principal = authenticated) -> Response:
        namespace_of(p, ns)
        out = records.namespace_limits(
            settings.fn_concurrent_invocations,
            settings.fn_invokes_per_minute,
            settings.fn_fires_per_minute,
            controller.max_workers,
        )
        return JSONResponse(out)

    # -- packages -----------------------------------------------------------------------------------------

    def count_or(kind: Kind, namespace: str, count: bool) -> Any:
        """None, or OpenWhisk's `?count=true` answer: {"<collection>": N}."""
        return db.read(lambda: {kind: store.count(kind, namespace)}) if count else None

    @api.get(PREFIX + "/{ns}/packages", summary="List packages (another namespace's: its shared ones)")
    async def list_packages(
        ns: str, limit: int = DEFAULT_LIST, skip: int = 0, count: bool = False, p: Principal = authenticated
    ) -> Response:
        own, namespace = target_of(p, ns)
        n, s = _paging(limit, skip)
        if namespace == own:
            if count:
                return JSONResponse(await count_or("packages", namespace, True))
            rows = await db.read(lambda: store.entities("packages", namespace, n, s))
        else:
            shared = [r for r in await db.read(store.shared_packages) if r["namespace"] == namespace]
            if count:
                return JSONResponse({"packages": len(shared)})
            rows = shared[s : s + n]
        return JSONResponse([_package(r) for r in rows])

    @api.get(PREFIX + "/{ns}/packages/{name}", summary="Get a package (a binding with its package's actions)")
    async def get_package(ns: str, name: str, p: Principal = authenticated) -> Response:
        own, namespace = target_of(p, ns)
        found = await packages.package(db, store, own, namespace, name)
        shown = found.binding or found.package
        inside = await db.read(store.in_package, found.package["namespace"], found.package["name"])
        return JSONResponse(_package(shown, inside, found.parameters))

    @api.put(PREFIX + "/{ns}/packages/{name}", summary="Create or (with ?overwrite=true) update a package or binding")
    async def put_package(
        ns: str, name: str, request: Request, overwrite: bool = False, p: Principal = authenticated
    ) -> Response:
        namespace = namespace_of(p, ns)
        model.check_name(name, "package name")
        if name in packages.RESERVED:
            raise WhiskError(400, f"Package name '{name}' is reserved.")
        body = await _body(request)
        current = await db.read(lambda: store.get("packages", namespace, name)) if overwrite else None
        binding: Binding | None = current["binding"] if current else None
        raw = body.get("binding")
        if raw:  # {} is "no binding", as OpenWhisk shows a package
            if current is not None and not current["binding"]:
                raise WhiskError(409, "Resource is a package and cannot be converted into a binding.")
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise ModelError('A binding is {"namespace": ..., "name": ...}: the package it binds.')
            bound_ns = raw.get("namespace") or "_"
            bound_ns = namespace if bound_ns == "_" else model.check_name(str(bound_ns), "namespace")
            bound = await db.read(lambda: store.get("packages", bound_ns, raw["name"]))
            if bound is None:
                raise WhiskError(400, "Binding references a package that does not exist.")
            if bound_ns != namespace and not bound["publish"]:
                raise WhiskError(403, FORBIDDEN)
            if bound["binding"]:
                raise WhiskError(400, "Cannot bind to another package binding.")
            binding = {"namespace": bound_ns, "name": bound["name"]}
        annotations = model.key_values(body["annotations"], "annotations") if "annotations" in body else None
        if annotations is None:
            annotations = list(current["annotations"]) if current else []
        annotations = [a for a in annotations if a["key"] != "binding"]
        if binding:
            annotations.append({"key": "binding", "value": dict(binding)})
        publish = body.get("publish", current["publish"] if current else False)
        if not isinstance(publish, bool):
            raise ModelError("publish must be true or false.")
        values: PackageFields = {
            "parameters": model.key_values(body["parameters"], "parameters")
            if "parameters" in body
            else (list(current["parameters"]) if current else []),
            "annotations": annotations,
            "binding": binding,
            "publish": publish,
        }
        row = await put_entity("packages", namespace, name, values, overwrite)
        return JSONResponse(_package(row, [], None) | {"parameters": row["parameters"]})

    @api.delete(PREFIX + "/{ns}/packages/{name}", summary="Delete a package (409 while it holds actions)")
    async def delete_package(ns: str, name: str, p: Principal = authenticated) -> Response:
        namespace = namespace_of(p, ns)
        inside = await db.read(store.in_package, namespace, name)
        if inside:
            n = len(inside)
            raise WhiskError(
                409,
                f"Package not empty (contains {n} {'entity' if n == 1 else 'entities'}). "
                "Set force param or delete package contents.",
            )
        return JSONResponse(_package(await delete_entity("packages", namespace, name)))

    # -- actions ------------------------------------------------------------------------------------------

    async def sequence_components(caller: str, own: names.EntityName, components: list[str]) -> list[str]:
        out = []
        for c in components:
            resolved = await packages.action(db, store, caller, names.parse(c, caller, "sequence component"))
            component = resolved.name
            if component == own:
                raise WhiskError(400, "Sequence may not refer to itself.")
            if resolved.action["exec"].get("kind") == "sequence":
                raise WhiskError(
                    400, f"Sequence component {component.qualified} is a sequence: headrace does not nest them."
                )
            out.append(component.qualified)
        return out

    async def action_values(
        namespace: str, name: names.EntityName, body: JSONObject, current: ActionRow | None
    ) -> ActionFields:
        """The stored form of an action PUT's body; on an update, what the body leaves out stays."""
        if "exec" in body or current is None:
            ex = model.check_exec(body.get("exec"))
            if ex["kind"] == "sequence":
                try:
                    ex["components"] = await sequence_components(namespace, name, ex["components"])
                except WhiskError as exc:
                    if exc.status == 404:
                        raise WhiskError(400, "Sequence component does not exist.") from None
                    raise
        else:
            ex = current["exec"]

        def kv(key: Literal["parameters", "annotations"]) -> list[model.KeyValue]:
            if key in body:
                return model.key_values(body[key], key)
            return list(current[key]) if current else []

        return {
            "exec": ex,
            "parameters": kv("parameters"),
            "annotations": kv("annotations"),
            "limits": model.limits(body.get("limits"), current["limits"] if current else None),
            "scaling": model.scaling(body.get("scaling"), current["scaling"] if current else None),
        }

    @api.get(PREFIX + "/{ns}/actions", summary="List actions (those in packages too)")
    async def list_actions(
        ns: str, limit: int = DEFAULT_LIST, skip: int = 0, count: bool = False, p: Principal = authenticated
    ) -> Response:
        namespace = namespace_of(p, ns)
        n, s = _paging(limit, skip)
        if count:
            return JSONResponse(await count_or("actions", namespace, True))
        rows = await db.read(lambda: store.entities("actions", namespace, n, s))
        return JSONResponse([_shown(records.action_summary(r)) for r in rows])

    @api.get(PREFIX + "/{ns}/actions/{pkg}/", summary="List a package's actions")
    async def list_package_actions(ns: str, pkg: str, p: Principal = authenticated) -> Response:
        own, namespace = target_of(p, ns)
        found = await packages.package(db, store, own, namespace, pkg)
        rows = await db.read(store.in_package, found.package["namespace"], found.package["name"])
        return JSONResponse([_shown(records.action_summary(r)) for r in rows])

    async def read_action(p: Principal, ns: str, pkg: str | None, name: str, code: bool) -> Response:
        own, namespace = target_of(p, ns)
        resolved = await packages.action(db, store, own, names.EntityName(namespace, pkg, name))
        row: ActionRow = {
            **resolved.action,
            "parameters": [{"key": k, "value": v} for k, v in resolved.parameters.items()],
        }
        # read only for others: their code stays theirs
        return JSONResponse(_shown(records.action(row, code=code and resolved.name.namespace == own)))

    async def write_action(
        p: Principal, ns: str, pkg: str | None, name: str, request: Request, overwrite: bool
    ) -> Response:
        namespace = namespace_of(p, ns)
        entity = names.EntityName(namespace, pkg, model.check_name(name, "action name"))
        if pkg is not None:
            holder = await db.read(lambda: store.get("packages", namespace, pkg))
            if holder is None:
                raise WhiskError(404, NOT_FOUND)
            if holder["binding"]:
                raise WhiskError(400, "Operation not permitted on package binding.")
        body = await _body(request)
        current = await db.read(lambda: store.get("actions", namespace, entity.path)) if overwrite else None
        values = await action_values(namespace, entity, body, current)
        return JSONResponse(
            _shown(records.action(await put_entity("actions", namespace, entity.path, values, overwrite)))
        )

    async def remove_action(p: Principal, ns: str, pkg: str | None, name: str) -> Response:
        namespace = namespace_of(p, ns)
        path = names.EntityName(namespace, pkg, name).path
        return JSONResponse(_shown(records.action(await delete_entity("actions", namespace, path))))

    @api.get(PREFIX + "/{ns}/actions/{name}", summary="Get an action (?code=false leaves out its code)")
    async def get_action(ns: str, name: str, code: bool = True, p: Principal = authenticated) -> Response:
        return await read_action(p, ns, None, name, code)

    @api.get(PREFIX + "/{ns}/actions/{pkg}/{name}", summary="Get an action in a package")
    async def get_package_action(
        ns: str, pkg: str, name: str, code: bool = True, p: Principal = authenticated
    ) -> Response:
        return await read_action(p, ns, pkg, name, code)

    @api.put(PREFIX + "/{ns}/actions/{name}", summary="Create or (with ?overwrite=true) update an action")
    async def put_action(
        ns: str, name: str, request: Request, overwrite: bool = False, p: Principal = authenticated
    ) -> Response:
        return await write_action(p, ns, None, name, request, overwrite)

    @api.put(PREFIX + "/{ns}/actions/{pkg}/{name}", summary="Create or update an action in a package")
    async def put_package_action(
        ns: str, pkg: str, name: str, request: Request, overwrite: bool = False, p: Principal = authenticated
    ) -> Response:
        return await write_action(p, ns, pkg, name, request, overwrite)

    @api.delete(PREFIX + "/{ns}/actions/{name}", summary="Delete an action")
    async def delete_action(ns: str, name: str, p: Principal = authenticated) -> Response:
        return await remove_action(p, ns, None, name)

    @api.delete(PREFIX + "/{ns}/actions/{pkg}/{name}", summary="Delete an action in a package")
    async def delete_package_action(ns: str, pkg: str, name: str, p: Principal = authenticated) -> Response:
        return await remove_action(p, ns, pkg, name)

    async def run(
        caller: str,
        resolved: packages.ResolvedAction,
        params: JSONObject,
        *,
        subject: str | None = None,
        timeout_ms: int | None = None,
    ) -> tuple[str, ActivationRow | None]:
        """Invoke a resolved action, throttled per namespace (the caller's), with its effective parameters
        under the request's: the one way the API and web actions run an action. The record, or None when
        `timeout_ms` is None (not waited for) or passed first."""
        refusal = concurrency_refusal(controller.invocations_in_flight(caller), settings.fn_concurrent_invocations)
        refusal = refusal or invokes.admit(caller)
        if refusal:
            raise WhiskError(429, refusal)
        home = resolved.name
        try:
            activation_id, future = await controller.invoke(
                home.namespace, home.path, {**resolved.parameters, **params}, subject=subject or caller
            )
        except LookupError:
            raise WhiskError(404, NOT_FOUND) from None
        if timeout_ms is None:
            return activation_id, None
        done, _ = await asyncio.wait({future}, timeout=timeout_ms / 1000)
        return activation_id, (future.result() if done else None)

    async def invoke_action(
        p: Principal, ns: str, pkg: str | None, name: str, request: Request, blocking: bool, result: bool, timeout: int
    ) -> Response:
        own, namespace = target_of(p, ns)
        if not 0 < timeout <= MAX_BLOCKING_MS:
            raise WhiskError(400, f"The timeout must be between 1 and {MAX_BLOCKING_MS} milliseconds, not {timeout}.")
        params = await _body(request, max_bytes=MAX_PARAMETERS_BYTES)
        resolved = await packages.action(db, store, own, names.EntityName(namespace, pkg, name))
        activation_id, row = await run(own, resolved, params, timeout_ms=timeout if blocking else None)
        headers = {"X-Openwhisk-Activation-Id": activation_id}
        if row is None:
            return JSONResponse({"activationId": activation_id}, status_code=202, headers=headers)
        record = records.activation(row)
        code = record["response"].get("statusCode", 3)
        status = 200 if code == 0 else 502 if code in (1, 2) else 500
        return JSONResponse(record["response"]["result"] if result else record, status_code=status, headers=headers)

    web.install(app, service, controller, run)

    @api.post(
        PREFIX + "/{ns}/actions/{name}",
        summary="Invoke an action (?blocking=true waits for its record)",
        responses={202: {"description": "Queued: its activation id"}, 502: {"description": "The action failed"}},
    )
    async def invoke(
        ns: str,
        name: str,
        request: Request,
        blocking: bool = False,
        result: bool = False,
        timeout: int = DEFAULT_BLOCKING_MS,
        p: Principal = authenticated,
    ) -> Response:
        return await invoke_action(p, ns, None, name, request, blocking, result, timeout)

    @api.post(PREFIX + "/{ns}/actions/{pkg}/{name}", summary="Invoke an action in a package (a shared one too)")
    async def invoke_package_action(
        ns: str,
        pkg: str,
        name: str,
        request: Request,
        blocking: bool = False,
        result: bool = False,
        timeout: int = DEFAULT_BLOCKING_MS,
        p: Principal = authenticated,
    ) -> Response:
        return await invoke_action(p, ns, pkg, name, request, blocking, result, timeout)

    # -- triggers -----------------------------------------------------------------------------------------

    def trigger_values(body: JSONObject, current: TriggerRow | None) -> TriggerFields:
        """The stored form of a trigger PUT's body. A trigger is fed by the storage feed when its body has
        "feed" (the feed's name, or an object of feed parameters) or its annotations name the feed; the
        feed's parameters then come from that object or from the trigger's parameters (as `wsk trigger
        create T --feed F -p path /raw` gives them). An update that names no feed keeps the trigger's."""
        given_parameters = "parameters" in body
        parameters = model.key_values(body.get("parameters"), "parameters")
        annotations = model.key_values(body.get("annotations"), "annotations")
        if current is not None:
            parameters = parameters if given_parameters else list(current["parameters"])
            annotations = annotations if "annotations" in body else list(current["annotations"])
        raw_feed = body.get("feed")
        named = next((a["value"] for a in annotations if a["key"] == "feed"), None) if "annotations" in body else None
        if raw_feed is None and named is None:
            keep = current is not None and bool(current.get("feed"))
            return {
                "parameters": parameters,
                "annotations": annotations,
                "feed": current["feed"] if keep and current else None,
                "feed_params": current["feed_params"] if keep and current else None,
            }
        feed_params: JSONObject | None = None
        if isinstance(raw_feed, dict):
            feed_name = raw_feed.get("name", STORAGE_FEED)
            feed_params = {k: v for k, v in raw_feed.items() if k != "name"}
        elif raw_feed is None or isinstance(raw_feed, str):
            feed_name = raw_feed if raw_feed is not None else named
        else:
            raise ModelError('"feed" must be the feed\'s name or an object of its parameters.')
        if not records.is_storage_feed(feed_name):
            raise ModelError(f"Unknown feed {feed_name!r}: headrace's feed is {STORAGE_FEED}.")
        if feed_params is None:
            feed_params = {p["key"]: p["value"] for p in parameters if p["key"] in FEED_KEYS}
            parameters = [p for p in parameters if p["key"] not in FEED_KEYS]
            kept = current.get("feed_params") if current is not None else None
            if not feed_params and kept:
                feed_params = dict(kept)
        if not any(a["key"] == "feed" for a in annotations):
            annotations.append({"key": "feed", "value": STORAGE_FEED})
        return {
            "parameters": parameters,
            "annotations": annotations,
            "feed": STORAGE_FEED,
            "feed_params": model.feed_filter(feed_params).to_json(),
        }

    async def may_follow(namespace: str, source: str | None) -> None:
        """A trigger may follow an event source (events/sources) only if its namespace's user may read it:
        404 for a source there is not, 403 for one they are not a reader of."""
        if source is None:
            return
        readers = (await db.read(SourceStore(db).readers, {source})).get(source)
        if readers is None:
            raise WhiskError(404, f"There is no event source {source!r}.")
        try:
            subject = (await service.users.fetch(namespace)).subject
        except HeadraceError:
            subject = None
        if not readers.admit(subject):
            raise WhiskError(403, f"The namespace {namespace!r} may not read the event source {source!r}.")

    async def rules_of(namespace: str, trigger: str) -> list[RuleRow]:
        rows = await db.read(lambda: store.entities("rules", namespace, 0, 0))
        return [r for r in rows if r["trigger"] == trigger]

    @api.get(PREFIX + "/{ns}/triggers", summary="List triggers")
    async def list_triggers(
        ns: str, limit: int = DEFAULT_LIST, skip: int = 0, count: bool = False, p: Principal = authenticated
    ) -> Response:
        namespace = namespace_of(p, ns)
        n, s = _paging(limit, skip)
        if count:
            return JSONResponse(await count_or("triggers", namespace, True))
        rows = await db.read(lambda: store.entities("triggers", namespace, n, s))
        return JSONResponse([records.trigger(r) for r in rows])

    @api.get(PREFIX + "/{ns}/triggers/{name}", summary="Get a trigger, with its rules")
    async def get_trigger(ns: str, name: str, p: Principal = authenticated) -> Response:
        namespace = namespace_of(p, ns)
        row = await get_or_404("triggers", namespace, name)
        return JSONResponse(records.trigger(row, await rules_of(namespace, name)))

    @api.put(PREFIX + "/{ns}/triggers/{name}", summary="Create or (with ?overwrite=true) update a trigger")
    async def put_trigger(
        ns: str, name: str, request: Request, overwrite: bool = False, p: Principal = authenticated
    ) -> Response:
        namespace = namespace_of(p, ns)
        model.check_name(name, "trigger name")
        body = await _body(request)
        current = await db.read(lambda: store.get("triggers", namespace, name)) if overwrite else None
        values = trigger_values(body, current)
        await may_follow(namespace, (values.get("feed_params") or {}).get("source"))
        row = await put_entity("triggers", namespace, name, values, overwrite)
        return JSONResponse(records.trigger(row, await rules_of(namespace, name)))

    @api.delete(PREFIX + "/{ns}/triggers/{name}", summary="Delete a trigger")
    async def delete_trigger(ns: str, name: str, p: Principal = authenticated) -> Response:
        namespace = namespace_of(p, ns)
        return JSONResponse(records.trigger(await delete_entity("triggers", namespace, name)))

    @api.post(
        PREFIX + "/{ns}/triggers/{name}",
        summary="Fire a trigger: 202 with its activation, 204 if no rule",
        responses={202: {"description": "Fired: its activation id"}, 204: {"description": "No active rule"}},
    )
    async def fire(ns: str, name: str, request: Request, p: Principal = authenticated) -> Response:
        namespace = namespace_of(p, ns)
        payload = await _body(request, max_bytes=MAX_PARAMETERS_BYTES)
        row = await get_or_404("triggers", namespace, name)
        refusal = fires.admit(namespace)
        if refusal:
            raise WhiskError(429, refusal)
        activation_id = await controller.fire(namespace, row, payload)
        if activation_id is None:
            return Response(status_code=204)
        return JSONResponse({"activationId": activation_id}, status_code=202)

    # -- rules --------------------------------------------------------------------------------------------

    @api.get(PREFIX + "/{ns}/rules", summary="List rules")
    async def list_rules(
        ns: str, limit: int = DEFAULT_LIST, skip: int = 0, count: bool = False, p: Principal = authenticated
    ) -> Response:
        namespace = namespace_of(p, ns)
        n, s = _paging(limit, skip)
        if count:
            return JSONResponse(await count_or("rules", namespace, True))
        rows = await db.read(lambda: store.entities("rules", namespace, n, s))
        return JSONResponse([records.rule(r) for r in rows])

    @api.get(PREFIX + "/{ns}/rules/{name}", summary="Get a rule")
    async def get_rule(ns: str, name: str, p: Principal = authenticated) -> Response:
        namespace = namespace_of(p, ns)
        return JSONResponse(records.rule(await get_or_404("rules", namespace, name)))

    @api.put(PREFIX + "/{ns}/rules/{name}", summary="Create or (with ?overwrite=true) update a rule")
    async def put_rule(
        ns: str, name: str, request: Request, overwrite: bool = False, p: Principal = authenticated
    ) -> Response:
        namespace = namespace_of(p, ns)
        model.check_name(name, "rule name")
        body = await _body(request)
        current = await db.read(lambda: store.get("rules", namespace, name)) if overwrite else None
        given_trigger = names.parse(body.get("trigger", current and current["trigger"]), namespace, "trigger")
        if given_trigger.namespace != namespace:
            raise WhiskError(
                403, f"The supplied authentication is not authorized to access '{given_trigger.namespace}'."
            )
        if given_trigger.package is not None:
            raise WhiskError(400, "A trigger is not inside a package: name it /namespace/trigger.")
        trigger = given_trigger.name
        # the action as stored: "name" or "pkg/name" here, "/ns/pkg/name" in another namespace's shared package
        home = (
            await packages.action(
                db,
                store,
                namespace,
                names.parse(body.get("action", current and current["action"]), namespace, "action"),
            )
        ).name
        action = home.path if home.namespace == namespace else home.qualified
        status = body.get("status", current["status"] if current else "active")
        if status not in ("active", "inactive"):
            raise ModelError(f'A rule\'s status is "active" or "inactive", not {status!r}.')
        await get_or_404("triggers", namespace, trigger)
        values: RuleFields = {"trigger": trigger, "action": action, "status": status}
        return JSONResponse(records.rule(await put_entity("rules", namespace, name, values, overwrite)))

    @api.delete(PREFIX + "/{ns}/rules/{name}", summary="Delete a rule")
    async def delete_rule(ns: str, name: str, p: Principal = authenticated) -> Response:
        namespace = namespace_of(p, ns)
        return JSONResponse(records.rule(await delete_entity("rules", namespace, name)))

    @api.post(PREFIX + "/{ns}/rules/{name}", summary='Enable or disable a rule: {"status": "active"|"inactive"}')
    async def set_rule_status(ns: str, name: str, request: Request, p: Principal = authenticated) -> Response:
        namespace = namespace_of(p, ns)
        body = await _body(request)
        status = body.get("status")
        if status not in ("active", "inactive"):
            raise ModelError(f'A rule\'s status is "active" or "inactive", not {status!r}.')
        row = await db.write(store.set_rule_status, namespace, name, status)
        if row is None:
            raise WhiskError(404, NOT_FOUND)
        await controller.reload()
        return JSONResponse(records.rule(row))

    # -- activations and dead letters ---------------------------------------------------------------------

    @api.get(PREFIX + "/{ns}/activations", summary="List activations, newest first (?docs=true: full records)")
    async def list_activations(
        ns: str,
        name: str | None = None,
        limit: int = DEFAULT_LIST,
        skip: int = 0,
        since: int | None = None,
        upto: int | None = None,
        docs: bool = False,
        state: str | None = None,
        count: bool = False,
        p: Principal = authenticated,
    ) -> Response:
        namespace = namespace_of(p, ns)
        n, s = _paging(limit, skip)
        if count and docs:
            raise WhiskError(400, "The parameter 'docs' is not permitted with 'count'.")
        short = names.parse(name, namespace).path if name else None
        if count:
            every = await db.read(
                store.activations, namespace, name=short, limit=0, skip=s, since=since, upto=upto,
                states=_states(state), by_subject=True,
            )  # fmt: skip
            return JSONResponse({"activations": len(every)})
        rows = await db.read(
            store.activations, namespace, name=short, limit=n, skip=s, since=since, upto=upto,
            states=_states(state), by_subject=True,
        )  # fmt: skip
        render = records.activation if docs else records.activation_summary
        return JSONResponse([render(r) for r in rows])

    @api.get(PREFIX + "/{ns}/activations/{activation_id}", summary="An activation record")
    async def get_activation(ns: str, activation_id: str, p: Principal = authenticated) -> Response:
        namespace = namespace_of(p, ns)
        return JSONResponse(records.activation(await activation_or_404(namespace, activation_id)))

    @api.get(PREFIX + "/{ns}/activations/{activation_id}/logs", summary="An activation's log lines")
    async def activation_logs(ns: str, activation_id: str, p: Principal = authenticated) -> Response:
        namespace = namespace_of(p, ns)
        row = await activation_or_404(namespace, activation_id)
        return JSONResponse({"logs": list(row.get("logs") or [])})

    @api.get(PREFIX + "/{ns}/activations/{activation_id}/result", summary="An activation's result")
    async def activation_result(ns: str, activation_id: str, p: Principal = authenticated) -> Response:
        namespace = namespace_of(p, ns)
        return JSONResponse(records.activation_result(await activation_or_404(namespace, activation_id)))

    @api.get(PREFIX + "/{ns}/deadletters", summary="Dead letters: activations that failed their last attempt")
    async def deadletters(
        ns: str, name: str | None = None, limit: int = DEFAULT_LIST, skip: int = 0, p: Principal = authenticated
    ) -> Response:
        namespace = namespace_of(p, ns)
        n, s = _paging(limit, skip)
        rows = await db.read(store.activations, namespace, name=name or None, limit=n, skip=s, states=("dead",))
        return JSONResponse([records.dead_letter(r) for r in rows])

    @api.post(PREFIX + "/{ns}/deadletters/redrive", summary="Queue dead letters again (all, or those named)")
    async def redrive(ns: str, request: Request, p: Principal = authenticated) -> Response:
        namespace = namespace_of(p, ns)
        body = await _body(request)
        ids = body.get("activationIds")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
            raise ModelError('"activationIds" must be a list of activation ids.')
        return JSONResponse({"redriven": await controller.redrive(namespace, ids)})

    # -- everything else under the prefix: OpenWhisk's 404 (or 405 for a known path) ----------------------

    own_routes = list(api.routes)

    @api.api_route(
        PREFIX + "/{rest:path}",
        methods=["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )
    async def unknown(request: Request, rest: str, p: Principal = authenticated) -> Response:
        allowed = sorted(
            {
                method
                for route in own_routes
                if isinstance(route, APIRoute) and route.matches(request.scope)[0] is Match.PARTIAL
                for method in route.methods or ()
            }
        )
        if allowed:
            raise WhiskError(
                405,
                f"HTTP method not allowed, supported methods: {', '.join(allowed)}.",
                {"Allow": ", ".join(allowed)},
            )
        raise WhiskError(404, NOT_FOUND)

    @api.api_route(PREFIX, methods=["PUT", "POST", "DELETE", "PATCH"], include_in_schema=False)
    async def namespaces_other(p: Principal = authenticated) -> Response:
        raise WhiskError(405, "HTTP method not allowed, supported methods: GET.", {"Allow": "GET"})

    app.include_router(api)
