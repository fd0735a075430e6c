"""`headrace fn package|trigger|rule ...`: OpenWhisk's packages, triggers and rules in the spirit of `wsk`
(`wsk package create|update|get|delete|list|bind`, `wsk trigger create|get|delete|list|fire`,
`wsk rule create|get|delete|list|enable|disable`). Every command takes --json; errors are one line."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from headrace.cli.common import print_json
from headrace.cli.functions import JsonFlag, fn_app, functions, parse_params, table
from headrace.client.functions import Functions

package_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Packages: actions grouped, shared, bound.")
trigger_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Triggers: named event channels.")
rule_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Rules: a trigger runs an action.")
fn_app.add_typer(package_app, name="package")
fn_app.add_typer(trigger_app, name="trigger")
fn_app.add_typer(rule_app, name="rule")

Params = Annotated[list[str] | None, typer.Option("--param", "-p", help="A parameter KEY=VALUE (repeatable)")]
Notes = Annotated[list[str] | None, typer.Option("--annotation", "-a", help="An annotation KEY=VALUE (repeatable)")]


def _kv(values: list[str] | None) -> list[dict[str, Any]]:
    return [{"key": k, "value": v} for k, v in parse_params(values).items()]


def _split(name: str) -> tuple[str, str]:
    """ "/ns/name" -> (ns, name); "name" -> ("_", name)."""
    parts = name.strip("/").split("/")
    return (parts[0], parts[1]) if name.startswith("/") and len(parts) == 2 else ("_", name)


def _entities(kind: str, fn: Functions, namespace: str = "_") -> list[dict[str, Any]]:
    other = Functions(fn.client, namespace)
    return list(other._call("GET", kind, params={"limit": 200}))


def _show(doc: Any, as_json: bool, line: str) -> None:
    if as_json:
        print_json(doc)
    else:
        typer.echo(line)


# -- packages ------------------------------------------------------------------------------------------------


def _put_package(name: str, body: dict[str, Any], overwrite: bool, as_json: bool, verb: str) -> None:
    with functions() as fn:
        doc = fn._call("PUT", "packages", name, params={"overwrite": str(overwrite).lower()}, json=body)
    _show(doc, as_json, f"{verb} package {name}")


@package_app.command("create")
def package_create(
    name: Annotated[str, typer.Argument(help="The package's name")],
    param: Params = None,
    annotation: Notes = None,
    shared: Annotated[bool, typer.Option("--shared", help="Let every namespace read it and run its actions")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a package."""
    body = {"parameters": _kv(param), "annotations": _kv(annotation), "publish": shared}
    _put_package(name, body, False, as_json, "created")


