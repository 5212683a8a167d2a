"""Cold timing: A read from HBM at every launch, as a decode layer reads its weights in a model.

The project's method (timing.time_launches over rotated B buffers) leaves A in the L2 cache across replays. For a
memory-bound layer whose A fits in the L2 (the H200's 60 MB hold a 4096 x 4096 fp16 layer, dense or sparse) that
times a warm cache, not what a model sees: there the other layers' weights evict it between two calls. Here A is
rotated too: enough copies of the kernel's device arrays (DeviceCSR.twin), and for the dense baseline of the dense A,
that one rotation is larger than twice the L2; B rotates as before. Both sides are timed the same way (CUDA-graph
replay, median), so their ratio is the speed-up a decoding model gets.
"""
from __future__ import annotations

from ..core.problem import storage
from ..device.timing import n_buffers, time_launches

MAX_COPIES = 48  # small matrices: 48 copies are enough to leave L2 mostly cold, and cheap
MEMORY_SHARE = 0.25  # never more than this share of the GPU's free memory for the copies


def copies_for(nbytes: int, l2_bytes: int, free_bytes: int | None = None, copy_bytes: int | None = None) -> int:
    """How many copies make the bytes a launch reads (nbytes, from one copy) rotate through more than twice the L2 (at
    least 2, at most MAX_COPIES, and, when free_bytes is given, copies of copy_bytes each (default nbytes) within
    MEMORY_SHARE of it)."""
    n = n_buffers(nbytes, l2_bytes, cap=MAX_COPIES)
    each = nbytes if copy_bytes is None else copy_bytes
    if free_bytes is not None and each > 0:
        n = min(n, max(2, int(MEMORY_SHARE * free_bytes // each)))
    return n


def _free_bytes() -> int | None:
    from ..device.gpu import cupy  # noqa: PLC0415
    try:
        return int(cupy().cuda.runtime.memGetInfo()[0])
    except Exception:  # noqa: BLE001
        return None


def rotation(kern, n: int, l2_bytes: int) -> tuple[set, int, int]:
    """(the layouts a launch of `kern` for N = n asks A for (cache keys: its format, its workspace for that N), the bytes
    of the device arrays it passes besides B and C, the copies that make a rotation of those past twice the L2). Sized
    by what a launch reads, not by every layout a search left on A: other families' layouts used to count, which gave
    2-3 copies, a rotation within the L2 and "cold" times of a warm cache (session 22)."""
    kern.warm()
    kern.args(n, None, None)  # a split-K workspace for this N, built here and not inside a graph capture
    used = kern.a.keys_used(lambda: kern.args(n, None, None))
    read = kern.a_bytes(n)
    return used, read, copies_for(read, l2_bytes, _free_bytes(), kern.a.nbytes(used))


def time_kernel_cold(kern, ctx):
    """The kernel timed with A rotated among copies (and B among the context's buffers): (Timing, copies)."""
    kern.warm()
    a = kern.a
    used, _, ncopy = rotation(kern, ctx.problem.n, ctx.gpu.l2_bytes)
    kernels = [kern] + [kern.bound_to(a.twin(used)) for _ in range(ncopy - 1)]
    nb = len(ctx.b_bufs)
    launches = [lambda i=i: ctx.launch(kernels[i % ncopy], ctx.b_bufs[i % nb]) for i in range(max(ncopy, nb))]
    try:
        return time_launches(launches), ncopy
    finally:
        del kernels, launches


DENSE_MODE = {"fp32": "fp32", "tf32": "tf32", "fp16": "fp16", "bf16": "bf16"}  # cuBLAS of the problem's own precision


def time_dense_cold(ctx):
    """cuBLAS of the problem's precision (FP32 / FP16 / BF16 GemmEx) on copies of the dense A, B rotated, verified
    first: (Timing, copies, mode)."""
    from ..device.baselines import CublasGemm  # noqa: PLC0415
    from ..device.verify import poison, rel_error  # noqa: PLC0415
    from ..device.gpu import cupy  # noqa: PLC0415
    cp = cupy()
    p = ctx.problem
    mode = DENSE_MODE[p.dtype]
    a0 = storage(ctx.a_dense_f32(), p.dtype)
    ncopy = copies_for(int(a0.nbytes), ctx.gpu.l2_bytes, _free_bytes())
    dense = [a0] + [a0.copy() for _ in range(ncopy - 1)]
    c = cp.empty(ctx.out_shape, dtype=a0.dtype)
    gemms = [CublasGemm(d, ctx.b_bufs, c, mode, p.layout, ctx.bias) for d in dense]  # nk: y = x A^T + bias
    try:
        poison(c)
        gemms[0].launch(0)
        cp.cuda.get_current_stream().synchronize()
        err = rel_error(c, ctx.ref)
        if not err <= (1e-4 if mode == "fp32" else 2e-2):
            raise RuntimeError(f"cuBLAS {mode} on the dense A: wrong result (relative error {err:.3g})")
        nb = len(ctx.b_bufs)
        launches = [lambda i=i: gemms[i % ncopy].launch(i % nb) for i in range(max(ncopy, nb))]
        return time_launches(launches), ncopy, mode
    finally:
        del gemms, dense, c


def _why(exc) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc) else type(exc).__name__


def cold_times(kern, ctx, log=None, tuned: tuple[float, int] | None = None) -> dict:
    """{'tuned_cold_us', 'dense_cold_us', 'dense_cold_mode', 'cold_copies', 'dense_cold_copies'}: the kernel and
    cuBLAS of the same precision, each with A from HBM; a side that fails is None (logged). tuned: the kernel's (us,
    copies) measured so already (the tuner's finalists): kept, not timed again."""
    out: dict = {"tuned_cold_us": None, "dense_cold_us": None, "dense_cold_mode": DENSE_MODE[ctx.problem.dtype],
                 "cold_copies": None, "dense_cold_copies": None}
    try:
        if tuned is not None:
            out["tuned_cold_us"], out["cold_copies"] = tuned
        else:
            t, out["cold_copies"] = time_kernel_cold(kern, ctx)
            out["tuned_cold_us"] = t.median_us
    except Exception as exc:  # noqa: BLE001
        out["cold_error"] = f"winner: {_why(exc)}"  # kept in the report and the suite's record (was only logged)
        if log:
            log(f"cold timing of the winner failed: {_why(exc)}")
    try:
        t, out["dense_cold_copies"], _ = time_dense_cold(ctx)
        out["dense_cold_us"] = t.median_us
    except Exception as exc:  # noqa: BLE001
        out["cold_error"] = "; ".join(x for x in (out.get("cold_error"), f"cuBLAS: {_why(exc)}") if x)
        if log:
            log(f"cold timing of cuBLAS failed: {_why(exc)}")
    from ..device.gpu import cupy  # noqa: PLC0415
    cupy().get_default_memory_pool().free_all_blocks()
    return out
