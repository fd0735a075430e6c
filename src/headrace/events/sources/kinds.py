"""The source kinds, by the name `PUT /api/v1/sources/{name}` takes in `kind`: each a module with
`build(name: str, config: Mapping[str, Any]) -> Source` (base.Source) that validates the configuration
(raising base.SourceConfigError) without connecting anywhere.

Configuration keys shared by the kinds (a kind rejects the ones it does not use):
  url, path, recursive            where to listen (dcache-sse: the remote `/api/v1` base and the watched path)
  bearer, token_file, basic       credentials ("user:key"); a token file is re-read when it changes
  door                            a WebDAV base URL through which functions read the files (when not `url`)
  bootstrap, topic, group, format Kafka: brokers, topic, consumer group, "billing" | "cloudevents"
  secret                          s3: the shared secret a notification POST must carry
  root, mode, interval            directory: the tree, "inotify" | "scan" | "auto", the scan period (s)
`readers` ({"users": [...], "groups": [...]}: who may trigger on and read through a source) is not the kind's:
the API keeps it beside the kind's configuration.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from headrace.events.sources.base import Source, SourceConfigError

KINDS: dict[str, str] = {
    "dcache-sse": "headrace.events.sources.dcache_sse",
    "kafka": "headrace.events.sources.kafka",
    "s3": "headrace.events.sources.s3",
    "directory": "headrace.events.sources.directory",
}


#: More kinds, "kind=module,kind=module" (tests register a kind of their own this way; never a real kind).
EXTRA_KINDS_ENV = "HEADRACE_SOURCE_KINDS"


def known() -> dict[str, str]:
    """Every kind: the built-in ones and those $HEADRACE_SOURCE_KINDS adds."""
    out = dict(KINDS)
    for item in os.environ.get(EXTRA_KINDS_ENV, "").split(","):
        kind, sep, module = item.strip().partition("=")
        if sep and kind and module and kind not in KINDS:
            out[kind.strip()] = module.strip()
    return out


def build(name: str, kind: str, config: Mapping[str, Any]) -> Source:
    """The source `name` of `kind` with `config`; SourceConfigError for an unknown kind or a bad config."""
    kinds = known()
    module = kinds.get(kind) if isinstance(kind, str) else None
    if module is None:
        raise SourceConfigError(f"Unknown source kind {kind!r} (known: {', '.join(sorted(kinds))}).")
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:  # not installed here (an extra), or not written yet
        raise SourceConfigError(f"The source kind {kind!r} cannot be loaded here: {exc}") from exc
    source: Source = loaded.build(name, config)
    return source
