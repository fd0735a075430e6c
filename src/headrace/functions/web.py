"""OpenWhisk's web actions (issue 17): `/api/v1/web/{namespace}/{package}/{action}[.ext][/path]`, package
`default` for an action outside packages. An action is served only with the annotation `web-export: true`
(else 404); `require-whisk-auth` is true (any valid credential) or a secret the request's
X-Require-Whisk-Auth header must carry; `raw-http` hands the body and query over as they came; `final`
parameters (and the reserved `__ow_*` names) may not be set by the request.

The action runs through the API's one invoke path (`run`: resolution, per-namespace throttle, the engine
and its sandbox); the result is transcoded by the extension: .json (an object or array), .html/.svg/.text
(a string, or the result's `body`), .http (statusCode, headers, body: base64 for binary content types).
A path after a .json/.html/.text/.svg extension projects into the result (`.json/a/b` answers result.a.b)
and is `__ow_path` too. Every error is OpenWhisk's `{"error", "code"}`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from headrace.auth.access import Principal
from headrace.errors import HeadraceError
from headrace.functions import names, packages
from headrace.functions.entities import ActivationRow
from headrace.functions.errors import NOT_FOUND, WhiskError
from headrace.functions.model import JSONObject, ModelError
from headrace.functions.records import activation as activation_record
from headrace.storage.service import StorageService

WEB = "/api/v1/web"
EXTENSIONS = (".http", ".json", ".html", ".svg", ".text")
RESERVED = ("__ow_method", "__ow_headers", "__ow_path", "__ow_user", "__ow_query", "__ow_body")
WAIT_MS = 60_000
Run = Callable[..., Awaitable[tuple[str, ActivationRow | None]]]


def _annotation(row: Any, key: str) -> Any:
    return next((a["value"] for a in row.get("annotations", []) if a.get("key") == key), None)


def _is_json(content_type: str) -> bool:
    mt = content_type.split(";")[0].strip().lower()
    return mt == "application/json" or mt.endswith("+json")


def _is_text(content_type: str) -> bool:
    mt = content_type.split(";")[0].strip().lower()
    return (
        mt.startswith("text/")
        or mt in ("application/xml", "application/javascript", "image/svg+xml")
        or (mt.endswith("+xml"))
    )


def _invalid(media: str) -> WhiskError:
    return WhiskError(400, f"Response is not valid '{media}'.")


def _http(result: Any) -> Response:
    if not isinstance(result, dict):
        raise _invalid("message/http")
    headers: dict[str, str] = {}
    raw_headers = result.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise _invalid("message/http")
    for k, v in raw_headers.items():
        if isinstance(v, list):
            v = ", ".join(str(x) for x in v)
        elif isinstance(v, bool):
            v = str(v).lower()
        elif not isinstance(v, str | int | float):
            raise _invalid("message/http")
        headers[str(k)] = str(v)
    try:
        code = int(result.get("statusCode", 0)) or None
    except (TypeError, ValueError):
        raise _invalid("message/http") from None
    ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    body = result.get("body")
    if body is None or body == "":
        return Response(status_code=code or 204, headers=headers)
    if not isinstance(body, str):
        if ctype is not None and not _is_json(ctype):
            raise WhiskError(400, "Response type in header did not match generated content type.")
        return Response(
            json.dumps(body), status_code=code or 200, headers=headers, media_type=ctype or "application/json"
        )
    ctype = ctype or "text/html; charset=UTF-8"
    if _is_text(ctype) or (_is_json(ctype) and not _looks_base64(body)):
        return Response(body.encode(), status_code=code or 200, headers=headers, media_type=ctype)
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise WhiskError(400, "Response type in header did not match generated content type.") from None
    return Response(data, status_code=code or 200, headers=headers, media_type=ctype)


def _looks_base64(s: str) -> bool:
    try:
        base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return False
    return not s.lstrip().startswith(("{", "["))


def _transcode(ext: str, result: Any) -> Response:
    if ext == ".http":
        return _http(result)
    if ext == ".json":
        if isinstance(result, dict | list):
            return JSONResponse(result)
        raise _invalid("application/json")
    if ext in (".html", ".svg"):
        value = result.get("body", result.get(ext[1:])) if isinstance(result, dict) else result
        if not isinstance(value, str):
            raise _invalid("text/html" if ext == ".html" else "image/svg+xml")
        return Response(value, media_type="text/html; charset=UTF-8" if ext == ".html" else "image/svg+xml")
    value = result.get("body", result.get("text")) if isinstance(result, dict) else result
    if isinstance(result, dict) and "body" not in result and "text" not in result:
        raise WhiskError(404, "Response does not include requested property.")
    if isinstance(value, dict | list):
        text = json.dumps(value, indent=2)
    elif isinstance(value, bool):
        text = str(value).lower()
    elif value is None:
        text = "null"
    else:
        text = str(value)
    return Response(text, media_type="text/plain; charset=UTF-8")


def _project(result: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(result, dict) or part not in result:
            raise WhiskError(404, "Response does not include requested property.")
        result = result[part]
    return result


async def _arguments(request: Request, raw: bool, path: str, final: set[str]) -> JSONObject:
    body = await request.body()
    ctype = request.headers.get("content-type", "")
    args: JSONObject = {
        "__ow_method": request.method.lower(),
        "__ow_headers": {k.lower(): v for k, v in request.headers.items()},
        "__ow_path": path,
    }
    query = request.url.query
    if raw:
        args["__ow_query"] = query
        if not body:
            args["__ow_body"] = ""
        elif _is_json(ctype) or (not _is_text(ctype) and "form-urlencoded" not in ctype):
            args["__ow_body"] = base64.b64encode(body).decode()
        else:
            args["__ow_body"] = body.decode("utf-8", "replace")
        return args
    given: JSONObject = dict(parse_qsl(query, keep_blank_values=True))
    if body:
        if _is_json(ctype):
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                raise WhiskError(400, f"The request content was malformed: {exc}") from exc
            if isinstance(parsed, dict):
                given.update(parsed)
            else:
                given["__ow_body"] = parsed
        elif "application/x-www-form-urlencoded" in ctype:
            given.update(dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)))
        elif _is_text(ctype):
            given["__ow_body"] = body.decode("utf-8", "replace")
        else:
            given["__ow_body"] = base64.b64encode(body).decode()
    if any((k in RESERVED and k != "__ow_body") or k in final for k in given):
        raise WhiskError(400, "Request defines parameters that are not allowed (e.g., reserved properties).")
    return {**args, **given}


def install(app: FastAPI, service: StorageService, controller: Any, run: Run) -> None:
    """Mount `/api/v1/web/...` on the frontend; `run` is the functions API's invoke path."""
    from headrace.functions.api import _error_for  # the API's error shape (api.py imports this module)

    db = service.db
    store = controller.store
    users = service.users

    async def principal(request: Request) -> Principal | None:
        if "authorization" not in request.headers:
            return None
        from headrace.http_common import principal_of

        try:
            found: Principal = await principal_of(service)(request)
            return found
        except HeadraceError:
            return None

    async def serve(request: Request, rest: str) -> Response:
        parts = rest.split("/")
        if len(parts) < 3 or not all(parts[:3]):
            raise WhiskError(404, NOT_FOUND)
        ns, pkg, seg = parts[0], parts[1], parts[2]
        tail = parts[3:]
        ext = next((e for e in EXTENSIONS if seg.endswith(e)), ".http")
        name = seg[: -len(ext)] if seg.endswith(ext) else seg
        try:
            names.parse(f"/{ns}/{name}", ns)
            await users.fetch(ns)
        except (ModelError, HeadraceError):
            raise WhiskError(404, NOT_FOUND) from None
        entity = names.EntityName(ns, None if pkg == "default" else pkg, name)
        try:
            resolved = await packages.action(db, store, ns, entity)
        except WhiskError as exc:
            raise WhiskError(404, NOT_FOUND) from exc
        action = resolved.action
        if _annotation(action, "web-export") is not True:
            raise WhiskError(404, NOT_FOUND)
        if request.method == "OPTIONS" and _annotation(action, "web-custom-options") is not True:
            return Response(status_code=200, headers=_cors(request))
        need = _annotation(action, "require-whisk-auth")
        caller = None
        if need is not None and need is not False:
            if need is True:
                # a browser sends its cached credentials with a page's cross-site request: not as consent
                caller = None if "origin" in request.headers else await principal(request)
                allowed = caller is not None and caller.method != "anonymous"
            else:
                allowed = request.headers.get("x-require-whisk-auth") == str(need)
            if not allowed:
                raise WhiskError(401, "The resource requires authentication, which was not supplied with the request.")
        final = set(resolved.parameters) if _annotation(action, "final") is True else set()
        path = "/" + "/".join(tail) if tail else ""
        args = await _arguments(request, _annotation(action, "raw-http") is True, path, final)
        if caller is not None:
            args["__ow_user"] = caller.subject.username
        activation_id, row = await run(ns, resolved, args, timeout_ms=WAIT_MS)
        headers = {"X-Openwhisk-Activation-Id": activation_id, **_cors(request)}
        if row is None:
            raise WhiskError(202, "Response not yet ready.", headers)
        record = activation_record(row)
        response = record["response"]
        code = response.get("statusCode", 3)
        if code not in (0, 1):
            raise WhiskError(400, "There was an error processing your request.", headers)
        result: Any = response.get("result") or {}
        if code == 1:
            if not isinstance(result, dict) or "error" not in result:
                raise WhiskError(404, "Response does not include requested property.", headers)
            result = result["error"]
        if ext != ".http" and tail:
            result = _project(result, tail)
        out = _transcode(ext, result)
        out.headers.update(headers)
        return out

    async def endpoint(request: Request) -> Response:
        try:
            return await serve(request, request.path_params["rest"])
        except Exception as exc:
            return _error_for(exc)

    app.add_api_route(
        WEB + "/{rest:path}",
        endpoint,
        methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )


def _cors(request: Request) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "OPTIONS, GET, DELETE, POST, PUT, HEAD, PATCH",
        "Access-Control-Allow-Headers": request.headers.get(
            "access-control-request-headers",
            "Authorization, Origin, X-Requested-With, Content-Type, Accept, User-Agent",
        ),
    }
