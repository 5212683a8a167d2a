"""Cold-aware winner choice: the cold_us column (schema 6), the one ranking rule (store.db.rank_us: cold where
measured, else warm) in the store, lookup, the vendor paths and the suite, `db set-cold`, and the tuner's finalists
(CPU: a synthetic objective and a synthetic cold timing, test only; the GPU test at the end is marked gpu)."""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from records import CONFIG, GPU, KEY, downgrade_to_v5, make_record, new_db, sql
from test_cli import assert_one_line_error, run_cli

from sparse_autotune.errors import UserError
from sparse_autotune.store import lookup as lk
from sparse_autotune.store.db import (SCHEMA_VERSION, ColdTime, TuningDB, describe_file, rank_us, record_uid)

GATHER = {"g": 1}  # two kernels of one key: warm-faster but cold-slower, and the other way round
BITMAP = {"b": 1}


def _bests(path: Path) -> list[tuple]:
    return sql(path, "SELECT family, config_json, time_us, cold_us FROM sat_records WHERE is_best ORDER BY id")


# ---- schema 6 --------------------------------------------------------------------------------------------------------


def test_schema_6_migrates_a_v5_file_keeping_records_and_uids(tmp_path):
    assert SCHEMA_VERSION == 6
    v5 = downgrade_to_v5(new_db(tmp_path / "v5.sqlite", make_record(10.0, GATHER), make_record(12.0, BITMAP)))
    assert "cold_us" not in [r[1] for r in sql(v5, "PRAGMA table_info(sat_records)")]
    info = describe_file(v5)
    assert info["schema_version"] == 5 and info["needs_migration"] and info["problems"] == []
    rows = sql(v5, "SELECT id, uid, is_best, time_us FROM sat_records ORDER BY id")
    digest = v5.read_bytes()
    # read-only: cold_us reads None, nothing written
    ro = TuningDB(v5, create=False, readonly=True)
    try:
        recs = ro.records()
        assert [r.cold_us for r in recs] == [None, None] and [r.uid for r in recs] == [u for _, u, _, _ in rows]
        assert ro.best(**KEY).time_us == 10.0 and recs[0].to_dict()["cold_us"] is None
        assert [r.cold_us for r in lk.db_best_rows(ro)] == [None]
    finally:
        ro.dispose()
    assert v5.read_bytes() == digest
    # writable: migrated in place, cold_us NULL, ids, uids and best flags kept
    TuningDB(v5).dispose()
    assert describe_file(v5)["schema_version"] == 6 and describe_file(v5)["problems"] == []
    assert [r[1] for r in sql(v5, "PRAGMA table_info(sat_records)")][-1] == "cold_us"
    assert sql(v5, "SELECT id, uid, is_best, time_us FROM sat_records ORDER BY id") == rows
    assert sql(v5, "SELECT cold_us FROM sat_records") == [(None,), (None,)]


def test_cold_us_is_not_part_of_the_uid():
    a, b = make_record(10.0, GATHER), make_record(10.0, GATHER, cold_us=14.4)
    assert record_uid(a) == record_uid(b)


# ---- the ranking rule ------------------------------------------------------------------------------------------------


def test_rank_us_is_cold_where_measured_else_warm():
    assert rank_us(make_record(10.2, cold_us=14.4)) == 14.4
    assert rank_us(make_record(10.6)) == 10.6
    assert rank_us({"time_us": 3.0, "cold_us": None}) == 3.0 and rank_us({"time_us": 3.0, "cold_us": 4.0}) == 4.0
    assert rank_us({"time_us": 3.0, "cold_us": float("nan")}) == 3.0  # not a measurement
    assert rank_us({"time_us": 3.0, "cold_us": 0.0}) == 3.0


def test_store_flags_the_fastest_cold_record_best(tmp_path):
    db = TuningDB(tmp_path / "r.sqlite")
    try:
        g = db.store(make_record(10.2, GATHER, cold_us=14.4))
        assert g.is_best
        b = db.store(make_record(10.6, BITMAP, cold_us=11.0))  # slower warm, faster cold: the best
        assert b.is_best and not db.get(g.id).is_best
        assert db.best(**KEY).id == b.id and db.best_sparse(**KEY).id == b.id
        # a record without a cold time competes with its warm time: 10.8 warm beats 11.0 cold
        w = db.store(make_record(10.8, {"w": 1}))
        assert w.is_best and db.best(**KEY).id == w.id
        s = db.store(make_record(11.5, {"s": 1}))  # 11.5 warm, no cold: slower than 10.8
        assert not s.is_best
    finally:
        db.dispose()
    assert describe_file(tmp_path / "r.sqlite")["problems"] == []


