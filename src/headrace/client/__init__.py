"""The headrace Python SDK, apart from the server: it loads httpx (PyYAML for deploy files), none of the
server's modules, so `pip install headrace` without extras is enough for it.

- `headrace.client.storage`: `Client` (namespace, transfers checked with ADLER32, macaroons) and its config,
  re-exported here: `from headrace.client import Client`;
- `headrace.client.functions`: `Functions` (actions, triggers, rules, activations; `deploy -f` files);
- `headrace.client.events`: `EventStream`, a reconnecting client of the storage-events SSE API.
"""

from headrace.client.storage import (
    CHUNK,
    DEFAULT_API,
    DEFAULT_DOOR,
    NAMESPACE,
    PAGE_SIZE,
    Client,
    ClientConfig,
    DownloadResult,
    Entry,
    HeadraceClientError,
    HeadraceConnectionError,
    UploadResult,
    default_config_path,
    normalize_remote,
)

__all__ = [
    "CHUNK",
    "DEFAULT_API",
    "DEFAULT_DOOR",
    "NAMESPACE",
    "PAGE_SIZE",
    "Client",
    "ClientConfig",
    "DownloadResult",
    "Entry",
    "HeadraceClientError",
    "HeadraceConnectionError",
    "UploadResult",
    "default_config_path",
    "normalize_remote",
]
