"""SURF's ada (github.com/sara-nl/SpiderScripts: the `ada/ada` bash client of dCache's frontend) and its own
integration suite, `tests/integration_test.sh` (34 shunit2 checks), against a real `headrace up`.

The suite runs as a non-admin user with a macaroon for the user's directory, as SURF's users run it, on a
server with the tape simulator and `tape/` of QoS tape. Changes to the upstream script, each checked to
apply: a 1 MiB test file instead of 1 GiB; and where it sleeps a fixed time before looking for what it
waits for (an event printed, a bulk request done), it waits for that instead (up to 60 s), so that a loaded
machine does not fail it.

ada comes from $HEADRACE_ADA_DIR or ~/.cache/headrace/SpiderScripts (scripts/install-test-deps.sh clones
it at ADA_COMMIT); bash, curl, jq, rclone and shunit2 from Debian. Without them the test is skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Server, add_user, http

from .tools import require

pytestmark = pytest.mark.interop

#: The SpiderScripts commit scripts/install-test-deps.sh checks out (the last of the bash ada).
ADA_COMMIT = "c0cdc4bea85075c29aa506662e5cdfbf77023267"
SHUNIT2_DIR = Path("/usr/share/shunit2")
WAIT_FOR = """
# headrace: wait (up to 60 s) for what the checks below slept a fixed time for.
headrace_wait_for() {
    local i
    for i in $(seq 600); do grep -q -- "$1" "$2" 2>/dev/null && return 0; sleep 0.1; done
    return 1
}
headrace_wait_request() {
    local i state
    for i in $(seq 600); do
        state=$(curl -s -H "accept: application/json" -H "Authorization: Bearer $token" "$1" | jq -r '.status')
        case "$state" in QUEUED | STARTED | "") sleep 0.1 ;; *) return 0 ;; esac
    done
    return 1
}

