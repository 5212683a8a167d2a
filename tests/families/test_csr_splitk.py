"""csr_splitk (small N on CUDA cores, split-K through a workspace): the word layout round-trips to A and computes A @ B by
the kernel's own reading rule (an emulation in numpy), its padding and bank-conflict ordering, the space's constraints
and adaptation to N, launch geometry, rendering (fp16 and bf16) and nvcc; on a GPU, against float64 on edge cases."""
from __future__ import annotations

import concurrent.futures
import re

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import check_launch_matches_signature, fake_kernel
from sparse_autotune.core import render
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix
from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
from sparse_autotune.device import compile as sat_compile

FAMILY = "csr_splitk"
GEOMS = [  # (nb, ks, warps, rounds): every nb, several slice lengths and row-block sizes
    (8, 256, 4, 1), (16, 256, 4, 2), (32, 512, 4, 1), (64, 256, 4, 1), (16, 1024, 8, 1), (64, 512, 4, 2),
]


def host():
    return get_family(FAMILY).host


def adversarial():
    rng = np.random.default_rng(5)

    def vals(a):
        a = sps.csr_matrix(a)
        a.data = rng.standard_normal(a.nnz).astype(np.float32) + 0.5
        return a

    out = {}
    a = sps.random(40, 700, density=0.3, format="lil", random_state=1)
    a[0:10, :] = 0  # empty rows
    out["empty_rows"] = vals(a)
    out["residues_37x53"] = vals(sps.random(37, 53, density=0.3, format="csr", random_state=3))
    out["residues_301x1031"] = vals(sps.random(301, 1031, density=0.05, format="csr", random_state=6))
    a = sps.lil_matrix((5, 7))
    a[4, 6] = 1.0
    out["single_nonzero"] = vals(a)
    out["density_0.7"] = vals(sps.random(64, 600, density=0.7, format="csr", random_state=4))
    d = np.zeros((30, 2600))
    d[7] = 1.0  # one full row among empty ones, over several slices
    out["one_dense_row"] = vals(sps.csr_matrix(d))
    out["all_zero"] = sps.csr_matrix((20, 40), dtype=np.float32)
    out["one_class"] = vals(sps.csr_matrix(np.kron(np.ones((8, 1)), np.tile([1.0, 0, 0, 0, 0, 0, 0, 0], 40))))
    return out


