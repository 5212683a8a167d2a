"""csr_btile (B's K-stages through shared memory, per-stage 8/16-bit column offsets): the stage layout, shared memory,
launch, adaptation to N."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import fake_kernel, launch_signature_test
from sparse_autotune.core import space
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix

FAMILY = "csr_btile"


test_launch_matches_the_kernel_signature = launch_signature_test(FAMILY)


@pytest.mark.parametrize("kc", [16, 64, 256, 512])
def test_stage_layout_rebuilds_a_row_by_row(kc):
    """stage_ptr[r, s] .. stage_ptr[r, s + 1] are row r's nonzeros with columns in stage s, and lcol + s * kc gives
    their columns back (8-bit offsets up to kc = 256)."""
    rng = np.random.default_rng(kc)
    m, k = 37, 1000  # K not a multiple of kc
    dense = (rng.random((m, k)) < 0.05) * rng.standard_normal((m, k))
    dense[[0, 5]] = 0.0  # empty rows
    dense[9] = rng.standard_normal(k)  # a full row
    a = sps.csr_matrix(dense)
    stage_ptr, lcol, n_st = get_family(FAMILY).host.stage_layout(a, kc)
    assert n_st == -(-k // kc) and stage_ptr.shape == (m * (n_st + 1),)
    assert lcol.dtype == (np.uint8 if kc <= 256 else np.uint16)
    sp_ = stage_ptr.reshape(m, n_st + 1)
    for r in range(m):
        assert sp_[r, 0] == a.indptr[r] and sp_[r, -1] == a.indptr[r + 1]
        for s in range(n_st):
            cols = lcol[sp_[r, s]:sp_[r, s + 1]].astype(np.int64) + s * kc
            assert list(cols) == list(a.indices[sp_[r, s]:sp_[r, s + 1]])
            assert ((cols >= s * kc) & (cols < (s + 1) * kc)).all()


def test_shared_memory_is_the_stages_of_b():
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    sp = get_family(FAMILY).space
    for dtype, es in (("fp32", 4), ("fp16", 2), ("bf16", 2)):
        cfg = next(iter(sp.feasible(dtype, space.problem_env(64, 256, 128, a.nnz, dtype))))
        kern = fake_kernel(FAMILY, cfg, dtype, a)
        assert kern.smem_bytes() == cfg["stages"] * cfg["kc"] * cfg["lanes_per_row"] * cfg["vec"] * es > 0


def test_a_vector_width_n_does_not_divide_is_lowered():
    fam = get_family(FAMILY)
    env = space.problem_env(512, 2048, 256, 100000, "fp32")
    cfg = next(c for c in fam.space.feasible("fp32", env) if c["vec"] == 4)
    got = fam.adapt(cfg, "fp32", space.problem_env(512, 2048, 250, 100000, "fp32"))
    assert got is None or (got["vec"] < 4 and 250 % got["vec"] == 0)
    assert fam.adapt(cfg, "fp32", env) == cfg
