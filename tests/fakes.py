"""Test doubles for the launch path on the CPU: device arrays as addresses, a device matrix whose layouts are built by
the families' real (numpy) builders, a stand-in for cuLaunchKernel, and the check that a family's arguments match its
rendered kernel's signature (shared by tests/test_launcher.py and tests/families/)."""
from __future__ import annotations

import ctypes
import re
import threading
import types

import numpy as np
import pytest

from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix
from sparse_autotune.core.render import render
from sparse_autotune.core.space import problem_env
from sparse_autotune.device.kernel import BParam, Kernel


def read_params(params_addr: int, sizes: list[int]) -> list[int]:
    """What the driver does with kernelParams: parameter i is `sizes[i]` bytes read from the address in slot i (an int
    for 4 and 8 bytes, the bytes themselves for a larger by-value parameter, e.g. a 128-byte tensor map)."""
    addrs = (ctypes.c_uint64 * len(sizes)).from_address(params_addr)
    return [ctypes.c_uint64.from_address(addrs[i]).value if sz == 8 else ctypes.c_int32.from_address(addrs[i]).value
            if sz == 4 else ctypes.string_at(addrs[i], sz) for i, sz in enumerate(sizes)]


class FakeLaunch:
    """Stands in for driver.launchKernel: records each call and the parameters as the driver would read them."""

    def __init__(self, sizes, fail_first_with=None):
        self.sizes, self.calls, self.fail = sizes, [], fail_first_with

    def __call__(self, f, gx, gy, gz, bx, by, bz, smem, stream, params, extra):
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        self.calls.append(((f, gx, gy, gz, bx, by, bz, smem, stream, extra), read_params(params, self.sizes)))


class Arr:
    """A device array as the launcher sees it: an address (and the host array it stands for)."""
    _next = 0x10000

    def __init__(self, host=None):
        Arr._next += 0x1000
        self.data = types.SimpleNamespace(ptr=Arr._next)
        self.host = host


class FakeTensor:
    """Just what SpMM's PyTorch paths (op(B), op.linear) read from a tensor; its module is "torch", which is how SpMM
    tells a PyTorch tensor from a CuPy array."""
    _next = 0x900000

    def __init__(self, shape, dtype="float32", cuda=True, device=0, contiguous=True):
        FakeTensor._next += 0x10000
        self.shape, self.dtype, self.is_cuda, self._dev, self._contig = tuple(shape), dtype, cuda, device, contiguous
        self.device, self._ptr = f"cuda:{device}", FakeTensor._next

    def dim(self):
        return len(self.shape)

    def get_device(self):
        return self._dev if self.is_cuda else -1

    def is_contiguous(self):
        return self._contig

    def contiguous(self):
        return FakeTensor(self.shape, self.dtype, self.is_cuda, self._dev, True)

    def data_ptr(self):
        return self._ptr


FakeTensor.__module__ = "torch"


def fake_torch():
    """(a stand-in for the torch module as SpMM uses it: `empty` and `Tensor`, the tensors `empty` made)."""
    made: list = []

    def empty(shape, dtype, device):
        made.append(FakeTensor(shape, dtype))
        return made[-1]
    return types.SimpleNamespace(empty=empty, Tensor=FakeTensor), made


class FakeDeviceCSR:
    """device.kernel.DeviceCSR without a GPU: `cached` runs the family's real layout builder on the host matrix and
    keeps each array as an Arr (ints pass through); `built` lists (key, lock held) per build."""

    def __init__(self, a, dtype="fp32"):
        self.shape, self.host, self.nnz, self.dtype = a.shape, a, int(a.nnz), dtype
        self.row_ptr, self.vals = Arr(a.indptr), Arr(a.data)
        self._cache: dict = {}
        self.built: list = []
        self.lock = threading.Lock()

    def cols(self, bits):
        return self.cached(("cols", bits), lambda h: h.indices.astype(np.uint16 if bits == 16 else np.int32))

    def cached(self, key, build):
        if key not in self._cache:
            got = build(self.host)
            self.built.append((key, self.lock.locked()))
            wrap = (lambda x: Arr(x) if isinstance(x, np.ndarray) else x)
            self._cache[key] = tuple(wrap(x) for x in got) if isinstance(got, tuple) else wrap(got)
        return self._cache[key]


def signature(src: str) -> list[tuple[str, int]]:
    """(name, byte size) of each spmm_kernel parameter, from CUDA C++ or PTX source."""
    if ".entry spmm_kernel(" in src:
        body = re.search(r"\.entry spmm_kernel\(([^)]*)\)", src).group(1)
        out = []
        for p in body.split(","):
            _, typ, name = p.split()
            out.append((name, {".u64": 8, ".u32": 4, ".s32": 4}[typ]))
        return out
    body = re.search(r"spmm_kernel\(([^)]*)\)", src).group(1)
    return [(p.split()[-1], 128 if "TensorMap128" in p else 8 if "*" in p else 4) for p in body.split(",")]


