"""What /whisk.system holds on every installation: the shared packages `utils` (OpenWhisk's catalog's
building blocks, as Python actions with the catalog's parameters and results), `alarms` (the feed actions
`alarm`, `interval`, `once`) and `storage` (the feed action `changes`). Written by the controller at start
(`install`): a package or action is (re)written only when it differs from what is stored, so a restart
changes nothing. Nobody owns the namespace, so nobody can write to it through the API; every user may read
it and run its actions (the packages are published).

The feed actions' code only answers that they are feeds: their lifecycle is handled by the controller
(functions/feeds.py, routed by functions/feed_api.py).
"""

from __future__ import annotations

import logging
from typing import Any

from headrace.db.engine import Database
from headrace.functions import model
from headrace.functions.entities import ActionFields, PackageFields
from headrace.functions.model import KeyValue
from headrace.functions.store import FunctionStore

log = logging.getLogger("headrace.catalog")

SYSTEM = "whisk.system"

# The catalog's utils, as openwhisk-catalog's packages/utils define them (results and defaults alike).
UTILS: dict[str, tuple[str, str, list[dict[str, Any]]]] = {
    "echo": (
        "Returns the input",
        "def main(params):\n    return params or {}\n",
        [{"name": "payload", "required": False, "description": "Any JSON entity"}],
    ),
    "cat": (
        "Concatenates input into a string",
        "def main(msg):\n"
        "    lines = msg.get('lines') or []\n"
        "    text = '\\n'.join(_js(x) for x in lines)\n"
        "    return {'lines': lines, 'payload': text}\n\n"
        "def _js(x):\n"
        "    if isinstance(x, bool):\n        return 'true' if x else 'false'\n"
        "    if x is None:\n        return ''\n"
        "    if isinstance(x, float) and x.is_integer():\n        return str(int(x))\n"
        "    return str(x)\n",
        [{"name": "lines", "required": True, "type": "array", "description": "An array of strings or numbers"}],
    ),
    "sort": (
        "Sorts an array",
        # JavaScript's default sort: by the elements' string forms
        "def main(msg):\n"
        "    lines = list(msg.get('lines') or [])\n"
        "    lines.sort(key=lambda x: x if isinstance(x, str) else str(x))\n"
        "    return {'lines': lines, 'length': len(lines)}\n",
        [{"name": "lines", "required": True, "type": "array", "description": "An array of strings"}],
    ),
    "head": (
        "Extract prefix of an array",
        "def main(msg):\n"
        "    lines = msg.get('lines') or []\n"
        "    num = msg.get('num') or 1\n"
        "    return {'lines': lines[: int(num)], 'num': num}\n",
        [
            {"name": "lines", "required": True, "type": "array", "description": "An array of strings"},
            {"name": "num", "required": False, "type": "integer", "description": "The length of the prefix"},
        ],
    ),
    "date": (
        "Current date and time",
        "from datetime import datetime, timezone\n\n"
        "def main(args):\n"
        "    now = datetime.now(timezone.utc)\n"
        "    return {'date': now.strftime('%Y-%m-%dT%H:%M:%S.') + f'{now.microsecond // 1000:03d}Z'}\n",
        [],
    ),
    "split": (
        "Split a string into an array",
        "import re\n\n"
        "def main(msg):\n"
        "    payload = msg['payload']\n"
        "    text = payload if isinstance(payload, str) else str(payload)\n"
        "    separator = msg.get('separator')\n"
        "    lines = text.split(separator) if separator else re.split(r'\\r?\\n', text)\n"
        "    return {'lines': lines, 'payload': payload}\n",
        [
            {"name": "payload", "required": True, "description": "A string"},
            {"name": "separator", "required": False, "description": "The character to use for splitting"},
        ],
    ),
    "smash": (
        "Nests all properties under given property",
        "def main(args):\n"
        "    parent = args.get('$fieldName')\n"
        "    if not isinstance(parent, str):\n"
        "        return {'error': \"Expected an argument '$fieldName' of type 'string'.\"}\n"
        "    rest = {k: v for k, v in args.items() if k != '$fieldName'}\n"
        "    return {parent: rest}\n",
        [{"name": "$fieldName", "required": True, "type": "string", "description": "Name of property to nest under"}],
    ),
    "namespace": (
        "Returns namespace for the authorization key used to invoke this action",
        "import os\n\ndef main(args):\n    return {'namespace': os.environ.get('__OW_NAMESPACE')}\n",
        [],
    ),
}

