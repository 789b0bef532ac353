"""Errors that are the user's to fix, and how an entry point reports them.

An error class opts in by inheriting `UserError` beside its usual base (`class ConfigError(UserError,
ValueError)`): its message already says what is wrong and how to fix it (a setting, a path, a download), so
an entry point prints that message alone and exits with status 2. Every other exception is a bug (in cad or
a library) and keeps its traceback and Python's status 1. `HYDRA_FULL_ERROR=1` (Hydra's own switch, honoured
by every entry point) or the entry point's debug flag (`debug=true` for the runner) shows the traceback of a
user error too.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

USER_ERROR_STATUS = 2  # distinct from a crash's 1, so scripts and schedulers can tell "fix the input" apart


class UserError(Exception):
    """Marker base of errors whose message names the fix; entry points print it without a traceback."""


def full_error_requested() -> bool:
    """HYDRA_FULL_ERROR=1, read the way Hydra reads it."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def report_user_error(err: BaseException, *, traceback_too: bool = False, hint: str | None = None) -> int:
    """Print a user error to stderr (as its traceback, which ends with the message, when asked) and return
    USER_ERROR_STATUS."""
    if traceback_too:
        traceback.print_exception(err)
    else:
        print(f"error: {str(err).strip()}" + (f"\n({hint})" if hint else ""), file=sys.stderr, flush=True)
    return USER_ERROR_STATUS


def run_main(main: Callable[..., Any], *args, debug: bool = False, hint: str | None = None) -> Any:
    """Call an entry point's `main(*args)`: a UserError is printed alone and becomes SystemExit(2); anything
    else propagates with its traceback."""
    try:
        return main(*args)
    except UserError as err:
        raise SystemExit(report_user_error(err, traceback_too=debug or full_error_requested(), hint=hint)) from None
