"""Schemathesis against the frontend's own OpenAPI document (/api/v1/openapi.json), on a real server: every
operation gets generated requests, valid and invalid (negative mode), as the non-admin user2 and as admin.
No answer may be a 5xx, and each answer must be one the document declares: its status code, its content type
and its body's schema (dCache's {"status","title","detail"} or OpenWhisk's {"error","code"} for errors).

The document does not describe the JSON bodies the routes read themselves (namespace actions, OpenWhisk
entities, channel and subscription settings, redrive), so a second, Hypothesis fuzz sends those: objects
with the fields each route knows and generated values of any JSON type, and bodies that are not JSON at all
(cut short, bad UTF-8, nested past the parser's recursion limit). Same rules: no 5xx, errors in the
route's shape. Function invocation and trigger firing are left to the schemathesis pass (random names: 404),
so that no generated code runs.

Deterministic (Hypothesis derandomized, no example database) and bounded: EXAMPLES per operation and identity,
BODY_EXAMPLES bodies per identity.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
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

from harness import ADMIN_KEY, Server, add_user, client, http

#: Generated requests per operation and identity (both generation modes together).
EXAMPLES = int(os.environ.get("HEADRACE_FUZZ_SCALE", "1")) * 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    base: Path = tmp_path_factory.mktemp("fuzz-frontend")
    srv = Server(data=base / "data", cli_config=base / "cli.json").start()
    name, key, uid = add_user(srv, "user2")
    with srv.door() as admin, srv.api() as api:  # a tree for the namespace actions to act on
        for path in ("/fuzz", "/fuzz/dir", "/secret"):
            assert admin.request("MKCOL", path).status_code == 201
        assert admin.put("/fuzz/a.txt", content=b"a").status_code == 201
        assert api.post("/api/v1/namespace/fuzz", json={"action": "chown", "uid": uid}).status_code == 200
        assert api.post("/api/v1/namespace/secret", json={"action": "chmod", "mode": 0o700}).status_code == 200
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
    derandomize=not os.environ.get("HEADRACE_FUZZ_EXPLORE"),  # exploring: pytest --hypothesis-seed=N
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
        strategies = [operation.as_strategy(generation_mode=mode) for mode in MODES]
        if "{ns}" in operation.path:  # a random namespace is only ever refused (403): the caller's own, too
            strategies.append(operation.as_strategy(generation_mode=GenerationMode.POSITIVE, path_parameters=OWN))
        strategy = st.one_of(*strategies)

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
OWN = {"ns": "_"}


def test_fuzz_frontend_as_user2(api_schema: Any, fuzzed: tuple[Server, dict[str, str]]) -> None:
    sent = fuzz(api_schema, fuzzed, "user2")
    assert len(sent) >= 40 and all(n > 0 for n in sent.values()), sent


def test_fuzz_frontend_as_admin(api_schema: Any, fuzzed: tuple[Server, dict[str, str]]) -> None:
    sent = fuzz(api_schema, fuzzed, "admin")
    assert len(sent) >= 40 and all(n > 0 for n in sent.values()), sent


# -- request bodies the document does not describe -----------------------------------------------------------

BODY_EXAMPLES = int(os.environ.get("HEADRACE_FUZZ_SCALE", "1")) * 1500
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["/", "/fuzz", "/fuzz/a.txt", "..", "../..", "a/b", "", " ", "x" * 300, "\x00", "ü"]),
)
anything = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
key_values = st.one_of(
    st.lists(st.fixed_dictionaries({"key": st.text(max_size=10)}, optional={"value": anything}), max_size=3), anything
)
CODE = ["def main(args):\n    return args\n", "def main(:", "", "UEsDBAoAAAAA", "import os\nmain = 1\n", "x" * 2000]
EXEC = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(["python:3", "python:3.11", "sequence", "blackbox", "nodejs:20", ""]) | anything,
        "code": st.sampled_from(CODE) | anything,
        "main": st.sampled_from(["main", "run", "1x", "", "__import__"]) | anything,
        "binary": st.booleans() | anything,
        "components": st.lists(st.sampled_from(["a", "/_/a", "/other/a", "", "a/b/c"]), max_size=3) | anything,
    },
)
# scaling is generated with values it must refuse only: a valid minScale would start workers (CPU on 2 cores)
SCALING = st.dictionaries(
    st.sampled_from(["minScale", "maxScale", "concurrency", "x"]), st.sampled_from([-1, "x", None, 2**70])
)
LIMITS = st.dictionaries(st.sampled_from(["timeout", "memory", "logs", "concurrency", "x"]), anything)
FEED_PARAMS = st.dictionaries(
    st.sampled_from(["name", "path", "recursive", "flags", "pattern", "min_size", "bogus"]),
    st.one_of(
        st.sampled_from(["/whisk.system/storage/changes", "/fuzz", "IN_CLOSE_WRITE", "IN_BOGUS", "*.h5"]), anything
    ),
)
ENTITY = st.sampled_from(["a", "b", "..", ".", "a b", "x" * 300, "%2e%2e", "ü", "_", "a.b"])


def _obj(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """An object with some of `fields` (each with its own values or anything) and sometimes a stray key."""
    return st.fixed_dictionaries({}, optional={k: v | anything for k, v in fields.items()}).flatmap(
        lambda d: st.one_of(
            st.just(d), st.dictionaries(st.text(max_size=6), anything, max_size=2).map(lambda x: {**x, **d})
        )
    )


NS_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": ENTITY,
    "destination": st.sampled_from(["/fuzz/b", "b", "../b", "/secret/x", "/", "/fuzz/dir/../../x", "/fuzz/dir/c"]),
    "target": st.sampled_from(["disk", "tape", "disk+tape", "volatile", "x"]),
    "mode": st.one_of(st.integers(-1, 0o10000), st.sampled_from(["CREATE", "MODIFY", "EITHER", "x"])),
    "uid": st.integers(-1, 2**40),
    "gid": st.integers(-1, 2**40),
    "attributes": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    "names": st.lists(st.text(max_size=8), max_size=3),
    "label": st.text(max_size=20),
}
#: each namespace action with the fields it takes (any other field is refused, so most bodies keep to these)
NS_ACTIONS = {
    "mkdir": ["name"],
    "mv": ["destination"],
    "qos": ["target"],
    "chmod": ["mode"],
    "chown": ["uid", "gid"],
    "set-xattr": ["attributes", "mode"],
    "rm-xattr": ["names"],
    "set-label": ["label"],
    "rm-label": ["label"],
}
NS_ACTION = st.one_of(
    *(
        st.fixed_dictionaries({"action": st.just(action), **{f: NS_FIELDS[f] for f in fields}})
        for action, fields in NS_ACTIONS.items()
    ),
    _obj({"action": st.sampled_from([*NS_ACTIONS, "x"]), **NS_FIELDS}),
)
NOT_JSON = st.one_of(
    st.sampled_from([b"{", b"[]", b"null", b"\xff\xfe", b'{"a": NaN}', b'{"a": 1e99999}', b'"x"', b"{}" * 3]),
    st.integers(2000, 200_000).map(lambda n: b"[" * n + b"]" * n),  # past json's recursion limit
    st.integers(2000, 50_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.binary(max_size=200),
)


def _json(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        strategy.map(lambda v: json.dumps(v).encode()), strategy.map(lambda v: json.dumps(v).encode()), NOT_JSON
    )


@st.composite
def frontend_requests(draw: st.DrawFn, cid: str) -> tuple[str, str, bytes]:
    """(method, path and query, body) for one of the routes that read a JSON body."""
    entity = quote(draw(ENTITY), safe="")
    kind = draw(
        st.sampled_from(["namespace", "action", "trigger", "rule", "rule-status", "channel", "subscription", "redrive"])
    )
    overwrite = draw(st.sampled_from(["", "?overwrite=true", "?overwrite=false", "?overwrite=x"]))
    if kind == "namespace":
        where = draw(st.sampled_from(["/fuzz", "/fuzz/a.txt", "/fuzz/dir", "/", "/secret", "/nope", "/fuzz/%2e%2e"]))
        return "POST", f"/api/v1/namespace{where}", draw(_json(NS_ACTION))
    if kind == "action":
        fields = {"limits": LIMITS, "scaling": SCALING, "parameters": key_values, "annotations": key_values}
        valid_exec = st.fixed_dictionaries({"kind": st.just("python:3"), "code": st.just(CODE[0])})
        body = st.one_of(
            _obj({"exec": EXEC, **fields}),
            st.fixed_dictionaries({"exec": valid_exec}, optional=fields),  # reaches the limits' and the rest's checks
        )
        return "PUT", f"/api/v1/namespaces/_/actions/{entity}{overwrite}", draw(_json(body))
    if kind == "trigger":
        body = _obj({"parameters": key_values, "annotations": key_values, "feed": FEED_PARAMS})
        return "PUT", f"/api/v1/namespaces/_/triggers/{entity}{overwrite}", draw(_json(body))
    if kind in ("rule", "rule-status"):
        names = st.sampled_from(["a", "/_/a", "/other/a", "b/c/d", ""])
        status = st.sampled_from(["active", "inactive", "x"])
        body = _obj({"trigger": names, "action": names, "status": status})
        method = "PUT" if kind == "rule" else "POST"
        return method, f"/api/v1/namespaces/_/rules/{entity}{overwrite if method == 'PUT' else ''}", draw(_json(body))
    if kind == "channel":
        if draw(st.booleans()):
            return "POST", "/api/v1/events/channels", draw(_json(_obj({"client-id": st.text(max_size=20)})))
        return "PATCH", f"/api/v1/events/channels/{cid}", draw(_json(_obj({"timeout": st.integers(-1, 2**40)})))
    if kind == "subscription":
        etype = draw(st.sampled_from(["inotify", "metronome", "bogus"]))
        # metronome: slow ticks only (a fast one is a load test, not a fuzz); refusals come from bad types
        fields = {
            "path": st.sampled_from(["/fuzz", "/", "/secret", "fuzz", "/nope/x", "/fuzz/a.txt"]),
            "recursive": st.booleans(),
            "format": st.sampled_from(["inotify", "dcache", "x"]),
            "flags": st.lists(st.sampled_from(["IN_CREATE", "IN_ALL_EVENTS", "IN_BOGUS"]), max_size=2),
            "frequency": st.sampled_from([0.5, 1, -1, 0, "x", None]),
            "delay": st.sampled_from([1, 0, -1, "x"]),
            "message": st.text(max_size=20),
            "count": st.sampled_from([1, 0, -1, "x", 2**70]),
        }
        known = ["path", "recursive", "format"] if etype == "inotify" else ["frequency", "message", "count"]
        sel = st.one_of(_obj(fields), st.fixed_dictionaries({}, optional={k: fields[k] for k in known}))
        return "POST", f"/api/v1/events/channels/{cid}/subscriptions/{etype}", draw(_json(sel))
    return (
        "POST",
        "/api/v1/namespaces/_/deadletters/redrive",
        draw(_json(_obj({"activationIds": st.lists(st.text(max_size=8))}))),
    )


def _error_shape(path: str, response: httpx.Response) -> bool:
    """An error body in the route's shape: OpenWhisk's on the functions API, dCache's elsewhere."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    keys = ("error", "code") if path.startswith("/api/v1/namespaces/") else ("status", "title", "detail")
    return isinstance(body, dict) and all(isinstance(body.get(k), str) for k in keys)


