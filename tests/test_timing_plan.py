"""The replay plan of device.timing (CPU): fast launches keep the whole rotation of B buffers and 20 replays; slow
ones (a large layer's cuSPARSE baseline) are timed on a bounded amount of GPU work."""
from sparse_autotune.device.timing import REPLAY_CAP_US, TOTAL_CAP_US, plan_replays


def test_fast_launch_whole_rotations_and_all_replays():
    r, reps = plan_replays(5.0, 64)
    assert r % 64 == 0 and r * 5.0 >= 300.0 and reps == 20
    r, reps = plan_replays(2.0, 2)
    assert r == 150 and reps == 20  # 300 us a replay, a multiple of the 2 buffers
    assert plan_replays(0.01, 4)[0] == 2000  # capped at max_launches (a multiple of 4)


def test_slow_launch_bounded_work():
    # session 11's case: cuSPARSE fp16 at ~5 ms a call over 64 B buffers was 64 launches x 23 replays = 7.4 s
    r, reps = plan_replays(5000.0, 64)
    assert 1 <= r < 64 and r * 5000.0 <= REPLAY_CAP_US
    assert 5 <= reps < 20 and r * 5000.0 * reps <= TOTAL_CAP_US * 1.01
    # the whole measurement (3 warm-up replays + the timed ones) is under half a second of GPU
    assert (3 + reps) * r * 5000.0 < 0.5e6


def test_very_slow_launch_at_least_one_launch_and_five_replays():
    r, reps = plan_replays(60_000.0, 8)
    assert r == 1 and reps == 5


def test_medium_launch_unchanged_rotation():
    # 100 us over 16 buffers: 1.6 ms a replay, under the caps: as before (whole rotation, 20 replays)
    assert plan_replays(100.0, 16) == (16, 20)


def test_cold_times_keeps_why_a_side_failed(monkeypatch):
    """A failed cold timing is no longer only logged: the report says which side failed and why (suite records carry
    it as cold_error). Synthetic: both timings replaced by functions that raise; no GPU."""
    from types import SimpleNamespace

    import sparse_autotune.device.cold as cold
    import sparse_autotune.device.gpu as gpu

    def winner(kern, ctx):
        raise MemoryError("out of memory allocating 1073741824 bytes")

    def dense(ctx):
        raise RuntimeError("cudaErrorIllegalAddress: an illegal memory access was encountered\nmore")

    monkeypatch.setattr(cold, "time_kernel_cold", winner)
    monkeypatch.setattr(cold, "time_dense_cold", dense)
    pool = SimpleNamespace(free_all_blocks=lambda: None)
    monkeypatch.setattr(gpu, "cupy", lambda: SimpleNamespace(get_default_memory_pool=lambda: pool))
    logged = []
    ctx = SimpleNamespace(problem=SimpleNamespace(dtype="fp16"))
    out = cold.cold_times(None, ctx, logged.append)
    assert out["tuned_cold_us"] is None and out["dense_cold_us"] is None
    assert out["cold_error"] == ("winner: MemoryError: out of memory allocating 1073741824 bytes; "
                                 "cuBLAS: RuntimeError: cudaErrorIllegalAddress: an illegal memory access was encountered")
    assert len(logged) == 2 and "cold timing of the winner failed" in logged[0]


