"""Shared fixtures: a real headrace server per test module (or per test where state matters).

The whole suite runs on SQLite or on PostgreSQL ($HEADRACE_TEST_DB, see harness.py; `make pytest` runs both).
Tests that only make sense on one are marked `sqlite_only(reason)` or `postgresql_only(reason)`; tests whose
outcome does not depend on it (no database, or one of their own) are marked `db_independent(reason)` and run
in the SQLite run only. Either way they are deselected (not skipped) in the other run.

Two tiers: tests marked `inprocess` (everything under tests/inprocess/, and the modules in INPROCESS_MODULES)
run in this process only: the door and frontend through httpx's ASGI transport (tests/support/inprocess_harness.py),
pure modules, the SDK against either. `make check` runs them (`pytest -m inprocess`); no subprocess may start
in them (they fail if one does). Everything else starts real servers, workers or brokers; `make test` runs all.
"""

from __future__ import annotations

import multiprocessing.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helpers some test modules import from others
sys.path.insert(0, str(Path(__file__).parent / "support"))  # the harnesses: `from harness import Server`

from harness import Server, db_kind

if TYPE_CHECKING:
    from inprocess_harness import InProcess
    from kafka_harness import KafkaBroker

#: Test modules outside tests/inprocess/ that start no process: pure modules, and the SDK on in-process apps.
INPROCESS_MODULES = {
    "test_billing.py",
    "test_blobstore.py",
    "test_client.py",
    "test_db_batch.py",
    "test_engine.py",
    "test_http_body.py",
    "test_http_common.py",
    "test_http_conditionals.py",
    "test_http_ranges.py",
    "test_schema.py",
    "test_xfel_azint.py",
    "test_xfel_catalogue.py",
    "test_xfel_summary.py",
}


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts a background job (`make test` runs the PostgreSQL pass with `&`) with SIGINT ignored, and
    # an ignored signal stays ignored across exec: the CLI processes the tests interrupt would never see their
    # Ctrl-C. A handler, unlike SIG_IGN, is reset to the default in children: they get theirs back.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line("markers", "sqlite_only(reason): runs only when the servers use SQLite")
    config.addinivalue_line("markers", "postgresql_only(reason): runs only when the servers use PostgreSQL")
    config.addinivalue_line("markers", "db_independent(reason): needs no run on PostgreSQL (SQLite run only)")
    config.addinivalue_line("markers", "inprocess: starts no process (the fast tier, `make check`)")


def _inprocess(path: Path) -> bool:
    return path.name in INPROCESS_MODULES or Path(__file__).parent / "inprocess" in path.parents


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # `-m inprocess` (make check) does not even import the other modules: their imports (Kafka's client,
    # schemathesis...) would take most of its time.
    if config.getoption("markexpr") == "inprocess" and collection_path.suffix == ".py":
        return collection_path.name.startswith("test_") and not _inprocess(collection_path)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _inprocess(item.path):
            item.add_marker(pytest.mark.inprocess)
    # Interop suites drive third-party WebDAV clients against the door: what they test is the protocol, the
    # same on either database, so they run on SQLite only (as db_independent tests do).
    other = ("postgresql_only",) if db_kind() == "sqlite" else ("sqlite_only", "db_independent", "interop")
    keep = [item for item in items if not any(item.get_closest_marker(m) for m in other)]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


@pytest.fixture(autouse=True)
def _no_subprocess_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-process test that starts a process fails: it belongs in the subprocess tier (and would make
    `make check` slow). Popen is what asyncio's subprocesses use too; multiprocessing spawns or forks."""
    if request.node.get_closest_marker("inprocess") is None:
        return

    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError(f"an in-process test started a process ({args[1:2]!r}): move it out of the fast tier")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", refuse)
    monkeypatch.setattr(os, "fork", refuse)


@pytest.fixture(scope="session", autouse=True)
def test_database() -> Iterator[str]:
    """The database kind of this run; on PostgreSQL, its cluster runs for the whole session (one per xdist
    worker), each server getting a database of its own in it."""
    kind = db_kind()
    if kind == "sqlite":
        yield kind
        return
    from pg_harness import session_cluster, stop_session_cluster

    session_cluster()
    yield kind
    stop_session_cluster()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh, empty database of this run's kind, as a URL for `headrace.db.engine.Database`."""
    if db_kind() == "sqlite":
        return f"sqlite:///{tmp_path / 'headrace.db'}"
    from pg_harness import session_cluster

    return session_cluster().create_database()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by the tests of a module: tests use their own directories in it."""
    base = tmp_path_factory.mktemp("srv")
    srv = Server(data=base / "data", cli_config=base / "cli.json").start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server of its own, for tests that kill, restart or fill it."""
    srv = Server(data=tmp_path / "data", cli_config=tmp_path / "cli.json")
    yield srv
    if srv.proc is not None:
        srv.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One real Kafka broker (KRaft, one node) for the whole run, started on first use. Tests that stop or
    kill a broker start one of their own (tests/support/kafka_harness.py) instead of taking this one away."""
    from kafka_harness import KafkaBroker

    broker = KafkaBroker(tmp_path_factory.mktemp("kafka")).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    """The door and the frontend in this process (tests/support/inprocess_harness.py), shared by the tests of a module:
    tests use their own directories in it."""
    from inprocess_harness import InProcess

    inproc = InProcess(tmp_path_factory.mktemp("inproc"))
    yield inproc
    inproc.close()


@pytest.fixture
def fresh_apps(tmp_path: Path) -> Iterator[InProcess]:
    """An in-process door and frontend of the test's own."""
    from inprocess_harness import InProcess

    inproc = InProcess(tmp_path)
    yield inproc
    inproc.close()
