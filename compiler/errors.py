"""User-facing errors: one clear line naming the thing (op, node, file, flag) and what to do.

Command-line entry points catch :class:`UserError`, print ``error: <message>`` to stderr and exit with code 2.
Anything else escaping is a bug in mpcvit, not in the user's input.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input from the user (file, flag, model, data); the message says what and what to do."""


class CompileError(UserError):
    """The ONNX model or the compile options cannot be turned into an MPC program."""


class FixedPointRangeError(CompileError):
    """A tensor leaves the range that the chosen fixed-point precision can represent."""


class MPSPDZError(UserError):
    """MP-SPDZ is missing, incomplete, or one of its parties failed."""


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


class OneLineParser(argparse.ArgumentParser):
    """Flag errors as one ``error:`` line and exit 2, like every other bad input (argparse prints its usage too).
    Sub-command parsers made from it (``add_subparsers``) are of this class too."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def run_cli(main: Callable[[], int | None]) -> int:
    """Run a CLI body, turning :class:`UserError` into one line on stderr and exit code 2."""
    try:
        return int(main() or 0)
    except UserError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