def fuzz_bodies(fuzzed: tuple[Server, dict[str, str]], who: str) -> dict[str, int]:
    srv, identities = fuzzed
    headers = {"Authorization": identities[who], "Content-Type": "application/json"}
    statuses: dict[str, int] = {}
    with client(base_url=srv.api_url, headers=headers, timeout=30) as api:
        created = api.post("/api/v1/events/channels")
        assert created.status_code == 201, created.text
        cid = created.headers["location"].rsplit("/", 1)[1]

        @settings(FUZZ_SETTINGS, max_examples=BODY_EXAMPLES)
        @given(request=frontend_requests(cid))
        def send(request: tuple[str, str, bytes]) -> None:
            method, path, content = request
            response = api.request(method, path, content=content)
            key = f"{method} {path.split('/')[3]}.. {response.status_code}"
            statuses[key] = statuses.get(key, 0) + 1
            shown = f"{method} {path} {content[:300]!r} -> {response.status_code} {response.text[:1000]}"
            assert response.status_code < 500, shown
            if response.status_code >= 400:
                assert _error_shape(path, response), shown

        send()
        api.delete(f"/api/v1/events/channels/{cid}")
    print(f"{who}: {sum(statuses.values())} bodies; {dict(sorted(statuses.items()))}")
    return statuses


