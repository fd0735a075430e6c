"""headrace's optional parts ("extras"): `pip install headrace` brings the CLI, the SDK and the server on
SQLite; `headrace[postgresql]`, `headrace[kafka]` and `headrace[science]` bring the rest. Where one is used
without its extra, `require` says which to install, in one line, instead of an ImportError from deep inside."""

from __future__ import annotations

import importlib.util

#: The extra that brings each optional module.
EXTRAS = {
    "psycopg": "postgresql",
    "confluent_kafka": "kafka",
    "numpy": "science",
    "h5py": "science",
    "pyFAI": "science",
    "matplotlib": "science",
}


class MissingExtra(Exception):
    """An optional module is not installed; the message names the extra that brings it."""

    def __init__(self, module: str, needed_for: str) -> None:
        self.module = module
        self.extra = EXTRAS[module]
        super().__init__(f"{needed_for} needs {module}, which is not installed: pip install 'headrace[{self.extra}]'")


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(*modules: str, needed_for: str) -> None:
    """Raise MissingExtra for the first of `modules` that is not installed."""
    for module in modules:
        if not installed(module):
            raise MissingExtra(module, needed_for)


def require_server(db_url: str, kafka: str) -> None:
    """What a server configured with `db_url` and `kafka` (empty: none) needs beyond `pip install headrace`."""
    if db_url.startswith(("postgresql:", "postgresql+", "postgres:")):
        require("psycopg", needed_for="--db postgresql://...")
    if kafka:
        require("confluent_kafka", needed_for="--kafka")
