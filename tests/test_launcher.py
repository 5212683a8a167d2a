"""The bound launcher's argument packing, on the CPU: the kernelParams layout cuLaunchKernel reads, the B/C slot
rewrite per call, and Kernel.args against each family's kernel signature (the GPU tests run the real launches)."""
from __future__ import annotations

import types

import numpy as np
import pytest

from sparse_autotune.device import kernel as kernels
from sparse_autotune.errors import UserError
from fakes import FakeLaunch as _FakeLaunch
from fakes import FakeTensor, check_launch_matches_signature, fake_kernel, fake_torch
from fakes import read_params as _read_params
from sparse_autotune.core.families import all_families
from sparse_autotune.core.problem import random_matrix
from sparse_autotune.core.space import problem_env
from sparse_autotune.device.kernel import Launcher, pack_params


def test_pack_params_layout():
    ptr = 0x7F12_3456_7890
    slots, addrs = pack_params([ptr, np.int32(-3), np.int32(77), 0, np.int32(2 ** 31 - 1)])
    assert slots.dtype == np.uint64 and addrs.dtype == np.uint64 and len(slots) == len(addrs) == 5
    raw = slots.tobytes()
    assert raw[0:8] == ptr.to_bytes(8, "little")
    assert raw[8:12] == (-3).to_bytes(4, "little", signed=True) and raw[12:16] == bytes(4)  # int32: low 4 bytes
    assert raw[16:24] == (77).to_bytes(8, "little")
    assert raw[24:32] == bytes(8)
    assert raw[32:36] == (2 ** 31 - 1).to_bytes(4, "little") and raw[36:40] == bytes(4)
    # the params array holds consecutive slot addresses, and reading through it gives the values back
    assert [int(a) for a in addrs] == [slots.ctypes.data + 8 * i for i in range(5)]
    assert _read_params(addrs.ctypes.data, [8, 4, 4, 8, 4]) == [ptr, -3, 77, 0, 2 ** 31 - 1]


@pytest.mark.parametrize("bad", [np.int64(5), np.uint32(5), 1.5, -1, 2 ** 64, True, None, "x"])
def test_pack_params_rejects_what_no_kernel_takes(bad):
    with pytest.raises(TypeError, match="parameter 1"):
        pack_params([0x1000, bad])


def test_launcher_rewrites_only_b_and_c_per_call():
    values = [0x1000, 0x2000, 0, 0, np.int32(5), np.int32(-7)]
    fake = _FakeLaunch([8, 8, 8, 8, 4, 4])
    ln = Launcher(0xABC, (3,), (128,), 64, values, 2, 3, keep=("a",), launch_fn=fake)
    ln(0x5000, 0x6000, 11)
    ln.launch(0x7000, 0x8000, 12)
    assert fake.calls == [((0xABC, 3, 1, 1, 128, 1, 1, 64, 11, 0), [0x1000, 0x2000, 0x5000, 0x6000, 5, -7]),
                          ((0xABC, 3, 1, 1, 128, 1, 1, 64, 12, 0), [0x1000, 0x2000, 0x7000, 0x8000, 5, -7])]
    fake2 = _FakeLaunch([8, 8, 4])
    ln2 = Launcher(1, (4, 9), (64,), 0, [0, 0, np.int32(1)], 0, 1, launch_fn=fake2)  # a 2-D grid
    ln2(1, 2, 0)
    assert fake2.calls == [((1, 4, 9, 1, 64, 1, 1, 0, 0, 0), [1, 2, 1])]
    noop = Launcher.noop()
    assert noop.is_noop and not ln.is_noop
    noop(1, 2, 3)  # nothing to launch, nothing raised
    assert len(fake.calls) == 2 and len(fake2.calls) == 1


