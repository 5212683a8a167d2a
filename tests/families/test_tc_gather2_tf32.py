"""tc_gather2 with 32-bit elements (issue 18): dtype tf32 (fp32 storage, mma.m16n8k8 .tf32, verified at TF32's
tolerance) and fp32 with split 3xtf32 (each operand a TF32 big part + the TF32 of the remainder, three MMAs, verified at
fp32's tolerance). CPU: the layout round-trips (A rounded to TF32 / big + small), the 64-bit loads' bank placement, a
numpy emulation of the rounding (3xTF32 reaches the fp32 tolerance where plain TF32 does not), the space (split only
for fp32, the tf32 fallback of the fp32 families), every config of a covering sample rendered and compiled by nvcc
(sm_90, ptxas -v: no spills), and the rendered kernel itself run on the CPU (tests/families/test_tc_gather2.py's
emulation, with mma.m16n8k8 .tf32, cvt.rna.tf32 and the 64-bit shared loads emulated: every MMA operand checked to be
a TF32 value) against float64. GPU: a covering sample on the edge cases (one dense row among empty ones, all rows
identical, M not a multiple of 8, ...) at N = 1, 7, 72, 2049, and the known-good configs at 3072 x 768, N = 2048."""
from __future__ import annotations

import concurrent.futures
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sps

from test_tc_gather2 import EMU_MAIN, EMU_PRELUDE, GEOMS, _mk, _rel_err, edge_cases, emu_inputs, emu_kernel, gxx
from sparse_autotune.core import render
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import TOLERANCE, random_matrix
from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
from sparse_autotune.device import compile as sat_compile

FAMILY = "tc_gather2"
WIDE = ("tf32", "fp32")


def host():
    return get_family(FAMILY).host


def space():
    return get_family(FAMILY).space


def seen_by_kernel(a, dtype) -> np.ndarray:
    """A as the kernel's MMAs see it (float64): rounded to TF32, or big + small (3xTF32)."""
    d = a.toarray().astype(np.float32)
    if dtype == "tf32":
        return host().tf32_round(d).astype(np.float64)
    big, small = host().tf32_split(d)
    return big.astype(np.float64) + small.astype(np.float64)


# ---- the numbers: why TF32's tolerance, why 3xTF32 is fp32 ---------------------------------------------------

def _emulate(a: np.ndarray, b: np.ndarray, split: bool) -> np.ndarray:
    """C = A @ B as the kernel computes it (numpy): both operands rounded to TF32 (split: also the TF32 remainders, and
    the three products small x big + big x small + big x big), products exact, fp32 accumulation."""
    h = host()
    if not split:
        return h.tf32_round(a) @ h.tf32_round(b)  # float32 GEMM: fp32 accumulation of exact TF32 products
    ab, asm = h.tf32_split(a)
    bb, bs = h.tf32_split(b)
    return (ab @ bs + asm @ bb) + ab @ bb


def test_3xtf32_rounding_emulated_reaches_fp32_tolerance_where_tf32_does_not():
    """Against the float64 product of the fp32 values: plain TF32 lands near 0.82 * 2^-11 (4e-4: over fp32's 1e-4,
    well within TF32's 2e-3); 3xTF32 near 1e-7 (within fp32's 1e-4 by far), at K = 64 .. 4096 and a 40 % dense row.
    The rounding is cvt.rna's: 10 mantissa bits, low 13 bits zero; big + small is x to 2^-22."""
    h = host()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(100000).astype(np.float32)
    r = h.tf32_round(x)
    assert (r.view(np.uint32) & 0x1FFF == 0).all() and np.abs(r - x).max() <= np.abs(x).max() * 2.0 ** -11
    big, small = h.tf32_split(x)
    assert (small.view(np.uint32) & 0x1FFF == 0).all()
    assert (np.abs(big.astype(np.float64) + small - x) <= np.abs(x) * 2.0 ** -21).all()
    assert h.tf32_round(np.float32([1.0 + 2.0 ** -11]))[0] == 1.0 + 2.0 ** -10  # a tie rounds away from zero
    for m, k, n, d in ((64, 64, 256, 0.4), (256, 768, 512, 0.05), (128, 4096, 128, 0.1), (64, 3000, 64, 1.0)):
        a = sps.random(m, k, density=d, format="csr", random_state=1, dtype=np.float32,
                       data_rvs=lambda s: rng.standard_normal(s)).toarray().astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        e1 = _rel_err(_emulate(a, b, False).astype(np.float64), ref)
        e3 = _rel_err(_emulate(a, b, True).astype(np.float64), ref)
        assert TOLERANCE["fp32"] < e1 < TOLERANCE["tf32"] / 2, (m, k, d, e1)
        assert 2e-4 < e1 < 7e-4, e1  # ~0.82 u, u = 2^-11
        assert e3 < TOLERANCE["fp32"] / 100, (m, k, d, e3)


