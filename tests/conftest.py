"""Shared fixtures: a real headrace server per test module (or per test where state matters)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Server

if TYPE_CHECKING:
    from kafka_harness import KafkaBroker


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
    kill a broker start one of their own (tests/kafka_harness.py) instead of taking this one away."""
    from kafka_harness import KafkaBroker

    broker = KafkaBroker(tmp_path_factory.mktemp("kafka")).start()
    yield broker
    broker.stop()
