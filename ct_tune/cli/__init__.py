"""The ``ct-tune`` command.

Conventions every command follows:
- results go to stdout, progress and logs to stderr;
- ``--json`` prints exactly one JSON object with the results on stdout (and nothing else there);
- bad input exits with code 2 and one line on stderr that names the problem and the fix;
- Ctrl-C exits with code 130 after the command has cleaned up.

Each command lives in its own module under ``ct_tune.cli`` with a ``register(subparsers)``
function; heavy imports (lightning, optuna, mlflow) happen inside the command, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from ct_tune._ctrl_c import NOTED, note_ctrl_c
from ct_tune.cli._common import CommandResult, build_root_parser, configure_logging, emit, fail

__all__ = ["build_parser", "main"]

# Command modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "study",
    "pipeline",
    "quickstart",
    "pretrain",
    "train_ct",
    "evaluate",
    "units",
    "cache",
    "ui",
    "db",
    "doctor",
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the root options and every command's sub-parser."""
    parser = build_root_parser()
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"ct_tune.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # MLflow logs its schema migrations at INFO on stderr; keep stderr for ct-tune's own lines.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    previous = signal.getsignal(signal.SIGINT)
    noting = note_ctrl_c()  # where the command's first import did not already
    try:
        return _run(argv)
    finally:
        if noting and previous is not None:  # a caller in Python gets its own handler back
            signal.signal(signal.SIGINT, previous)


def _run(argv: list[str] | None) -> int:
    command = "ct-tune"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        command = " ".join(part for part in (args.command, getattr(args, f"{args.command}_command", None)) if part)
        configure_logging(args.verbose - args.quiet)
        result: CommandResult = args.handler(args)
    except KeyboardInterrupt as error:  # the library says what was interrupted, what was kept, how to resume
        print(f"ct-tune: {str(error) or f'{command} interrupted (Ctrl-C)'}", file=sys.stderr)
        return 130
    except Exception as error:  # user errors become one line; bugs keep their traceback
        code = fail(error)
        if code is not None:
            return code
        if NOTED:  # a Ctrl-C that landed inside a library's import came out as another error: still a Ctrl-C
            print(f"ct-tune: {command} interrupted (Ctrl-C)", file=sys.stderr)
            return 130
        raise
    emit(result, as_json=getattr(args, "json", False))
    return result.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
