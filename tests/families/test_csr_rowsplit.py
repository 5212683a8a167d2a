"""csr_rowsplit (CSR row split, Sputnik-class): constraints, slots of long rows, launch, adaptation to N."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import launch_signature_test
from sparse_autotune.core import space
from sparse_autotune.core.families import get_family

M, K, N = 512, 2048, 256
NNZ = round(0.1 * M * K)
FAMILY = "csr_rowsplit"


def env_for(dtype, m=M, k=K, n=N):
    return space.problem_env(m, k, n, NNZ, dtype)


def host():
    """The family's host side (variants/csr_rowsplit.py), loaded by the registry."""
    return get_family(FAMILY).host


test_launch_matches_the_kernel_signature = launch_signature_test(FAMILY)


# ---- constraints ----------------------------------------------------------------------------------------

def _csr():
    return get_family(FAMILY).space


def _base_cfg(**over):
    cfg = {"rows_per_block": 8, "lanes_per_row": 8, "vec": 4, "cols_per_thread": 1, "unroll": 4, "stage": "none",
           "row_order": "natural", "raster": "rows_first", "index_bits": 32, "split": 0}
    cfg.update(over)
    return cfg


def test_base_config_is_feasible():
    assert _csr().check(_base_cfg(), env_for("fp32")) is None


def test_vector_width_must_divide_n():
    why = _csr().check(_base_cfg(vec=4), space.problem_env(M, K, 250, NNZ, "fp32"))
    assert why is not None and "divisible" in why
    assert _csr().check(_base_cfg(vec=2), space.problem_env(M, K, 250, NNZ, "fp32")) is None


def test_block_needs_a_whole_warp():
    why = _csr().check(_base_cfg(rows_per_block=2, lanes_per_row=8), env_for("fp32"))
    assert why is not None and "warp" in why
    assert _csr().check(_base_cfg(rows_per_block=4, lanes_per_row=8), env_for("fp32")) is None


def test_block_respects_max_threads():
    cfg = _base_cfg(rows_per_block=64, lanes_per_row=32, vec=1)
    assert _csr().check(cfg, env_for("fp32")) is not None
    assert _csr().check(_base_cfg(rows_per_block=64, lanes_per_row=16, vec=1), env_for("fp32")) is None
    assert _csr().check(_base_cfg(rows_per_block=64, lanes_per_row=16, vec=1), env_for("fp32"),
                        {"max_threads": 512}) is not None


def test_16_bit_indices_need_small_k():
    cfg = _base_cfg(index_bits=16)
    why = _csr().check(cfg, space.problem_env(M, 70000, N, NNZ, "fp16"))
    assert why is not None and "65536" in why
    assert _csr().check(cfg, space.problem_env(M, 65536, N, NNZ, "fp16")) is None


def test_shared_memory_limit():
    cfg = _base_cfg(stage="smem", chunk=128, rows_per_block=8)  # 8 * 129 * 8 = 8256 bytes
    assert _csr().check(cfg, env_for("fp32")) is None
    why = _csr().check(cfg, env_for("fp32"), {"max_smem_bytes": 8 * 1024})
    assert why is not None and "shared memory" in why
    assert _csr().check(cfg, env_for("fp32"), {"max_smem_bytes": 8256}) is None


def test_split_rows_need_two_subwarps_and_their_partial_sums_fit():
    assert _csr().check(_base_cfg(split=64), env_for("fp32")) is None
    why = _csr().check(_base_cfg(split=64, rows_per_block=1, lanes_per_row=32), env_for("fp32"))
    assert why is not None and "at least two" in why
    # 8 subwarps x 8 lanes x 4 wide: 7 * 32 * 4 = 896 bytes of partial sums
    assert _csr().check(_base_cfg(split=64), env_for("fp32"), {"max_smem_bytes": 895}) is not None
    assert _csr().check(_base_cfg(split=64), env_for("fp32"), {"max_smem_bytes": 896}) is None


def test_config_stored_before_split_existed_normalizes_to_no_split():
    old = {k: v for k, v in _base_cfg().items() if k != "split"}
    assert _csr().normalize(old, "fp32") == _base_cfg(split=0, acc="f32")  # acc (session 19) at its default too
    assert _csr().normalize({**old, "split": 7}, "fp32") is None  # not a value of the space


def test_offsets_must_fit_32_bits():
    why = _csr().check(_base_cfg(), space.problem_env(M, 2**21, 1024, NNZ, "fp32"))
    assert why is not None and "32 bits" in why


