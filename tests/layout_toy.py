"""A toy kernel family that declares both operand layouts (`layouts = ["kn", "nk"]`), for the layout tests on the CPU
(tests/test_layout.py) and the GPU (tests/test_layout_gpu.py): one thread per output element over a CSR row, fp32;
rendered for nk it reads x (N x K) and writes y (N x M) with the bias, which follows C in its parameters (C2, C3)."""
from __future__ import annotations

from pathlib import Path

import pytest

from sparse_autotune.core import families

NAME = "toy_nk"

TOML = '''
family = "toy_nk"
template = "toy_nk.cu.j2"
description = "one thread per element of the output over a CSR row, both layouts (a test family)"
rank = 7
enabled = false
dtypes = ["fp32"]
layouts = ["kn", "nk"]
[params.threads]
values = [64, 128]
[[known_good]]
threads = 128
'''

TEMPLATE = '''// sparse-autotune family toy_nk | dtype={{ dtype }} threads={{ threads }} layout={{ layout }}
extern "C" __global__ void __launch_bounds__({{ threads }}) spmm_kernel(const int* __restrict__ row_ptr,
        const int* __restrict__ cols, const float* __restrict__ vals, const float* __restrict__ B,
        float* __restrict__ C,{% if layout == 'nk' %} const float* __restrict__ bias,{% endif %} int M, int N, int K) {
    const long t = (long)blockIdx.x * {{ threads }} + threadIdx.x;
    if (t >= (long)M * N) return;
{%- if layout == 'nk' %}
    const int r = (int)(t % M), j = (int)(t / M);  // y[j][r] = sum_p A[r][c_p] x[j][c_p] + bias[r]
    float acc = bias != nullptr ? bias[r] : 0.0f;
    for (int p = row_ptr[r]; p < row_ptr[r + 1]; ++p) acc += vals[p] * B[(long)j * K + cols[p]];
    C[(long)j * M + r] = acc;
{%- else %}
    const int r = (int)(t / N), j = (int)(t % N);  // C[r][j] = sum_p A[r][c_p] B[c_p][j]
    float acc = 0.0f;
    for (int p = row_ptr[r]; p < row_ptr[r + 1]; ++p) acc += vals[p] * B[(long)cols[p] * N + j];
    C[(long)r * N + j] = acc;
{%- endif %}
}
'''

HOST = '''"""toy_nk, host side: a thread per output element, the plain CSR arrays; nk: the bias right after c."""
import numpy as np


def threads(config):
    return config["threads"]


def geometry(kernel, n):
    work = kernel.a.shape[0] * n
    return (max(1, -(-work // kernel.config["threads"])),), (kernel.config["threads"],)


def args(kernel, n, b, c, bias=None):
    m, k = kernel.a.shape
    head = (kernel.a.row_ptr, kernel.a.cols(32), kernel.a.vals, b, c)
    tail = (np.int32(m), np.int32(n), np.int32(k))
    return head + ((bias,) if kernel.layout == "nk" else ()) + tail
'''


def write(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{NAME}.toml").write_text(TOML)
    (folder / f"{NAME}.cu.j2").write_text(TEMPLATE)
    (folder / f"{NAME}.py").write_text(HOST)
    return folder


@pytest.fixture
def toy_nk(tmp_path):
    """The toy family registered (core.families.add_folder) for the test, removed after it."""
    folder = write(tmp_path / "toy_nk_family")
    families.add_folder(folder)
    yield folder
    families.remove_folder(folder)
