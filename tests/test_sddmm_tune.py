"""SDDMM as an operator of the tuning database, on the CPU: schema version 5 (sat_records.op; older files read as spmm,
and are migrated so), SpMM lookups never see SDDMM records and SDDMM lookups never see SpMM's, export / merge / db list
keep the operator, the CLI's SDDMM options (bad input: one line, exit 2, nothing written), the SDDMM tuner's search and
record with a synthetic objective (no GPU), the dense path's gather kernel compiled with nvcc. The GPU side:
tests/test_sddmm_tune_gpu.py."""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import numpy as np
import pytest
import scipy.sparse as sps

from records import CONFIG, GPU, downgrade_to_v2, downgrade_to_v3, downgrade_to_v4, make_record, new_db, sql
from sparse_autotune.commands import main as cli
from sparse_autotune.core.space import DEFAULT_LIMITS
from sparse_autotune.errors import UserError
from sparse_autotune.ops import sddmm_paths as P
from sparse_autotune.runtime.sddmm import lookup_sddmm
from sparse_autotune.store import lookup as lk
from sparse_autotune.store.db import SCHEMA_VERSION, TuningDB, describe_file, record_uid
from sparse_autotune.tuning.sddmm_tune import Final, SddmmProblem, SddmmTuner, split_sddmm_families
from sparse_autotune.tuning.tuner import TuneOptions
from sparse_autotune.tuning.vendor import Measured

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

KEY = dict(m=512, k=2048, n=256, density=0.1, dtype="fp32")
WARP = {"lanes": 32, "vec": 4, "warps": 4, "seg": 128, "nzi": 4, "xsrc": "l1"}  # a known-good sddmm_warp config
PREFIX = "sparse-autotune: error:"




def sddmm_record(t, cfg=None, family="sddmm_warp", **over):
    return make_record(t, cfg or WARP, family=family, op="sddmm", **over)


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- schema version 5: the operator in the key ----------------------------------------------------------------------


def test_schema_is_at_least_5():
    assert SCHEMA_VERSION >= 5  # 6 added cold_us (tests/test_cold_rank.py)


@pytest.mark.parametrize("downgrade,version", [(downgrade_to_v2, 2), (downgrade_to_v3, 3), (downgrade_to_v4, 4)])
def test_an_old_file_reads_as_spmm_and_is_migrated_to_5(tmp_path, downgrade, version):
    old = downgrade(new_db(tmp_path / f"v{version}.sqlite", make_record(10.0, CONFIG), make_record(9.0, {"a": 1})))
    cols = [r[1] for r in sql(old, "PRAGMA table_info(sat_records)")]
    assert "op" not in cols and describe_file(old)["schema_version"] == version
    assert describe_file(old)["needs_migration"] and describe_file(old)["problems"] == []
    uids = [u for (u,) in sql(old, "SELECT uid FROM sat_records ORDER BY id")]
    digest = old.read_bytes()
    # read-only: every record spmm, nothing written; an sddmm read finds nothing
    ro = TuningDB(old, create=False, readonly=True)
    try:
        recs = ro.records()
        assert [r.op for r in recs] == ["spmm", "spmm"] and [r.uid for r in recs] == uids
        assert recs[0].to_dict()["op"] == "spmm"
        assert ro.best(**KEY).time_us == 9.0 and ro.best(**KEY, op="sddmm") is None
        assert ro.best_sparse(**KEY, op="sddmm") is None
        assert ro.select_records({"op": "sddmm"}) == [] and len(ro.select_records({"op": "spmm"})) == 2
        assert lk.db_best_rows(ro, "sddmm") == [] and [r.op for r in lk.db_best_rows(ro)] == ["spmm"]
    finally:
        ro.dispose()
    assert lk.lookup(**KEY, gpu=GPU, db=old, adapt=False).time_us == 9.0
    assert lookup_sddmm(512, 256, 2048, 0.1, gpu=GPU, db=old).source == "default"
    assert old.read_bytes() == digest
    # writable: migrated in place through every version, every row spmm, uids and best flags kept
    db = TuningDB(old)
    db.store(sddmm_record(7.0))  # the same (m, k, n, density, dtype) of the other operator: a key of its own
    db.dispose()
    assert [r[1] for r in sql(old, "PRAGMA table_info(sat_records)")][-2:] == ["op", "cold_us"]  # cold_us: schema 6
    assert sql(old, "SELECT op, uid, is_best FROM sat_records ORDER BY id")[:2] == [
        ("spmm", u, b) for u, b in zip(uids, (0, 1))]
    assert sql(old, "SELECT op, is_best FROM sat_records WHERE id = 3") == [("sddmm", 1)]
    info = describe_file(old)
    assert info["schema_version"] == SCHEMA_VERSION and info["problems"] == [] and info["best"] == 2


