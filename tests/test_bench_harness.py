"""bench/ on the CPU: the device runner's steps and errors, a suite run through it stopped and resumed from its state
(the tests' synthetic tuner standing in for the GPU), its hard stop, and the probe tool's errors and CPU part."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from synthetic import synthetic_env

ROOT = Path(__file__).resolve().parent.parent
DEVICE = ROOT / "bench" / "device.sh"
DEVICE2 = ROOT / "bench" / "device2.sh"
PROBE = ROOT / "bench" / "probe.py"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("setsid") is None,
                                reason="needs bash and setsid")


def _run(cmd, env=None, timeout=120):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def _one_line_error(proc, prog: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@needs_bash
def test_device_runner_plans_its_steps():
    proc = _run(["bash", str(DEVICE), "--plan", "tests", "-k", "tune", "+", "suite", "dl", "--budget", "300", "+",
                 "probe", "overhead", "+", "cli", "spaces", "+", "suite", "llm", "--retune", "N=16,32", "--retune",
                 "dtype=bf16", "--retune-trials", "12"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["step 1: tests -k tune", "step 2: suite dl --budget 300",
                                        "step 3: probe overhead", "step 4: cli spaces",
                                        "step 5: suite llm --retune N=16,32 --retune dtype=bf16 --retune-trials 12"]
    usage = _run(["bash", str(DEVICE), "--help"])
    assert usage.returncode == 0 and "bench/device.sh suite dl|quick|llm" in usage.stdout


@needs_bash
@pytest.mark.parametrize("args, says", [
    ([], None),
    (["bogus"], "unknown step 'bogus'"),
    (["tests", "+"], "empty step"),
    (["suite"], "suite: name a suite"),
    (["suite", "dl", "--budget", "soon"], "--budget needs a number"),
    (["suite", "dl", "--nope"], "unknown option '--nope'"),
    (["suite", "llm", "--retune", "N=16 32"], "--retune needs FIELD=V1,V2"),
    (["suite", "llm", "--retune-trials", "many"], "--retune-trials needs a number"),
    (["probe"], "probe: name a subcommand"),
    (["cli"], "cli: give the sparse-autotune command"),
])
def test_device_runner_refuses_bad_steps_before_running_anything(args, says, tmp_path):
    proc = _run(["bash", str(DEVICE), "--plan", *args] if args else ["bash", str(DEVICE)],
                env={**os.environ, "OUT": str(tmp_path / "out")})
    assert proc.returncode == 2
    if says is None:  # no step at all: the usage
        assert "bench/device.sh tests" in proc.stderr
    else:
        assert says in _one_line_error(proc, "bench/device.sh")
    assert not (tmp_path / "out").exists()


@needs_bash
def test_two_gpu_runner_checks_both_sides_before_running_anything(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    ok = _run(["bash", str(DEVICE2), "--plan", "suite", "llm", "+", "probe", "overhead", "::", "tests", "-m", "gpu"],
              env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == ["GPU 0: step 1: suite llm", "GPU 0: step 2: probe overhead",
                                      "GPU 1: step 1: tests -m gpu"]
    for args, says in ((["suite", "llm"], "give the steps of both GPUs"), (["::", "tests"], "give the steps"),
                       (["tests", "::", "bogus"], "GPU 1: unknown step 'bogus'"),
                       (["tests", "::", "tests", "::", "tests"], "one '::' only")):
        bad = _run(["bash", str(DEVICE2), *args], env=env)
        assert says in _one_line_error(bad, "bench/device2.sh") and not bad.stdout
    assert not (tmp_path / "out").exists()


@needs_bash
@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset")
def test_two_gpu_runner_runs_each_side_into_its_own_out(tmp_path):
    """Both sides run (a synthetic tuner: no GPU), each with its own OUT and log."""
    env = synthetic_env(sleep=0.0, WHEELS=str(tmp_path / "no-wheels"), OUT=str(tmp_path / "out"),
                        STATE=str(tmp_path / "state"))
    proc = _run(["bash", str(DEVICE2), "cli", "spaces", "::", "cli", "spaces", "--dtype", "fp16"], env=env,
                timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "out"
    fp32, fp16 = (out / "gpu0" / "cli-1-spaces.out").read_text(), (out / "gpu1" / "cli-1-spaces.out").read_text()
    assert "csr_rowsplit" in fp32 and "(fp32)" in fp32 and "(fp16)" in fp16 and "tc_gather" in fp16
    assert (out / "gpu0.log").stat().st_size > 0 and (out / "gpu1.log").stat().st_size > 0
    assert proc.stdout.count(": exit 0") == 2


@needs_bash
def test_device_runner_tests_step_names_each_test_when_asked_with_v(tmp_path):
    """`tests ... -v` drops the step's -q, so its log names every test as it ends (a run cut by the call's limit,
    e.g. under xdist, still says what passed); so does xdist's -n unless -q is given; otherwise the log stays quiet."""
    (tmp_path / "test_probe_names.py").write_text("def test_alpha():\n    assert 1\n\ndef test_beta():\n    assert 2\n")
    out = tmp_path / "out"
    env = synthetic_env(sleep=0.0, WHEELS=str(tmp_path / "no-wheels"), OUT=str(out))
    for extra in ([], ["-v"], ["-n", "1"], ["-n", "1", "-q"]):
        proc = _run(["bash", str(DEVICE), "tests", str(tmp_path / "test_probe_names.py"), *extra],
                    env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    quiet, loud, xdist, xdist_q = [(out / f"pytest-gpu-{slug}.log").read_text()
                                   for slug in ("synthetic-gpu-test-only", "synthetic-gpu-test-only-2",
                                                "synthetic-gpu-test-only-3", "synthetic-gpu-test-only-4")]
    assert "pytest -q " in quiet and "test_alpha" not in quiet and "2 passed" in quiet
    assert "pytest -q " not in loud and "test_alpha PASSED" in loud and "test_beta PASSED" in loud
    # xdist's workers (-n): verbose unless -q is asked for, so a cut run names what failed
    assert "pytest -q " not in xdist and "PASSED" in xdist and "test_beta" in xdist
    assert "pytest -q " in xdist_q and "PASSED" not in xdist_q


def _suite_env(tmp_path: Path, out: str, sleep: float, **extra) -> dict:
    return synthetic_env(sleep=sleep, WHEELS=str(tmp_path / "no-wheels"), OUT=str(tmp_path / out),
                         STATE=str(tmp_path / "state"), CUPY_CACHE_DIR=str(tmp_path / "cupy-cache"),
                         SPARSE_AUTOTUNE_DB=str(tmp_path / "user.sqlite"), **extra)


def _suite_records(out: Path) -> list[dict]:
    found = list((out / "results").glob("suite-quick-*.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


@needs_bash
@pytest.mark.heavy  # ~35 s each (real suites stopped and resumed): CI's time
def test_device_runner_suite_stops_at_its_budget_and_resumes_from_its_state(tmp_path):
    (tmp_path / "state").mkdir()
    # a trial of 2 s a case: 16 cases take two workers over 16 s, the budget stops claiming after 8
    first = _run(["bash", str(DEVICE), "suite", "quick", "--budget", "8", "--workers", "2", "--trials", "1"],
                 env=_suite_env(tmp_path, "out1", 2.0))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert "suite quick: a fresh start" in first.stdout
    done1 = _suite_records(tmp_path / "out1")
    assert 1 <= len(done1) < 16  # the budget stopped it part-way
    state = tmp_path / "out1" / "state" / "suite-quick.tgz"
    with tarfile.open(state) as tar:
        names = set(tar.getnames())
    assert {"storage.sqlite", "tuning.sqlite", "status.txt", "out"} <= names
    assert list((tmp_path / "out1").glob("suite-quick-*.log"))
    for f in (tmp_path / "out1" / "state").iterdir():  # what the README says to do between calls
        shutil.copy(f, tmp_path / "state")

    second = _run(["bash", str(DEVICE), "suite", "quick", "--workers", "2", "--trials", "1"],
                  env=_suite_env(tmp_path, "out2", 0.0))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    assert "suite quick: resumed from" in second.stdout
    done2 = _suite_records(tmp_path / "out2")
    keys = [(r["M"], r["K"], r["N"], r["density"], r["dtype"], r["pattern"]) for r in done2]
    assert len(keys) == 16 and len(set(keys)) == 16  # every case once
    assert done2[: len(done1)] == done1  # the first call's cases kept, not tuned again
    assert f"cases finished in this call: {16 - len(done1)}" in second.stdout

    fresh = _run(["bash", str(DEVICE), "--plan", "suite", "quick", "--fresh"])
    assert fresh.returncode == 0


@needs_bash
@pytest.mark.heavy  # ~35 s each (real suites stopped and resumed): CI's time
def test_device_runner_stops_a_suite_hard_and_still_packs_its_state(tmp_path):
    # 2 trials of 30 s a case and a budget past the call's end: the hard stop (the call's end minus 15 s) ends bench
    # and its workers, whatever they are doing. The call gives bench ~20 s before that stop, so that even on a busy
    # 2-core CI machine it has put its problems in the queue (CALL_S 25 left it 4 s there, too few: nothing queued)
    proc = _run(["bash", str(DEVICE), "suite", "quick", "--budget", "100", "--workers", "2", "--trials", "2"],
                env=_suite_env(tmp_path, "out", 30.0, CALL_S="40"), timeout=150)
    said = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode not in (0, 2), said
    assert "problems: 0 done" in proc.stdout, said
    assert (tmp_path / "out" / "state" / "suite-quick.tgz").stat().st_size > 0, said
    work = re.search(r"sqlite:///(\S+)/storage\.sqlite", proc.stdout).group(1)  # its storage, on tmpfs
    assert "sat-suite-quick-" in work and not Path(work).exists()  # packed, then removed
    assert not [c for c in _command_lines() if work in c]  # bench and its workers all ended


def _command_lines() -> list[str]:
    out = []
    for p in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(p.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # the process ended meanwhile
            pass
    return out


@pytest.mark.parametrize("args, says", [
    (["nope"], "invalid choice: 'nope'"),
    (["ab", "--family", "tc_gather", "--param", "prefetch", "--a", "0", "--b", "1", "--case", "512x:256:0.1:fp16"],
     "malformed shape"),
    (["sweep", "--case", "64x64:16:0.1:fp64"], "unknown dtype 'fp64'"),
    (["sweep", "--case", "64x64:16:1.5:fp32"], "density"),
    (["sweep", "--case", "64x64:16"], "expected MxK:N:density:dtype"),
    (["sweep", "--filter", "[1]"], "--filter must map families"),
    (["ab", "--family", "tc_gather", "--param", "nope", "--a", "0", "--b", "1", "--case", "64x64:16:0.1:fp16"],
     "tc_gather has no parameter 'nope'"),
    (["profile", "--case", "64x64:16:0.1:fp32"], "give --db"),
    (["profile", "--case", "64x64:16:0.1:fp32", "--family", "csr_rowsplit"], "give --family and --config together"),
    (["config", "--case", "64x64:16:0.1:fp32", "--family", "csr_rowsplit", "--config", "{"], "--config is not JSON"),
])
def test_probe_refuses_bad_input_in_one_line(args, says):
    proc = _run([sys.executable, str(PROBE), *args])
    assert says in _one_line_error(proc, "probe.py")


def test_probe_overhead_measures_lookup_on_a_cpu(tmp_path):
    proc = _run([sys.executable, str(PROBE), "overhead", "--out", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "runtime-overhead-cpu.json").read_text())
    assert res["lookup_records"] == 1000 and 0 < res["lookup_cached_us"] < res["lookup_first_ms"] * 1e3
    assert "gpu" not in res and "launcher_us" not in res  # the GPU part needs a GPU
    md = (tmp_path / "runtime-overhead-cpu.md").read_text()
    assert md.startswith("# Runtime overhead — CPU only") and "| lookup, cached |" in md


@pytest.mark.parametrize("args,says", [
    (["--policy", "fast"], "unknown policy 'fast'"),
    (["--dtype", "fp64"], "unknown dtype 'fp64'"),
    (["--n", "0"], "N must be a positive integer"),
])
def test_probe_untuned_refuses_bad_input_before_the_gpu(tmp_path, args, says):
    """`probe untuned` checks its arguments and reads the checkpoints before it needs a GPU (one line, exit 2)."""
    import numpy as np
    ck = tmp_path / "w.npz"
    np.savez(ck, **{"layer.weight": np.eye(8, dtype=np.float32)})
    proc = _run([sys.executable, str(PROBE), "untuned", "--layers", str(ck), *args])
    assert says in _one_line_error(proc, "probe.py")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    proc = _run([sys.executable, str(PROBE), "untuned", "--layers", str(bad)])
    assert "could not be parsed" in _one_line_error(proc, "probe.py")


def test_probe_conv_ncu_refuses_without_one_config_before_the_gpu():
    """`probe conv --ncu` profiles ONE config (--one/--family/--config): without --one it says so (one line, exit 2),
    where it would otherwise run the whole benchmark unprofiled."""
    proc = _run([sys.executable, str(PROBE), "conv", "--ncu"])
    assert "--ncu profiles one config" in _one_line_error(proc, "probe.py")


def test_probe_untuned_report_counts_layers_at_the_goal_within_the_noise():
    """The summary of `probe untuned`: per (checkpoint, dtype, N, policy), the slowest layer, the geomean and the layers
    at the goal (off: 0.9x, quick: 1.0x, less 3 % of timing noise)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import probe
    finally:
        sys.path.remove(str(ROOT / "bench"))
    meta = {"gpu": "G", "driver": "d", "cuda": "c", "cupy": "p", "date": "2026-11-30", "db": "db/x.sqlite"}

    def rec(layer, pol, ratio, **kw):
        return {"checkpoint": "m.npz", "layer": layer, "M": 8, "K": 8, "N": 200, "density": 0.1, "dtype": "fp16",
                "policy": pol, "runtime_us": 10.0 / ratio, "vendor_best_us": 10.0, "vs_vendor_best": ratio,
                "cusparse_us": 12.0, "dense_us": 10.0, "family": "dense", "source": "quick", "first_call_s": 0.2, **kw}
    rows = [rec("a", "off", 0.88), rec("b", "off", 0.5), rec("a", "quick", 0.98), rec("b", "quick", 0.96)]
    summary, lines = probe.untuned_report(meta, rows)
    by = {s["policy"]: s for s in summary}
    assert by["off"]["layers_at_goal"] == 1 and by["off"]["min_vs_vendor_best"] == 0.5  # 0.88 >= 0.9 x 0.97
    assert by["quick"]["layers_at_goal"] == 1  # 0.98 is within the noise of 1.0, 0.96 is not
    assert abs(by["quick"]["geomean_vs_vendor_best"] - (0.98 * 0.96) ** 0.5) < 1e-12
    assert any(ln.startswith("| m.npz | fp16 | 200 | quick | 2 | 1 | 0.96x |") for ln in lines), lines


@pytest.mark.parametrize("args,says", [
    (["--policy", "fast"], "unknown policy 'fast'"),
    (["--dtype", "fp64"], "unknown dtype 'fp64'"),
    (["--n", "0"], "N must be a positive integer"),
])
def test_probe_linear_refuses_bad_input_before_the_gpu(tmp_path, args, says):
    """`probe linear` checks its arguments and reads the checkpoints before it needs a GPU (one line, exit 2)."""
    import numpy as np
    ck = tmp_path / "w.npz"
    np.savez(ck, **{"layer.weight": np.eye(8, dtype=np.float32)})
    proc = _run([sys.executable, str(PROBE), "linear", "--layers", str(ck), *args])
    assert says in _one_line_error(proc, "probe.py")
    proc = _run([sys.executable, str(PROBE), "linear", "--layers", str(tmp_path / "missing.npz")])
    assert "does not exist" in _one_line_error(proc, "probe.py")


def test_probe_linear_report_counts_the_goals():
    """The summary of `probe linear`: graph at the goal (>= 1.0x of nn.Linear less 3 % noise), eager within 10 us,
    layers with no more kernels than nn.Linear, errors apart."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import probe
    finally:
        sys.path.remove(str(ROOT / "bench"))
    meta = {"gpu": "G", "driver": "d", "cuda": "c", "cupy": "p", "date": "2026-11-30", "db": None}

    def rec(layer, ratio, eager_excess, kernels, **kw):
        return {"checkpoint": "m.npz", "layer": layer, "M": 8, "K": 8, "N": 16, "density": 0.1, "dtype": "fp16",
                "policy": "off", "bias": True, "linear_graph_us": 10.0, "linear_eager_us": 20.0,
                "linear_kernels": 1, "graph_us": 10.0 / ratio, "eager_us": 20.0 + eager_excess,
                "eager_minus_linear_us": eager_excess, "kernels": kernels, "vs_linear_graph": ratio,
                "family": "csr_gemv", "path": "native", "source": "exact", **kw}
    rows = [rec("a", 0.98, 4.0, 1), rec("b", 0.9, 12.0, 3),
            {"checkpoint": "m.npz", "layer": "c", "M": 8, "K": 8, "N": 16, "density": 0.1, "dtype": "fp16", "policy": "off",
             "linear_graph_us": 5.0, "linear_eager_us": 9.0, "linear_kernels": 1, "error": "RuntimeError: x"}]
    summary, lines = probe.linear_report(meta, rows)
    (s,) = summary
    assert s["layers"] == 3 and s["errors"] == 1 and s["graph_at_goal"] == 1 and s["slowest_vs_linear_graph"] == 0.9
    assert s["eager_within_10us"] == 1 and s["max_eager_minus_linear_us"] == 12.0 and s["one_kernel_layers"] == 1
    assert any(ln.startswith("| m.npz | fp16 | 16 | off | 3 | 1 | 0.90x |") for ln in lines), lines


def _llm_records(n: int) -> list[dict]:
    recs = json.loads((ROOT / "bench" / "results" / "suite-llm-h200.json").read_text())
    return [dict(r) for r in recs[:n]]


def _row(rec: dict, **fields) -> dict:
    """A recold row for the record's case and winner (family, config), with `fields` (times, skipped, error ...)."""
    keys = ("M", "K", "N", "density", "dtype", "pattern", "family", "config")
    return {**{k: rec[k] for k in keys}, **fields}


def test_recold_rows_replace_the_cold_times_of_the_same_winner_only():
    """suite.apply_retimed: a row's cold times go over the record whose winner is the config it timed; a row of another
    config (the record changed since), a skipped or failed row and a row of no record are refused with the reason; the input
    records are not modified. retime_cases: --only's filter and --skip's keys."""
    from sparse_autotune.tuning.suite import apply_retimed, parse_case_filter, retime_cases, retime_key
    recs = _llm_records(3)
    same = _row(recs[0], tuned_cold_us=123.0, dense_cold_us=456.0, cold_error=None, date="2026-12-02")
    other = _row(recs[1], config=_twin(recs[1]), tuned_cold_us=1.0, dense_cold_us=2.0)
    skipped = _row(recs[2], skipped="budget")
    nowhere = {**same, "M": 7}
    failed = _row(recs[2], error="CandidateError: verify")
    before = json.dumps(recs)
    new, applied, refused = apply_retimed(recs, [same, other, skipped, nowhere, failed])
    assert applied == 1 and len(refused) == 4 and any("CandidateError" in w for w in refused)
    assert new[0]["tuned_cold_us"] == 123.0 and new[0]["dense_cold_us"] == 456.0
    assert new[0]["cold_retimed"] == "2026-12-02" and new[0]["tuned_us"] == recs[0]["tuned_us"]
    assert new[1] == recs[1] and new[2] == recs[2] and json.dumps(recs) == before
    assert any("the record's winner is" in w for w in refused) and any("budget" in w for w in refused)
    assert any("no record" in w for w in refused)
    only = parse_case_filter(f"N={recs[0]['N']} density={recs[0]['density']}", "--only")
    hit = retime_cases(recs, only)
    assert hit and all(r["N"] == recs[0]["N"] and r["density"] == recs[0]["density"] for r in hit)
    left = retime_cases(recs, None, skip={retime_key(recs[0])})
    assert [retime_key(r) for r in left] == [retime_key(r) for r in recs[1:]]
    other_config = {**recs[0], "config": {**recs[0]["config"], "x": 1}}  # a case's other candidate is not skipped
    assert retime_cases([other_config], None, skip={retime_key(recs[0])}) == [other_config]


def test_recold_warm_rows_put_one_runs_warm_times_and_baselines_over_the_record():
    """apply_retimed(warm=True) (`recold --baselines` then `recold-apply --warm`): the winner's warm time and every
    vendor path's (WARM_BASELINES) go over the record with its cold times, so each ratio of the record is of one run;
    the runtime's choice follows where it was the winner; a row timed without --baselines is refused, and without
    warm the same row changes only the cold times."""
    from sparse_autotune.tuning.suite import WARM_BASELINES, apply_retimed
    recs = _llm_records(3)
    recs[0]["chosen_family"], recs[0]["chosen_us"] = recs[0]["family"], recs[0]["tuned_us"]
    base = {f: 10.0 + i for i, f in enumerate(WARM_BASELINES)}
    warm = _row(recs[0], tuned_us=4.5, tuned_cold_us=5.5, dense_cold_us=9.5, cold_error=None, date="2026-12-06", **base)
    bare = _row(recs[1], tuned_us=3.0, tuned_cold_us=4.0, dense_cold_us=8.0, cold_error=None)
    new, applied, refused = apply_retimed(recs, [warm, bare], warm=True)
    assert applied == 1 and len(refused) == 1 and "recold --baselines" in refused[0]
    assert new[0]["tuned_us"] == 4.5 and new[0]["chosen_us"] == 4.5 and new[0]["warm_retimed"] == "2026-12-06"
    assert all(new[0][f] == base[f] for f in WARM_BASELINES) and new[0]["tuned_cold_us"] == 5.5
    assert new[1] == recs[1] and new[2] == recs[2]
    cold_only, applied, _ = apply_retimed(recs, [warm])
    assert applied == 1 and cold_only[0]["tuned_us"] == recs[0]["tuned_us"] and "warm_retimed" not in cold_only[0]
    assert cold_only[0]["cublas_fp16_us"] == recs[0]["cublas_fp16_us"] and cold_only[0]["tuned_cold_us"] == 5.5


def _twin(rec: dict) -> dict:
    """The record's winner with one parameter at another value of its space (a twin: another kernel, as recold times
    them beside the winner)."""
    from sparse_autotune.core.space import get_space
    sp = get_space(rec["family"])
    cfg = sp.normalize(rec["config"], rec["dtype"])
    for p in sp.params:
        if p.name in cfg:
            for v in p.choices(sp.kernel_dtype(rec["dtype"])):
                t = sp.normalize({**cfg, p.name: v}, rec["dtype"])
                if v != cfg[p.name] and t is not None and t[p.name] == v:
                    return t
    raise AssertionError(f"no twin of {cfg}")


def test_recold_adopt_takes_a_faster_twin_of_the_same_run_only():
    """suite.apply_adopted: per case, the run that timed the record's winner beside its twins; a twin faster cold by
    more than the margin becomes the winner (config, warm / cold / cuBLAS times of its row, error, the format's bytes
    and byte floor rescaled, the runtime's choice where it was the kernel, `adopted` naming what it replaced); a twin
    within the margin leaves the winner (its times of that run); a case whose winner no run timed is refused (times of
    different runs are not compared); the input is not modified."""
    from sparse_autotune.tuning.suite import apply_adopted
    recs = _llm_records(4)
    for r in recs:
        r["chosen_family"], r["chosen_us"] = r["family"], r["tuned_us"]
    before = json.dumps(recs)
    r0, r1, r2 = recs[0], recs[1], recs[2]
    twin0 = _twin(r0)
    run1 = [_row(r0, tuned_us=9.0, tuned_cold_us=10.0, dense_cold_us=12.0, rel_err=1e-4, a_bytes=r0["a_bytes"],
                 date="d1"),
            _row(r0, config=twin0, tuned_us=8.5, tuned_cold_us=9.5, dense_cold_us=12.2, rel_err=2e-4,
                 a_bytes=r0["a_bytes"] // 2, date="d1"),
            _row(r1, tuned_us=5.0, tuned_cold_us=6.0, dense_cold_us=7.0, rel_err=1e-4, date="d1"),
            _row(r1, config=_twin(r1), tuned_us=5.0, tuned_cold_us=5.97, dense_cold_us=7.0,
                 rel_err=1e-4, date="d1"),  # 0.5 % faster: within the margin
            _row(r2, config=_twin(r2), tuned_us=1.0, tuned_cold_us=1.0, dense_cold_us=7.0,
                 rel_err=1e-4, date="d1")]  # the winner not timed in this run
    run0 = [_row(r2, tuned_us=3.0, tuned_cold_us=3.0, dense_cold_us=4.0, rel_err=1e-4, date="d0")]  # another run
    new, retimed, adopted, why = apply_adopted(recs, [run0, run1])
    assert (retimed, adopted) == (2, 1) and json.dumps(recs) == before
    a = new[0]
    assert a["config"] == twin0 and (a["tuned_us"], a["tuned_cold_us"]) == (8.5, 9.5)
    assert a["dense_cold_us"] == pytest.approx(12.1)  # cuBLAS: the median of the case's rows of the run
    assert a["max_rel_err"] == 2e-4 and a["chosen_us"] == 8.5 and a["a_bytes"] == r0["a_bytes"] // 2
    assert a["adopted"]["replaced"]["config"] == r0["config"] and a["adopted"]["replaced"]["tuned_cold_us_same_run"] == 10
    bc = (r0["K"] * r0["N"] + r0["M"] * r0["N"]) * 2
    assert a["bytes_floor_us"] == pytest.approx(r0["bytes_floor_us"] * (r0["a_bytes"] // 2 + bc) / (r0["a_bytes"] + bc))
    assert new[1]["config"] == r1["config"] and new[1]["tuned_cold_us"] == 6.0 and "adopted" not in new[1]
    # r2: run1 timed only a twin; run0 timed the winner alone: its own times, nothing adopted across runs
    assert new[2]["config"] == r2["config"] and new[2]["tuned_cold_us"] == 3.0 and new[3] == recs[3]
    assert why == []
    new, retimed, adopted, why = apply_adopted(recs, [run1])
    assert (retimed, adopted) == (1, 1) and new[2] == recs[2] and any("not compared" in w for w in why)
    new, _, adopted, _ = apply_adopted(recs, [run1], margin=0.0)
    assert adopted == 2 and new[1]["config"] != r1["config"]


def test_recold_adopt_by_warm_compares_warm_times_and_names_it():
    """apply_adopted(by="warm"): the twin faster warm by more than the margin wins even where it is slower cold (and
    a twin faster cold only does not); the replaced winner keeps its warm time of the run and `by`; a bad `by` is
    refused."""
    from sparse_autotune.tuning.suite import apply_adopted
    recs = _llm_records(2)
    r0, r1 = recs
    t0, t1 = _twin(r0), _twin(r1)
    run = [_row(r0, tuned_us=10.0, tuned_cold_us=10.0, dense_cold_us=12.0, rel_err=1e-4, date="d"),
           _row(r0, config=t0, tuned_us=9.0, tuned_cold_us=11.0, dense_cold_us=12.0, rel_err=1e-4, date="d"),
           _row(r1, tuned_us=5.0, tuned_cold_us=6.0, dense_cold_us=7.0, rel_err=1e-4, date="d"),
           _row(r1, config=t1, tuned_us=5.2, tuned_cold_us=4.0, dense_cold_us=7.0, rel_err=1e-4, date="d")]
    new, retimed, adopted, _ = apply_adopted(recs, [run], margin=0.02, by="warm")
    assert (retimed, adopted) == (1, 1)
    assert new[0]["config"] == t0 and new[0]["tuned_us"] == 9.0
    assert new[0]["adopted"]["replaced"]["tuned_us_same_run"] == 10.0 and new[0]["adopted"]["replaced"]["by"] == "warm"
    assert new[1]["config"] == r1["config"] and new[1]["tuned_cold_us"] == 6.0 and "adopted" not in new[1]
    cold, _, _, _ = apply_adopted(recs, [run], margin=0.02)  # by cold: the other way round
    assert cold[0]["config"] == r0["config"] and cold[1]["config"] == t1
    with pytest.raises(ValueError):
        apply_adopted(recs, [run], by="hot")


def test_recold_adopt_agree_needs_the_twin_faster_in_every_run_that_timed_both():
    """apply_adopted(agree=True): a twin faster by the margin in both runs that timed it beside the winner is adopted
    (with the last run's times); one faster in the last run only, or timed beside the winner in one run only, is not
    (the reason is given); without agree the last run decides alone."""
    from sparse_autotune.tuning.suite import apply_adopted
    recs = _llm_records(3)
    r0, r1, r2 = recs
    t0, t1, t2 = _twin(r0), _twin(r1), _twin(r2)

    def pair(rec, twin, own_us, twin_us, date):
        return [_row(rec, tuned_us=own_us, tuned_cold_us=own_us, dense_cold_us=9.0, rel_err=1e-4, date=date),
                _row(rec, config=twin, tuned_us=twin_us, tuned_cold_us=twin_us, dense_cold_us=9.0, rel_err=1e-4,
                     date=date)]
    run1 = pair(r0, t0, 10.0, 9.0, "d1") + pair(r1, t1, 10.0, 10.1, "d1") + pair(r2, t2, 10.0, 9.0, "d1")
    run2 = pair(r0, t0, 10.0, 9.5, "d2") + pair(r1, t1, 10.0, 9.0, "d2") + [
        _row(r2, tuned_us=10.0, tuned_cold_us=10.0, dense_cold_us=9.0, rel_err=1e-4, date="d2")]  # r2's twin not here
    new, retimed, adopted, why = apply_adopted(recs, [run1, run2], margin=0.02, by="warm", agree=True)
    assert (retimed, adopted) == (2, 1)
    assert new[0]["config"] == t0 and new[0]["tuned_us"] == 9.5 and new[0]["adopted"]["date"] == "d2"
    assert new[1]["config"] == r1["config"] and new[2]["config"] == r2["config"]
    assert sum("not by 2% in every run" in w for w in why) == 1  # r1 (r2's last run timed no twin: nothing to adopt)
    loose, _, adopted, _ = apply_adopted(recs, [run1, run2], margin=0.02, by="warm")
    assert adopted == 2 and loose[1]["config"] == t1 and loose[2]["config"] == r2["config"]
    only1, _, adopted, why = apply_adopted(recs, [run1], margin=0.02, by="warm", agree=True)
    assert adopted == 0 and sum("in every run (at least two)" in w for w in why) == 2  # r0, r2: one run each


def test_probe_recold_apply_writes_the_suite_and_its_report_and_overwrites_nothing(tmp_path):
    """`probe recold-apply`: a recold output over a suite's JSON -> DIR/suite-llm-<gpu>.{json,md}; the given JSON is
    left as it was, and an existing suite file in DIR that is not --records is refused (one line, exit 2)."""
    recs = _llm_records(4)
    src = tmp_path / "in.json"
    src.write_text(json.dumps(recs))
    rows = {"rows": [_row(recs[3], tuned_cold_us=99.5, dense_cold_us=88.5, cold_error=None, date="2026-12-02")]}
    rf = tmp_path / "recold.json"
    rf.write_text(json.dumps(rows))
    out = tmp_path / "out"
    proc = _run([sys.executable, str(PROBE), "recold-apply", "--records", str(src), "--rows", str(rf), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "1 of 1 rows applied" in proc.stderr
    got = json.loads((out / "suite-llm-h200.json").read_text())
    assert [r["tuned_cold_us"] for r in got][3] == 99.5 and got[:3] == recs[:3]
    assert (out / "suite-llm-h200.md").exists() and json.loads(src.read_text()) == recs
    proc = _run([sys.executable, str(PROBE), "recold-apply", "--records", str(src), "--rows", str(rf), "--out", str(out)])
    assert "exists and is not --records" in _one_line_error(proc, "probe.py")
    proc = _run([sys.executable, str(PROBE), "recold-apply", "--records", str(src), "--rows", str(src), "--out",
                 str(tmp_path / "o2")])
    assert "not a recold output" in _one_line_error(proc, "probe.py")
    twin = _row(recs[3], config=_twin(recs[3]), tuned_us=1.0, tuned_cold_us=50.0, dense_cold_us=88.0,
                rel_err=1e-4, date="2026-12-03")
    rf.write_text(json.dumps({"rows": rows["rows"] + [twin]}))
    proc = _run([sys.executable, str(PROBE), "recold-apply", "--records", str(src), "--rows", str(rf), "--adopt",
                 "--out", str(tmp_path / "o3")])
    assert proc.returncode == 0, proc.stderr
    assert "1 cases take a faster config of the same run, 0 keep theirs" in proc.stderr
    got = json.loads((tmp_path / "o3" / "suite-llm-h200.json").read_text())
    assert got[3]["config"] == twin["config"] and got[3]["tuned_cold_us"] == 50.0 and got[:3] == recs[:3]
    proc = _run([sys.executable, str(PROBE), "recold-apply", "--records", str(src), "--rows", str(rf), "--adopt",
                 "--margin", "1.5", "--out", str(tmp_path / "o4")])
    assert "--margin 1.5" in _one_line_error(proc, "probe.py")
    proc = _run([sys.executable, str(PROBE), "recold-apply", "--records", str(src), "--rows", str(rf), "--adopt",
                 "--warm", "--out", str(tmp_path / "o5")])
    assert "--warm and --adopt" in _one_line_error(proc, "probe.py") and not (tmp_path / "o5").exists()
    proc = _run([sys.executable, str(PROBE), "recold-apply", "--records", str(src), "--rows", str(rf), "--adopt-by",
                 "warm", "--out", str(tmp_path / "o6")])
    assert "--adopt-by and --agree go with --adopt" in _one_line_error(proc, "probe.py") and not (tmp_path / "o6").exists()
    proc = _run([sys.executable, str(PROBE), "recold-apply", "--records", str(src), "--rows", str(rf), "--agree",
                 "--out", str(tmp_path / "o6")])
    assert "go with --adopt" in _one_line_error(proc, "probe.py") and not (tmp_path / "o6").exists()
    rf.write_text(json.dumps({"rows": [{**rows["rows"][0], "tuned_us": 5.0}, twin]}))  # both timed warm (twin: 1.0)
    proc = _run([sys.executable, str(PROBE), "recold-apply", "--records", str(src), "--rows", str(rf), "--adopt",
                 "--adopt-by", "warm", "--out", str(tmp_path / "o7")])
    assert proc.returncode == 0 and "(by warm time): 1 cases take a faster config" in proc.stderr, proc.stderr
    assert json.loads((tmp_path / "o7" / "suite-llm-h200.json").read_text())[3]["adopted"]["replaced"]["by"] == "warm"


SUITE_LLM = str(ROOT / "bench" / "results" / "suite-llm-h200.json")


@pytest.mark.parametrize("args, says", [
    (["--records", "nope.json"], "cannot read it as JSON"),
    (["--records", SUITE_LLM, "--only", "Q=1"], "is not FIELD=V1,V2"),
    (["--records", SUITE_LLM, "--only", "N=3"], "nothing to time"),
    (["--records", SUITE_LLM, "--case", "64x64:8:0.1:fp16"], "not both"),
    (["--case", "64x64:8:0.1:fp16"], "--case and --config go together"),
    (["--case", "64x:8:0.1:fp16", "--config", "csr_gemv:{}"], "malformed shape"),
    (["--case", "64x64:8:0.1:fp16", "--config", "nope:{}"], "unknown family 'nope'"),
    (["--records", SUITE_LLM, "--skip", SUITE_LLM], "not a recold output"),
])
def test_probe_recold_refuses_bad_input_before_the_gpu(args, says):
    proc = _run([sys.executable, str(PROBE), "recold", *args])
    assert says in _one_line_error(proc, "probe.py")


def test_recold_candidates_are_the_feasible_configs_normalized_per_case():
    """`recold --case --config`: each given config on each case where the family computes the dtype and the
    constraints hold under the GPU's limits, normalized (defaults filled), once each; the others said why."""
    from scripts import load_script
    probe = load_script("bench/probe.py", "probe_recold")
    cases = [probe.parse_case("4096x4096:1:0.1:fp16"), probe.parse_case("4096x4096:8:0.1:fp32"),
             probe.parse_case("4096x4096:16:0.1:bf16")]
    given = probe.parse_given(['csr_gemv:{"lanes": 16, "warps": 8, "nb": 1, "iters": 2, "unroll": 2}',
                               'csr_gemv:{"lanes": 16, "warps": 8, "nb": 16, "iters": 2, "unroll": 2}',
                               'csr_gemv:{"lanes": 16, "warps": 8, "nb": 1, "iters": 2, "unroll": 2}'])
    limits = {"max_smem_bytes": 49152, "max_dyn_smem_bytes": 232448, "max_threads": 1024, "sm": 90}
    recs, why = probe.candidate_records(cases, given, limits)
    got = [(r["N"], r["dtype"], r["config"]["nb"]) for r in recs]
    # nb 1 fits N = 1 and 16; nb 16 only N = 16 (nb <= next_pow2(N)); fp32: csr_gemv computes fp16 / bf16 only
    assert got == [(1, "fp16", 1), (16, "bf16", 1), (16, "bf16", 16)]
    assert all(r["config"]["bsrc"] == "smem" and r["family"] == "csr_gemv" for r in recs)  # defaults filled
    assert sum("computes only" in w for w in why) == 3 and any("next_pow2" in w or "column block" in w for w in why)


def test_llm_ceiling_table_on_synthetic_records(tmp_path, capsys):
    """bench/llm_ceiling.py: the gather floor's arithmetic, the ceiling as max(bytes floor, gather floor) against
    cuBLAS cold, N > 32 left out, the per-density row; a file that is not a report: one line, status 2."""
    from scripts import load_script
    ceil = load_script("bench/llm_ceiling.py", "llm_ceiling")
    # 1e6 nonzeros x 64 bytes (N = 32) at 128 B/clock x 100 SMs x 1 GHz = 5 us; at N = 1, 4 bytes a nonzero: 0.3125 us
    assert abs(ceil.gather_floor_us(1_000_000, 32, 100, 1.0) - 5.0) < 1e-9
    assert abs(ceil.gather_floor_us(1_000_000, 1, 100, 1.0) - 0.3125) < 1e-9
    # --lines-above 16: N = 32's 64-byte row costs a 128-byte line (10 us); N = 16 and N = 128 (256 bytes) as before
    assert abs(ceil.gather_floor_us(1_000_000, 32, 100, 1.0, lines_above=16) - 10.0) < 1e-9
    assert abs(ceil.gather_floor_us(1_000_000, 16, 100, 1.0, lines_above=16) - 2.5) < 1e-9
    assert abs(ceil.gather_floor_us(1_000_000, 128, 100, 1.0, lines_above=16) - 20.0) < 1e-9
    recs = [dict(M=1, K=1, N=32, density=0.1, dtype="fp16", nnz=1_000_000, bytes_floor_us=2.0, tuned_us=9.0,
                 tuned_cold_us=10.0, dense_cold_us=20.0),   # ceiling 20 / 5 = 4, measured 2
            dict(M=1, K=1, N=1, density=0.1, dtype="fp16", nnz=1_000_000, bytes_floor_us=2.0, tuned_us=4.0,
                 dense_cold_us=16.0),                         # ceiling 16 / 2 = 8, measured 4 (warm: no cold time)
            dict(M=1, K=1, N=64, density=0.1, dtype="fp16", nnz=1, bytes_floor_us=1.0, tuned_us=1.0,
                 dense_cold_us=1.0)]                          # N > 32: left out
    rows = ceil.table(recs, 100, 1.0)
    assert set(rows) == {(0.1, 32), (0.1, 1), (0.1, 0)}
    assert rows[(0.1, 32)][:2] == pytest.approx((4.0, 2.0)) and rows[(0.1, 1)][:2] == pytest.approx((8.0, 4.0))
    c, g, k = rows[(0.1, 0)]
    assert k == 2 and abs(c - (4.0 * 8.0) ** 0.5) < 1e-9 and abs(g - (2.0 * 4.0) ** 0.5) < 1e-9
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recs))
    assert ceil.main([str(path), "--sms", "100", "--ghz", "1.0"]) == 0
    assert "| 0.1 | 32 | 1 | 4.00 | 2.00 | 0.50 |" in capsys.readouterr().out
    assert ceil.table(recs, 100, 1.0, lines_above=16)[(0.1, 32)][:2] == pytest.approx((2.0, 2.0))  # 20 / 10
    assert ceil.main([str(path), "--sms", "100", "--ghz", "1.0", "--lines-above", "16"]) == 0
    assert "| 0.1 | 32 | 1 | 2.00 | 2.00 | 1.00 |" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    assert ceil.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm_ceiling: error:") and err.count("\n") == 1


def test_recold_table_names_each_rows_config():
    """recold's Markdown table gives each row's config (k=v in its order), so that a case's twins are told apart."""
    from scripts import load_script
    probe = load_script("bench/probe.py", "probe_recold")
    assert probe.config_text({"bn": 128, "wg": 2, "pmap": 1}) == "bn=128 wg=2 pmap=1"
    assert probe.config_text({"math": "fp16"}) == "math=fp16" and probe.config_text(None) == ""


def test_probe_profile_takes_the_fastest_kernel_record_where_a_vendor_path_is_the_best(tmp_path, monkeypatch):
    """`probe profile --db`: a key whose best record is a vendor path (family dense: cuBLAS won) profiles the fastest
    record of a kernel family (there is no kernel of ours in the vendor record; session 37 died on it with a
    traceback); a key with vendor records only is a one-line error."""
    import importlib.util
    import sys as _sys
    from records import GPU, make_record, new_db
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("probe_under_test", PROBE)
    probe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(_sys.modules, "probe_under_test", probe)  # its dataclasses look their module up
    spec.loader.exec_module(probe)
    db = new_db(tmp_path / "t.sqlite", make_record(5.0, {"math": "fp16"}, family="dense"),
                make_record(9.0, {"rows_per_block": 8, "vec": 4}), make_record(7.0, {"rows_per_block": 4, "vec": 2}))
    case = probe.parse_case("512x2048:256:0.1:fp32")
    family, cfg, t = probe._record_config(case, str(db), GPU)
    assert (family, cfg, t) == ("csr_rowsplit", {"rows_per_block": 4, "vec": 2}, 7.0)
    only = new_db(tmp_path / "v.sqlite", make_record(5.0, {"math": "fp16"}, family="dense"))
    with pytest.raises(probe.UserError, match="no kernel record"):
        probe._record_config(case, str(only), GPU)


def test_ncu_sass_regions_sums_the_samples_between_markers(tmp_path):
    """bench/ncu_sass_regions.py (session 44) on a small source page in ncu's CSV layout: the share of the samples up
    to each marker instruction and since the previous one, the instructions above --top with their largest stall; a
    file that is not such a page: one line, exit 2."""
    page = tmp_path / "sass.csv"
    hdr = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed", "stall_wait", "stall_long_sb",
           "stall_wait (Not Issued)"]
    body = [["0", "LDC R1, c[0x0][0x28]", "10", "4", "10", "0", "9"],
            ["1", "LDG.E R2, desc[UR4][R4.64]", "0", "4", "0", "0", "0"],
            ["2", "ISETP.GE.AND P0, PT, R2, RZ, PT", "30", "4", "0", "30", "0"],
            ["3", "HGMMA.SP.64x128x32.F32 R24, R96, gdesc[UR12], R24, R90, 0x0", "20", "8", "20", "0", "0"],
            ["4", "STG.E.128 desc[UR12][R28.64], R24", "40", "16", "5", "35", "0"],
            ["5", "EXIT", "0", "4", "0", "0", "0"]]
    with open(page, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Kernel Name", "spmm_kernel"])
        w.writerow(hdr)
        w.writerows(body)
    proc = _run([sys.executable, str(ROOT / "bench" / "ncu_sass_regions.py"), str(page), "--top", "25"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "6 instructions, 100 samples" in out
    assert "| 3 | 60.0 % | 60.0 % | 8 | `HGMMA.SP" in out  # LDC + the loads' wait before the first marker
    assert "| 4 | 100.0 % | 40.0 % | 16 | `STG.E.128" in out
    assert "| 2 | 30.0 % | 4 | `ISETP" in out and "long_sb 30" in out  # above --top 25: the wait and its reason
    assert "| 0 | 10.0 %" not in out.split("| # | samples")[1]  # below --top
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    proc = _run([sys.executable, str(ROOT / "bench" / "ncu_sass_regions.py"), str(bad)])
    assert "not Nsight Compute's source page" in _one_line_error(proc, "ncu_sass_regions")
