"""The search options a user gives (command line, TuneOptions, a queued problem), checked without importing Optuna:
the command line checks its arguments before it imports the search (tuning.search re-exports these names)."""
from __future__ import annotations

from ..errors import UserError

SAMPLERS = ("tpe", "random", "grid", "cmaes")
RANKS = ("cold", "warm")  # TuneOptions.rank: how a tune picks its winner (tuning.tuner's docstring)
FINALISTS = 4  # rank "cold": the most configs the tuner's finish times with A from HBM, the warm best among them
FINALIST_WITHIN = 1.3  # ... each within this factor of the best warm time


def check_rank(rank) -> str:
    """A TuneOptions.rank value (RANKS), else a one-line UserError."""
    if rank not in RANKS:
        raise UserError(f"unknown rank {rank!r}: choose one of {', '.join(RANKS)}")
    return rank


def check_options(trials: int | None = None, sampler: str | None = None, timeout: float | None = None) -> None:
    """The search options as a user gives them (command line, TuneOptions, a queued problem): a bad one is a
    one-line UserError. Every caller checks them here; what is None is not checked."""
    if sampler is not None and sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if trials is not None and trials <= 0:
        raise UserError(f"--trials must be positive (got {trials})")
    if timeout is not None and timeout <= 0:
        raise UserError(f"--timeout must be positive (got {timeout})")
