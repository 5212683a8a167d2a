"""Problem definition: shape/density parsing, random matrices, matrix files, problem keys."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from sparse_autotune.errors import UserError
from sparse_autotune.core.problem import (INDEX_LIMIT, SEED_MAX, Problem, check_density, check_dims, check_dtype,
                                          check_n, check_real_matrix, check_seed, check_size, device_bytes,
                                          load_matrix, nnz_of, parse_shape, random_matrix)

# ---- parse_shape ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("512x2048", (512, 2048)),
    ("512X2048", (512, 2048)),
    (" 3 x 5 ", (3, 5)),
    ("7×9", (7, 9)),
    ("1x1", (1, 1)),
    ("100000x70000", (100000, 70000)),
])
def test_parse_shape_good(text, expected):
    assert parse_shape(text) == expected


@pytest.mark.parametrize("text", ["", "512", "512x", "x2048", "0x5", "5x0", "-1x5", "5x-1", "1.5x2", "512x2048x3",
                                  "512*2048", "abc", "0x0", "512 2048", "ax b"])
def test_parse_shape_bad(text):
    with pytest.raises(UserError) as info:
        parse_shape(text)
    assert "\n" not in str(info.value)


def test_parse_shape_error_names_the_input():
    with pytest.raises(UserError, match="512by2048"):
        parse_shape("512by2048")


# ---- check_density / dtype / n --------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1.0, 0.5, 1e-6, "0.25", "1"])
def test_check_density_valid(d):
    assert check_density(d) == float(d)


@pytest.mark.parametrize("d", [0, 0.0, -0.1, 1.5, 1.0000001, float("nan"), float("inf"), float("-inf"), "abc", None,
                               "nan"])
def test_check_density_invalid(d):
    with pytest.raises(UserError):
        check_density(d)


def test_check_dtype_and_n():
    assert check_dtype("fp32") == "fp32" and check_dtype("fp16") == "fp16"
    for bad in ("fp64", "float32", "", "FP32"):
        with pytest.raises(UserError):
            check_dtype(bad)
    assert check_n(256) == 256 and check_n("64") == 64 and check_n(INDEX_LIMIT) == INDEX_LIMIT
    for bad in (0, -1, INDEX_LIMIT + 1, 10**20, 2.5, "wide", True, None):
        with pytest.raises(UserError):
            check_n(bad)


# ---- input limits: checked before anything is allocated --------------------------------------------------


def test_seed_range():
    assert check_seed(0) == 0 and check_seed(SEED_MAX) == SEED_MAX and check_seed("7") == 7
    for bad in (-1, SEED_MAX + 1, 1.5, "x", None):
        with pytest.raises(UserError, match="seed"):
            check_seed(bad)
    with pytest.raises(UserError, match="seed"):
        Problem.random(8, 8, 8, 0.5, seed=-1)  # a UserError, not numpy's ValueError


def test_dims_and_shape_limits():
    assert check_dims(1, INDEX_LIMIT, 5) == (1, INDEX_LIMIT, 5)
    for bad in ((0, 5), (-1, 5), (5, INDEX_LIMIT + 1), (5.5, 5)):
        with pytest.raises(UserError):
            check_dims(*bad)
    with pytest.raises(UserError, match="at most"):
        parse_shape(f"{INDEX_LIMIT + 1}x5")


def test_size_check_names_the_bytes_and_the_gpu_memory():
    with pytest.raises(UserError) as info:  # the 1e9 x 1e9 at 10 %: refused, never allocated
        check_size(10**9, 10**9, 256, nnz_of(10**9, 10**9, 0.1), "fp32")
    msg = str(info.value)
    assert "too large" in msg and "100000000000000000 nonzeros" in msg and "EiB" in msg and "\n" not in msg
    with pytest.raises(UserError, match="B .K x N"):
        check_size(64, 100000, 100000, 1000, "fp32")
    need = device_bytes(30000, 30000, 256, 450_000_000, "fp32")
    assert 10e9 < need < 30e9  # A (CSR and copies) and its dense copy dominate
    with pytest.raises(UserError) as info:
        check_size(30000, 30000, 256, 450_000_000, "fp32", gpu_memory=8 * 2**30, gpu_name="NVIDIA T4")
    assert "NVIDIA T4 has 8.0 GiB" in str(info.value) and "GiB of GPU memory" in str(info.value)
    assert check_size(30000, 30000, 256, 450_000_000, "fp32", gpu_memory=80 * 2**30) == need
    with pytest.raises(UserError, match="no nonzero"):
        nnz_of(64, 64, 1e-9)


def test_size_check_host_memory(monkeypatch):
    import sparse_autotune.core.problem as pr
    monkeypatch.setattr(pr, "_host_available", lambda: 2**30)
    with pytest.raises(UserError, match="host memory"):
        check_size(20000, 20000, 256, 200_000_000, "fp32", build=True)
    with pytest.raises(UserError, match="host memory"):
        Problem.random(20000, 20000, 256, 0.5)  # refused before random_matrix runs
    assert check_size(20000, 20000, 256, 200_000_000, "fp32") > 0  # nothing is built: no host check


@pytest.mark.parametrize("a,words", [
    (sp.csr_matrix(np.eye(4, dtype=np.complex64)), ["complex"]),
    (np.array([["a", "b"], ["c", "d"]]), ["not real numbers"]),
    (np.full((3, 3), np.nan, dtype=np.float32), ["NaN"]),
    (sp.csr_matrix((4, 4), dtype=np.float32), ["all zeros"]),
    (np.zeros((0, 3), dtype=np.float32), ["empty"]),
    (np.ones((4, 4), dtype=np.float32), ["100 %", "50 %"]),
    (np.eye(3) * 1e300, ["float32"]),
])
def test_real_matrix_checks(a, words):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one line, no numpy warning on the way
        with pytest.raises(UserError) as info:
            check_real_matrix(a, "layer x")
    for w in words:
        assert w in str(info.value)


def test_real_matrix_fp16_range_and_density_limit():
    check_real_matrix(np.eye(4) * 60000, "m", "fp16", dense_limit=None)
    with pytest.raises(UserError, match="fp16"):
        check_real_matrix(np.eye(4) * 70000, "m", "fp16", dense_limit=None)
    check_real_matrix(np.ones((4, 4)), "m", dense_limit=None)  # the runtime and pruned layers: no density limit


# ---- random_matrix --------------------------------------------------------------------------------------

SHAPES = [(512, 2048), (7, 13), (100, 3), (1, 1000), (333, 777)]
DENSITIES = [0.001, 0.05, 0.1, 0.37, 0.9, 0.99]


@pytest.mark.parametrize("pattern", ["uniform", "powerlaw"])
@pytest.mark.parametrize("m,k", SHAPES)
def test_random_matrix_nnz_is_exact(pattern, m, k):
    for d in DENSITIES:
        a = random_matrix(m, k, d, pattern, seed=1)
        assert a.shape == (m, k)
        assert a.nnz == int(round(d * m * k)), (m, k, d, pattern)
        assert a.has_canonical_format  # sorted indices, no duplicates
        assert np.all(np.diff(a.indptr) >= 0)
        assert np.all(np.diff(a.indptr) <= k)
        assert np.all(a.data != 0)
        assert np.all(np.isfinite(a.data))


@pytest.mark.parametrize("pattern", ["uniform", "powerlaw"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_random_matrix_values_never_zero(pattern, dtype):
    for seed in range(5):
        a = random_matrix(300, 400, 0.2, pattern, seed=seed, dtype=dtype)
        assert a.nnz == round(0.2 * 300 * 400)
        assert np.count_nonzero(a.data == 0) == 0
        assert a.toarray().astype(bool).sum() == a.nnz  # the stored entries are the nonzeros


def test_random_matrix_fp16_values_never_zero_after_rounding():
    zeros = 0
    for seed in (66,):
        a = random_matrix(1024, 1024, 1.0, "uniform", seed=seed, dtype=np.float16)
        zeros += np.count_nonzero(a.data == 0)
        assert np.array_equal(a.data, a.data.astype(np.float16).astype(a.data.dtype))  # values are fp16-exact
    assert zeros == 0


def test_random_matrix_fp16_values_are_fp16_representable():
    a = random_matrix(64, 64, 0.5, "uniform", seed=0, dtype=np.float16)
    assert np.array_equal(np.asarray(a.data, dtype=np.float64),
                          np.asarray(a.data, dtype=np.float16).astype(np.float64))


def test_random_matrix_is_seeded():
    for pattern in ("uniform", "powerlaw"):
        a = random_matrix(64, 128, 0.1, pattern, seed=3)
        b = random_matrix(64, 128, 0.1, pattern, seed=3)
        c = random_matrix(64, 128, 0.1, pattern, seed=4)
        assert (a != b).nnz == 0
        assert (a != c).nnz > 0


def test_powerlaw_rows_are_more_skewed_than_uniform():
    m, k, d = 512, 2048, 0.1
    lu = np.diff(random_matrix(m, k, d, "uniform", seed=0).indptr)
    lp = np.diff(random_matrix(m, k, d, "powerlaw", seed=0).indptr)
    assert lu.sum() == lp.sum()
    # uniform rows are binomial(K, d): mean ~205, sd ~14; a power law has a few rows several times longer
    assert lp.max() > 2 * lu.max()
    assert lp.std() > 5 * lu.std()
    assert np.median(lp) < np.mean(lp)  # most rows are shorter than average


def test_powerlaw_caps_rows_at_k():
    a = random_matrix(50, 40, 0.8, "powerlaw", seed=0)
    assert a.nnz == round(0.8 * 50 * 40)
    assert np.diff(a.indptr).max() <= 40


@pytest.mark.parametrize("pattern", ["uniform", "powerlaw"])
def test_density_one_is_full(pattern):
    a = random_matrix(37, 53, 1.0, pattern, seed=0)
    assert a.nnz == 37 * 53
    assert np.all(a.toarray() != 0)


def test_unknown_pattern():
    with pytest.raises(UserError, match="pattern"):
        random_matrix(8, 8, 0.5, "diagonal")


# ---- load_matrix ----------------------------------------------------------------------------------------


def _sample_matrix():
    a = sp.random_array((23, 41), density=0.2, rng=np.random.default_rng(5), format="csr")
    a.data = np.random.default_rng(6).standard_normal(a.nnz)
    return sp.csr_matrix(a)


def test_load_npz_round_trip(tmp_path):
    a = _sample_matrix()
    f = tmp_path / "a.npz"
    sp.save_npz(f, a)
    b = load_matrix(f)
    assert sp.issparse(b) and b.format == "csr"
    assert b.shape == a.shape and b.nnz == a.nnz
    assert np.array_equal(b.toarray(), a.toarray())
    assert b.has_canonical_format


def test_load_npz_coo_and_str_path(tmp_path):
    a = _sample_matrix()
    f = tmp_path / "coo.npz"
    sp.save_npz(f, a.tocoo())
    b = load_matrix(str(f))
    assert b.format == "csr"
    assert np.array_equal(b.toarray(), a.toarray())


def test_load_mtx_round_trip(tmp_path):
    a = _sample_matrix()
    f = tmp_path / "a.mtx"
    scipy.io.mmwrite(f, a)
    b = load_matrix(f)
    assert b.format == "csr" and b.shape == a.shape and b.nnz == a.nnz
    np.testing.assert_allclose(b.toarray(), a.toarray(), rtol=1e-12)


def test_load_mtx_sums_duplicates(tmp_path):
    f = tmp_path / "dup.mtx"
    f.write_text("%%MatrixMarket matrix coordinate real general\n3 4 3\n1 2 1.5\n1 2 2.5\n3 4 -1.0\n")
    b = load_matrix(f)
    assert b.nnz == 2 and b[0, 1] == 4.0 and b[2, 3] == -1.0


@pytest.mark.parametrize("name,content", [
    ("garbage.npz", b"this is not a zip archive\n"),
    ("garbage.mtx", b"hello world\n1 2 3\n"),
    ("empty.npz", b""),
    ("dense.npz", None),  # np.savez of a dense array: a zip, but not a scipy sparse matrix
])
def test_load_garbage_names_the_file(tmp_path, name, content):
    f = tmp_path / name
    if content is None:
        np.savez(f, x=np.ones((3, 3)))
    else:
        f.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_matrix(f)
    msg = str(info.value)
    assert name in msg
    assert "\n" not in msg


def test_load_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match="nope.npz"):
        load_matrix(tmp_path / "nope.npz")
    d = tmp_path / "dir.npz"
    d.mkdir()
    with pytest.raises(UserError, match="dir.npz"):
        load_matrix(d)


def test_load_unknown_suffix(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("1 2 3\n")
    with pytest.raises(UserError, match="a.txt"):
        load_matrix(f)


def test_load_empty_shape_is_rejected(tmp_path):
    f = tmp_path / "zero.npz"
    sp.save_npz(f, sp.csr_matrix((0, 5)))
    with pytest.raises(UserError, match="zero.npz"):
        load_matrix(f)


# ---- Problem --------------------------------------------------------------------------------------------


def test_problem_key_is_stable_and_specific():
    p1 = Problem.random(64, 128, 32, 0.1, "fp32", "uniform", seed=0)
    p2 = Problem.random(64, 128, 32, 0.1, "fp32", "uniform", seed=0)
    assert p1.key() == p2.key()
    assert p1.fingerprint() == p2.fingerprint()
    for part in ("64", "128", "32", "fp32", "uniform"):
        assert part in p1.key()
    others = [Problem.random(64, 128, 64, 0.1), Problem.random(64, 128, 32, 0.2), Problem.random(64, 128, 32, 0.1, "fp16"),
              Problem.random(64, 128, 32, 0.1, pattern="powerlaw"), Problem.random(65, 128, 32, 0.1),
              Problem.random(64, 129, 32, 0.1)]
    keys = {p1.key()} | {p.key() for p in others}
    assert len(keys) == len(others) + 1


def test_problem_fingerprint_changes_with_a_value():
    p = Problem.random(64, 128, 32, 0.1, seed=0)
    fp = p.fingerprint()
    q = Problem.random(64, 128, 32, 0.1, seed=0)
    q.matrix = q.matrix.copy()
    q.matrix.data[3] += 1.0
    assert q.fingerprint() != fp
    r = Problem.random(64, 128, 32, 0.1, seed=0)
    r.matrix = r.matrix.copy()
    r.matrix.data = r.matrix.data[::-1].copy()  # the same values at other positions
    assert r.fingerprint() != fp
    assert Problem.random(64, 128, 32, 0.1, seed=1).fingerprint() != fp
    assert p.fingerprint() == fp  # unchanged by the others


def test_problem_random_validates():
    with pytest.raises(UserError):
        Problem.random(8, 8, 8, 0.0)
    with pytest.raises(UserError):
        Problem.random(8, 8, 8, 0.5, dtype="fp64")
    with pytest.raises(UserError):
        Problem.random(8, 8, 0, 0.5)


def test_problem_from_matrix_density_and_counts():
    a = _sample_matrix()
    p = Problem.from_matrix(a, 16, "fp32")
    assert (p.m, p.k, p.n) == a.shape + (16,)
    assert p.nnz == a.nnz
    assert math.isclose(p.density, a.nnz / (a.shape[0] * a.shape[1]), abs_tol=1e-6)
    assert p.flops == 2 * a.nnz * 16
    assert p.pattern == "matrix"
    assert np.allclose(p.matrix.toarray(), a.toarray(), rtol=1e-6)