def test_the_shipped_databases_open_read_only_unchanged_and_hold_spmm_only():
    from sparse_autotune.resources import resource_dir
    shipped = sorted(resource_dir("db").glob("*.sqlite"))
    assert shipped
    for path in shipped:
        before = path.read_bytes()
        version = describe_file(path)["schema_version"]
        assert version <= SCHEMA_VERSION  # read in the schema they have, never migrated (h200.sqlite: 5 since session 13)
        ro = TuningDB(path, create=False, readonly=True)
        try:
            assert ("op" in ro._missing) == (version < 5) and lk.db_best_rows(ro, "sddmm") == []
            assert {r.op for r in lk.db_best_rows(ro)} == {"spmm"}
        finally:
            ro.dispose()
        assert path.read_bytes() == before


def test_uids_of_spmm_records_are_unchanged_and_the_op_changes_an_sddmm_uid():
    spmm = make_record(10.0, CONFIG)
    assert record_uid(spmm) == record_uid(make_record(10.0, CONFIG, op="spmm"))
    cols = {c: getattr(spmm, c) for c in ("gpu_name", "m", "k", "n", "density", "dtype", "pattern", "family",
                                          "config_json", "time_us", "created_at", "matrix_hash")}
    assert record_uid(cols) == record_uid(spmm)  # a mapping without op (a row from before version 5)
    assert record_uid(make_record(10.0, CONFIG, op="sddmm")) != record_uid(spmm)


def test_one_best_per_operator_and_db_check_names_the_operator(tmp_path):
    p = new_db(tmp_path / "t.sqlite", make_record(10.0, CONFIG), sddmm_record(4.0), sddmm_record(6.0, {**WARP, "nzi": 2}))
    assert sql(p, "SELECT op, time_us, is_best FROM sat_records ORDER BY id") == [
        ("spmm", 10.0, 1), ("sddmm", 4.0, 1), ("sddmm", 6.0, 0)]  # a faster sddmm record does not take spmm's best
    db = TuningDB(p, create=False, readonly=True)
    try:
        assert db.best(**KEY).family == "csr_rowsplit" and db.best(**KEY, op="sddmm").time_us == 4.0
        assert db.best_sparse(**KEY, op="sddmm").time_us == 4.0 and db.best_sparse(**KEY).time_us == 10.0
    finally:
        db.dispose()
    assert describe_file(p)["problems"] == []
    con = sqlite3.connect(p)
    con.execute("UPDATE sat_records SET is_best = 1 WHERE time_us = 6.0")
    con.commit()
    con.close()
    assert any("2 records are the best of one key" in x and "sddmm" in x for x in describe_file(p)["problems"])


# ---- lookups keep to their operator -----------------------------------------------------------------------------


def test_spmm_lookups_ignore_sddmm_records(tmp_path):
    db = new_db(tmp_path / "t.sqlite", sddmm_record(1.0), sddmm_record(2.0, m=256))
    got = lk.lookup(**KEY, gpu=GPU, db=db)
    assert got.source == "default" and got.record_id is None  # neither the exact nor a near sddmm record
    assert lk.candidates(**KEY, gpu=GPU, db=db)[0].source == "default"
    assert lk.lookup(**KEY, gpu=GPU, db=db, fallback=False) is None
    tdb = TuningDB(db)
    try:
        assert lk.seed_configs(tdb, 512, 2048, 256, 0.1, "fp32", GPU) == []
        assert lk.seed_configs(tdb, 512, 2048, 256, 0.1, "fp32", GPU, op="sddmm") == [("sddmm_warp", WARP)]
    finally:
        tdb.dispose()


