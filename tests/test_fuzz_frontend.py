"""Schemathesis against the frontend's own OpenAPI document (/api/v1/openapi.json), on a real server: every
operation gets generated requests, valid and invalid (negative mode), as the non-admin user2 and as admin.
No answer may be a 5xx, and each answer must be one the document declares: its status code, its content type
and its body's schema (dCache's {"status","title","detail"} or OpenWhisk's {"error","code"} for errors).

Deterministic (Hypothesis derandomized, no example database) and bounded: EXAMPLES per operation and identity.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from harness import ADMIN_KEY, Server, http
from test_permissions import add_user

#: Generated requests per operation and identity (both generation modes together).
EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    base: Path = tmp_path_factory.mktemp("fuzz-frontend")
    srv = Server(data=base / "data", cli_config=base / "cli.json").start()
    name, key, _ = add_user(srv, "user2")
    identities = {"user2": _basic(name, key), "admin": _basic("admin", ADMIN_KEY)}
    yield srv, identities
    assert srv.running, f"the server died under the fuzzer:\n{srv.log()[-6000:]}"
    srv.stop()
    log = srv.log()
    assert "Traceback" not in log, log[-6000:]


def _basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


@pytest.fixture(scope="module")
def api_schema(fuzzed: tuple[Server, dict[str, str]]) -> Any:
    srv, _ = fuzzed
    return schemathesis.openapi.from_url(f"{srv.api_url}/api/v1/openapi.json")


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],  # a failure is reported as found, not shrunk (time-bounded)
)


def fuzz(api_schema: Any, fuzzed: tuple[Server, dict[str, str]], who: str) -> dict[str, int]:
    """Each operation, EXAMPLES generated requests as `who`; the failures of all operations at once."""
    srv, identities = fuzzed
    headers = {"Authorization": identities[who]}
    sent: dict[str, int] = {}
    failures: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        sent[label] = 0
        strategy = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in MODES))

        try:
            FUZZ_SETTINGS(given(strategy)(_sender(srv, headers, sent, label)))()
        except (Exception, BaseExceptionGroup) as exc:  # every operation is fuzzed; all failures reported at once
            failures.append(f"{label}: {exc!r}"[:3000])
    assert not failures, "\n\n".join(failures)
    print(f"{who}: {sum(sent.values())} requests, per operation {min(sent.values())}-{max(sent.values())}: {sent}")
    return sent


def _sender(srv: Server, headers: dict[str, str], sent: dict[str, int], label: str) -> Any:
    def send(case: Any) -> None:
        sent[label] += 1
        case.call_and_validate(base_url=srv.api_url, headers=headers, checks=CHECKS, timeout=30)

    return send


MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def test_fuzz_frontend_as_user2(api_schema: Any, fuzzed: tuple[Server, dict[str, str]]) -> None:
    sent = fuzz(api_schema, fuzzed, "user2")
    assert len(sent) >= 40 and all(n > 0 for n in sent.values()), sent


def test_fuzz_frontend_as_admin(api_schema: Any, fuzzed: tuple[Server, dict[str, str]]) -> None:
    sent = fuzz(api_schema, fuzzed, "admin")
    assert len(sent) >= 40 and all(n > 0 for n in sent.values()), sent


def test_server_answers_after_fuzzing(fuzzed: tuple[Server, dict[str, str]]) -> None:
    srv, identities = fuzzed
    r = http("GET", f"{srv.api_url}/api/v1/user", headers={"Authorization": identities["user2"]})
    assert r.status_code == 200 and r.json()["username"] == "user2"
