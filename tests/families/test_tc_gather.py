"""tc_gather (tensor cores over row-block column unions): the layout in mma fragment order, loads of B for any N,
launch; the nk layout (rendering, kn unchanged, launch, nvcc; on a GPU against float64)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import launch_signature_test
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix

FAMILY = "tc_gather"


def host():
    """The family's host side (variants/tc_gather.py), loaded by the registry."""
    return get_family(FAMILY).host


test_launch_matches_the_kernel_signature = launch_signature_test(FAMILY)


# ---- tc_gather layout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("rn", [1, 2, 4])
def test_tc_layout_holds_exactly_the_weights_in_mma_fragment_order(rn):
    """Rebuild A from the layout by the B-operand fragment rule of mma.m16n8k16 (lane 4g+q, half h holds
    row g of the 8-row tile and union column 2q + h%2 + 8 (h//2)): it must be A, fp16-rounded."""
    tc_layout = host().tc_layout
    rng = np.random.default_rng(rn)
    m, k = 8 * rn * 3 + 5, 200  # a partial last row block
    dense = (rng.random((m, k)) < 0.07) * rng.standard_normal((m, k))
    dense[8 * rn: 16 * rn] = 0.0  # an empty row block
    dense[1] = rng.standard_normal(k)  # a dense row
    a = sps.csr_matrix(dense)
    step_ptr, cols, avals = tc_layout(a, rn)
    avals = avals.view(np.float16)  # fp16 words
    nb = -(-m // (8 * rn))
    assert step_ptr.shape == (nb + 1,) and step_ptr[0] == 0 and (np.diff(step_ptr) >= 0).all()
    assert step_ptr[2] == step_ptr[1]  # the empty block has no step
    assert cols.shape == (16 * step_ptr[-1],) and avals.shape == (step_ptr[-1] * rn * 128,)
    rebuilt = np.zeros((nb * 8 * rn, k))
    for b in range(nb):
        u = cols[16 * step_ptr[b]:16 * step_ptr[b + 1]]
        rows = dense[b * 8 * rn:(b + 1) * 8 * rn]
        assert set(u) == set(np.flatnonzero(np.abs(rows).sum(axis=0)))  # the union of the block's columns
        for t in range(step_ptr[b], step_ptr[b + 1]):
            for i in range(rn):
                for lane in range(32):
                    g, q = divmod(lane, 4)
                    for h in range(4):
                        kk = 2 * q + h % 2 + 8 * (h // 2)
                        rebuilt[b * 8 * rn + 8 * i + g, cols[16 * t + kk]] += avals[((t * rn + i) * 32 + lane) * 4 + h]
    np.testing.assert_array_equal(rebuilt[:m], dense.astype(np.float16).astype(np.float64))
    assert not rebuilt[m:].any()


def test_tc_gather_any_n_scalar_loads_only_where_vectors_cannot_and_runtime_adapts():
    """tc_gather's bload: 'vec' needs N % (2 nt) == 0, 'scalar' runs any N, and the runtime turns a stored 'vec'
    config into 'scalar' when the call's N needs it."""
    from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
    fam = get_family(FAMILY)
    sp = fam.space

    def _adapt(_sp, cfg, dtype, env, limits):
        return fam.adapt(cfg, dtype, env, limits)
    base = {"rn": 1, "nt": 2, "ksplit": 8, "unroll": 2}
    odd, even = problem_env(512, 2048, 49, 20000, "fp16"), problem_env(512, 2048, 64, 20000, "fp16")
    assert sp.check({**base, "bload": "vec"}, odd, DEFAULT_LIMITS) is not None
    assert sp.check({**base, "bload": "scalar"}, odd, DEFAULT_LIMITS) is None
    assert sp.check({**base, "bload": "vec"}, even, DEFAULT_LIMITS) is None
    assert _adapt(sp, {**base, "bload": "vec"}, "fp16", odd, DEFAULT_LIMITS)["bload"] == "scalar"
    assert _adapt(sp, {**base, "bload": "scalar"}, "fp16", even, DEFAULT_LIMITS)["bload"] == "scalar"  # runs as is
    assert _adapt(sp, base, "fp16", odd, DEFAULT_LIMITS)["bload"] == "scalar"  # a config stored before bload existed
    # the search space of an odd N has tc_gather configs, all with 16-bit loads
    cfgs = sp.defaults("fp16", odd, DEFAULT_LIMITS)
    assert cfgs and all(c["bload"] == "scalar" for c in cfgs)


# ---- row_order: rows regrouped by core.reorder, C written through the permutation --------------------------

def decode(step_ptr, cols, avals, rn, shape):
    """A's rows in the layout's (the kernel's) order, rebuilt by the B-operand fragment rule of mma.m16n8k16."""
    m, k = shape
    nb = len(step_ptr) - 1
    out = np.zeros((nb * 8 * rn, k))
    t = np.arange(int(step_ptr[-1]))
    block = np.repeat(np.arange(nb), np.diff(step_ptr))
    for i in range(rn):
        for lane in range(32):
            g, q = divmod(lane, 4)
            for h in range(4):
                kk = 2 * q + h % 2 + 8 * (h // 2)
                np.add.at(out, (block * 8 * rn + 8 * i + g, cols[16 * t + kk]),
                          avals[((t * rn + i) * 32 + lane) * 4 + h].astype(np.float64))
    assert not out[m:].any()
    return out[:m]


def clustered(m=203, k=320, seed=0):
    """Rows from 20 column templates, shuffled (M not a multiple of 8): reordering has something to find."""
    rng = np.random.default_rng(seed)
    templates = [rng.choice(k, size=24, replace=False) for _ in range(20)]
    d = np.zeros((m, k), dtype=np.float32)
    for r, t in enumerate(rng.integers(0, 20, size=m)):
        cols = rng.choice(templates[t], size=16, replace=False)
        d[r, cols] = rng.standard_normal(16).astype(np.float32) + 3.0
    return sps.csr_matrix(d)


@pytest.mark.parametrize("rn", [1, 2, 4])
@pytest.mark.parametrize("order", ["natural", "minhash", "greedy"])
def test_reordered_layout_round_trips_to_a_through_the_permutation(rn, order):
    """The kernel's rule: its row r is row perm[r] of A, stored in the blocks of the permuted rows; decoding the
    layout and scattering row r to perm[r] gives A (fp16-rounded). Reordering shrinks the blocks' unions here."""
    h = host()
    a = clustered()
    step_ptr, cols, avals, perm = h.tc_layout_ordered(a, rn, "fp16", order)
    assert perm.dtype == np.int32 and np.array_equal(np.sort(perm), np.arange(a.shape[0]))
    assert step_ptr.shape == (-(-a.shape[0] // (8 * rn)) + 1,)
    rows = decode(step_ptr, cols, avals.view(np.float16), rn, a.shape)
    back = np.zeros_like(rows)
    back[perm] = rows
    np.testing.assert_array_equal(back, a.toarray().astype(np.float16).astype(np.float64))
    if order == "natural":
        assert np.array_equal(perm, np.arange(a.shape[0]))
    else:  # fewer 16-column steps than A's own order
        assert step_ptr[-1] < h.tc_layout(a, rn)[0][-1], (order, rn)


def test_layout_of_permuted_rows_is_tc_layout_of_a_of_perm():
    h = host()
    a = clustered(64, 100, seed=2)
    perm = np.random.default_rng(0).permutation(64).astype(np.int32)
    p = h.permuted(a, perm)
    np.testing.assert_array_equal(p.toarray(), a.toarray()[perm])
    for x, y in zip(h.tc_layout(p, 2), h.tc_layout(sps.csr_matrix(a.toarray()[perm]), 2)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError):
        h.permuted(a, np.zeros(64, dtype=np.int32))


def test_row_order_is_tuned_and_stored_configs_without_it_run_natural():
    from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
    fam = get_family(FAMILY)
    sp = fam.space
    assert sp.param("row_order").choices("fp16") == ["natural", "minhash", "greedy"]
    old = {"rn": 2, "nt": 4, "ksplit": 4, "unroll": 2, "bload": "vec", "prefetch": 0}  # stored before row_order
    assert sp.normalize(old, "fp16") == {**old, "row_order": "natural"}
    env = problem_env(512, 2048, 256, 100_000, "fp16")
    assert fam.adapt(old, "fp16", env, DEFAULT_LIMITS) == {**old, "row_order": "natural"}
    assert fam.adapt({**old, "row_order": "greedy"}, "fp16", env, DEFAULT_LIMITS)["row_order"] == "greedy"
    assert sp.normalize({**old, "row_order": "sorted"}, "fp16") is None
    assert {c["row_order"] for c in sp.feasible("bf16", env, DEFAULT_LIMITS)} == {"natural", "minhash", "greedy"}


@pytest.mark.parametrize("order", ["natural", "minhash", "greedy"])
def test_launch_passes_the_permutation_and_caches_it_with_the_layout(order):
    """natural: the kernel as before (no row_perm, the layout cached under ('tc', rn, dtype)); minhash / greedy: the
    permutation right after the layout, cached with it under the method, built once for every config of that rn."""
    from fakes import FakeDeviceCSR, fake_kernel, signature
    a = clustered()
    dev = FakeDeviceCSR(a, "fp16")
    cfg = {"rn": 2, "nt": 2, "ksplit": 2, "unroll": 1, "bload": "scalar", "prefetch": 1, "row_order": order}
    kern = fake_kernel(FAMILY, cfg, "fp16", a, dev)
    names = [nm for nm, _ in signature(kern.source)]
    args = kern.args(64, "B", "C")
    assert len(args) == len(names) and args[names.index("B")] == "B" and args[names.index("C")] == "C"
    if order == "natural":
        assert "__ldg(row_perm" not in kern.source and "row_perm" not in names
        assert [key for key, _ in dev.built] == [("tc", 2, "fp16")]
        return
    assert names[3] == "row_perm" and "__ldg(row_perm + r + h)" in kern.source
    perm = args[3].host
    assert np.array_equal(perm, host().tc_layout_ordered(a, 2, "fp16", order)[3])
    fake_kernel(FAMILY, {**cfg, "nt": 1, "ksplit": 4}, "fp16", a, dev).args(64, "B", "C")
    fake_kernel(FAMILY, {**cfg, "rn": 1}, "fp16", a, dev).args(64, "B", "C")
    assert [key for key, _ in dev.built] == [("tc", 2, "fp16", order), ("tc", 1, "fp16", order)]


@pytest.mark.parametrize("layout", ["kn", "nk"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_every_row_order_compiles_with_nvcc(dtype, layout):
    """The epilogue through row_perm (and without it) for each way of storing C: vector stores of nt = 1, 2, 4 and
    the checked 16-bit stores; in nk each way of loading x (vec / scalar, nt = 1, 2, 4) and of writing y (natural:
    32-bit row pairs; reordered), without spills."""
    import concurrent.futures
    import re

    from sparse_autotune.core import render
    from sparse_autotune.device import compile as sat_compile
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    base = [dict(rn=1, nt=1, ksplit=8, unroll=2, bload="scalar", prefetch=1),
            dict(rn=2, nt=2, ksplit=1, unroll=4, bload="vec", prefetch=0),
            dict(rn=2, nt=4, ksplit=4, unroll=2, bload="vec", prefetch=1)]
    cfgs = [{**c, "row_order": o} for c in base for o in ("natural", "greedy")]
    assert all(sp.normalize(c, dtype) == c for c in cfgs)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reps = list(pool.map(lambda c: sat_compile.nvcc_check(render.render(sp, c, dtype, layout=layout),
                                                              arch="sm_90"), cfgs))
    for cfg, rep in zip(cfgs, reps):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, (cfg, rep)
        if layout == "nk":
            assert " 0 bytes spill stores" in rep or "spill" not in rep, (cfg, rep)
        assert int(re.search(r"Used (\d+) registers", rep).group(1)) <= 255, (cfg, rep)


# ---- on the GPU -------------------------------------------------------------------------------------------

def edge_cases():
    rng = np.random.default_rng(11)
    out = {}
    d = np.zeros((40, 300), dtype=np.float32)
    d[17] = rng.standard_normal(300).astype(np.float32) + 0.5  # one dense row among empty ones
    out["one_dense_row"] = sps.csr_matrix(d)
    row = (rng.random(257) < 0.2) * (rng.standard_normal(257) + 0.5)
    out["identical_rows"] = sps.csr_matrix(np.tile(row.astype(np.float32), (37, 1)))  # M not a multiple of 8
    out["clustered_203"] = clustered()  # M not a multiple of 8, reordering moves rows
    out["powerlaw_101"] = random_matrix(101, 384, 0.08, "powerlaw", 3)
    out["identity_optimal"] = sps.csr_matrix(np.kron(np.eye(6), np.ones((8, 16))).astype(np.float32))
    return out


def _gpu_row_orders(dtype: str) -> int:
    """Through the project's launch path (tests/nk_check.py's check_kn): poisoned C, fresh random B, the float64
    reference of the rounded operands, every row order, N = 1, 7, 64, 2049 (vector and 16-bit loads)."""
    from nk_check import check_kn

    from sparse_autotune.core.problem import TOLERANCE
    from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
    sp = get_family(FAMILY).space

    def configs(a, n):
        env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
        feas = list(sp.feasible(dtype, env, DEFAULT_LIMITS))
        return [c for o in ("natural", "minhash", "greedy") for c in [f for f in feas if f["row_order"] == o][::23]]
    return check_kn(FAMILY, dtype, edge_cases(), configs, (1, 7, 64, 2049), TOLERANCE[dtype])


@pytest.mark.gpu
def test_row_orders_correct_on_edge_cases_fp16():
    assert _gpu_row_orders("fp16") > 300


@pytest.mark.gpu
def test_row_orders_correct_on_edge_cases_bf16():
    assert _gpu_row_orders("bf16") > 300


# ---- the nk layout (y = x @ A^T + bias, x N x K, y N x M) --------------------------------------------------------

# sha256 (first 16 hex digits) of kn sources as rendered before the nk layout was added: kn is byte for byte the same
# (update these where the kn kernel is changed on purpose)
KN_DIGESTS = [
    ("fp16", dict(rn=2, nt=4, ksplit=4, unroll=2, bload="vec", prefetch=0, row_order="natural"), "4a37059a95c30910"),
    ("bf16", dict(rn=1, nt=1, ksplit=8, unroll=2, bload="scalar", prefetch=1, row_order="greedy"), "e828198322965ab6"),
    ("fp16", dict(rn=4, nt=2, ksplit=2, unroll=4, bload="scalar", prefetch=1, row_order="minhash"), "f3ff26bd2c8434fd"),
    ("bf16", dict(rn=1, nt=2, ksplit=1, unroll=1, bload="vec", prefetch=0, row_order="natural"), "3cf2e56bfabf4810"),
]


def _native_configs(dtype: str, m: int, k: int, n: int, nnz: int) -> list[dict]:
    from nk_check import native_nk_configs
    return native_nk_configs(FAMILY, dtype, m, k, n, nnz)


def test_the_space_declares_nk_and_vector_loads_still_need_n_divisible():
    """In nk bload 'vec' means the lane's 2 * nt columns are all in range or all out (one check), as in kn: N % (2 nt)
    == 0; 'scalar' runs any N, natively too."""
    from sparse_autotune.core.space import DEFAULT_LIMITS, NK_PATH, problem_env
    sp = get_family(FAMILY).space
    assert sp.supports_layout("nk") and sp.default_path() == "native"
    nk = sp.for_layout("nk")
    base = {"rn": 1, "nt": 2, "ksplit": 8, "unroll": 2, "prefetch": 0, "row_order": "natural", NK_PATH: "native"}
    odd = problem_env(512, 2048, 49, 20000, "fp16", "nk")
    assert nk.check({**base, "bload": "vec"}, odd, DEFAULT_LIMITS) is not None
    assert nk.check({**base, "bload": "scalar"}, odd, DEFAULT_LIMITS) is None
    assert {c["bload"] for c in _native_configs("bf16", 64, 300, 7, 800)} == {"scalar"}
    assert {c["bload"] for c in _native_configs("fp16", 64, 300, 64, 800)} == {"vec", "scalar"}


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_every_config_renders_in_both_layouts_and_kn_is_unchanged(dtype):
    """Every feasible config of a small problem (nk native at N = 7 and 64, kn at N = 64) renders for both layouts:
    kn as the template rendered with layout="kn" (no bias, no K), nk with the bias right after C and K after N, x read
    K apart, y written with the bias (through row_perm where the rows are reordered)."""
    from sparse_autotune.core import render
    from sparse_autotune.core.space import problem_env
    sp = get_family(FAMILY).space
    env = problem_env(64, 300, 64, 1000, dtype)
    cfgs = {tuple(sorted(c.items())): c for c in list(sp.feasible(dtype, env))
            + _native_configs(dtype, 64, 300, 7, 1000) + _native_configs(dtype, 64, 300, 64, 1000)}
    assert len(cfgs) > 300
    for cfg in cfgs.values():
        kn = render.render(sp, cfg, dtype)
        assert kn == render.render(sp, cfg, dtype, layout="kn")
        assert "bias" not in kn and "layout=" not in kn and "int K" not in kn
        nk = render.render(sp, cfg, dtype, layout="nk")
        assert nk.splitlines()[0] == kn.splitlines()[0] + " layout=nk"
        assert ("unsigned short* __restrict__ C,\n"
                "            const unsigned short* __restrict__ bias, int M, int N, int K, int row_blocks)") in nk
        assert "load_row(Bl + k01.x, K, ok, left, f.x0);" in nk and "B + (size_t)col * K" in nk
        assert "h2f(bias[row0])" in nk and "C + (size_t)(col + 2 * j + e) * M" in nk
        assert ("__ldg(row_perm + r)" in nk) == (cfg["row_order"] != "natural")


def test_kn_sources_are_those_before_nk():
    import hashlib

    from sparse_autotune.core import render
    sp = get_family(FAMILY).space
    for dtype, cfg, digest in KN_DIGESTS:
        assert sp.normalize(cfg, dtype) == cfg
        assert hashlib.sha256(render.render(sp, cfg, dtype).encode()).hexdigest()[:16] == digest, (dtype, cfg)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_nk_launch_matches_the_kernel_signature_at_any_n(dtype):
    """nk: the bias right after C (None: a null pointer), K after N, at odd N too (16-bit loads)."""
    from fakes import check_launch_matches_signature, fake_kernel, signature
    a = clustered()
    for n in (1, 7, 33, 64):
        assert check_launch_matches_signature(FAMILY, dtype, a, n, layout="nk") > 0
    for order in ("natural", "greedy"):
        cfg = {"rn": 2, "nt": 2, "ksplit": 2, "unroll": 1, "bload": "scalar", "prefetch": 1, "row_order": order}
        kern = fake_kernel(FAMILY, cfg, dtype, a, layout="nk")
        names = [nm for nm, _ in signature(kern.source)]
        got = kern.args(7, "x", "y", None)
        assert len(got) == len(names) and names[names.index("C") + 1] == "bias" and got[names.index("bias")] == 0
        assert names[names.index("N") + 1] == "K" and got[names.index("K")] == a.shape[1]
        assert got[names.index("B")] == "x" and got[names.index("C")] == "y"
        assert len(fake_kernel(FAMILY, cfg, dtype, a).args(7, "B", "C")) == len(names) - 2  # kn as before


def _gpu_nk(dtype: str, per_order: int = 2) -> int:
    """Native nk kernels on the edge cases (M odd and even: y's row pairs as one store or two), N = 1, 7, 64, 257
    (vector and 16-bit loads; tests/nk_check.py); a sample of the feasible configs of each row order."""
    import random

    from nk_check import check_nk_natively

    def pick(feas, name, n):
        rnd = random.Random(f"{name}/{n}/{dtype}")
        return [c for o in ("natural", "minhash", "greedy")
                for c in rnd.sample([f for f in feas if f["row_order"] == o],
                                    min(per_order, sum(f["row_order"] == o for f in feas)))]
    return check_nk_natively(FAMILY, dtype, edge_cases(), pick)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_nk_correct_on_edge_cases(dtype):
    assert _gpu_nk(dtype) >= 100
