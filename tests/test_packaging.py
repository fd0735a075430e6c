"""Packaging: the SDK and the CLI load without the server's modules, the CLI tells its version and completes,
and an option whose extra is not installed says which to install in one line (the module is made missing in
the subprocess: `sys.modules[name] = None` makes its import fail as an uninstalled one does)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import headrace

ROOT = Path(__file__).resolve().parents[1]
SERVER_MODULES = ["sqlalchemy", "alembic", "starlette", "fastapi", "granian", "uvicorn", "psycopg", "confluent_kafka"]


def _python(code: str, tmp_path: Path, *, missing: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in missing)
    env = {
        **os.environ,
        "HEADRACE_CONFIG": str(tmp_path / "cli.json"),
        "HEADRACE_DATA": str(tmp_path / "data"),
        # no server answers there (the demo would use one that did)
        "HEADRACE_API_URL": "http://127.0.0.1:1",
        "HEADRACE_DOOR_URL": "http://127.0.0.1:2",
    }
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )


def _headrace(args: list[str], tmp_path: Path, *, missing: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return _python(
        f"from headrace.cli.main import app\nsys.argv = ['headrace', *{args!r}]\napp()", tmp_path, missing=missing
    )


@pytest.mark.parametrize(
    "module", ["headrace.client", "headrace.client.functions", "headrace.client.events", "headrace.cli.main"]
)
def test_sdk_and_cli_load_without_the_server(module: str, tmp_path: Path) -> None:
    code = f"import json, {module}\nprint(json.dumps(sorted(m for m in {SERVER_MODULES!r} if m in sys.modules)))"
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_sdk_works_with_the_server_modules_missing(tmp_path: Path) -> None:
    """Not just unloaded: the client package needs none of them installed."""
    done = _python(
        "from headrace.client import Client, ClientConfig\nimport headrace.client.functions, headrace.client.events\n"
        "print('ok')",
        tmp_path,
        missing=tuple(SERVER_MODULES),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_version(tmp_path: Path) -> None:
    done = _headrace(["--version"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"headrace {headrace.__version__}\n"
    with open(ROOT / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["version"] == headrace.__version__


def test_shell_completion(tmp_path: Path) -> None:
    env = {**os.environ, "_HEADRACE_COMPLETE": "complete_bash", "COMP_WORDS": "headrace ev", "COMP_CWORD": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "headrace.cli.main"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["events"]
    # --show-completion names the shell it was started from (typer asks shellingham, which walks up the process
    # tree), so start it from bash: under `make` the nearest shell is sh, for which typer has no script.
    code = "from headrace.cli.main import app\nsys.argv = ['headrace', '--show-completion']\napp()"
    command = shlex.join([sys.executable, "-c", f"import sys\n{code}"])
    shown = subprocess.run(
        ["bash", "-c", f"{command}; exit $?"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )  # "; exit $?": bash -c would otherwise exec the command, and its parent would no longer be bash
    assert shown.returncode == 0, shown.stderr
    assert "_HEADRACE_COMPLETE" in shown.stdout


@pytest.mark.parametrize(
    ("args", "module", "message"),
    [
        (
            ["up", "--db", "postgresql://u@127.0.0.1:1/x"],
            "psycopg",
            "headrace: --db postgresql://... needs psycopg, which is not installed: pip install 'headrace[postgresql]'",
        ),
        (
            ["door", "--db", "postgres://u@127.0.0.1:1/x"],
            "psycopg",
            "headrace: --db postgresql://... needs psycopg, which is not installed: pip install 'headrace[postgresql]'",
        ),
        (
            ["up", "--kafka", "127.0.0.1:1"],
            "confluent_kafka",
            "headrace: --kafka needs confluent_kafka, which is not installed: pip install 'headrace[kafka]'",
        ),
        (
            ["invoker", "--kafka", "127.0.0.1:1"],
            "confluent_kafka",
            "headrace: --kafka needs confluent_kafka, which is not installed: pip install 'headrace[kafka]'",
        ),
        (
            ["demo", "--files", "1"],
            "h5py",
            "headrace: headrace demo (it writes the run's HDF5 files) needs h5py, which is not installed: "
            "pip install 'headrace[science]'",
        ),
    ],
)
def test_missing_extra_is_one_line(args: list[str], module: str, message: str, tmp_path: Path) -> None:
    done = _headrace(args, tmp_path, missing=(module,))
    assert done.returncode == 1
    assert done.stderr == message + "\n"
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_demo_without_pyfai_names_the_science_extra(tmp_path: Path) -> None:
    """The embedded server's sandboxes run this Python: without pyFAI the integration function could only
    fail, so the demo refuses to start it."""
    done = _headrace(["demo", "--files", "1", "--data", str(tmp_path / "data")], tmp_path, missing=("pyFAI",))
    assert done.returncode == 1
    assert done.stderr == (
        "headrace: headrace demo (its functions, on the embedded server) needs pyFAI, which is not installed: "
        "pip install 'headrace[science]'\n"
    )
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(("function", "module"), [("azint", "pyFAI"), ("summary", "matplotlib")])
def test_example_function_names_the_science_extra(function: str, module: str, tmp_path: Path) -> None:
    """On a server without the extra, the XFEL functions fail to load with a message that names it (the
    activation's error), not a bare ModuleNotFoundError."""
    path = ROOT / "examples" / "xfel" / f"{function}.py"
    done = _python(f"import runpy\nrunpy.run_path({str(path)!r})", tmp_path, missing=(module,))
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: needs pip install 'headrace[science]' on the server: ")
    assert module in last
