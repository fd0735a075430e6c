"""The frontend's OpenAPI document says how its requests fail, as they do.

FastAPI documents a 422 `HTTPValidationError` on every operation with parameters; the frontend never sends
one (a request that does not validate gets 400) and does send 400/401/403/404/409/413/429... in two shapes:
dCache's problem {"status", "title", "detail"} on the namespace, user and events APIs, and OpenWhisk's
{"error", "code"} on the functions API (routes tagged "functions"). Each operation gets a `4XX` response with
the body schema of its shape in place of the 422; tests/test_fuzz_frontend.py holds answers to it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

PROBLEM = {
    "type": "object",
    "description": "dCache's error body",
    "required": ["status", "title", "detail"],
    "properties": {
        "status": {"type": "string", "description": "the HTTP status code, as a string"},
        "title": {"type": "string"},
        "detail": {"type": "string"},
    },
}
WHISK_ERROR = {
    "type": "object",
    "description": "OpenWhisk's error body",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string"},
        "code": {"type": "string", "description": "the transaction id, also sent as X-Request-ID"},
    },
}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def declare_errors(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (FastAPI's), changed in place: each operation's 4XX answer in its shape, no 422."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM
    schemas["WhiskError"] = WHISK_ERROR
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for item in document.get("paths", {}).values():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            shape = "WhiskError" if "functions" in operation.get("tags", ()) else "Problem"
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["4XX"] = {
                "description": "The request was refused; the body says why",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}},
            }
    return document


def install(app: FastAPI) -> None:
    """Serve `app`'s document with its errors declared (built once, on the first request for it)."""
    generate = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_errors(generate())
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