def test_launcher_binds_a_context_on_a_fresh_thread_then_retries(monkeypatch):
    class DriverError(RuntimeError):
        def __init__(self, status):
            super().__init__(f"status {status}")
            self.status = status
    bound = []
    fake_cp = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(
        memGetInfo=lambda: bound.append(True))))
    monkeypatch.setattr("sparse_autotune.device.gpu.cupy", lambda: fake_cp)
    fake = _FakeLaunch([8, 8], fail_first_with=DriverError(kernels.CUDA_ERROR_INVALID_CONTEXT))
    ln = Launcher(1, (1,), (32,), 0, [0, 0], 0, 1, launch_fn=fake)
    ln(0x10, 0x20, 0)
    assert bound == [True] and fake.calls[0][1] == [0x10, 0x20]
    other = _FakeLaunch([8, 8], fail_first_with=DriverError(700))  # any other error is the caller's
    ln = Launcher(1, (1,), (32,), 0, [0, 0], 0, 1, launch_fn=other)
    with pytest.raises(DriverError, match="700"):
        ln(0x10, 0x20, 0)
    assert bound == [True] and other.calls == []


def test_programmatic_launch_passes_cuda_h_launch_config_with_the_pdl_attribute(monkeypatch):
    """Launcher.programmatic(): cuLaunchKernelEx (a fake libcuda here) gets cuda.h's CUlaunchConfig (grid, block,
    shared memory, stream; 56 bytes) with one CUlaunchAttribute (72 bytes, its value at byte 8): programmatic stream
    serialization (id 6) allowed (1), and kernelParams holding B's and C's slots; a failing CUresult raises
    DriverError with its status, which Launcher's context retry reads. The structures are a launcher's, built once (a
    call writes the stream): two launchers do not share them."""
    import ctypes as ct
    got, structs = [], []

    class FakeCuda:
        status = 0

        def cuLaunchKernelEx(self, cfgp, func, params, extra):  # noqa: N802
            cfg = cfgp._obj
            a = cfg.attrs.contents
            structs.append(cfg)
            got.append(dict(grid=(cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ), block=(cfg.blockDimX, cfg.blockDimY,
                            cfg.blockDimZ), smem=cfg.sharedMemBytes, stream=cfg.hStream, nattr=cfg.numAttrs, id=a.id,
                            value=a.value[0], func=func.value, extra=extra.value,
                            params=_read_params(params.value, [8, 8, 4])))
            return self.status

    t = kernels._pdl_types()
    assert ct.sizeof(t["Config"]) == 56 and t["Config"].hStream.offset == 32 and t["Config"].numAttrs.offset == 48
    assert ct.sizeof(t["Attr"]) == 72 and t["Attr"].value.offset == 8
    fake = FakeCuda()
    monkeypatch.setattr(kernels, "libcuda", lambda: fake)
    ln = Launcher(0xF00, (5, 8), (256,), 4096, [0, 0, np.int32(9)], 0, 1).programmatic()
    ln(0x100, 0x200, 0x300)
    assert got == [dict(grid=(5, 8, 1), block=(256, 1, 1), smem=4096, stream=0x300, nattr=1, id=6, value=1, func=0xF00,
                        extra=None, params=[0x100, 0x200, 9])]
    fake.status = 700
    with pytest.raises(kernels.DriverError, match="700") as err:
        ln(0x100, 0x200, 0)
    assert err.value.status == 700 and got[-1]["stream"] is None
    assert structs[0] is structs[1]  # the launcher's config built once, only its stream written at each call
    fake.status = 0
    ln2 = Launcher(0xF01, (7,), (128,), 0, [0, 0, np.int32(3)], 0, 1).programmatic()  # another launcher: its own
    ln2(0x110, 0x210, 0x301)
    ln(0x120, 0x220, 0x302)
    assert got[-2]["grid"] == (7, 1, 1) and got[-2]["func"] == 0xF01 and got[-2]["params"] == [0x110, 0x210, 3]
    assert got[-1] == dict(grid=(5, 8, 1), block=(256, 1, 1), smem=4096, stream=0x302, nattr=1, id=6, value=1,
                           func=0xF00, extra=None, params=[0x120, 0x220, 9])
    assert structs[-1] is structs[0] and structs[-2] is not structs[0]


# ---- Kernel.args / Kernel.launcher against the rendered kernel's own signature -------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_kernel_args_match_every_family_signature(dtype):
    """Every registered family's launch (arguments, geometry, threads, shared memory) against its rendered kernel's
    signature (tests/fakes.py; each family's own test checks more of its configs)."""
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    checked = {name: check_launch_matches_signature(name, dtype, a, 128, max_configs=8) for name in all_families()}
    assert sum(checked.values()) >= 8 and len(checked) >= 4


