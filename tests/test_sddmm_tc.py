"""sddmm_tc (SDDMM on tensor cores: variants/sddmm/sddmm_tc.cu.j2, sparse_autotune/ops/sddmm_tc.py) on the CPU: the
space and its constraints; every config renders; a covering sample compiles with nvcc for sm_90 without spills; the
layout against scipy for random and adversarial masks; the numpy emulation of the tile scheme against the float64
reference; the mma.m16n8k16 fragment addressing of the template (ldmatrix lane addresses) emulated lane by lane; the
launch plan against the kernel's signature; the layout cache. The GPU side is tests/test_sddmm_tc_gpu.py."""
from __future__ import annotations

import concurrent.futures
import re

import numpy as np
import pytest
import scipy.sparse as sps

from sddmm_cases import covering_sample, env_of, masks, operands
from sparse_autotune.core.problem import DTYPES, as_float, host_values
from sparse_autotune.core.space import DEFAULT_LIMITS
from sparse_autotune.device import compile as sat_compile
from sparse_autotune.errors import UserError
from sparse_autotune.ops import sddmm
from sparse_autotune.ops import sddmm_paths as P
from sparse_autotune.ops import sddmm_tc as T

FAMILY = "sddmm_tc"
DTYPES_TC = ("fp16", "bf16")
HEADER = re.compile(r"^// sparse-autotune family (\S+) \| (.*)$", re.MULTILINE)


def space():
    return sddmm.get_sddmm_space(FAMILY)


def all_masks() -> dict[str, sps.csr_matrix]:
    """tests/sddmm_cases.masks() and more: N not a multiple of any tile, a clustered (banded) mask, duplicates."""
    out = dict(masks())
    rng = np.random.default_rng(7)
    out["n_odd_137x301"] = sps.random(137, 301, density=0.1, format="csr", random_state=5, dtype=np.float32)
    band = sps.diags([1.0] * 7, list(range(-3, 4)), shape=(200, 200), format="csr", dtype=np.float32)
    band.data = rng.uniform(0.5, 1.5, band.nnz).astype(np.float32)
    out["band_200"] = band
    d = sps.csr_matrix((np.array([1.0, 2.0, 3.0], np.float32), np.array([4, 4, 1]), np.array([0, 0, 3, 3])),
                       shape=(3, 9))
    out["duplicates"] = d
    return out


# ---- the space ------------------------------------------------------------------------------------------------------

def test_space_is_16_bit_only_and_after_the_cuda_core_families():
    s = space()
    assert s.dtypes == DTYPES_TC and s.template == "sddmm/sddmm_tc.cu.j2" and s.rank > 100
    assert FAMILY in sddmm.sddmm_families() and sddmm.sddmm_families()[-1] == FAMILY
    assert s.size("fp16") > 1000 and s.size("fp32") == 0 and all(c.why != c.expr for c in s.constraints)
    env = sddmm.sddmm_env(1024, 1024, 64, 50000, "fp16")
    assert P.default_path("fp16", env)[0] != FAMILY  # the runtime's built-in default stays a measured family
    with pytest.raises(UserError, match="computes only fp16, bf16"):
        sddmm.check_config(FAMILY, s.known_good[0], "fp32", sddmm.sddmm_env(64, 64, 64, 100, "fp32"))


def test_constraints_reject_what_they_say():
    s = space()
    kg = s.normalize(s.known_good[0], "fp16")
    env = sddmm.sddmm_env(1024, 1024, 64, 50000, "fp16")
    assert s.check(kg, env) is None
    assert "K is a multiple of 8" in s.check(kg, {**env, "K": 60})
    assert "mt = rows / (16 wm)" in s.check({**kg, "rows": 16, "wm": 2}, env)
    assert "64 fp32 accumulators" in s.check({**kg, "rows": 128, "wm": 2, "nt": 8}, env)
    assert "no longer than K" in s.check({**kg, "kc": 128}, {**env, "K": 32})
    assert "no taller than the mask" in s.check({**kg, "rows": 128}, {**env, "M": 20})
    for cfg in s.feasible("fp16", sddmm.sddmm_env(4096, 4096, 1024, 10**6, "fp16")):
        assert T.smem_bytes(cfg) <= DEFAULT_LIMITS["max_dyn_smem_bytes"] and T.threads(cfg) <= 512