def fake_kernel(family: str, cfg: dict, dtype: str, a, dev=None, layout: str = "kn") -> Kernel:
    """A Kernel of `family` for `cfg` over a FakeDeviceCSR of `a`, its source rendered for `layout`, no compiled
    module."""
    fam = get_family(family)
    src = render(fam.space, cfg, dtype, fam.context(a, cfg) if fam.space.needs_matrix else None, layout)
    fn = types.SimpleNamespace(kernel=types.SimpleNamespace(ptr=0xF00D))
    return Kernel(fam, dict(cfg), dtype, src, fn, dev if dev is not None else FakeDeviceCSR(a, dtype), layout)


def check_launch_matches_signature(family: str, dtype: str, a, n: int, max_configs: int = 25,
                                   layout: str = "kn") -> int:
    """For configs of the family, Kernel.args has one value per kernel parameter, B and C where the kernel names them,
    device arrays for pointers and np.int32 for 4-byte ints; the packed launcher puts the same into its slots, with the
    family's geometry and threads. Returns how many configs were checked (0 for a dtype the family does not compute).
    layout "nk" (a family declaring it): the kernel rendered for nk takes the bias pointer right after C, and the
    launcher (a BiasLauncher) writes the bias address there."""
    fam = get_family(family)
    env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype, layout)
    feas = list(fam.space.feasible(dtype, env, {"gate": 0}))  # the launch at any N: a family's gate off (core.space)
    if not fam.space.supports(dtype):
        assert not feas
        return 0
    assert feas, family
    dev = FakeDeviceCSR(a, dtype)
    checked = 0
    nk = layout == "nk"
    for cfg in feas[:: max(1, len(feas) // max_configs)]:
        kern = fake_kernel(family, cfg, dtype, a, dev, layout)
        sig = signature(kern.source)
        b_tag, c_tag, bias_tag = object(), object(), object()
        args = kern.args(n, b_tag, c_tag, bias_tag) if nk else kern.args(n, b_tag, c_tag)
        assert len(args) == len(sig), (family, sig)
        names = [nm for nm, _ in sig]
        c_at = [i for i, x in enumerate(args) if x is c_tag][0]
        assert names[[i for i, x in enumerate(args) if x is b_tag][0]] in ("B", "pB")
        assert names[c_at] in ("C", "pC")
        if nk:  # (C2) / (C3): the bias right after C, passed through as given
            assert args[c_at + 1] is bias_tag and names[c_at + 1] in ("bias", "pbias"), (family, names)
        for (nm, size), x in zip(sig, args):
            if x is bias_tag:
                assert size == 8, (family, nm)
                continue
            if size == 128:  # a by-value tensor map (tc_wgmma pmap), made from B's address at each launch
                assert isinstance(x, BParam), (family, nm, x)
                continue
            assert isinstance(x, np.int32) if size == 4 else not isinstance(x, np.integer), (family, nm, x)
        assert int(args[names.index("N") if "N" in names else names.index("pN")]) == n
        ln = kern.launcher(n)
        assert kern.launcher(n) is ln and not ln.is_noop  # cached per N
        fake = FakeLaunch([s for _, s in sig])
        ln._launch = fake
        ln(0xB0, 0xC0, 5, 0xB1A5) if nk else ln(0xB0, 0xC0, 5)
        (f, gx, gy, gz, bx, _by, _bz, smem, _stream, _extra), got = fake.calls[0]
        grid, block = kern.geometry(n)
        assert f == 0xF00D and (gx, gy) == ((*grid, 1)[0], (*grid, 1)[1]) and bx == block[0]
        # csr_gemv's fill: the block's warps chosen at launch, at most the configured ones
        assert (bx == fam.threads(cfg) or (cfg.get("fill") and bx <= fam.threads(cfg))) and smem == kern.smem_bytes()
        want = [0xB0 if x is b_tag else 0xC0 if x is c_tag else 0xB1A5 if x is bias_tag
                else int(x) if isinstance(x, np.int32) else bytes(x.buf) if isinstance(x, BParam) else x.data.ptr
                for x in args]
        assert got == want, family
        checked += 1
    assert kern.launcher(0).is_noop  # N == 0: nothing to launch
    return checked


def launch_signature_test(family: str):
    """The test each family's test file binds (`test_launch_matches_the_kernel_signature = launch_signature_test(F)`):
    check_launch_matches_signature for every dtype, some configs checked for each dtype the family computes; for a
    family declaring the nk layout, its nk rendering too."""
    @pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
    def test_launch_matches_the_kernel_signature(dtype):
        a = random_matrix(64, 256, 0.05, "uniform", 0)
        checked = check_launch_matches_signature(family, dtype, a, 128)
        assert (checked > 0) == get_family(family).space.supports(dtype)
        if get_family(family).space.supports_layout("nk"):
            checked_nk = check_launch_matches_signature(family, dtype, a, 128, layout="nk")
            assert (checked_nk > 0) == get_family(family).space.supports(dtype)
    return test_launch_matches_the_kernel_signature
