"""The device probes under bench/ that are not a family (run on the GPU by hand): their kernels at least assemble."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sparse_autotune.device import compile as sat_compile

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tf32_probe_kernels_assemble_for_sm90a_without_spills():
    """bench/tf32_probe.py (issue 18's tf32 rates): every kernel (mma / mma.sp / wgmma / wgmma.sp in tf32 and f16, the
    kn loop) assembles for sm_90a with no spill (a spill would time local memory, not the MMA)."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    probe = _load("tf32_probe")
    res = probe.compile_check()
    assert set(res) == set(probe.sources()) and len(res) == 9
    for name, r in res.items():
        assert r["ok"], (name, r["log"])
        assert r["spill_bytes"] == 0 and r["registers"] > 0, (name, r)


def test_tf32_probe_sources_name_each_instruction_once_per_kernel():
    """Each probe kernel is the instruction its name says (the table reads the rates by these names)."""
    probe = _load("tf32_probe")
    src = probe.sources()
    want = {"mma m16n8k8 tf32": "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
            "mma.sp m16n8k16 tf32": "mma.sp.sync.aligned.m16n8k16.row.col.f32.tf32.tf32.f32",
            "wgmma m64n256k8 tf32": "wgmma.mma_async.sync.aligned.m64n256k8.f32.tf32.tf32",
            "wgmma.sp m64n256k16 tf32": "wgmma.mma_async.sp.sync.aligned.m64n256k16.f32.tf32.tf32",
            "wgmma.sp m64n256k32 f16": "wgmma.mma_async.sp.sync.aligned.m64n256k32.f32.f16.f16",
            "kn loop mma.sp m16n8k16 tf32": "mma.sp.sync.aligned.m16n8k16.row.col.f32.tf32.tf32.f32"}
    for name, instr in want.items():
        assert instr in src[name], name
        others = [i for n, i in want.items() if i != instr]
        assert not any(o in src[name] for o in others), name
    assert "ld.shared.b32" in src["kn loop mma.sp m16n8k16 tf32"]