@pytest.mark.parametrize("dtype", DTYPES_TC)
def test_known_good_configs_are_feasible_for_the_benchmark_shapes(dtype):
    s = space()
    for m, n, k in ((1024, 1024, 64), (4096, 4096, 64), (2048, 2048, 128), (768, 3072, 512), (4096, 4096, 1024)):
        got = s.defaults(dtype, sddmm.sddmm_env(m, n, k, m * n // 10, dtype))
        # the long-K one (a ring of 3 chunks of 64) not at K = 64
        assert len(got) == len(s.known_good) - (k <= 64), (m, n, k)


# ---- rendering and compiling --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES_TC)
def test_every_config_renders(dtype):
    seen = set()
    for cfg in space().enumerate(dtype):
        src = sddmm.render_sddmm(FAMILY, cfg, dtype)
        mt = HEADER.search(src)
        assert mt and mt.group(1) == FAMILY
        assert dict(kv.split("=", 1) for kv in mt.group(2).split()) == {"dtype": dtype, **{k: str(v) for k, v in cfg.items()}}
        assert f"mma.sync.aligned.m16n8k16.row.col.f32.{'bf16' if dtype == 'bf16' else 'f16'}" in src
        seen.add(hash(src))
    assert len(seen) == space().size(dtype)


@pytest.fixture(scope="module")
def nvcc_reports():
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    jobs = []
    for dtype in DTYPES_TC:
        for k in (64, 1024, 40):
            env = sddmm.sddmm_env(4096, 4096, k, 10**6, dtype)
            cfgs = covering_sample(space(), dtype, env) if k != 40 else space().defaults(dtype, env)
            for c in cfgs:  # the row order changes no code: compiled as natural
                job = (dtype, k, {**c, "order": "natural"})
                if job not in jobs:
                    jobs.append(job)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda j: sat_compile.nvcc_check(sddmm.render_sddmm(FAMILY, j[2], j[0]), "sm_90"), jobs))
    return list(zip(jobs, reports))


def test_covering_sample_compiles_without_spills(nvcc_reports):
    assert len(nvcc_reports) >= 12
    s = space()
    for p in s.params:
        if p.name != "order":
            assert {j[2][p.name] for j, _ in nvcc_reports} == set(p.choices("fp16")), p.name
    for (dtype, k, cfg), report in nvcc_reports:
        assert "entry function 'sddmm_kernel' for 'sm_90'" in report, (dtype, cfg, report)
        assert "0 bytes spill stores, 0 bytes spill loads" in report, (dtype, cfg, report)
        regs = int(re.search(r"Used (\d+) registers", report).group(1))
        assert regs * T.threads(cfg) <= 65536, (cfg, regs)  # one block fits an SM's register file


# ---- the layout -----------------------------------------------------------------------------------------------------

LAYOUTS = [(16, 8, "natural"), (16, 64, "minhash"), (32, 16, "natural"), (64, 128, "greedy"), (128, 256, "natural")]


