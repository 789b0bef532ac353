"""How the Hydra entry points end: an error that is the user's to fix prints alone and exits with status 2.

`run_app(app)` runs a `@hydra.main` function. What it reports:

- a `cad.errors.UserError` (a bad setting, a missing file or download; the message names the fix): the message
  alone, exit status 2;
- Hydra's own errors about the command line (an unknown option, a malformed override): Hydra's message alone,
  exit status 2; a key no config file defines, given without `+` (`method.spce=ff`, which Hydra refuses with
  "Could not override"), gets cad's schema error instead, with its "did you mean method.space?";
- anything else is a bug: its traceback (without Hydra's frames), exit status 1.

`HYDRA_FULL_ERROR=1` or `debug=true` print the traceback of user errors too. Hydra prints (and exits 1 on) any
exception of the task function unless HYDRA_FULL_ERROR=1, so run_app sets it while the app runs and reports
the exception itself. A task function wraps its body in `job_errors(debug)`: a single run ends there with
SystemExit(2); in a sweep the error goes back to Hydra, which finishes the batch's other jobs first (a
SystemExit inside a job would abort the basic launcher's whole sweep), then run_app reports it.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cad.errors import USER_ERROR_STATUS, UserError, full_error_requested, report_user_error

TRACEBACK_HINT = "add debug=true or set HYDRA_FULL_ERROR=1 to see the traceback"
_COULD_NOT_OVERRIDE = re.compile(r"Could not override '([^']+)'\.\s*To append to your config use \+")
# The user's own HYDRA_FULL_ERROR while run_app has set it (None outside run_app).
_user_full_error: bool | None = None


def _full_error() -> bool:
    return full_error_requested() if _user_full_error is None else _user_full_error


def command_overrides(argv: Sequence[str]) -> list[str]:
    """The key=value overrides of a Hydra command line (flags and their values left out)."""
    return [a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~"))]


def debug_requested(overrides: Sequence[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+") == "debug" and o.split("=", 1)[1].strip().lower() in ("true", "1", "yes")
               for o in overrides if "=" in o)


@contextmanager
def job_errors(debug: bool) -> Iterator[None]:
    """Around a task function's body: a user error of a single run prints alone and exits 2 here (Hydra would
    first print "Error executing job with overrides"); in a sweep it is re-raised for Hydra to record. With
    `debug` its traceback is printed in the job, where the job's output goes."""
    try:
        yield
    except UserError as err:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.RUN:
            raise SystemExit(report_user_error(err, traceback_too=debug or _full_error(), hint=TRACEBACK_HINT)) \
                from None
        if debug:
            traceback.print_exc()
        raise


def run_app(app: Callable[[], Any], argv: Sequence[str] | None = None, *, explain_typos: bool = True) -> None:
    """Run a `@hydra.main` app (which reads sys.argv) and end the process as the module docstring says;
    `explain_typos` checks refused keys against cad's run config (conf/config.yaml) for a "did you mean"."""
    from hydra.errors import CompactHydraException, InstantiationException

    global _user_full_error
    overrides = command_overrides(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(overrides)
    saved = os.environ.get("HYDRA_FULL_ERROR")
    _user_full_error = full_error_requested()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises the app's exception instead of printing it
    try:
        app()
        return
    except UserError as err:
        code = report_user_error(err, traceback_too=_user_full_error, hint=TRACEBACK_HINT)
    except CompactHydraException as err:
        if isinstance(err, InstantiationException):  # a _target_ that fails to build: a bug, not the command line
            code = _report_bug(err)
        else:
            explained = typo_error(err, overrides) if explain_typos else None
            shown = explained if explained is not None else _HydraMessage(err)
            code = report_user_error(shown, traceback_too=_user_full_error or debug, hint=TRACEBACK_HINT)
    except Exception as err:  # noqa: BLE001 - a bug: its traceback, as Hydra would print it
        code = _report_bug(err)
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved
        _user_full_error = None
    sys.exit(code)


class _HydraMessage(Exception):
    """Hydra's error as Hydra prints it: its message, and the OmegaConf error under it."""

    def __init__(self, err: BaseException):
        from omegaconf.errors import OmegaConfBaseException

        text = str(err)
        if isinstance(err.__cause__, OmegaConfBaseException):
            text += "\n" + str(err.__cause__)
        super().__init__(text)
        self.__traceback__ = err.__traceback__


def _report_bug(err: BaseException) -> int:
    """The traceback from the first frame below Hydra's (all of it with HYDRA_FULL_ERROR=1); status 1."""
    tb = err.__traceback__
    if not _user_full_error:
        ours = tb
        while ours is not None and str(ours.tb_frame.f_globals.get("__name__", "")).startswith(("hydra.", __name__)):
            ours = ours.tb_next
        tb = ours or tb  # raised inside Hydra itself: all of it
    traceback.print_exception(type(err), err, tb)
    if not _user_full_error:
        print("\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", file=sys.stderr)
    return 1


def typo_error(err: BaseException, overrides: Sequence[str]) -> UserError | None:
    """cad's schema error for a key Hydra refused because no config file defines it ("Could not override
    'method.spce'"): the command composed with such keys added (`+`), checked as a run checks its keys, so
    the error names the closest key. None when Hydra refused the command for another reason."""
    from hydra.errors import HydraException

    from .config import compose_config
    from .validate import ConfigError, check_method, check_schema

    fixed = list(overrides)
    for _ in range(len(fixed)):
        match = _COULD_NOT_OVERRIDE.search(str(err))
        if not match:
            return None
        hits = [i for i, o in enumerate(fixed) if _key(o) == match.group(1) and not o.startswith(("+", "~"))]
        if not hits:
            return None
        for i in hits:
            fixed[i] = "+" + fixed[i]
        try:
            cfg = compose_config(_first_job(fixed))
        except HydraException as again:  # the next unknown key: add it too
            err = again
            continue
        except Exception:  # noqa: BLE001 - the explanation is best effort; Hydra's own message stands
            return None
        try:
            check_schema(cfg)
            for where in ("method", "erase_method"):
                if isinstance(cfg.get(where), dict) and cfg[where].get("_target_"):  # a chosen method's settings
                    check_method(cfg[where], where)
        except ConfigError as found:
            return found
        return None
    return None


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _first_job(overrides: Sequence[str]) -> list[str]:
    """The overrides of a sweep's first job (`a=1,2` -> `a=1`), without Hydra's own settings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.is_hydra_override():
            continue
        if o.is_sweep_override():
            out.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
        else:
            out.append(str(o.input_line))
    return out


__all__ = ["USER_ERROR_STATUS", "command_overrides", "debug_requested", "job_errors", "run_app", "typo_error"]
