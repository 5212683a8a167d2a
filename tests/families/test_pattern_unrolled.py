"""pattern_unrolled (the pattern compiled in, SparseRT-class): the source encodes the pattern, the nnz limit, launch."""
from __future__ import annotations

import numpy as np

from fakes import launch_signature_test
from sparse_autotune.core import space
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix
from sparse_autotune.core.render import render

FAMILY = "pattern_unrolled"


def host():
    """The family's host side (variants/pattern_unrolled.py), loaded by the registry."""
    return get_family(FAMILY).host


test_launch_matches_the_kernel_signature = launch_signature_test(FAMILY)


SMALL = random_matrix(64, 256, 0.05, "uniform", seed=0)


def _rnd(sp, cfg, dtype):
    return render(sp, cfg, dtype, host().context(SMALL, cfg))


# ---- the pattern-specialised family ---------------------------------------------------------------------

def test_pattern_source_encodes_the_pattern_and_the_values_mode():
    """Column offsets are immediates (every used column appears once per block of rows), values are FMA
    immediates in 'imm' mode and loads from the packed array in 'array' mode; the module name changes with
    the pattern, and in 'imm' mode with the values too."""
    sp = space.get_space("pattern_unrolled")
    cfg = {"rows_per_block": 4, "vec": 4, "warps": 1, "values": "imm", "row_order": "natural"}
    src = _rnd(sp, cfg, "fp32")
    n_loads = src.count("ld.global.nc.v4.f32")
    want = sum(len(set(SMALL.indices[SMALL.indptr[r0]:SMALL.indptr[min(r0 + 4, SMALL.shape[0])]]))
               for r0 in range(0, SMALL.shape[0], 4))
    assert n_loads == want  # one B load per distinct column of each block, reused by the block's rows
    assert src.count("fma.rn.f32") == 4 * SMALL.nnz
    arr = _rnd(sp, {**cfg, "values": "array"}, "fp32")
    assert arr.count("ld.global.nc.f32 %v0") == SMALL.nnz and "0f" not in arr.split("brx.idx")[1].replace("0f00000000", "")
    other = SMALL.copy()
    other.data = other.data * np.float32(2)
    imm2 = render(sp, cfg, "fp32", host().context(other, cfg))
    arr2 = render(sp, {**cfg, "values": "array"}, "fp32", host().context(other, {**cfg, "values": "array"}))
    assert imm2 != src and arr2 == arr  # values compiled in, or only the pattern


def test_pattern_family_has_an_nnz_limit():
    sp = space.get_space("pattern_unrolled")
    cfg = sp.defaults("fp32", space.problem_env(SMALL.shape[0], SMALL.shape[1], 256, SMALL.nnz, "fp32"))[0]
    why = sp.check(cfg, space.problem_env(512, 2048, 256, 104858, "fp32"))
    assert why is not None and "nonzeros" in why