def test_db_check_knows_the_rule(tmp_path):
    path = new_db(tmp_path / "c.sqlite", make_record(10.2, GATHER, cold_us=14.4),
                  make_record(10.6, BITMAP, cold_us=11.0))
    assert describe_file(path)["problems"] == []
    con = sqlite3.connect(path)  # the warm ranking's choice flagged by hand: check says the other one is faster
    con.execute("UPDATE sat_records SET is_best = (id = 1)")
    con.commit()
    con.close()
    assert describe_file(path)["problems"] == ["record 1 is the best of its key, but record 2 is faster"]


def test_merge_and_export_carry_cold_us_and_rank_by_it(tmp_path):
    a = new_db(tmp_path / "a.sqlite", make_record(10.2, GATHER, cold_us=14.4))
    b = new_db(tmp_path / "b.sqlite", make_record(10.6, BITMAP, cold_us=11.0))
    db = TuningDB(a)
    try:
        res = db.merge_from(b)
        assert (res.added, res.new_best) == (1, 1)
        db.export(tmp_path / "out.sqlite")
    finally:
        db.dispose()
    for path in (a, tmp_path / "out.sqlite"):
        assert _bests(path) == [("csr_rowsplit", json.dumps(BITMAP), 10.6, 11.0)]
        assert sorted(sql(path, "SELECT cold_us FROM sat_records")) == [(11.0,), (14.4,)]


def test_derived_records_do_not_inherit_the_kernels_cold_time():
    rec = make_record(10.0, CONFIG, cold_us=12.0)
    assert rec.derived(family="dense", config_json='{"math": "fp32"}').cold_us is None
    assert rec.derived(family="dense", cold_us=9.0).cold_us == 9.0
    assert rec.to_dict()["cold_us"] == 12.0 and list(rec.to_dict()).index("cold_us") == \
        list(rec.to_dict()).index("time_us") + 1


def test_lookup_serves_the_cold_best(tmp_path):
    path = new_db(tmp_path / "l.sqlite", make_record(10.2, CONFIG, cold_us=14.4),
                  make_record(10.6, {**CONFIG, "vec": 2}, cold_us=11.0))
    lk.lookup.cache_clear()
    t = lk.lookup(**KEY, gpu=GPU, db=path, adapt=False)
    assert t.source == "exact" and t.config["vec"] == 2 and t.time_us == 10.6


# ---- the vendor paths ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dense_cold, wins", [(10.0, True), (13.0, False)])
def test_synthetic_finish_vendors_ranks_cublas_by_its_cold_time(tmp_path, dense_cold, wins):
    """The tuned kernel 7 us warm / 12 us cold; cuBLAS fp16 9 us warm (slower warm) and `dense_cold` cold: it wins
    where it is faster cold, and its record keeps its own cold time; cuSPARSE (not timed cold) competes warm."""
    from sparse_autotune.tuning.vendor import finish_vendors
    import optuna
    db = tmp_path / "v.sqlite"
    tdb = TuningDB(db)
    optuna.create_study(study_name="s", storage=tdb.url)
    try:
        rec = tdb.store(make_record(7.0, config=CONFIG, dtype="fp16", max_rel_err=1e-4, cold_us=12.0))
        measured = [{"family": "cusparse", "config": {"alg": "CUSPARSE_SPMM_CSR_ALG2"}, "time_us": 30.0,
                     "rel_err": 1e-4},
                    {"family": "dense", "config": {"math": "fp16"}, "time_us": 9.0, "rel_err": 3e-4}]
        cold = {"tuned_cold_us": 12.0, "dense_cold_us": dense_cold, "dense_cold_mode": "fp16"}
        out = finish_vendors(tdb, tdb.url, "s", rec, measured, cold=cold)
    finally:
        tdb.dispose()
    ch = out["chosen"]
    assert ch["family"] == ("dense" if wins else "csr_rowsplit")
    assert [c["cold_us"] for c in out["vendor_candidates"]] == [None, dense_cold]
    dense_rows = sql(db, "SELECT cold_us, is_best FROM sat_records WHERE family = 'dense'")
    assert dense_rows == ([(dense_cold, 1)] if wins else [])
    assert ch["sparse_over_chosen"] == pytest.approx(12.0 / (dense_cold if wins else 12.0))
    assert describe_file(db)["problems"] == []


