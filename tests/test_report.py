"""`sparse-autotune report` from a small database fixture: PNGs exist and are non-empty, the markdown's numbers
are the database's."""
from __future__ import annotations

import datetime as dt
import hashlib

import optuna
import pytest
from records import GPU, downgrade_to_v2, make_record
from sqlalchemy.orm import Session
from test_cli import assert_one_line_error, run_cli

from sparse_autotune.tuning.suite import best_dense
from sparse_autotune.store.model_layers import ModelLayer, ensure_model_table
from sparse_autotune.commands.report import write_report
from sparse_autotune.store.db import TuningDB

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STUDY = "M64_K32_N128_d0.1_fp32_matrix|" + GPU + "|abcdef0123456789"
CONV_VALUES = [10.0, 8.0, 9.0, 5.0, 6.0, 5.5]

# (m, k, n, density, dtype): (tuned, cuSPARSE, FP32, TF32, FP16)
PROBLEMS = {
    (64, 32, 128, 0.1, "fp32"): (5.0, 10.0, 8.0, 6.0, 4.0),
    (48, 64, 128, 0.1, "fp32"): (4.0, 6.0, 3.0, None, 2.0),
    (64, 32, 128, 0.1, "fp16"): (3.0, 9.0, 8.0, 6.0, 4.5),
    (48, 64, 128, 0.1, "fp16"): (2.5, 5.0, 3.0, 2.0, 2.0),
}
LAYERS = [("enc.0.fc1.weight", 64, 32), ("enc.1.fc1.weight", 64, 32), ("head.weight", 48, 64)]


@pytest.fixture
def fixture_db(tmp_path):
    path = tmp_path / "fixture.sqlite"
    db = TuningDB(path)
    recs = {}
    for (m, k, n, d, dtype), (t, cs, f32, t32, f16) in PROBLEMS.items():
        name = STUDY if (m, dtype) == (64, "fp32") else f"M{m}_K{k}_N{n}_{dtype}|{GPU}|x"
        recs[(m, k, n, d, dtype)] = db.store(make_record(t, m=m, k=k, n=n, density=d, dtype=dtype, pattern="matrix",
                                                         cusparse_us=cs, cublas_fp32_us=f32, cublas_tf32_us=t32,
                                                         cublas_fp16_us=f16, study_name=name))
    # a slower, older record of one key: history, not used by the report
    db.store(make_record(50.0, m=64, k=32, n=128, density=0.1, dtype="fp32", pattern="matrix", study_name=STUDY,
                         created_at=dt.datetime(2024, 1, 1)))
    # suite records of other shapes (density plot)
    for i, d in enumerate((0.02, 0.05, 0.2)):
        db.store(make_record(10.0 + i, m=512, k=2048, n=256, density=d, dtype="fp32", cusparse_us=20.0 + i))
    ensure_model_table(db)
    with Session(db.engine) as s:
        for (m, k, n, d, dtype), rec in recs.items():
            for pos, (layer, lm, lk) in enumerate(LAYERS):
                if (lm, lk) != (m, k):
                    continue
                s.add(ModelLayer(model="toy", layer=layer, kind="linear", gpu_name=GPU, m=m, k=k, n=n, nnz=205,
                                 density=0.1001, problem_density=d, dtype=dtype, representative=LAYERS[0][0] if m == 64
                                 else layer, study_name=rec.study_name, status="done", record_id=rec.id,
                                 position=pos, updated_at=dt.datetime(2025, 1, 1)))
        s.commit()
    study = optuna.create_study(study_name=STUDY, storage=db.url)
    for v in CONV_VALUES:
        study.add_trial(optuna.trial.create_trial(value=v, params={}, distributions={}))
    db.dispose()
    return path


def _table_row(md: str, first_cells: list[str]) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[: len(first_cells)] == first_cells:
            return cells
    raise AssertionError(f"no row starting {first_cells}")


