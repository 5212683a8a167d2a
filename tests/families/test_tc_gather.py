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
    assert sp.normalize(old, "fp16") == {**old, "row_order": "natural", "afmt": "dense"}
    env = problem_env(512, 2048, 256, 100_000, "fp16")
    assert fam.adapt(old, "fp16", env, DEFAULT_LIMITS) == {**old, "row_order": "natural", "afmt": "dense"}
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
    cfgs = [{**c, "row_order": o, "afmt": "dense"} for c in base for o in ("natural", "greedy")]
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
        feas = [f for f in sp.feasible(dtype, env, DEFAULT_LIMITS) if f["afmt"] == "dense"]  # the others: below
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
# but for the header's " afmt=dense" (added with afmt; dense_digest strips it) (update these where the kn kernel is
# changed on purpose)
KN_DIGESTS = [
    ("fp16", dict(rn=2, nt=4, ksplit=4, unroll=2, bload="vec", prefetch=0, row_order="natural"), "4a37059a95c30910"),
    ("bf16", dict(rn=1, nt=1, ksplit=8, unroll=2, bload="scalar", prefetch=1, row_order="greedy"), "e828198322965ab6"),
    ("fp16", dict(rn=4, nt=2, ksplit=2, unroll=4, bload="scalar", prefetch=1, row_order="minhash"), "f3ff26bd2c8434fd"),
    ("bf16", dict(rn=1, nt=2, ksplit=1, unroll=1, bload="vec", prefetch=0, row_order="natural"), "3cf2e56bfabf4810"),
]


# the same for nk sources as rendered before afmt was added (HEAD 6211be3)
NK_DIGESTS = [
    ("fp16", dict(rn=4, nt=1, ksplit=16, unroll=2, bload="vec", prefetch=1, row_order="natural"), "14483d06bccf4b08"),
    ("bf16", dict(rn=2, nt=2, ksplit=2, unroll=1, bload="scalar", prefetch=0, row_order="greedy"), "75422e40b80f95be"),
]


def dense_digest(src: str) -> str:
    """The digest of a dense source as it rendered before afmt: its header without " afmt=dense" (the one change)."""
    import hashlib
    first, rest = src.split("\n", 1)
    assert first.endswith(" afmt=dense") or " afmt=dense layout=" in first, first
    return hashlib.sha256((first.replace(" afmt=dense", "", 1) + "\n" + rest).encode()).hexdigest()[:16]


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
    from sparse_autotune.core import render
    sp = get_family(FAMILY).space
    for dtype, cfg, digest in KN_DIGESTS:
        assert sp.normalize(cfg, dtype) == {**cfg, "afmt": "dense"}  # stored before afmt: the dense tiles
        assert dense_digest(render.render(sp, cfg, dtype)) == digest, (dtype, cfg)


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
        feas = [f for f in feas if f.get("afmt", "dense") == "dense"]  # the compressed formats: their own test
        return [c for o in ("natural", "minhash", "greedy")
                for c in rnd.sample([f for f in feas if f["row_order"] == o],
                                    min(per_order, sum(f["row_order"] == o for f in feas)))]
    return check_nk_natively(FAMILY, dtype, edge_cases(), pick)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_nk_correct_on_edge_cases(dtype):
    assert _gpu_nk(dtype) >= 100


# ---- compressed A (afmt bitmap / pair; issue 16, bench/drafts/tc_gather-bitmap.md) ------------------------------

FORMATS = ("bitmap", "pair")


def adversarial_compressed() -> dict:
    """Patterns for the compressed formats: uniform at d 0.1 / 0.05 / 0.7, empty rows and an empty row block (no union),
    a full 8 x 16 tile and one dense row (all 128 bits of tiles set), M and K not multiples of 8 / 16, one nonzero,
    stored zeros, and a CSR with duplicate entries (the last value counts, as in tc_layout)."""
    rng = np.random.default_rng(5)
    out = {f"uniform_{d}": random_matrix(203, 333, d, "uniform", 7) for d in (0.05, 0.1, 0.7)}
    d = (rng.random((75, 301)) < 0.12) * (rng.standard_normal((75, 301)) + 0.5)
    d[0:40] = 0.0  # empty rows: the first row blocks of every rn have no union
    d[48:56, 32:48] = rng.standard_normal((8, 16)) + 3.0  # a full tile (rn = 1; part of one for larger rn)
    d[60] = rng.standard_normal(301) + 3.0  # a dense row
    out["empty_full_dense_row"] = sps.csr_matrix(d)
    one = np.zeros((9, 17))
    one[8, 16] = 1.5
    out["one_nonzero"] = sps.csr_matrix(one)
    z = random_matrix(64, 100, 0.2, "uniform", 3)
    z.data[::3] = 0.0  # stored zeros keep their bit / register
    out["stored_zeros"] = z
    dup = sps.csr_matrix((np.array([1.0, 2.0, 3.0, 4.0], np.float32), np.array([5, 5, 7, 5]), np.array([0, 3, 3, 4])),
                         shape=(3, 20))  # row 0: column 5 twice, then 7; not canonical
    out["duplicates"] = dup
    return out


