"""The web console (`/console/`): a page of hand-written HTML, CSS and ES modules in `static/`, served by the
frontend, that does everything through the public REST APIs with the signed-in user's credentials.

The routes it adds are read-only: `GET /api/v1/scaling`, the caller's own actions' workers, queued and
running activations and finished activations per second (scaling.py), for the console's charts; and the
public `GET /api/v1/console/login`, the OIDC sign-ins configured for it (login.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from headrace.console import login, scaling
from headrace.storage.service import StorageService

if TYPE_CHECKING:
    from headrace.functions.api import Functions

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI, service: StorageService, controller: Functions | None) -> None:
    """Serve the console at /console/ (and its scaling route when functions run)."""
    if controller is not None:
        app.include_router(scaling.router(service, controller))
    app.include_router(login.router(service))

    @app.get("/console", include_in_schema=False)
    async def console_root() -> Response:
        return RedirectResponse("/console/", status_code=308)

    app.mount("/console", StaticFiles(directory=STATIC, html=True), name="console")