@pytest.mark.parametrize("rows, nc, order", LAYOUTS)
def test_layout_against_scipy(rows, nc, order):
    for name, m in all_masks().items():
        lay = T.tc_layout(m, rows, nc, order)
        mm, n = m.shape
        nb = -(-mm // rows)
        assert lay.trows.dtype == lay.ucols.dtype == lay.tinfo.dtype == lay.e_pos.dtype == np.int32
        assert lay.e_loc.dtype == np.uint16 and lay.trows.shape == (nb * rows,)
        assert np.array_equal(np.sort(lay.trows[:mm]), np.arange(mm)) and (lay.trows[mm:] == -1).all(), name
        if order == "natural":
            assert np.array_equal(lay.trows[:mm], np.arange(mm))
        assert np.array_equal(np.sort(lay.e_pos), np.arange(m.nnz)), name  # every nonzero exactly once
        ti = lay.tinfo
        assert ti.shape == (lay.ntiles + 1, 4) and ti[-1, 3] == m.nnz and (np.diff(ti[:, 3]) >= 0).all()
        assert ((ti[:-1, 2] >= 1) & (ti[:-1, 2] <= nc)).all() and (np.diff(ti[:-1, 0]) >= 0).all()
        # per block: its tiles cut the union, which is scipy's set of columns of the block's rows, in order
        for b in range(nb):
            rws = lay.trows[b * rows:(b + 1) * rows]
            want = np.unique(m[rws[rws >= 0]].indices) if (rws >= 0).any() else np.zeros(0, int)
            tiles = np.flatnonzero(ti[:-1, 0] == b)
            got = np.concatenate([lay.ucols[ti[t, 1]:ti[t, 1] + ti[t, 2]] for t in tiles]) if len(tiles) else want[:0]
            assert np.array_equal(got, want), (name, b)
            assert all(ti[t, 2] == nc for t in tiles[:-1])  # only a block's last chunk is short
        # each entry: its tile's row and column are its nonzero's
        rows_of = np.repeat(np.arange(mm), np.diff(m.indptr))
        for t in range(lay.ntiles):
            b, u0, nu, e0 = ti[t]
            ent = slice(e0, ti[t + 1, 3])
            p, loc = lay.e_pos[ent], lay.e_loc[ent].astype(int)
            r, c = loc // nc, loc % nc
            assert (c < nu).all() and (r < rows).all()
            assert np.array_equal(lay.trows[b * rows + r], rows_of[p]), (name, t)
            assert np.array_equal(lay.ucols[u0 + c], m.indices[p]), (name, t)
            assert (np.diff(loc) >= 0).all()  # entries in (row, column) order


def test_layout_of_empty_and_degenerate_masks():
    lay = T.tc_layout(sps.csr_matrix((50, 60), dtype=np.float32), 16, 64)
    assert lay.ntiles == 0 and lay.tinfo.shape == (1, 4) and len(lay.e_pos) == 0
    one = masks()["one_dense_row"]
    lay = T.tc_layout(one, 16, 64)  # row 11: all 3000 columns in block 0 (47 tiles); row 3 shares block 0
    assert lay.ntiles == 47 and lay.tile_columns() == 3000
    with pytest.raises(ValueError):
        T.tc_layout(one, 256, 512)


def test_reordering_never_grows_the_tiles():
    rng = np.random.default_rng(3)
    # rows of four interleaved column clusters: natural blocks mix them, a reorder groups them
    rows = [rng.choice(64, 6, replace=False) + 64 * (r % 4) for r in range(128)]
    a = sps.csr_matrix((np.ones(6 * 128, np.float32), np.concatenate(rows), np.arange(0, 6 * 129, 6)), shape=(128, 256))
    nat = T.tc_layout(a, 16, 8, "natural").tile_columns()
    for order in ("minhash", "greedy"):
        assert T.tc_layout(a, 16, 8, order).tile_columns() <= nat
    assert T.tc_layout(a, 16, 8, "greedy").tile_columns() < nat


def test_layout_cache_keys_on_the_pattern_only():
    T.clear_cache()
    m = masks()["random_300x200"]
    a = T.cached_layout(m, 32, 64)
    other = m.copy()
    other.data = other.data * 3
    assert T.cached_layout(other, 32, 64) is a  # values differ, pattern the same
    assert T.cached_layout(m, 32, 128) is not a and T.cached_layout(m, 32, 64, "minhash") is not a
    changed = m.tolil()
    changed[0, 0] = 5.0 if changed[0, 0] == 0 else 0.0
    assert T.cached_layout(sps.csr_matrix(changed), 32, 64) is not a


# ---- the tile scheme, emulated --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES_TC)
def test_emulated_tile_scheme_matches_the_reference(dtype):
    for name, m in all_masks().items():
        vals = host_values(np.asarray(m.data, np.float32), DTYPES[dtype])
        vals = as_float(vals) if vals.dtype == np.uint16 else vals
        for k, kc, (rows, nc, order) in ((8, 32, LAYOUTS[0]), (40, 32, LAYOUTS[1]), (72, 64, LAYOUTS[3]),
                                         (64, 64, LAYOUTS[4])):
            x, y = operands(m, k, dtype, seed=k)
            ref = sddmm.sddmm_reference(m, x, y, dtype)
            got = T.emulate(T.tc_layout(m, rows, nc, order), np.asarray(vals, np.float32), as_float(x), as_float(y), kc)
            assert not np.isnan(got).any(), name  # every output written
            err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30) if m.nnz else 0.0
            assert err < 1e-6, (name, k, rows, err)