def _to_dense_words(fmt, layout, rn):
    step_ptr = layout[0]
    tiles = int(step_ptr[-1]) * rn
    if fmt == "bitmap":
        return host().bitmap_to_dense(layout[2], layout[3], layout[4], tiles)
    return host().pair_to_dense(layout[2], layout[3], tiles)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rn", [1, 2, 4, 8])
def test_compressed_formats_round_trip_to_a_by_the_lane_rule(fmt, rn):
    """Decoded by the kernel's lane rule (python: bitmap_to_dense / pair_to_dense), each format is tc_layout's dense
    tiles word for word (same steps and union columns), and those rebuild A (scipy.sparse, rounded to 16 bits)."""
    h = host()
    build = h.tc_bitmap_layout if fmt == "bitmap" else h.tc_pair_layout
    for name, a in adversarial_compressed().items():
        for dtype in ("fp16", "bf16"):
            step_ptr, cols, avals = h.tc_layout(a, rn, dtype)
            lay = build(a, rn, dtype)
            np.testing.assert_array_equal(lay[0], step_ptr)
            np.testing.assert_array_equal(lay[1], cols)
            np.testing.assert_array_equal(_to_dense_words(fmt, lay, rn), avals, err_msg=f"{name} {dtype}")
        if name == "duplicates":
            continue
        lay = build(a, rn, "fp16")
        got = decode(step_ptr, cols, _to_dense_words(fmt, lay, rn).view(np.float16), rn, a.shape)
        np.testing.assert_array_equal(got, a.toarray().astype(np.float16).astype(np.float64), err_msg=name)


def test_compressed_format_invariants_and_bytes():
    """bitmap: one packed weight a set bit, each tile's start and word bases consistent; pair: one packed register a
    set bit. Both store every stored nonzero once; at d 0.1 bitmap is under 45 % of dense's bytes (union columns
    included), pair under 55 % (rn 1: ~7.2 against ~14.3 B a nonzero) and above bitmap."""
    h = host()
    a = random_matrix(512, 1024, 0.1, "uniform", 1)
    for rn in (1, 2, 4):
        step_ptr, cols, avals = h.tc_layout(a, rn)
        tiles = int(step_ptr[-1]) * rn
        _, _, amask, ameta, bvals = h.tc_bitmap_layout(a, rn)
        bits = np.array([bin(int(x)).count("1") for x in amask]).reshape(tiles, 4)
        assert amask.shape == (4 * tiles,) and ameta.shape == (2 * tiles,) and len(bvals) == bits.sum() == a.nnz
        np.testing.assert_array_equal(ameta[0::2], np.r_[0, np.cumsum(bits.sum(1))[:-1]])
        for w in range(4):
            np.testing.assert_array_equal((ameta[1::2] >> (8 * w)) & 0xFF, bits[:, :w].sum(1))
        _, _, pmeta, pvals = h.tc_pair_layout(a, rn)
        pm = pmeta.reshape(tiles, 4)
        regs = np.array([[bin(int(x)).count("1") for x in row] for row in pm[:, [0, 2]]])
        assert len(pvals) == regs.sum() and a.nnz / 2 <= len(pvals) <= a.nnz
        np.testing.assert_array_equal(pm[:, 1], np.r_[0, np.cumsum(regs.sum(1))[:-1]])
        np.testing.assert_array_equal(pm[:, 3], pm[:, 1] + regs[:, 0])
        dense_b = avals.nbytes + cols.nbytes
        bitmap_b = amask.nbytes + ameta.nbytes + bvals.nbytes + cols.nbytes
        pair_b = pmeta.nbytes + pvals.nbytes + cols.nbytes
        assert bitmap_b < 0.45 * dense_b and bitmap_b < pair_b < 0.55 * dense_b, (rn, dense_b, bitmap_b, pair_b)