def test_report_pngs_and_numbers_match_the_database(fixture_db, tmp_path):
    out = tmp_path / "rep"
    res = write_report(str(fixture_db), out, model="toy")
    names = sorted(p.split("/")[-1] for p in res["png"])
    assert names == ["convergence.png", "density.png", "layers.png", "totals.png"]
    for n in names:
        data = (out / n).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 2000, n
    md = (out / "report.md").read_text()
    for n in names:
        assert f"]({n})" in md

    for (m, k, n, d, dtype), (t, cs, f32, t32, f16) in PROBLEMS.items():
        dense = best_dense({"dtype": dtype, "cublas_fp32_us": f32, "cublas_tf32_us": t32, "cublas_fp16_us": f16})
        for layer, lm, lk in LAYERS:
            if (lm, lk) != (m, k):
                continue
            row = _table_row(md, [layer, f"{m}x{k}", "0.1001", dtype, str(n)])
            assert row[5:10] == [f"{t:.2f}", f"{cs:.2f}", f"{dense:.2f}", f"{cs / t:.2f}", f"{dense / t:.2f}"], row
    for dtype in ("fp32", "fp16"):
        sel = [(v, key) for key, v in PROBLEMS.items() if key[4] == dtype]
        # two layers of 64x32 and one of 48x64
        mult = {64: 2, 48: 1}
        tot_t = sum(v[0] * mult[key[0]] for v, key in sel)
        tot_c = sum(v[1] * mult[key[0]] for v, key in sel)
        tot_d = sum(best_dense({"dtype": dtype, "cublas_fp32_us": v[2], "cublas_tf32_us": v[3],
                                "cublas_fp16_us": v[4]}) * mult[key[0]] for v, key in sel)
        row = _table_row(md, [dtype, "128"])
        assert row[2:8] == ["3/3", f"{tot_t:.2f}", f"{tot_c:.2f}", f"{tot_d:.2f}", f"{tot_c / tot_t:.2f}",
                            f"{tot_d / tot_t:.2f}"], row
    # convergence of the slowest problem's study (64x32 fp32: 2 layers x 5.0 us), from Optuna's trials
    assert res["study"] == STUDY
    assert [p[2] for p in res["convergence"]] == [10.0, 8.0, 8.0, 5.0, 5.0, 5.0]
    assert f"{len(CONV_VALUES)} completed trials, best 5.00 us" in md
    assert "7 records" in md  # 4 model problems + 3 suite records (best only)


def test_report_without_model_and_cli(fixture_db, tmp_path):
    proc = run_cli(["report", "--out", str(tmp_path / "r2"), "--db", str(fixture_db)], fixture_db)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r2" / "density.png").stat().st_size > 2000
    assert (tmp_path / "r2" / "convergence.png").stat().st_size > 2000  # the most-trials record with a stored study
    assert not (tmp_path / "r2" / "layers.png").exists()
    proc = run_cli(["report", "--out", str(tmp_path / "r3"), "--model", "nope", "--db", str(fixture_db)], fixture_db)
    assert_one_line_error(proc, "no model 'nope'", "toy")
    proc = run_cli(["report", "--out", str(tmp_path / "r4"), "--gpu", "A100", "--db", str(fixture_db)], fixture_db)
    assert_one_line_error(proc, "A100")


def _bf16_db(path) -> None:
    """Model "toy16": one bf16 layer, tuned 4.0 us, cuSPARSE 8.0 us, cuBLAS BF16 12.0 us; cuBLAS FP32, TF32 and FP16
    are faster (1.0, 1.5, 2.0 us) but are not the dense path of bf16."""
    db = TuningDB(path)
    rec = db.store(make_record(4.0, m=64, k=32, n=16, density=0.1, dtype="bf16", pattern="matrix", cusparse_us=8.0,
                               cublas_fp32_us=1.0, cublas_tf32_us=1.5, cublas_fp16_us=2.0, cublas_bf16_us=12.0,
                               study_name="bf16"))
    ensure_model_table(db)
    with Session(db.engine) as s:
        s.add(ModelLayer(model="toy16", layer="fc.weight", kind="linear", gpu_name=GPU, m=64, k=32, n=16, nnz=205,
                         density=0.1001, problem_density=0.1, dtype="bf16", representative="fc.weight",
                         study_name="bf16", status="done", record_id=rec.id, position=0,
                         updated_at=dt.datetime(2025, 1, 1)))
        s.commit()
    db.dispose()