def _ldmatrix(smem_halves: np.ndarray, addrs: list[int], count: int) -> np.ndarray:
    """ldmatrix.m8n8.x{count} (non-transposed) on a flat array of 16-bit words: lane l's 32-bit register i holds the
    two halves of row l // 4, columns 2 (l % 4), + 1 of matrix i (whose row j is at lane 8 i + j's byte address)."""
    out = np.zeros((32, count, 2))
    for i in range(count):
        for lane in range(32):
            a = addrs[8 * i + lane // 4] // 2
            out[lane, i] = smem_halves[a + 2 * (lane % 4):a + 2 * (lane % 4) + 2]
    return out


def _mma(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """m16n8k16 from per-lane fragments (PTX's layouts for .row.col, 16-bit): returns the 16 x 8 D."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    for lane in range(32):
        g, q = lane // 4, lane % 4
        for reg, (r0, c0) in enumerate(((g, 2 * q), (g + 8, 2 * q), (g, 2 * q + 8), (g + 8, 2 * q + 8))):
            A[r0, c0:c0 + 2] = a[lane, reg]
        for reg, k0 in enumerate((2 * q, 2 * q + 8)):
            B[k0:k0 + 2, g] = b[lane, reg]
    return A @ B


@pytest.mark.parametrize("nt, wn, mt, wm", [(1, 1, 1, 1), (2, 2, 2, 1), (4, 1, 1, 2), (8, 2, 2, 2)])
def test_fragment_addressing_of_the_template_computes_the_tile(nt, wn, mt, wm):
    """The template's a_lane / b_lane formulas (copied here) over a staged chunk give X_tile . Y_tile^T."""
    rows, kc = 16 * mt * wm, 32
    nc, rs = 8 * nt * wn, kc + 8
    rng = np.random.default_rng(nt * 7 + mt)
    staged = rng.integers(-4, 5, size=(rows + nc, kc)).astype(np.float64)
    flat = np.zeros((rows + nc) * rs)
    for r in range(rows + nc):
        flat[r * rs:r * rs + kc] = staged[r]
    src = sddmm.render_sddmm(FAMILY, dict(rows=rows, wm=wm, wn=wn, nt=nt, kc=kc, stages=2, order="natural"), "fp16")
    assert "(wi * MT * 16 + lane % 16) * RS + (lane / 16) * 8) * 2" in src  # the formulas below are the template's
    if nt == 1:
        assert "(ROWS + wj * NT * 8 + lane % 8) * RS + ((lane / 8) % 2) * 8) * 2" in src
    else:
        assert "(ROWS + wj * NT * 8 + lane % 8 + (lane / 16) * 8) * RS + ((lane / 8) % 2) * 8) * 2" in src
    tile = np.zeros((rows, nc))
    for warp in range(wm * wn):
        wi, wj = warp // wn, warp % wn
        a_lane = [((wi * mt * 16 + ln % 16) * rs + (ln // 16) * 8) * 2 for ln in range(32)]
        if nt == 1:
            b_lane = [((rows + wj * nt * 8 + ln % 8) * rs + ((ln // 8) % 2) * 8) * 2 for ln in range(32)]
        else:
            b_lane = [((rows + wj * nt * 8 + ln % 8 + (ln // 16) * 8) * rs + ((ln // 8) % 2) * 8) * 2 for ln in range(32)]
        for ks in range(kc // 16):
            af = [_ldmatrix(flat, [a + (i * 16 * rs + ks * 16) * 2 for a in a_lane], 4) for i in range(mt)]
            for jp in range(max(nt // 2, 1)):
                if nt == 1:
                    bf = _ldmatrix(flat, [b + ks * 32 for b in b_lane], 2)
                    pairs = [(0, bf[:, 0:2])]
                else:
                    bf = _ldmatrix(flat, [b + (jp * 16 * rs + ks * 16) * 2 for b in b_lane], 4)
                    pairs = [(2 * jp, bf[:, 0:2]), (2 * jp + 1, bf[:, 2:4])]
                for i in range(mt):
                    for j, b in pairs:
                        r0, c0 = wi * mt * 16 + i * 16, wj * nt * 8 + j * 8
                        tile[r0:r0 + 16, c0:c0 + 8] += _mma(af[i], b)
    assert np.array_equal(tile, staged[:rows] @ staged[rows:].T)


# ---- the launch plan ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES_TC)
def test_launch_plan_matches_the_kernel_signature(dtype):
    for name, m in masks().items():
        for k in (40, 128):
            for cfg in covering_sample(space(), dtype, env_of(m, k, dtype), size=3)[:4]:
                plan = sddmm.launch_plan(FAMILY, cfg, m, k, dtype)
                body = re.search(r"sddmm_kernel\(([^)]*)\)", sddmm.render_sddmm(FAMILY, cfg, dtype)).group(1)
                params = [p.split() for p in body.split(",")]
                names = [p[-1] for p in params]
                assert len(names) == len(plan.arrays) + 4 + len(plan.scalars)
                assert names[:5] == ["tinfo", "trows", "ucols", "e_pos", "e_loc"]
                assert names[5:9] == ["s_vals", "X", "Y", "out"] and names[9:] == ["ntiles", "K"]
                assert [a.dtype for a in plan.arrays] == [np.int32] * 4 + [np.uint16]
                assert "unsigned short*" in " ".join(params[4])
                lay = T.cached_layout(m, cfg["rows"], T.tile_columns(cfg), cfg["order"])
                assert plan.grid == lay.ntiles == int(plan.scalars[0]) and int(plan.scalars[1]) == k
                assert plan.block == T.threads(cfg) and plan.smem == T.smem_bytes(cfg)
                assert (plan.grid == 0) == (m.nnz == 0)
