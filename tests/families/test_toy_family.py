"""A new family is four files and no edit anywhere else: a toy family written into a temporary folder is found by the
registry (add_folder, or $SPARSE_AUTOTUNE_FAMILY_PATH for the CLI), listed, suggested by the search, rendered,
compiled, launched with its own geometry and arguments, adapted by lookup, and on a GPU verified like the others."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import optuna
import pytest

from fakes import check_launch_matches_signature, fake_kernel
from sparse_autotune.core import families
from sparse_autotune.core.problem import random_matrix
from sparse_autotune.core.space import problem_env, select_spaces

TOML = '''
family = "toy_csr"
template = "toy_csr.cu.j2"
description = "one thread per element of C over a CSR row (a test family)"
rank = 5
enabled = true
dtypes = ["fp32"]
[params.threads]
values = [64, 128, 256]
[params.vec]
values = [1, 2]
[[constraints]]
expr = "N % vec == 0"
why = "each thread writes vec columns"
[[known_good]]
threads = 128
vec = 1
'''

TEMPLATE = '''// sparse-autotune family toy_csr | dtype={{ dtype }} threads={{ threads }} vec={{ vec }}
extern "C" __global__ void __launch_bounds__({{ threads }}) spmm_kernel(const int* __restrict__ row_ptr,
        const int* __restrict__ cols, const float* __restrict__ vals, const float* __restrict__ B,
        float* __restrict__ C, int M, int N) {
    const long t = (long)blockIdx.x * {{ threads }} + threadIdx.x;
    const int per_row = N / {{ vec }};
    if (t >= (long)M * per_row) return;
    const int r = (int)(t / per_row), j0 = (int)(t % per_row) * {{ vec }};
    float acc[{{ vec }}] = {};
    for (int p = row_ptr[r]; p < row_ptr[r + 1]; ++p) {
        const float v = vals[p];
        const float* b = B + (long)cols[p] * N + j0;
#pragma unroll
        for (int x = 0; x < {{ vec }}; ++x) acc[x] += v * b[x];
    }
#pragma unroll
    for (int x = 0; x < {{ vec }}; ++x) C[(long)r * N + j0 + x] = acc[x];
}
'''

HOST = '''"""toy_csr, host side: a thread per vec elements of C, the plain CSR arrays."""
import numpy as np

from sparse_autotune.core.families import adapt_params


def threads(config):
    return config["threads"]


def geometry(kernel, n):
    work = kernel.a.shape[0] * (n // kernel.config["vec"])
    return (-(-work // config_threads(kernel)),), (config_threads(kernel),)


def config_threads(kernel):
    return threads(kernel.config)


def args(kernel, n, b, c):
    return (kernel.a.row_ptr, kernel.a.cols(32), kernel.a.vals, b, c, np.int32(kernel.a.shape[0]), np.int32(n))


def adapt(space, config, dtype, env, limits):
    return adapt_params(space, config, dtype, env, limits, ("vec",))
'''


@pytest.fixture
def toy(tmp_path):
    folder = tmp_path / "families"
    folder.mkdir()
    (folder / "toy_csr.toml").write_text(TOML)
    (folder / "toy_csr.cu.j2").write_text(TEMPLATE)
    (folder / "toy_csr.py").write_text(HOST)
    families.add_folder(folder)
    yield folder
    families.remove_folder(folder)


def test_the_registry_finds_a_family_added_as_files_only(toy):
    fams = families.all_families()
    assert "toy_csr" in fams and list(fams)[0] == "toy_csr"  # rank 5: first
    assert {"csr_rowsplit", "tc_gather"} <= set(fams)  # the built-in families are still there
    fam = fams["toy_csr"]
    assert fam.folder == toy.resolve() and fam.template_path.is_file()
    assert [s.family for s in select_spaces()][0] == "toy_csr"  # tuned by default (enabled)
    assert [s.family for s in select_spaces("toy_csr")] == ["toy_csr"]


def test_the_toy_family_renders_launches_and_adapts(toy):
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    assert check_launch_matches_signature("toy_csr", "fp32", a, 128) == 6  # 3 thread counts x 2 widths
    assert check_launch_matches_signature("toy_csr", "fp16", a, 128) == 0  # fp32 only: no config
    kern = fake_kernel("toy_csr", {"threads": 64, "vec": 2}, "fp32", a)
    assert "__launch_bounds__(64)" in kern.source
    assert kern.geometry(100) == ((-(-64 * 50 // 64),), (64,))
    fam = families.get_family("toy_csr")
    assert fam.adapt({"threads": 64, "vec": 2}, "fp32", problem_env(64, 256, 99, a.nnz, "fp32")) == \
        {"threads": 64, "vec": 1}


def test_the_search_suggests_the_toy_family_synthetic_objective(toy):
    """Optuna trials over the toy space (a synthetic objective: no GPU) reach every one of its configs."""
    sp = families.get_family("toy_csr").space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        cfg = sp.suggest(trial, "fp32")
        seen.add(json.dumps(cfg, sort_keys=True))
        study.tell(trial, float(cfg["threads"] + cfg["vec"]))  # synthetic objective
    assert len(seen) == 6


def test_the_toy_family_compiles_with_nvcc(toy):
    from sparse_autotune.device import compile as sat_compile
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    report = sat_compile.nvcc_check(fake_kernel("toy_csr", {"threads": 256, "vec": 2}, "fp32", a).source, arch="sm_90")
    assert "entry function 'spmm_kernel' for 'sm_90'" in report


def test_the_cli_lists_a_family_from_the_family_path(toy):
    env = {**os.environ, families.PATH_ENV: str(toy)}
    proc = subprocess.run([sys.executable, "-m", "sparse_autotune", "spaces"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "toy_csr" in proc.stdout and "csr_rowsplit" in proc.stdout
    plain = subprocess.run([sys.executable, "-m", "sparse_autotune", "spaces"], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != families.PATH_ENV}, timeout=120)
    assert plain.returncode == 0 and "toy_csr" not in plain.stdout


def test_a_family_without_its_host_side_is_refused(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "toy_csr.toml").write_text(TOML)
    (folder / "toy_csr.cu.j2").write_text(TEMPLATE)
    families.add_folder(folder)
    try:
        with pytest.raises(ValueError, match="no host side toy_csr.py"):
            families.all_families()
    finally:
        families.remove_folder(folder)
    assert "toy_csr" not in families.all_families()


@pytest.mark.gpu
def test_the_toy_family_computes_a_at_b_on_the_gpu(toy):
    from sparse_autotune.device.gpu import cupy
    from sparse_autotune.device.kernel import DeviceCSR, build_kernel
    cp = cupy()
    a = random_matrix(300, 500, 0.05, "uniform", 3)
    a[7] = 0.0  # an empty row
    a.eliminate_zeros()
    b = np.random.default_rng(1).standard_normal((500, 98)).astype(np.float32)
    kern = build_kernel(DeviceCSR(a, "fp32"), "toy_csr", {"threads": 128, "vec": 2}, "fp32")
    c = cp.full((300, 98), cp.nan, dtype=cp.float32)
    kern(cp.asarray(b), c)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    err = np.linalg.norm(c.get() - ref) / np.linalg.norm(ref)
    assert err < 1e-5
