"""`headrace up`: run the embedded storage service (door + frontend) on a data directory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from headrace.cli.common import CliError
from headrace.cli.tls_options import TLS_CERT, TLS_CLIENT_CA, TLS_KEY, tls_overrides, with_self_signed
from headrace.config import Settings
from headrace.extras import require_server

#: `--token-issuers`, on `headrace up` and on the roles that authenticate requests (door, frontend).
TOKEN_ISSUERS = typer.Option(
    None,
    "--token-issuers",
    help="YAML file of trusted JWT issuers (env HEADRACE_TOKEN_ISSUERS; see docs/authentication.md)",
)


def check_token_issuers(settings: Settings) -> None:
    """Refuse, as one line, an issuers file that cannot be used: before anything starts."""
    from headrace.auth.issuers import IssuersError, load_issuers

    try:
        load_issuers(settings.token_issuers)
    except IssuersError as exc:
        raise CliError(str(exc)) from exc


def up(
    data: Path | None = typer.Option(None, "--data", help="Data directory (env HEADRACE_DATA)"),
    door_port: int | None = typer.Option(None, "--door-port", help="WebDAV door port (env HEADRACE_DOOR_PORT)"),
    api_port: int | None = typer.Option(None, "--api-port", help="Frontend port (env HEADRACE_API_PORT)"),
    host: str | None = typer.Option(None, "--host", help="Address to listen on (env HEADRACE_HOST)"),
    db: str | None = typer.Option(
        None,
        "--db",
        help="Namespace database URL, e.g. postgresql://user@host/db (env HEADRACE_DB; default: SQLite in --data)",
    ),
    pool_max_bytes: int | None = typer.Option(None, "--pool-max-bytes", help="Cap on each pool's size in bytes"),
    anonymous: bool | None = typer.Option(None, "--anonymous/--no-anonymous", help="Allow unauthenticated reads"),
    kafka: str | None = typer.Option(
        None, "--kafka", help="Relay every event to Kafka at HOST:PORT (env HEADRACE_KAFKA; default: no Kafka)"
    ),
    kafka_topic: str | None = typer.Option(
        None, "--kafka-topic", help="Kafka topic for the events (env HEADRACE_KAFKA_TOPIC; default headrace-events)"
    ),
    redirect: bool | None = typer.Option(
        None, "--redirect/--no-redirect", help="Redirect transfers to pool processes (env HEADRACE_DOOR_REDIRECT)"
    ),
    hsm: str | None = typer.Option(
        None,
        "--hsm",
        help="The HSM executable files with QoS tape go to (dCache's HSM script interface; env HEADRACE_HSM_COMMAND)",
    ),
    tape_simulator: Path | None = typer.Option(
        None, "--tape-simulator", help="Use the shipped tape simulator, cartridges in DIR (env HEADRACE_TAPE_SIMULATOR)"
    ),
    token_issuers: Path | None = TOKEN_ISSUERS,
    tls_cert: Path | None = TLS_CERT,
    tls_key: Path | None = TLS_KEY,
    tls_client_ca: Path | None = TLS_CLIENT_CA,
    tls_self_signed: bool = typer.Option(
        False,
        "--tls-self-signed",
        help="Serve HTTPS with a CA and certificate made under DATA/tls (and reused); prints the CA to trust",
    ),
) -> None:
    """Run headrace: the WebDAV door and the frontend, on SQLite (or --db PostgreSQL) and a local pool."""
    try:
        settings = Settings.from_env(
            data_dir=data,
            door_port=door_port,
            api_port=api_port,
            host=host,
            db_url=db,
            pool_max_bytes=pool_max_bytes,
            anonymous=anonymous,
            kafka=kafka,
            kafka_topic=kafka_topic,
            door_redirect=redirect,
            token_issuers=str(token_issuers) if token_issuers is not None else None,
            **tls_overrides(tls_cert, tls_key, tls_client_ca),
        )
        if tls_self_signed:
            settings = with_self_signed(settings)
        settings.server_tls()  # a missing file or a key of another certificate is refused here
        settings.kafka_security.check()
        check_token_issuers(settings)
        if hsm is not None or tape_simulator is not None:
            tape = replace(
                settings.tape,
                hsm_command=hsm if hsm is not None else settings.tape.hsm_command,
                simulator=str(tape_simulator.resolve()) if tape_simulator is not None else settings.tape.simulator,
            )
            settings = replace(settings, tape=tape)
        if settings.tape.hsm_command and settings.tape.simulator:
            raise ValueError("give --hsm or --tape-simulator, not both")
        settings.tape.hsm()  # a command that cannot be parsed is refused here
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if settings.kafka and not settings.kafka_topic.strip():
        raise typer.BadParameter("--kafka-topic must name a topic")
    require_server(settings.db_url, settings.kafka)
    from headrace.server import main

    main(settings)
