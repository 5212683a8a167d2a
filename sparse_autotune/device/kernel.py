"""Kernels on the device: A's arrays and cached layouts (DeviceCSR), a compiled variant (Kernel) and its launch.

Each family's own launch geometry, arguments and layouts are its host side (variants/<family>.py, core.families).
A `Kernel` is one compiled variant bound to one sparse matrix on the device; `kernel(B, C)` launches it
on the current CuPy stream. `kernel.launcher(n)` is the same launch bound to N with its arguments packed once:
`launcher(b_ptr, c_ptr, stream_ptr)` is one cuLaunchKernel on raw pointers (no CuPy or DLPack objects per call).

A kernel of the nk layout (`build_kernel(..., layout="nk")`, a family declaring nk: y = x @ A^T + bias with x N x K
and y N x M, core.problem) takes the bias pointer right after C: `kernel(x, y, bias)`, and its launcher is a
BiasLauncher, `launcher(x_ptr, y_ptr, stream_ptr, bias_ptr=0)` (0: no bias).
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..device.compile import compile_kernel, compile_ptx, function_ptr, reserve_smem
from ..device.gpu import libcuda
from ..device.timing import MAX_B_BUFFERS
from ..errors import CandidateError
from ..core.problem import storage
from ..core.render import render
from ..core.families import Family, get_family
from ..core.space import Space, split_path


class DeviceCSR:
    """A on the device: its CSR arrays (row pointers, values in the dtype, column indices of 16 or 32 bits), and the
    layouts the families build from the host matrix, each built once and kept (`cached`)."""

    def __init__(self, a: sp.csr_matrix, dtype: str):
        from .gpu import cupy  # noqa: PLC0415
        cp = cupy()
        self.shape = a.shape
        self.nnz = int(a.nnz)
        self.dtype = dtype
        self._host = a
        self.row_ptr = cp.asarray(a.indptr.astype(np.int32))
        self.vals = cp.asarray(storage(a.data, dtype))
        self._cache: dict = {}
        self.lock = threading.Lock()  # held while a kernel builds its layouts (Kernel.warm; compile threads share A)

    @property
    def host(self) -> sp.csr_matrix:
        return self._host

    def cols(self, bits: int):
        """A's column indices as uint16 (bits 16) or int32."""
        return self.cached(("cols", bits), lambda h: h.indices.astype(np.uint16 if bits == 16 else np.int32))

    def _layouts(self, keys=None) -> dict:
        """The cached layouts, or those of `keys`."""
        return {k: v for k, v in self._cache.items() if keys is None or k in keys}

    def keys_used(self, run) -> set:
        """The layouts (cache keys) that run() asks for, e.g. lambda: kernel.args(1, None, None). Under the lock
        (Kernel.warm builds under it too), so another thread's layouts are not counted."""
        seen: set = set()
        build = self.cached

        def cached(key, make):
            seen.add(key)
            return build(key, make)
        with self.lock:
            self.cached = cached  # this instance only, for the call
            try:
                run()
            finally:
                del self.cached
        return seen

    def twin(self, keys=None) -> "DeviceCSR":
        """A second copy of A on the device: the same host matrix, its device arrays copied: the CSR arrays and each
        layout built so far (workspaces included), or with `keys` (e.g. keys_used of one kernel's arguments) those
        layouts only (another is built again if asked for). Kernels bound to several twins read A from HBM at every
        launch (device.cold)."""
        t = DeviceCSR.__new__(DeviceCSR)
        t.shape, t.nnz, t.dtype, t._host = self.shape, self.nnz, self.dtype, self._host
        t.row_ptr, t.vals = self.row_ptr.copy(), self.vals.copy()
        t._cache = {k: (tuple(_copy(x) for x in v) if isinstance(v, tuple) else _copy(v))
                    for k, v in self._layouts(keys).items()}
        t.lock = threading.Lock()
        return t

    def nbytes(self, keys=None) -> int:
        """Bytes of A's device arrays (CSR and the layouts built so far; with `keys`, as twin(keys) copies them)."""
        arrays = [self.row_ptr, self.vals] + [x for v in self._layouts(keys).values()
                                              for x in (v if isinstance(v, tuple) else (v,))]
        return int(sum(int(getattr(x, "nbytes", 0)) for x in arrays))

    def cached(self, key, build):
        """The layout `key`: build(host CSR) once (numpy arrays, or a tuple of arrays and ints), uploaded; kept."""
        if key not in self._cache:
            from .gpu import cupy  # noqa: PLC0415
            cp = cupy()
            got = build(self._host)
            up = (lambda x: cp.asarray(x) if isinstance(x, np.ndarray) else x)
            self._cache[key] = tuple(up(x) for x in got) if isinstance(got, tuple) else up(got)
        return self._cache[key]


