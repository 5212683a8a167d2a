"""The device probes under bench/ that are not a family (run on the GPU by hand): their kernels at least assemble, and
bench/tf32_nk.py refuses bad arguments before it needs a GPU."""
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
    kn loop, the layout checks' kernels) assembles for sm_90a with no spill (a spill would time local memory, not the MMA)."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    probe = _load("tf32_probe")
    res = probe.compile_check()
    assert set(res) == set(probe.sources()) | {"layout", "wgmma layout"} and len(res) == 11
    for name, r in res.items():
        assert r["ok"], (name, r["log"])
        assert r["spill_bytes"] == 0 and r["registers"] > 0, (name, r)


def test_union_probe_kernels_assemble_without_spills_and_its_orders_walk_one_subset():
    """bench/union_probe.py (the union route's MMA rate, session 63): each n's kernel and the layout check's assemble
    for sm_90a with no spill, one register-A wgmma a k16 step; `random` and `banked` walk the same stage rows (banked a reordering with fewer
    ldmatrix wavefronts a phase under the 128-byte swizzle), `contig` is conflict-free."""
    probe = _load("union_probe")
    orders = probe.index_orders()
    assert sorted(orders["banked"]) == sorted(orders["random"]) and sorted(orders["contig"]) == list(range(probe.KS))
    assert probe.conflicts(orders["contig"]) == 1.0
    assert probe.conflicts(orders["banked"]) < probe.conflicts(orders["random"])
    for nn in (16, 32, 64, 128):
        assert probe.source(nn).count(f"wgmma.mma_async.sync.aligned.m64n{nn}k16") == 1
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    res = probe.compile_check()
    assert set(res) == {16, 32, 64, 128, 0}
    for nn, r in res.items():
        assert r["ok"], (nn, r["log"])
        assert r["spill_bytes"] == 0 and r["registers"] > 0, (nn, r)


def test_sp24_wg_probe_kernels_assemble_without_spills_and_its_stages_fit_one_block_an_sm():
    """bench/sp24_wg_probe.py (tc_sp24's loop with its copies at two or four consumer warpgroups, session 64): every
    config's stages fit an SM's shared memory, its B stages start 1024-aligned (the 128-byte swizzle), the bulk copies'
    sizes are multiples of 16, the port model ranks four warpgroups above two and acopy 0 above 1, and each kernel
    assembles for sm_90a with no spill (a spill would time local memory, not the port) and one wgmma.sp a k-step."""
    probe = _load("sp24_wg_probe")
    for wg, bn, kc, st, acopy in probe.CONFIGS:
        b, a = probe._bytes(wg, bn, kc, acopy)
        assert probe.smem_bytes(wg, bn, kc, st, acopy) <= 227 * 1024 and b % 1024 == 0 and a % 16 == 0
        assert probe.source(wg, bn, kc, st, acopy).count(f"wgmma.mma_async.sp.sync.aligned.m64n{bn}k32") == 1
    assert probe.port_model(4, 128, 1) < probe.port_model(2, 128, 1) < probe.port_model(1, 128, 1)
    assert probe.port_model(2, 128, 0) < probe.port_model(2, 128, 1)
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    res = probe.compile_check()
    assert set(res) == {probe.name(c) for c in probe.CONFIGS}
    for name, r in res.items():
        assert r["ok"], (name, r["log"])
        assert r["spill_bytes"] == 0 and r["registers"] > 0, (name, r)


def test_sp24_wg_probe_producer_warpgroup_gives_four_warpgroups_at_kc2_their_registers_without_a_spill():
    """pwg 1 (session 65): a producer warpgroup that lowers its registers to 24 with setmaxnreg, the consumers raising
    theirs only as far as the registers it gives back allow (setmaxnreg.inc waits for the block's pool: session 66's
    120 at four warpgroups asked 12288 of the 9216 given back and hung on an H100; two warpgroups at 240, asking exactly
    what was given back, ran). Four warpgroups at kc 2 spill without it (five warps on one sub-partition leave 96
    registers) and assemble without a spill with it."""
    probe = _load("sp24_wg_probe")
    assert probe.threads(4, 1) == 640 and probe.threads(4, 0) == 544
    for wg in (2, 4):  # (one consumer warpgroup starts above 240 registers: pwg is for two or four)
        launch = 65536 // probe.threads(wg, 1) // 8 * 8  # what ptxas gives each thread under the launch bound
        given, asked = 128 * (launch - 24), 128 * wg * (probe.creg(wg) - launch)
        assert probe.creg(wg) % 8 == 0 and probe.creg(wg) <= 240 and 0 <= asked <= given, (wg, launch, probe.creg(wg))
    assert probe.creg(4) == 112 and probe.creg(2) == 240
    src = probe.source(4, 128, 2, 6, 1, 1)
    assert "setmaxnreg.inc.sync.aligned.u32 112;" in src and "setmaxnreg.dec.sync.aligned.u32 24;" in src
    assert "#define PWG 0" in probe.source(4, 128, 2, 6, 1) and "#define PWG 1" in src
    assert probe.name((4, 128, 2, 6, 1, 1)) == "wg4 bn128 kc2 st6 pwg" and probe.name((4, 128, 2, 6, 1)) == "wg4 bn128 kc2 st6"
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    report = _load("tf32_probe").nvcc_report
    spilled, fits = report(probe.source(4, 128, 2, 6, 1)), report(src)
    assert spilled["ok"] and fits["ok"], (spilled["log"], fits["log"])
    assert spilled["spill_bytes"] > 0 and fits["spill_bytes"] == 0, (spilled, fits)


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