def test_afmt_is_tuned_and_stored_configs_render_the_dense_kernel():
    """afmt defaults to dense: a config stored before it existed normalizes to dense and renders what it rendered
    before, byte for byte but for the header's " afmt=dense" (the digests above, in both layouts); rn 8 only with a
    compressed format."""
    from sparse_autotune.core import render
    from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
    fam = get_family(FAMILY)
    sp = fam.space
    assert sp.param("afmt").choices("fp16") == ["dense", "bitmap", "pair"]
    old = dict(KN_DIGESTS[0][1])
    assert sp.normalize(old, "fp16") == {**old, "afmt": "dense"}
    for dtype, cfg, digest in KN_DIGESTS:
        src = render.render(sp, {**cfg, "afmt": "dense"}, dtype)
        assert src == render.render(sp, cfg, dtype) and dense_digest(src) == digest
        assert "amask" not in src and "ameta" not in src and "__popc" not in src
    for dtype, cfg, digest in NK_DIGESTS:
        assert dense_digest(render.render(sp, cfg, dtype, layout="nk")) == digest, (dtype, cfg)
    env = problem_env(4096, 4096, 16, 1_677_722, "fp16")
    feas = list(sp.feasible("fp16", env, DEFAULT_LIMITS))
    assert {c["afmt"] for c in feas} == {"dense", "bitmap", "pair"}
    assert {c["rn"] for c in feas if c["afmt"] == "dense"} == {1, 2, 4}
    assert {c["rn"] for c in feas if c["afmt"] == "pair"} == {1, 2, 4, 8}
    assert sp.check({**old, "rn": 8, "nt": 1, "afmt": "dense"}, env, DEFAULT_LIMITS) is not None  # refused
    assert sp.check({**old, "rn": 8, "nt": 1, "afmt": "pair"}, env, DEFAULT_LIMITS) is None
    src = render.render(sp, {**old, "afmt": "pair"}, "fp16")
    assert src.splitlines()[0].endswith("row_order=natural afmt=pair") and "__popc(wd & low)" in src


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("order", ["natural", "greedy"])
def test_compressed_launch_passes_its_arrays_and_caches_them(fmt, order):
    """The kernel takes the format's arrays in place of avals (bitmap: amask, ameta, avals; pair: ameta, avals), then
    row_perm where reordered; built once per (format, rn, dtype[, order]) and shared by configs of that rn."""
    from fakes import FakeDeviceCSR, fake_kernel, signature
    a = clustered()
    dev = FakeDeviceCSR(a, "fp16")
    cfg = {"rn": 2, "nt": 2, "ksplit": 2, "unroll": 1, "bload": "scalar", "prefetch": 1, "row_order": order,
           "afmt": fmt}
    kern = fake_kernel(FAMILY, cfg, "fp16", a, dev)
    names = [nm for nm, _ in signature(kern.source)]
    arrays = ["amask", "ameta", "avals"] if fmt == "bitmap" else ["ameta", "avals"]
    assert names[:2 + len(arrays)] == ["step_ptr", "cols", *arrays]
    got = kern.args(64, "B", "C")
    assert len(got) == len(names) and got[names.index("B")] == "B" and got[names.index("C")] == "C"
    want = host().tc_layout_ordered(a, 2, "fp16", order, afmt=fmt) if order != "natural" else \
        (host().tc_bitmap_layout if fmt == "bitmap" else host().tc_pair_layout)(a, 2, "fp16")
    for i, arr in enumerate(want):
        np.testing.assert_array_equal(got[i].host, arr)
    assert ("row_perm" in names) == (order != "natural")
    fake_kernel(FAMILY, {**cfg, "nt": 1, "ksplit": 4}, "fp16", a, dev).args(64, "B", "C")
    fake_kernel(FAMILY, {**cfg, "afmt": "dense"}, "fp16", a, dev).args(64, "B", "C")
    key = ("tc" + fmt, 2, "fp16") + (() if order == "natural" else (order,))
    dense_key = ("tc", 2, "fp16") + (() if order == "natural" else (order,))
    assert [k for k, _ in dev.built] == [key, dense_key]