def test_report_dense_path_of_bf16_is_cublas_bf16(tmp_path):
    path = tmp_path / "bf16.sqlite"
    _bf16_db(path)
    res = write_report(str(path), tmp_path / "rep", model="toy16")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert res["layers"][0]["best_dense_us"] == 12.0 and res["layers"][0]["vs_dense"] == 3.0
    assert _table_row(md, ["fc.weight", "64x32", "0.1001", "bf16", "16"])[5:10] == ["4.00", "8.00", "12.00", "2.00",
                                                                                   "3.00"]
    assert _table_row(md, ["bf16", "16"])[2:8] == ["1/1", "4.00", "8.00", "12.00", "2.00", "3.00"]
    assert "over the best dense path 3.00x" in md and "cuBLAS BF16 for bf16" in md
    # the same file as schema 2 wrote it (no cublas_bf16_us): read as it is, without writing; bf16's dense path is not
    # known (n/a), and FP16's time does not stand in for it
    downgrade_to_v2(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    res = write_report(str(path), tmp_path / "rep2", model="toy16")
    md = (tmp_path / "rep2" / "report.md").read_text()
    assert res["layers"][0]["best_dense_us"] is None and res["layers"][0]["vs_cusparse"] == 2.0
    assert _table_row(md, ["fc.weight", "64x32", "0.1001", "bf16", "16"])[5:10] == ["4.00", "8.00", "n/a", "2.00",
                                                                                   "n/a"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _suite_rec(m, density, dtype, tuned, cs, f32, t32, f16, floor):
    return {"M": m, "K": 256, "N": 128, "density": density, "dtype": dtype, "pattern": "uniform", "family": "csr_rowsplit",
            "config": {}, "tuned_us": tuned, "cusparse_us": cs, "cublas_fp32_us": f32, "cublas_tf32_us": t32,
            "cublas_fp16_us": f16, "floor_us": floor, "max_rel_err": 0.0, "gpu": GPU, "driver": "d", "cuda": "c",
            "cupy": "p"}


def test_suite_summary_targets_met_missed_and_by_how_much(tmp_path):
    """The suite report's target table: each target's value from the records, met or not, and the factor missing."""
    from sparse_autotune.tuning.suite import summary, write_report as write_suite
    recs = [_suite_rec(64, 0.1, "fp32", 10.0, 50.0, 50.0, 20.0, 8.0, 2.0),   # 5x over cuSPARSE, 5x over FP32
            _suite_rec(64, 0.05, "fp32", 10.0, 20.0, 40.0, 15.0, 8.0, 4.0),  # 2x, 4x over FP32, 1.5x best dense
            _suite_rec(128, 0.05, "fp16", 60.0, 120.0, 300.0, 100.0, 60.0, 20.0)]  # 1x best dense; tuned >= 50: 3x floor
    t = {x["target"]: x for x in summary(recs)["targets"]}
    assert t["fp32 speed-up over cuBLAS FP32 at d = 0.1"]["met"] is True
    assert t["fp32 speed-up over cuBLAS FP32 at d = 0.1"]["missing_factor"] is None
    low = t["fp32 speed-up over cuBLAS FP32 at d = 0.05"]
    assert low["met"] is False and abs(low["value"] - 4.0) < 1e-9 and abs(low["missing_factor"] - 1.5) < 1e-9
    dense = t["speed-up over the best dense path of the same dtype at d = 0.05"]  # geomean(1.5, 1.0)
    assert dense["met"] is False and abs(dense["value"] - 1.5 ** 0.5) < 1e-9
    floor = t["median tuned / floor where tuned >= 50 us"]
    assert floor["met"] is False and abs(floor["value"] - 3.0) < 1e-9 and abs(floor["missing_factor"] - 1.5) < 1e-9
    cs = t["geomean speed-up over cuSPARSE"]
    assert abs(cs["value"] - (5.0 * 2.0 * 2.0) ** (1 / 3)) < 1e-9 and cs["met"] is False
    # the cases at the goal on their own: 5x of (5x, 2x, 2x) over cuSPARSE; 1.5x of (1.5x, 1x) over dense at 0.05
    assert (cs["cases_at_goal"], cs["cases"]) == (1, 3)
    assert (dense["cases_at_goal"], dense["cases"]) == (1, 2)
    assert (floor["cases_at_goal"], floor["cases"]) == (0, 1)
    assert (low["cases_at_goal"], low["cases"]) == (0, 1)
    write_suite(recs, tmp_path / "suite-x", "dl", 10)
    md = (tmp_path / "suite-x.md").read_text()
    assert "Targets (3 of 10 cases)" in md and "| fp32 speed-up over cuBLAS FP32 at d = 0.05 | >= 6 | 4.00 | no | 1.50 | 0 of 1 |" in md
    assert "| 64 | 256 | 128 | 2 |" in md  # the by-shape table


def test_suite_targets_include_issue_18s_fp16_goals_at_n_512():
    """Issue 18's fp16 rows: the geomean over cuBLAS FP16 of the fp16 cases at N >= 512 of each density (0.02 / 0.05 /
    0.1 against 1.5 / 1.2 / 0.9); cases at N < 512, of other dtypes or densities do not count."""
    from sparse_autotune.tuning.suite import summary
    def rec(n, d, dtype, tuned, f16):
        return dict(_suite_rec(64, d, dtype, tuned, 50.0, 50.0, 20.0, f16, 2.0), N=n)
    recs = [rec(512, 0.05, "fp16", 10.0, 16.0), rec(2048, 0.05, "fp16", 10.0, 9.0),   # 1.6x, 0.9x
            rec(256, 0.05, "fp16", 10.0, 100.0), rec(1024, 0.05, "bf16", 10.0, 100.0),  # not about: N < 512, bf16
            rec(1024, 0.1, "fp16", 10.0, 9.5), rec(1024, 0.2, "fp16", 10.0, 1.0)]      # 0.95x at 0.1; 0.2: no goal
    t = {x["target"]: x for x in summary(recs)["targets"]}
    at05 = t["fp16 speed-up over cuBLAS FP16 at d = 0.05, N >= 512"]
    assert abs(at05["value"] - (1.6 * 0.9) ** 0.5) < 1e-9 and at05["goal"] == ">= 1.2" and at05["met"] is True
    assert (at05["cases_at_goal"], at05["cases"]) == (1, 2)
    at01 = t["fp16 speed-up over cuBLAS FP16 at d = 0.1, N >= 512"]
    assert abs(at01["value"] - 0.95) < 1e-9 and at01["met"] is True and at01["goal"] == ">= 0.9"
    at002 = t["fp16 speed-up over cuBLAS FP16 at d = 0.02, N >= 512"]
    assert at002["value"] is None and at002["met"] is None and at002["cases"] == 0
    assert not any("d = 0.2" in name for name in t)
