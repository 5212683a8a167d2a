"""GPU-only timing: CUDA-graph replay of many launches, B rotated among buffers, warm-up, median.

Timing one launch between two events from Python measures launch overhead (10-20 us), not the kernel:
instead R launches (cycling through the B buffers so B does not sit in L2) are captured into a CUDA graph,
the graph is replayed a few times to warm up, then `repeats` replays are timed with events each; the
result is the median replay time divided by R. If capture fails (a library call that cannot be captured),
the same R launches are issued eagerly between events and the result says so.

Slow launches (a baseline of a large layer, e.g. cuSPARSE fp16 at several ms a call) are timed on fewer launches and
replays (plan_replays): a replay holds at most REPLAY_CAP_US of work and all replays together about TOTAL_CAP_US, so
that one measurement costs well under a second of GPU instead of 23 replays x 64 buffers (session 12: the llm suite's
finish spent 30-57 s of the GPU's turn on the baselines of its largest layers). Such a launch is long enough that
whether B sits in L2 does not matter, so the rotation may cover fewer buffers than the list has.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np


@dataclass
class Timing:
    median_us: float
    min_us: float
    spread: float  # (p90 - p10) / median of the per-replay times
    launches_per_replay: int
    replays: int
    method: str  # "graph", "events", or "estimate" (given up: see time_launches)
    note: str = ""  # why graph capture was not used, if it was not


MAX_B_BUFFERS = 64  # the most B buffers a timing rotates (device.kernel.BParam keeps as many encoded addresses)


def n_buffers(bytes_per_input: int, l2_bytes: int, cap: int = MAX_B_BUFFERS) -> int:
    """How many B buffers make the rotation larger than twice the L2 cache."""
    return int(min(cap, max(2, -(-2 * l2_bytes // max(1, bytes_per_input)))))


REPLAY_CAP_US = 20_000.0  # the most work one replay holds (slow launches: fewer of them a replay)
TOTAL_CAP_US = 250_000.0  # about the most the timed replays hold together (slow launches: fewer replays, at least 5)
SLOW_US = 200.0  # a launch at least this long is "slow": its rough estimate takes 2 launches, not 2 per buffer


def plan_replays(est_us: float, nbuf: int, target_us: float = 300.0, max_launches: int = 2000,
                 repeats: int = 20) -> tuple[int, int]:
    """(launches a replay, timed replays) for a launch of about est_us over nbuf B buffers: enough launches for
    target_us a replay, a whole number of rotations through the buffers, at most max_launches; for slow launches at
    most REPLAY_CAP_US a replay (then possibly fewer launches than buffers, at least one) and about TOTAL_CAP_US over
    all replays (at least 5 replays)."""
    est_us = max(est_us, 1e-3)
    r = int(min(max_launches, max(nbuf, np.ceil(target_us / est_us))))
    r = -(-r // nbuf) * nbuf
    if r * est_us > REPLAY_CAP_US:
        r = max(1, int(REPLAY_CAP_US // est_us))
    reps = repeats
    if r * est_us * repeats > TOTAL_CAP_US:
        reps = max(5, min(repeats, int(TOTAL_CAP_US // (r * est_us))))
    return r, reps


def _capture(stream, launches, n: int):
    """(a CUDA graph of n launches, round-robin over `launches`, None), or (None, the first line of why they cannot be
    captured) with the stream synchronized."""
    try:
        stream.begin_capture()
        try:
            for i in range(n):
                launches[i % len(launches)]()
        finally:
            graph = stream.end_capture()
    except Exception as exc:  # noqa: BLE001 - not capturable: the caller times eager launches
        stream.synchronize()
        return None, (str(exc).splitlines() or [type(exc).__name__])[0]
    return graph, None


def _graph_estimate(cp, stream, launches, n: int, start, end) -> float | None:
    """The time of one launch (us) from n launches captured in a CUDA graph, replayed once after one untimed replay;
    None where the launches cannot be captured."""
    graph, _ = _capture(stream, launches, n)
    if graph is None:  # the eager estimate stands
        return None
    graph.launch(stream)
    start.record(stream)
    graph.launch(stream)
    end.record(stream)
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) * 1000.0 / n


def time_launches(launches, repeats: int = 20, target_us: float = 300.0, max_launches: int = 2000,
                  give_up_above_us: float | None = None) -> Timing:
    """Time a list of zero-argument callables (one per B buffer), each issuing the work once on the current stream.

    give_up_above_us: when the rough estimate (2 launches per buffer between events, 2 in all for a slow launch; launch
    overhead included) is above it, the same launches are timed once more from a CUDA graph (no host time between
    them), and if that too is above it, it is returned (method "estimate") instead of the full graph-replay timing: a
    candidate several times slower than the best so far needs no precise time, and timing it in full costs the most."""
    from ..device.gpu import cupy  # noqa: PLC0415
    cp = cupy()
    # the timing stream does not wait for the legacy default stream (non_blocking): what the caller enqueued there
    # (device.cold's copies of A, fresh B buffers) must be complete before the first launch reads it. Without this
    # the cold timing of large layers raced its own copies in the llm suite (illegal address, session 13).
    cp.cuda.runtime.deviceSynchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    nbuf = len(launches)
    with stream:
        start, end = cp.cuda.Event(), cp.cuda.Event()
        # warm-up: the first launch alone, timed (a slow one is not repeated 3 x nbuf times before the timing)
        launches[0]()
        start.record(stream)
        launches[1 % nbuf]()
        end.record(stream)
        end.synchronize()
        first_us = cp.cuda.get_elapsed_time(start, end) * 1000.0
        # warm-up of every buffer, and a rough estimate (launch overhead included, so it overestimates small kernels)
        n_est = 2 if first_us >= SLOW_US else 2 * nbuf
        if n_est > 2:
            for f in launches:
                f()
        start.record(stream)
        for i in range(n_est):
            launches[i % nbuf]()
        end.record(stream)
        end.synchronize()
        est_us = max(0.5, cp.cuda.get_elapsed_time(start, end) * 1000.0 / n_est)
        if give_up_above_us is not None and est_us > give_up_above_us:
            # the eager launches' time includes the host's between them: a busy CPU (compiling workers) or a pause of
            # the interpreter inflates a small kernel's estimate many times (session 41: 113 us for a 4.3 us kernel,
            # given up). Before giving up, the same launches once more from a CUDA graph, no host between them.
            replayed = _graph_estimate(cp, stream, launches, n_est, start, end)
            note = f"{est_us:.1f} us"
            if replayed is not None:
                est_us = max(0.5, replayed)
                note += f" eager, {est_us:.1f} us replayed"
            if est_us > give_up_above_us:
                return Timing(est_us, est_us, 0.0, n_est, 1, "estimate",
                              f"{note} > {give_up_above_us:.1f} us: not timed in full")
        r, repeats = plan_replays(est_us, nbuf, target_us, max_launches, repeats)

        graph, why = _capture(stream, launches, r)
        method, note = ("graph", "") if graph is not None else ("events", why)  # not capturable: eager launches

        def replay():
            if graph is not None:
                graph.launch(stream)
            else:
                for i in range(r):
                    launches[i % nbuf]()

        for _ in range(3):
            replay()
        stream.synchronize()
        times = []
        evs = [(cp.cuda.Event(), cp.cuda.Event()) for _ in range(repeats)]
        for s, e in evs:
            s.record(stream)
            replay()
            e.record(stream)
        evs[-1][1].synchronize()
        for s, e in evs:
            times.append(cp.cuda.get_elapsed_time(s, e) * 1000.0 / r)
    times.sort()
    med = statistics.median(times)
    p10 = times[int(0.1 * (len(times) - 1))]
    p90 = times[int(round(0.9 * (len(times) - 1)))]
    return Timing(med, times[0], (p90 - p10) / med if med > 0 else 0.0, r, repeats, method, note)
