"""OpenWhisk's fully qualified entity names, parsed in one place for every route and every field that names an
entity (invoke, a sequence's components, a rule's action and trigger, a binding's package):

- `name`: in the caller's namespace;
- `pkg/name`: inside the caller's package `pkg` (two parts without a leading slash whose first is `_` or the
  caller's own namespace name an entity of that namespace, as `wsk` sends them);
- `/ns/name` and `/ns/pkg/name` (also `ns/pkg/name`); `_` as the namespace is the caller's own.

Inside fn_actions an action in a package is the row named "pkg/name" (`EntityName.path`).
"""

from __future__ import annotations

from dataclasses import dataclass

from headrace.functions.model import ModelError, check_name


@dataclass(frozen=True)
class EntityName:
    namespace: str
    package: str | None
    name: str

    @property
    def path(self) -> str:
        """The entity's name inside its namespace: "pkg/name" or "name" (how fn_actions names it)."""
        return f"{self.package}/{self.name}" if self.package else self.name

    @property
    def qualified(self) -> str:
        """ "/ns/pkg/name" or "/ns/name"."""
        return f"/{self.namespace}/{self.path}"


def parse(raw: object, caller: str, what: str = "action") -> EntityName:
    """The entity `raw` names, relative to the caller's namespace; ModelError (400) if it names none."""
    if not isinstance(raw, str) or not raw.strip("/"):
        raise ModelError(f'The {what} must be named: "name", "package/name" or "/namespace/[package/]name".')
    absolute = raw.startswith("/")
    parts = raw.strip("/").split("/")
    if any(not p for p in parts) or len(parts) > 3 or (absolute and len(parts) < 2):
        raise ModelError(f"The {what} name {raw!r} is not valid: use /namespace/[package/]name.")
    if len(parts) == 1:
        ns, pkg, name = caller, None, parts[0]
    elif len(parts) == 2 and not absolute and parts[0] not in ("_", caller):
        ns, pkg, name = caller, parts[0], parts[1]
    elif len(parts) == 2:
        ns, pkg, name = parts[0], None, parts[1]
    else:
        ns, pkg, name = parts
    ns = caller if ns == "_" else check_name(ns, "namespace")
    if pkg is not None:
        check_name(pkg, "package name")
    return EntityName(ns, pkg, check_name(name, f"{what} name"))


def of_row(namespace: str, path: str) -> EntityName:
    """The name of a stored row ("pkg/name" or "name" in `namespace`)."""
    pkg, _, name = path.rpartition("/")
    return EntityName(namespace, pkg or None, name)