def test_kernel_warm_builds_the_layouts_under_the_matrix_lock():
    """build_kernel warms each kernel (its layouts built in the compile thread, not at the first timed launch), and
    the kernels of one matrix build them one at a time."""
    from fakes import FakeDeviceCSR
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    dev = FakeDeviceCSR(a, "fp16")
    fake_kernel("tc_gather", {"rn": 2, "nt": 1, "ksplit": 4, "unroll": 1, "prefetch": 0, "bload": "scalar",
                              "row_order": "natural"}, "fp16", a, dev).warm()
    rs = all_families()["csr_rowsplit"].space
    cfg = next(iter(rs.feasible("fp16", problem_env(64, 256, 128, a.nnz, "fp16"))))
    fake_kernel("csr_rowsplit", cfg, "fp16", a, dev).warm()
    assert (("tc", 2, "fp16"), True) in dev.built
    assert (("seg", cfg["row_order"], cfg["rows_per_block"], cfg["split"]), True) in dev.built
    assert all(held for _, held in dev.built) and not dev.lock.locked()


def test_operator_rejects_a_host_array_without_a_gpu():
    """The CuPy path's type check runs before anything touches the device."""
    import sparse_autotune as sa
    op = sa.SpMM(random_matrix(8, 16, 0.5, "uniform", 0))
    with pytest.raises(UserError, match="CuPy array or a PyTorch CUDA tensor"):
        op(np.zeros((16, 4), dtype=np.float32))


# ---- SpMM's hot paths with stand-ins for torch / CuPy (the GPU tests run the real ones) ---------------------------

class _Rec:
    """A launcher stand-in: records (b_ptr, c_ptr, stream)."""

    def __init__(self):
        self.calls = []

    def __call__(self, b_ptr, c_ptr, stream):
        self.calls.append((b_ptr, c_ptr, stream))


def _fake_cupy(device=0, capturing=False, ndarray=None, stream_ptr=0):
    rt = types.SimpleNamespace(getDevice=lambda: device, streamIsCapturing=lambda s: capturing)
    cuda = types.SimpleNamespace(runtime=rt, get_current_stream=lambda: types.SimpleNamespace(ptr=stream_ptr))
    return types.SimpleNamespace(cuda=cuda, ndarray=ndarray, empty=None, ascontiguousarray=None)


def test_torch_path_checks_inputs_and_launches_on_torch_stream():
    import sparse_autotune as sa
    op = sa.SpMM(random_matrix(6, 10, 0.5, "uniform", 0))
    torch_, made = fake_torch()
    op._cp = _fake_cupy(device=0)
    op._torch = (torch_, "float32", lambda dev: 0x5EED + dev)
    op._dev_id = 0
    rec = op._launchers[4] = _Rec()
    b = FakeTensor((10, 4))
    c = op(b)
    assert c is made[-1] and c.shape == (6, 4) and rec.calls == [(b.data_ptr(), c.data_ptr(), 0x5EED)]
    out = FakeTensor((6, 4))
    assert op(b, out=out) is out and rec.calls[-1] == (b.data_ptr(), out.data_ptr(), 0x5EED)
    nc = FakeTensor((10, 4), contiguous=False)  # copied to a contiguous tensor, whose address is launched
    op(nc)
    assert rec.calls[-1][0] not in (nc.data_ptr(), b.data_ptr())
    for bad, match in ((FakeTensor((10, 4), cuda=False), "CPU tensor"), (FakeTensor((9, 4)), "shape"),
                       (FakeTensor((10, 4, 1)), "shape"), (FakeTensor((10, 4), dtype="float64"), "dtype float64"),
                       (FakeTensor((10, 4), device=1), "GPU 1")):
        with pytest.raises(UserError, match=match):
            op(bad)
    for bad_out in (FakeTensor((6, 5)), FakeTensor((6, 4), dtype="float16"), FakeTensor((6, 4), contiguous=False),
                    np.zeros((6, 4), np.float32)):
        with pytest.raises(UserError, match="out must be"):
            op(b, out=bad_out)
    with pytest.raises(UserError, match="out is on GPU 1"):
        op(b, out=FakeTensor((6, 4), device=1))
    n_calls = len(rec.calls)
    op(FakeTensor((10, 0)))  # N == 0: nothing launched
    assert len(rec.calls) == n_calls
    op._cp = _fake_cupy(device=0, capturing=True)  # a new N while the stream captures: refused, nothing built
    with pytest.raises(UserError, match="before CUDA graph capture"):
        op(FakeTensor((10, 8)))
    assert 8 not in op._launchers and 8 not in op._kernels
    op._dev_id = 1  # A lives on another device than the current one
    with pytest.raises(UserError, match="A is on GPU 1"):
        op(b)


