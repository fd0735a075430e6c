"""The `headrace` command against a real server: namespace commands, transfers, tokens, and its errors.

The CLI runs as a subprocess (`python -m headrace.cli.main`) with HEADRACE_CONFIG pointing at the config
the server wrote, exactly as a user's shell would. Each test works in a directory of its own, since the
module's server is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from harness import Server, free_port

CLI_ENV_KEYS = ("HEADRACE_TOKEN", "HEADRACE_USER", "HEADRACE_KEY", "HEADRACE_DOOR_URL", "HEADRACE_API_URL")


def run(srv: Server | Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`headrace ARGS` with the CLI config of `srv` (or the config file `srv`)."""
    e = {k: v for k, v in os.environ.items() if k not in CLI_ENV_KEYS}
    e["HEADRACE_CONFIG"] = str(srv if isinstance(srv, Path) else srv.cli_config)
    e["PYTHONIOENCODING"] = "utf-8"
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "headrace.cli.main", *args],
        env=e,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert result.stderr == "", result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The error line, after checking the contract: exit code, one line on stderr, no traceback."""
    assert result.returncode == code, f"exit {result.returncode}, stdout={result.stdout!r} stderr={result.stderr!r}"
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("headrace: "), lines[0]
    return lines[0]


def put_bytes(srv: Server, path: str, data: bytes) -> None:
    with srv.door() as door:
        assert door.put(path, content=data).status_code in (201, 204)


def ls_names(srv: Server, path: str) -> list[str]:
    return ok(run(srv, "ls", path)).splitlines()


# -- namespace commands ---------------------------------------------------------------------------------------


def test_mkdir_ls_stat(server: Server) -> None:
    assert ok(run(server, "mkdir", "/cli-ns")) == ""
    made = json.loads(ok(run(server, "mkdir", "-p", "/cli-ns/a/b/c", "--json")))
    assert made == {"status": "success", "paths": ["/cli-ns/a/b/c"]}
    ok(run(server, "mkdir", "-p", "/cli-ns/a/b"))  # exists: fine with -p
    put_bytes(server, "/cli-ns/file.txt", b"hello")

    assert ls_names(server, "/cli-ns") == ["a", "file.txt"]
    assert ls_names(server, "/cli-ns/file.txt") == ["file.txt"]
    long = ok(run(server, "ls", "-l", "/cli-ns")).splitlines()
    assert long[0].startswith("drwx") and long[0].endswith(" a")
    assert long[1].startswith("-rw") and " 5 " in long[1] and long[1].endswith(" file.txt")

    listing = json.loads(ok(run(server, "ls", "--json", "/cli-ns")))
    assert [(e["path"], e["fileType"]) for e in listing] == [("/cli-ns/a", "DIR"), ("/cli-ns/file.txt", "REGULAR")]
    assert listing[1]["size"] == 5
    assert listing[1]["checksums"] == [{"type": "ADLER32", "value": f"{zlib.adler32(b'hello'):08x}"}]
    assert json.loads(ok(run(server, "ls", "--json", "/cli-ns/a/b/c"))) == []

    info = json.loads(ok(run(server, "stat", "--json", "/cli-ns/file.txt")))
    assert info["path"] == "/cli-ns/file.txt"
    assert info["fileType"] == "REGULAR" and info["size"] == 5 and info["fileLocality"] == "ONLINE"
    text = ok(run(server, "stat", "/cli-ns/a"))
    assert "Path:" in text and "/cli-ns/a" in text and "DIR" in text
    assert "ADLER32:" in ok(run(server, "stat", "/cli-ns/file.txt"))

    line = one_line_error(run(server, "mkdir", "/cli-ns/a"))
    assert line == "headrace: /cli-ns/a: File exists: /cli-ns/a (412)"
    line = one_line_error(run(server, "mkdir", "/cli-ns/missing/x"))
    assert "/cli-ns/missing/x" in line and "(409)" in line


def test_mv_and_rm(server: Server) -> None:
    ok(run(server, "mkdir", "-p", "/cli-mv/dir"))
    put_bytes(server, "/cli-mv/one", b"1")
    put_bytes(server, "/cli-mv/two", b"22")

    assert ok(run(server, "mv", "/cli-mv/one", "/cli-mv/uno")) == ""
    moved = json.loads(ok(run(server, "mv", "--json", "/cli-mv/two", "/cli-mv/dir")))  # into the directory
    assert moved == {"status": "success", "source": "/cli-mv/two", "destination": "/cli-mv/dir/two"}
    assert ls_names(server, "/cli-mv") == ["dir", "uno"]
    assert ls_names(server, "/cli-mv/dir") == ["two"]
    one_line_error(run(server, "mv", "/cli-mv/none", "/cli-mv/x"))
    ok(run(server, "mkdir", "-p", "/cli-mv/other/dir/keep"))
    line = one_line_error(run(server, "mv", "/cli-mv/dir", "/cli-mv/other"))  # onto other/dir: not empty
    assert line == "headrace: /cli-mv/other/dir: Directory not empty: /cli-mv/other/dir (409)"
    assert ls_names(server, "/cli-mv/other/dir") == ["keep"]
    ok(run(server, "rm", "-r", "/cli-mv/other"))

    line = one_line_error(run(server, "rm", "/cli-mv/dir"))
    assert "Directory not empty" in line and "(409)" in line
    assert ok(run(server, "rm", "/cli-mv/uno")) == ""
    removed = json.loads(ok(run(server, "rm", "-r", "--json", "/cli-mv/dir")))
    assert removed == {"status": "success", "paths": ["/cli-mv/dir"]}
    assert ls_names(server, "/cli-mv") == []
    assert one_line_error(run(server, "rm", "/cli-mv/uno")).endswith("No such file or directory: /cli-mv/uno (404)")


def test_ls_pages_through_a_big_directory(server: Server) -> None:
    """More children than one page (1000): every name once, in order."""
    ok(run(server, "mkdir", "/cli-big"))
    names = [f"d{i:05d}" for i in range(1005)]
    with server.api() as api:
        for n in names:
            assert api.post("/api/v1/namespace/cli-big", json={"action": "mkdir", "name": n}).status_code == 200
    assert ls_names(server, "/cli-big") == names
    assert [e["fileName"] for e in json.loads(ok(run(server, "ls", "--json", "/cli-big")))] == names


# -- transfers ------------------------------------------------------------------------------------------------


def make_tree(top: Path) -> dict[str, bytes]:
    files = {
        "empty": b"",
        "big.bin": os.urandom(5 * 1024 * 1024),
        "données ü✓.txt": "ünïcödé\n".encode(),
        "sub/readme.md": b"# sub\n",
        "sub/ordner-ß/deep.h5": os.urandom(70_000),
        "sub/100% sure?.txt": b"percent and question mark",
    }
    for rel, data in files.items():
        p = top / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (top / "sub" / "empty-dir").mkdir()
    return files


def tree_of(top: Path) -> dict[str, bytes | None]:
    return {p.relative_to(top).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(top.rglob("*"))}


def test_put_get_tree_round_trip(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "run-ü"
    files = make_tree(src)
    ok(run(server, "mkdir", "/cli-tree"))

    assert ok(run(server, "put", "-r", str(src), "/cli-tree")) == ""  # into the existing directory
    assert ls_names(server, "/cli-tree") == ["run-ü"]
    assert sorted(ls_names(server, "/cli-tree/run-ü/sub")) == sorted(
        ["100% sure?.txt", "empty-dir", "ordner-ß", "readme.md"]
    )
    big = json.loads(ok(run(server, "stat", "--json", "/cli-tree/run-ü/big.bin")))
    assert big["size"] == len(files["big.bin"])
    assert big["checksums"] == [{"type": "ADLER32", "value": f"{zlib.adler32(files['big.bin']):08x}"}]

    out = tmp_path / "out"
    ok(run(server, "get", "-r", "/cli-tree/run-ü", str(out)))  # `out` does not exist: it becomes the copy
    assert tree_of(out) == tree_of(src)
    assert tree_of(out)["empty"] == b"" and tree_of(out)["sub/empty-dir"] is None

    into = tmp_path / "into"
    into.mkdir()
    ok(run(server, "get", "-r", "/cli-tree/run-ü", str(into)))  # an existing directory: copied inside it
    assert tree_of(into / "run-ü") == tree_of(src)
    assert not [p for p in tmp_path.rglob("*.part")]

    # Putting the tree again onto the now existing copy merges into it, as cp -r does.
    ok(run(server, "put", "-r", str(src), "/cli-tree/again"))
    ok(run(server, "put", "-r", str(src), "/cli-tree/again"))
    assert "run-ü" in ls_names(server, "/cli-tree/again")


def test_put_get_single_files(server: Server, tmp_path: Path) -> None:
    ok(run(server, "mkdir", "/cli-files"))
    a, b = tmp_path / "a.dat", tmp_path / "b.dat"
    a.write_bytes(b"A" * 1000)
    b.write_bytes(b"")

    ok(run(server, "put", str(a), "/cli-files"))  # onto a directory: inside it
    ok(run(server, "put", str(a), "/cli-files/renamed.dat"))  # onto a new name: that name
    ok(run(server, "put", str(a), "/cli-files/renamed.dat"))  # again: replaces it
    ok(run(server, "mkdir", "/cli-files/many"))
    ok(run(server, "put", str(a), str(b), "/cli-files/many"))
    assert ls_names(server, "/cli-files") == ["a.dat", "many", "renamed.dat"]
    assert ls_names(server, "/cli-files/many") == ["a.dat", "b.dat"]

    local = tmp_path / "dl"
    local.mkdir()
    ok(run(server, "get", "/cli-files/renamed.dat", str(local)))
    ok(run(server, "get", "/cli-files/a.dat", str(local / "named.dat")))
    ok(run(server, "get", "/cli-files/many/a.dat", "/cli-files/many/b.dat", str(local / "")))
    assert (local / "renamed.dat").read_bytes() == a.read_bytes()
    assert (local / "named.dat").read_bytes() == a.read_bytes()
    assert (local / "b.dat").read_bytes() == b""

    assert "is a directory (use -r" in one_line_error(run(server, "put", str(tmp_path), "/cli-files"), 2)
    assert "is a directory (use -r" in one_line_error(run(server, "get", "/cli-files/many", str(local)), 2)
    line = one_line_error(run(server, "put", str(tmp_path / "nope.dat"), "/cli-files"))
    assert "nope.dat: No such file or directory" in line
    line = one_line_error(run(server, "put", str(a), str(b), "/cli-files/renamed.dat"))
    assert "Not a directory" in line
    line = one_line_error(run(server, "put", str(a), "/cli-files/no/such/dir/x"))
    assert "(409)" in line
    line = one_line_error(run(server, "get", "/cli-files/nothing", str(local)))
    assert line == "headrace: /cli-files/nothing: No such file or directory: /cli-files/nothing (404)"


# -- tokens ---------------------------------------------------------------------------------------------------


def test_token_create_and_use(server: Server, tmp_path: Path) -> None:
    ok(run(server, "mkdir", "-p", "/cli-tok/allowed/in", "/cli-tok/other"))
    put_bytes(server, "/cli-tok/allowed/data.bin", b"visible")
    put_bytes(server, "/cli-tok/other/secret.bin", b"hidden")

    answer = json.loads(ok(run(server, "token", "create", "--path", "/cli-tok/allowed", "--json")))
    assert set(answer) == {"macaroon", "uri"} and answer["uri"]["target"].endswith("/cli-tok/allowed")
    token = ok(run(server, "token", "create", "--path", "/cli-tok/allowed", "--activity", "DOWNLOAD,LIST")).strip()
    assert token and "\n" not in token and " " not in token
    env = {"HEADRACE_TOKEN": token}

    assert ok(run(server, "ls", "/cli-tok/allowed", env=env)).splitlines() == ["data.bin", "in"]
    ok(run(server, "get", "/cli-tok/allowed/data.bin", str(tmp_path / "got"), env=env))
    assert (tmp_path / "got").read_bytes() == b"visible"

    line = one_line_error(run(server, "ls", "/cli-tok/other", env=env))
    assert line.startswith("headrace: /cli-tok/other: Permission denied") and line.endswith("(403)")
    one_line_error(run(server, "get", "/cli-tok/other/secret.bin", str(tmp_path / "no"), env=env))
    assert not (tmp_path / "no").exists()
    line = one_line_error(run(server, "put", str(tmp_path / "got"), "/cli-tok/allowed/new", env=env))
    assert "(403)" in line
    one_line_error(run(server, "mkdir", "/cli-tok/allowed/x", env=env))

    # An address caveat that the test client does not meet: refused as unauthenticated.
    far = ok(run(server, "token", "create", "--path", "/cli-tok/allowed", "--ip", "192.0.2.0/24")).strip()
    assert "(401)" in one_line_error(run(server, "ls", "/cli-tok/allowed", env={"HEADRACE_TOKEN": far}))
    assert "(401)" in one_line_error(run(server, "ls", "/", env={"HEADRACE_TOKEN": "not-a-macaroon"}))


def test_token_usage_errors(server: Server) -> None:
    line = one_line_error(run(server, "token", "create", "--validity", "one hour"), 2)
    assert "--validity" in line
    assert "--validity" in one_line_error(run(server, "token", "create", "--validity", "-PT1H"), 2)
    assert "--activity" in one_line_error(run(server, "token", "create", "--activity", "DOWNLOAD,FLY"), 2)
    assert "--ip" in one_line_error(run(server, "token", "create", "--ip", "300.1.2.3/8"), 2)


# -- errors ---------------------------------------------------------------------------------------------------


def test_missing_path_is_one_line(server: Server) -> None:
    line = one_line_error(run(server, "stat", "/nope"))
    assert line == "headrace: /nope: No such file or directory: /nope (404)"
    assert one_line_error(run(server, "ls", "/nope")) == line
    assert one_line_error(run(server, "ls", "--json", "/nope")) == line


def test_usage_errors_are_one_line(server: Server) -> None:
    assert "Missing argument" in one_line_error(run(server, "stat"), 2)
    assert "No such option" in one_line_error(run(server, "ls", "--frobnicate"), 2)
    assert "No such command" in one_line_error(run(server, "frobnicate"), 2)
    assert one_line_error(run(server, "put", "only-one-arg"), 2)


def test_bad_credentials(server: Server) -> None:
    line = one_line_error(run(server, "ls", "/", env={"HEADRACE_KEY": "wrong"}))
    assert line == "headrace: /: Invalid username or key (401)"


def test_server_down(fresh_server: Server) -> None:
    fresh_server.start()
    assert run(fresh_server, "ls", "/").returncode == 0
    fresh_server.stop()
    for args in (["ls", "/"], ["stat", "/x"], ["mkdir", "/x"], ["put", __file__, "/x"], ["token", "create"]):
        line = one_line_error(run(fresh_server, *args))
        assert "is not reachable" in line and "headrace up" in line, line
        assert f"127.0.0.1:{fresh_server.api_port}" in line or f"127.0.0.1:{fresh_server.door_port}" in line


def test_no_config_and_no_server(tmp_path: Path) -> None:
    port = free_port()
    line = one_line_error(run(tmp_path / "missing.json", "ls", env={"HEADRACE_API_URL": f"http://127.0.0.1:{port}"}))
    assert f"127.0.0.1:{port} is not reachable" in line and "headrace up" in line and "missing.json" in line


@pytest.mark.parametrize("args", [["--help"], ["put", "--help"], ["token", "create", "--help"]])
def test_help(server: Server, args: list[str]) -> None:
    assert "Usage" in ok(run(server, *args))