# ---- the layout --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rn,wm,ks", GEOMS)
def test_layout_round_trips_to_a_by_the_32_bit_fragment_rule(rn, wm, ks):
    """decode() with the m16n8k8 .tf32 B-operand rule (lane 4 g + q holds k = q + 4 h, its slots at bytes 4 q + h):
    A rounded to TF32 (tf32), big + small (fp32); the weights are TF32 values; the same steps as the 16-bit layout."""
    h = host()
    cases = {**edge_cases(), "uniform_64x256": random_matrix(64, 256, 0.05, "uniform", 0)}
    for name, a in cases.items():
        for dtype in WIDE:
            lay = h.build(a, rn, wm, ks, dtype)
            assert lay["avals"].dtype == np.float32
            assert len(lay["avals"]) == lay["steps"] * rn * (128 if dtype == "tf32" else 256)
            assert (lay["avals"].view(np.uint32) & 0x1FFF == 0).all()
            np.testing.assert_array_equal(h.decode(lay), seen_by_kernel(a, dtype), err_msg=f"{name} {dtype}")
            assert lay["steps"] == h.build(a, rn, wm, ks, "fp16")["steps"]
            if dtype == "fp32" and a.nnz:
                assert np.abs(h.decode(lay) - a.toarray()).max() <= np.abs(a.data).max() * 2.0 ** -21


def test_reordered_32_bit_layout_round_trips_through_the_permutation():
    from test_tc_gather import clustered
    h = host()
    a = clustered()
    for dtype in WIDE:
        lay = h.build_ordered(a, 2, 4, 4, dtype, "greedy")
        back = np.zeros(a.shape)
        back[lay["perm"]] = h.decode(lay)
        np.testing.assert_array_equal(back, seen_by_kernel(a, dtype))


def test_bank_placement_of_the_64_bit_loads():
    """Per quarter of a k-step (the 4 slots a half-warp's 64-bit loads read, rows 32 mod 128 bytes apart): 2 wavefronts
    where the slots have distinct slot % 4; dense tiles get 2, uniform random patterns stay near it, and the same slots
    in ascending order are worse."""
    h = host()
    assert h.bank_wavefronts(h.build(sps.csr_matrix(np.ones((64, 512))), 2, 4, 4, "tf32")) == 2.0
    a = random_matrix(1024, 768, 0.05, "uniform", 0)
    for rn, wm, ks in ((1, 8, 4), (2, 8, 8), (4, 4, 4)):
        lay = h.build(a, rn, wm, ks, "tf32")
        wf = h.bank_wavefronts(lay)
        assert 2.0 <= wf <= 2.6, (rn, wm, ks, wf)
        # the same slots of each k-step sorted by k: more conflicts
        ks_ = lay["kslot"].reshape(-1, 4, 4).transpose(0, 2, 1).reshape(-1, 16)
        srt = np.sort(ks_, axis=1).reshape(-1, 4, 4).transpose(0, 2, 1).ravel()
        assert h.bank_wavefronts(dict(lay, kslot=srt)) > wf + 0.2, (rn, wm, ks)


def test_shared_memory_of_32_bit_elements():
    h = host()
    cfg = dict(rn=2, wm=8, wn=1, tile_n=128, stages=3, ksteps=4, bload="vec", row_order="natural")
    assert h.ring_bytes(cfg, "tf32") == 3 * 64 * (4 * 128 + 32)
    assert h.ctile_bytes(cfg, "fp32") == 128 * (4 * 128 + 16)
    assert h.shared_bytes(cfg, "tf32") == 3 * 64 * 544 > h.shared_bytes(cfg, "fp16") == h.shared_bytes(cfg)


# ---- the space -----------------------------------------------------------------------------------------------