_FEED_CODE = (
    "def main(args):\n"
    "    return {'error': 'This is a feed action: create a trigger with it (--feed), or invoke it with a '\n"
    "            'lifecycleEvent (CREATE, READ, UPDATE, DELETE, PAUSE, UNPAUSE).'}\n"
)

FEEDS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "alarms/alarm": (
        "Fire trigger when alarm occurs",
        [
            {"name": "cron", "required": True},
            {"name": "timezone", "required": False},
            {"name": "startDate", "required": False},
            {"name": "stopDate", "required": False},
            {"name": "strict", "required": False},
        ],
    ),
    "alarms/once": (
        "Fire trigger once when alarm occurs",
        [{"name": "date", "required": True}, {"name": "deleteAfterFire", "required": False}],
    ),
    "alarms/interval": (
        "Fire trigger at specified interval",
        [
            {"name": "minutes", "required": True},
            {"name": "startDate", "required": False},
            {"name": "stopDate", "required": False},
        ],
    ),
    "storage/changes": (
        "Fire trigger on storage events under a path",
        [
            {"name": "path", "required": True},
            {"name": "recursive", "required": False},
            {"name": "flags", "required": False},
            {"name": "pattern", "required": False},
            {"name": "min_size", "required": False},
            {"name": "tape", "required": False},
            {"name": "source", "required": False},
        ],
    ),
}

PACKAGES: dict[str, tuple[str, list[KeyValue]]] = {
    "utils": ("Building blocks that format and assemble data", []),
    "alarms": ("Alarms and periodic utility", [{"key": "trigger_payload", "value": ""}]),
    "storage": ("headrace's storage events", []),
}


def _package(description: str, parameters: list[KeyValue]) -> PackageFields:
    return {
        "parameters": parameters,
        "annotations": [{"key": "description", "value": description}],
        "binding": None,
        "publish": True,
    }


def _action(code: str, description: str, params: list[dict[str, Any]], *, feed: bool) -> ActionFields:
    annotations: list[KeyValue] = [
        {"key": "description", "value": description},
        {"key": "parameters", "value": params},
        {"key": "exec", "value": "python:3"},
    ]
    if feed:
        annotations.append({"key": "feed", "value": True})
    return {
        "exec": {"kind": "python:3", "code": code, "main": "main", "binary": False},
        "parameters": [],
        "annotations": annotations,
        "limits": model.default_limits(),
        "scaling": model.scaling(None),
    }


def entities() -> tuple[dict[str, PackageFields], dict[str, ActionFields]]:
    """The packages and the actions ("package/action") of /whisk.system."""
    packages = {name: _package(d, p) for name, (d, p) in PACKAGES.items()}
    actions = {f"utils/{n}": _action(code, d, p, feed=False) for n, (d, code, p) in UTILS.items()}
    actions.update({n: _action(_FEED_CODE, d, p, feed=True) for n, (d, p) in FEEDS.items()})
    return packages, actions


def _same(stored: Any, values: Any) -> bool:
    return all(stored.get(k) == v for k, v in values.items())


def install_sync(db: Database) -> int:
    """Write what /whisk.system lacks or holds differently; how many entities were written."""
    store = FunctionStore(db)
    packages, actions = entities()
    written = 0
    for name, p in packages.items():
        current = store.get("packages", SYSTEM, name)
        if current is None or not _same(current, p):
            store.put("packages", SYSTEM, name, p, overwrite=current is not None)
            written += 1
    for name, a in actions.items():
        found = store.get("actions", SYSTEM, name)
        if found is None or not _same(found, a):
            store.put("actions", SYSTEM, name, a, overwrite=found is not None)
            written += 1
    return written


async def install(db: Database) -> None:
    try:
        written = await db.write(install_sync, db)
    except Exception:  # two controllers starting at once: the other wrote it
        log.warning("catalog: writing /whisk.system failed (another controller may have written it)", exc_info=True)
        return
    if written:
        log.info("catalog: wrote %d entities of /whisk.system", written)