def test_sddmm_lookups_ignore_spmm_records(tmp_path):
    # an spmm record whose stored config is a valid sddmm_warp config too, at the very key: still never an SDDMM answer
    db = new_db(tmp_path / "t.sqlite", make_record(1.0, WARP, family="sddmm_warp"), make_record(2.0, CONFIG))
    # SDDMM mask 512 x 256, K = 2048: store.db's (m, k, n) = (512, 2048, 256), KEY's numbers
    got = lookup_sddmm(512, 256, 2048, 0.1, gpu=GPU, db=db)
    assert got.source == "default" and got.record_id is None
    assert lookup_sddmm(512, 256, 2048, 0.1, gpu=GPU, db=db, fallback=False) is None


def test_sddmm_lookup_exact_nearest_and_passing_over(tmp_path):
    tile = {"rows": 8, "kc": 128, "npt": 2, "threads": 256, "vec": 4, "copy": "sync"}
    db = new_db(tmp_path / "t.sqlite", sddmm_record(3.0, WARP), sddmm_record(2.0, tile, family="sddmm_tile", k=64),
                sddmm_record(1.0, {"math": "fp32"}, family="dense", m=1024, cublas_fp32_us=1.0))
    exact = lookup_sddmm(512, 256, 2048, 0.1, gpu=GPU, db=db)
    assert (exact.source, exact.family, exact.config) == ("exact", "sddmm_warp", WARP)
    assert exact.key[:3] == (512, 2048, 256)  # store.db's (m, k, n): the mask's M, K, the mask's N
    near = lookup_sddmm(512, 256, 96, 0.1, gpu=GPU, db=db)  # nearest: the K = 64 record, whose vec 4 divides 96
    assert (near.source, near.family) == ("nearest", "sddmm_tile") and near.distance > 0
    odd = lookup_sddmm(512, 256, 66, 0.1, gpu=GPU, db=db)  # vec 4 does not divide 66: the next record that runs it
    assert odd.source == "nearest" and (odd.family, odd.config) == ("dense", {"math": "fp32"})
    assert lookup_sddmm(512, 256, 66, 0.1, dtype="fp16", gpu=GPU, db=db).source == "default"  # another dtype
    assert lookup_sddmm(1024, 256, 2048, 0.1, gpu="NVIDIA H200", db=db).source == "default"  # another GPU, no cc
    assert lookup_sddmm(1024, 256, 2048, 0.1, gpu="NVIDIA H200", cc="9.0", db=db).source == "same-arch"


def test_path_configs_and_the_default():
    env = {"M": 512, "N": 256, "K": 33, "nnz": 13107, "dtype": "fp16"}
    assert P.path_config("dense", {"math": "fp16"}, "fp16", env) == {"math": "fp16"}
    assert P.path_config("dense", {"math": "fp32"}, "fp16", env) is None
    assert P.path_config("cusparse", {"alg": "default"}, "bf16", env) is None  # no cuSPARSE SDDMM for bf16
    assert P.path_config("sddmm_warp", WARP, "fp16", env) is None  # vec 4 does not divide K = 33
    assert P.path_config("csr_rowsplit", CONFIG, "fp16", env) is None  # an SpMM family
    fam, cfg = P.default_path("fp16", env, DEFAULT_LIMITS)
    assert fam in ("sddmm_tile", "sddmm_warp") and cfg["vec"] == 1
    assert [f for f, _ in P.vendor_configs("bf16")] == ["dense"]
    assert [f for f, _ in P.vendor_configs("fp32")] == ["cusparse", "dense"]


# ---- export / merge / db list keep the operator ---------------------------------------------------------------------


