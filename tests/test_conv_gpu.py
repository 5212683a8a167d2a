"""conv3x3 on the GPU (issue 19): each family against the float64 reference on edge cases (empty output channels, one
dense filter, channels not multiples of the tile, batch 1, stride 2, both layouts, fp32 / fp16 / bf16), cuDNN's path,
the runtime (conv3x3 and SparseConv2d against F.conv2d), and the tuner end to end with a few trials."""
from __future__ import annotations

import numpy as np
import pytest

from sparse_autotune.core.problem import TOLERANCE, storage
from sparse_autotune.ops import conv as C

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    from sparse_autotune.device.gpu import gpu_available
    if not gpu_available():
        pytest.skip("no GPU")
    from sparse_autotune.device.gpu import cupy
    return cupy()


def _weight(cout, cin, density, seed=0, empty=(), dense=()):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) / np.sqrt(max(1.0, density * cin * 9))
    w[rng.random(w.shape) >= density] = 0
    for co in empty:
        w[co] = 0
    for co in dense:
        w[co] = rng.standard_normal((cin, 3, 3)).astype(np.float32) / np.sqrt(cin * 9)
    return w


def _check(cp, family, cfg, dtype, g, w):
    from sparse_autotune.device.verify import poison, rel_error
    wc = C.compress_weight(w, dtype)
    kern = C.build_conv(wc, g, family, cfg, dtype)
    x = storage(cp.random.default_rng(3).standard_normal(g.x_shape, dtype=np.float32), dtype)
    y = cp.empty(g.y_shape, dtype=x.dtype)
    poison(y)
    kern(x, y)
    cp.cuda.get_current_stream().synchronize()
    err = rel_error(y, C.conv_reference(wc, x, g, xp=cp))
    assert err <= TOLERANCE[dtype], (family, cfg, dtype, g, err)


CSR_CFGS = [{"th": 4, "tw": 16, "ppt": 2, "cot": 4, "cpt": 4, "cc": 8, "unroll": 2},
            {"th": 2, "tw": 8, "ppt": 1, "cot": 8, "cpt": 4, "cc": 16, "unroll": 2},
            {"th": 1, "tw": 32, "ppt": 4, "cot": 4, "cpt": 2, "cc": 4, "unroll": 1}]
PAT_CFGS = [{"th": 4, "tw": 16, "ppt": 2, "cb": 8, "unroll": 2, "vec": 2},
            {"th": 4, "tw": 8, "ppt": 1, "cb": 4, "unroll": 1, "vec": 1},
            {"th": 8, "tw": 16, "ppt": 4, "cb": 8, "unroll": 4, "vec": 4}]
TILE_CFGS = [{"th": 4, "tw": 8, "ppt": 4, "rpt": 2, "cot": 8, "cc": 4, "ksplit": 1, "unroll": 2},
             {"th": 2, "tw": 8, "ppt": 2, "rpt": 1, "cot": 16, "cc": 4, "ksplit": 2, "unroll": 4},
             {"th": 7, "tw": 7, "ppt": 1, "rpt": 7, "cot": 8, "cc": 8, "ksplit": 1, "unroll": 2},
             {"th": 4, "tw": 4, "ppt": 4, "rpt": 4, "cot": 32, "cc": 4, "ksplit": 4, "unroll": 4},
             {"th": 8, "tw": 16, "ppt": 4, "rpt": 2, "cot": 4, "cc": 8, "ksplit": 1, "unroll": 4},
             # prefetch (NCHW; NHWC ignores it): one and several staged inputs a thread, split-K with an empty split
             {"th": 4, "tw": 8, "ppt": 4, "rpt": 2, "cot": 8, "cc": 4, "ksplit": 1, "unroll": 2, "pf": 1},
             {"th": 2, "tw": 8, "ppt": 2, "rpt": 1, "cot": 16, "cc": 4, "ksplit": 2, "unroll": 4, "pf": 1},
             {"th": 4, "tw": 4, "ppt": 4, "rpt": 4, "cot": 32, "cc": 4, "ksplit": 4, "unroll": 4, "pf": 1}]
GEOMS = [  # (cout, cin, h, w, batch, stride): odd channel counts and image sizes, batch 1, stride 2
    (20, 12, 9, 11, 1, 1), (20, 12, 9, 11, 2, 2), (8, 3, 7, 7, 1, 2), (36, 20, 14, 14, 3, 1)]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("family,cfgs", [("conv_csr", CSR_CFGS), ("conv_pattern", PAT_CFGS),
                                         ("conv_tile", TILE_CFGS)])
