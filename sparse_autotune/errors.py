"""Errors that reach the user as one line and exit status 2."""


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