"""
#: (what the upstream script says, what it becomes, how many times it must occur).
PATCHES = [
    ("fallocate -x -l 1G $testfile", "fallocate -x -l 1M $testfile", 1),
    (
        "            eval $command >${stdoutE} 2>${stderrF} &\n            sleep 3\n",
        '            eval $command >${stdoutE} 2>${stderrF} &\n            headrace_wait_for "path=" "${stdoutE}"\n',
        1,
    ),
    (
        "    eval $command >${stdoutE} 2>${stderrF} &\n    sleep 3\n",
        "    eval $command >${stdoutE} 2>${stderrF} &\n"
        '    headrace_wait_for "path=/${disk_path}/${dirname}/${testdir}" "${stdoutE}"\n',
        1,
    ),
    (
        '    sleep 3\n    grep "inotify  /${disk_path}/${dirname}/${testdir}/${testfile}  IN_MOVED_TO"',
        '    headrace_wait_for "inotify  /${disk_path}/${dirname}/${testdir}/${testfile}  IN_MOVED_TO" "${stdoutE}"\n'
        '    grep "inotify  /${disk_path}/${dirname}/${testdir}/${testfile}  IN_MOVED_TO"',
        1,
    ),
    (
        "    eval $command >${stdoutR} 2>${stderrF} &\n    sleep 3\n",
        "    eval $command >${stdoutR} 2>${stderrF} &\n"
        '    headrace_wait_for "path=/${tape_path}/${dirname}" "${stdoutR}"\n',
        1,
    ),
    ("sleep 2 # needed if request is still RUNNING", 'headrace_wait_request "${request_url}"', 6),
    ("# Set up for tests\noneTimeSetUp() {", WAIT_FOR + "# Set up for tests\noneTimeSetUp() {", 1),
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ada_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    where = Path(os.environ.get("HEADRACE_ADA_DIR") or cache / "headrace/SpiderScripts")
    if not (where / "ada/ada").is_file() or not (where / "tests/integration_test.sh").is_file():
        pytest.skip(f"ada is not at {where} (scripts/install-test-deps.sh clones sara-nl/SpiderScripts there)")
    return where


def patched_suite(source: str) -> str:
    for old, new, count in PATCHES:
        assert source.count(old) == count, f"the upstream suite changed: {old!r} occurs {source.count(old)} times"
        source = source.replace(old, new)
    return source


def results(output: str) -> dict[str, bool]:
    """Each check shunit2 ran, and whether it passed (no assertion failed in it)."""
    passed: dict[str, bool] = {}
    current = None
    for line in ANSI.sub("", output).splitlines():
        if re.fullmatch(r"test_\w+", line.strip()):
            current = line.strip()
            passed[current] = True
        elif current and ("ASSERT:" in line or "shunit2:ERROR" in line):
            passed[current] = False
    return passed


@pytest.fixture(scope="module")
def tape_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("ada")
    env = {"HEADRACE_TAPE_SIMULATOR": str(base / "tape"), "HEADRACE_TAPE_FLUSH_AGE": "0.2"}
    srv = Server(data=base / "data", cli_config=base / "cli.json", env_extra=env).start()
    yield srv
    srv.stop()


def test_ada_integration_suite(tape_server: Server, tmp_path: Path) -> None:
    for program in ("bash", "curl", "jq", "rclone", "fallocate"):
        require(program)
    if not (SHUNIT2_DIR / "shunit2").is_file():
        pytest.skip("shunit2 is not installed (scripts/install-test-deps.sh installs it)")
    upstream = ada_dir()
    srv = tape_server
    name, key, uid = add_user(srv, "adauser")
    home = f"/users/{name}"
    with srv.door() as door, srv.api() as api:
        for d in ("/users", home, f"{home}/tape"):
            assert door.request("MKCOL", d).status_code == 201
        assert api.post(f"/api/v1/namespace{home}", json={"action": "chown", "uid": uid}).status_code == 200
        assert api.post(f"/api/v1/namespace{home}/tape", json={"action": "chown", "uid": uid}).status_code == 200
        r = api.post(f"/api/v1/namespace{home}/tape", json={"action": "qos", "target": "tape"})
        assert r.status_code == 200, r.text
    activities = "DOWNLOAD,UPLOAD,DELETE,MANAGE,LIST,READ_METADATA,UPDATE_METADATA,STAGE"
    r = http(
        "POST",
        f"{srv.door_url}{home}/",
        auth=(name, key),
        headers={"Content-Type": "application/macaroon-request"},
        json={"caveats": [f"activity:{activities}"], "validity": "P1D"},
    )
    assert r.status_code == 200, r.text
    macaroon = r.json()["macaroon"]

    work = tmp_path / "ada"
    (work / "tests").mkdir(parents=True)
    shutil.copytree(upstream / "ada", work / "ada")
    suite = (upstream / "tests/integration_test.sh").read_text()
    (work / "tests/integration_test.sh").write_text(patched_suite(suite))
    (work / "tests/test.conf").write_text(
        f'user="{name}"\nchroot=false\napi="{srv.api_url}/api/v1"\nwebdav_url="{srv.door_url}/"\n'
        f'user_path="users/{name}/"\ndisk_path="users/{name}/disk"\ntape_path="users/{name}/tape"\n'
        'token_file="tokenfile_test.conf"\n'
    )
    tokenfile = work / "tokenfile_test.conf"
    tokenfile.write_text(
        f"[tokenfile_test]\ntype = webdav\nurl = {srv.door_url}/\nvendor = other\nbearer_token = {macaroon}\n"
    )
    tokenfile.chmod(0o600)  # ada refuses a token file others may read
    (work / "home").mkdir()
    env = {**os.environ, "HOME": str(work / "home"), "PATH": f"{SHUNIT2_DIR}:{os.environ['PATH']}"}
    env.pop("SHUNIT_COLOR", None)
    # Its own session: the `ada --events` it leaves in the background are stopped with it.
    proc = subprocess.Popen(
        ["bash", "tests/integration_test.sh"],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    output = out.decode(errors="replace")
    (tmp_path / "ada-output.log").write_text(output)
    passed = results(output)
    assert len(passed) == 34, output
    failed = sorted(t for t, ok in passed.items() if not ok)
    summary = f"ada integration suite: {sum(passed.values())}/34 passed; failed: {', '.join(failed) or 'none'}"
    print(summary)
    assert not failed, f"{summary}\n{output}"


def test_ada_finds_the_webdav_door_from_doors(tmp_path: Path) -> None:
    """ada --upload/--download without a door in its token file asks `/doors` for an https door whose root,
    read and write paths are `/`: the door's public URL (behind a TLS terminator) is what it must find."""
    require("bash")
    require("jq")
    ada = ada_dir() / "ada/ada"
    public = "https://webdav.example.org:8443"
    srv = Server(
        data=tmp_path / "data", cli_config=tmp_path / "cli.json", env_extra={"HEADRACE_PUBLIC_DOOR_URL": public}
    ).start()
    try:
        name, key, _ = add_user(srv, "adadoor")
        script = (
            f". {ada}\n"
            "debug=false; dry_run=false; tokenfile=''\n"
            'curl_options_common=(-H "accept: application/json" --fail --silent --show-error)\n'
            f'curl_authorization=(--user "{name}:{key}")\n'
            f'get_webdav_door "{srv.api_url}/api/v1"\n'
        )
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    finally:
        srv.stop()
    assert out.returncode == 0 and out.stdout.strip() == public, (out.stdout, out.stderr)
