"""`headrace token create`: ask the door for a macaroon limited to a path, activities, a time and addresses;
`headrace token rotate-key`: replace the macaroon root key (on the server host), refusing every token so far."""

from __future__ import annotations

import ipaddress
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import isodate
import typer

from headrace.cli.common import client, json_option, print_json, usage_error

ACTIVITIES = ("DOWNLOAD", "UPLOAD", "DELETE", "MANAGE", "LIST", "READ_METADATA", "UPDATE_METADATA", "STAGE")

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Macaroons: bearer tokens with limits.")


def _activities(value: str) -> list[str]:
    acts = [a.strip().upper() for a in value.split(",") if a.strip()]
    unknown = [a for a in acts if a not in ACTIVITIES]
    if not acts or unknown:
        usage_error(
            f"--activity: unknown activity {', '.join(unknown) or '(none)'}; choose from {','.join(ACTIVITIES)}"
        )
    return acts


def _validity(value: str) -> str:
    try:
        duration = isodate.parse_duration(value)
    except (isodate.ISO8601Error, ValueError):
        usage_error(f"--validity: {value!r} is not an ISO-8601 duration such as PT1H, PT30M or P1D")
    if not isinstance(duration, timedelta):
        duration = duration.totimedelta(start=isodate.parse_datetime("2000-01-01T00:00:00Z"))
    if duration.total_seconds() <= 0:
        usage_error(f"--validity: {value!r} must be a positive duration")
    return value


def _networks(values: list[str]) -> list[str]:
    for net in values:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            usage_error(f"--ip: {exc}")
    return values


@app.command("create")
def create(
    path: Annotated[str, typer.Option("--path", help="Confine the token to this path and below")] = "/",
    activity: Annotated[
        str, typer.Option("--activity", help=f"Comma-separated activities: {','.join(ACTIVITIES)}")
    ] = "DOWNLOAD,LIST",
    validity: Annotated[str, typer.Option("--validity", help="How long it is valid, ISO-8601 (PT1H, P1D)")] = "PT1H",
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="Only from this address range (CIDR); repeatable")
    ] = None,
    as_json: Annotated[bool, json_option()] = False,
) -> None:
    """Create a macaroon for the current user, limited as asked, and print it."""
    acts = _activities(activity)
    _validity(validity)
    caveats = [f"ip:{','.join(_networks(ip))}"] if ip else []
    with client() as c:
        answer = c.create_token(path, acts, validity, caveats)
    if as_json:
        print_json(answer)
    else:
        sys.stdout.write(str(answer["macaroon"]) + "\n")


@app.command("rotate-key")
def rotate_key(
    data: Annotated[Path | None, typer.Option("--data", help="Data directory (env HEADRACE_DATA)")] = None,
) -> None:
    """Replace the macaroon root key in the server's database (an operator's command, run on the server host
    like `headrace user add`): every macaroon minted so far is refused with 401 from then on, by running
    servers within a second. API keys are not affected."""
    from headrace.auth.macaroons import KEY_REFRESH_SECONDS, rotate_root_key
    from headrace.cli.users import open_database

    db = open_database(data)
    try:
        rotate_root_key(db)
    finally:
        db.close()
    typer.echo(
        f"headrace: macaroon root key replaced; tokens minted before are refused (running servers: within "
        f"{KEY_REFRESH_SECONDS:g} s)"
    )