def test_inactive_parameter_does_not_break_constraints():
    """chunk is inactive for stage == 'none'; the smem constraint must not fail on its absence."""
    cfg = _base_cfg(stage="none")
    assert "chunk" not in cfg
    assert _csr().check(cfg, env_for("fp32"), {"max_smem_bytes": 1}) is None


# ---- csr_rowsplit slots (long rows split over a block) ----------------------------------------------------

@pytest.mark.parametrize("order", ["natural", "sorted"])
@pytest.mark.parametrize("rows_per_block,split", [(1, 64), (4, 0), (4, 16), (8, 5), (64, 16)])
def test_rowsplit_slots_cover_every_nonzero_once(order, rows_per_block, split):
    rowsplit_slots = host().rowsplit_slots
    rng = np.random.default_rng(rows_per_block * 100 + split)
    dense = (rng.random((50, 300)) < 0.03) * rng.standard_normal((50, 300))
    dense[7] = rng.standard_normal(300)  # one dense row
    dense[[3, 11, 12]] = 0.0  # empty rows
    dense[20, :90] = 1.0  # a long row
    a = sps.csr_matrix(dense)
    seg, rows, heavy = rowsplit_slots(a, order, rows_per_block, split)
    lens = np.diff(a.indptr)
    long_rows = set(np.flatnonzero(lens > split)) if split > 0 and rows_per_block > 1 else set()
    assert heavy == len(long_rows)
    assert seg.dtype == np.int32 and rows.dtype == np.int32 and seg.shape == (len(rows), 2)
    # long rows first, longest first, each a whole block of near-equal segments
    for b in range(heavy):
        blk = slice(b * rows_per_block, (b + 1) * rows_per_block)
        assert len(set(rows[blk])) == 1 and rows[blk][0] in long_rows
        seg_lens = seg[blk, 1] - seg[blk, 0]
        assert seg_lens.max() - seg_lens.min() <= 1
    assert list(lens[rows[: heavy * rows_per_block: rows_per_block]]) == sorted(lens[list(long_rows)], reverse=True)
    # every row appears, and its segments tile its nonzeros exactly once
    for r in range(a.shape[0]):
        mine = seg[rows == r]
        assert len(mine) == (rows_per_block if r in long_rows else 1)
        covered = np.concatenate([np.arange(s, e) for s, e in mine])
        assert sorted(covered) == list(range(a.indptr[r], a.indptr[r + 1]))
    light = rows[heavy * rows_per_block:]
    if order == "sorted":
        assert list(np.diff(lens[light]) <= 0) == [True] * (len(light) - 1)
    else:
        assert list(light) == sorted(light)




def test_a_vector_width_n_does_not_divide_is_lowered_to_one_that_runs():
    fam = get_family(FAMILY)
    cfg = _base_cfg(vec=4)
    assert fam.adapt(cfg, "fp32", space.problem_env(M, K, 250, NNZ, "fp32"))["vec"] == 2
    assert fam.adapt(cfg, "fp32", space.problem_env(M, K, 251, NNZ, "fp32"))["vec"] == 1
    assert fam.adapt(cfg, "fp32", env_for("fp32")) == {**cfg, "acc": "f32"}  # runs as stored (acc at its default)
    assert fam.adapt({**cfg, "vec": 3}, "fp32", env_for("fp32")) is None  # not a value of the space
    h2 = _base_cfg(vec=4, acc="h2x4")
    assert fam.adapt(h2, "fp16", space.problem_env(M, K, 250, NNZ, "fp16")) == {**h2, "vec": 2}
    assert fam.adapt(h2, "fp16", space.problem_env(M, K, 251, NNZ, "fp16")) == {**h2, "vec": 1, "acc": "f32"}


# ---- acc = "h2x4" (session 19: 4 nonzeros' products summed in half2, then into the fp32 accumulators) ----------