def emulate(a, b, dtype, nb, ks, warps, rounds):
    """C = A @ B computed from the layout the way the kernel reads it (float64 sums of the stored value bits)."""
    h = host()
    rinfo, rows, words = h.build(a, dtype, nb, ks, warps, rounds)
    m, k = a.shape
    n = b.shape[1]
    d = h.dims({"nb": nb, "warps": warps, "rounds": rounds})
    NGW, R = d["NGW"], d["R"]
    RB, Q, spb = max(1, -(-m // R)), -(-k // ks), rounds * warps
    ncb = max(1, -(-n // nb))
    C = np.zeros((RB * R, ncb * nb))
    w4 = words.reshape(-1, 4).astype(np.uint32)
    for cb in range(ncb):
        for bq in range(RB * Q):
            rb, q = divmod(bq, Q)
            Bs = np.zeros((ks, nb))
            kk, nn = min(ks, k - q * ks), min(nb, n - cb * nb)
            Bs[:kk, :nn] = b[q * ks:q * ks + kk, cb * nb:cb * nb + nn]
            for slot in range(bq * spb, (bq + 1) * spb):
                first, steps = rinfo[slot]
                for g in range(NGW):
                    ww = w4[first + np.arange(steps) * NGW + g].ravel()
                    bits = (ww >> 16).astype(np.uint16)
                    v = (bits.view(np.float16).astype(np.float64) if dtype == "fp16"
                         else (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64))
                    C[rb * R + rows[slot * NGW + g], cb * nb:(cb + 1) * nb] += v @ Bs[(ww & 0xFFFF) // (2 * nb)]
    return C[:m, :n]


def stored(a, dtype):
    """A with its values as stored (rounded to the dtype), float64."""
    h = host()
    bits = h.value_bits(a.data, dtype)
    a = sps.csr_matrix(a, dtype=np.float64, copy=True)
    a.data = (bits.view(np.float16).astype(np.float64) if dtype == "fp16"
              else (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64))
    return a


# ---- layout -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_layout_round_trips_to_a(dtype):
    h = host()
    for name, a in adversarial().items():
        want = h.value_bits(a.toarray().ravel(), dtype).reshape(a.shape)
        for nb, ks, warps, rounds in GEOMS:
            rinfo, rows, words = h.build(a, dtype, nb, ks, warps, rounds)
            got = h.decode(rinfo, rows, words, a.shape, nb, ks, warps, rounds)  # also: every local row once a slice
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {nb} {ks} {warps} {rounds}")
            assert rinfo.dtype == np.int32 and rows.dtype == np.uint16 and words.dtype == np.uint32
            assert len(words) % 4 == 0 and (rinfo[:, 1] >= 0).all()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_layout_computes_a_times_b_by_the_kernels_rule(dtype):
    rng = np.random.default_rng(0)
    for name, a in adversarial().items():
        ref_a = stored(a, dtype)
        for nb, ks, warps, rounds in GEOMS[:4]:
            for n in (1, 3, 13, nb, 2 * nb + 5):
                b = rng.standard_normal((a.shape[1], n))
                np.testing.assert_allclose(emulate(a, b, dtype, nb, ks, warps, rounds), ref_a @ b, atol=1e-9,
                                           err_msg=f"{name} nb={nb} ks={ks} n={n}")


def test_padding_points_at_the_segments_own_column_and_weighs_zero():
    h = host()
    a = adversarial()["residues_301x1031"]
    nb, ks = 16, 256
    rinfo, rows, words = h.build(a, "fp16", nb, ks, 4, 2)
    offs = (words & 0xFFFF)
    assert (offs % (2 * nb) == 0).all() and (offs // (2 * nb) < ks).all()
    pad = words >> 16 == 0
    assert pad.sum() == len(words) - a.nnz  # the stored values are nonzero here: every zero word is padding


def test_layout_bytes_and_no_sort_cost():
    h = host()
    a = random_matrix(2048, 4096, 0.1, "uniform", 1)
    for nb, ks, warps, rounds in [(16, 1024, 8, 1), (32, 512, 8, 2), (64, 256, 8, 4)]:
        rinfo, rows, words = h.build(a, "fp16", nb, ks, warps, rounds)
        per_nnz = (rinfo.nbytes + rows.nbytes + words.nbytes) / a.nnz
        assert 4.0 <= per_nnz < 4.8, (nb, per_nnz)  # 4 bytes a nonzero + padding to the round's longest, 4 a step


def test_phases_read_different_bank_quarters():
    """At a step, the P = 8 / G groups of a phase should want B rows of different classes (k mod P): one shared-memory
    wavefront a phase. Interleaving by class gets that while every class of the segments lasts, then packs densely:
    on a uniform random matrix the mean wavefronts a phase-step (padding included) stay well below random order's
    (1.5 for P = 2, 2.1 for P = 4)."""
    h = host()
    a = random_matrix(1024, 4096, 0.1, "uniform", 2)
    for nb, ks, most in [(8, 1024, 2.0), (16, 1024, 1.45), (32, 512, 1.2), (64, 256, 1.0)]:
        warps, rounds = 4, 1
        d = h.dims({"nb": nb, "warps": warps, "rounds": rounds})
        NGW, P = d["NGW"], d["P"]
        rinfo, rows, words = h.build(a, "fp16", nb, ks, warps, rounds)
        w4 = words.reshape(-1, 4)
        wf = tot = 0
        for first, steps in rinfo:
            block = w4[first + np.arange(steps)[:, None] * NGW + np.arange(NGW)[None, :]]  # [step, group, 4]
            cls = ((block & 0xFFFF) // (2 * nb)) % P
            cls = cls.transpose(0, 2, 1).reshape(-1, NGW // P, P)  # [step * 4 + e, phase, group in phase]
            worst = np.stack([(cls == c).sum(-1) for c in range(P)], -1).max(-1)  # the busiest bank quarter
            wf += worst.sum()
            tot += worst.size
        assert wf / tot <= most, (nb, wf / tot)


def test_layout_refuses_wide_slices_and_keeps_the_matrix():
    h = host()
    with pytest.raises(ValueError):
        h.build(sps.csr_matrix((2, 70000), dtype=np.float32), "fp16", 64, 1024, 4, 1)
    a = sps.csr_matrix((np.array([1.0, 2.0]), np.array([3, 3]), np.array([0, 2])), shape=(1, 8))
    h.build(a, "fp16", 16, 256, 4, 1)
    assert a.nnz == 2 and list(a.data) == [1.0, 2.0]  # duplicates summed on a copy
    # K beyond 16 bits: offsets are slice-local
    big = sps.csr_matrix((np.array([1.0, 3.0]), np.array([5, 69999]), np.array([0, 1, 2])), shape=(2, 70000))
    rinfo, rows, words = h.build(big, "fp16", 16, 2048, 4, 1)
    got = h.decode(rinfo, rows, words, big.shape, 16, 2048, 4, 1)
    np.testing.assert_array_equal(got, h.value_bits(big.toarray().ravel(), "fp16").reshape(big.shape))


# ---- space, geometry, rendering, compiling ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_launch_matches_the_kernel_signature(dtype):
    a = random_matrix(300, 1100, 0.05, "uniform", 0)
    for n in (1, 3, 16, 20, 64):
        checked = check_launch_matches_signature(FAMILY, dtype, a, n)
        assert checked > 0 or not get_family(FAMILY).space.supports(dtype)


def test_geometry_column_blocks_shared_memory_and_workspace():
    h = host()
    a = random_matrix(1000, 3000, 0.1, "uniform", 1)
    cfg = dict(nb=32, warps=8, rounds=2, ks=512, split=4, unroll=2, acc="f32")
    k = fake_kernel(FAMILY, cfg, "fp16", a)
    R = 8 * 8 * 2
    RB = -(-1000 // R)
    assert h.geometry(k, 32) == ((RB * 4, 1), (256,))  # row blocks x split-K blocks
    assert h.geometry(k, 40) == ((RB * 4, 2), (256,))  # N > nb: column blocks
    assert h.smem_bytes(k) == R * 32 * 4 + 512 * 32 * 2
    args = h.args(k, 32, "B", "C")
    assert int(args[-1]) == -(-3000 // 512)  # Q slices
    ws, counters = args[3].host, args[4].host
    assert ws.dtype == np.float32 and len(ws) == RB * 1 * 4 * R * 32 and not ws.any()
    assert counters.dtype == np.int32 and len(counters) == RB and not counters.any()
    ws40, cnt40 = (x.host for x in h.args(k, 40, "B", "C")[3:5])
    assert len(ws40) == RB * 2 * 4 * R * 32 and len(cnt40) == RB * 2
    src = k.source
    assert "atomicAdd(counters + tile, 1)" in src and "counters[tile] = 0" in src
    k1 = fake_kernel(FAMILY, {**cfg, "split": 1}, "fp16", a)
    assert "atomicAdd" not in k1.source
    assert [len(x.host) for x in h.args(k1, 32, "B", "C")[3:5]] == [4, 1]


def test_no_cluster_instruction_in_any_config():
    """Launched with plain cuLaunchKernel (no cluster attributes): no cluster dims, barrier.cluster, mapa or
    shared::cluster access in any rendered source; the B-slice offset keeps only the word's low half."""
    sp = get_family(FAMILY).space
    for dtype in ("fp16", "bf16"):
        for cfg in list(sp.enumerate(dtype))[::7]:
            src = render.render(sp, cfg, dtype)
            for bad in ("__cluster_dims__", "barrier.cluster", "mapa", "shared::cluster", "cluster", "trap"):
                assert bad not in src, (bad, cfg, dtype)
            assert "(w & 0xffffu) | lane_off" in src
            # no static shared memory: static + exactly 48 KB of dynamic fails the launch (no opt-in below 48 KB)
            assert "__shared__ int" not in src and src.count("__shared__") == 1, cfg


def test_h2x4_only_for_fp16_and_renders_half2_math():
    sp = get_family(FAMILY).space
    assert sp.param("acc").choices("fp16") == ["f32", "h2x4"] and sp.param("acc").choices("bf16") == ["f32"]
    cfg = dict(nb=16, warps=4, rounds=1, ks=512, split=2, unroll=2, acc="h2x4")
    src = render.render(sp, cfg, "fp16")
    assert "fma.rn.f16x2" in src and "mul.rn.f16x2" in src
    assert "f16x2" not in render.render(sp, {**cfg, "acc": "f32"}, "fp16").replace("cvt.rn.f16x2", "")
    assert sp.normalize({k: v for k, v in cfg.items() if k != "acc"}, "fp16")["acc"] == "f32"  # stored before acc


def _h2x4_rel_error(m, k, density, seed):
    """The h2x4 rule in numpy: each 16-byte load's 4 nonzeros (the layout's own grouping, padding included) multiplied
    and summed in fp16 (mul, then 3 fma, each rounded once), then added in fp32, output rounded to fp16; the relative
    Frobenius error against float64 of the stored values."""
    h = host()
    nb, ks, warps, rounds, n = 16, 512, 4, 1, 16
    a = stored(random_matrix(m, k, density, "uniform", seed), "fp16")
    rinfo, rows, words = h.build(a, "fp16", nb, ks, warps, rounds)
    b = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float16)
    d = h.dims({"nb": nb, "warps": warps, "rounds": rounds})
    NGW, R = d["NGW"], d["R"]
    Q, spb = -(-k // ks), rounds * warps
    RB = max(1, -(-m // R))
    w4 = words.reshape(-1, 4).astype(np.uint32)
    C = np.zeros((RB * R, n), dtype=np.float32)
    for bq in range(RB * Q):
        rb, q = divmod(bq, Q)
        Bs = np.zeros((ks, n), dtype=np.float16)
        kk = min(ks, k - q * ks)
        Bs[:kk] = b[q * ks:q * ks + kk]
        for slot in range(bq * spb, (bq + 1) * spb):
            first, steps = rinfo[slot]
            if steps == 0:
                continue
            g = np.arange(NGW)
            ww = w4[first + np.arange(steps)[:, None] * NGW + g[None, :]]  # [step, group, 4]
            v = (ww >> 16).astype(np.uint16).view(np.float16).astype(np.float64)[..., None]
            bb = Bs[(ww & 0xFFFF) // (2 * nb)].astype(np.float64)  # [step, group, 4, n]
            p = (v[:, :, 0] * bb[:, :, 0]).astype(np.float16)
            for e in range(1, 4):
                p = (v[:, :, e] * bb[:, :, e] + p.astype(np.float64)).astype(np.float16)
            acc = np.zeros((NGW, n), dtype=np.float32)
            for st in range(steps):
                acc += p[st].astype(np.float32)
            np.add.at(C, rb * R + rows[slot * NGW: (slot + 1) * NGW].astype(np.int64), acc)
    out = C[:m].astype(np.float16).astype(np.float64)
    ref = a @ b.astype(np.float64)
    return np.linalg.norm(out - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize("k", [4096, 14336])
def test_h2x4_error_well_inside_the_fp16_tolerance(k):
    err = _h2x4_rel_error(64, k, 0.1, 1)
    assert err < 1e-3, err  # the fp16 tolerance is 2e-3


def test_constraints_and_adapt():
    fam = get_family(FAMILY)
    sp = fam.space
    cfg = dict(nb=32, warps=8, rounds=2, ks=512, split=8, unroll=2, acc="f32")
    assert sp.check(cfg, problem_env(4096, 4096, 32, 1_600_000, "fp16"), DEFAULT_LIMITS) is None
    assert sp.check(cfg, problem_env(4096, 14336, 64, 1_600_000, "bf16"), DEFAULT_LIMITS) is None
    assert sp.check(cfg, problem_env(4096, 4096, 32, 10, "fp32"), DEFAULT_LIMITS) is not None  # 16-bit dtypes only
    assert sp.check({**cfg, "ks": 2048}, problem_env(4096, 4096, 32, 10, "fp16"), DEFAULT_LIMITS) is not None
    sixteen = problem_env(4096, 4096, 16, 1_600_000, "fp16")
    assert sp.check(cfg, sixteen, DEFAULT_LIMITS) is not None  # 32 columns for N = 16
    assert fam.adapt(cfg, "fp16", sixteen, DEFAULT_LIMITS) == {**cfg, "nb": 16}
    short = problem_env(4096, 1000, 32, 10, "fp16")  # 2 slices of 512: split of at most 2
    assert fam.adapt(cfg, "fp16", short, DEFAULT_LIMITS) == {**cfg, "split": 2}
    assert sp.check(cfg, problem_env(4096, 200000, 32, 10, "fp16"), DEFAULT_LIMITS) is None  # K past 16 bits: fine
    for kg in sp.known_good:
        assert sp.normalize(kg, "fp16") is not None and sp.normalize(kg, "bf16") is not None
    n = {kg["nb"]: kg for kg in sp.known_good}
    for nn in (16, 32, 64):  # each known-good config runs the LLM shapes at its N
        for m, k in [(4096, 4096), (1024, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336)]:
            assert sp.check(n[nn], problem_env(m, k, nn, 1_600_000, "bf16"), DEFAULT_LIMITS) is None


def test_every_config_renders_for_bf16_too():
    sp = get_family(FAMILY).space
    count = 0
    for cfg in sp.enumerate("fp16"):
        src = render.render(sp, cfg, "bf16")
        assert "cvt.rn.bf16x2.f32" in src and "cvt.f32.f16" not in src and "<< 16" in src
        count += 1
    assert count == len(list(sp.enumerate("fp16"))) > 500


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_configs_compile_with_nvcc(dtype):
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    cfgs = [dict(nb=nb, warps=w, rounds=r, ks=ks, split=s, unroll=u, acc=acc)
            for nb, w, r, ks, s, u, acc in [(8, 4, 1, 256, 1, 1, "f32"), (16, 8, 1, 1024, 4, 2, "h2x4"),
                                            (32, 8, 2, 512, 8, 4, "f32"), (64, 16, 1, 256, 2, 2, "h2x4"),
                                            (64, 8, 4, 512, 8, 4, "h2x4"), (16, 4, 4, 256, 1, 4, "f32")]]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reps = list(pool.map(lambda c: sat_compile.nvcc_check(render.render(sp, c, dtype), arch="sm_90"), cfgs))
    for cfg, rep in zip(cfgs, reps):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, cfg
        regs = int(re.search(r"Used (\d+) registers", rep).group(1))
        assert regs <= 65536 // (32 * cfg["warps"]) and regs <= 128, (cfg, rep)
        assert " 0 bytes spill stores" in rep, (cfg, rep)


# ---- on the GPU -------------------------------------------------------------------------------------------

def _gpu_edge_cases(dtype: str, ns, per_case: int):
    import cupy as cp
    import cupyx.scipy.sparse as csp
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    from sparse_autotune.core.problem import storage
    sp = get_family(FAMILY).space
    tol = 2e-3 if dtype == "fp16" else 1e-2
    checked = 0
    for name, a in adversarial().items():
        a = stored(a, dtype).astype(np.float32)
        dev = DeviceCSR(a, dtype)
        a64 = csp.csr_matrix(a.astype(np.float64))
        for n in ns:
            env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
            feas = list(sp.feasible(dtype, env, DEFAULT_LIMITS))
            cfgs = feas[:: max(1, len(feas) // per_case)]
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                kernels = list(pool.map(lambda c: build_kernel(dev, FAMILY, c, dtype), cfgs))
            for k in kernels:
                bh = np.random.default_rng(checked).standard_normal((a.shape[1], n)).astype(np.float32)
                b = cp.asarray(storage(bh.ravel(), dtype).reshape(bh.shape))
                c = cp.empty((a.shape[0], n), dtype=b.dtype)
                for _ in range(2):  # twice: nothing carries over between launches
                    assert check(lambda: k(b, c), c, reference(a64, b), dtype) <= tol, (name, n, k.config)
                checked += 1
    return checked


@pytest.mark.gpu
def test_correct_on_edge_cases_fp16():
    """Poisoned C, fresh random B, float64 reference; N = 1, 3, 8, 13, 16, 32, 64, 127 (column blocks)."""
    assert _gpu_edge_cases("fp16", (1, 3, 8, 13, 16, 32, 64, 127), 6) > 200


@pytest.mark.gpu
def test_correct_on_edge_cases_bf16():
    assert _gpu_edge_cases("bf16", (3, 16, 64, 127), 4) > 80


@pytest.mark.gpu
def test_correct_past_16_bit_k_and_on_an_llm_shape():
    import cupy as cp
    import cupyx.scipy.sparse as csp
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    for (m, k, n, dens) in [(96, 70000, 24, 0.01), (1024, 4096, 32, 0.1)]:
        a = stored(random_matrix(m, k, dens, "uniform", 3), "fp16").astype(np.float32)
        dev = DeviceCSR(a, "fp16")
        a64 = csp.csr_matrix(a.astype(np.float64))
        for kg in get_family(FAMILY).space.known_good:
            cfg = get_family(FAMILY).adapt(kg, "fp16", problem_env(m, k, n, a.nnz, "fp16"), DEFAULT_LIMITS)
            kern = build_kernel(dev, FAMILY, cfg, "fp16")
            b = cp.asarray(np.random.default_rng(1).standard_normal((k, n)).astype(np.float16))
            c = cp.empty((m, n), dtype=cp.float16)
            assert check(lambda: kern(b, c), c, reference(a64, b), "fp16") <= 2e-3, (m, k, n, cfg)
