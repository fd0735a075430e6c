"""`headrace whoami`: who the server takes the caller for, how it was authenticated (API key, macaroon,
JWT) and what the token allows, from the frontend's `/api/v1/user`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from headrace.cli.common import client, json_option, print_json
from headrace.client import HeadraceClientError


def whoami(as_json: Annotated[bool, json_option()] = False) -> None:
    """Show who the server takes you for and what your credentials allow."""
    with client() as c:
        url = f"{c.config.api}/api/v1/user"
        response = c._send("GET", url, path=None)
        try:
            info: dict[str, Any] = response.json()
        except ValueError as exc:
            raise HeadraceClientError(response.status_code, "Malformed answer from the server") from exc
    if as_json:
        print_json(info)
        return
    if info.get("status") != "AUTHENTICATED":
        typer.echo("anonymous (no credentials sent)")
        return
    auth = info.get("authentication") or {}
    gids = ",".join(str(g) for g in info.get("gids", []))
    typer.echo(f"user:      {info.get('username')} (uid {info.get('uid')}, gids {gids})")
    typer.echo(f"home:      {info.get('homeDirectory')}  root: {info.get('rootDirectory')}")
    typer.echo(f"method:    {auth.get('method', '?')}")
    token = auth.get("token")
    if token:
        typer.echo(f"issuer:    {token.get('issuer')}  subject: {token.get('subject')}")
        typer.echo(f"token:     {token.get('kind')} token, expires {token.get('expires')}")
        if token.get("scopes"):
            typer.echo(f"scopes:    {' '.join(token['scopes'])}")
    r = auth.get("restrictions")
    if r:
        for grants in r.get("grants") or []:
            for g in grants:
                typer.echo(f"allows:    {','.join(g['activities'])} under {g['path']}")
        if r.get("paths"):
            typer.echo(f"paths:     {' '.join(r['paths'])}")
        if r.get("activities") is not None:
            typer.echo(f"activities: {','.join(r['activities'])}")
        if r.get("before"):
            typer.echo(f"until:     {r['before']}")
    elif auth.get("method") in ("basic", "jwt"):
        typer.echo("allows:    everything the user may do")


def register(app: typer.Typer) -> None:
    app.command("whoami")(whoami)