def _copy(x):
    return x.copy() if hasattr(x, "copy") and hasattr(x, "data") else x


@dataclass
class Kernel:
    """One compiled variant of a family bound to one matrix on the device; the family's host side says how it is
    launched (core.families)."""

    family: Family
    config: dict
    dtype: str
    source: str
    fn: object
    a: DeviceCSR
    layout: str = "kn"  # the operand layout it was rendered for (nk: the bias pointer follows C)
    _launchers: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def space(self) -> Space:
        return self.family.space

    def geometry(self, n: int):
        """(grid, block) for N columns."""
        return self.family.geometry(self, n)

    def smem_bytes(self) -> int:
        """Dynamic shared memory per block."""
        return self.family.smem_bytes(self)

    def args(self, n: int, b, c, bias=None) -> tuple:
        """The kernel's parameters for N columns, in order: A's device arrays, `b` and `c` (and, nk, `bias` right after
        c) passed through as given (arrays, pointers or placeholders) and np.int32 scalars."""
        return self.family.args(self, n, b, c, bias)

    def a_bytes(self, n: int = 1) -> int:
        """Bytes of A as this kernel reads it for N = n: the device arrays its arguments name besides B and C (the
        family's format; a split-K workspace counts too). What the byte floor of a memory-bound layer is computed from."""
        return int(sum(int(getattr(x, "nbytes", 0)) for x in self.args(n, None, None)))

    def bound_to(self, a: DeviceCSR) -> "Kernel":
        """The same compiled variant bound to another copy of A (DeviceCSR.twin)."""
        return dataclasses.replace(self, a=a)

    def warm(self) -> None:
        """Build A's device layouts this kernel reads (tc_gather's over 13.5M nonzeros: ~2 s on the CPU), so the first
        launch does not: the tuner calls it from its compile threads, outside the GPU's turn."""
        with self.a.lock:
            self.args(1, None, None)

    def launcher(self, n: int) -> Launcher:
        """The launch for N columns with its arguments packed (built at the first call for N, then cached)."""
        ln = self._launchers.get(n)
        if ln is None:
            # the family's wrapper where it has one (tc_sp24's tf32: a conversion launched before the kernel)
            ln = self._launchers[n] = self.family.wrap_launcher(self, int(n), self._make_launcher(int(n)))
        return ln

    def _make_launcher(self, n: int) -> Launcher:
        nk = self.layout == "nk"
        if self.a.shape[0] == 0 or n == 0:
            return BiasLauncher.noop() if nk else Launcher.noop()
        grid, block = self.geometry(n)
        args = self.args(n, _B_SLOT, _C_SLOT, _BIAS_SLOT) if nk else self.args(n, _B_SLOT, _C_SLOT)
        values: list = []
        keep: list = [self.fn]  # the compiled kernel holds its module: the function handle stays valid
        for a in args:
            if a is _B_SLOT or a is _C_SLOT or a is _BIAS_SLOT:
                values.append(0)
            elif isinstance(a, np.int32):
                values.append(a)
            elif isinstance(a, (int, np.uint64)) and not isinstance(a, bool):  # a raw pointer (0: a null pointer)
                values.append(int(a))
            elif isinstance(a, BParam):  # passed by value, made from B's address at each launch
                values.append(a)
            else:  # one of A's device arrays: its address, and a reference so it is not freed
                values.append(int(a.data.ptr))
                keep.append(a)
        b_slot = next(i for i, a in enumerate(args) if a is _B_SLOT)
        c_slot = next(i for i, a in enumerate(args) if a is _C_SLOT)
        if not nk:
            return Launcher(function_ptr(self.fn), grid, block, self.smem_bytes(), values, b_slot, c_slot, keep)
        bias_slot = next((i for i, a in enumerate(args) if a is _BIAS_SLOT), None)
        if bias_slot != c_slot + 1:
            raise CandidateError("launch", f"family {self.family.name}: an nk kernel's arguments must have the bias "
                                           "right after C")
        return BiasLauncher(function_ptr(self.fn), grid, block, self.smem_bytes(), values, b_slot, c_slot, keep,
                            bias_slot=bias_slot)

    def __call__(self, b, c_out, bias=None):
        """C = A @ B on the current CuPy stream (B and C CuPy arrays); returns c_out. nk: y = x @ A^T + bias with B the
        x (N x K), c_out the y (N x M) and `bias` a length-M array or None."""
        nk = self.layout == "nk"
        ln = self.launcher(int(b.shape[0] if nk else b.shape[1]))
        if not ln.is_noop:
            from ..device.gpu import cupy  # noqa: PLC0415
            stream = cupy().cuda.get_current_stream().ptr
            if nk:
                ln(b.data.ptr, c_out.data.ptr, stream, 0 if bias is None else bias.data.ptr)
            else:
                ln(b.data.ptr, c_out.data.ptr, stream)
        return c_out