def test_cupy_path_launches_on_cupy_stream():
    import sparse_autotune as sa

    class Arr:
        def __init__(self, shape, dtype=np.float32, device=0, contiguous=True):
            self.shape, self.ndim, self.dtype = tuple(shape), len(shape), np.dtype(dtype)
            self.device = types.SimpleNamespace(id=device)
            self.flags = types.SimpleNamespace(c_contiguous=contiguous)
            self.data = types.SimpleNamespace(ptr=id(self))

    op = sa.SpMM(random_matrix(6, 10, 0.5, "uniform", 0))
    op._cp = cp = _fake_cupy(device=0, ndarray=Arr, stream_ptr=0x77)
    cp.empty = lambda shape, dtype: Arr(shape, dtype)
    cp.ascontiguousarray = lambda a: Arr(a.shape, a.dtype)
    op._dev_id = 0
    rec = op._launchers[4] = _Rec()
    b = Arr((10, 4))
    c = op(b)
    assert c.shape == (6, 4) and rec.calls == [(b.data.ptr, c.data.ptr, 0x77)]
    out = Arr((6, 4))
    assert op(b, out=out) is out and rec.calls[-1] == (b.data.ptr, out.data.ptr, 0x77)
    nc = Arr((10, 4), contiguous=False)
    op(nc)
    assert rec.calls[-1][0] != nc.data.ptr
    for bad, match in ((Arr((9, 4)), "shape"), (Arr((10, 4), np.float64), "dtype float64"),
                       (Arr((10, 4), device=1), "GPU 1")):
        with pytest.raises(UserError, match=match):
            op(bad)
    for bad_out in (Arr((6, 5)), Arr((6, 4), np.float16), Arr((6, 4), contiguous=False)):
        with pytest.raises(UserError, match="out must be"):
            op(b, out=bad_out)


def test_reserve_smem_never_lowers_a_functions_reservation_fake_driver(monkeypatch):
    """The opt-in to more than 48 KiB of dynamic shared memory is the CUfunction's, and one source is one function
    (compile_kernel's cache): tc_sp24's v4 conversion reserves by K with one source, so a launcher built for a smaller K
    must not lower what one for a larger K reserved (its next launch would fail). A fake driver (host logic only)."""
    import sys
    import types

    from sparse_autotune.device import compile as sat_compile
    from sparse_autotune.errors import CandidateError

    attrs = {"static": 1024, "max": 0}
    calls = []

    def get(attr, ptr):
        return attrs["static"] if attr == 1 else attrs["max"]

    def set_(ptr, attr, value):
        calls.append(value)
        if value > 227 * 1024:
            raise RuntimeError("CUDA_ERROR_INVALID_VALUE")
        attrs["max"] = value

    driver = types.SimpleNamespace(CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES=1,
                                   CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES=8,
                                   funcGetAttribute=get, funcSetAttribute=set_)
    cuda = types.ModuleType("cupy.cuda")
    cuda.driver = driver
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    monkeypatch.setattr(sat_compile, "function_ptr", lambda fn: 0x1234)

    sat_compile.reserve_smem(object(), 40 * 1024)  # with the static 1 KiB under 48 KiB: no opt-in
    assert calls == [] and attrs["max"] == 0
    sat_compile.reserve_smem(object(), 131072)
    assert attrs["max"] == 131072
    sat_compile.reserve_smem(object(), 80000)  # a smaller K's launcher of the same function
    assert attrs["max"] == 131072 and calls == [131072]
    sat_compile.reserve_smem(object(), 160 * 1024)  # a larger one raises it
    assert attrs["max"] == 160 * 1024 and calls == [131072, 160 * 1024]
    with pytest.raises(CandidateError, match="cannot reserve"):
        sat_compile.reserve_smem(object(), 300 * 1024)
    assert attrs["max"] == 160 * 1024