# ---- the suite -------------------------------------------------------------------------------------------------------


def _case(**over) -> dict:
    from sparse_autotune.tuning.suite import suite_cases
    c = suite_cases("llm")[0]
    return {**c, "family": "tc_gather", "config": GATHER, "tuned_us": 10.2, "tuned_cold_us": 14.4,
            "dense_cold_us": 13.0, "trials": 20, "gpu": GPU, **over}


def test_suite_fastest_wins_by_the_cold_time(tmp_path):
    from sparse_autotune.tuning.suite import merge_records, ranking_us
    warm_best = _case()
    cold_best = _case(family="tc_bitmap", config=BITMAP, tuned_us=10.6, tuned_cold_us=11.0)
    no_cold = _case(family="csr_gemv", config={}, tuned_us=10.9, tuned_cold_us=None)
    assert ranking_us(warm_best) == 14.4 and ranking_us(no_cold) == 10.9 and ranking_us({}) == float("inf")
    paths = []
    for i, r in enumerate((warm_best, cold_best)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps([r]))
    assert merge_records(paths, "llm", fastest_wins=True)[0]["family"] == "tc_bitmap"
    paths[0].write_text(json.dumps([no_cold]))  # no cold time: competes with its warm 10.9 < 11.0
    assert merge_records(paths, "llm", fastest_wins=True)[0]["family"] == "csr_gemv"


# ---- db set-cold -----------------------------------------------------------------------------------------------------


@pytest.fixture
def warm_db(tmp_path) -> Path:
    """A version-5 file tuned warm: tc_gather the best (10.2 warm), tc_bitmap history (10.6), and the fp16 key's
    cuBLAS record (12.0 warm): the case of the suite below; and a record of another key."""
    from sparse_autotune.tuning.suite import suite_cases
    c = suite_cases("llm")[0]
    key = dict(m=c["M"], k=c["K"], n=c["N"], density=c["density"], dtype=c["dtype"], pattern=c["pattern"])
    path = new_db(tmp_path / "w.sqlite", make_record(10.2, GATHER, family="tc_gather", **key),
                  make_record(10.6, BITMAP, family="tc_bitmap", **key),
                  make_record(12.0, {"math": c["dtype"]}, family="dense", **key),
                  make_record(5.0, CONFIG))
    return downgrade_to_v5(path)


