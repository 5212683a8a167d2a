"""Errors that reach the user as one line and exit status 2."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input or an unusable environment: printed as one line, exit status 2, no traceback."""


class CandidateError(Exception):
    """A kernel candidate failed (compile, launch or verification); the tuning goes on."""

    def __init__(self, stage: str, message: str, log: str = ""):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.log = log


class DeviceLostError(UserError):
    """The GPU context of this process is unusable (a kernel corrupted it): this process can tune nothing more."""


def exit_status(prog: str, fn: Callable[[], int]) -> int:
    """fn()'s exit status, with a UserError printed as one line `PROG: error: ...` (status 2) and an interrupt as
    `PROG: interrupted` (status 130): no traceback. The CLI's main and the bench scripts' entry points."""
    try:
        return fn()
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