def test_family_edge_cases(cp, family, cfgs, dtype, layout):
    ran = 0
    # conv_pattern compiles ~3 ms per generated FMA line (NVRTC): its three smallest geometries only
    for gi, (cout, cin, h, w_, b, s) in enumerate(GEOMS if family == "conv_csr" else GEOMS[:3]):
        g = C.check_geometry(cout, cin, h, w_, b, s, layout)
        w = _weight(cout, cin, 0.15, seed=gi, empty=(0, cout - 1), dense=(1,))
        env = C.conv_env(g, int(np.count_nonzero(w)), dtype)
        for cfg in cfgs:
            if C.get_conv_space(family).check(cfg, env) is not None:
                continue
            _check(cp, family, cfg, dtype, g, w)
            ran += 1
    assert ran >= 3


def test_all_zero_weight_writes_zeros(cp):
    g = C.check_geometry(8, 8, 6, 6, 1, 1, "nchw")
    w = np.zeros((8, 8, 3, 3), np.float32)
    w[3, 2, 1, 1] = 1.0  # one nonzero: every other channel's output is 0
    for family, cfg in (("conv_csr", {"th": 2, "tw": 8, "ppt": 1, "cot": 2, "cpt": 4, "cc": 8, "unroll": 1}),
                        ("conv_pattern", PAT_CFGS[1])):
        kern = C.build_conv(C.compress_weight(w), g, family, cfg, "fp32")
        x = cp.random.standard_normal(g.x_shape, dtype=np.float32)
        y = cp.full(g.y_shape, np.nan, dtype=np.float32)
        kern(x, y)
        assert float(cp.abs(y[:, :3]).max()) == 0.0 and bool(cp.allclose(y[0, 3], x[0, 2]))


def test_cudnn_path_and_runtime_against_conv2d(cp, tmp_path):
    torch = pytest.importorskip("torch")
    import sparse_autotune as sat
    from sparse_autotune.runtime.conv import sparse_conv2d_class
    w = torch.as_tensor(_weight(32, 16, 0.1))
    for memory in (torch.contiguous_format, torch.channels_last):
        for stride in (1, 2):
            x = torch.randn(2, 16, 13, 13, device="cuda").contiguous(memory_format=memory)
            ref = torch.nn.functional.conv2d(x.double(), w.double().cuda(), stride=stride, padding=1)
            y = sat.conv3x3(x, w, stride=stride, db=tmp_path / "none.sqlite")  # untuned: cuDNN
            assert (y - ref).norm() / ref.norm() < 1e-4
            layer = sparse_conv2d_class()(w, torch.randn(32), stride, db=tmp_path / "none.sqlite").cuda()
            y = layer(x)
            ref = ref + layer.bias.double().view(1, -1, 1, 1)
            assert (y - ref).norm() / ref.norm() < 1e-4
    # the sparse kernels through the torch entry, channels_last in and out (the built-in default kernel)
    from sparse_autotune.runtime.conv import Conv3x3
    op = Conv3x3(w.numpy(), 2)
    x = torch.randn(1, 16, 20, 20, device="cuda").contiguous(memory_format=torch.channels_last)
    op._plans.clear()
    g = op.geometry(1, 20, 20, "nhwc")
    plan = op.plan(g, "fp32", torch_ok=False)
    assert not plan.family == "cudnn"
    op._plans[(g, "fp32", True)] = plan
    y = op(x)
    ref = torch.nn.functional.conv2d(x.double(), w.double().cuda(), stride=2, padding=1)
    assert y.is_contiguous(memory_format=torch.channels_last) and (y - ref).norm() / ref.norm() < 1e-4


@pytest.mark.parametrize("layout,dtype", [("nchw", "fp32"), ("nhwc", "fp16")])
def test_tuner_end_to_end(cp, tmp_path, layout, dtype):
    pytest.importorskip("torch")
    from sparse_autotune.runtime.conv import lookup_conv
    from sparse_autotune.tuning.conv_tune import ConvProblem, tune_conv
    from sparse_autotune.tuning.tuner import TuneOptions
    g = C.check_geometry(32, 32, 14, 14, 1, 1, layout)
    db = tmp_path / "t.sqlite"
    r = tune_conv(ConvProblem.random(g, 0.1, dtype), TuneOptions(trials=4, db=str(db), progress=False,
                                                                 families=("conv_csr", "conv_pattern", "cudnn")))
    assert r["op"] == "conv3x3" and r["trials"]["complete"] >= 1 and r["best"]["max_rel_err"] <= TOLERANCE[dtype]
    mem = "channels_last" if layout == "nhwc" else "nchw"
    assert r["baselines"].get(f"cudnn_fp32_{mem}_us") and r["baselines"].get(f"cudnn_fp16_{mem}_us")
    t = lookup_conv(g, 0.1, dtype, db=db)
    assert t.source == "exact" and t.family == r["chosen"]["family"]