def test_tf32_probe_layout_packing_is_lossless_under_every_hypothesis():
    """The layout check's host packing (bench/tf32_probe.py pack_sp): under every A / metadata map and both selectors the
    registers say the 1:2 matrix they were packed from (unpack_sp), every A value lands in one register, every B value
    of the 16 x 8 in one register a lane, and a metadata nibble is only ever 0b0100 or 0b1110; c_unpack places each of
    D's 128 floats once."""
    import numpy as np
    probe = _load("tf32_probe")
    rng = np.random.default_rng(5)
    for _ in range(3):
        a, b = probe.random_sp(rng)
        assert ((a[:, 0::2] != 0) & (a[:, 1::2] != 0)).sum() == 0 and (a != 0).sum() > 100
        for am in probe.A_MAPS.values():
            for bn, bm in probe.B_MAPS.items():
                for mm in probe.M_MAPS.values():
                    for sel in (0, 1):
                        regs = probe.pack_sp(a, b, am, bm, mm, sel)
                        assert np.array_equal(probe.unpack_sp(regs, am, mm, sel), a)
                        nibs = {(int(w) >> (4 * i)) & 0xF for w in regs[:, 8] for i in range(8)}
                        assert nibs <= {0x4, 0xE}
                        got = sorted(regs[:, 4:8].view(np.float32).ravel().tolist())
                        assert got == sorted(b.ravel().tolist()), bn
    d = np.arange(128, dtype=np.float32).reshape(32, 4)
    assert sorted(probe.c_unpack(d).ravel().tolist()) == list(range(128))


def test_tf32_probe_discovery_reads_back_the_maps_of_an_emulated_mma_sp():
    """The layout check's discovery (read_discovery) on D from a CPU emulation of mma.sp m16n8k16 tf32 under the A1 / B1
    / M1 maps (selector 0: the metadata of lanes 4 g and 4 g + 1) recovers those maps: each A register's (row, even
    column) and each nibble's one (row, pair); a flip in a lane the selector does not read moves nothing."""
    import numpy as np
    probe = _load("tf32_probe")
    am, bm, mm = probe.A_MAPS["A1"], probe.B_MAPS["B1"], probe.M_MAPS["M1"]
    regs = probe.discover_regs()
    d = np.zeros((regs.shape[0], 32, 4), dtype=np.float32)
    for blk in range(regs.shape[0]):
        a = probe.unpack_sp(regs[blk], am, mm, sel=0)
        b = np.zeros((16, 8), dtype=np.float32)
        for lane in range(32):
            for i in range(4):
                k, n = bm(lane >> 2, lane & 3, i)
                b[k, n] = regs[blk, lane, 4 + i:5 + i].view(np.float32)[0]
        c = a @ b
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            d[blk, lane] = [c[g, 2 * t], c[g, 2 * t + 1], c[g + 8, 2 * t], c[g + 8, 2 * t + 1]]
    got = probe.read_discovery(d)
    assert got["baseline_nonzero"] == 128
    for lane in range(32):
        for j in range(4):
            r, c = am(lane >> 2, lane & 3, j)
            assert got["a_at"][f"{lane}.{j}"] == [r, 2 * c]
    want = {f"{4 * g + q}.{i}": [list(mm(g, q, i))] for g in range(8) for q in range(2) for i in range(8)}
    assert got["nibbles"] == want