def test_time_launches_waits_for_the_callers_work_before_its_first_launch(monkeypatch):
    """time_launches times on a non-blocking stream, which does not wait for the default stream: the device is
    synchronised before the first launch, so that copies the caller enqueued (device.cold's twins of A) are complete.
    A recording stand-in for CuPy (no GPU): the order of calls is what is checked."""
    from types import SimpleNamespace

    import sparse_autotune.device.gpu as gpu
    from sparse_autotune.device.timing import time_launches
    calls = []

    class Stream:
        def __init__(self, non_blocking=False):
            calls.append(("stream", non_blocking))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def begin_capture(self):
            calls.append("capture")

        def end_capture(self):
            return SimpleNamespace(launch=lambda stream: calls.append("replay"))

        def synchronize(self):
            pass

    class Event:
        def record(self, stream=None):
            pass

        def synchronize(self):
            pass

    fake = SimpleNamespace(cuda=SimpleNamespace(
        Stream=Stream, Event=Event, get_elapsed_time=lambda a, b: 0.01,
        runtime=SimpleNamespace(deviceSynchronize=lambda: calls.append("sync"))))
    monkeypatch.setattr(gpu, "cupy", lambda: fake)
    t = time_launches([lambda: calls.append("launch")] * 2)
    assert t.median_us > 0
    assert calls[0] == "sync" and calls[1] == ("stream", True) and calls[2] == "launch"
    assert "capture" in calls and "replay" in calls


def _fake_cupy(eager_us: float, replay_us: float, capturable: bool = True):
    """A stand-in for CuPy (no GPU) whose events time what ran between them: each eager launch eager_us (its host
    time included), each launch inside a graph replay replay_us."""
    from types import SimpleNamespace
    log = []
    state = {"capturing": 0}

    class Stream:
        def __init__(self, non_blocking=False):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def begin_capture(self):
            if not capturable:
                raise RuntimeError("operation not permitted when stream is capturing")
            state["capturing"] = 1
            state["n"] = 0

        def end_capture(self):
            state["capturing"] = 0
            n = state["n"]
            return SimpleNamespace(launch=lambda stream: log.append(("replay", n)))

        def synchronize(self):
            pass

    class Event:
        def record(self, stream=None):
            self.at = len(log)

        def synchronize(self):
            pass

    def elapsed_ms(a, b):
        us = sum(eager_us if e == "launch" else replay_us * e[1] for e in log[a.at:b.at])
        return us / 1000.0

    def launch():
        if state["capturing"]:
            state["n"] += 1
        else:
            log.append("launch")

    fake = SimpleNamespace(cuda=SimpleNamespace(Stream=Stream, Event=Event, get_elapsed_time=elapsed_ms,
                                                runtime=SimpleNamespace(deviceSynchronize=lambda: None)))
    return fake, launch


def test_time_launches_rechecks_a_host_inflated_estimate_by_replay_synthetic(monkeypatch):
    """Synthetic timer (no GPU): the eager estimate of a 4 us kernel reads 113 us (host stalls between launches, as
    session 41's tuner saw), above the give-up threshold of 50 us. The graph-replayed recheck reads 4 us, so the
    candidate is timed in full (graph), not given up; a truly slow kernel (200 us both ways) is still given up, with
    both estimates in the note; a kernel that cannot be captured keeps the eager estimate."""
    import sparse_autotune.device.gpu as gpu
    from sparse_autotune.device.timing import time_launches

    fake, launch = _fake_cupy(eager_us=113.0, replay_us=4.0)
    monkeypatch.setattr(gpu, "cupy", lambda: fake)
    t = time_launches([launch] * 8, give_up_above_us=50.0)
    assert t.method == "graph" and abs(t.median_us - 4.0) < 1e-6

    fake, launch = _fake_cupy(eager_us=200.0, replay_us=190.0)
    monkeypatch.setattr(gpu, "cupy", lambda: fake)
    t = time_launches([launch] * 8, give_up_above_us=50.0)
    assert t.method == "estimate" and abs(t.median_us - 190.0) < 1e-6
    assert "200.0 us eager, 190.0 us replayed > 50.0 us" in t.note

    fake, launch = _fake_cupy(eager_us=113.0, replay_us=4.0, capturable=False)
    monkeypatch.setattr(gpu, "cupy", lambda: fake)
    t = time_launches([launch] * 8, give_up_above_us=50.0)
    assert t.method == "estimate" and abs(t.median_us - 113.0) < 1e-6 and "replayed" not in t.note