def test_split_is_fp32s_only_and_tf32_falls_back_to_exact_fp32_families():
    sp = space()
    assert sp.supports("tf32") and sp.supports("fp32") and sp.kernel_dtype("tf32") == "tf32"
    kg = sp.known_good[0]
    assert "split" not in sp.normalize(kg, "fp16") and "split" not in sp.normalize(kg, "tf32")
    assert sp.normalize(kg, "fp32") == {**sp.normalize(kg, "fp16"), "split": "3xtf32"}
    assert all(c.get("split") == "3xtf32" for c in list(sp.enumerate("fp32"))[::97])
    assert not any("split" in c for c in list(sp.enumerate("tf32"))[::97])
    rs = get_family("csr_rowsplit").space  # CUDA cores, exact fp32: a valid (more accurate) TF32 answer
    assert rs.supports("tf32") and rs.kernel_dtype("tf32") == "fp32"
    assert list(rs.enumerate("tf32")) == list(rs.enumerate("fp32"))
    env = problem_env(512, 2048, 512, 104858, "tf32")
    assert rs.defaults("tf32", env) == rs.defaults("fp32", problem_env(512, 2048, 512, 104858, "fp32"))
    assert not get_family("tc_gather").space.supports("tf32")  # 16-bit only (tc_gather2 carries the 32-bit path)
    # N % 4 suffices for 16-byte copies of 32-bit elements
    cfg = sp.normalize(dict(kg, tile_n=64), "tf32")
    assert sp.check(cfg, problem_env(3072, 768, 516, 117965, "tf32"), DEFAULT_LIMITS) is None
    assert sp.check(cfg, problem_env(3072, 768, 516, 117965, "fp16"), DEFAULT_LIMITS) is not None
    for dt in WIDE:
        for n in (1, 7, 512, 2048):
            assert sp.defaults(dt, problem_env(3072, 768, n, 117965, dt), DEFAULT_LIMITS), (dt, n)


def test_every_feasible_32_bit_config_renders_its_math():
    sp = space()
    count = 0
    for dt in WIDE:
        for m, k, n, d in ((3072, 768, 2048, 0.05), (101, 384, 7, 0.08)):
            for cfg in list(sp.feasible(dt, problem_env(m, k, n, round(d * m * k), dt), DEFAULT_LIMITS))[::7]:
                src = render.render(sp, cfg, dt)
                body = src.split("struct AFrag", 1)[1]
                assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in src and "cvt.rna.tf32.f32" in src
                assert "ldsm_x4_t" not in body and "mma16816" not in body and "f2h" not in body
                assert "const float* __restrict__ B, float* __restrict__ C" in src
                step = body.split("mma_step32", 1)[1].split("\n}\n", 1)[0]
                assert step.count("mma1688(") == (3 if dt == "fp32" else 1)
                assert (f" split=3xtf32" in src.splitlines()[0]) == (dt == "fp32")
                count += 1
    assert count > 500


def _nvcc(cfg, dtype):
    return sat_compile.nvcc_check(render.render(space(), cfg, dtype), arch="sm_90")


