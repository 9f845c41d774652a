"""Shared CLI plumbing: the root parser, one-line errors, JSON/table output, logging to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from ct_tune import CTTuneError, __version__

PROG = "ct-tune"


@dataclass
class CommandResult:
    """What a command returns: a JSON-able payload and how to show it to a human."""

    payload: dict[str, Any]
    render: Callable[[], None] | None = None  # prints the human form to stdout; default: key: value lines
    exit_code: int = 0
    emitted: bool = False  # the command printed its result itself (long-running commands like `ui`)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit code 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def build_root_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Find the best Curvature Tuning beta for every block of a trained PyTorch network.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_verbosity(parser)
    return parser


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output on stderr")


def add_command(
    subparsers: Any,
    name: str,
    handler: Callable[[argparse.Namespace], CommandResult],
    *,
    help: str,
    description: str | None = None,
) -> OneLineParser:
    """A sub-command parser with the common options (--json, -v, -q), dispatching to ``handler``."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object with the results on stdout")
    add_verbosity(parser)
    parser.set_defaults(handler=handler)
    return parser


def add_group(subparsers: Any, name: str, *, help: str, description: str) -> Any:
    """A command with sub-commands (``ct-tune study ...``); bare, it prints its usage and exits 2.
    Returns the sub-parsers to ``add_command`` into."""
    group = subparsers.add_parser(
        name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def usage(args: argparse.Namespace) -> NoReturn:
        group.print_help(sys.stderr)
        raise SystemExit(2)

    group.set_defaults(handler=usage)
    return group.add_subparsers(dest=f"{name}_command", metavar="COMMAND")


def configure_logging(level: int) -> None:
    """Logs go to stderr; -v/-q move the threshold from INFO."""
    threshold = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(level, logging.DEBUG)
    if level < -2:
        threshold = logging.CRITICAL
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("ct_tune")
    root.handlers[:] = [handler]
    root.setLevel(threshold)
    root.propagate = False
    # MLflow logs its schema migrations at INFO and every failed query at ERROR with its traceback; the
    # failure reaches the user anyway, as ct-tune's one line. -v shows MLflow's own warnings and errors.
    # ($MLFLOW_LOGGING_LEVEL only counts before mlflow is imported.)
    logging.getLogger("mlflow").setLevel(logging.WARNING if level > 0 else logging.CRITICAL)


def emit(result: CommandResult, *, as_json: bool) -> None:
    if result.emitted:
        return
    if as_json:
        sys.stdout.write(json.dumps(result.payload, indent=2, default=str) + "\n")
    elif result.render is not None:
        result.render()
    else:
        for key, value in result.payload.items():
            print(f"{key}: {value}")
    sys.stdout.flush()


def fail(error: BaseException) -> int | None:
    """Print a ct-tune error as one line on stderr and return its exit code; None for bugs (re-raise)."""
    if isinstance(error, CTTuneError):
        message = " ".join(str(error).split())  # one line, whatever the message held
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return error.exit_code
    return None


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A readable table on stdout (rich), for human output."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
    Console(file=sys.stdout, width=max(100, _terminal_width())).print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns
