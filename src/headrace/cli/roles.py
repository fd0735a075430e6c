"""`headrace door | frontend | controller | invoker`: headrace's roles as processes of their own, for a cluster
(`headrace up` runs them all in one). They share the database (`--db`, PostgreSQL past one host) and, for
functions, Kafka (`--kafka`). See src/headrace/roles/ for what each holds per process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from headrace.cli.common import usage_error
from headrace.cli.tls_options import TLS_CERT, TLS_CLIENT_CA, TLS_KEY, tls_overrides
from headrace.cli.up import TOKEN_ISSUERS, check_token_issuers
from headrace.config import Settings
from headrace.extras import require_server

DATA = typer.Option(None, "--data", help="Data directory (env HEADRACE_DATA): pools, SQLite, code cache")
DB = typer.Option(None, "--db", help="Shared database URL (env HEADRACE_DB; default: SQLite in --data)")
HOST = typer.Option(None, "--host", help="Address to listen on (env HEADRACE_HOST)")
KAFKA = typer.Option(None, "--kafka", help="Kafka bootstrap HOST:PORT (env HEADRACE_KAFKA)")
DOOR_URL = typer.Option(
    None,
    "--door-url",
    "--door",
    help="The door's URL as clients and functions reach it (env HEADRACE_PUBLIC_DOOR_URL)",
)
API_URL = typer.Option(
    None,
    "--api-url",
    "--api",
    help="The frontend's URL as clients and functions reach it (env HEADRACE_PUBLIC_API_URL)",
)


def _settings(**overrides: Any) -> Settings:
    try:
        settings = Settings.from_env(**overrides)
        settings.check_activations()
        settings.server_tls()
        settings.kafka_security.check()
    except ValueError as exc:
        usage_error(str(exc))
    check_token_issuers(settings)
    require_server(settings.db_url, settings.kafka)
    return settings


def _path(value: Path | None) -> str | None:
    return str(value) if value is not None else None


def door(
    data: Path | None = DATA,
    db: str | None = DB,
    host: str | None = HOST,
    port: int | None = typer.Option(None, "--port", help="WebDAV port (env HEADRACE_DOOR_PORT; default 2880)"),
    door_url: str | None = DOOR_URL,
    api_url: str | None = API_URL,
    anonymous: bool | None = typer.Option(None, "--anonymous/--no-anonymous", help="Allow unauthenticated reads"),
    token_issuers: Path | None = TOKEN_ISSUERS,
    tls_cert: Path | None = TLS_CERT,
    tls_key: Path | None = TLS_KEY,
    tls_client_ca: Path | None = TLS_CLIENT_CA,
) -> None:
    """Run a WebDAV door (stateless but for WebDAV locks; as many as you like, on one database)."""
    from headrace.server import main_role

    main_role(
        _settings(
            data_dir=data, db_url=db, host=host, door_port=port, public_door_url=door_url,
            public_api_url=api_url, anonymous=anonymous, token_issuers=_path(token_issuers),
            **tls_overrides(tls_cert, tls_key, tls_client_ca),
        ),
        "door",
    )  # fmt: skip


def frontend(
    data: Path | None = DATA,
    db: str | None = DB,
    host: str | None = HOST,
    port: int | None = typer.Option(None, "--port", help="REST API port (env HEADRACE_API_PORT; default 3880)"),
    kafka: str | None = KAFKA,
    channels: Path | None = typer.Option(
        None, "--channels", help="This frontend's SSE channel directory (default DATA/channels/frontend-HOST-PORT)"
    ),
    door_url: str | None = DOOR_URL,
    api_url: str | None = API_URL,
    anonymous: bool | None = typer.Option(None, "--anonymous/--no-anonymous", help="Allow unauthenticated reads"),
    token_issuers: Path | None = TOKEN_ISSUERS,
    tls_cert: Path | None = TLS_CERT,
    tls_key: Path | None = TLS_KEY,
    tls_client_ca: Path | None = TLS_CLIENT_CA,
) -> None:
    """Run a frontend: namespace, events and functions APIs (invokes go to the invokers through --kafka)."""
    from headrace.server import main_role

    settings = _settings(
        data_dir=data, db_url=db, host=host, api_port=port, kafka=kafka, public_door_url=door_url,
        public_api_url=api_url, anonymous=anonymous, token_issuers=_path(token_issuers),
            **tls_overrides(tls_cert, tls_key, tls_client_ca),
    )  # fmt: skip
    main_role(settings, "frontend", channels_dir=channels)


def controller(
    data: Path | None = DATA,
    db: str | None = DB,
    host: str | None = HOST,
    kafka: str | None = KAFKA,
    activations: str | None = typer.Option(
        None,
        "--activations",
        help="Where activations run: kafka (invokers; the default with --kafka) or local (this process)",
    ),
    partitions: int | None = typer.Option(
        None, "--partitions", help="Partitions of a new activation topic (env HEADRACE_ACTIVATION_PARTITIONS; 8)"
    ),
    relay: bool = typer.Option(True, "--relay/--no-relay", help="With --kafka, also relay every event to Kafka"),
    port: int = typer.Option(0, "--port", help="Serve /healthz and /metrics on this port (0: none)"),
    door_url: str | None = DOOR_URL,
    api_url: str | None = API_URL,
) -> None:
    """Run the controller: storage events -> activations (one per cluster), the Kafka relay and retention."""
    from headrace.server import main_role

    # with a Kafka address, the invokers run the activations unless told otherwise
    if activations is None and not os.environ.get("HEADRACE_ACTIVATIONS"):
        activations = "kafka" if kafka or os.environ.get("HEADRACE_KAFKA") else None
    settings = _settings(
        data_dir=data, db_url=db, host=host, kafka=kafka, activations=activations,
        activation_partitions=partitions, public_door_url=door_url, public_api_url=api_url,
    )  # fmt: skip
    main_role(settings, "controller", port=port, relay=relay)


def invoker(
    data: Path | None = DATA,
    db: str | None = DB,
    host: str | None = HOST,
    kafka: str | None = KAFKA,
    workers: int = typer.Option(0, "--workers", help="Worker processes at once (0: four per CPU, within memory)"),
    port: int = typer.Option(0, "--port", help="Serve /healthz and /metrics on this port (0: none)"),
    group: str | None = typer.Option(None, "--group", help="Consumer group (env HEADRACE_INVOKER_GROUP)"),
    door_url: str | None = DOOR_URL,
    api_url: str | None = API_URL,
) -> None:
    """Run an invoker: a member of the invokers' consumer group, running activations on warm workers."""
    from headrace.server import main_role

    settings = _settings(
        data_dir=data, db_url=db, host=host, kafka=kafka, activations="kafka", invoker_group=group,
        public_door_url=door_url, public_api_url=api_url,
    )  # fmt: skip
    if workers < 0:
        usage_error("--workers must be 0 or more")
    main_role(settings, "invoker", workers=workers, port=port)


def register(app: typer.Typer) -> None:
    """Add the role commands to the `headrace` command."""
    app.command("door")(door)
    app.command("frontend")(frontend)
    app.command("controller")(controller)
    app.command("invoker")(invoker)