# The template's own decode run on the CPU: load_step (the gathered rows of B and the tile registers) cut from the
# rendered source and compiled by g++ with __ldg / __popc / vector types defined, called for every step and lane.
_EMU_PRELUDE = r"""
#include <cstddef>
#include <cstring>
#define __device__
#define __forceinline__ inline
#define __restrict__
struct uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) int2 { int x, y; };
static inline uint2 make_uint2(unsigned a, unsigned b) { return uint2{a, b}; }
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
template <class T> static inline T __ldg(const T* p) { return *p; }
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
"""


def _emu_source(cfg: dict) -> str:
    from sparse_autotune.core import render
    src = render.render(get_family(FAMILY).space, cfg, "fp16")
    head = src[src.index("#define RN"):src.index("__device__ __forceinline__ unsigned int f2h2")]
    row = src[src.index("// NT 32-bit words"):src.index("__device__ __forceinline__ void mma16816")]
    body = src[src.index("struct Frag"):src.index("__device__ __forceinline__ void mma_step")]
    aps = {"bitmap": "const unsigned int* amask, const uint2* ameta, const unsigned short* avals",
           "pair": "const uint4* ameta, const unsigned int* avals"}[cfg["afmt"]]
    avs = {"bitmap": "amask, ameta, avals", "pair": "ameta, avals"}[cfg["afmt"]]
    run = f"""
extern "C" void run(int steps, const int* cols, {aps}, const unsigned short* B, int N, unsigned int* out) {{
    for (int t = 0; t < steps; ++t)
        for (int lane = 0; lane < 32; ++lane) {{
            const int col = (lane >> 2) * (2 * NT);
            Frag f;
            load_step(cols, {avs}, B + col, N, col < N, N - col, t, lane, f);
            unsigned int* o = out + ((size_t)t * 32 + lane) * (2 * RN + 4 * NT);
            for (int i = 0; i < RN; ++i) {{ o[2 * i] = f.w[i].x; o[2 * i + 1] = f.w[i].y; }}
            for (int j = 0; j < NT; ++j) {{
                o[2 * RN + 4 * j] = f.x0[j]; o[2 * RN + 4 * j + 1] = f.x1[j];
                o[2 * RN + 4 * j + 2] = f.x2[j]; o[2 * RN + 4 * j + 3] = f.x3[j];
            }}
        }}
}}
"""
    return _EMU_PRELUDE + head + row + body + run


@pytest.mark.parametrize("cfg", [
    dict(rn=1, nt=1, ksplit=4, unroll=2, bload="vec", prefetch=0, row_order="natural", afmt="bitmap"),
    dict(rn=4, nt=2, ksplit=2, unroll=1, bload="vec", prefetch=1, row_order="natural", afmt="bitmap"),
    dict(rn=8, nt=1, ksplit=8, unroll=2, bload="vec", prefetch=1, row_order="natural", afmt="pair"),
    dict(rn=2, nt=4, ksplit=1, unroll=1, bload="scalar", prefetch=0, row_order="natural", afmt="pair"),
], ids=lambda c: f"{c['afmt']}-rn{c['rn']}-nt{c['nt']}-{c['bload']}")
def test_template_decode_emulated_matches_the_dense_tiles(cfg, tmp_path):
    """Every lane's tile registers from the rendered load_step equal tc_layout's dense words (so the kernel's MMAs see
    what the dense kernel sees), and its gathered rows of B (byte offsets k * 2N) are B's rows, zero past N."""
    import ctypes
    import shutil
    import subprocess
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    h = host()
    rn, nt = cfg["rn"], cfg["nt"]
    so = tmp_path / "emu.so"
    (tmp_path / "emu.cpp").write_text(_emu_source(cfg))
    subprocess.run(["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-w", "-o", str(so), str(tmp_path / "emu.cpp")],
                   check=True)
    lib = ctypes.CDLL(str(so))
    p = ctypes.c_void_p
    cases = adversarial_compressed()
    for name in ("uniform_0.1", "uniform_0.7", "empty_full_dense_row"):
        a = cases[name]
        n = 16 * nt - 3 if cfg["bload"] == "scalar" else 16 * nt  # scalar: the last lanes' columns past N
        step_ptr, cols, avals = h.tc_layout(a, rn)
        lay = (h.tc_bitmap_layout if cfg["afmt"] == "bitmap" else h.tc_pair_layout)(a, rn)
        steps = int(step_ptr[-1])
        b = np.random.default_rng(0).integers(1, 60000, size=(a.shape[1], n)).astype(np.uint16)
        out = np.zeros(steps * 32 * (2 * rn + 4 * nt), dtype=np.uint32)
        arrs = [np.ascontiguousarray(x) for x in (cols, *lay[2:], b)]
        lib.run(ctypes.c_int(steps), *[p(x.ctypes.data) for x in arrs[:-1]], p(arrs[-1].ctypes.data),
                ctypes.c_int(n), p(out.ctypes.data))
        out = out.reshape(steps, 32, 2 * rn + 4 * nt)
        want_w = avals.view(np.uint32).reshape(steps, rn, 32, 2).transpose(0, 2, 1, 3).reshape(steps, 32, 2 * rn)
        np.testing.assert_array_equal(out[:, :, :2 * rn], want_w, err_msg=name)
        lane = np.arange(32)
        g, q = lane // 4, lane % 4
        bp = np.zeros((a.shape[1], 16 * nt + 2), dtype=np.uint32)
        bp[:, :n] = b
        for r, kk in enumerate((2 * q, 2 * q + 1, 2 * q + 8, 2 * q + 9)):
            rows = cols.reshape(steps, 16)[:, kk]  # steps x 32
            for j in range(nt):
                c0 = g * 2 * nt + 2 * j
                want = bp[rows, c0[None, :]] | (bp[rows, c0[None, :] + 1] << 16)
                np.testing.assert_array_equal(out[:, :, 2 * rn + 4 * j + r], want, err_msg=f"{name} x{r}[{j}]")