@pytest.mark.parametrize("layout,dtype", [("nchw", "fp32"), ("nhwc", "fp16"), ("nchw", "fp16")])
def test_conv_tile_split_k_is_deterministic_across_launches(cp, layout, dtype):
    """The split-K path's counters reset themselves: launch after launch the same bits, right against the
    reference; the suite's layer shapes at small scale (7x7 and 14x14 images, stride 2, batch 1 and 3)."""
    from sparse_autotune.device.verify import rel_error
    for (c, hw, s, b), cfg in (((64, 7, 1, 1), {"th": 7, "tw": 8, "ppt": 4, "rpt": 7, "cot": 32, "cc": 8, "ksplit": 8,
                                                  "unroll": 4, "pf": 1}),
                               ((48, 14, 2, 3), {"th": 7, "tw": 7, "ppt": 1, "rpt": 7, "cot": 32, "cc": 4, "ksplit": 4,
                                                  "unroll": 2}),
                               ((64, 14, 1, 1), {"th": 7, "tw": 14, "ppt": 2, "rpt": 7, "cot": 32, "cc": 8, "ksplit": 8,
                                                  "unroll": 4})):
        g = C.check_geometry(c, c, hw, hw, b, s, layout)
        w = _weight(c, c, 0.1, seed=c, empty=(5,), dense=(0,))
        wc = C.compress_weight(w, dtype)
        assert C.get_conv_space("conv_tile").check(C.get_conv_space("conv_tile").normalize(cfg, dtype),
                                                    C.conv_env(g, wc.nnz, dtype)) is None, cfg
        kern = C.build_conv(wc, g, "conv_tile", cfg, dtype)
        x = storage(cp.random.default_rng(5).standard_normal(g.x_shape, dtype=np.float32), dtype)
        ref = C.conv_reference(wc, x, g, xp=cp)
        ys = []
        for _ in range(3):
            y = cp.full(g.y_shape, 7, dtype=x.dtype)
            kern(x, y)
            ys.append(y)
        cp.cuda.get_current_stream().synchronize()
        assert rel_error(ys[0], ref) <= TOLERANCE[dtype], (g, cfg)
        assert all(bool((yy.view(cp.uint16 if dtype != "fp32" else cp.uint32) ==
                         ys[0].view(cp.uint16 if dtype != "fp32" else cp.uint32)).all()) for yy in ys[1:])
        assert not bool(kern.arrays[-1].any())  # every tile's counter back at 0


def test_conv_tile_known_good_on_the_suite_layers(cp):
    """Every known-good conv_tile config that the suite's layers allow, at density 0.1, batch 1, fp16 NHWC, against the
    reference (the configs the benchmark starts from; `probe conv` verifies them in fp32 NCHW)."""
    ran = 0
    for c, hw, s in ((64, 56, 1), (512, 7, 1), (256, 28, 2)):
        for layout, dtype in (("nhwc", "fp16"),):
            g = C.check_geometry(c, c, hw, hw, 1, s, layout)
            wc = C.random_weight(c, c, 0.1, dtype, seed=c)
            env = C.conv_env(g, wc.nnz, dtype)
            for cfg in C.get_conv_space("conv_tile").defaults(dtype, env):
                _check(cp, "conv_tile", cfg, dtype, g, C.dense_weight(wc))
                ran += 1
    assert ran >= 8


# conv_tile dsm (the chunk tile in dynamic shared memory: chunks of 32-64 input channels) and occ (launch bounds for
# 1024 threads an SM): bench/drafts/conv3x3-v3.md
DSM_CFGS = [{"th": 2, "tw": 16, "ppt": 4, "rpt": 1, "cot": 64, "cc": 64, "ksplit": 1, "unroll": 4, "pf": 1, "dsm": 1},
            {"th": 2, "tw": 16, "ppt": 4, "rpt": 1, "cot": 64, "cc": 32, "ksplit": 2, "unroll": 4, "pf": 1, "dsm": 1},
            {"th": 4, "tw": 16, "ppt": 4, "rpt": 2, "cot": 32, "cc": 32, "ksplit": 1, "unroll": 4, "pf": 0, "dsm": 1,
             "occ": 1},
            # split in 2 over 3 chunks (Cin 70): splits of 2 and 1 chunks
            {"th": 4, "tw": 8, "ppt": 4, "rpt": 1, "cot": 64, "cc": 32, "ksplit": 2, "unroll": 4, "pf": 1, "dsm": 1},
            {"th": 4, "tw": 8, "ppt": 4, "rpt": 2, "cot": 32, "cc": 8, "ksplit": 1, "unroll": 2, "pf": 1, "occ": 1}]
DSM_GEOMS = [(72, 70, 14, 14, 1, 1), (40, 36, 28, 28, 3, 2), (72, 70, 7, 7, 3, 1)]