def test_set_cold_fills_cold_times_and_reflags_the_best(warm_db, tmp_path):
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps([_case(family="tc_bitmap", config=BITMAP, tuned_us=10.6, tuned_cold_us=11.0,
                                       dense_cold_us=13.0),
                                 _case(N=999, tuned_cold_us=1.0)]))  # no such key in the file: matched nothing
    uids = sql(warm_db, "SELECT uid FROM sat_records ORDER BY id")
    assert sql(warm_db, "SELECT family FROM sat_records WHERE is_best ORDER BY id")[0] == ("tc_gather",)
    proc = run_cli(["db", "set-cold", "--db", str(warm_db), "--from", str(suite)], tmp_path / "none.sqlite")
    assert proc.returncode == 0, proc.stderr
    # the N=999 case's two cold times (its kernel's, its cuBLAS's) matched nothing
    assert "set 2 cold times" in proc.stdout and "2 of 4" in proc.stdout and "best changed in 0" in proc.stdout
    assert sql(warm_db, "SELECT family, cold_us FROM sat_records ORDER BY id") == [
        ("tc_gather", None), ("tc_bitmap", 11.0), ("dense", 13.0), ("csr_rowsplit", None)]
    # tc_gather competes with its warm 10.2 (no cold time): still faster than tc_bitmap's 11.0 cold
    assert [b[0] for b in _bests(warm_db)] == ["tc_gather", "csr_rowsplit"]
    suite.write_text(json.dumps([_case()]))  # the winner's own cold time, 14.4: tc_bitmap is the best now
    proc = run_cli(["db", "set-cold", "--db", str(warm_db), "--from", str(suite)], tmp_path / "none.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert "set 1 cold time " in proc.stdout and "(1 already so)" in proc.stdout and "best changed in 1" in proc.stdout
    assert [b[0] for b in _bests(warm_db)] == ["tc_bitmap", "csr_rowsplit"]
    assert sql(warm_db, "SELECT uid FROM sat_records ORDER BY id") == uids
    assert describe_file(warm_db)["problems"] == [] and describe_file(warm_db)["schema_version"] == 6


@pytest.mark.parametrize("content, needle", [
    ("not json", "cannot read"),
    ('{"cases": []}', "not a suite report"),
    (json.dumps([{"M": 1}]), "record 0 has no"),
    (json.dumps([{**{"M": 4096, "K": 4096, "N": 1, "density": 0.5, "dtype": "fp16", "pattern": "uniform",
                     "family": "x", "config": {}, "gpu": GPU}, "tuned_cold_us": -1}]), "not a positive number"),
    (json.dumps([{"M": 4096, "K": 4096, "N": 1, "density": 0.5, "dtype": "fp16", "pattern": "uniform",
                  "family": "x", "config": {}, "gpu": GPU}]), "no cold times"),
])
def test_set_cold_bad_input_is_one_line_and_leaves_the_file(warm_db, tmp_path, content, needle):
    suite = tmp_path / "bad.json"
    suite.write_text(content)
    digest = hashlib.sha256(warm_db.read_bytes()).hexdigest()
    proc = run_cli(["db", "set-cold", "--db", str(warm_db), "--from", str(suite)], tmp_path / "none.sqlite")
    assert_one_line_error(proc, needle)
    assert hashlib.sha256(warm_db.read_bytes()).hexdigest() == digest
    assert describe_file(warm_db)["schema_version"] == 5  # not even migrated


def test_set_cold_refuses_a_missing_database(tmp_path):
    suite = tmp_path / "s.json"
    suite.write_text(json.dumps([_case()]))
    proc = run_cli(["db", "set-cold", "--db", str(tmp_path / "no.sqlite"), "--from", str(suite)],
                   tmp_path / "none.sqlite")
    assert_one_line_error(proc, "does not exist")
    assert not (tmp_path / "no.sqlite").exists()


def test_set_cold_from_a_recold_output_adds_the_timed_configs_it_lacks(warm_db, tmp_path):
    """A recold output (one run's warm and cold times of several configs of a case, its GPU in the header): every
    timed config's cold time set; with --add a config the file lacks becomes a record (origin recold, derived from the
    key's best) and wins by that run's times; rows not timed are left out; without --add nothing is added."""
    c = _case()
    keys = {k: c[k] for k in ("M", "K", "N", "density", "dtype", "pattern")}
    twin = {**GATHER, "x": 1}
    rows = [{**keys, "family": "tc_gather", "config": GATHER, "tuned_us": 10.3, "tuned_cold_us": 12.5,
             "dense_cold_us": 13.1, "rel_err": 1e-4},
            {**keys, "family": "tc_gather", "config": twin, "tuned_us": 9.9, "tuned_cold_us": 10.4,
             "dense_cold_us": 13.2, "rel_err": 2e-4},
            {**keys, "family": "tc_gather", "config": {**GATHER, "x": 3}, "tuned_us": 9.8, "tuned_cold_us": 10.9,
             "dense_cold_us": 13.3, "rel_err": 2e-4},  # slower cold than the twin: never a best, not added
            {**keys, "family": "tc_gather", "config": {**GATHER, "x": 2}, "error": "RuntimeError: failed"},
            {**keys, "family": "tc_bitmap", "config": BITMAP, "skipped": "budget"}]
    out = tmp_path / "recold.json"
    out.write_text(json.dumps({"gpu": GPU, "cc": "9.0", "rows": rows}))
    n0 = len(sql(warm_db, "SELECT id FROM sat_records"))
    proc = run_cli(["db", "set-cold", "--db", str(warm_db), "--from", str(out)], tmp_path / "none.sqlite")
    assert proc.returncode == 0, proc.stderr
    # the winner's and cuBLAS's (once: the median of the rows' 13.1, 13.2 and 13.3); the twins matched nothing
    assert "set 2 cold times" in proc.stdout and "2 of 4" in proc.stdout and "added" not in proc.stdout
    assert len(sql(warm_db, "SELECT id FROM sat_records")) == n0
    assert sql(warm_db, "SELECT cold_us FROM sat_records WHERE family = 'dense'") == [(pytest.approx(13.2),)]
    assert _bests(warm_db)[0][0] == "tc_bitmap"  # 10.6 warm (no cold time) against tc_gather's 12.5 cold
    proc = run_cli(["db", "set-cold", "--db", str(warm_db), "--from", str(out), "--add"], tmp_path / "none.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert "added 1 record " in proc.stdout and "1 of 4" in proc.stdout and "best changed in 1" in proc.stdout
    got = sql(warm_db, "SELECT config_json, time_us, cold_us, max_rel_err, trials, origin, is_best, matrix_hash "
                       "FROM sat_records WHERE family = 'tc_gather' ORDER BY id")
    assert [(json.loads(g[0]), g[1], g[2], g[3], g[4], g[5], g[6]) for g in got] == [
        (GATHER, 10.2, 12.5, got[0][3], got[0][4], got[0][5], 0), (twin, 9.9, 10.4, 2e-4, 0, "recold", 1)]
    assert got[1][7] == got[0][7]  # the key's matrix
    assert describe_file(warm_db)["problems"] == []
    proc = run_cli(["db", "set-cold", "--db", str(warm_db), "--from", str(out), "--add"], tmp_path / "none.sqlite")
    assert "added 0 records" in proc.stdout and len(sql(warm_db, "SELECT id FROM sat_records")) == n0 + 1


def test_set_cold_api_counts(tmp_path):
    path = new_db(tmp_path / "a.sqlite", make_record(10.2, GATHER), make_record(10.6, BITMAP))
    db = TuningDB(path)
    try:
        t = dict(gpu_name=GPU, **KEY, pattern="uniform", family="csr_rowsplit")
        res = db.set_cold([ColdTime(**t, config=GATHER, cold_us=14.4), ColdTime(**t, config=BITMAP, cold_us=11.0)])
        assert (res.set, res.unchanged, res.unmatched, res.keys, res.new_best) == (2, 0, 0, 1, 1)
        assert db.best(**KEY).config == BITMAP
    finally:
        db.dispose()


# ---- the tuner's finalists (synthetic objective and synthetic cold timing: test only) --------------------------------


def test_finalists_of_takes_the_warm_best_and_close_distinct_configs():
    from sparse_autotune.tuning.search import SearchResult
    from sparse_autotune.tuning.tuner import finalists_of
    ranked = [("a", {"x": 1}, 10.0), ("b", {"x": 2}, 10.5), ("a", {"x": 3}, 12.0), ("c", {"x": 4}, 12.9),
              ("d", {"x": 5}, 12.95), ("e", {"x": 6}, 13.5)]
    res = SearchResult("s", 10.0, "a", {"x": 1}, 6, 0, 0, 6, "budget", ranked)
    assert [(f.family, f.warm_us) for f in finalists_of(res)] == [("a", 10.0), ("b", 10.5), ("a", 12.0), ("c", 12.9)]
    assert [f.family for f in finalists_of(res, limit=10)] == ["a", "b", "a", "c", "d"]  # 13.5 > 1.3 x 10
    assert finalists_of(SearchResult("s", None, None, None, 0, 0, 0, 0, "budget")) == []


def _synthetic_tuner_class():
    from synthetic import SyntheticTuner, synthetic_value

    class ColdSyntheticTuner(SyntheticTuner):
        """Synthetic cold time: another hash of the config (test only), so that the warm order is not the cold one;
        configs in `fail` raise."""
        fail: set = set()
        timed: list = []

        def time_cold(self, f):
            self.timed.append((f.family, json.dumps(f.config, sort_keys=True)))
            if json.dumps(f.config, sort_keys=True) in self.fail:
                raise RuntimeError("synthetic cold failure")
            return synthetic_value(f.family + "#cold", f.config) * 2, 3
    return ColdSyntheticTuner


def _synthetic_search(tmp_path, rank="cold"):
    from sparse_autotune.core.problem import Problem
    from sparse_autotune.tuning.tuner import TuneOptions
    cls = _synthetic_tuner_class()
    cls.fail, cls.timed = set(), []
    opts = TuneOptions(trials=24, db=str(tmp_path / "t.sqlite"), progress=False, families=("csr_rowsplit",),
                       warm_start=False, rank=rank)
    tuner = cls(Problem.random(64, 256, 16, 0.1, "fp32", "uniform", seed=0), opts, log=tuner_log.append)
    return tuner, tuner.search()


tuner_log: list = []


def test_synthetic_tuner_winner_is_the_fastest_cold_finalist(tmp_path):
    from sparse_autotune.tuning.tuner import FINALIST_WITHIN, FINALISTS
    tuner_log.clear()
    tuner, res = _synthetic_search(tmp_path)
    assert res.ranked[0][:2] == (res.best_family, res.best_config) and len(res.ranked) >= 2
    chosen, finals, winner = tuner.choose_finalist(res)
    try:
        assert 1 <= len(finals) <= FINALISTS and finals[0].config == res.best_config
        assert all(f.warm_us <= res.best_value * FINALIST_WITHIN for f in finals)
        assert len({json.dumps(f.config, sort_keys=True) for f in finals}) == len(finals)
        assert winner is min(finals, key=lambda f: f.cold_us) and all(f.cold_copies == 3 for f in finals)
        assert (chosen.best_family, chosen.best_config, chosen.best_value) == (winner.family, winner.config,
                                                                               winner.warm_us)
        assert len(tuner.timed) == len(finals)  # each timed once
        assert tuner_log[-1].startswith("finalists timed cold: ") and tuner_log[-1].endswith(f"-> {winner.family}")
        assert [d["cold_us"] for d in (f.as_dict() for f in finals)] == [f.cold_us for f in finals]
    finally:
        tuner.db.dispose()


def test_synthetic_tuner_keeps_the_warm_best_when_cold_timing_fails(tmp_path):
    tuner, res = _synthetic_search(tmp_path)
    type(tuner).fail = {json.dumps(c, sort_keys=True) for _, c, _ in res.ranked}
    try:
        chosen, finals, winner = tuner.choose_finalist(res)
        assert winner is finals[0] and chosen is res and all(f.error and f.cold_us is None for f in finals)
        assert "synthetic cold failure" in finals[0].as_dict()["cold_error"]
    finally:
        tuner.db.dispose()


def test_synthetic_tuner_rank_warm_times_nothing_cold(tmp_path):
    tuner, res = _synthetic_search(tmp_path, rank="warm")
    try:
        assert tuner.choose_finalist(res) == (res, [], None) and tuner.timed == []
    finally:
        tuner.db.dispose()


def test_gpu_tuner_finish_with_stubbed_gpu_steps_stores_the_cold_winner(tmp_path, monkeypatch):
    """GpuTuner.finish on the CPU with its GPU steps stubbed (as tests/test_bf16.py does; synthetic times, test only):
    with rank cold the finalists are timed cold once each, the fastest cold one is verified, timed and stored with
    its cold time (not timed cold again), cuBLAS of the problem's precision gets its cold time on its record, and the
    report lists the finalists."""
    import contextlib
    import types

    import sparse_autotune.device.baselines as baselines
    import sparse_autotune.device.ceilings as ceilings
    import sparse_autotune.device.cold as cold
    import sparse_autotune.device.gpu as gpu
    import sparse_autotune.device.timing as timing
    import sparse_autotune.device.verify as verify
    from sparse_autotune.commands.main import _report_text
    from sparse_autotune.core.problem import Problem
    from sparse_autotune.tuning.search import SearchResult
    from sparse_autotune.tuning.tuner import GpuTuner, TuneOptions

    cold_of = {"tc_gather": 14.4, "tc_bitmap": 11.0, "csr_rowsplit": 12.5}  # H200 4096x4096 N=16's, and a third
    kernels = []
    monkeypatch.setattr(baselines, "time_baselines", lambda ctx, log: {
        "cusparse_us": 30.0, "cusparse_alg": "alg", "cublas_fp32_us": 40.0, "cublas_tf32_us": 20.0,
        "cublas_fp16_us": 12.0, "baseline_errors": {},
        "vendor": [{"family": "dense", "config": {"math": "fp16"}, "time_us": 12.0, "rel_err": 1e-3}]})
    monkeypatch.setattr(ceilings, "ceilings", lambda: {"copy_GBps": 3000.0, "fma_fp32_TFLOPs": 60.0,
                                                       "fma_fp16_TFLOPs": 120.0})
    monkeypatch.setattr(timing, "time_launches", lambda fns: types.SimpleNamespace(median_us=10.6, spread=0.01,
                                                                                   method="graph"))
    monkeypatch.setattr(verify, "check", lambda run, c, ref, dtype: 1e-3)
    monkeypatch.setattr(cold, "time_kernel_cold", lambda kern, ctx: (types.SimpleNamespace(
        median_us=cold_of[kern.family]), 7))
    monkeypatch.setattr(cold, "time_dense_cold", lambda ctx: (types.SimpleNamespace(median_us=13.0), 5, "fp16"))
    pool = types.SimpleNamespace(free_all_blocks=lambda: None)
    monkeypatch.setattr(gpu, "cupy", lambda: types.SimpleNamespace(get_default_memory_pool=lambda: pool))

    class Turn:
        held_s = 0.0

        def __call__(self):
            return contextlib.nullcontext()

    def prepare(family, cfg):
        kernels.append(family)
        return types.SimpleNamespace(family=family, a_bytes=lambda: 1000)

    t = GpuTuner.__new__(GpuTuner)  # no GPU: what __init__ would set, by hand
    t.problem = Problem.random(64, 256, 16, 0.2, "fp16")
    t.opts = TuneOptions(trials=3, db=str(tmp_path / "t.sqlite"))
    t.db, t.t_start, t.interrupted = TuningDB(t.opts.db), 0.0, False
    logged = []
    t.log = logged.append
    t.info = types.SimpleNamespace(name=GPU, cc="9.0", versions=lambda: {
        "gpu": GPU, "cc": "9.0", "driver": "d", "cuda": "c", "cupy": "p"})
    t.gpu_name, t.turn, t.given_up = GPU, Turn(), 0
    t.turn_s = {"init": 0.0, "trials": 0.0, "verify": 0.0, "time": 0.0, "finish": 0.0}
    t.ctx = types.SimpleNamespace(fresh_check=lambda: (0, 0), b_bufs=[0], c=None, problem=t.problem)
    t.prepare = prepare
    t.vendors = ("dense",)
    ranked = [("tc_gather", GATHER, 10.2), ("tc_bitmap", BITMAP, 10.6), ("csr_rowsplit", CONFIG, 13.0),
              ("csr_rowsplit", {**CONFIG, "vec": 2}, 14.0)]  # 14.0 > 1.3 x 10.2: not a finalist
    res = SearchResult("study", 10.2, "tc_gather", GATHER, 4, 0, 0, 4, "trial budget", ranked)
    report = t.finish(res)
    assert kernels == ["tc_gather", "tc_bitmap", "csr_rowsplit"]  # each built once: the winner's kernel reused
    assert [(f["family"], f["cold_us"]) for f in report["finalists"]] == [
        ("tc_gather", 14.4), ("tc_bitmap", 11.0), ("csr_rowsplit", 12.5)]
    assert logged[0] == ("finalists timed cold: tc_gather 14.40 us, tc_bitmap 11.00 us, csr_rowsplit 12.50 us "
                         "-> tc_bitmap")
    assert report["rank"] == "cold" and report["best"]["family"] == "tc_bitmap"
    assert report["best"]["search_time_us"] == 10.6 and report["best"]["cold_us"] == 11.0
    assert report["cold"]["tuned_cold_us"] == 11.0 and report["cold"]["cold_copies"] == 7
    assert report["cold"]["dense_cold_us"] == 13.0
    assert "finalists tc_gather 10.20 us warm / 14.40 us cold" in _report_text(report)
    db = Path(t.opts.db)
    assert sql(db, "SELECT family, time_us, cold_us, is_best FROM sat_records ORDER BY id") == [
        ("tc_bitmap", 10.6, 11.0, 1)]  # cuBLAS: 12.0 warm / 13.0 cold, slower cold than 11.0: no record
    assert report["chosen"]["family"] == "tc_bitmap"
    assert [c["cold_us"] for c in report["vendor_candidates"]] == [13.0]


def test_rank_option_is_checked_and_carried_to_the_workers(tmp_path):
    from sparse_autotune.tuning.options import check_rank
    from sparse_autotune.tuning.queue import random_spec
    with pytest.raises(UserError, match="unknown rank"):
        check_rank("hot")
    assert "rank" not in random_spec(64, 64, 8, 0.1, "fp32", "uniform", 0, 4, None, "tpe", None)  # keys as before
    assert random_spec(64, 64, 8, 0.1, "fp32", "uniform", 0, 4, None, "tpe", None, rank="warm")["rank"] == "warm"
    proc = run_cli(["tune", "--shape", "64x64", "--density", "0.1", "--rank", "hot"], tmp_path / "u.sqlite")
    assert_one_line_error(proc, "rank")
    proc = run_cli(["tune", "--op", "sddmm", "--shape", "64x64", "--density", "0.1", "--rank", "warm"],
                   tmp_path / "u.sqlite")
    assert_one_line_error(proc, "--rank warm")
    assert not (tmp_path / "u.sqlite").exists()


# ---- GPU -------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_tune_rank_cold_stores_the_cold_time_and_reports_the_finalists(tmp_path):
    """A small fp16 problem tuned with the default --rank cold: the record keeps the winner's cold time, the report
    lists the finalists (the warm best first) with their cold times, and the winner is the fastest of them cold."""
    import subprocess
    import sys
    db = tmp_path / "g.sqlite"
    cmd = [sys.executable, "-m", "sparse_autotune", "tune", "--shape", "1024x1024", "--density", "0.2", "--n", "16",
           "--dtype", "fp16", "--trials", "16", "--db", str(db), "--json", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["rank"] == "cold" and rep["finalists"]
    fin = rep["finalists"]
    timed = [f for f in fin if f["cold_us"] is not None]
    assert timed and all(f["cold_us"] > 0 for f in timed)
    assert fin[0]["warm_us"] == min(f["warm_us"] for f in fin)
    best = min(timed, key=lambda f: f["cold_us"])
    assert (rep["best"]["family"], rep["best"]["config"]) == (best["family"], best["config"])
    assert rep["cold"]["tuned_cold_us"] == best["cold_us"] == rep["best"]["cold_us"]
    assert sql(db, "SELECT cold_us FROM sat_records WHERE id = ?", (rep["record_id"],)) == [(best["cold_us"],)]
    assert "finalists timed cold:" in proc.stderr


def test_set_cold_matches_a_stored_config_by_the_kernel_it_builds(tmp_path):
    """db set-cold compares configs as their family normalizes them: a record stored before a parameter existed (no
    pmap) takes the cold time of a row that names the parameter's default (pmap 0), and is not added again."""
    from sparse_autotune.commands.db import normalized_config
    old = {"bn": 64, "kc": 4, "dec": "lane", "wg": 1, "stages": 6, "splitk": 4, "wait": 1, "minb": 1, "ws": 1,
           "tma": 2, "red": 0}
    assert normalized_config("tc_wgmma", "fp16", json.dumps(old)) == \
        normalized_config("tc_wgmma", "fp16", json.dumps({**old, "pmap": 0})) != \
        normalized_config("tc_wgmma", "fp16", json.dumps({**old, "pmap": 1}))
    assert normalized_config("dense", "fp16", '{"math": "fp16"}') == '{"math":"fp16"}'
    key = {**KEY, "dtype": "fp16"}
    path = new_db(tmp_path / "a.sqlite", make_record(10.2, old, family="tc_wgmma", dtype="fp16"))
    db = TuningDB(path)
    try:
        t = dict(gpu_name=GPU, **key, pattern="uniform", family="tc_wgmma", time_us=9.0, max_rel_err=1e-4)
        res = db.set_cold([ColdTime(**t, config={**old, "pmap": 0}, cold_us=14.3),
                           ColdTime(**t, config={**old, "pmap": 1}, cold_us=13.3)], add=True, same=normalized_config)
        assert (res.set, res.added, res.unmatched, res.new_best) == (1, 1, 0, 1)
        assert db.best(**key).config == {**old, "pmap": 1} and db.best(**key).origin == "recold"
    finally:
        db.dispose()