def test_merge_export_and_list_keep_the_operator(tmp_path, capsys):
    src = new_db(tmp_path / "src.sqlite", sddmm_record(5.0), make_record(10.0, CONFIG))
    dst = new_db(tmp_path / "dst.sqlite", sddmm_record(6.0, {**WARP, "nzi": 2}))
    db = TuningDB(dst)
    res, again = db.merge_from(src), db.merge_from(src)
    db.dispose()
    assert (res.added, res.new_best, again.added, again.skipped) == (2, 2, 0, 2)
    assert sql(dst, "SELECT op, time_us, is_best FROM sat_records ORDER BY id") == [
        ("sddmm", 6.0, 0), ("sddmm", 5.0, 1), ("spmm", 10.0, 1)]
    out = tmp_path / "exp.sqlite"
    rc, _, _ = run(["db", "export", out, "--db", dst, "--op", "sddmm"], capsys)
    assert rc == 0 and sql(out, "SELECT op, time_us, is_best FROM sat_records ORDER BY id") == [
        ("sddmm", 6.0, 0), ("sddmm", 5.0, 1)]
    # an old file merged into a current one: its records arrive as spmm
    old = downgrade_to_v4(new_db(tmp_path / "v4.sqlite", make_record(8.0, {"b": 1})))
    db = TuningDB(out)
    db.merge_from(old)
    db.dispose()
    assert sql(out, "SELECT op FROM sat_records WHERE time_us = 8.0") == [("spmm",)]
    rc, text, _ = run(["db", "list", "--db", dst, "--all"], capsys)
    head, *rows = text.splitlines()
    assert rc == 0 and " op " in head
    sd = next(r for r in rows if " sddmm " in r)
    assert "512x256" in sd and "K=2048" in sd  # an sddmm record: the mask's shape and K
    assert any(" spmm " in r and "512x2048" in r for r in rows)
    rc, text, _ = run(["db", "list", "--db", dst, "--op", "sddmm", "--json"], capsys)
    assert rc == 0 and {r["op"] for r in json.loads(text)} == {"sddmm"}
    rc, text, _ = run(["db", "list", "--db", dst, "--shape", "512x256", "--json"], capsys)  # the mask's M x N
    assert rc == 0 and [r["op"] for r in json.loads(text)] == ["sddmm"]
    rc, text, _ = run(["db", "list", "--db", dst, "--shape", "512x2048", "--json"], capsys)  # A's M x K
    assert rc == 0 and [r["op"] for r in json.loads(text)] == ["spmm"]
    rc, text, _ = run(["db", "show", "2", "--db", dst], capsys)
    assert rc == 0 and "sddmm" in text and "mask 512x256" in text
    rc, _, err = run(["db", "list", "--db", dst, "--op", "gemm"], capsys)
    assert rc == 2 and err.startswith(PREFIX) and "gemm" in err and len(err.splitlines()) == 1


# ---- the command line ------------------------------------------------------------------------------------------------

