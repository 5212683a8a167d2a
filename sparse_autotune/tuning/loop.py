"""The one problem loop of bench, tune-model and the workers: time budget, skip what is done, Ctrl-C, progress bar."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sized
from dataclasses import dataclass

from ..errors import UserError


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tune_interrupted(report: dict) -> bool:
    """A tune's report says that a Ctrl-C ended its search (the best so far was kept): the loop stops there."""
    return report["trials"]["stopped"] == "interrupted"


@dataclass
class LoopResult:
    total: int | None  # problems given (None: drawn from a queue)
    finished: int = 0  # worked to the end in this run
    skipped: int = 0  # done by an earlier run
    failed: int = 0
    stopped: str = "done"  # done | time budget | interrupted

    @property
    def interrupted(self) -> bool:
        return self.stopped == "interrupted"


_END = object()


class ProblemLoop:
    """Works through problems one at a time. A subclass defines work(item) and may redefine the other hooks:

    - skip(item) -> True: done by an earlier run; the items are then a list, checked before the first is worked.
    - the time budget (deadline, a time.time()): no problem is started after it, the one in hand is finished.
    - work(item) raising UserError: that problem failed; failed(item, exc) says so (or re-raises to stop), the loop
      goes on.
    - Ctrl-C (KeyboardInterrupt, also raised by work when its tune was interrupted): the loop stops, interrupted()
      says so; what is finished is kept (each problem stores its result as it finishes).
    - a progress bar (progress=True) over the problems, showing describe(item) for the one in hand.

    run(items) takes a list, or an iterator that draws problems on demand (a queue's claims) and yields None while it
    has none to give yet: the budget is checked before each draw, so nothing is drawn after it."""

    unit = "problem"

    def __init__(self, deadline: float | None = None, progress: bool = False, desc: str = "", log=log_stderr):
        self.deadline, self.progress, self.desc, self.log = deadline, progress, desc, log
        self.result = LoopResult(None)
        self.bar = None

    # ---- hooks -----------------------------------------------------------------------------------------------

    def work(self, item) -> None:
        raise NotImplementedError

    def skip(self, item) -> bool:
        return False

    def describe(self, item) -> str:
        return str(item)

    def failed(self, item, exc: UserError) -> None:
        self.log(f"{self.describe(item)} failed: {exc}")

    def budget_reached(self) -> None:
        self.log(f"time budget reached after {self.result.finished} {self.unit}(s); run the same command again to "
                 "go on")

    def interrupted(self) -> None:
        self.log("interrupted: what is finished is kept; run the same command again to go on")

    # ---- the loop --------------------------------------------------------------------------------------------

    def over_budget(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def run(self, items: Iterable) -> LoopResult:
        res = self.result = LoopResult(len(items) if isinstance(items, Sized) else None)
        if self.progress:
            from tqdm import tqdm  # noqa: PLC0415
            self.bar = tqdm(total=res.total, desc=self.desc, unit=self.unit, file=sys.stderr, dynamic_ncols=True,
                            position=0)
        try:
            todo = items
            if isinstance(items, Sized):
                todo = [item for item in items if not self._skipped(item)]
            self._work_through(todo)
        except KeyboardInterrupt:
            res.stopped = "interrupted"
            self.interrupted()
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        return res

    def _skipped(self, item) -> bool:
        if not self.skip(item):
            return False
        self.result.skipped += 1
        self._advance()
        return True

    def _work_through(self, todo: Iterable) -> None:
        res = self.result
        left = len(todo) if isinstance(todo, Sized) else None
        draw = iter(todo)
        while left is None or left > 0:
            if self.over_budget():
                res.stopped = "time budget"
                self.budget_reached()
                return
            item = next(draw, _END)
            if item is _END:
                return
            if item is None:  # nothing to draw yet: the budget is checked again before the next draw
                continue
            if left is not None:
                left -= 1
            if self.bar is not None:
                self.bar.set_postfix_str(self.describe(item))
            try:
                self.work(item)
            except UserError as exc:
                res.failed += 1
                self.failed(item, exc)
            else:
                res.finished += 1
            self._advance()

    def _advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
