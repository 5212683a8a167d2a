"""tc_gather (tensor cores over row-block column unions): the layout in mma fragment order, loads of B for any N, launch."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sps

from fakes import launch_signature_test
from sparse_autotune.core.families import get_family

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