def test_compressed_configs_compile_with_nvcc_without_spills():
    """A sample of the new formats (both dtypes and layouts, rn 1-8, nt 1-4, vec / scalar, prefetch, reordered rows)
    builds for sm_90 without spills and within 128 registers (rn * nt <= 8 accumulators' worth)."""
    import concurrent.futures
    import re

    from sparse_autotune.core import render
    from sparse_autotune.device import compile as sat_compile
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    sp = get_family(FAMILY).space
    sample = [("fp16", "kn", dict(rn=4, nt=1, ksplit=4, unroll=2, bload="vec", prefetch=1, row_order="natural",
                                  afmt="pair")),
              ("bf16", "nk", dict(rn=8, nt=1, ksplit=8, unroll=2, bload="scalar", prefetch=1, row_order="greedy",
                                  afmt="pair")),
              ("bf16", "kn", dict(rn=2, nt=4, ksplit=2, unroll=4, bload="scalar", prefetch=0, row_order="minhash",
                                  afmt="bitmap")),
              ("fp16", "nk", dict(rn=1, nt=2, ksplit=16, unroll=1, bload="vec", prefetch=0, row_order="natural",
                                  afmt="bitmap"))]
    assert all(sp.normalize(c, d) == c for d, _, c in sample)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reps = list(pool.map(lambda s: sat_compile.nvcc_check(render.render(sp, s[2], s[0], layout=s[1]),
                                                              arch="sm_90"), sample))
    for (dtype, layout, cfg), rep in zip(sample, reps):
        assert "entry function 'spmm_kernel' for 'sm_90'" in rep, (cfg, rep)
        assert " 0 bytes spill stores" in rep, (cfg, rep)
        assert int(re.search(r"Used (\d+) registers", rep).group(1)) <= 128, (cfg, rep)


# the GPU tests' configs of the compressed formats: every rn, nt 1-4, vec and scalar loads, prefetch, unroll, ksplit
# 1-16, every row order; the same set on every case and N (each compiled once a dtype and layout)
GPU_COMPRESSED = [
    dict(rn=1, nt=1, ksplit=4, unroll=1, bload="scalar", prefetch=0, row_order="natural", afmt="bitmap"),
    dict(rn=2, nt=2, ksplit=2, unroll=2, bload="vec", prefetch=1, row_order="greedy", afmt="bitmap"),
    dict(rn=8, nt=1, ksplit=8, unroll=2, bload="scalar", prefetch=1, row_order="natural", afmt="bitmap"),
    dict(rn=4, nt=1, ksplit=16, unroll=2, bload="vec", prefetch=1, row_order="natural", afmt="pair"),
    dict(rn=4, nt=1, ksplit=16, unroll=2, bload="scalar", prefetch=1, row_order="minhash", afmt="pair"),
    dict(rn=8, nt=1, ksplit=8, unroll=1, bload="scalar", prefetch=0, row_order="greedy", afmt="pair"),
    dict(rn=1, nt=4, ksplit=1, unroll=4, bload="scalar", prefetch=0, row_order="natural", afmt="pair"),
    dict(rn=2, nt=2, ksplit=8, unroll=2, bload="vec", prefetch=1, row_order="natural", afmt="pair"),
]


