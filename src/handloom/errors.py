"""Expected errors, and how every entry point (stage scripts, the `handloom` command) reports an error: one line
`error: <what>`, exit code 2, for bad input; a traceback only for a bug, and only when asked for."""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

DEBUG_FLAG = "--debug"
DEBUG_ENV = "HANDLOOM_DEBUG"


class UserError(Exception):
    """Bad input or configuration, not a bug: the message alone tells the user what to fix."""


# A missing file named in the params or on the command line is the user's to fix as well.
EXPECTED = (UserError, FileNotFoundError)


def debug_requested(argv: list[str] | None = None) -> bool:
    return DEBUG_FLAG in (sys.argv if argv is None else argv) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def exit_code(error: BaseException, debug: bool) -> int:
    """Print `error` as the entry points do and return their exit code: 2 for an expected error, 1 for a bug
    (with its traceback when `debug`), 130 for Ctrl-C."""
    if isinstance(error, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        return 130
    if isinstance(error, EXPECTED):
        print(f"error: {error}", file=sys.stderr)
        return 2
    if debug:
        traceback.print_exception(error)
    else:
        print(f"error: unexpected {type(error).__name__}: {error} (a bug: rerun with {DEBUG_FLAG} or "
              f"{DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
    return 1


def run_entry_point(main: Callable[..., object], *args) -> None:
    """Run a stage script's main(*args) and exit with exit_code's status when it raises; `--debug` among the
    script's arguments (or HANDLOOM_DEBUG=1) shows a bug's traceback."""
    debug = debug_requested()
    args = tuple(a for a in args if a != DEBUG_FLAG)
    try:
        main(*args)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the one place that turns any error into an exit status
        sys.exit(exit_code(e, debug))