_B_SLOT, _C_SLOT, _BIAS_SLOT = object(), object(), object()  # placeholders in Kernel.args when packing a launcher


class BParam:
    """A by-value kernel parameter of `nbytes` bytes made from B's address: `encode(b_ptr)` returns its bytes (e.g.
    tc_wgmma's pmap: B's 128-byte TMA descriptor, a __grid_constant__ CUtensorMap). A Launcher updates it at each
    launch, under its lock and before the launch copies the parameters (a CUDA graph keeps the bytes of its capture):
    nothing to do while B stays where it was, else the bytes of the last KEEP addresses are reused (a caching
    allocator hands out a few addresses over and over) and only a new address is encoded. The buffer is 64-byte
    aligned, as a CUtensorMap is."""

    # as many addresses as a timing rotates B buffers (device.timing.MAX_B_BUFFERS): the tuner's rough estimate
    # launches once per buffer right after a warm-up pass over them, so with fewer kept every estimate launch
    # re-encoded its map on the host (~60 us of cuTensorMapEncodeTiled) and a by-value family's candidate was given up
    # at 5-7x its time (session 35: tc_sp24 in the dl suite, 67 us estimated for a 9 us kernel)
    KEEP = MAX_B_BUFFERS
    __slots__ = ("buf", "encode", "last", "_seen")

    def __init__(self, nbytes: int, encode):
        if nbytes <= 0 or nbytes % 8:
            raise ValueError(f"a by-value parameter needs a positive multiple of 8 bytes (got {nbytes})")
        raw = np.zeros(int(nbytes) + 64, dtype=np.uint8)
        at = (-raw.ctypes.data) % 64
        self.buf = raw[at:at + int(nbytes)]
        self.encode = encode
        self.last = None
        self._seen: dict[int, bytes] = {}

    def update(self, b_ptr: int) -> None:
        if b_ptr == self.last:
            return
        data = self._seen.pop(b_ptr, None)
        if data is None:
            data = bytes(self.encode(int(b_ptr)))
            if len(data) != self.buf.size:
                raise ValueError(f"a by-value parameter of {self.buf.size} bytes was encoded as {len(data)}")
            if len(self._seen) >= self.KEEP:
                self._seen.pop(next(iter(self._seen)))  # the least recently used address
        self._seen[b_ptr] = data
        self.buf[:] = np.frombuffer(data, dtype=np.uint8)
        self.last = b_ptr


CUDA_ERROR_INVALID_CONTEXT = 201


def pack_params(values) -> tuple[np.ndarray, np.ndarray]:
    """cuLaunchKernel's `kernelParams` for `values`: a uint64 array with one 8-byte slot per parameter, and a uint64
    array of the slots' addresses (the `void**` itself). A Python int is a device pointer (all 8 bytes); an np.int32
    is a 4-byte parameter, stored in the slot's first 4 bytes in native (little-endian) order: the driver copies
    exactly 4 bytes from the slot's address for it. A BParam is passed by value from its own buffer (its slot unused).
    Both arrays (and the BParams) must stay alive while they are launched with."""
    slots = np.zeros(max(1, len(values)), dtype=np.uint64)
    words = slots.view(np.int32)  # words[2 * i] is the first 4 bytes of slot i
    base = slots.ctypes.data
    addrs = np.array([base + 8 * i for i in range(len(values))], dtype=np.uint64)
    for i, v in enumerate(values):
        if isinstance(v, BParam):
            addrs[i] = v.buf.ctypes.data
        elif isinstance(v, np.int32):
            words[2 * i] = v
        elif isinstance(v, (int, np.uint64)) and not isinstance(v, bool) and 0 <= int(v) < 2 ** 64:
            slots[i] = int(v)
        else:
            raise TypeError(f"kernel parameter {i}: {v!r} is neither a device pointer (int), an np.int32 nor a "
                            "BParam")
    return slots, addrs


CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # cuda.h's CUlaunchAttributeID
_PDL: dict = {}


def _pdl_types():
    """ctypes of cuda.h's CUlaunchAttribute (id, 4 bytes of padding, a 64-byte value union) and CUlaunchConfig."""
    if not _PDL:
        import ctypes as ct  # noqa: PLC0415

        class Attr(ct.Structure):
            _fields_ = [("id", ct.c_int), ("pad", ct.c_char * 4), ("value", ct.c_int * 16)]

        class Config(ct.Structure):
            _fields_ = [("gridDimX", ct.c_uint), ("gridDimY", ct.c_uint), ("gridDimZ", ct.c_uint),
                        ("blockDimX", ct.c_uint), ("blockDimY", ct.c_uint), ("blockDimZ", ct.c_uint),
                        ("sharedMemBytes", ct.c_uint), ("hStream", ct.c_void_p), ("attrs", ct.POINTER(Attr)),
                        ("numAttrs", ct.c_uint)]
        _PDL.update(Attr=Attr, Config=Config, ct=ct)
    return _PDL


class DriverError(RuntimeError):
    """A CUresult other than CUDA_SUCCESS from a launch made through ctypes (`status`, as CuPy's errors carry it)."""

    def __init__(self, status: int, what: str):
        super().__init__(f"{what} returned CUresult {status}")
        self.status = int(status)


class ProgrammaticLaunch:
    """cuLaunchKernelEx with programmatic stream serialization: the kernel may start while the launch before it on
    `stream` still runs (from when every block of that launch has executed griddepcontrol.launch_dependents, or
    exited); it must execute griddepcontrol.wait before it reads what that launch writes. Called with the same
    arguments as CuPy's driver.launchKernel (a Launcher's `launch_fn`). Its CUlaunchConfig and attribute are built once
    and again only when the function, grid, block, shared memory or parameters change (a Launcher's never do): a call
    writes the stream and launches, where building the ctypes structures took ~10x the host time of the launch itself.
    One caller at a time (a Launcher calls under its lock); `lib` replaces libcuda (tests)."""

    __slots__ = ("_key", "_cfg", "_ref", "_attr", "_args", "_lib")

    def __init__(self, lib=None):
        self._key = None
        self._lib = lib

    def __call__(self, func, gx, gy, gz, bx, by, bz, smem, stream, params, extra=0):
        key = (func, gx, gy, gz, bx, by, bz, smem, params, extra)
        if key != self._key:
            t = _pdl_types()
            ct = t["ct"]
            self._attr = t["Attr"]()
            self._attr.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
            self._attr.value[0] = 1  # programmaticStreamSerializationAllowed
            self._cfg = t["Config"](int(gx), int(gy), int(gz), int(bx), int(by), int(bz), int(smem), None,
                                    ct.pointer(self._attr), 1)
            self._ref = ct.byref(self._cfg)
            self._args = (ct.c_void_p(int(func)), ct.c_void_p(int(params)), ct.c_void_p(int(extra) or None))
            self._key = key
        self._cfg.hStream = int(stream) or None
        lib = self._lib or libcuda()
        if lib is None:
            raise RuntimeError("cannot load libcuda through ctypes (programmatic dependent launch)")
        status = lib.cuLaunchKernelEx(self._ref, *self._args)
        if status:
            raise DriverError(status, "cuLaunchKernelEx (programmatic)")


