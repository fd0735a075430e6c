"""What every `headrace` sub-command shares: one-line errors and exit codes, the client, JSON output.

Errors never show a traceback: `HeadraceGroup.main` turns each into one line on stderr that starts with
`headrace: `, and exits 1 (the server or the system refused), 2 (the command line is wrong) or 130
(interrupted). Set HEADRACE_DEBUG=1 to see the traceback of an unexpected error.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

from headrace.client import Client, HeadraceClientError
from headrace.extras import MissingExtra

# Typer >= 0.29 carries its own copy of click; older ones raise click's own exceptions. Catch either.
_COMMAND_LINE_ERRORS: tuple[type[Exception], ...] = (typer.TyperException,)
_ABORTS: tuple[type[BaseException], ...] = (typer.Abort, KeyboardInterrupt)
try:
    import click

    _COMMAND_LINE_ERRORS += (click.ClickException,)
    _ABORTS += (click.exceptions.Abort,)
except ImportError:  # pragma: no cover
    pass

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Progress bars and notes go to stderr, so that stdout carries only the data asked for.
err_console = Console(stderr=True, highlight=False)


class CliError(Exception):
    """An error to report as one line, with the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def usage_error(message: str) -> NoReturn:
    raise CliError(message, EXIT_USAGE)


def one_line(message: str) -> str:
    return message.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").strip()


def report(message: str) -> None:
    """Write `headrace: <message>` as one line on stderr."""
    try:
        sys.stderr.write(f"headrace: {one_line(message)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _os_error(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {text}" if exc.filename else text


class HeadraceGroup(TyperGroup):
    """The root command: runs a sub-command and maps whatever it raises to one line and an exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        _tolerant_output()
        try:
            rv = super().main(args, prog_name or "headrace", complete_var, False, windows_expand_args, **extra)
            code = rv if isinstance(rv, int) else 0
        except _COMMAND_LINE_ERRORS as exc:
            code = _command_line_error(exc)
        except _ABORTS:
            report("interrupted")
            code = EXIT_INTERRUPTED
        except CliError as exc:
            report(exc.message)
            code = exc.code
        except (HeadraceClientError, MissingExtra) as exc:
            report(str(exc))
            code = EXIT_ERROR
        except BrokenPipeError:
            # The reader went away (`headrace ls | head`): stop quietly.
            _silence_stdout()
            code = EXIT_ERROR
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                _silence_stdout()
            else:
                report(_os_error(exc))
            code = EXIT_ERROR
        except Exception as exc:
            if os.environ.get("HEADRACE_DEBUG"):
                raise
            report(f"internal error: {type(exc).__name__}: {exc} (HEADRACE_DEBUG=1 shows the traceback)")
            code = EXIT_ERROR
        if not standalone_mode:
            return code
        try:
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            _silence_stdout()
        sys.exit(code)


def _tolerant_output() -> None:
    """Names are UTF-8 on the server; a terminal in another encoding gets escapes rather than a crash."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def _command_line_error(exc: Any) -> int:
    """A usage error from typer/click: the one-line message, or the help when no arguments were given."""
    ctx = getattr(exc, "ctx", None)
    code = int(getattr(exc, "exit_code", EXIT_USAGE))
    if type(exc).__name__ == "NoArgsIsHelpError":
        # Its message is the help text; typer's rich formatter has already printed it and left it empty.
        text = str(exc.format_message())
        if text.strip():
            sys.stderr.write(text + "\n")
        return code
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None and code == EXIT_USAGE else ""
    report(message + hint)
    return code


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@contextmanager
def client() -> Iterator[Client]:
    """A client for the configured server (HEADRACE_CONFIG, HEADRACE_* overrides)."""
    with Client.from_config() as c:
        yield c


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def print_json_array(items: Iterable[Any]) -> None:
    """A JSON array written element by element, so that a long listing never sits in memory."""
    out = sys.stdout
    first = True
    for item in items:
        out.write(("[\n  " if first else ",\n  ") + json.dumps(item, ensure_ascii=False))
        first = False
    out.write("[]\n" if first else "\n]\n")


def json_option() -> Any:
    return typer.Option("--json", help="Print machine-readable JSON only.")