@pytest.mark.parametrize("layout,dtype", [("nchw", "fp32"), ("nhwc", "fp16"), ("nchw", "fp16")])
def test_conv_tile_dsm_and_occ_edge_cases(cp, layout, dtype):
    space = C.get_conv_space("conv_tile")
    ran, dyn = 0, 0
    for gi, (cout, cin, h, w_, b, s) in enumerate(DSM_GEOMS):
        g = C.check_geometry(cout, cin, h, w_, b, s, layout)
        w = _weight(cout, cin, 0.05, seed=10 + gi, empty=(0, cout - 1), dense=(1,))
        env = C.conv_env(g, int(np.count_nonzero(w)), dtype)
        for cfg in DSM_CFGS:
            cfg = space.normalize(cfg, dtype)
            if space.check(cfg, env) is not None:
                continue
            _check(cp, "conv_tile", cfg, dtype, g, w)
            ran += 1
            dyn += bool(cfg.get("dsm"))
    assert ran >= 8 and dyn >= 5


def test_conv_tile_dsm_known_good_on_the_suite_layers_at_batch_8(cp):
    """The known-good configs with dsm (not measured yet) on the suite's layers at batch 8, fp16 NCHW, density 0.05."""
    ran = 0
    for c, hw, s in ((64, 56, 1), (256, 14, 1), (512, 7, 1), (256, 28, 2)):
        g = C.check_geometry(c, c, hw, hw, 8, s, "nchw")
        wc = C.random_weight(c, c, 0.05, "fp16", seed=c)
        for cfg in C.get_conv_space("conv_tile").defaults("fp16", C.conv_env(g, wc.nnz, "fp16")):
            if cfg.get("dsm"):
                _check(cp, "conv_tile", cfg, "fp16", g, C.dense_weight(wc))
                ran += 1
    assert ran >= 6


# conv_tile stg (NCHW staging by 4-column groups; NHWC ignores it) and ppt 8: bench/drafts/conv3x3-v4.md
STG_CFGS = [{"th": 2, "tw": 16, "ppt": 4, "rpt": 1, "cot": 64, "cc": 64, "ksplit": 1, "unroll": 4, "pf": 0, "dsm": 1,
             "occ": 1, "stg": 1},
            {"th": 2, "tw": 16, "ppt": 4, "rpt": 1, "cot": 64, "cc": 32, "ksplit": 1, "unroll": 4, "pf": 1, "dsm": 1,
             "occ": 1, "stg": 1},
            {"th": 2, "tw": 16, "ppt": 4, "rpt": 1, "cot": 64, "cc": 32, "ksplit": 2, "unroll": 4, "pf": 0, "dsm": 1,
             "occ": 1, "stg": 1},
            {"th": 4, "tw": 16, "ppt": 8, "rpt": 1, "cot": 64, "cc": 32, "ksplit": 1, "unroll": 4, "pf": 0, "dsm": 1,
             "occ": 1, "stg": 1},
            {"th": 4, "tw": 8, "ppt": 4, "rpt": 1, "cot": 64, "cc": 32, "ksplit": 4, "unroll": 4, "pf": 1, "dsm": 1,
             "occ": 1, "stg": 1},
            # tw not a multiple of 4 (padding columns), 7 rows a thread, no occ
            {"th": 7, "tw": 7, "ppt": 1, "rpt": 7, "cot": 32, "cc": 32, "ksplit": 1, "unroll": 2, "pf": 0, "dsm": 1,
             "stg": 1},
            # ppt 8 without stg, static shared memory
            {"th": 2, "tw": 16, "ppt": 8, "rpt": 1, "cot": 32, "cc": 8, "ksplit": 1, "unroll": 4, "pf": 1}]
STG_GEOMS = [(72, 140, 14, 14, 1, 1), (40, 36, 28, 28, 8, 2), (72, 70, 7, 7, 3, 1), (40, 40, 17, 35, 8, 2)]


@pytest.mark.parametrize("layout,dtype", [("nchw", "fp32"), ("nchw", "fp16"), ("nhwc", "fp16")])
def test_conv_tile_stg_and_ppt_8_edge_cases(cp, layout, dtype):
    space = C.get_conv_space("conv_tile")
    ran, stg = 0, 0
    for gi, (cout, cin, h, w_, b, s) in enumerate(STG_GEOMS):
        g = C.check_geometry(cout, cin, h, w_, b, s, layout)
        w = _weight(cout, cin, 0.05, seed=20 + gi, empty=(0, cout - 1), dense=(1,))
        env = C.conv_env(g, int(np.count_nonzero(w)), dtype)
        for cfg in STG_CFGS:
            cfg = space.normalize(cfg, dtype)
            if cfg is None or space.check(cfg, env) is not None:
                continue
            _check(cp, "conv_tile", cfg, dtype, g, w)
            ran += 1
            stg += bool(cfg.get("stg"))
    assert ran >= 10 and stg >= 8