@package_app.command("update")
def package_update(
    name: Annotated[str, typer.Argument(help="The package's name")],
    param: Params = None,
    annotation: Notes = None,
    shared: Annotated[
        bool | None, typer.Option("--shared/--private", help="Shared with every namespace or not")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Update a package: what is given replaces what it had."""
    body: dict[str, Any] = {}
    if param:
        body["parameters"] = _kv(param)
    if annotation:
        body["annotations"] = _kv(annotation)
    if shared is not None:
        body["publish"] = shared
    _put_package(name, body, True, as_json, "updated")


@package_app.command("bind")
def package_bind(
    package: Annotated[str, typer.Argument(help="The package to bind: name or /namespace/name")],
    name: Annotated[str, typer.Argument(help="The binding's name")],
    param: Params = None,
    as_json: JsonFlag = False,
) -> None:
    """Bind a package (your own or a shared one) under a name of yours, with parameters of its own."""
    ns, pkg = _split(package)
    body = {"binding": {"namespace": ns, "name": pkg}, "parameters": _kv(param)}
    _put_package(name, body, False, as_json, "created binding")


@package_app.command("get")
def package_get(
    name: Annotated[str, typer.Argument(help="name or /namespace/name")],
    summary: Annotated[bool, typer.Option("--summary", help="Its actions, one a line")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show a package (a shared one of another namespace too)."""
    ns, pkg = _split(name)
    with functions() as fn:
        doc = Functions(fn.client, ns)._call("GET", "packages", pkg)
    if as_json or not summary:
        print_json(doc)
        return
    typer.echo(f"package /{doc['namespace']}/{doc['name']}")
    for a in doc.get("actions", []):
        typer.echo(f"   action /{doc['namespace']}/{doc['name']}/{a['name']}")


@package_app.command("delete")
def package_delete(name: Annotated[str, typer.Argument(help="The package's name")], as_json: JsonFlag = False) -> None:
    """Delete a package (it must hold no actions)."""
    with functions() as fn:
        doc = fn._call("DELETE", "packages", name)
    _show(doc, as_json, f"deleted package {name}")


@package_app.command("list")
def package_list(
    namespace: Annotated[str, typer.Argument(help="Another namespace: its shared packages")] = "_",
    as_json: JsonFlag = False,
) -> None:
    """List packages."""
    with functions() as fn:
        rows = _entities("packages", fn, namespace.strip("/") or "_")
    if as_json:
        print_json(rows)
        return
    shown = [[f"/{p['namespace']}/{p['name']}", "shared" if p["publish"] else "private", _binding(p)] for p in rows]
    table(["PACKAGE", "VISIBILITY", "BINDING"], shown)


def _binding(p: dict[str, Any]) -> str:
    b = p.get("binding") or {}
    return f"/{b['namespace']}/{b['name']}" if b else ""


# -- triggers ------------------------------------------------------------------------------------------------


@trigger_app.command("create")
def trigger_create(
    name: Annotated[str, typer.Argument(help="The trigger's name")],
    param: Params = None,
    annotation: Notes = None,
    feed: Annotated[str | None, typer.Option("--feed", "-f", help="The feed that fires it")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a trigger (with --feed: fed by that feed, its parameters the feed's)."""
    body: dict[str, Any] = {"parameters": _kv(param), "annotations": _kv(annotation)}
    if feed:
        body["annotations"].append({"key": "feed", "value": feed})
    with functions() as fn:
        doc = fn._call("PUT", "triggers", name, params={"overwrite": "false"}, json=body)
    _show(doc, as_json, f"created trigger {name}")


@trigger_app.command("get")
def trigger_get(name: Annotated[str, typer.Argument(help="The trigger's name")], as_json: JsonFlag = False) -> None:
    """Show a trigger and its rules."""
    with functions() as fn:
        print_json(fn._call("GET", "triggers", name))


@trigger_app.command("delete")
def trigger_delete(name: Annotated[str, typer.Argument(help="The trigger's name")], as_json: JsonFlag = False) -> None:
    """Delete a trigger."""
    with functions() as fn:
        doc = fn._call("DELETE", "triggers", name)
    _show(doc, as_json, f"deleted trigger {name}")


@trigger_app.command("list")
def trigger_list(as_json: JsonFlag = False) -> None:
    """List triggers."""
    with functions() as fn:
        rows = _entities("triggers", fn)
    if as_json:
        print_json(rows)
    else:
        table(["TRIGGER"], [[f"/{t['namespace']}/{t['name']}"] for t in rows])


@trigger_app.command("fire")
def trigger_fire(
    name: Annotated[str, typer.Argument(help="The trigger's name")], param: Params = None, as_json: JsonFlag = False
) -> None:
    """Fire a trigger: each active rule runs its action."""
    with functions() as fn:
        doc = fn._call("POST", "triggers", name, json=parse_params(param))
    if doc is None:
        _show({}, as_json, f"trigger {name} fired; no active rule")
    else:
        _show(doc, as_json, f"trigger {name} fired: activation {doc['activationId']}")


# -- rules ---------------------------------------------------------------------------------------------------


@rule_app.command("create")
def rule_create(
    name: Annotated[str, typer.Argument(help="The rule's name")],
    trigger: Annotated[str, typer.Argument(help="The trigger")],
    action: Annotated[str, typer.Argument(help="The action: name, pkg/name or /namespace/pkg/name")],
    as_json: JsonFlag = False,
) -> None:
    """Create a rule: when the trigger fires, the action runs."""
    with functions() as fn:
        doc = fn._call("PUT", "rules", name, params={"overwrite": "false"}, json={"trigger": trigger, "action": action})
    _show(doc, as_json, f"created rule {name}")


@rule_app.command("get")
def rule_get(name: Annotated[str, typer.Argument(help="The rule's name")], as_json: JsonFlag = False) -> None:
    """Show a rule."""
    with functions() as fn:
        print_json(fn._call("GET", "rules", name))


@rule_app.command("delete")
def rule_delete(name: Annotated[str, typer.Argument(help="The rule's name")], as_json: JsonFlag = False) -> None:
    """Delete a rule."""
    with functions() as fn:
        doc = fn._call("DELETE", "rules", name)
    _show(doc, as_json, f"deleted rule {name}")


@rule_app.command("list")
def rule_list(as_json: JsonFlag = False) -> None:
    """List rules."""
    with functions() as fn:
        rows = _entities("rules", fn)
    if as_json:
        print_json(rows)
        return
    shown = [[f"/{r['namespace']}/{r['name']}", r.get("status", ""), json.dumps(r.get("action"))] for r in rows]
    table(["RULE", "STATUS", "ACTION"], shown)


def _status(name: str, status: str, as_json: bool) -> None:
    with functions() as fn:
        doc = fn._call("POST", "rules", name, json={"status": status})
    _show(doc, as_json, f"rule {name} {'enabled' if status == 'active' else 'disabled'}")


@rule_app.command("enable")
def rule_enable(name: Annotated[str, typer.Argument(help="The rule's name")], as_json: JsonFlag = False) -> None:
    """Enable a rule."""
    _status(name, "active", as_json)


@rule_app.command("disable")
def rule_disable(name: Annotated[str, typer.Argument(help="The rule's name")], as_json: JsonFlag = False) -> None:
    """Disable a rule."""
    _status(name, "inactive", as_json)