def test_fuzz_frontend_bodies_as_user2(fuzzed: tuple[Server, dict[str, str]]) -> None:
    assert sum(fuzz_bodies(fuzzed, "user2").values()) == BODY_EXAMPLES


def test_fuzz_frontend_bodies_as_admin(fuzzed: tuple[Server, dict[str, str]]) -> None:
    assert sum(fuzz_bodies(fuzzed, "admin").values()) == BODY_EXAMPLES


# -- what the fuzz found: each input exactly, answered as it is now ------------------------------------------

#: A JSON body nested past json's recursion limit: RecursionError (not a ValueError) escaped all three body
#: parsers as a 500 before.
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/namespace/"),
        ("PUT", "/api/v1/namespaces/_/actions/a"),
        ("POST", "/api/v1/events/channels"),
    ],
)
def test_fuzz_finding_deep_json(fuzzed: tuple[Server, dict[str, str]], method: str, path: str) -> None:
    srv, identities = fuzzed
    headers = {"Authorization": identities["user2"], "Content-Type": "application/json"}
    r = http(method, f"{srv.api_url}{path}", headers=headers, content=DEEP)
    assert r.status_code == 400, r.text
    assert _error_shape(path, r) and "recursion" in r.text, r.text


#: Integers past 64 bits in a query: SQLite's driver raised OverflowError (a 500; on a namespace listing, a
#: connection cut mid-stream); PostgreSQL's DataError was already a 400.
HUGE = 10**25


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v1/namespace/fuzz?children=true&offset={HUGE}",
        f"/api/v1/namespace/fuzz?children=true&limit={HUGE}",
        f"/api/v1/namespaces/_/activations?since={HUGE}",
        f"/api/v1/namespaces/_/activations?upto=-{HUGE}",
        f"/api/v1/namespaces/_/activations?skip={HUGE}",
        f"/api/v1/namespaces/_/actions?skip={HUGE}",
        f"/api/v1/namespaces/_/triggers?skip={HUGE}",
        f"/api/v1/namespaces/_/rules?skip={HUGE}",
        f"/api/v1/namespaces/_/deadletters?skip={HUGE}",
    ],
)
def test_fuzz_finding_huge_integer(fuzzed: tuple[Server, dict[str, str]], path: str) -> None:
    srv, identities = fuzzed
    r = http("GET", f"{srv.api_url}{path}", headers={"Authorization": identities["user2"]})
    assert r.status_code == 400, r.text
    assert _error_shape(path, r), r.text


def test_server_answers_after_fuzzing(fuzzed: tuple[Server, dict[str, str]]) -> None:
    srv, identities = fuzzed
    r = http("GET", f"{srv.api_url}/api/v1/user", headers={"Authorization": identities["user2"]})
    assert r.status_code == 200 and r.json()["username"] == "user2"
