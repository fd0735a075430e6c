"""Packages, bindings and shared packages (issue 17): who may read what, and an action's effective parameters.

A package's parameters are defaults for its actions: the action's own override them; a binding's override
the bound package's (OpenWhisk's precedence: invocation > action > binding > package). A package in another
namespace is readable, read only, when it is published (`publish: true`); a binding is read through to the
package it is bound to, which its owner must be able to read. Refusals are OpenWhisk's: 404 for what is not
there, 403 for another namespace's private package or an entity outside any package there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from headrace.db.engine import Database
from headrace.functions.entities import ActionRow, PackageRow
from headrace.functions.errors import FORBIDDEN, NOT_FOUND, WhiskError
from headrace.functions.model import JSONObject, as_dict
from headrace.functions.names import EntityName
from headrace.functions.store import FunctionStore

#: OpenWhisk's reserved package name (the web route's "no package").
RESERVED = ("default",)


@dataclass(frozen=True)
class ResolvedPackage:
    """A package as a caller reads it: the package that holds the actions, and the binding read through."""

    package: PackageRow
    binding: PackageRow | None = None

    @property
    def parameters(self) -> JSONObject:
        own = as_dict(self.package["parameters"])
        return {**own, **as_dict(self.binding["parameters"])} if self.binding else own


@dataclass(frozen=True)
class ResolvedAction:
    """An action as a caller names it: the stored row, where it lives, and its effective parameters."""

    action: ActionRow
    name: EntityName  # where the action is stored (a binding's name resolved to its package)
    parameters: JSONObject = field(default_factory=dict)
    package: ResolvedPackage | None = None


def inherit(action: ActionRow, packages: Mapping[tuple[str, str], PackageRow]) -> ActionRow:
    """The action with its package's parameters under its own (for runs that name the stored action: rules,
    sequences' components, the storage feed)."""
    pkg, _, _ = action["name"].rpartition("/")
    found = packages.get((action["namespace"], pkg)) if pkg else None
    if not found or not found["parameters"]:
        return action
    merged = {**as_dict(found["parameters"]), **as_dict(action["parameters"])}
    return {**action, "parameters": [{"key": k, "value": v} for k, v in merged.items()]}


def by_key(rows: Iterable[PackageRow]) -> dict[tuple[str, str], PackageRow]:
    return {(p["namespace"], p["name"]): p for p in rows}


async def package(db: Database, store: FunctionStore, caller: str, namespace: str, name: str) -> ResolvedPackage:
    """The package `/namespace/name` as `caller` may read it (a binding read through to its package)."""
    row = await db.read(lambda: store.get("packages", namespace, name))
    if row is None:
        raise WhiskError(404, NOT_FOUND)
    if namespace != caller and not row["publish"]:
        raise WhiskError(403, FORBIDDEN)
    b = row["binding"]
    if not b:
        return ResolvedPackage(row)
    target = await db.read(lambda: store.get("packages", b["namespace"], b["name"]))
    if target is None:
        raise WhiskError(404, NOT_FOUND)
    if target["namespace"] != row["namespace"] and not target["publish"]:
        raise WhiskError(403, FORBIDDEN)
    return ResolvedPackage(target, row)


async def action(db: Database, store: FunctionStore, caller: str, name: EntityName) -> ResolvedAction:
    """The action `name` as `caller` may run or read it: 404 if there is none, 403 if it is another namespace's
    and not in a package shared with everyone."""
    if name.package is None:
        if name.namespace != caller:
            raise WhiskError(403, f"The supplied authentication is not authorized to access '{name.namespace}'.")
        row = await db.read(lambda: store.get("actions", name.namespace, name.name))
        if row is None:
            raise WhiskError(404, NOT_FOUND)
        return ResolvedAction(row, name, as_dict(row["parameters"]))
    pkg = await package(db, store, caller, name.namespace, name.package)
    home = EntityName(pkg.package["namespace"], pkg.package["name"], name.name)
    found = await db.read(lambda: store.get("actions", home.namespace, home.path))
    if found is None:
        raise WhiskError(404, NOT_FOUND)
    return ResolvedAction(found, home, {**pkg.parameters, **as_dict(found["parameters"])}, pkg)