class Launcher:
    """One kernel bound to one N: grid, block, shared memory and its packed arguments. `launcher(b_ptr, c_ptr,
    stream_ptr)` (also `.launch`) writes B's and C's addresses into their slots and calls cuLaunchKernel on
    `stream_ptr`; the driver copies the parameters at the call, so a lock around rewrite + launch makes it thread-safe.
    Capturable into a CUDA graph like any launch on a capturing stream."""

    __slots__ = ("_pre", "_slots", "_addrs", "_params", "_b", "_c", "_bp", "_keep", "_lock", "_launch", "is_noop")

    def __init__(self, func_ptr: int, grid: tuple, block: tuple, smem: int, values, b_slot: int, c_slot: int,
                 keep=(), launch_fn=None):
        g = tuple(max(1, int(x)) for x in (*grid, 1, 1)[:3])
        bl = tuple(max(1, int(x)) for x in (*block, 1, 1)[:3])
        self._pre = (int(func_ptr), *g, *bl, int(smem))
        self._slots, self._addrs = pack_params(values)
        self._params = int(self._addrs.ctypes.data)
        self._b, self._c = int(b_slot), int(c_slot)
        self._bp = tuple(v for v in values if isinstance(v, BParam))  # re-encoded from B's address at each launch
        self._keep = (*keep, *self._bp)
        self._lock = threading.Lock()
        if launch_fn is None:
            from cupy_backends.cuda.api.driver import launchKernel as launch_fn  # noqa: PLC0415
        self._launch = launch_fn
        self.is_noop = False

    def programmatic(self) -> Launcher:
        """This launcher, from now on launching with programmatic stream serialization (ProgrammaticLaunch): its
        kernel may start while the previous launch on the stream runs, and waits for it by griddepcontrol.wait."""
        self._launch = ProgrammaticLaunch()
        return self

    @classmethod
    def noop(cls) -> Launcher:
        """The launcher of an empty product (M == 0 or N == 0): calling it does nothing."""
        ln = cls.__new__(cls)
        ln.is_noop = True
        return ln

    def __call__(self, b_ptr: int, c_ptr: int, stream_ptr: int) -> None:
        if self.is_noop:
            return
        with self._lock:
            self._bind(b_ptr, c_ptr)
            self._fire(stream_ptr)

    launch = __call__

    def _bind(self, b_ptr: int, c_ptr: int) -> None:
        """B's and C's addresses into their slots, and the by-value parameters made from B (the caller holds the
        lock)."""
        slots = self._slots
        slots[self._b] = b_ptr
        slots[self._c] = c_ptr
        for p in self._bp:
            p.update(b_ptr)

    def _fire(self, stream_ptr: int) -> None:
        """cuLaunchKernel with the packed parameters (the caller holds the lock and has written the slots)."""
        try:
            self._launch(*self._pre, stream_ptr, self._params, 0)
        except Exception as exc:
            # a thread that never used the CUDA runtime has no current context: bind the device's primary
            # context (what CuPy's own launches do first) and launch again
            if getattr(exc, "status", None) != CUDA_ERROR_INVALID_CONTEXT:
                raise
            from ..device.gpu import cupy  # noqa: PLC0415
            cupy().cuda.runtime.memGetInfo()
            self._launch(*self._pre, stream_ptr, self._params, 0)


class BiasLauncher(Launcher):
    """The launcher of a kernel with a third pointer slot, the bias (an nk kernel: right after C; device.staged's
    transposes): `launcher(b_ptr, c_ptr, stream_ptr, bias_ptr=0)` writes the three addresses and launches; a bias of 0
    is a null pointer (no bias)."""

    __slots__ = ("_bias",)

    def __init__(self, *args, bias_slot: int, **kw):
        super().__init__(*args, **kw)
        self._bias = int(bias_slot)

    def __call__(self, b_ptr: int, c_ptr: int, stream_ptr: int, bias_ptr: int = 0) -> None:
        if self.is_noop:
            return
        with self._lock:
            self._bind(b_ptr, c_ptr)
            self._slots[self._bias] = bias_ptr
            self._fire(stream_ptr)

    launch = __call__


def build_kernel(a: DeviceCSR, family: str, config: dict, dtype: str, layout: str = "kn") -> Kernel:
    """One config of a family compiled for A (DeviceCSR) in `dtype`, its template rendered for `layout` (nk only for a
    family declaring it: a CandidateError("render") else). A config's nk_path (core.space.NK_PATH) is not the
    kernel's: device.staged.build_for chooses between a native nk kernel and the staged path by it."""
    fam = get_family(family)
    space = fam.space
    dtype = space.kernel_dtype(dtype)  # tf32 in a family without a TF32 kernel: its exact fp32 kernel (same storage)
    config, _ = split_path(config)
    config = space.normalize(config, dtype) or config  # a config stored before a parameter existed gets its default
    try:
        context = fam.context(a.host, config) if space.needs_matrix else None
        source = render(space, config, dtype, context, layout)
    except Exception as exc:  # noqa: BLE001
        raise CandidateError("render", str(exc)) from None
    fn = compile_ptx(source) if space.template.endswith(".ptx.j2") else \
        compile_kernel(source, options=(f"-arch={space.arch}",) if space.arch else ())
    kern = Kernel(fam, dict(config), dtype, source, fn, a, layout)
    kern.warm()
    reserve_smem(fn, kern.smem_bytes())  # over 48 KB with the static shared memory: opt in
    return kern
