"""cadaver (the neon-based command-line WebDAV client) driven through its stdin against a real door.

Credentials come from a ~/.netrc in a temporary HOME. cadaver exits 0 whatever its commands did, so each
command's own "succeeded."/"failed:" line is what the tests check, and the outcome is checked on the server.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from harness import Server

from .tools import api_path, require, run

pytestmark = pytest.mark.interop

CUSTOM_NS = "http://webdav.org/cadaver/custom-properties/"


@dataclass
class Cadaver:
    srv: Server
    home: Path
    workdir: Path

    def __call__(self, *commands: str, start: str = "/") -> dict[str, str]:
        """Run commands in one session; returns each command's output, keyed by the command line."""
        env = {"HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        script = "\n".join([*commands, "quit", ""])
        out = run(["cadaver", self.srv.door_url + start], env=env, input=script, timeout=60, cwd=str(self.workdir))
        # Every command's output follows its echo after the "dav:/path/> " prompt.
        pieces = re.split(r"^dav:\S*> ", out.stdout, flags=re.MULTILINE)[1:]
        results: dict[str, str] = {}
        for piece in pieces:
            line, _, rest = piece.partition("\n")
            assert line.strip() not in results, f"repeated command {line!r}: give each a distinct spelling"
            results[line.strip()] = rest
        missing = [c for c in commands if c not in results]
        assert not missing, f"cadaver did not run {missing}:\n{out.stdout}\n{out.stderr}"
        return results


@pytest.fixture(scope="module")
def cadaver(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Cadaver:
    require("cadaver")
    home = tmp_path_factory.mktemp("cadaver-home")
    netrc = home / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login {server.auth[0]} password {server.auth[1]}\n")
    netrc.chmod(0o600)
    work = tmp_path_factory.mktemp("cadaver-work")
    return Cadaver(server, home, work)


def ok(results: dict[str, str], *commands: str) -> None:
    for c in commands:
        assert "succeeded" in results[c] and "failed" not in results[c], f"{c}: {results[c]}"


def door_get(srv: Server, path: str) -> tuple[int, bytes]:
    with srv.door() as door:
        r = door.get(quote(path))
    return r.status_code, r.content


def test_mkcol_put_ls_get(cadaver: Cadaver, server: Server) -> None:
    data = random.Random(1).randbytes(200_000)
    (cadaver.workdir / "up load ü.bin").write_bytes(data)
    (cadaver.workdir / "empty.txt").write_bytes(b"")
    res = cadaver(
        "mkcol cad1",
        "cd cad1",
        'put "up load ü.bin"',
        "put empty.txt",
        "mkcol sub",
        "ls",
        'get "up load ü.bin" back.bin',
        "get empty.txt back-empty.txt",
        "mkcol /cad1/sub",
        "get missing.txt",
    )
    ok(res, "mkcol cad1", 'put "up load ü.bin"', "put empty.txt", "mkcol sub", "ls")
    ok(res, 'get "up load ü.bin" back.bin', "get empty.txt back-empty.txt")
    assert "failed" in res["mkcol /cad1/sub"] and "405" in res["mkcol /cad1/sub"]  # it exists
    assert "404" in res["get missing.txt"]
    listing = res["ls"]
    assert re.search(r"up load ü\.bin\s+200000\b", listing), listing
    assert re.search(r"empty\.txt\s+0\b", listing), listing
    assert re.search(r"Coll:\s+sub\b", listing), listing
    assert door_get(server, "/cad1/up load ü.bin") == (200, data)
    assert door_get(server, "/cad1/empty.txt") == (200, b"")
    assert (cadaver.workdir / "back.bin").read_bytes() == data
    assert (cadaver.workdir / "back-empty.txt").read_bytes() == b""


def test_dead_properties(cadaver: Cadaver, server: Server) -> None:
    (cadaver.workdir / "props.txt").write_text("p")
    res = cadaver(
        "mkcol cad2",
        "put props.txt cad2/props.txt",
        "propset cad2/props.txt colour blue",
        "propset cad2/props.txt shape 'round and big'",
        "propget cad2/props.txt colour",
        "propget cad2/props.txt",
        "propnames cad2/props.txt",
        "propdel cad2/props.txt shape",
        "propset cad2 dirprop yes",
        "propget cad2 dirprop",
    )
    ok(res, "propset cad2/props.txt colour blue", "propset cad2/props.txt shape 'round and big'")
    ok(res, "propdel cad2/props.txt shape", "propset cad2 dirprop yes")
    assert "Value of colour is: blue" in res["propget cad2/props.txt colour"]
    every = res["propget cad2/props.txt"]
    assert f"{CUSTOM_NS} colour = blue" in every and "round and big" in every
    assert "DAV: getcontentlength = 1" in every
    assert f"{CUSTOM_NS} shape" in res["propnames cad2/props.txt"]
    assert "Value of dirprop is: yes" in res["propget cad2 dirprop"]
    # The server keeps them as extended attributes named in Clark notation.
    with server.api() as api:
        info = api.get(api_path("/cad2/props.txt"), params={"xattr": "true"}).json()
        dir_info = api.get(api_path("/cad2"), params={"xattr": "true"}).json()
    assert info["extendedAttributes"] == {f"{{{CUSTOM_NS}}}colour": "blue"}
    assert dir_info["extendedAttributes"] == {f"{{{CUSTOM_NS}}}dirprop": "yes"}


def test_copy_move_delete(cadaver: Cadaver, server: Server) -> None:
    (cadaver.workdir / "c.txt").write_text("copy me")
    res = cadaver(
        "mkcol cad3",
        "mkcol cad3/d",
        "put c.txt cad3/d/c.txt",
        "propset cad3/d/c.txt tag keep",
        "copy cad3/d cad3/d2",
        "move cad3/d2/c.txt 'cad3/moved ü.txt'",
        "copy cad3/d/c.txt cad3/c-copy.txt",
        "delete cad3/d/c.txt",
        "rmcol cad3/d",
        "propget 'cad3/moved ü.txt' tag",
        "ls cad3",
    )
    ok(res, "copy cad3/d cad3/d2", "move cad3/d2/c.txt 'cad3/moved ü.txt'", "copy cad3/d/c.txt cad3/c-copy.txt")
    ok(res, "delete cad3/d/c.txt", "rmcol cad3/d")
    assert "Value of tag is: keep" in res["propget 'cad3/moved ü.txt' tag"]  # dead properties travel along
    assert door_get(server, "/cad3/moved ü.txt") == (200, b"copy me")
    assert door_get(server, "/cad3/c-copy.txt") == (200, b"copy me")
    assert door_get(server, "/cad3/d")[0] == 404
    assert door_get(server, "/cad3/d2/c.txt")[0] == 404
    with server.api() as api:
        d2 = api.get(api_path("/cad3/d2"), params={"children": "true"}).json()
    assert d2["fileType"] == "DIR" and d2["children"] == []
    listing = res["ls cad3"]
    assert "moved ü.txt" in listing and "c-copy.txt" in listing and "d2" in listing


def test_locks(cadaver: Cadaver, server: Server) -> None:
    """cadaver keeps the tokens of its own locks and submits them with its changes."""
    (cadaver.workdir / "l1.txt").write_text("one")
    (cadaver.workdir / "l2.txt").write_text("two")
    res = cadaver(
        "mkcol cad4",
        "put l1.txt cad4/f.txt",
        "lock cad4/f.txt",
        "discover cad4/f.txt",
        "put l2.txt cad4/f.txt",
        "propset cad4/f.txt locked yes",
        "lock cad4/new.txt",
        "lock cad4",
        "unlock cad4/f.txt",
        "unlock cad4/new.txt",
        "lock /cad4",
        "put l1.txt cad4/member.txt",
        "unlock /cad4",
        "discover /cad4/f.txt",
    )
    ok(res, "lock cad4/f.txt", "put l2.txt cad4/f.txt", "propset cad4/f.txt locked yes", "lock cad4/new.txt")
    ok(res, "unlock cad4/f.txt", "unlock cad4/new.txt", "lock /cad4", "put l1.txt cad4/member.txt", "unlock /cad4")
    discovered = res["discover cad4/f.txt"]
    assert "opaquelocktoken:" in discovered and "Scope: exclusive" in discovered, discovered
    # An exclusive depth-infinity lock on the collection conflicts with the locks on its members.
    assert "423" in res["lock cad4"]
    assert "no locks found" in res["discover /cad4/f.txt"]
    assert door_get(server, "/cad4/f.txt") == (200, b"two")
    assert door_get(server, "/cad4/new.txt") == (200, b"")  # LOCK on an unmapped URL made an empty file
    # Without cadaver's tokens, the lock it took would have refused this PUT; now it is gone.
    with server.door() as door:
        assert door.put("/cad4/f.txt", content=b"three").status_code == 204