def test_tf32_probe_wgmma_packing_is_four_warps_of_the_mma_sp_packing():
    """wg_pack (the wgmma.sp m64n64k16 tf32 check): warp w's 32 threads carry rows 16 w ... 16 w + 15 of the 64 x 16
    matrix exactly as pack_sp's lanes would (unpack_sp gives them back), for each map and selector; the dense
    control's packing puts every value of its 64 x 8 in one register."""
    import numpy as np
    probe = _load("tf32_probe")
    rng = np.random.default_rng(7)
    a = np.concatenate([probe.random_sp(rng)[0] for _ in range(4)], axis=0)
    for am in probe.A_MAPS.values():
        for mm in probe.M_MAPS.values():
            for sel in (0, 1):
                words = probe.wg_pack(a, am, mm, sel)
                for w in range(4):
                    regs = np.zeros((32, 9), dtype=np.uint32)
                    regs[:, :4] = words[32 * w:32 * w + 32, :4]
                    regs[:, 8] = words[32 * w:32 * w + 32, 4]
                    assert np.array_equal(probe.unpack_sp(regs, am, mm, sel), a[16 * w:16 * w + 16])
    d8 = (rng.integers(-4, 5, size=(64, 8)) + np.arange(64 * 8).reshape(64, 8) * 16).astype(np.float32)
    got = sorted(probe.wg_pack_dense(d8)[:, :4].view(np.float32).ravel().tolist())
    assert got == sorted(d8.ravel().tolist())


def test_tf32_probe_h100_discoveries_are_the_a1_m1_maps_the_packers_use():
    """The committed H100 run (bench/results/session54/tf32-probe-2-h100.json): the mma.sp and the wgmma.sp discoveries
    at both selectors are what discovery_maps reads from a CPU emulation of the A1 / M1 maps (pack_sp / unpack_sp's,
    the ones a tf32 family would pack by), and only A1 / B1 / M1 reproduced A @ B."""
    import json

    import numpy as np
    probe = _load("tf32_probe")
    rep = json.loads((ROOT / "bench" / "results" / "session54" / "tf32-probe-2-h100.json").read_text())
    am, mm = probe.A_MAPS["A1"], probe.M_MAPS["M1"]
    assert [k for k, v in rep["layout"]["sparse"].items() if v["ok"]] == ["A1 B1 M1 sel 0", "A1 B1 M1 sel 1"]
    assert [k for k, v in rep["wgmma_layout"]["sparse"].items() if v["ok"]] == ["A1 M1 sel 0", "A1 M1 sel 1"]
    for sel in (0, 1):
        words = np.full((1 + 128 * 8, 128, 5), 0x44444444, dtype=np.uint32)
        words[:, :, :4] = (np.arange(512, dtype=np.float32) + 1).reshape(128, 4).view(np.uint32)
        for tw in range(128):
            for i in range(8):
                words[1 + 8 * tw + i, tw, 4] = (0x44444444 & ~(0xF << (4 * i))) | (0xE << (4 * i))
        full = []
        for blk in words:
            parts = []
            for w in range(4):
                regs = np.zeros((32, 9), dtype=np.uint32)
                regs[:, :4], regs[:, 8] = blk[32 * w:32 * w + 32, :4], blk[32 * w:32 * w + 32, 4]
                parts.append(probe.unpack_sp(regs, am, mm, sel))
            full.append(np.concatenate(parts))
        want = probe.discovery_maps(np.stack(full))
        got = rep["wgmma_layout"]["discover"][sel]
        assert got["sel"] == sel and got["a_at"] == want["a_at"] and got["nibbles"] == want["nibbles"]
        # the warp-level one: warp 0's rows, lanes as threads 0..31
        mma = rep["layout"]["discover"][sel]
        assert mma["a_at"] == {k: v for k, v in want["a_at"].items() if int(k.split(".")[0]) < 32}
        assert mma["nibbles"] == {k: v for k, v in want["nibbles"].items() if int(k.split(".")[0]) < 32}


@pytest.mark.parametrize("args,says", [
    (["--cases", "foo"], "--cases 'foo'"), (["--densities", "0,0.1"], "outside (0, 1]"),
    (["--densities", "x"], "--densities 'x'"), (["--shapes", "3072x768"], "--shapes '3072x768'"),
    (["--configs", "nkr"], "--configs 'nkr'"), (["--skip", "/nonexistent/tf32.json"], "not a tf32_nk.py output")])
def test_tf32_nk_bench_refuses_bad_input_in_one_line_before_the_gpu(args, says, capsys, tmp_path):
    """bench/tf32_nk.py: bad arguments are one line on stderr and exit status 2, checked before any GPU work (this
    machine has none: reaching it would fail differently)."""
    from sparse_autotune.errors import exit_status
    bench = _load("tf32_nk")
    assert exit_status("tf32_nk.py", lambda: bench.main(args)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("tf32_nk.py: error:") and says in err, err
    bad = tmp_path / "skip.json"
    bad.write_text('{"cases": [{"M": 1}]}')
    assert exit_status("tf32_nk.py", lambda: bench.main(["--skip", str(bad)])) == 2
    assert "cases without set" in capsys.readouterr().err
