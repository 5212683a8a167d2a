"""The search benchmark (tuning/searchbench.py, `bench --suite search`) on the CPU: the measure phase driven by a fake
measurer over SYNTHETIC timings (no GPU), its resume, the replay of the project's Search on a SYNTHETIC measured table
whose optimum is known, the regret numbers and the target verdict, the report files, the CLI's errors, and the
problem set and subspaces that the GPU will measure."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from sparse_autotune.commands.main import main
from sparse_autotune.core import space
from sparse_autotune.core.problem import nnz_of
from sparse_autotune.errors import CandidateError, UserError
from sparse_autotune.tuning import searchbench as sb

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

ROOT = Path(__file__).resolve().parent.parent
TINY = sb.BenchProblem("tiny-fp16", 64, 128, 16, 0.1, "fp16", "uniform", "a synthetic test problem")
# tc_gather at N = 16: 1908 feasible configs; with a cap of 50 it is measured on this subspace of 48 (one known-good)
SUB = {"tc_gather": {"rn": [1, 2], "ksplit": [2, 4, 8], "unroll": [1, 2], "bload": ["vec", "scalar"],
                     "row_order": ["natural"], "afmt": ["dense"]}}
CAP = 50
OPTIMUM = {"bload": "vec", "ksplit": 4, "nt": 1, "prefetch": 1, "rn": 2, "unroll": 2, "row_order": "natural",
           "afmt": "dense"}
FAILING = {"bload": "scalar", "ksplit": 2, "nt": 1, "prefetch": 0, "rn": 1, "unroll": 1, "row_order": "natural",
           "afmt": "dense"}
SEED = ("tc_gather", {"bload": "scalar", "ksplit": 8, "nt": 1, "prefetch": 0, "rn": 2, "unroll": 1,
                      "row_order": "natural", "afmt": "dense"})


def synthetic_us(cfg: dict) -> float:
    """A SYNTHETIC time: 10 us at OPTIMUM, more for every parameter away from it."""
    sp = space.get_space("tc_gather")
    us = 10.0
    for name, want in OPTIMUM.items():
        ch = sorted(sp.param(name).choices("fp16"), key=str)
        us *= 1.0 + 0.1 * abs(ch.index(cfg[name]) - ch.index(want)) if name != "bload" else (
            1.0 if cfg[name] == want else 1.3)
    return us


class FakeMeasurer:
    """A synthetic measurer standing in for TunerMeasurer (no GPU): synthetic_us, FAILING fails to compile, every
    evaluation recorded in `calls`; raises KeyboardInterrupt at evaluation number `stop_at` (a run cut short)."""

    def __init__(self, problem, calls: list, stop_at: int | None = None, seeds=(SEED,)):
        self.spaces = [space.get_space("tc_gather")]
        self.limits = dict(space.DEFAULT_LIMITS)
        self.batch = 2
        self.calls, self.stop_at, self._seeds = calls, stop_at, list(seeds)
        self.closed = False

    def seeds(self):
        return self._seeds

    def prepare(self, family, cfg):
        if cfg == FAILING:
            raise CandidateError("compile", "synthetic compile error")
        return ("built", family)

    def evaluate(self, family, cfg, prepared, best_us):
        assert prepared == ("built", family)
        if self.stop_at is not None and len(self.calls) + 1 >= self.stop_at:
            raise KeyboardInterrupt
        self.calls.append(sb.config_key(family, cfg))
        return synthetic_us(cfg), {"timing": "graph"}

    def close(self):
        self.closed = True


def measure_tiny(path: Path, calls: list, **kw) -> dict:
    return sb.measure([TINY], path, lambda p: FakeMeasurer(p, calls, **kw), subspaces=SUB, cap=CAP,
                      log=lambda m: None)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> dict:
    """A SYNTHETIC measured table of TINY (48 configs, one failed), measured once for the module."""
    return measure_tiny(tmp_path_factory.mktemp("table") / "search-x-measured.json", [])


def expected_keys() -> set[str]:
    sub = sb.restrict(space.get_space("tc_gather"), SUB["tc_gather"], "fp16")
    env = space.problem_env(TINY.m, TINY.k, TINY.n, nnz_of(TINY.m, TINY.k, TINY.density), "fp16")
    return {sb.config_key("tc_gather", c) for c in sub.feasible("fp16", env, space.DEFAULT_LIMITS)}


# ---- the measure phase ---------------------------------------------------------------------------------------------

def test_synthetic_measure_covers_the_subspace_once_and_resumes_without_remeasuring(tmp_path):
    path = tmp_path / "search-x-measured.json"
    first: list = []
    with pytest.raises(KeyboardInterrupt):  # the run is cut at its 11th evaluation
        measure_tiny(path, first, stop_at=11)
    saved = json.loads(path.read_text())["problems"][TINY.name]
    assert not saved["complete"] and len(first) == 10
    failing = sb.config_key("tc_gather", FAILING)  # a compile error: recorded, never evaluated
    assert set(saved["results"]) - {failing} == set(first)  # what was measured before the cut is kept
    # seeds first, then the known-good configs inside the subspace (as the tuner tries them first)
    assert first[0] == sb.config_key(*SEED)
    kg = [sb.config_key("tc_gather", c) for c in space.get_space("tc_gather").known_good if c.get("nt") == 1]
    assert first[1] == kg[0]

    second: list = []
    done = measure_tiny(path, second)["problems"][TINY.name]
    assert not set(first) & set(second)  # nothing measured twice
    assert len(first) + len(second) + 1 == len(expected_keys()) == 48  # +1: FAILING never reached evaluate
    assert set(done["results"]) == expected_keys() and done["complete"]
    assert done["results"][failing]["stage"] == "compile"
    fam = done["families"]["tc_gather"]
    assert fam["subspace"] == SUB["tc_gather"] and fam["configs"] == 48 and fam["feasible_full"] == 1908
    assert done["batch"] == 2 and done["seeds"] == [list(SEED)]

    third: list = []
    measure_tiny(path, third)
    assert third == []  # a complete problem is skipped


def test_synthetic_measure_refuses_a_table_of_another_matrix_and_a_broken_file(tmp_path):
    path = tmp_path / "search-x-measured.json"
    measure_tiny(path, [])
    t = json.loads(path.read_text())
    t["problems"][TINY.name]["complete"] = False
    t["problems"][TINY.name]["problem"]["matrix_hash"] = "0" * 16
    path.write_text(json.dumps(t))
    logged = []
    sb.measure([TINY], path, lambda p: FakeMeasurer(p, []), subspaces=SUB, cap=CAP, log=logged.append)
    assert any("measured on another matrix" in m for m in logged)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not a readable search table"):
        sb.load_table(path)


def test_family_plan_uses_the_subspace_only_above_the_cap():
    tc = space.get_space("tc_gather")
    env = space.problem_env(64, 128, 16, 819, "fp16")
    plan = sb.family_plan([tc], "fp16", env, space.DEFAULT_LIMITS, SUB, cap=CAP)
    sub, narrow, full, n = plan["tc_gather"]
    assert (narrow, full, n) == (SUB["tc_gather"], 1908, 48)
    assert sub.param("ksplit").choices("fp16") == [2, 4, 8] and tc.param("ksplit").choices("fp16") == [1, 2, 4, 8, 16]
    assert sb.family_plan([tc], "fp16", env, space.DEFAULT_LIMITS, SUB, cap=2000)["tc_gather"][1] is None
    with pytest.raises(UserError, match="no subspace"):
        sb.family_plan([tc], "fp16", env, space.DEFAULT_LIMITS, {}, cap=CAP)
    with pytest.raises(UserError, match="subspace has 48"):
        sb.family_plan([tc], "fp16", env, space.DEFAULT_LIMITS, SUB, cap=40)
    rs = sb.restrict(space.get_space("csr_rowsplit"), sb.SUBSPACES["csr_rowsplit"], "fp16")
    assert rs.param("vec").choices("fp16") == [2, 4] and rs.param("chunk").when == "stage == 'smem'"


# ---- the problem set and the subspaces the GPU measures ------------------------------------------------------------

def test_the_problem_set_covers_the_brief_and_its_subspaces_stay_under_the_cap():
    ps = sb.PROBLEMS
    assert len(ps) >= 8 and len({p.name for p in ps}) == len(ps)
    assert {p.dtype for p in ps} == {"fp32", "fp16"}
    assert {"uniform", "powerlaw"} <= {p.pattern for p in ps}
    real = [p for p in ps if p.pattern == sb.MINILM]
    assert len(real) >= 2 and all(p.layer.endswith(".weight") for p in real) and {p.dtype for p in real} == {"fp32", "fp16"}
    assert min(p.n for p in ps) <= 16 and max(p.n for p in ps) >= 1024
    for p in ps:
        env = space.problem_env(p.m, p.k, p.n, nnz_of(p.m, p.k, p.density), p.dtype)
        for s in space.select_spaces(None):
            if s.supports(p.dtype):
                measured = sb.restrict(s, sb.SUBSPACES.get(s.family), p.dtype)
                n = sum(1 for _ in measured.feasible(p.dtype, env, space.DEFAULT_LIMITS))
                assert n <= sb.CAP, (p.name, s.family, n)


def test_minilm_problem_reads_its_real_layer_from_the_bundle_and_says_how_to_make_a_missing_one(tmp_path, monkeypatch):
    import numpy as np
    import scipy.sparse as sp
    from sparse_autotune.core.checkpoint import Layer, save_bundle
    w = sp.random(48, 96, density=0.05, format="csr", random_state=1, dtype=np.float32)
    name = "encoder.layer.9.output.dense.weight"
    save_bundle(tmp_path / "minilm-d0.05.npz", [Layer(name, "linear", w.toarray(), (48, 96))], meta={"model": "t"})
    monkeypatch.setenv("SPARSE_AUTOTUNE_MINILM_DIR", str(tmp_path))
    prob = sb.BenchProblem("t", 48, 96, 8, 0.05, "fp32", sb.MINILM, "test", name).build()
    assert prob.nnz == w.nnz and (prob.matrix != w).nnz == 0 and prob.pattern == sb.MINILM
    with pytest.raises(UserError, match="expected 96x48"):
        sb.minilm_layer(name, 0.05, (96, 48))
    with pytest.raises(UserError, match="no layer"):
        sb.minilm_layer("encoder.layer.0.nothing.weight", 0.05, (48, 96))
    monkeypatch.setenv("SPARSE_AUTOTUNE_MINILM_DIR", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)  # bench/state/minilm and examples/minilm/data are relative: none here
    with pytest.raises(UserError, match="minilm-d0.05.npz not found.*prepare.py"):
        sb.minilm_layer(name, 0.05, (48, 96))


def test_select_problems_and_merged_tables_of_a_split_measure_phase(table, tmp_path):
    assert sb.select_problems(None) == sb.PROBLEMS
    two = sb.select_problems(f"{sb.PROBLEMS[2].name}, {sb.PROBLEMS[0].name}")
    assert [p.name for p in two] == [sb.PROBLEMS[2].name, sb.PROBLEMS[0].name]
    with pytest.raises(UserError, match="unknown problem nope"):
        sb.select_problems("nope")
    other = json.loads(json.dumps(table))
    part = other["problems"][TINY.name]
    other["problems"]["second"] = json.loads(json.dumps(part))
    half = dict(list(part["results"].items())[:5])
    other["problems"][TINY.name] = {**part, "results": half, "complete": False}  # a part measured less: not taken
    sb.save_table(table, tmp_path / "search-x-measured.json")
    sb.save_table(other, tmp_path / "search-x-measured.b.json")
    assert {k: [p.name for p in v] for k, v in sb.table_groups(tmp_path).items()} == {
        "x": ["search-x-measured.b.json", "search-x-measured.json"]}
    merged = sb.merge_tables(sb.table_groups(tmp_path)["x"])
    assert set(merged["problems"]) == {TINY.name, "second"}
    assert merged["problems"][TINY.name]["complete"] and len(merged["problems"][TINY.name]["results"]) == 48
    other["problems"]["second"]["problem"] = {**part["problem"], "matrix_hash": "0" * 32}
    other["problems"][TINY.name] = {**part, "problem": {**part["problem"], "matrix_hash": "f" * 32}}
    sb.save_table(other, tmp_path / "search-x-measured.b.json")
    with pytest.raises(UserError, match="two different matrices"):
        sb.merge_tables(sb.table_groups(tmp_path)["x"])


# ---- the replay ----------------------------------------------------------------------------------------------------

def test_synthetic_replay_grid_finds_the_optimum_in_exactly_the_table_size(table):
    entry = table["problems"][TINY.name]
    size = len(entry["results"])
    opt = sb.optimum(entry)
    assert opt[0] == pytest.approx(10.0) and opt[2] == OPTIMUM
    for seed in sb.SEEDS:
        run = sb.replay_run(entry, "grid", seed, trials=size)
        assert run["evaluated"] == size and run["unmeasured"] == 0  # every config once, each one in the table
        assert run["best"][size - 1] == opt[0]
    short = [sb.replay_run(entry, "grid", s, trials=size // 2) for s in sb.SEEDS]
    assert all(r["evaluated"] == size // 2 for r in short)


def test_synthetic_replay_counts_a_config_missing_from_the_table_as_a_failed_trial(table):
    entry = json.loads(json.dumps(table["problems"][TINY.name]))
    del entry["results"][sb.config_key("tc_gather", OPTIMUM)]
    run = sb.replay_run(entry, "grid", 0, trials=len(entry["results"]) + 1)
    assert run["unmeasured"] == 1
    assert run["best"][-1] > 10.0  # the optimum is gone: the best is the next one


def test_synthetic_replay_regret_is_the_median_over_seeds_at_each_checkpoint(table):
    entry = table["problems"][TINY.name]
    seeds, trials = (0, 1, 2), 20
    res = sb.replay_problem(entry, [("random", "random", True), ("tpe-cold", "tpe", False)], seeds, trials)
    assert res["optimum"]["config"] == OPTIMUM
    for name, sampler, warm in (("random", "random", True), ("tpe-cold", "tpe", False)):
        runs = [sb.replay_run(entry, sampler, s, warm, trials)["best"] for s in seeds]
        got = res["variants"][name]
        assert set(got["regret"]) == {"16"}  # checkpoints beyond the trials are left out
        want = statistics.median(r[15] / 10.0 - 1 for r in runs)
        assert got["regret"]["16"] == pytest.approx(want, rel=1e-5)
        median = [statistics.median(r[t] / 10.0 - 1 for r in runs) for t in range(trials)]
        assert got["trials_to_target"] == next((t + 1 for t, x in enumerate(median) if x <= 0.05), None)
        assert got["regret_by_seed"]["16"] == [pytest.approx(r[15] / 10.0 - 1, rel=1e-5) for r in runs]
    # warm start: the seed is enqueued first, so the first trial's best is the seed's time
    warm = sb.replay_run(entry, "tpe", 0, True, 4)["best"]
    cold = sb.replay_run(entry, "tpe", 0, False, 4)["best"]
    assert warm[0] == pytest.approx(synthetic_us(SEED[1])) and warm[0] != cold[0]


def test_regret_and_first_within():
    assert sb.regret(10.5, 10.0) == pytest.approx(0.05)
    assert sb.regret(None, 10.0) == float("inf")
    assert sb._num(float("inf")) is None
    assert sb.first_within([0.3, 0.2, 0.05, 0.0], 0.05) == 3
    assert sb.first_within([0.3, 0.2], 0.05) is None


def _problems(regrets: list[float]) -> dict:
    return {f"p{i}": {"variants": {"tpe": {"regret": {"64": r}, "median_curve": [r] * 128,
                                           "trials_to_target": 40 if r <= 0.05 else None}}}
            for i, r in enumerate(regrets)}


def test_verdict_synthetic_met_with_seven_of_eight_and_missed_with_six():
    met = sb.verdict(_problems([0.0, 0.01, 0.05, 0.02, 0.0, 0.03, 0.2, 0.04]))
    assert met["met"] and met["problems_met"] == 7 and met["short_by"] == 0  # 0.05 exactly counts as within
    assert [m["problem"] for m in met["missed"]] == ["p6"] and met["missed"][0]["regret"] == 0.2
    missed = sb.verdict(_problems([0.0, 0.01, 0.051, 0.02, 0.0, 0.03, 0.2, 0.04]))
    assert not missed["met"] and missed["problems_met"] == 6 and missed["short_by"] == 1
    assert {m["problem"]: m["regret"] for m in missed["missed"]} == {"p2": 0.051, "p6": 0.2}
    assert "within 5 % of the exhaustive optimum in <= 64 trials on at least 7 of 8" in missed["target"]
    rep = {"verdict": missed, "checkpoints": [64], "seeds": [0], "trials": 128, "problems": {}, "incomplete": []}
    md = sb.report_markdown(rep)
    assert "**missed** — 6 of 8 problems, 1 short" in md
    assert "missed on p2: regret 5.1 % at 64 trials (not within 5 % in 128 trials)" in md


# ---- the report and the command ------------------------------------------------------------------------------------

def test_synthetic_report_writes_json_md_and_png(table, tmp_path):
    rep = sb.replay(table, seeds=(0, 1), trials=16, log=lambda m: None)
    files = sb.write_report(rep, tmp_path / "search-x")
    assert [f.name for f in files] == ["search-x.json", "search-x.md", "search-x.png"]
    back = json.loads(files[0].read_text())
    p = back["problems"][TINY.name]
    assert p["optimum_us"] == pytest.approx(10.0) and p["failed"] == 1 and p["measured"] == 48
    assert set(p["variants"]) == {"tpe", "random", "cmaes", "grid", "tpe-cold"}  # tpe-cold: the table has a seed
    assert back["verdict"]["problems"] == 1 and not back["verdict"]["complete"]
    md = files[1].read_text()
    assert f"## {TINY.name}" in md and "Optimum **10.000 us**" in md and "provisional" in md
    assert files[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files[2].stat().st_size > 5000


def test_cli_replay_only_of_a_synthetic_table(table, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sb, "SEEDS", (0,))
    monkeypatch.setattr(sb, "TRIALS", 16)
    sb.save_table(table, tmp_path / "search-x-measured.json")
    assert main(["bench", "--suite", "search", "--replay-only", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / f"search-x.{e}") for e in ("json", "md", "png")]
    assert json.loads((tmp_path / "search-x.json").read_text())["seeds"] == [0]


@pytest.mark.parametrize("args, says", [
    (["--measure-only", "--replay-only"], "not allowed with"),
    (["--replay-only", "--out", "{empty}"], "no measured table"),
    (["--replay-only", "--out", "{file}"], "not a folder"),
    (["--replay-only", "--out", "{broken}"], "not a search table"),
    (["--replay-only", "--budget", "5"], "--budget applies to the measure phase"),
    (["--replay-only", "--storage", "sqlite:///x.sqlite"], "runs in one process"),
    (["--suite", "quick", "--replay-only"], "apply to --suite search only"),
    (["--suite", "quick", "--problems", "mission-fp32"], "apply to --suite search only"),
    (["--replay-only", "--problems", "nope", "--out", "{empty}"], "unknown problem nope"),
])
def test_cli_bad_input_is_one_line_exit_2(args, says, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "search-x-measured.json").write_text("[1, 2]")
    args = [a.format(empty=tmp_path / "empty", file=tmp_path / "file", broken=tmp_path / "broken") for a in args]
    assert main(["bench", "--suite", "search", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparse-autotune: error: ") and says in err[0], err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_device_runner_plans_the_search_suite_and_refuses_its_foreign_options(tmp_path):
    dev = [str(ROOT / "bench" / "device.sh"), "--plan"]
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    ok = subprocess.run(["bash", *dev, "suite", "search", "--budget", "400", "--fresh"], capture_output=True,
                        text=True, env=env, cwd=ROOT)
    assert ok.returncode == 0 and ok.stdout.strip() == "step 1: suite search --budget 400 --fresh"
    bad = subprocess.run(["bash", *dev, "suite", "search", "--workers", "3"], capture_output=True, text=True, env=env,
                         cwd=ROOT)
    assert bad.returncode == 2 and "suite search: --workers does not apply" in bad.stderr
    part = subprocess.run(["bash", *dev, "suite", "search", "--problems", "mission-fp32,decode-n8-fp16"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert part.returncode == 0 and part.stdout.strip() == "step 1: suite search --problems mission-fp32,decode-n8-fp16"
    other = subprocess.run(["bash", *dev, "suite", "dl", "--problems", "x"], capture_output=True, text=True, env=env,
                           cwd=ROOT)
    assert other.returncode == 2 and "--problems applies to suite search only" in other.stderr
