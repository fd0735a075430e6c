"""Clients of the in-process door and frontend (the `apps` fixture, tests/conftest.py) for this directory's
tests: the fast tier, no socket and no subprocess."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from inprocess_harness import InProcess


@pytest.fixture
def door(apps: InProcess) -> Iterator[httpx.Client]:
    with apps.door() as c:
        yield c


@pytest.fixture
def api(apps: InProcess) -> Iterator[httpx.Client]:
    with apps.api() as c:
        yield c
