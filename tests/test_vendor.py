"""The vendor paths (cuSPARSE, cuBLAS on a dense copy) as candidates, and quick tuning at the first call: everything
that runs without a GPU (records, lookup, the tuner's bookkeeping, reports, options, the quick tuner's choice with a
synthetic timing function). The GPU side is in test_vendor_gpu.py."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import scipy.sparse as sp
from records import CONFIG, GPU, KEY, make_record
from test_cli import assert_one_line_error, run_cli

from sparse_autotune.core import vendor as V
from sparse_autotune.errors import UserError
from sparse_autotune.store.db import TuningDB, describe_file, is_verified
from sparse_autotune.store.lookup import candidates, lookup

FP16_DENSE = json.dumps({"math": "fp16"})


def _pair(db_path, sparse_us=10.0, vendor_us=5.0, vendor=("dense", {"math": "fp32"}), err=1e-6, **key):
    """A tuned kernel's record and a vendor path's record of one key (as the tuner's finish stores them)."""
    tdb = TuningDB(db_path)
    try:
        s = tdb.store(make_record(sparse_us, config=CONFIG, **key))
        v = tdb.store(s.derived(family=vendor[0], config_json=json.dumps(vendor[1]), time_us=vendor_us,
                                max_rel_err=err))
        return s.id, v.id
    finally:
        tdb.dispose()


# ---- the vendor families ---------------------------------------------------------------------------------------


def test_vendor_configs_follow_the_problems_precision_and_tf32_needs_the_opt_in():
    assert [c["alg"] for c in V.configs("cusparse", "fp16")] == list(V.CUSPARSE_ALGS)
    assert V.configs("dense", "fp32") == [{"math": "fp32"}]
    assert V.configs("dense", "fp32", allow_tf32=True) == [{"math": "fp32"}, {"math": "tf32"}]
    assert V.configs("dense", "fp16", allow_tf32=True) == [{"math": "fp16"}]
    assert V.configs("dense", "bf16") == [{"math": "bf16"}]
    assert V.adapt("dense", {"math": "fp16"}, "fp32") is None  # another precision: never
    assert V.adapt("dense", {"math": "tf32"}, "fp32") is None
    assert V.adapt("dense", {"math": "tf32"}, "fp32", allow_tf32=True) == {"math": "tf32"}
    assert V.adapt("cusparse", {"alg": "CUSPARSE_SPMM_CSR_ALG2"}, "bf16") == {"alg": "CUSPARSE_SPMM_CSR_ALG2"}
    assert V.adapt("cusparse", {"alg": "NO_SUCH_ALG"}, "fp32") is None
    assert V.tolerance("fp32") == 1e-4 and V.tolerance("fp32", "dense", '{"math": "tf32"}') == V.TF32_TOLERANCE
    assert V.tolerance("fp32", "dense", "not json") == 1e-4
    assert "1.0 MiB" in V.describe("dense", {"math": "fp16"}, 512, 1024, "fp16")
    assert V.describe("csr_rowsplit", CONFIG, 4, 4, "fp32") == ""


def test_families_option_splits_kernel_families_and_vendor_paths():
    from sparse_autotune.commands.main import _family_options
    from sparse_autotune.core.space import select_spaces
    enabled = tuple(s.family for s in select_spaces(None))
    assert _family_options(None) == (enabled, None)  # default: the enabled families and every vendor path
    assert _family_options("csr_rowsplit,dense") == (("csr_rowsplit",), ("dense",))
    assert _family_options("csr_rowsplit") == (("csr_rowsplit",), ())  # named without them: no vendor path
    with pytest.raises(UserError, match="besides the vendor paths"):
        _family_options("cusparse,dense")
    with pytest.raises(UserError, match="unknown kernel family"):
        _family_options("csr_rowsplit,cublas")


def test_families_option_errors_are_one_line_on_the_command_line(tmp_path):
    proc = run_cli(["tune", "--shape", "64x64", "--density", "0.1", "--families", "cusparse,dense"],
                   tmp_path / "u.sqlite")
    assert_one_line_error(proc, "--families", "besides the vendor paths")
    assert not (tmp_path / "u.sqlite").exists()


def test_queue_spec_carries_the_vendor_options_only_when_set():
    from sparse_autotune.tuning.queue import random_spec
    plain = random_spec(64, 64, 8, 0.1, "fp32", "uniform", 0, 4, None, "tpe", ("csr_rowsplit",))
    assert "vendors" not in plain and "allow_tf32" not in plain  # the queue keys of earlier runs stay the same
    spec = random_spec(64, 64, 8, 0.1, "fp32", "uniform", 0, 4, None, "tpe", ("csr_rowsplit",), vendors=("dense",),
                       allow_tf32=True)
    assert spec["vendors"] == ["dense"] and spec["allow_tf32"] is True


# ---- records, lookup, the database commands --------------------------------------------------------------------


def test_vendor_record_round_trip_lookup_export_merge_check(tmp_path):
    db = tmp_path / "v.sqlite"
    sid, vid = _pair(db)
    tdb = TuningDB(db, create=False, readonly=True)
    try:
        best = tdb.best(**KEY, gpu=GPU)
        assert best.id == vid and best.family == "dense" and best.config == {"math": "fp32"}
        assert tdb.best_sparse(**KEY, gpu=GPU).id == sid  # the kernel's own figure is still there
        assert tdb.get(sid).is_best is False
    finally:
        tdb.dispose()
    found = lookup(**KEY, gpu=GPU, cc="9.0", db=db)
    assert (found.source, found.family, found.config, found.record_id) == ("exact", "dense", {"math": "fp32"}, vid)
    # another N: a vendor config runs any N as stored
    other = lookup(512, 2048, 200, 0.1, "fp32", gpu=GPU, cc="9.0", db=db)
    assert other.family == "dense" and other.source == "bucket" and other.stored_config is None
    # export, merge and check keep the vendor record and its best flag
    out = tmp_path / "exported.sqlite"
    assert run_cli(["db", "export", str(out), "--db", str(db)], tmp_path / "none.sqlite").returncode == 0
    merged = tmp_path / "merged.sqlite"
    TuningDB(merged).dispose()
    proc = run_cli(["db", "merge", str(out), "--into", str(merged)], tmp_path / "none.sqlite")
    assert proc.returncode == 0, proc.stderr
    for f in (out, merged):
        info = describe_file(f)
        assert info["problems"] == [] and info["records"] == 2 and info["best"] == 1
        assert lookup(**KEY, gpu=GPU, cc="9.0", db=f, fallback=False).family == "dense"
    listing = run_cli(["db", "list", "--all", "--db", str(merged)], tmp_path / "none.sqlite")
    assert listing.returncode == 0 and "dense" in listing.stdout and "csr_rowsplit" in listing.stdout


def test_a_vendor_record_in_an_old_schema_2_file_is_read_as_it_is(tmp_path):
    from records import downgrade_to_v2
    db = tmp_path / "old.sqlite"
    _pair(db, vendor=("cusparse", {"alg": "CUSPARSE_SPMM_CSR_ALG2"}))
    downgrade_to_v2(db)
    found = lookup(**KEY, gpu=GPU, cc="9.0", db=db)
    assert found.family == "cusparse" and found.config == {"alg": "CUSPARSE_SPMM_CSR_ALG2"}
    assert describe_file(db)["problems"] == [] and describe_file(db)["schema_version"] == 2


def test_tf32_record_is_verified_with_tf32s_tolerance_and_served_only_with_the_opt_in(tmp_path):
    db = tmp_path / "t.sqlite"
    sid, vid = _pair(db, vendor=("dense", {"math": "tf32"}), err=8e-4)  # above fp32's 1e-4, within TF32's 2e-3
    tdb = TuningDB(db, create=False, readonly=True)
    try:
        assert is_verified(tdb.get(vid)) and tdb.best(**KEY, gpu=GPU).id == vid
    finally:
        tdb.dispose()
    assert describe_file(db)["problems"] == []
    plain = lookup(**KEY, gpu=GPU, cc="9.0", db=db)
    assert (plain.source, plain.record_id, plain.family) == ("exact", sid, "csr_rowsplit")  # the kernel stands in
    opted = lookup(**KEY, gpu=GPU, cc="9.0", db=db, allow_tf32=True)
    assert (opted.record_id, opted.config) == (vid, {"math": "tf32"})
    # a TF32 result above TF32's tolerance is never verified
    assert not is_verified(make_record(5.0, family="dense", config={"math": "tf32"}, max_rel_err=5e-3))


def test_lookup_command_says_what_a_vendor_path_runs(tmp_path):
    db = tmp_path / "l.sqlite"
    _pair(db, vendor=("dense", {"math": "tf32"}), err=8e-4)
    args = ["lookup", "--shape", "512x2048", "--density", "0.1", "--n", "256", "--gpu", GPU, "--db", str(db)]
    plain = json.loads(run_cli(args + ["--json"], tmp_path / "none.sqlite").stdout)
    assert plain["family"] == "csr_rowsplit"
    opted = run_cli(args + ["--allow-tf32"], tmp_path / "none.sqlite")
    assert opted.returncode == 0 and "dense" in opted.stdout and "dense copy of A (512x2048" in opted.stdout


def test_candidates_are_distinct_configs_in_lookups_order_then_the_default(tmp_path):
    db = tmp_path / "c.sqlite"
    tdb = TuningDB(db)
    cfg2 = {**CONFIG, "unroll": 2}
    cfg8 = {**CONFIG, "unroll": 8}
    tdb.store(make_record(10.0, config=CONFIG, n=256))  # the bucket of N=200
    tdb.store(make_record(9.0, config=cfg2, n=64))  # nearer in N than 1024, farther than the bucket
    tdb.store(make_record(8.0, config=CONFIG, n=1024))  # same config as the bucket's: given once
    tdb.store(make_record(7.0, config=cfg8, gpu_name="NVIDIA H200", n=256))  # same arch (9.0), another GPU model
    tdb.store(make_record(3.0, family="cusparse", config={"alg": "CUSPARSE_SPMM_CSR_ALG1"}, n=2048))
    tdb.dispose()
    got = candidates(512, 2048, 200, 0.1, "fp32", gpu=GPU, cc="9.0", db=db, limit=6)
    assert [(c.source, c.family) for c in got[:3]] == [("bucket", "csr_rowsplit"), ("nearest", "csr_rowsplit"),
                                                      ("nearest", "cusparse")]
    assert got[0].config["unroll"] == 4 and got[1].config["unroll"] == 2
    assert got[3].source == "same-arch" and got[3].config["unroll"] == 8
    assert got[4].source == "default" and len(got) == 5
    keys = [(c.family, json.dumps(c.config, sort_keys=True)) for c in got]
    assert len(set(keys)) == len(keys)
    assert len(candidates(512, 2048, 200, 0.1, "fp32", gpu=GPU, cc="9.0", db=db, limit=2)) == 2


# ---- the tuner's finish: vendor candidates, the study, the records ------------------------------------------------


def _study(db_path, name, values=(7.0, 9.0)):
    study = optuna.create_study(study_name=name, storage=TuningDB(db_path).url)
    for i, v in enumerate(values):
        cfg = {**CONFIG, "unroll": [1, 2, 4, 8][i]}
        study.add_trial(optuna.trial.create_trial(value=v, params={}, distributions={},
                                                  user_attrs={"family": "csr_rowsplit",
                                                              "config": json.dumps(cfg, sort_keys=True)}))
    return study


@pytest.mark.parametrize("dense_us, wins", [(4.0, True), (12.0, False)])
def test_synthetic_finish_vendors_stores_a_vendor_record_only_where_it_is_faster(tmp_path, dense_us, wins):
    from sparse_autotune.tuning.search import evaluated, summarize
    from sparse_autotune.tuning.vendor import finish_vendors
    db = tmp_path / "f.sqlite"
    _study(db, "s")
    tdb = TuningDB(db)
    rec = tdb.store(make_record(7.0, config=CONFIG, dtype="fp16", max_rel_err=1e-4))
    measured = [  # what device.baselines measures: every algorithm and every cuBLAS mode
        {"family": "cusparse", "config": {"alg": "CUSPARSE_SPMM_CSR_ALG2"}, "time_us": 9.0, "rel_err": 1e-4},
        {"family": "cusparse", "config": {"alg": "CUSPARSE_SPMM_CSR_ALG3"}, "time_us": None, "rel_err": None},
        {"family": "dense", "config": {"math": "fp32"}, "time_us": 1.0, "rel_err": 1e-6},  # another precision
        {"family": "dense", "config": {"math": "fp16"}, "time_us": dense_us, "rel_err": 3e-4},
        {"family": "dense", "config": {"math": "fp16"}, "time_us": 0.5, "rel_err": 0.5},  # wrong result
    ]
    out = finish_vendors(tdb, tdb.url, "s", rec, measured)
    tdb.dispose()
    ch = out["chosen"]
    assert [c["config"] for c in out["vendor_candidates"]] == [m["config"] for m in measured if m["config"] != {
        "math": "fp32"}]
    assert ch["vendor"] is wins and ch["family"] == ("dense" if wins else "csr_rowsplit")
    assert ch["time_us"] == (dense_us if wins else 7.0)
    assert ch["sparse_over_chosen"] == pytest.approx(7.0 / ch["time_us"])
    assert ch["dense_copy_bytes"] == (512 * 2048 * 2 if wins else 0)
    found = lookup(512, 2048, 256, 0.1, "fp16", gpu=GPU, cc="9.0", db=db)
    assert found.family == ch["family"] and found.record_id == ch["record_id"]
    assert rec.is_best is (not wins)
    # the vendor paths that ran are trials of the study, but not the search's: not counted, not its best
    study = optuna.load_study(study_name="s", storage=TuningDB(db).url)
    vend = [t for t in study.get_trials() if t.user_attrs.get("vendor")]
    assert sorted(t.value for t in vend) == sorted([9.0, dense_us])
    assert not any(evaluated(t) for t in vend)
    res = summarize(study)
    assert res.complete == 2 and res.best_family == "csr_rowsplit" and res.best_value == 7.0
    from sparse_autotune.commands.report import convergence
    ro = TuningDB(db, create=False, readonly=True)
    try:
        assert [p[1] for p in convergence(ro, "s")] == [7.0, 9.0]  # the search's trials only
    finally:
        ro.dispose()


def test_synthetic_search_resumes_without_counting_vendor_trials(tmp_path):
    from sparse_autotune.core.space import DEFAULT_LIMITS, problem_env, select_spaces
    from sparse_autotune.tuning.search import Search, SearchOptions
    from sparse_autotune.tuning.vendor import Measured, add_vendor_trials
    from synthetic import synthetic_value
    url = TuningDB(tmp_path / "s.sqlite").url
    spaces = select_spaces("csr_rowsplit")
    env = problem_env(256, 512, 64, 13107, "fp32")

    def run(trials):
        s = Search(url, "st", spaces, "fp32", env, DEFAULT_LIMITS, SearchOptions(trials=trials, sampler="random"))
        return s.run(lambda fam, cfg: (synthetic_value(fam, cfg), {}))
    first = run(4)
    assert add_vendor_trials(url, "st", [Measured("dense", {"math": "fp32"}, 0.1, 1e-7)]) == 1
    second = run(6)
    assert second.new_trials == 2 and second.complete == 6 and second.best_family == "csr_rowsplit"
    assert second.best_value <= first.best_value


# ---- reports ----------------------------------------------------------------------------------------------------


def test_suite_record_and_tune_text_say_what_the_runtime_runs():
    from sparse_autotune.commands.main import _chosen_lines
    from sparse_autotune.tuning.suite import case_record
    best = {"family": "csr_rowsplit", "config": CONFIG, "time_us": 7.0, "max_rel_err": 1e-6}
    base = {k: None for k in ("cusparse_us", "cublas_fp32_us", "cublas_tf32_us", "cublas_fp16_us", "cublas_bf16_us")}
    rep = {"problem": {"nnz": 10}, "best": best, "baselines": base, "floor_us": 1.0, "trials": {"complete": 3},
           "gpu": GPU, "driver": "d", "cuda": "c", "cupy": "p"}
    c = {"M": 1, "K": 2, "N": 3, "density": 0.1, "dtype": "fp16", "pattern": "uniform"}
    plain = case_record(c, rep)
    assert (plain["family"], plain["tuned_us"], plain["chosen_family"], plain["chosen_us"]) == (
        "csr_rowsplit", 7.0, "csr_rowsplit", 7.0)
    assert _chosen_lines(rep) == []
    rep["chosen"] = {"family": "dense", "config": {"math": "fp16"}, "time_us": 3.5, "vendor": True, "record_id": 9,
                     "sparse_over_chosen": 2.0, "runs": V.describe("dense", {"math": "fp16"}, 1, 2, "fp16")}
    won = case_record(c, rep)
    assert (won["family"], won["tuned_us"], won["chosen_family"], won["chosen_us"]) == ("csr_rowsplit", 7.0, "dense", 3.5)
    [line] = _chosen_lines(rep)
    assert line.startswith("chosen    dense") and "2.00x faster" in line and "record 9" in line


def test_report_gives_the_kernels_figures_and_says_where_a_vendor_path_runs(tmp_path):
    from sparse_autotune.commands.report import layer_rows, totals, write_report
    db = tmp_path / "r.sqlite"
    sid, vid = _pair(db, sparse_us=10.0, vendor_us=4.0, cusparse_us=20.0, cublas_fp32_us=5.0)
    tdb = TuningDB(db)
    tdb.store(make_record(6.0, config=CONFIG, n=128, cusparse_us=12.0))  # a key the kernel won
    row = dict(layer="fc", kind="linear", m=512, k=2048, nnz=1, density=0.1, problem_density=0.1, dtype="fp32",
               gpu_name=GPU, representative="fc", status="done", study_name="s")
    layers = layer_rows(tdb, [SimpleNamespace(**row, n=256), SimpleNamespace(**row, n=128)])
    tdb.dispose()
    won, lost = layers
    assert (won["family"], won["tuned_us"], won["chosen_family"], won["chosen_us"]) == ("csr_rowsplit", 10.0, "dense", 4.0)
    assert won["vs_cusparse"] == pytest.approx(2.0) and won["record_id"] == sid and won["chosen_record_id"] == vid
    assert (lost["chosen_family"], lost["chosen_us"]) == ("csr_rowsplit", 6.0)
    [tot] = [t for t in totals(layers) if t["n"] == 256]
    assert tot["chosen_us"] == 4.0 and tot["vendor_layers"] == 1 and tot["tuned_us"] == 10.0
    res = write_report(str(db), tmp_path / "out")
    assert res["vendor_won"] == {"dense": 1} and res["records"] == 2
    md = (tmp_path / "out" / "report.md").read_text()
    assert "A vendor path beat every kernel on 1 of these problems (dense 1)" in md


# ---- quick tuning: the policy and the choice ----------------------------------------------------------------------


def test_runtime_tune_default_is_off_and_the_environment_and_argument_choose(monkeypatch):
    from sparse_autotune import SpMM
    from sparse_autotune.runtime.quick import DEFAULT_TUNE, RUNTIME_TUNE_ENV, tune_mode
    a = sp.random(16, 32, density=0.2, format="csr", dtype=np.float32, random_state=0)
    monkeypatch.delenv(RUNTIME_TUNE_ENV, raising=False)
    assert DEFAULT_TUNE == "off" and tune_mode() == "off" and SpMM(a).tune == "off"
    monkeypatch.setenv(RUNTIME_TUNE_ENV, "quick")
    assert SpMM(a).tune == "quick" and SpMM(a, tune="off").tune == "off"
    assert SpMM(a, tune="QUICK").tune == "quick"
    with pytest.raises(UserError, match="tune='sometimes'"):
        SpMM(a, tune="sometimes")
    monkeypatch.setenv(RUNTIME_TUNE_ENV, "always")
    with pytest.raises(UserError, match=RUNTIME_TUNE_ENV):
        SpMM(a)


def test_synthetic_quick_pick_takes_the_fastest_and_keeps_the_best_sparse_kernel():
    from sparse_autotune.runtime.quick import Candidate, pick, unique, vendor_candidates
    cands = [Candidate("csr_rowsplit", CONFIG, "nearest"), Candidate("tc_gather", {"x": 1}, "same-arch"),
             Candidate("csr_rowsplit", {**CONFIG, "unroll": 2}, "default")]
    cands = unique(cands + [Candidate("csr_rowsplit", CONFIG, "default")] + vendor_candidates("fp16"))
    assert len(cands) == 3 + len(V.CUSPARSE_ALGS) + 1
    times = {("csr_rowsplit", 4): 9.0, ("tc_gather", None): 6.0, ("csr_rowsplit", 2): 6.0}
    vend = {"CUSPARSE_SPMM_CSR_ALG2": 8.0, "fp16": 5.0}

    def measure(c):  # a synthetic timing function: (time, error), or a failure
        if c.family == "cusparse":
            if c.config["alg"] not in vend:
                raise RuntimeError("not supported for this layout")
            return vend[c.config["alg"]], 1e-4
        if c.family == "dense":
            return vend[c.config["math"]], 5e-4
        return times[(c.family, c.config.get("unroll"))], 1e-5
    chosen, sparse = pick(cands, measure)
    assert (chosen.family, chosen.time_us) == ("dense", 5.0)
    assert (sparse.family, sparse.time_us) == ("tc_gather", 6.0)  # a tie: the earlier candidate keeps it
    assert sum(1 for c in cands if c.error) == len(V.CUSPARSE_ALGS) - 1
    vend["fp16"] = 7.0
    chosen, _ = pick(cands, measure)
    assert chosen.family == "tc_gather"
    vend["fp16"] = 6.2  # the kernel is faster by less than the margin: the vendor path (what the user had) is kept
    chosen, sparse = pick(cands, measure)
    assert chosen.family == "dense" and sparse.family == "tc_gather"
    assert V.choose(cands)[0].family == "tc_gather"  # without a margin (the tuner's full timings) the kernel wins
    assert pick([Candidate("dense", {"math": "fp16"}, "vendor")], lambda c: 1 / 0) == (None, None)


def test_synthetic_quick_records_are_stored_verified_and_found_exact(tmp_path, monkeypatch):
    from sparse_autotune.runtime.quick import Candidate, records, store
    a = sp.random(64, 96, density=0.1, format="csr", dtype=np.float32, random_state=1)
    op = SimpleNamespace(shape=a.shape, nnz=a.nnz, density=a.nnz / (64 * 96), dtype="fp16", host=a,
                         db=tmp_path / "q.sqlite")
    info = SimpleNamespace(name=GPU, cc="9.0", versions=lambda: {"cuda": "13", "driver": "580", "cupy": "14"})
    sparse = Candidate("csr_rowsplit", CONFIG, "nearest", 6.0, 1e-4)
    dense = Candidate("dense", {"math": "fp16"}, "vendor", 4.0, 5e-4)
    cands = [sparse, Candidate("cusparse", {"alg": "CUSPARSE_SPMM_CSR_ALG2"}, "vendor", 9.0, 1e-4), dense,
             Candidate("cusparse", {"alg": "CUSPARSE_SPMM_CSR_ALG3"}, "vendor", error="failed")]
    recs = records(op, 77, info, dense, sparse, cands)
    assert [r.family for r in recs] == ["dense", "csr_rowsplit"] and all(r.origin == "quick" for r in recs)
    assert recs[0].cusparse_us == 9.0 and recs[0].cublas_fp16_us == 4.0 and recs[0].trials == 3
    ids = store(op, recs)
    assert len(ids) == 2
    found = lookup(64, 96, 77, op.density, "fp16", gpu=GPU, cc="9.0", db=op.db, nnz=a.nnz)
    assert (found.source, found.family, found.record_id) == ("exact", "dense", ids[0])
    assert describe_file(op.db)["problems"] == []
    # db= naming a database shipped with the package: never written, the records go to $SPARSE_AUTOTUNE_DB
    from sparse_autotune.resources import resource_dir
    shipped = sorted(resource_dir("db").glob("*.sqlite"))[0]
    before = shipped.read_bytes()
    monkeypatch.setenv("SPARSE_AUTOTUNE_DB", str(tmp_path / "user.sqlite"))
    op.db = shipped
    assert len(store(op, records(op, 77, info, dense, sparse, cands))) == 2
    assert shipped.read_bytes() == before and describe_file(tmp_path / "user.sqlite")["records"] == 2
    # a database that cannot be written: a warning, nothing raised
    op.db = tmp_path / "no-such-folder" / "q.sqlite"
    with pytest.warns(UserWarning, match="not stored"):
        assert store(op, records(op, 77, info, dense, sparse, cands)) == []


def test_spaces_lists_the_vendor_paths(capsys):
    from sparse_autotune.commands.main import main
    assert main(["spaces", "--dtype", "fp16"]) == 0
    out = capsys.readouterr().out.splitlines()
    dense = next(ln for ln in out if ln.startswith("dense "))
    assert "1 configs (fp16)" in dense and dense.rsplit("): ", 1)[1] == '{"math": "fp16"}'  # no TF32 for fp16
    assert next(ln for ln in out if ln.startswith("cusparse ")).count('"alg"') == len(V.CUSPARSE_ALGS)