SD = ["tune", "--op", "sddmm", "--shape", "64x128", "--density", "0.1"]
BAD = {
    "k without sddmm": (["tune", "--shape", "64x128", "--density", "0.1", "--k", "64"], ["--k", "--op sddmm"]),
    "n with sddmm": ([*SD, "--n", "64"], ["--n", "--op sddmm"]),
    "layout with sddmm": ([*SD, "--layout", "nk"], ["--layout"]),
    "tf32 with sddmm": ([*SD, "--allow-tf32"], ["--allow-tf32"]),
    "storage with sddmm": ([*SD, "--storage", "sqlite:///{dir}/s.sqlite"], ["--storage"]),
    "workers with sddmm": ([*SD, "--workers", "2"], ["--workers"]),
    "unknown op": (["tune", "--op", "gemm", "--shape", "64x128", "--density", "0.1"], ["gemm", "operator"]),
    "k zero": ([*SD, "--k", "0"], ["--k"]),
    "k text": ([*SD, "--k", "wide"], ["--k", "wide"]),
    "k huge": ([*SD, "--k", "99999999999"], ["--k"]),
    "spmm family for sddmm": ([*SD, "--families", "csr_rowsplit"], ["csr_rowsplit", "SDDMM"]),
    "sddmm family for spmm": (["tune", "--shape", "64x128", "--density", "0.1", "--families", "sddmm_warp"],
                              ["sddmm_warp"]),
    "vendor paths only": ([*SD, "--families", "dense"], ["--families"]),
    "no shape": (["tune", "--op", "sddmm", "--density", "0.1"], ["--shape"]),
    "matrix and shape": ([*SD, "--matrix", "{dir}/m.npz"], ["--matrix"]),
    "bad density": (["tune", "--op", "sddmm", "--shape", "64x128", "--density", "2"], ["density"]),
    "too large": (["tune", "--op", "sddmm", "--shape", "100000x100000", "--density", "0.5", "--k", "64"],
                  ["too large"]),
    "bad sampler": ([*SD, "--sampler", "bayes"], ["bayes"]),
    "lookup k without sddmm": (["lookup", "--shape", "64x128", "--density", "0.1", "--k", "8"], ["--k"]),
    "lookup n with sddmm": (["lookup", "--op", "sddmm", "--shape", "64x128", "--density", "0.1", "--n", "8"],
                            ["--n"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_sddmm_input_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPARSE_AUTOTUNE_DB", str(tmp_path / "env" / "tuning.sqlite"))
    args, needles = BAD[case]
    argv = [a.replace("{dir}", str(tmp_path)) for a in args]
    if argv[0] == "tune":
        argv += ["--db", str(tmp_path / "new" / "x.sqlite")]
    rc, out, err = run(argv, capsys)
    assert rc == 2 and out == "", (rc, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created


def test_cli_valid_sddmm_tune_without_a_gpu_stops_in_one_line(tmp_path, capsys):
    from sparse_autotune.device.gpu import gpu_available
    if gpu_available():
        pytest.skip("a CUDA GPU is present: this would really tune")
    rc, out, err = run([*SD, "--k", "32", "--db", tmp_path / "t.sqlite"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "gpu" in err.lower()
    assert list(tmp_path.iterdir()) == []


def test_cli_help_names_the_operator(capsys):
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["tune", "--help"])
    text = capsys.readouterr().out
    assert "--op" in text and "sddmm" in text and "--k" in text


def test_cli_lookup_sddmm(tmp_path, capsys):
    db = new_db(tmp_path / "t.sqlite", sddmm_record(3.0, WARP))
    rc, out, _ = run(["lookup", "--op", "sddmm", "--shape", "512x256", "--k", "2048", "--density", "0.1", "--db", db,
                      "--gpu", GPU], capsys)
    assert rc == 0 and out.startswith("exact: sddmm_warp") and "op sddmm" in out and "mask 512x256 K=2048" in out
    rc, out, _ = run(["lookup", "--shape", "512x2048", "--n", "256", "--density", "0.1", "--db", db, "--gpu", GPU],
                     capsys)
    assert rc == 0 and out.startswith("default")  # SpMM's lookup at the same numbers: not the sddmm record


# ---- the tuner's search and record (a synthetic objective: no GPU) --------------------------------------------------

SYN_GPU = "Synthetic GPU (test only)"


def synthetic_value(family: str, cfg: dict) -> float:
    h = hashlib.sha256((family + json.dumps(cfg, sort_keys=True)).encode()).hexdigest()
    return 1.0 + 9.0 * int(h[:12], 16) / 16**12


class SyntheticSddmmTuner(SddmmTuner):
    """The SDDMM tuner with a synthetic objective (no GPU): every evaluated config is checked feasible; measure()
    returns the search's best and given vendor paths."""

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
        vendors = [Measured(f, c, self.vendor_times[f], 1e-7) for f, c in P.vendor_configs(self.problem.dtype)]
        return Final(res.best_value, 1e-7, "synthetic", vendors=vendors,
                     baselines={"cusparse_us": self.vendor_times["cusparse"], "dense_us": self.vendor_times["dense"]})


def test_sddmm_tuner_search_with_a_synthetic_objective_stores_an_sddmm_record(tmp_path):
    db = tmp_path / "t.sqlite"
    problem = SddmmProblem.random(128, 512, 64, 0.05, "fp16", seed=3)
    assert (problem.nnz, problem.mask.shape, problem.density) == (round(0.05 * 128 * 512), (128, 512), 0.05)
    tuner = SyntheticSddmmTuner(problem, TuneOptions(trials=12, db=str(db), progress=False))
    assert {s.family for s in tuner.spaces} == {"sddmm_tile", "sddmm_warp", "sddmm_tc"}
    res = tuner.search()
    report = tuner.finish(res)
    assert res.complete == 12 and len(tuner.evaluated) == 12
    assert all(f in ("sddmm_tile", "sddmm_warp", "sddmm_tc") for f, _ in tuner.evaluated)
    assert report["best"]["time_us"] == min(synthetic_value(f, c) for f, c in tuner.evaluated)
    rows = sql(db, "SELECT op, m, k, n, dtype, family, cusparse_us, cublas_fp16_us, cublas_fp32_us, is_best "
                   "FROM sat_records ORDER BY id")
    assert rows == [("sddmm", 128, 64, 512, "fp16", report["best"]["family"], 50.0, 40.0, None, 1)]
    # the record is found by the SDDMM lookup (mask 128 x 512, K = 64), never by SpMM's at the same numbers
    got = lookup_sddmm(128, 512, 64, 0.05, "fp16", gpu=SYN_GPU, db=db)
    assert (got.source, got.record_id, got.family) == ("exact", report["record_id"], report["best"]["family"])
    assert lk.lookup(128, 64, 512, 0.05, "fp16", gpu=SYN_GPU, db=db).source == "default"
    # a rerun resumes the study: nothing new to evaluate
    again = SyntheticSddmmTuner(problem, TuneOptions(trials=12, db=str(db), progress=False))
    res2 = again.search()
    assert res2.new_trials == 0 and again.evaluated == [] and res2.best_value == res.best_value
    text = cli._sddmm_report_text({**report, "synthetic": True}).splitlines()
    assert "SDDMM" in text[0] and "S 128x512" in text[0] and "X 128x64, Y 512x64, fp16" in text[0]
    assert text[5].startswith("cuSPARSE  50.00 us") and text[6].startswith("dense     40.00 us")


def test_sddmm_tuner_synthetic_objective_stores_a_faster_vendor_path_as_the_best(tmp_path):
    db = tmp_path / "t.sqlite"
    problem = SddmmProblem.random(64, 256, 32, 0.1, "fp32", seed=1)
    tuner = SyntheticSddmmTuner(problem, TuneOptions(trials=4, db=str(db), progress=False,
                                                     families=("sddmm_warp", "dense")))
    tuner.vendor_times = {"cusparse": 0.5, "dense": 0.25}
    assert tuner.vendors == ("dense",)
    report = tuner.finish(tuner.search())
    assert report["chosen"]["family"] == "dense" and report["chosen"]["vendor"]
    rows = sql(db, "SELECT op, family, time_us, is_best FROM sat_records ORDER BY id")
    assert rows == [("sddmm", "sddmm_warp", report["best"]["time_us"], 0), ("sddmm", "dense", 0.25, 1)]
    got = lookup_sddmm(64, 256, 32, 0.1, gpu=SYN_GPU, db=db)
    assert (got.family, got.config) == ("dense", {"math": "fp32"})


def test_sddmm_problem_from_a_mask_and_family_options():
    mask = sps.random(40, 70, density=0.2, format="coo", random_state=0)
    p = SddmmProblem.from_mask(mask, 33, "bf16")
    assert (p.m, p.n, p.k, p.nnz, p.pattern) == (40, 70, 33, mask.nnz, "matrix")
    assert p.key().startswith("SDDMM_M40_N70_K33_") and p.density == float(f"{mask.nnz / 2800:.6g}")
    assert split_sddmm_families(None) == (("sddmm_tile", "sddmm_warp", "sddmm_tc"), ("cusparse", "dense"))
    assert split_sddmm_families("sddmm_warp") == (("sddmm_warp",), ())
    with pytest.raises(UserError, match="unknown SDDMM kernel family 'tc_gather'"):
        split_sddmm_families("tc_gather")
    with pytest.raises(UserError, match="0x70|positive"):
        SddmmProblem.random(0, 70, 32, 0.1)
    with pytest.raises(UserError, match="all zeros"):
        SddmmProblem.from_mask(sps.csr_matrix((3, 4), dtype=np.float32), 8)


# ---- the dense path's gather kernel compiles (nvcc, no GPU) ----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_dense_gather_kernel_compiles(dtype):
    from sparse_autotune.device.compile import nvcc_check, nvcc_path
    if nvcc_path() is None or shutil.which("nvcc") is None:
        pytest.skip("no nvcc")
    nvcc_check(P.gather_source(dtype), "sm_80")
