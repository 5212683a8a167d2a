"""The transposed SpMM (ops.spmm_t, tuning.spmm_t_tune, runtime.spmm_t) and the trainable SparseLinear, on the CPU:
templates rendered and compiled with nvcc (sm_90), the explicit transpose's layout against scipy, the database key with
op spmm_t, the CLI's one-line errors, the tuner's search and record with a SYNTHETIC objective (no GPU), the
fine-tuning benchmark's report from a SYNTHETIC document. The GPU side: tests/test_spmm_t_gpu.py."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import scipy.sparse as sps

from records import GPU, make_record, new_db, sql
from sparse_autotune.commands import main as cli
from sparse_autotune.core.space import DEFAULT_LIMITS
from sparse_autotune.device.compile import nvcc_check, nvcc_path
from sparse_autotune.errors import UserError
from sparse_autotune.ops import spmm_t as T
from sparse_autotune.runtime.spmm_t import lookup_spmm_t
from sparse_autotune.store import lookup as lk
from sparse_autotune.store.db import OPS, SPMM_T
from sparse_autotune.tuning.spmm_t_tune import SpmmTProblem, SpmmTTuner, split_spmm_t_families
from sparse_autotune.tuning.sddmm_tune import Final
from sparse_autotune.tuning.tuner import TuneOptions
from sparse_autotune.tuning.vendor import Measured

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
PREFIX = "sparse-autotune: error:"
SCATTER = {"mode": "cols", "lanes": 32, "vec": 4, "warps": 4, "rows": 1, "unroll": 2}


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- templates -----------------------------------------------------------------------------------------------------

COMPILE_CASES = [("fp32", {"mode": "cols", "lanes": 32, "vec": 4, "warps": 4, "rows": 2, "unroll": 4}),
                 ("fp32", {"mode": "nnz", "lanes": 8, "vec": 1, "warps": 1, "rows": 1, "unroll": 1}),
                 ("fp16", {"mode": "cols", "lanes": 16, "vec": 8, "warps": 8, "rows": 4, "unroll": 2}),
                 ("fp16", {"mode": "nnz", "lanes": 32, "vec": 2, "warps": 4, "rows": 2, "unroll": 4}),
                 ("bf16", {"mode": "cols", "lanes": 4, "vec": 2, "warps": 2, "rows": 1, "unroll": 1}),
                 ("bf16", {"mode": "nnz", "lanes": 16, "vec": 8, "warps": 4, "rows": 1, "unroll": 2})]


@pytest.mark.parametrize("dtype,cfg", COMPILE_CASES)
def test_scatter_template_renders_and_compiles_with_nvcc_without_spills(dtype, cfg):
    if nvcc_path() is None:
        pytest.skip("no nvcc")
    src = T.render_scatter(cfg, dtype)
    assert src == T.render_scatter(cfg, dtype)  # deterministic
    assert "spmm_t_kernel" in src and "spmm_t_convert" in src and f"dtype={dtype}" in src
    assert ("red.global.add.v4.f32" in src) == (cfg["vec"] >= 4)
    log = nvcc_check(src)
    assert "spill stores" in log and all(" 0 bytes spill stores" in ln for ln in log.splitlines() if "spill" in ln)


def test_every_scatter_config_renders():
    space = T.get_spmm_t_space("spmm_t_scatter")
    for dtype in T.SPMM_T_DTYPES:
        n = 0
        for cfg in space.enumerate(dtype):
            assert "spmm_t_kernel" in T.render_scatter(cfg, dtype)
            n += 1
        assert n == space.size(dtype) > 100


def test_spaces_and_constraints():
    fam16 = T.spmm_t_families("fp16")
    assert fam16[0] == "spmm_t_scatter" and "transpose+csr_rowsplit" in fam16 and "transpose+tc_gather" in fam16
    assert "transpose+tc_gather" not in T.spmm_t_families("fp32")  # tc_gather computes 16-bit only
    assert not any("pattern_unrolled" in f for f in T.spmm_t_families())  # per-matrix compiles: not a candidate
    space = T.get_spmm_t_space("spmm_t_scatter")
    env7 = T.spmm_t_env(100, 300, 7, 3000, "fp32")
    assert env7["M"] == 300 and env7["K"] == 100  # the product's names: C is 300 x 7, the reduction 100
    assert all(c["vec"] == 1 for c in space.feasible("fp32", env7))
    assert space.check({**SCATTER, "vec": 4}, env7) is not None
    assert space.check({**SCATTER, "mode": "nnz"}, T.spmm_t_env(100, 300, 128, 3000, "fp32")) is not None
    with pytest.raises(UserError, match="cannot run"):
        T.check_config("spmm_t_scatter", {**SCATTER, "vec": 4}, "fp32", env7)
    fam, cfg = T.default_path("fp16", T.spmm_t_env(64, 64, 1, 10, "fp16"))
    assert fam == "spmm_t_scatter" and cfg["vec"] == 1
    assert T.path_config("cusparse", {"alg": "CUSPARSE_SPMM_ALG_DEFAULT"}, "fp32", env7) is not None
    assert T.path_config("dense", {"math": "fp16"}, "fp32", env7) is None
    # a transpose+ config is checked by its SpMM family's own constraints on A^T's problem
    rs = T.get_spmm_t_space("transpose+csr_rowsplit")
    env = T.spmm_t_env(512, 2048, 128, 100000, "fp32")
    good = rs.defaults("fp32", env)[0]
    assert T.path_config("transpose+csr_rowsplit", good, "fp32", env) == good


# ---- the explicit transpose's layout -------------------------------------------------------------------------------

def test_explicit_transpose_layout_matches_scipy_and_reference():
    rng = np.random.default_rng(0)
    a = sps.random(37, 91, density=0.1, format="csr", random_state=1, dtype=np.float32)
    a = sps.csr_matrix(a.toarray() * (rng.random((37, 91)) > 0.3))  # some empty rows and columns
    dense = a.toarray()
    dense[5, :] = rng.standard_normal(91).astype(np.float32)  # one dense row
    a = sps.csr_matrix(dense)
    t = T.transpose_csr(a)
    assert t.shape == (91, 37) and t.nnz == a.nnz and t.has_sorted_indices
    np.testing.assert_array_equal(t.toarray(), a.toarray().T)
    b = rng.standard_normal((37, 7))
    np.testing.assert_allclose(T.spmm_t_reference(a, b), a.toarray().astype(np.float64).T @ b, rtol=1e-12)
    op = T.SpmmTOperand(a, "fp16")  # values rounded as the fp16 kernels store them
    np.testing.assert_array_equal(op.host.data, a.data.astype(np.float16).astype(np.float32))
    assert op.transpose_bytes == 0  # no second copy until an explicit transpose is built
    assert "second copy of A" in T.describe("transpose+csr_rowsplit", {}, 37, 91, "fp16")
    assert "no copy" in T.describe("cusparse", {"alg": "x"}, 37, 91, "fp16")


# ---- the database key with op spmm_t -------------------------------------------------------------------------------

def spmm_t_record(t, cfg=None, family="spmm_t_scatter", **over):
    return make_record(t, cfg or SCATTER, family=family, op=SPMM_T, **over)


def test_spmm_t_is_an_operator_and_its_records_stay_apart(tmp_path):
    assert SPMM_T in OPS
    db = new_db(tmp_path / "t.sqlite", spmm_t_record(1.0), make_record(2.0))  # same key (512x2048, N 256), two ops
    rows = sql(db, "SELECT op, family, is_best FROM sat_records ORDER BY id")
    assert rows == [("spmm_t", "spmm_t_scatter", 1), ("spmm", "csr_rowsplit", 1)]  # one best per operator
    got = lookup_spmm_t(512, 2048, 256, 0.1, gpu=GPU, db=db, limits=DEFAULT_LIMITS)
    assert (got.source, got.family, got.config) == ("exact", "spmm_t_scatter", SCATTER)
    assert lk.lookup(512, 2048, 256, 0.1, "fp32", gpu=GPU, db=db).family == "csr_rowsplit"  # spmm's own record
    near = lookup_spmm_t(512, 2048, 200, 0.1, gpu=GPU, db=db, limits=DEFAULT_LIMITS)
    assert near.source == "nearest" and near.family == "spmm_t_scatter"
    assert lookup_spmm_t(512, 2048, 200, 0.1, gpu=GPU, db=db, fallback=False) is None
    # a config the problem cannot run (vec 4 at N = 7) is passed over: the default serves
    assert lookup_spmm_t(512, 2048, 7, 0.1, gpu=GPU, db=db, limits=DEFAULT_LIMITS).source == "default"


def test_db_list_and_lookup_cli_by_operator(tmp_path, capsys):
    db = new_db(tmp_path / "t.sqlite", spmm_t_record(1.0), make_record(2.0),
                spmm_t_record(0.5, {"alg": "CUSPARSE_SPMM_CSR_ALG1"}, family="cusparse", m=256))
    rc, out, _ = run(["db", "list", "--db", db, "--op", "spmm_t"], capsys)
    assert rc == 0 and "2 records" in out and "cusparse" in out and "csr_rowsplit" not in out
    rc, out, _ = run(["lookup", "--op", "spmm_t", "--shape", "512x2048", "--n", "256", "--density", "0.1", "--db", db,
                      "--gpu", GPU], capsys)
    assert rc == 0 and out.startswith("exact: spmm_t_scatter") and "op spmm_t" in out and "A 512x2048" in out
    rc, out, _ = run(["lookup", "--op", "spmm_t", "--shape", "512x2048", "--n", "256", "--density", "0.1", "--db", db,
                      "--gpu", GPU, "--json"], capsys)
    got = json.loads(out)
    assert got["op"] == "spmm_t" and got["explicit_transpose"] is False


BAD = {
    "k with spmm_t": (["tune", "--op", "spmm_t", "--shape", "64x128", "--density", "0.1", "--k", "8"], ["--k"]),
    "layout with spmm_t": (["tune", "--op", "spmm_t", "--shape", "64x128", "--density", "0.1", "--layout", "nk"],
                           ["--layout"]),
    "no shape": (["tune", "--op", "spmm_t", "--density", "0.1"], ["--shape"]),
    "bad family": (["tune", "--op", "spmm_t", "--shape", "64x128", "--density", "0.1", "--families", "sddmm_warp"],
                   ["sddmm_warp"]),
    "vendor only": (["tune", "--op", "spmm_t", "--shape", "64x128", "--density", "0.1", "--families", "cusparse"],
                    ["--families"]),
    "bad n": (["tune", "--op", "spmm_t", "--shape", "64x128", "--density", "0.1", "--n", "0"], ["n"]),
    "bad op": (["tune", "--op", "spmm_T", "--shape", "64x128", "--density", "0.1"], ["operator"]),
    "too large": (["tune", "--op", "spmm_t", "--shape", "100000x100000", "--density", "0.9", "--n", "4096"],
                  ["too large"]),
    "lookup k": (["lookup", "--op", "spmm_t", "--shape", "64x128", "--density", "0.1", "--k", "3"], ["--k"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_spmm_t_input_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPARSE_AUTOTUNE_DB", str(tmp_path / "env" / "tuning.sqlite"))
    args, needles = BAD[case]
    argv = list(args) + (["--db", str(tmp_path / "new" / "x.sqlite")] if args[0] == "tune" else [])
    rc, out, err = run(argv, capsys)
    assert rc == 2 and out == "", (rc, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_valid_spmm_t_tune_without_a_gpu_stops_in_one_line(tmp_path, capsys):
    from sparse_autotune.device.gpu import gpu_available
    if gpu_available():
        pytest.skip("a CUDA GPU is present: this would really tune")
    rc, out, err = run(["tune", "--op", "spmm_t", "--shape", "512x2048", "--density", "0.1", "--db",
                        tmp_path / "t.sqlite"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "gpu" in err.lower()
    assert list(tmp_path.iterdir()) == []


# ---- the tuner with a synthetic objective (no GPU) -----------------------------------------------------------------

SYN_GPU = "Synthetic GPU (test only)"


def synthetic_value(family: str, cfg: dict) -> float:
    h = hashlib.sha256((family + json.dumps(cfg, sort_keys=True)).encode()).hexdigest()
    return 1.0 + 9.0 * int(h[:12], 16) / 16**12 + (0.0 if family.startswith("transpose+") else 5.0)


class SyntheticSpmmTTuner(SpmmTTuner):
    """The spmm_t tuner with a synthetic objective (transpose+ candidates made faster so one wins): every evaluated
    config is checked feasible."""

    vendor_times = {"cusparse": 50.0, "dense": 40.0}

    def __init__(self, problem, opts, log=lambda msg: None):
        self._start_sddmm(problem, opts, log, SYN_GPU, DEFAULT_LIMITS)
        self.evaluated = []

    def evaluate(self, family, cfg):
        space = next(s for s in self.spaces if s.family == family)
        assert space.check(cfg, self.env, self.limits) is None, (family, cfg)
        self.evaluated.append((family, cfg))
        return synthetic_value(family, cfg), {"synthetic": True}

    def measure(self, res):
        vendors = [Measured(f, c, self.vendor_times[f], 1e-7) for f, c in T.vendor_configs(self.problem.dtype)]
        fin = Final(res.best_value, 1e-7, "synthetic", vendors=vendors,
                    baselines={"cusparse_us": self.vendor_times["cusparse"], "dense_us": self.vendor_times["dense"],
                               "cusparse_alg": "CUSPARSE_SPMM_ALG_DEFAULT"})
        self.final = fin
        return fin


def test_spmm_t_tuner_synthetic_objective_stores_an_spmm_t_record_saying_explicit_transpose(tmp_path):
    db = tmp_path / "t.sqlite"
    problem = SpmmTProblem.random(96, 320, 64, 0.05, "fp32", seed=3)
    assert problem.a.shape == (96, 320) and problem.key().startswith("SPMMT_")
    tuner = SyntheticSpmmTTuner(problem, TuneOptions(trials=16, db=str(db), progress=False))
    assert {s.family for s in tuner.spaces} == {"spmm_t_scatter", "transpose+csr_rowsplit", "transpose+csr_btile"}
    report = tuner.finish(tuner.search())
    assert report["op"] == "spmm_t" and report["best"]["time_us"] == min(synthetic_value(f, c)
                                                                         for f, c in tuner.evaluated)
    assert report["best"]["family"].startswith("transpose+") and report["best"]["explicit_transpose"] is True
    assert report["chosen"]["copies_of_a"] == 2 and "second copy of A" in report["chosen"]["runs"]
    rows = sql(db, "SELECT op, m, k, n, dtype, family, cusparse_us, cublas_fp32_us, is_best FROM sat_records")
    assert rows == [("spmm_t", 96, 320, 64, "fp32", report["best"]["family"], 50.0, 40.0, 1)]
    got = lookup_spmm_t(96, 320, 64, 0.05, gpu=SYN_GPU, db=db, limits=DEFAULT_LIMITS)
    assert (got.source, got.family) == ("exact", report["best"]["family"])
    assert lk.lookup(96, 320, 64, 0.05, "fp32", gpu=SYN_GPU, db=db).source == "default"  # not an spmm answer
    from sparse_autotune.commands.spmm_t import report_text
    text = report_text(report)
    assert "EXPLICIT TRANSPOSE" in text and "A 96x320" in text and "C 320x64" in text


def test_family_options():
    fams, vend = split_spmm_t_families("spmm_t_scatter,dense", "fp32")
    assert fams == ("spmm_t_scatter",) and vend == ("dense",)
    with pytest.raises(UserError, match="unknown spmm_t kernel family"):
        split_spmm_t_families("csr_rowsplit")
    with pytest.raises(UserError, match="besides the vendor"):
        split_spmm_t_families("dense")


# ---- trainable SparseLinear on the CPU (construction only: the kernels need a GPU) ---------------------------------

def test_trainable_sparse_linear_holds_its_values_and_inference_layers_have_no_parameters():
    torch = pytest.importorskip("torch")
    from sparse_autotune.runtime.nn import SparseLinear
    from sparse_autotune.runtime.nn_train import ValueReadingSpMM, dense_masked_reference
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 32)
    inf = SparseLinear.from_dense(lin, 0.25)
    assert list(inf.parameters()) == [] and inf.values is None and inf.train_state is None
    assert "values" not in inf.state_dict()
    tr = SparseLinear.from_dense(lin, 0.25, trainable=True)
    assert isinstance(tr.op, ValueReadingSpMM) and tr.op.tune == "off"
    assert [p.shape for p in tr.parameters()] == [torch.Size([tr.op.nnz])] and tr.values.requires_grad
    ref = dense_masked_reference(tr)  # the values scattered back give the pruned dense weight
    mask = torch.zeros(32 * 48, dtype=torch.bool)
    mask[torch.topk(lin.weight.detach().abs().flatten(), round(0.25 * 32 * 48)).indices] = True
    torch.testing.assert_close(ref.weight, lin.weight.detach() * mask.view(32, 48))


# ---- the fine-tuning benchmark's report (a SYNTHETIC document, no GPU) ---------------------------------------------

def test_finetune_report_from_a_synthetic_document(tmp_path):
    from sparse_autotune.runtime import finetune_bench as fb
    with pytest.raises(UserError, match="--dtype"):
        fb.check_options(100, 2, 512, 0.1, "bf8")
    with pytest.raises(UserError, match="--steps"):
        fb.check_options(5, 2, 512, 0.1, "fp32")
    doc = {"gpu": "Synthetic GPU (test only)", "driver": "0", "cuda": "0", "cupy": "0", "torch": "0", "date": "x",
           "options": {"steps": 3, "blocks": 1, "tokens": 8, "density": 0.1, "dtype": "fp32", "lr": 1e-3},
           "dense": {"loss": [1.0, 0.5, 0.25], "step_us": [100.0]}, "sparse": {"loss": [1.0, 0.6, 0.3],
                                                                             "step_us": [80.0]},
           "plans": [{"layer": "0.v", "shape": "384x384", "family": "csr_btile", "source": "trainable",
                      "spmm_t": "spmm_t_scatter", "sddmm": "sddmm_warp"}],
           "summary": {"initial_loss_dense": 1.0, "initial_loss_sparse": 1.0, "final_loss_dense": 0.25,
                       "final_loss_sparse": 0.3, "final_loss_ratio": 1.2, "loss_drop_dense": 4.0,
                       "loss_drop_sparse": 3.33, "median_step_us_dense": 100.0, "median_step_us_sparse": 80.0,
                       "sparse_speedup": 1.25}}
    text = "\n".join(fb.markdown(doc))
    assert "**1.2**" in text and "**1.25x**" in text and "| 0.v | 384x384 | csr_btile | spmm_t_scatter |" in text
    files = fb.write_outputs(tmp_path / "finetune-synthetic", doc, png=False)
    assert [f.suffix for f in files] == [".json", ".md"] and json.loads(files[0].read_text())["summary"]["final_loss_ratio"] == 1.2
