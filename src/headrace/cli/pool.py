"""`headrace pool`: serve one pool directory over HTTP, registered in the shared database for the doors."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from headrace.cli.common import CliError, usage_error
from headrace.cli.tls_options import TLS_CERT, TLS_CLIENT_CA, TLS_KEY
from headrace.extras import require_server


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        usage_error(f"{name} must be a number, not {raw!r}")


def pool(
    data: Path = typer.Option(..., "--data", help="The pool directory (its blobs in data/, uploads in tmp/)"),
    port: int = typer.Option(2881, "--port", help="Port to listen on"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for other hosts)"),
    name: str | None = typer.Option(
        None, "--name", help="Pool name, kept in DATA/pool.json (default: short host name and directory name)"
    ),
    db: str | None = typer.Option(
        None, "--db", help="The shared namespace database URL (env HEADRACE_DB), e.g. postgresql://u@dbhost/headrace"
    ),
    url: str | None = typer.Option(
        None, "--url", help="URL doors and redirected clients use (env HEADRACE_POOL_URL; default http://HOST:PORT)"
    ),
    max_bytes: int | None = typer.Option(
        None, "--max-bytes", help="Refuse uploads past this many bytes (env HEADRACE_POOL_MAX_BYTES; 0 = the disk's)"
    ),
    tls_cert: Path | None = TLS_CERT,
    tls_key: Path | None = TLS_KEY,
    tls_client_ca: Path | None = TLS_CLIENT_CA,
) -> None:
    """Run a pool: store and serve file data for the doors, over HTTP, authenticated by pool tokens."""
    from sqlalchemy.exc import SQLAlchemyError

    from headrace.errors import HeadraceError
    from headrace.storage.pool_server import PoolOptions, main
    from headrace.tls_server import server_tls

    db_url = db or os.environ.get("HEADRACE_DB") or ""
    if not db_url:
        usage_error("--db (or HEADRACE_DB) must name the namespace database the doors use")
    advertised = url or os.environ.get("HEADRACE_POOL_URL") or ""
    if advertised and not advertised.startswith(("http://", "https://")):
        usage_error(f"--url must be an http:// or https:// URL, not {advertised!r}")
    if not advertised and host in ("0.0.0.0", "::"):
        usage_error(f"--host {host} listens everywhere: give --url, the address doors reach this pool at")
    try:
        cap = max_bytes if max_bytes is not None else int(os.environ.get("HEADRACE_POOL_MAX_BYTES") or 0)
    except ValueError:
        usage_error("HEADRACE_POOL_MAX_BYTES must be an integer")

    def tls_file(given: Path | None, env: str) -> str:
        return str(given.resolve()) if given is not None else os.environ.get(env) or ""

    try:
        tls = server_tls(
            tls_file(tls_cert, "HEADRACE_TLS_CERT"),
            tls_file(tls_key, "HEADRACE_TLS_KEY"),
            tls_file(tls_client_ca, "HEADRACE_TLS_CLIENT_CA"),
        )
    except ValueError as exc:
        usage_error(str(exc))
    options = PoolOptions(
        data=data,
        db_url=db_url,
        host=host,
        port=port,
        name=name or "",
        url=advertised,
        max_bytes=cap,
        fsync=(os.environ.get("HEADRACE_FSYNC") or "1").strip().lower() in {"1", "true", "yes", "on"},
        secret=os.environ.get("HEADRACE_POOL_SECRET") or "",
        heartbeat_seconds=_env_float("HEADRACE_POOL_HEARTBEAT", 5.0),
        orphan_grace=_env_float("HEADRACE_POOL_ORPHAN_GRACE", 600.0),
        orphan_sweep=_env_float("HEADRACE_POOL_ORPHAN_SWEEP", 3600.0),
        upload_idle_timeout=_env_float("HEADRACE_UPLOAD_IDLE_TIMEOUT", 60.0),
        header_timeout=_env_float("HEADRACE_HEADER_TIMEOUT", 30.0),
        log_level=os.environ.get("HEADRACE_LOG_LEVEL") or "info",
        tls=tls,
    )
    if options.heartbeat_seconds <= 0:
        usage_error("HEADRACE_POOL_HEARTBEAT must be positive")
    require_server(db_url, "")
    try:
        main(options)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    except HeadraceError as exc:
        raise CliError(exc.detail) from exc
    except SQLAlchemyError as exc:
        raise CliError(f"Database {db_url}: {getattr(exc, 'orig', None) or exc}") from exc