# renders of the old template (before `acc` existed) for configs without it: acc f32 must give the same bytes
BEFORE_ACC = [
    ("fp32", {"rows_per_block": 32, "lanes_per_row": 2, "vec": 2, "cols_per_thread": 1, "unroll": 8, "stage": "smem",
              "chunk": 128, "row_order": "sorted", "raster": "rows_first", "index_bits": 32, "split": 0},
     "af6ff9215ac4119e"),
    ("fp16", {"rows_per_block": 32, "lanes_per_row": 4, "vec": 2, "cols_per_thread": 1, "unroll": 4, "stage": "smem",
              "chunk": 32, "row_order": "sorted", "raster": "rows_first", "index_bits": 16, "split": 256},
     "6bee1d5231a91429"),
    ("fp16", {"rows_per_block": 16, "lanes_per_row": 32, "vec": 1, "cols_per_thread": 2, "unroll": 4, "stage": "smem",
              "chunk": 64, "row_order": "natural", "raster": "rows_first", "index_bits": 32, "split": 32},
     "436ea55c557b145c"),
]
# h2x4 over both A paths (smem chunks with residues, none), vec 2 / 4 / 8, two column vectors, split rows
H2 = [_base_cfg(stage="smem", chunk=32, rows_per_block=4, lanes_per_row=32, vec=8, row_order="sorted", acc="h2x4"),
      _base_cfg(stage="none", vec=4, cols_per_thread=2, unroll=4, acc="h2x4"),
      _base_cfg(stage="smem", chunk=64, rows_per_block=8, lanes_per_row=8, vec=2, split=64, acc="h2x4")]


def test_acc_f32_renders_as_before_acc_existed():
    """The same bytes as the template before `acc`, but for the header line's new ` acc=f32` (a header names every
    parameter)."""
    import hashlib
    from sparse_autotune.core import render
    for dtype, cfg, digest in BEFORE_ACC:
        src = render.render(_csr(), {**cfg, "acc": "f32"}, dtype)
        assert " acc=f32\n" in src and "fma.rn" not in src
        old = src.replace(" acc=f32\n", "\n", 1)
        assert hashlib.sha256(old.encode()).hexdigest()[:16] == digest, (dtype, cfg)


def test_acc_h2x4_is_for_16_bit_values_and_two_columns():
    for dtype in ("fp16", "bf16"):
        assert _csr().check(_base_cfg(acc="h2x4", vec=2), env_for(dtype)) is None
        why = _csr().check(_base_cfg(acc="h2x4", vec=1), env_for(dtype))
        assert why is not None and "half2" in why
    assert _csr().check(_base_cfg(acc="h2x4"), env_for("fp32")) is not None
    assert {c.get("acc") for c in _csr().feasible("fp32", env_for("fp32"))} == {"f32"}
    assert {c.get("acc") for c in _csr().feasible("fp16", env_for("fp16"))} == {"f32", "h2x4"}


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_acc_h2x4_compiles_for_sm90_without_spills(dtype):
    from sparse_autotune.core import render
    from sparse_autotune.device.compile import nvcc_check
    for cfg in H2 if dtype == "fp16" else H2[:1]:
        src = render.render(_csr(), cfg, dtype)
        assert f"fma.rn.{'bf16x2' if dtype == 'bf16' else 'f16x2'}" in src and " acc=h2x4\n" in src
        assert "0 bytes spill stores" in nvcc_check(src), cfg


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_acc_h2x4_correct_on_edge_cases(dtype):
    """Empty rows, rows of 1-3 nonzeros (only the final flush), one long row (split over a block), chunk residues,
    N not a multiple of the column tile; poisoned C, float64 reference, the fp16 / bf16 tolerance."""
    import cupy as cp
    import cupyx.scipy.sparse as csp
    from sparse_autotune.core.problem import DTYPES, host_values, storage
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    from sparse_autotune.device.verify import check, reference
    rng = np.random.default_rng(5)
    a = sps.random(300, 700, density=0.05, format="lil", random_state=3)
    a[10:40, :] = 0  # empty rows
    for r, n in ((50, 1), (51, 2), (52, 3), (53, 5)):
        a[r, :] = 0
        a[r, rng.choice(700, n, replace=False)] = 1.0
    a[60, :] = 1.0  # a dense row: split over a block
    a = sps.csr_matrix(a)
    a.data = host_values(rng.standard_normal(a.nnz).astype(np.float32) + 0.25, DTYPES[dtype])
    dev = DeviceCSR(a, dtype)
    a64 = csp.csr_matrix(a.astype(np.float64))
    checked = 0
    for n in (8, 40, 264):
        for cfg in H2:
            if _csr().check(cfg, space.problem_env(300, 700, n, a.nnz, dtype)) is not None:
                continue
            k = build_kernel(dev, FAMILY, cfg, dtype)
            bh = rng.standard_normal((700, n)).astype(np.float32)
            b = cp.asarray(storage(host_values(bh, DTYPES[dtype]), dtype))
            c = cp.empty((300, n), dtype=b.dtype)
            err = check(lambda: k(b, c), c, reference(a64, b), dtype)
            assert err <= (2e-3 if dtype == "fp16" else 1e-2), (n, cfg, err)
            checked += 1
    assert checked >= 6
