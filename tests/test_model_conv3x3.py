"""tune-model's 3x3 conv layers (issue 19) without a GPU: a 4-D (Cout, Cin, 3, 3) weight with a --spatial size is tuned as
a conv3x3 problem (record op conv3x3, a row in the model's layer list), one without is skipped with a one-line note, the
Linear layers are tuned as before. The tuning runs use synthetic objectives (tests/test_model.py's SyntheticTune for
SpMM, a ConvTuner with a synthetic evaluate / measure for conv3x3) in place of the GPU tuners; nothing here is a GPU
result."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from test_cli import assert_one_line_error, run_cli
from test_model import GPU, SyntheticTune

from sparse_autotune.commands import main as cli
from sparse_autotune.core import checkpoint as mdl
from sparse_autotune.errors import UserError
from sparse_autotune.store.db import TuningDB
from sparse_autotune.store.model_layers import model_layers


def tensors(seed=0) -> dict:
    """One Linear, two 3x3 convs (c1 gets a --spatial size in the tests, c2 none), a bias."""
    rng = np.random.default_rng(seed)
    return {"fc.weight": rng.standard_normal((32, 64)).astype(np.float32),
            "fc.bias": rng.standard_normal(32).astype(np.float32),
            "c1.weight": rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
            "c2.weight": rng.standard_normal((16, 16, 3, 3)).astype(np.float32)}


@pytest.fixture
def ckpt(tmp_path):
    from safetensors.numpy import save_file
    save_file(tensors(), str(tmp_path / "net.safetensors"))
    return tmp_path / "net.safetensors"


def synthetic_conv_tune(problem, opts, log):
    """Stands in for conv_tune.tune_conv: the real ConvTuner search and record, a synthetic objective and measure."""
    from sparse_autotune.tuning.conv_tune import ConvTuner, Final

    class Synthetic(ConvTuner):
        def __init__(self):
            self._start_conv(problem, opts, log, GPU, {})

        def evaluate(self, family, cfg, prepared=None):
            return float(1 + len(json.dumps(cfg, sort_keys=True)) % 5), {"rel_err": 1e-7}

        def measure(self, res):
            return Final(res.best_value, 1e-7)

    t = Synthetic()
    return t.finish(t.search())


def test_spatial_specs_take_a_stride_and_1x1_n_is_unchanged_at_stride_1():
    assert mdl.parse_spatial_specs(["a.*=56x56", "b=7x9s2", "c = 8 x 8 S1"]) == [("a.*", 56, 56, 1), ("b", 7, 9, 2),
                                                                                 ("c", 8, 8, 1)]
    assert mdl.parse_spatial(["a=56x56", "b=7x9s2"]) == [("a", 3136), ("b", 4 * 5)]
    for bad in ("a=56", "a=56x56s3", "a=0x4", "=4x4", "a=4x4s"):
        with pytest.raises(UserError, match="PATTERN=HxW"):
            mdl.parse_spatial_specs([bad])


def test_3x3_layers_are_found_apart_and_skipped_without_a_spatial_size():
    ck = mdl.Checkpoint("x", tensors())
    assert [lay.name for lay in mdl.find_layers(ck)] == ["fc.weight"]  # find_layers as before: no 3x3 layer
    conv = mdl.find_conv3x3_layers(ck)
    assert [(lay.name, lay.kind, lay.shape, lay.orig_shape) for lay in conv] == [
        ("c1.weight", "conv3x3", (16, 72), (16, 8, 3, 3)), ("c2.weight", "conv3x3", (16, 144), (16, 16, 3, 3))]
    chosen, notes = mdl.select_conv3x3(conv, ["c1.*=8x8s2"])
    assert [(c[0].name, *c[1:]) for c in chosen] == [("c1.weight", 8, 8, 2)]
    assert len(notes) == 1 and "c2.weight skipped" in notes[0] and "\n" not in notes[0]
    with pytest.raises(UserError, match="c2.weight .named by --include. needs its input size"):
        mdl.select_conv3x3(conv, ["c1.*=8x8"], include=["c*"])


def test_synthetic_tune_model_stores_a_conv3x3_record_and_skips_the_3x3_layer_without_size(ckpt, tmp_path,
                                                                                           monkeypatch, capsys):
    import sparse_autotune.device.gpu as gpu
    import sparse_autotune.tuning.conv_tune as conv_tune
    import sparse_autotune.tuning.tuner as tuner
    monkeypatch.setattr(gpu, "gpu_info", lambda *a, **k: SimpleNamespace(name=GPU, memory_bytes=80 << 30))
    spmm = SyntheticTune()
    monkeypatch.setattr(tuner, "tune", spmm)
    monkeypatch.setattr(conv_tune, "tune_conv", synthetic_conv_tune)
    db = tmp_path / "t.sqlite"
    rc = cli.main(["tune-model", str(ckpt), "--prune", "magnitude", "--density", "0.2", "--batch", "2", "--seq", "4",
                   "--spatial", "c1.*=8x8s2", "--trials", "3", "--db", str(db), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "note: 3x3 conv layer c2.weight skipped" in err
    assert "3x3 conv layers as conv3x3 problems (1): c1.weight; skipped (no --spatial): c2.weight" in out
    # the Linear layer as before: one SpMM problem, N = batch x seq, nk
    assert len(spmm.problems) == 1 and spmm.problems[0].startswith("M32_K64_N8_") and spmm.problems[0].endswith("_nk")
    t = TuningDB(str(db))
    try:
        recs = {(r.op, r.m, r.k, r.n): r for r in t.records()}
        rows = {r.layer: r for r in model_layers(t.engine, "net")}
    finally:
        t.dispose()
    conv = recs[("conv3x3", 16, 8, 2 * 4 * 4)]  # Cout, Cin, output pixels: 2 images of 4x4 (8x8, stride 2)
    assert conv.pattern == "matrix@8x8b2s2" and conv.layout == "nchw" and conv.trials == 3
    assert ("spmm", 32, 64, 8) in recs and not any(k[1:3] == (16, 16) for k in recs)  # c2 not tuned
    assert set(rows) == {"fc.weight", "c1.weight"}
    assert rows["c1.weight"].kind == "conv3x3" and rows["c1.weight"].status == "done"
    assert rows["c1.weight"].record_id == conv.id and rows["c1.weight"].position < rows["fc.weight"].position
    assert abs(rows["c1.weight"].density - 0.2) < 0.01
    # the report's layer list finds the conv3x3 record of the 3x3 layer
    from sparse_autotune.commands.report import layer_rows
    t = TuningDB(str(db))
    try:
        lr = {d["layer"]: d for d in layer_rows(t, model_layers(t.engine, "net"))}
    finally:
        t.dispose()
    assert lr["c1.weight"]["tuned_us"] == conv.time_us and lr["c1.weight"]["layout"] == "nchw"
    # where cuDNN's record is the key's best, the layer row keeps the tuned kernel's own time (its conv3x3 record, not
    # an spmm one) and names cuDNN as what runs
    t = TuningDB(str(db))
    try:
        t.store(conv.derived(family="cudnn", config_json=json.dumps({"math": "fp32"}), time_us=conv.time_us / 2))
        lr = {d["layer"]: d for d in layer_rows(t, model_layers(t.engine, "net"))}
    finally:
        t.dispose()
    assert lr["c1.weight"]["chosen_family"] == "cudnn" and lr["c1.weight"]["chosen_us"] == conv.time_us / 2
    assert lr["c1.weight"]["tuned_us"] == conv.time_us and lr["c1.weight"]["family"] == conv.family
    # a rerun finds both problems done
    rc = cli.main(["tune-model", str(ckpt), "--prune", "magnitude", "--density", "0.2", "--batch", "2", "--seq", "4",
                   "--spatial", "c1.*=8x8s2", "--trials", "3", "--db", str(db), "--no-progress", "--json"])
    out, _ = capsys.readouterr()
    got = json.loads(out)
    assert rc == 0 and got["skipped_done_before"] == 2 and got["tuned"] == 0
    assert got["conv3x3_layers"] == ["c1.weight"] and got["conv3x3_skipped"] == ["c2.weight"]


def test_cli_dry_run_lists_conv3x3_problems_in_the_layout_asked(ckpt, tmp_path):
    proc = run_cli(["tune-model", str(ckpt), "--prune", "magnitude", "--density", "0.2", "--batch", "1,2",
                    "--spatial", "c1.*=8x8", "--layout", "nhwc", "--dtype", "fp32,fp16", "--dry-run", "--json"],
                   tmp_path / "db.sqlite")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert [lay["name"] for lay in plan["layers"]] == ["fc.weight"]
    assert {j["layout"] for j in plan["problems"]} == {"nk"}  # --layout nhwc is the 3x3 layers'; Linear keeps nk
    conv = plan["conv3x3_problems"]
    assert [(j["dtype"], j["batch"], j["n"], j["layout"]) for j in conv] == [
        ("fp32", 1, 64, "nhwc"), ("fp32", 2, 128, "nhwc"), ("fp16", 1, 64, "nhwc"), ("fp16", 2, 128, "nhwc")]
    assert plan["conv3x3_skipped"] == ["c2.weight"] and "c2.weight skipped" in proc.stderr
    assert not (tmp_path / "db.sqlite").exists()


@pytest.mark.parametrize("extra, needles", [
    (["--spatial", "c1.*=8x8s3"], ["--spatial", "PATTERN=HxW"]),
    (["--spatial", "c1.*=8by8"], ["--spatial", "PATTERN=HxW"]),
    (["--include", "c2.*", "--spatial", "c1.*=8x8"], ["c2.weight", "--spatial"]),
    (["--spatial", "c1.*=8x8", "--dtype", "fp64"], ["dtype"]),
])
def test_cli_tune_model_3x3_bad_input_one_line_exit_2(ckpt, tmp_path, extra, needles):
    proc = run_cli(["tune-model", str(ckpt), "--prune", "magnitude", "--density", "0.2", "--batch", "1", *extra,
                    "--dry-run"], tmp_path / "db.sqlite")
    assert_one_line_error(proc, *needles)


@pytest.mark.gpu
def test_tune_model_on_the_gpu_tunes_the_3x3_layer_and_the_runtime_serves_its_record(ckpt, tmp_path):
    """The real tuners: tune-model on a checkpoint with a Linear and a 3x3 conv (c1 at 14x14, batch 1) stores a verified
    conv3x3 record and an SpMM record, the model's rows point at them, and SparseConv2d built from the pruned weight
    runs through that record and matches the float64 reference."""
    torch = pytest.importorskip("torch")
    db = tmp_path / "gpu.sqlite"
    proc = run_cli(["tune-model", str(ckpt), "--prune", "magnitude", "--density", "0.2", "--batch", "1", "--seq", "8",
                    "--spatial", "c1.*=14x14", "--trials", "4", "--json"], db)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["conv3x3_layers"] == ["c1.weight"] and got["conv3x3_skipped"] == ["c2.weight"]
    t = TuningDB(str(db))
    try:
        recs = {(r.op, r.m, r.k): r for r in t.records() if r.is_best}
        rows = {r.layer: r for r in model_layers(t.engine, "net")}
    finally:
        t.dispose()
    conv = recs[("conv3x3", 16, 8)]
    assert conv.n == 14 * 14 and conv.time_us > 0 and conv.max_rel_err is not None and conv.max_rel_err < 1e-4
    assert ("spmm", 32, 64) in recs and rows["c1.weight"].status == "done"
    # the runtime: the pruned weight through SparseConv2d with this database, against a dense float64 conv
    from sparse_autotune.runtime.conv import sparse_conv2d_class
    w = tensors()["c1.weight"]
    keep = np.abs(w) >= np.quantile(np.abs(w), 0.8)
    wp = torch.tensor(w * keep, device="cuda")
    layer = sparse_conv2d_class()(wp, db=str(db))
    x = torch.randn(1, 8, 14, 14, device="cuda")
    y = layer(x)
    [plan] = layer.op._plans.values()
    assert plan.source in ("exact", "nearest") and plan.record_id is not None, plan
    ref = torch.nn.functional.conv2d(x.double(), wp.double(), padding=1)
    err = float((y.double() - ref).norm() / ref.norm())
    assert y.shape == (1, 16, 14, 14) and err < 1e-5, err