def _covering(dtype, n=2048, m=3072, k=768):
    """Configs covering each value of each parameter and each (rn, warp columns, apre, bload) (the rest cycled)."""
    sp = space()
    feas = list(sp.feasible(dtype, problem_env(m, k, n, round(0.05 * m * k), dtype), DEFAULT_LIMITS))
    seen, out = set(), []
    for cfg in feas[::13] + feas:
        key = (cfg["rn"], cfg["tile_n"] // cfg["wn"], cfg["apre"], cfg["bload"])
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    for name in ("rn", "wm", "wn", "tile_n", "stages", "ksteps", "bload", "apre", "row_order"):
        for v in sp.param(name).choices(dtype):
            if not any(c.get(name) == v for c in out):
                out += [c for c in feas if c.get(name) == v][:1]
    return out


@pytest.mark.parametrize("dtype", WIDE)
def test_covering_sample_compiles_with_nvcc_without_spills(dtype):
    """ptxas -v (sm_90, CUDA 13): no spill stores, at most 255 registers, only dynamic shared memory; the template's
    __launch_bounds__ estimate (32-bit: 12 rn / 24 rn of weights, +32) never caps a kernel into spilling."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = space()
    cfgs = _covering(dtype)[::2] + _covering(dtype, n=7)[::3]
    cfgs += [c for c in sp.defaults(dtype, problem_env(3072, 768, 2048, 117965, dtype), DEFAULT_LIMITS)
             if c not in cfgs]
    assert len(cfgs) >= 20
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda c: _nvcc(c, dtype), cfgs))
    for cfg, rep in zip(cfgs, reports):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
        regs = int(re.search(r"Used (\d+) registers", rep).group(1))
        spill = max(int(x) for x in re.findall(r"(\d+) bytes spill stores", rep))
        assert regs <= 255 and spill == 0, (cfg, rep)
        smem = re.search(r"(\d+) bytes smem", rep)
        assert smem is None or int(smem.group(1)) == 0, (cfg, rep)


# ---- the kernel on the CPU (test_tc_gather2's emulation, 32-bit) ----------------------------------------------

EMU_W32 = r'''
struct float2 { float x, y; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline unsigned int tf32(float x) { return (__float_as_uint(x) + 0x1000u) & 0xFFFFE000u; }  // cvt.rna.tf32.f32
inline float2 lds64(unsigned int a) {
    if (a % 8) die("misaligned ld.shared.v2.f32");
    chk(a, 8);
    float2 v; std::memcpy(&v, smem + a, 8); return v;
}
inline float tfv(unsigned int u) {  // an MMA operand: must be a TF32 value (low 13 bits zero)
    if (u & 0x1FFFu) die("an mma .tf32 operand that is not a TF32 value");
    return __uint_as_float(u);
}
inline void mma1688(float (&d)[4], const unsigned int (&a)[4], unsigned int b0, unsigned int b1) {
    const int lane = threadIdx.x & 31;
    WarpX& w = share_frags(a, b0, b1);
    float A[16][8], Bm[8][8];
    for (int l = 0; l < 32; ++l) {  // m16n8k8 .tf32: a0 (g, q), a1 (g + 8, q), a2 (g, q + 4), a3 (g + 8, q + 4)
        const int g = l >> 2, q = l & 3;
        A[g][q] = tfv(w.a[l][0]); A[g + 8][q] = tfv(w.a[l][1]);
        A[g][q + 4] = tfv(w.a[l][2]); A[g + 8][q + 4] = tfv(w.a[l][3]);
        Bm[q][g] = tfv(w.b[l][0]); Bm[q + 4][g] = tfv(w.b[l][1]);  // b0 (k = q, n = g), b1 (k = q + 4, n = g)
    }
    w.bar->arrive_and_wait();
    const int g = lane >> 2, q = lane & 3;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * q, 2 * q + 1, 2 * q, 2 * q + 1};
    for (int e = 0; e < 4; ++e) {
        float s = d[e];
        for (int k = 0; k < 8; ++k) s += A[rows[e]][k] * Bm[k][cols[e]];  // TF32 products are exact in fp32
        d[e] = s;
    }
}
'''


def emu_source32(cfg: dict, dtype: str) -> str:
    main = EMU_MAIN.replace("PERM_ARG", "perm.data()," if cfg["row_order"] != "natural" else "")
    for old, new in (('rd<uint2>(d + "/avals", 16)', 'rd<uint4>(d + "/avals", 16)'),
                     ('rd<unsigned short>(d + "/B", 16)', 'rd<float>(d + "/B", 16)'),
                     ("std::vector<unsigned short> C((size_t)M * N + 1, 0x7e00);",
                      "std::vector<float> C((size_t)M * N + 1, __uint_as_float(0x7fc00000u));")):
        assert main.count(old) == 1, old
        main = main.replace(old, new)
    return EMU_PRELUDE + EMU_W32 + emu_kernel(render.render(space(), cfg, dtype)) + main


class Emulated32:
    def __init__(self, cfg: dict, dtype: str, folder: Path):
        self.cfg, self.dtype, self.folder = cfg, dtype, folder
        self.exe = gxx(folder, emu_source32(cfg, dtype))

    def run(self, a, n: int, b32, copy_at_issue: int = 1):
        h, c = host(), self.cfg
        if c["row_order"] == "natural":
            lay = h.build(a, c["rn"], c["wm"], c["ksteps"], self.dtype)
            perm = np.arange(a.shape[0], dtype=np.int32)
        else:
            lay = h.build_ordered(a, c["rn"], c["wm"], c["ksteps"], self.dtype, c["row_order"])
            perm = lay["perm"]
        d = emu_inputs(self.folder, {x: lay[x] for x in h.ARRAYS}, perm, np.ascontiguousarray(b32, dtype=np.float32))
        m = a.shape[0]
        tiles, ct = -(-m // h.tile_rows(c)), -(-n // c["tile_n"])
        subprocess.run([str(self.exe), str(d), str(m), str(n), str(tiles), str(ct), str(h.shared_bytes(c, self.dtype)),
                        str(copy_at_issue), "0"], check=True, timeout=600)
        return np.fromfile(d / "C", dtype=np.float32).reshape(m, n)


def _emu_configs(dtype):
    """Every rn, wn, tile_n, stages, ksteps, bload, apre and row order at least once, few threads a block."""
    base = dict(rn=2, wm=4, wn=1, tile_n=64, stages=3, ksteps=4, bload="vec", apre="rot2", row_order="natural")
    cfgs = [base,
            dict(base, rn=1, wm=2, wn=2, stages=2, ksteps=2, apre="buf3"),
            dict(base, rn=4, wm=2, wn=2, tile_n=64, stages=4, ksteps=4, row_order="greedy", apre="buf2"),
            dict(base, rn=1, wm=2, wn=4, tile_n=256, stages=2, ksteps=2, row_order="minhash"),
            dict(base, bload="scalar", rn=1, wm=4, stages=4, ksteps=2, row_order="greedy"),
            dict(base, bload="scalar", wm=2, wn=2, stages=2, ksteps=4, apre="buf2")]
    sp = space()
    cfgs = [sp.normalize(c, dtype) for c in cfgs]
    env = problem_env(203, 3000, 136, 20000, dtype)
    return [c for c in cfgs if c is not None and sp.check(c, env, DEFAULT_LIMITS) is None]


@pytest.mark.parametrize("dtype", WIDE)
def test_kernel_source_emulated_on_the_cpu_is_correct(dtype, tmp_path):
    """The rendered 32-bit kernel (staging of floats, the 64-bit fragment loads, cvt.rna, the m16n8k8 MMAs, 3xTF32's
    three products, the float epilogue) with the CUDA intrinsics emulated: the edge cases at N = 1 and 136 (fp32) or 7, 72
    and 136 (tf32), two configs each (cp.async landing at issue, then as late as wait_group allows), against float64 of the fp32 operands
    within the dtype's tolerance; every element written. fp32 (3xTF32) lands within 1e-5, plain TF32 above 1e-4 on the
    larger cases (it is TF32 math, not fp32)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    sp = space()
    cfgs = _emu_configs(dtype)
    assert len(cfgs) == 6
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        emus = list(pool.map(lambda ic: Emulated32(ic[1], dtype, _mk(tmp_path / f"c{ic[0]}")), enumerate(cfgs)))
    rng = np.random.default_rng(0)
    used = {id(e): 0 for e in emus}
    worst_tf32 = 0.0
    # N = 1, 7, 72, 136 shared out between the two dtypes (they share the staging and the walk; 3xTF32 adds the split
    # products; 136 for both: the 256-column tile needs it), which keeps CI's time (3xTF32 at all four took 100 s)
    for name, a in edge_cases().items():
        for n in ((1, 136) if dtype == "fp32" else (7, 72, 136)):
            env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
            runs = [e for e in emus if sp.check(e.cfg, env, DEFAULT_LIMITS) is None]
            assert len(runs) >= 2, (name, n)
            b = rng.standard_normal((a.shape[1], n)).astype(np.float32)
            want = a.astype(np.float64) @ b.astype(np.float64)
            runs.sort(key=lambda e: used[id(e)])
            for mode, emu in zip((1, 0), runs):
                used[id(emu)] += 1
                got = emu.run(a, n, b, mode).astype(np.float64)
                err = _rel_err(got, want)
                assert err <= TOLERANCE[dtype], (name, n, emu.cfg, mode, err)
                if dtype == "fp32":
                    assert err <= 1e-5, (name, n, emu.cfg, err)
                elif a.nnz > 1000:
                    worst_tf32 = max(worst_tf32, err)
    assert min(used.values()) >= 3
    assert dtype == "fp32" or worst_tf32 > TOLERANCE["fp32"]


# ---- on the GPU -------------------------------------------------------------------------------------------

def _gpu_configs(n, dtype):
    sp = space()
    env = problem_env(203, 3000, n, 20000, dtype)
    out = [c for c in _covering(dtype, n, 203, 3000) if sp.check(c, env, DEFAULT_LIMITS) is None]
    picked = out[:: max(1, len(out) // 10)]
    return picked + [c for c in sp.defaults(dtype, env, DEFAULT_LIMITS) if c not in picked]


def _gpu_check(dtype: str, ns=(1, 7, 72, 2049)) -> int:
    """Through the project's launch path (DeviceCSR, build_kernel, Kernel.__call__, device.verify.check: poisoned C,
    the dtype's tolerance) against float64 of the fp32 operands; fresh random B per kernel."""
    import cupy as cp
    import cupyx.scipy.sparse as csp

    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import poison, reference
    checked = 0
    for name, a in edge_cases().items():
        a = sps.csr_matrix(a, dtype=np.float32)
        dev = DeviceCSR(a, dtype)
        a64 = csp.csr_matrix(a.astype(np.float64))
        for n in ns:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                kernels = list(pool.map(lambda c: build_kernel(dev, FAMILY, c, dtype), _gpu_configs(n, dtype)))
            for k in kernels:
                b = cp.asarray(np.random.default_rng(checked).standard_normal((a.shape[1], n)).astype(np.float32))
                c = cp.empty((a.shape[0], n), dtype=cp.float32)
                poison(c)
                k(b, c)
                ref = reference(a64, b)
                assert bool(cp.isfinite(c).all()), (name, n, k.config, "unwritten or non-finite output")
                # the error over the scale |A| |B| (no cancellation), not over ||A B||: with one dense row and N = 1
                # (session 12 on the H200) the whole output is one dot product, whose value can cancel to a few percent
                # of its terms' size while its TF32 rounding error does not (0.0113 over ||A B|| there)
                scale = float(cp.linalg.norm(reference(abs(a64), cp.abs(b))))
                err = float(cp.linalg.norm(c.astype(cp.float64) - ref)) / scale if scale else float(cp.abs(c).max())
                assert err <= TOLERANCE[dtype], (name, n, k.config, err)
                if dtype == "fp32":
                    assert err <= 1e-5, (name, n, k.config, err)  # 3xTF32: fp32 accuracy, not TF32's
                checked += 1
    return checked


@pytest.mark.gpu
def test_tf32_correct_on_edge_cases():
    assert _gpu_check("tf32") > 200


@pytest.mark.gpu
def test_3xtf32_correct_on_edge_cases():
    assert _gpu_check("fp32") > 200


@pytest.mark.gpu
def test_known_good_32_bit_configs_correct_at_3072x768_n2048():
    """The known-good configs at the roofline's case (3072 x 768, N = 2048, d = 0.05), tf32 and fp32 (3xTF32), and
    tf32 measured to be TF32 math (error above fp32's tolerance: the MMAs really ran on rounded inputs)."""
    import cupy as cp
    import cupyx.scipy.sparse as csp

    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    sp = space()
    m, k, n = 3072, 768, 2048
    a = random_matrix(m, k, 0.05, "uniform", 0)
    a64 = csp.csr_matrix(a.astype(np.float64))
    b = cp.asarray(np.random.default_rng(1).standard_normal((k, n)).astype(np.float32))
    ref = reference(a64, b)
    for dtype in WIDE:
        dev = DeviceCSR(a, dtype)
        cfgs = sp.defaults(dtype, problem_env(m, k, n, a.nnz, dtype), DEFAULT_LIMITS)
        assert cfgs
        for cfg in cfgs:
            kern = build_kernel(dev, FAMILY, cfg, dtype)
            c = cp.empty((m, n), dtype=cp.float32)
            err = check(lambda: kern(b, c), c, ref, dtype)
            assert err <= (1e-5 if dtype == "fp32" else TOLERANCE["tf32"]), (dtype, cfg, err)
            if dtype == "tf32":
                assert err > TOLERANCE["fp32"], (cfg, err)


# ---- the dtype through the rest: problem, key, lookup, CLI, suite -------------------------------------------

def test_tf32_problem_key_tolerance_and_storage():
    from sparse_autotune.core.problem import DTYPES, Problem, storage_dtype
    from sparse_autotune.core.vendor import DENSE_MATH, TF32_TOLERANCE, configs
    p = Problem.random(64, 128, 32, 0.1, "tf32")
    assert p.matrix.dtype == np.float32 and DTYPES["tf32"] == np.float32 and storage_dtype("tf32") == "fp32"
    assert p.key().endswith("_tf32_uniform") and p.key() != Problem.random(64, 128, 32, 0.1, "fp32").key()
    assert p.min_bytes() == Problem.random(64, 128, 32, 0.1, "fp32").min_bytes()  # fp32 storage
    assert TOLERANCE["tf32"] == TF32_TOLERANCE and TOLERANCE["fp32"] < TOLERANCE["tf32"]
    assert DENSE_MATH["tf32"] == "tf32" and configs("dense", "tf32") == [{"math": "tf32"}]


def test_tf32_records_are_keyed_apart_from_fp32(tmp_path):
    """A tf32 record and an fp32 record of the same (GPU, M, K, N, density, pattern) are two keys: each is the best of
    its own, and lookup serves each dtype from its own record only."""
    from records import CONFIG, GPU, make_record, new_db
    from sparse_autotune.store.db import TuningDB
    from sparse_autotune.store.lookup import lookup
    fp32 = make_record(10.0, CONFIG)
    tf32 = make_record(8.0, dict(CONFIG, vec=2), dtype="tf32", cublas_tf32_us=30.0, max_rel_err=4e-4)
    path = new_db(tmp_path / "t.sqlite", fp32, tf32)
    db = TuningDB(path)
    assert db.best(512, 2048, 256, 0.1, "tf32", gpu=GPU).dtype == "tf32"
    assert db.best(512, 2048, 256, 0.1, "fp32", gpu=GPU).dtype == "fp32"
    db.dispose()
    got32 = lookup(512, 2048, 256, 0.1, "fp32", gpu=GPU, cc="9.0", db=path)
    gottf = lookup(512, 2048, 256, 0.1, "tf32", gpu=GPU, cc="9.0", db=path)
    assert got32.source == gottf.source == "exact"
    assert got32.config["vec"] == 4 and gottf.config["vec"] == 2


def test_cli_accepts_tf32_and_rejects_an_unknown_dtype():
    import sys
    run = lambda *args: subprocess.run([sys.executable, "-m", "sparse_autotune", *args], capture_output=True, text=True)
    ok = run("lookup", "--shape", "512x2048", "--density", "0.1", "--n", "512", "--dtype", "tf32")
    assert ok.returncode == 0, ok.stderr
    assert "csr_rowsplit" in ok.stdout or "tc_gather" in ok.stdout  # an exact fp32 family serves tf32 by default
    bad = run("lookup", "--shape", "512x2048", "--density", "0.1", "--dtype", "tf16")
    assert bad.returncode == 2 and "unknown dtype 'tf16'" in bad.stderr and "tf32" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = run("tune", "--shape", "512x2048", "--density", "0.1", "--dtype", "fp64")
    assert bad.returncode == 2 and "unknown dtype 'fp64'" in bad.stderr


def test_dl_suite_has_tf32_cases_compared_with_cublas_tf32():
    from sparse_autotune.tuning.suite import best_dense, suite_cases, summary
    cases = suite_cases("dl")
    tf = [c for c in cases if c["dtype"] == "tf32"]
    assert len(tf) == len(cases) // 3 and cases[:len(cases) - len(tf)] == [c for c in cases if c["dtype"] != "tf32"]
    assert any(c["N"] >= 512 and c["density"] == 0.05 for c in tf)
    rec = {"dtype": "tf32", "density": 0.05, "N": 2048, "M": 3072, "K": 768, "tuned_us": 25.0, "cusparse_us": 100.0,
           "cublas_fp32_us": 200.0, "cublas_tf32_us": 30.0, "floor_us": 5.0}
    assert best_dense(rec) == 30.0
    s = summary([rec])
    assert abs(s["tf32@0.05"]["vs_cublas_tf32"] - 1.2) < 1e-9
    t = [x for x in s["targets"] if x["target"].startswith("tf32")][0]
    assert t["met"] and t["cases"] == 1 and t["cases_at_goal"] == 1


def test_the_sddmm_tuner_refuses_tf32():
    from sparse_autotune.errors import UserError
    from sparse_autotune.tuning.sddmm_tune import SddmmProblem
    with pytest.raises(UserError, match="tf32"):
        SddmmProblem.random(64, 64, 32, 0.1, "tf32")