def _gpu_compressed(dtype: str) -> int:
    """The compressed formats through the project's launch path (nk_check.check_kn: poisoned C, fresh B, float64
    reference of the rounded operands) on the edge cases and the adversarial patterns (d 0.7 included), N = 1, 3, 8,
    16, 32, 127: GPU_COMPRESSED where feasible (scalar loads at odd N)."""
    from nk_check import check_kn

    from sparse_autotune.core.problem import TOLERANCE
    from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
    sp = get_family(FAMILY).space
    cases = {**edge_cases(), **{k: v for k, v in adversarial_compressed().items() if k != "duplicates"}}

    def configs(a, n):
        env = problem_env(a.shape[0], a.shape[1], n, a.nnz, dtype)
        got = [c for c in GPU_COMPRESSED if sp.check(c, env, DEFAULT_LIMITS) is None]
        assert any(c["bload"] == "scalar" for c in got)
        return got
    return check_kn(FAMILY, dtype, cases, configs, (1, 3, 8, 16, 32, 127), TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_compressed_formats_correct_on_edge_cases(dtype):
    assert _gpu_compressed(dtype) >= 250


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_compressed_formats_nk_correct_on_edge_cases(dtype):
    """Native nk (y = x @ A^T + bias) with the compressed formats: GPU_COMPRESSED where feasible (nk_check's N)."""
    from nk_check import check_nk_natively

    def pick(feas, name, n):
        return [f for f in feas if any(all(f.get(k) == v for k, v in c.items()) for c in GPU_COMPRESSED)]
    assert check_nk_natively(FAMILY, dtype, edge_cases(), pick) >= 60


def test_the_compressed_sweep_file_is_feasible_at_its_cases():
    """Each line of tests/families/tc_gather_bitmap_sweep.txt names a tc_gather config that normalizes for fp16 and bf16
    and is feasible at 4096x4096 N = 16 or N = 32 (the sweep's cases; bench/drafts/tc_gather-bitmap.md)."""
    import json
    from pathlib import Path

    from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
    sp = get_family(FAMILY).space
    lines = [ln for ln in (Path(__file__).parent / "tc_gather_bitmap_sweep.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert len(lines) >= 8
    envs = [problem_env(4096, 4096, n, 1_677_722, "fp16") for n in (16, 32)]
    for ln in lines:
        fam, raw = ln.split(":", 1)
        assert fam == FAMILY
        for dtype in ("fp16", "bf16"):
            cfg = sp.normalize(json.loads(raw), dtype)
            assert cfg is not None, ln
            assert any(sp.check(cfg, env, DEFAULT_LIMITS) is None for env in envs), ln


def test_the_gpu_tests_configs_are_feasible_somewhere_and_cover_the_formats():
    """GPU_COMPRESSED: valid configs of both formats and every rn; at N = 1 and 127 (odd) the scalar ones run, at 16
    all but nt > 1 where it is too wide; kn edge cases see every config at some N (no dead entry)."""
    from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env
    sp = get_family(FAMILY).space
    assert {c["afmt"] for c in GPU_COMPRESSED} == set(FORMATS) and {c["rn"] for c in GPU_COMPRESSED} == {1, 2, 4, 8}
    for dtype in ("fp16", "bf16"):
        assert all(sp.normalize(c, dtype) == c for c in GPU_COMPRESSED)
        ran = set()
        for n in (1, 3, 8, 16, 32, 127):
            env = problem_env(203, 333, n, 7000, dtype)
            ok = [i for i, c in enumerate(GPU_COMPRESSED) if sp.check(c, env, DEFAULT_LIMITS) is None]
            assert ok and (n % 2 == 0 or all(GPU_COMPRESSED[i]["bload"] == "scalar" for i in ok)), (n, ok)
            ran |= set(ok)
        assert ran == set(range(len(GPU_COMPRESSED)))
