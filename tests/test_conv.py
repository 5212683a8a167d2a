"""conv3x3 (ops.conv) on the CPU: the compressed weight format against numpy, the kernels' chunked format, the float64
reference against PyTorch's CPU conv2d in float64, rendering and nvcc compiles (sm_90) of both families, the database
key of op conv3x3 (records of schema 5's columns, old files read as spmm), lookup of conv records, the tuner's record with
a synthetic objective (no GPU), and the CLI's bad input (one line, exit 2)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from records import GPU, downgrade_to_v4, make_record, new_db, sql
from sparse_autotune.commands import main as cli
from sparse_autotune.errors import UserError
from sparse_autotune.ops import conv as C
from sparse_autotune.ops import conv_paths as P
from sparse_autotune.store.db import CONV3X3, TuningDB, describe_file, record_uid


def _w(cout, cin, density, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    w[rng.random(w.shape) >= density] = 0
    return w


# ---- the formats -------------------------------------------------------------------------------------------------------

def test_compressed_format_is_csr_over_cout_with_cin_ky_kx_columns():
    w = _w(5, 3, 0.4)
    w[2] = 0  # an empty output channel
    wc = C.compress_weight(w)
    assert wc.shape == (5, 27) and wc.nnz == int(np.count_nonzero(w))
    assert wc.indptr[3] == wc.indptr[2]  # channel 2 has no nonzero
    for co in range(5):
        for p in range(wc.indptr[co], wc.indptr[co + 1]):
            j = int(wc.indices[p])
            ci, ky, kx = j // 9, (j % 9) // 3, j % 3
            assert wc.data[p] == w[co, ci, ky, kx] != 0
    np.testing.assert_array_equal(C.dense_weight(wc), w)


def test_compressed_weight_rounds_to_the_dtype_and_refuses_bad_input():
    w = _w(4, 4, 0.5) * np.float32(1.0001)
    wc = C.compress_weight(w, "fp16")
    np.testing.assert_array_equal(wc.data, w[w != 0].astype(np.float16).astype(np.float32))
    with pytest.raises(UserError, match="Cout x Cin x 3 x 3"):
        C.compress_weight(np.zeros((4, 4, 5, 5), np.float32))
    with pytest.raises(UserError, match="NaN"):
        C.compress_weight(np.full((1, 1, 3, 3), np.nan, np.float32))


@pytest.mark.parametrize("cc,stride", [(4, 1), (8, 2), (3, 1)])
def test_chunked_csr_rebuilds_the_weight(cc, stride):
    w = _w(7, 10, 0.3, seed=cc)
    wc = C.compress_weight(w)
    cfg = {"th": 2, "tw": 8}
    ptr, vals, offs = C.chunked_csr(wc, 10, cc, stride, cfg)
    hin, win = C.halo(cfg, stride)
    nq = -(-10 // cc)
    assert ptr.shape == (7, nq + 1) and ptr[:, 0].tolist() == wc.indptr[:-1].tolist()
    assert ptr[:, -1].tolist() == wc.indptr[1:].tolist()
    back = np.zeros_like(w)
    for co in range(7):
        for q in range(nq):
            for i in range(ptr[co, q], ptr[co, q + 1]):
                c, r = divmod(int(offs[i]), hin * win)
                ky, kx = divmod(r, win)
                assert c < cc and ky < 3 and kx < 3
                back[co, q * cc + c, ky, kx] = vals[i]
    np.testing.assert_array_equal(back, w)


def test_pattern_context_holds_every_nonzero_once_and_empty_groups():
    w = _w(10, 6, 0.3)
    w[4:8] = 0  # group 1 of cb = 4 is empty
    wc = C.compress_weight(w)
    ctx = C.pattern_context(wc, 4, 2)
    assert [g["co0"] for g in ctx["groups"]] == [0, 4, 8] and ctx["groups"][2]["nco"] == 2
    assert ctx["groups"][1]["batches"] == []
    seen = 0
    for g in ctx["groups"]:
        for bt in g["batches"]:
            assert len(bt) <= 2
            for ch in bt:
                for j, ky, kx, lit in ch["terms"]:
                    bits = int(lit[len("__int_as_float(0x"):-1], 16)
                    v = np.array([bits], np.uint32).view(np.float32)[0]
                    assert v == w[g["co0"] + j, ch["ci"], ky, kx] != 0 and ky in ch["rows"]
                    seen += 1
    assert seen == wc.nnz


# ---- the reference -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout,stride,hw", [("nchw", 1, (7, 9)), ("nhwc", 2, (8, 5)), ("nchw", 2, (1, 1))])
def test_reference_matches_torch_float64(layout, stride, hw):
    torch = pytest.importorskip("torch")
    h, w_ = hw
    wgt = _w(6, 5, 0.4)
    g = C.check_geometry(6, 5, h, w_, 2, stride, layout)
    x = np.random.default_rng(1).standard_normal(g.x_shape).astype(np.float32)
    y = C.conv_reference(C.compress_weight(wgt), x, g)
    xt = torch.as_tensor(x, dtype=torch.float64)
    if layout == "nhwc":
        xt = xt.permute(0, 3, 1, 2)
    yt = torch.nn.functional.conv2d(xt, torch.as_tensor(wgt, dtype=torch.float64), stride=stride, padding=1)
    if layout == "nhwc":
        yt = yt.permute(0, 2, 3, 1)
    assert y.shape == g.y_shape
    np.testing.assert_allclose(y, yt.numpy(), rtol=1e-12, atol=1e-12)


def test_geometry_and_key_pattern():
    g = C.check_geometry(128, 64, 56, 56, 8, 2, "nhwc")
    assert (g.ho, g.wo, g.pixels) == (28, 28, 8 * 28 * 28)
    assert C.key_pattern("uniform", g) == "uniform@56x56b8s2"
    assert C.parse_key_pattern("uniform@56x56b8s2", 128, 64, "nhwc") == ("uniform", g)
    assert C.parse_key_pattern("uniform", 128, 64, "nhwc") is None
    assert C.parse_key_pattern("uniform@56x56b8s2", 128, 64, "kn") is None
    assert len(C.key_pattern("powerlaw", C.Geometry(1, 1, 65535, 65535, 65535, 2))) <= 32  # store.db's String(32)
    for bad in (dict(stride=3), dict(layout="kn"), dict(batch=0), dict(batch=70000)):
        with pytest.raises(UserError):
            C.check_geometry(**{**dict(cout=4, cin=4, h=8, w=8, batch=1, stride=1, layout="nchw"), **bad})


# ---- rendering and compiling -----------------------------------------------------------------------------------------------

NVCC = shutil.which("nvcc")


def _source(family, cfg, dtype, g, wc):
    plan = C.launch_plan(family, cfg, wc, g)
    return C.render_conv(family, cfg, dtype, plan.context)


@pytest.mark.parametrize("family", ["conv_csr", "conv_pattern", "conv_tile"])
def test_every_known_good_config_renders_and_is_deterministic(family):
    wc = C.random_weight(16, 8, 0.2)
    for layout in ("nchw", "nhwc"):
        for dtype in C.CONV_DTYPES:
            g = C.check_geometry(16, 8, 12, 12, 2, 1, layout)
            env = C.conv_env(g, wc.nnz, dtype)
            cfgs = C.get_conv_space(family).defaults(dtype, env)
            assert cfgs, (family, layout, dtype)
            for cfg in cfgs:
                a, b = _source(family, cfg, dtype, g, wc), _source(family, cfg, dtype, g, wc)
                assert a == b and "conv3x3_kernel" in a


def test_space_constraints_say_what_they_refuse():
    g = C.check_geometry(512, 512, 7, 7, 1, 1, "nchw")
    env = C.conv_env(g, 236000, "fp32")
    why = C.get_conv_space("conv_pattern").check({"th": 1, "tw": 32, "ppt": 1, "cb": 8, "unroll": 1, "vec": 1}, env)
    assert why is not None and "code size" in why
    with pytest.raises(UserError, match="cannot run"):
        C.check_config("conv_csr", {"th": 1, "tw": 4, "ppt": 4, "cot": 1, "cpt": 1, "cc": 4, "unroll": 1}, "fp32", env)


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("layout,dtype,stride", [("nchw", "fp32", 1), ("nhwc", "fp16", 2), ("nchw", "bf16", 2),
                                                 ("nhwc", "fp32", 1)])
def test_conv_csr_compiles_for_sm90_without_spills(layout, dtype, stride):
    from sparse_autotune.device.compile import nvcc_check
    wc = C.random_weight(40, 24, 0.1)  # channels not multiples of the tile
    g = C.check_geometry(40, 24, 14, 14, 3, stride, layout)
    env = C.conv_env(g, wc.nnz, dtype)
    space = C.get_conv_space("conv_csr")
    for cfg in space.defaults(dtype, env)[:2]:
        rep = nvcc_check(_source("conv_csr", cfg, dtype, g, wc))
        assert "0 bytes spill stores" in rep


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("layout,dtype,vec", [("nchw", "fp32", 2), ("nhwc", "fp16", 2), ("nchw", "bf16", 1)])
def test_conv_pattern_compiles_for_sm90(layout, dtype, vec):
    from sparse_autotune.device.compile import nvcc_check
    wc = C.random_weight(8, 6, 0.15)
    g = C.check_geometry(8, 6, 9, 10, 1, 1, layout)
    cfg = {"th": 8, "tw": 8, "ppt": 2, "cb": 4, "unroll": 2, "vec": vec}
    C.check_config("conv_pattern", cfg, dtype, C.conv_env(g, wc.nnz, dtype))
    rep = nvcc_check(_source("conv_pattern", cfg, dtype, g, wc))
    assert "0 bytes spill stores" in rep


# ---- the database key and lookup ---------------------------------------------------------------------------------------------

def conv_record(t, family="conv_csr", cfg=None, g=None, **over):
    g = g or C.Geometry(64, 64, 56, 56, 1, 1, "nchw")
    cfg = cfg or C.get_conv_space("conv_csr").known_good[0]
    fields = dict(op=CONV3X3, m=g.cout, k=g.cin, n=g.pixels, density=0.1, dtype="fp32",
                  pattern=C.key_pattern("uniform", g), layout=g.layout, family=family, cusparse_us=None)
    return make_record(t, cfg, **{**fields, **over})


def test_conv_records_have_a_key_of_their_own(tmp_path):
    from sparse_autotune.runtime.conv import lookup_conv
    g = C.Geometry(64, 64, 56, 56, 1, 1, "nchw")
    db = new_db(tmp_path / "t.sqlite", make_record(5.0, m=64, k=64, n=3136, density=0.1, dtype="fp32"),
                conv_record(9.0), conv_record(8.0, g=C.Geometry(64, 64, 56, 56, 1, 1, "nhwc")))
    rows = sql(db, "SELECT op, layout, pattern, is_best FROM sat_records ORDER BY id")
    assert rows == [("spmm", "kn", "uniform", 1), ("conv3x3", "nchw", "uniform@56x56b1s1", 1),
                    ("conv3x3", "nhwc", "uniform@56x56b1s1", 1)]
    assert describe_file(db)["problems"] == []
    t = lookup_conv(g, 0.1, "fp32", gpu=GPU, db=db)
    assert (t.source, t.time_us, t.family) == ("exact", 9.0, "conv_csr")
    t = lookup_conv(C.Geometry(64, 64, 56, 56, 1, 1, "nhwc"), 0.1, "fp32", gpu=GPU, db=db)
    assert (t.source, t.time_us) == ("exact", 8.0)
    # another geometry with the same M, K, N: not exact, served as the nearest
    other = C.Geometry(64, 64, 28, 112, 1, 1, "nchw")
    t = lookup_conv(other, 0.1, "fp32", gpu=GPU, db=db)
    assert t.source == "nearest" and lookup_conv(other, 0.1, "fp32", gpu=GPU, db=db, fallback=False) is None
    # nothing for fp16: the built-in default (conv_tile first: rank 5, it won every case of the conv benchmark)
    t = lookup_conv(g, 0.1, "fp16", gpu=GPU, db=db)
    assert t.source == "default" and t.family == "conv_tile"
    u = record_uid(conv_record(9.0))
    assert u != record_uid(conv_record(9.0, op="spmm"))


def test_an_old_file_is_migrated_and_takes_conv_records_beside_its_spmm_ones(tmp_path):
    old = downgrade_to_v4(new_db(tmp_path / "v4.sqlite", make_record(10.0)))
    ro = TuningDB(old, create=False, readonly=True)
    try:
        assert [r.op for r in ro.records()] == ["spmm"] and ro.select_records({"op": CONV3X3}) == []
    finally:
        ro.dispose()
    db = TuningDB(old)
    db.store(conv_record(7.0))
    db.dispose()
    assert sql(old, "SELECT op, is_best FROM sat_records ORDER BY id") == [("spmm", 1), ("conv3x3", 1)]
    assert describe_file(old)["problems"] == []


# ---- the tuner's record (synthetic objective, no GPU) ----------------------------------------------------------------------

def test_tuner_stores_a_conv_record_and_cudnn_where_faster_synthetic_objective(tmp_path):
    from sparse_autotune.tuning.conv_tune import ConvProblem, ConvTuner, Final
    from sparse_autotune.tuning.tuner import TuneOptions
    from sparse_autotune.tuning.vendor import Measured

    class Synthetic(ConvTuner):
        def __init__(self, problem, opts, cudnn_us):
            self._start_conv(problem, opts, lambda m: None, GPU, {})
            self.cudnn_us = cudnn_us

        def evaluate(self, family, cfg, prepared=None):
            return float(1 + cfg.get("th", 1) + cfg.get("tw", 1) / 8), {"rel_err": 1e-7}

        def measure(self, res):
            fin = Final(res.best_value, 1e-7)
            fin.baselines = {"cudnn_fp32_nchw_us": self.cudnn_us, "cudnn_tf32_nchw_us": 9.0,
                             "cudnn_fp16_nchw_us": 4.0}
            fin.vendors = [Measured(P.CUDNN, {"math": "fp32"}, self.cudnn_us, 1e-7)]
            return fin

    g = C.check_geometry(16, 16, 14, 14, 1, 1, "nchw")
    for cudnn_us, want in ((50.0, "conv_csr"), (0.5, "cudnn")):
        db = tmp_path / f"c{cudnn_us}.sqlite"
        prob = ConvProblem.random(g, 0.1, "fp32")
        opts = TuneOptions(trials=6, db=str(db), progress=False, families=("conv_csr",), vendors=("cudnn",))
        r = Synthetic(prob, opts, cudnn_us).finish(Synthetic(prob, opts, cudnn_us).search())
        assert r["op"] == CONV3X3 and r["chosen"]["family"] == want
        rows = sql(db, "SELECT op, m, k, n, layout, pattern, family, cublas_fp32_us, is_best FROM sat_records "
                       "ORDER BY id")
        assert rows[0][:7] == ("conv3x3", 16, 16, 196, "nchw", "uniform@14x14b1s1", "conv_csr")
        assert rows[0][7] == cudnn_us
        assert [r_[8] for r_ in rows] == ([1] if want == "conv_csr" else [0, 1])


# ---- the CLI -------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,msg", [
    (["tune", "--op", "conv3x3", "--shape", "64x64", "--density", "0.1", "--stride", "3"], "--stride must be 1 or 2"),
    (["tune", "--op", "conv3x3", "--shape", "64x64", "--density", "0.1", "--hw", "56"], "malformed --hw"),
    (["tune", "--op", "conv3x3", "--shape", "64x64", "--density", "0.1", "--batch", "0"], "batch"),
    (["tune", "--op", "conv3x3", "--shape", "64x64", "--density", "0.1", "--layout", "nk"], "conv3x3 takes nchw"),
    (["tune", "--op", "conv3x3", "--shape", "64x64", "--density", "0.1", "--dtype", "tf32"], "conv3x3 computes"),
    (["tune", "--op", "conv3x3", "--shape", "64x64"], "needs --density"),
    (["tune", "--op", "conv3x3", "--shape", "64x64", "--density", "0.1", "--n", "5"], "--n is not an option"),
    (["tune", "--op", "conv3x3", "--shape", "64x64", "--density", "0.1", "--families", "nope"], "unknown kernel family"),
    (["tune", "--op", "conv3x3", "--shape", "64x64", "--density", "0.1", "--families", "cudnn"], "besides cudnn"),
    (["tune", "--shape", "64x64", "--density", "0.1", "--families", "conv_csr"], "unknown kernel family"),
    (["tune", "--shape", "64x64", "--density", "0.1", "--hw", "56x56"], "--hw is an option of --op conv3x3"),
    (["lookup", "--shape", "64x64", "--density", "0.1", "--layout", "nhwc"], "conv3x3's"),
    (["tune", "--op", "conv3x3", "--shape", "64x64", "--density", "0.00001"], "leaves no nonzero"),
])
def test_cli_bad_input_is_one_line_exit_2(argv, msg, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_lookup_conv_json(tmp_path, capsys):
    db = new_db(tmp_path / "t.sqlite", conv_record(9.0))
    rc = cli.main(["lookup", "--op", "conv3x3", "--shape", "64x64", "--hw", "56x56", "--density", "0.1", "--gpu", GPU,
                   "--db", str(db), "--json"])
    out, _ = capsys.readouterr()
    got = json.loads(out)
    assert rc == 0 and got["op"] == "conv3x3" and got["source"] == "exact" and got["time_us"] == 9.0


# ---- conv_tile (register tiles, kx-shifted shared-memory tiles, split-K) -----------------------------------------------

def _emulate_tile(wc, x, g, cfg):
    """conv_tile's arithmetic on the CPU from its launch plan: per tile and chunk the kx-shifted tile S built from its
    definition S[kx*KST + c*PL + r*RP + j] = X[c0 + c, iy0 + r, (ox0 + j) * s + kx - 1] (0 outside), then every entry
    (value bits, byte offset) of channel co's chunk list applied to every pixel at base py*s*RP + px (NCHW)."""
    plan = C.launch_plan("conv_tile", cfg, wc, g)
    rp, pl = plan.context["RP"], plan.context["PL"]
    th, tw, cc, s = cfg["th"], cfg["tw"], cfg["cc"], g.stride
    nq = -(-g.cin // cc)
    ent = plan.arrays[0].reshape(-1, 2)
    segs, cptr = plan.arrays[1].reshape(-1, nq, 2), plan.arrays[2].reshape(g.cout, nq, 2)
    assert plan.context["EMAX"] >= int((segs[..., 1] - segs[..., 0]).max())
    hin = (th - 1) * s + 3
    kst = cc * pl
    xp = np.zeros((g.batch, g.cin + cc, g.h + 2, g.w + 2 + 2 * tw * s), np.float64)
    xp[:, :g.cin, 1:g.h + 1, 1:g.w + 1] = x
    y = np.zeros((g.batch, g.cout, -(-g.ho // th) * th, -(-g.wo // tw) * tw))
    py, px = np.meshgrid(np.arange(th), np.arange(tw), indexing="ij")
    for b in range(g.batch):
        for oy0 in range(0, g.ho, th):
            for ox0 in range(0, g.wo, tw):
                for q in range(nq):
                    S = np.zeros(3 * kst)
                    for kx in range(3):
                        for c in range(cc):
                            for r in range(hin):
                                iy = oy0 * s - 1 + r + 1  # padded coordinates
                                if iy >= xp.shape[2]:
                                    continue
                                cols = (ox0 + np.arange(tw)) * s + kx  # padded: ix + 1
                                S[kx * kst + c * pl + r * rp: kx * kst + c * pl + r * rp + tw] = \
                                    xp[b, q * cc + c, iy, cols]
                    for co in range(g.cout):
                        start = segs[co // cfg["cot"], q, 0]
                        for i in range(start + cptr[co, q, 0], start + cptr[co, q, 1]):
                            w = np.array([ent[i, 0]], np.int32).view(np.float32)[0]
                            assert ent[i, 1] % 4 == 0
                            y[b, co, oy0:oy0 + th, ox0:ox0 + tw] += w * S[ent[i, 1] // 4 + py * s * rp + px]
    return y[:, :, :g.ho, :g.wo]


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_tile_format_emulated_on_the_cpu_matches_the_reference(stride):
    w = _w(6, 5, 0.3, seed=stride)
    w[2] = 0  # an empty output channel
    w[3] = np.random.default_rng(1).standard_normal((5, 3, 3))  # a dense one
    wc = C.compress_weight(w)
    g = C.check_geometry(6, 5, 9, 11, 2, stride, "nchw")
    x = np.random.default_rng(2).standard_normal(g.x_shape)
    for cfg in ({"th": 4, "tw": 8, "ppt": 4, "rpt": 2, "cot": 8, "cc": 4, "ksplit": 2, "unroll": 2},
                {"th": 2, "tw": 16, "ppt": 2, "rpt": 1, "cot": 4, "cc": 8, "ksplit": 1, "unroll": 4}):
        np.testing.assert_allclose(_emulate_tile(wc, x, g, cfg), C.conv_reference(wc, x, g), atol=1e-9)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_tile_staging_masks_put_each_input_where_its_definition_says(stride):
    """The template's NCHW staging formulas (column of kx = 0, kx mask, per-kx address offsets), mirrored here, place
    input column t of a tile row exactly at every S[kx][j] with (j * s + kx) == t."""
    for tw in (4, 7, 8, 14, 16):
        xw = (tw - 1) * stride + 3
        kst = 1000
        for t in range(xw):
            if stride == 1:
                s0, m = t, (t < tw) | ((1 <= t and t - 1 < tw) << 1) | ((2 <= t and t - 2 < tw) << 2)
                adds = (0, kst - 1, 2 * kst - 2)
            else:
                s0 = t // 2
                m = (t % 2 == 0 and t // 2 < tw) | ((t % 2 == 1 and t // 2 < tw) << 1) | \
                    ((t % 2 == 0 and t >= 2 and t // 2 - 1 < tw) << 2)
                adds = (0, kst, 2 * kst - 1)
            got = {s0 + adds[kx] for kx in range(3) if m >> kx & 1}
            want = {kx * kst + j for kx in range(3) for j in range(tw) if j * stride + kx == t}
            assert got == want, (stride, tw, t)


def test_conv_tile_pitches_avoid_bank_conflicts_and_keep_vectors_aligned():
    for cfg, s in (({"th": 4, "tw": 16, "ppt": 4, "rpt": 1}, 2), ({"th": 8, "tw": 16, "ppt": 4, "rpt": 2}, 1),
                   ({"th": 7, "tw": 14, "ppt": 2, "rpt": 7}, 1), ({"th": 7, "tw": 8, "ppt": 4, "rpt": 7}, 2)):
        rp, pl = C.tile_pitches(cfg, s)
        assert rp >= cfg["tw"] and rp % 4 == 0 and pl % 4 == 0 and pl % 8 == 4 and pl >= ((cfg["th"] - 1) * s + 3) * rp
    # tw 16, 4 lanes a row, stride 2: rows 32 floats apart would put lanes 4-7 on lanes 0-3's banks
    assert C.tile_pitches({"th": 4, "tw": 16, "ppt": 4, "rpt": 1}, 2)[0] * 2 % 32 == 16


def test_conv_tile_split_k_plan_has_a_workspace_and_counters():
    wc = C.random_weight(64, 64, 0.1)
    g = C.check_geometry(64, 64, 7, 7, 2, 1, "nchw")
    cfg = {"th": 7, "tw": 8, "ppt": 4, "rpt": 7, "cot": 16, "cc": 8, "ksplit": 4, "unroll": 4}
    plan = C.launch_plan("conv_tile", cfg, wc, g)
    assert plan.grid == (1, 4, 8) and plan.block == (2 * 16,)
    ent, segs, cptr, ws, cnt = plan.arrays
    assert ent.size == 2 * wc.nnz and segs.size == 4 * 8 * 2 and cptr.size == 64 * 8 * 2
    assert cnt.size == 1 * 4 * 2 and not cnt.any() and ws.size == 8 * 4 * 16 * 7 * 8
    assert len(C.launch_plan("conv_tile", {**cfg, "ksplit": 1}, wc, g).arrays) == 3
    # the segments: every (group, chunk) contiguous, in order, covering every nonzero once
    segs = segs.reshape(4, 8, 2)
    assert segs[0, 0, 0] == 0 and segs[-1, -1, 1] == wc.nnz
    assert (segs[..., 1] >= segs[..., 0]).all() and (segs.reshape(-1, 2)[1:, 0] == segs.reshape(-1, 2)[:-1, 1]).all()
    # a weight whose chunk needs more shared memory than a block has is refused in one line
    dense = C.compress_weight(np.ones((64, 64, 3, 3), np.float32))
    with pytest.raises(UserError, match="shared memory"):
        C.launch_plan("conv_tile", {**cfg, "cc": 32, "cot": 64}, dense, g)


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("layout,dtype,stride", [("nhwc", "fp16", 2),  # the default run: one a test, the three conv
                                                 # compile tests together taking each dtype and layout once
                                                 *[pytest.param(*p, marks=pytest.mark.heavy)  # the heavy tier
                                                   for p in (("nchw", "fp32", 1), ("nchw", "bf16", 2),
                                                             ("nhwc", "fp32", 1), ("nchw", "fp16", 1),
                                                             ("nhwc", "bf16", 1))]])
def test_conv_tile_compiles_for_sm90_without_spills(layout, dtype, stride):
    from sparse_autotune.device.compile import nvcc_check
    cin = 24 if dtype != "bf16" else 22  # NHWC: channel quads where Cin % 4 == 0, else one channel a lane
    wc = C.random_weight(40, cin, 0.1)  # channels not multiples of the tile
    g = C.check_geometry(40, cin, 14, 14, 3, stride, layout)
    env = C.conv_env(g, wc.nnz, dtype)
    space = C.get_conv_space("conv_tile")
    cfgs = space.defaults(dtype, env)
    cfgs += [{**cfgs[0], "cc": 4, "ksplit": 2}]  # the split-K path
    cfgs += [{**c, "pf": 1 - c.get("pf", 0)} for c in cfgs]  # with and without prefetch
    cfgs = [c for c in cfgs if space.check(c, env) is None]
    assert len(cfgs) >= 3 and any(c["ksplit"] > 1 for c in cfgs)
    assert any(c.get("pf") for c in cfgs) and any(not c.get("pf") for c in cfgs)
    for cfg in cfgs:
        rep = nvcc_check(_source("conv_tile", cfg, dtype, g, wc))
        assert "0 bytes spill stores" in rep, cfg


def test_bench_cases_sweep_and_best_by_family_synthetic_records():
    from sparse_autotune.ops import conv_bench as cb
    names = [c["name"] for c in cb.suite_cases(sweep=True)]
    assert names[:3] == [c["name"] for c in cb.suite_cases(quick=True)] and "512@7-b1-d0.1-fp32-nchw" in names \
        and "64@56-b8-d0.05-fp16-nchw" in names and len(names) == 5
    (c,) = cb.parse_cases("256@28s2:8:0.05:fp16", "nhwc")
    assert (c["c"], c["hw"], c["stride"], c["batch"], c["density"], c["dtype"], c["layout"]) == \
        (256, 28, 2, 8, 0.05, "fp16", "nhwc")
    for bad, msg in (("64@56:1:0.1", "malformed"), ("65@56:1:0.1:fp32", "unknown conv layer"),
                     ("64@56:0:0.1:fp32", "batch"), ("64@56:1:0.1:int8", "dtype"), (",", "no case")):
        with pytest.raises(UserError, match=msg):
            cb.parse_cases(bad)
    rec = {"name": "x", "tried": [{"family": "conv_tile", "config": {"a": 1}, "us": 3.0, "rel_err": 1e-7},
                                  {"family": "conv_tile", "config": {"a": 2}, "us": 2.0, "rel_err": 2e-7},
                                  {"family": "conv_csr", "config": {"b": 1}, "us": 9.0, "rel_err": 1e-7}],
           "failed": {"conv_csr": 2, "conv_pattern": 1}}
    best = cb.best_by_family(rec)
    assert best["conv_tile"] == {"us": 2.0, "config": {"a": 2}, "rel_err": 2e-7, "verified": 2}
    assert best["conv_csr"]["failed"] == 2 and best["conv_pattern"] == {"us": None, "config": None, "rel_err": None,
                                                                        "verified": 0, "failed": 1}
    lines = cb.family_lines({"records": [{**rec, "best_by_family": best}]})
    rows = [ln for ln in lines if ln.startswith("| x |")]
    assert [r.split("|")[2].strip() for r in rows] == ["conv_tile", "conv_csr", "conv_pattern"]


# ---- conv_tile dsm (chunks in dynamic shared memory) and occ (launch bounds for >= 768 threads an SM) ----------------

DSM_CFG = {"th": 2, "tw": 16, "ppt": 4, "rpt": 1, "cot": 64, "cc": 64, "ksplit": 1, "unroll": 4, "pf": 1, "dsm": 1}
OCC_CFG = {"th": 4, "tw": 16, "ppt": 4, "rpt": 2, "cot": 32, "cc": 32, "ksplit": 2, "unroll": 4, "pf": 0, "dsm": 1,
           "occ": 1}


def test_conv_tile_dsm_plan_puts_the_chunk_tile_in_dynamic_shared_memory():
    wc = C.random_weight(72, 70, 0.05)  # channels not multiples of the tile
    g = C.check_geometry(72, 70, 14, 14, 3, 1, "nchw")
    space = C.get_conv_space("conv_tile")
    env = C.conv_env(g, wc.nnz, "fp16")
    for cfg in (DSM_CFG, OCC_CFG):
        cfg = space.normalize(cfg, "fp16")
        assert space.check(cfg, env) is None, cfg
        plan = C.launch_plan("conv_tile", cfg, wc, g)
        assert plan.smem == C.tile_tile_bytes(cfg, 1) and plan.smem == 4 * 3 * cfg["cc"] * plan.context["PL"]
        src = C.render_conv("conv_tile", cfg, "fp16", plan.context)
        assert "extern __shared__ __align__(16) float sm[];" in src
    assert C.launch_plan("conv_tile", space.normalize(DSM_CFG, "fp16"), wc, g).smem > 48 * 1024
    # without dsm: the old static tile, no dynamic shared memory; occ changes only the launch bounds
    old = space.normalize({**DSM_CFG, "cc": 8, "dsm": 0}, "fp16")
    plan = C.launch_plan("conv_tile", old, wc, g)
    src = C.render_conv("conv_tile", old, "fp16", plan.context)
    assert plan.smem == 0 and "extern __shared__" not in src and "__launch_bounds__(NT, 1)" in src and "#define NT 512" in src
    occ = space.normalize(OCC_CFG, "fp16")
    for o, minb in ((0, 2), (1, 3)):  # 256 threads: 512 / 256 or 768 / 256 resident blocks asked for
        cfg = {**occ, "occ": o}
        assert f"__launch_bounds__(NT, {minb})" in C.render_conv("conv_tile", cfg, "fp16",
                                                                 C.launch_plan("conv_tile", cfg, wc, g).context)


def test_conv_tile_dsm_constraints_say_what_they_refuse():
    space = C.get_conv_space("conv_tile")
    g = C.check_geometry(64, 64, 56, 56, 8, 1, "nchw")
    env = C.conv_env(g, 1843, "fp16")
    assert "shared memory" in space.check(space.normalize({**DSM_CFG, "dsm": 0}, "fp16"), env)
    assert space.check(space.normalize(DSM_CFG, "fp16"), env) is None
    assert space.normalize({**DSM_CFG, "cc": 16}, "fp16").get("dsm") is None  # dsm only for chunks of >= 32
    big = space.normalize({**DSM_CFG, "th": 8, "tw": 32, "ppt": 4, "rpt": 2, "cot": 16}, "fp16")
    assert "half the dynamic shared memory" in space.check(big, env)
    assert space.normalize({**OCC_CFG, "rpt": 4}, "fp16").get("occ") is None  # occ only for <= 8 accumulators


def test_conv_tile_format_with_chunks_of_64_emulated_on_the_cpu_matches_the_reference():
    w = _w(5, 70, 0.1, seed=4)
    w[1] = 0
    w[2] = np.random.default_rng(3).standard_normal((70, 3, 3))
    wc = C.compress_weight(w)
    g = C.check_geometry(5, 70, 5, 9, 1, 2, "nchw")
    x = np.random.default_rng(5).standard_normal(g.x_shape)
    cfg = {"th": 2, "tw": 8, "ppt": 4, "rpt": 1, "cot": 8, "cc": 64, "ksplit": 1, "unroll": 4, "pf": 0, "dsm": 1}
    np.testing.assert_allclose(_emulate_tile(wc, x, g, cfg), C.conv_reference(wc, x, g), atol=1e-9)


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("layout,dtype,stride", [("nhwc", "fp32", 2),
                                                 *[pytest.param(*p, marks=pytest.mark.heavy)  # the heavy tier
                                                   for p in (("nchw", "fp16", 1), ("nchw", "bf16", 2))]])
def test_conv_tile_dsm_and_occ_compile_for_sm90_without_spills(layout, dtype, stride):
    import re
    from sparse_autotune.device.compile import nvcc_check
    wc = C.random_weight(72, 68, 0.05)
    g = C.check_geometry(72, 68, 14 * stride, 14 * stride, 3, stride, layout)
    space = C.get_conv_space("conv_tile")
    env = C.conv_env(g, wc.nnz, dtype)
    cfgs = [space.normalize(c, dtype) for c in ({**DSM_CFG, "cc": 32, "ksplit": 2}, OCC_CFG,
                                                {**OCC_CFG, "th": 8, "tw": 8, "ksplit": 1, "cc": 8, "pf": 1})]
    cfgs = [c for c in cfgs if space.check(c, env) is None]
    assert len(cfgs) >= 2 and any(c.get("occ") for c in cfgs)
    for cfg in cfgs:
        plan = C.launch_plan("conv_tile", cfg, wc, g)
        rep = nvcc_check(C.render_conv("conv_tile", cfg, dtype, plan.context))
        assert "0 bytes spill stores" in rep, cfg
        static = int(re.search(r"(\d+) bytes smem", rep).group(1))
        assert static + plan.smem <= 227 * 1024 and (static < plan.smem or not cfg.get("dsm")), (cfg, static, plan.smem)
        if cfg.get("occ"):
            assert int(re.search(r"Used (\d+) registers", rep).group(1)) <= 65536 // (plan.block[0] * -(-768 // plan.block[0])), cfg


def test_bench_sample_configs_known_good_first_then_feasible_and_deterministic():
    from sparse_autotune.ops import conv_bench as cb
    g = C.check_geometry(128, 128, 28, 28, 8, 1, "nchw")
    env = C.conv_env(g, 7373, "fp16")
    space = C.get_conv_space("conv_tile")
    kg = space.defaults("fp16", env)
    got = cb.sample_configs("conv_tile", "fp16", env, len(kg) + 8, seed=3)
    assert got[:len(kg)] == kg and len(got) == len(kg) + 8 and len({str(c) for c in got}) == len(got)
    assert all(space.check(c, env) is None for c in got) and any(c.get("dsm") for c in got)
    assert got == cb.sample_configs("conv_tile", "fp16", env, len(kg) + 8, seed=3)
    # 3/4 of the sampled ones from the prior (>= 4 accumulators, 128-512 threads, >= 16 channels a block)
    assert sum(cb._tile_prior(c) for c in got[len(kg):]) >= 6


# ---- conv_tile stg (NCHW staging by 4-column groups, bench/drafts/conv3x3-v4.md) and ppt 8 ------------------------------

STG_CFG = {"th": 2, "tw": 16, "ppt": 4, "rpt": 1, "cot": 64, "cc": 32, "ksplit": 1, "unroll": 4, "pf": 1, "dsm": 1,
           "occ": 1, "stg": 1}


def _stg_stage(xp, h, w, b, c0, cc, oy0, ox0, s, th, tw, rp, pl, nt):
    """The template's stg staging mirrored on the CPU (xp: the h x w image X padded by zeros, from row / column -1):
    the threads' 4-column groups (r, gq) of a channel's HIN x NGW, their channels cg + j * G, the NX inputs of a group
    from xc0 = ix0 + 4 * gq * s (0 outside the image; as aligned pairs from xc0 - 1 where w and tw * s are even) and
    the three 4-wide stores. Returns (S, writes per slot)."""
    hin, ngw, nx = (th - 1) * s + 3, (tw + 3) // 4, 3 * s + 3
    npl = hin * ngw
    g_ = max(nt // npl, 1)
    kp = 1 if nt >= npl else -(-npl // nt)
    nc = -(-cc // g_)
    kst = cc * pl
    S = np.full(3 * kst, np.nan)
    hits = np.zeros(3 * kst, int)
    iy0, ix0 = oy0 * s - 1, ox0 * s - 1
    for tid in range(nt):
        cg = tid // npl if nt >= npl else 0
        for k in range(kp):
            p = tid % npl if nt >= npl else tid + k * nt
            mine = tid < g_ * npl if nt >= npl else p < npl
            if not mine:
                continue
            r, gq = p // ngw, p % ngw
            iy, xc0 = iy0 + r, ix0 + gq * 4 * s
            for j in range(nc):
                c = cg + j * g_
                if c >= cc:
                    continue
                if w % 2 == 0 and (tw * s) % 2 == 0:  # aligned pairs from xc0 - 1, one mask bit a pair
                    u = []
                    for q in range(-(-(nx + 1) // 2)):
                        col = xc0 - 1 + 2 * q
                        inside = 0 <= iy < h and 0 <= col < w
                        assert col % 2 == 0 and (0 <= col + 1 < w) == (0 <= col < w)  # wholly in or out of the row
                        u += [xp[b, c0 + c, iy + 1, col + 1 + e] if inside else 0.0 for e in (0, 1)]
                    u = u[1:nx + 1]
                else:
                    u = [xp[b, c0 + c, iy + 1, xc0 + i + 1] if 0 <= iy < h and 0 <= xc0 + i < w else 0.0
                         for i in range(nx)]
                at = c * pl + r * rp + gq * 4
                assert at % 4 == 0 and kst % 4 == 0  # 16-byte stores
                for kx in range(3):
                    S[kx * kst + at: kx * kst + at + 4] = [u[jj * s + kx] for jj in range(4)]
                    hits[kx * kst + at: kx * kst + at + 4] += 1
    return S, hits


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_tile_stg_staging_mirrored_on_the_cpu_fills_every_slot_by_its_definition(stride):
    """Every S[kx][c][r][j] (j < tw) written exactly once with X[c0 + c][iy0 + r][(ox0 + j) * s + kx - 1] (0 outside the
    image) by the stg thread mapping, for thread counts above and below one channel's groups, tw not a multiple of 4,
    tiles on the image's edges and channels past Cin."""
    rng = np.random.default_rng(stride)
    for th, tw, nt, cc, (h, w) in ((2, 16, 512, 32, (9, 30)), (4, 8, 64, 32, (7, 7)), (7, 7, 8, 32, (13, 11)),
                                   (1, 14, 32, 64, (5, 17)), (8, 32, 128, 32, (12, 40)), (7, 7, 64, 32, (6, 14)),
                                   (2, 16, 64, 32, (8, 8))):
        rp = -(-tw // 4) * 4 + 4
        hin = (th - 1) * stride + 3
        pl = hin * rp + 4
        cin = cc + 3
        x = rng.standard_normal((1, cin, h, w))
        xp = np.zeros((1, cin + cc, h + 2 + 2 * th * stride, w + 2 + 8 * tw * stride))
        xp[:, :cin, 1:h + 1, 1:w + 1] = x
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        for oy0 in range(0, ho, th):
            for ox0 in range(0, wo, tw):
                S, hits = _stg_stage(xp, h, w, 0, cc // 2, cc, oy0, ox0, stride, th, tw, rp, pl, nt)
                kst = cc * pl
                for kx in range(3):
                    for c in range(cc):
                        for r in range(hin):
                            at = kx * kst + c * pl + r * rp
                            cols = (ox0 + np.arange(tw)) * stride + kx  # padded: ix + 1
                            want = xp[0, cc // 2 + c, oy0 * stride + r, cols]
                            np.testing.assert_array_equal(S[at: at + tw], want)
                            assert (hits[at: at + tw] == 1).all(), (th, tw, nt, kx, c, r)
                            assert (hits[at + tw: at + rp] <= 1).all()  # padding columns inside the row pitch


def test_conv_tile_stg_is_a_dsm_axis_and_old_configs_render_unchanged():
    space = C.get_conv_space("conv_tile")
    wc = C.random_weight(72, 70, 0.05)
    g = C.check_geometry(72, 70, 28, 28, 8, 2, "nchw")
    env = C.conv_env(g, wc.nnz, "fp16")
    assert space.normalize({**STG_CFG, "cc": 16, "dsm": 0}, "fp16").get("stg") is None  # stg only with dsm
    old = space.normalize({k: v for k, v in STG_CFG.items() if k != "stg"}, "fp16")
    assert old["stg"] == 0
    plan = C.launch_plan("conv_tile", old, wc, g)
    src0 = C.render_conv("conv_tile", old, "fp16", plan.context)
    assert "ldm<" not in src0 and "make_float4" not in src0
    cfg = space.normalize({**STG_CFG, "pf": 0}, "fp16")
    assert space.check(cfg, env) is None
    src = C.render_conv("conv_tile", cfg, "fp16", plan.context)
    assert src.count("ldm<16u>") == 1 and "ldm<32u>" not in src  # 9 inputs in 5 pairs (width 28 and tw * 2 even)
    assert "make_float4(f[0], f[2], f[4], f[6])" in src and "f[0] = h2f((unsigned short)(u[0] >> 16));" in src
    odd = C.check_geometry(72, 70, 27, 27, 8, 2, "nchw")  # odd width: 9 single loads
    assert C.render_conv("conv_tile", cfg, "fp16", C.launch_plan("conv_tile", cfg, wc, odd).context).count("ldm<256u>") == 1
    nhwc = C.check_geometry(72, 70, 28, 28, 8, 2, "nhwc")  # NHWC ignores stg: the same source as stg 0
    ctx = C.launch_plan("conv_tile", cfg, wc, nhwc).context
    assert C.render_conv("conv_tile", cfg, "fp16", ctx) == C.render_conv("conv_tile", old, "fp16", ctx)
    # prefetch with stg: at most 6 raw inputs a thread at 512 threads under occ (12 spilled), 12 otherwise
    why = space.check(space.normalize(STG_CFG, "fp16"), env)  # stride 2: 9 inputs a group
    assert why is not None and "raw inputs" in why
    env1 = C.conv_env(C.check_geometry(72, 70, 14, 14, 8, 1, "nchw"), wc.nnz, "fp16")
    assert space.check(space.normalize(STG_CFG, "fp16"), env1) is None  # stride 1, one group of 6 a thread
    assert "raw inputs" in space.check(space.normalize({**STG_CFG, "cc": 64}, "fp16"), env1)  # two groups
    assert space.check(space.normalize({**STG_CFG, "cc": 64, "pf": 0}, "fp16"), env1) is None
    assert space.check(space.normalize({**STG_CFG, "cc": 64, "occ": 0}, "fp16"), env1) is None


def test_conv_tile_ppt_8_emulated_on_the_cpu_matches_the_reference():
    w = _w(9, 21, 0.2, seed=8)
    w[2] = 0
    wc = C.compress_weight(w)
    for s in (1, 2):
        g = C.check_geometry(9, 21, 11, 19, 2, s, "nchw")
        x = np.random.default_rng(9).standard_normal(g.x_shape)
        cfg = {"th": 2, "tw": 16, "ppt": 8, "rpt": 1, "cot": 8, "cc": 8, "ksplit": 2, "unroll": 2}
        np.testing.assert_allclose(_emulate_tile(wc, x, g, cfg), C.conv_reference(wc, x, g), atol=1e-9)


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("dtype,stride", [("bf16", 1),
                                          *[pytest.param(*p, marks=pytest.mark.heavy)  # the heavy tier
                                            for p in (("fp16", 1), ("fp32", 2), ("fp16", 2), ("fp32", 1))]])
def test_conv_tile_stg_and_ppt_8_compile_for_sm90_without_spills(dtype, stride):
    import re
    from sparse_autotune.device.compile import nvcc_check
    wc = C.random_weight(72, 68, 0.05)  # channels not multiples of the tile
    g = C.check_geometry(72, 68, 14 * stride, 14 * stride, 3, stride, "nchw")
    space = C.get_conv_space("conv_tile")
    env = C.conv_env(g, wc.nnz, dtype)
    cfgs = [space.normalize(c, dtype) for c in (
        STG_CFG, {**STG_CFG, "pf": 0, "cc": 64}, {**STG_CFG, "ksplit": 2, "pf": 0},
        {**STG_CFG, "th": 4, "ppt": 8, "pf": 0}, {**STG_CFG, "th": 4, "ppt": 8, "cot": 32},
        {**STG_CFG, "th": 7, "tw": 7, "ppt": 1, "rpt": 7, "cot": 32, "occ": 0},  # tw % 4 != 0
        {**STG_CFG, "th": 2, "ppt": 8, "stg": 0}, {**STG_CFG, "pf": 0},
        {**STG_CFG, "th": 4, "tw": 8, "pf": 0, "ksplit": 2}, {**STG_CFG, "th": 4, "tw": 8, "ppt": 8, "pf": 0, "cot": 32})]
    cfgs = [c for c in cfgs if c is not None and space.check(c, env) is None]
    assert len(cfgs) >= 3 and any(c["ppt"] == 8 for c in cfgs) and any(c["stg"] and not c["pf"] for c in cfgs)
    assert stride == 2 or any(c["stg"] and c["pf"] for c in cfgs)  # stride 2: 9 raw inputs a group, no prefetch
    odd = C.check_geometry(72, 68, 14 * stride + 1, 14 * stride + 1, 3, stride, "nchw")  # single loads, not pairs
    for cfg, gg in [(c, g) for c in cfgs] + [(c, odd) for c in cfgs[:2]]:
        plan = C.launch_plan("conv_tile", cfg, wc, gg)
        src = C.render_conv("conv_tile", cfg, dtype, plan.context)
        assert not cfg["stg"] or ("[0] >> 16)" in src or "[0].y;" in src) == (gg is g), cfg  # pairs where w is even
        rep = nvcc_check(src)
        assert "0 bytes spill stores" in rep, (cfg, rep)
        if cfg.get("occ"):
            assert int(re.search(r"Used (\d+) registers", rep).group(1)) <= 65536 // (plan.block[0] * -(-768 // plan.block[0])), cfg
