"""tune-model without a GPU: checkpoint parsing (safetensors, .pt, .npz), layer discovery, magnitude pruning,
dedup of identical layers, sparse bundles, resume after an interruption with a synthetic tuner, and the problem loop
that tune-model, bench and the workers share."""
from __future__ import annotations

import datetime as dt
import json
import time

import numpy as np
import pytest
import scipy.sparse as sp
from records import make_record
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_cli import assert_one_line_error, run_cli

from sparse_autotune.core import checkpoint as mdl
from sparse_autotune.core.problem import Problem
from sparse_autotune.core.space import DEFAULT_LIMITS, get_space, problem_env
from sparse_autotune.errors import UserError
from sparse_autotune.store.db import TuningDB
from sparse_autotune.store.model_layers import ModelLayer, has_model_table
from sparse_autotune.tuning.loop import ProblemLoop
from sparse_autotune.tuning.model import tune_model
from sparse_autotune.tuning.search import Search, SearchOptions, load_study, summarize
from sparse_autotune.tuning.tuner import TuneOptions, study_name

GPU = "SYNTHETIC GPU"


def toy_tensors(seed=0) -> dict:
    """A toy model: two 64x32 Linear layers, one 48x64 Linear, a 1x1 conv, a 3x3 conv, an embedding, biases."""
    rng = np.random.default_rng(seed)
    return {
        "enc.0.fc1.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "enc.0.fc1.bias": rng.standard_normal(64).astype(np.float32),
        "enc.1.fc1.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "enc.1.fc1.bias": rng.standard_normal(64).astype(np.float32),
        "head.weight": rng.standard_normal((48, 64)).astype(np.float32),
        "conv.pw.weight": rng.standard_normal((16, 32, 1, 1)).astype(np.float32),
        "conv.k3.weight": rng.standard_normal((16, 32, 3, 3)).astype(np.float32),
        "embeddings.word.weight": rng.standard_normal((100, 32)).astype(np.float32),
        "norm.weight": np.ones(32, dtype=np.float32),
    }


EXPECTED = {"enc.0.fc1.weight": ("linear", (64, 32)), "enc.1.fc1.weight": ("linear", (64, 32)),
            "head.weight": ("linear", (48, 64)), "conv.pw.weight": ("conv1x1", (16, 32))}


def _check_layers(layers, tensors):
    assert {lay.name: (lay.kind, lay.shape) for lay in layers} == EXPECTED
    for lay in layers:
        want = tensors[lay.name].reshape(lay.shape)
        got = lay.weight.toarray() if sp.issparse(lay.weight) else lay.weight
        np.testing.assert_array_equal(got, want)
    assert next(lay for lay in layers if lay.name == "conv.pw.weight").orig_shape == (16, 32, 1, 1)


# ---- checkpoint formats ---------------------------------------------------------------------------------


def test_safetensors_checkpoint_layers(tmp_path):
    from safetensors.numpy import save_file
    t = toy_tensors()
    save_file(t, str(tmp_path / "toy.safetensors"))
    layers = mdl.find_layers(mdl.load_checkpoint(tmp_path / "toy.safetensors"))
    _check_layers(layers, t)


def test_torch_state_dict_checkpoint_layers(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (not in the test extra: its PyPI wheel pulls "
                                                "GBs of CUDA libraries); the .pt reader needs it")
    t = toy_tensors()
    sd = {k: torch.from_numpy(v) for k, v in t.items()}
    sd["step"] = torch.tensor(3)  # an integer tensor is not a weight
    torch.save({"state_dict": sd}, tmp_path / "toy.pt")
    layers = mdl.find_layers(mdl.load_checkpoint(tmp_path / "toy.pt"))
    _check_layers(layers, t)
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items() if k == "head.weight"}, tmp_path / "bf16.pt")
    (lay,) = mdl.find_layers(mdl.load_checkpoint(tmp_path / "bf16.pt"))
    assert lay.weight.dtype == np.float32
    np.testing.assert_allclose(lay.weight, t["head.weight"], rtol=1e-2)


def test_npz_checkpoints_dense_bundle_and_single_matrix(tmp_path):
    t = toy_tensors()
    np.savez(tmp_path / "dense.npz", **t)
    _check_layers(mdl.find_layers(mdl.load_checkpoint(tmp_path / "dense.npz")), t)

    pruned = mdl.prune_layers(mdl.find_layers(mdl.load_checkpoint(tmp_path / "dense.npz")), 0.25)
    ck = mdl.load_checkpoint(tmp_path / "dense.npz")
    mdl.save_bundle(tmp_path / "bundle.npz", pruned, mdl.biases_of(ck, pruned), {"model": "toy"})
    mats, extras, meta = mdl.load_bundle(tmp_path / "bundle.npz")
    assert list(mats) == [lay.name for lay in pruned] and meta["model"] == "toy"
    for lay in pruned:
        assert (mats[lay.name] != lay.weight).nnz == 0 and mats[lay.name].shape == lay.shape
    assert set(extras) == {"enc.0.fc1.bias", "enc.1.fc1.bias"}
    np.testing.assert_array_equal(extras["enc.0.fc1.bias"], t["enc.0.fc1.bias"])
    again = mdl.find_layers(mdl.load_checkpoint(tmp_path / "bundle.npz"))
    assert [(lay.name, lay.kind, lay.orig_shape, lay.nnz) for lay in again] == \
        [(lay.name, lay.kind, lay.orig_shape, lay.nnz) for lay in pruned]

    a = sp.random(40, 30, density=0.1, format="csr", random_state=1, dtype=np.float32)
    sp.save_npz(tmp_path / "one.npz", a)
    (lay,) = mdl.find_layers(mdl.load_checkpoint(tmp_path / "one.npz"))
    assert lay.name == "one" and lay.shape == (40, 30) and (lay.weight != a).nnz == 0


def test_include_exclude_and_embeddings(tmp_path):
    ck = mdl.Checkpoint("x", toy_tensors())
    assert [lay.name for lay in mdl.find_layers(ck, include=["enc.*"])] == ["enc.0.fc1.weight", "enc.1.fc1.weight"]
    assert [lay.name for lay in mdl.find_layers(ck, exclude=["enc.*,conv.*"])] == ["head.weight"]
    assert "embeddings.word.weight" in [lay.name for lay in mdl.find_layers(ck, include=["embeddings.*", "head*"])]
    with pytest.raises(UserError, match="no layer"):
        mdl.find_layers(ck, include=["nothing*"])


@pytest.mark.parametrize("name, content, needle", [
    ("m.txt", b"hello", "unknown format"),
    ("m.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", "safetensors"),
    ("m.npz", b"PK\x03\x04 not a zip", ".npz"),
])
def test_unreadable_checkpoints_are_user_errors(tmp_path, name, content, needle):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        mdl.load_checkpoint(tmp_path / name)


# ---- pruning --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.1, 0.05, 0.333, 1.0])
def test_per_layer_pruning_is_exact_and_keeps_the_largest(density):
    layers = mdl.find_layers(mdl.Checkpoint("x", toy_tensors(3)))
    pruned = mdl.prune_layers(layers, density)
    for lay, p in zip(layers, pruned):
        w = np.asarray(lay.weight)
        assert p.nnz == max(1, round(density * w.size)), lay.name
        kept = p.weight.toarray() != 0
        np.testing.assert_array_equal(p.weight.toarray()[kept], w[kept])  # values unchanged
        if not kept.all():
            assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()


def test_pruning_ties_go_to_the_lower_row_major_index():
    w = np.ones((4, 5), dtype=np.float32)
    (p,) = mdl.prune_layers([mdl.Layer("t.weight", "linear", w, w.shape)], 0.3)  # round(6.0) = 6 of 20
    np.testing.assert_array_equal(np.flatnonzero(p.weight.toarray().ravel()), np.arange(6))


def test_global_pruning_uses_one_threshold():
    rng = np.random.default_rng(0)
    small = rng.standard_normal((32, 32)).astype(np.float32) * 0.1
    big = rng.standard_normal((32, 32)).astype(np.float32)
    layers = [mdl.Layer("a.weight", "linear", small, small.shape), mdl.Layer("b.weight", "linear", big, big.shape)]
    pa, pb = mdl.prune_layers(layers, 0.2, scope="global")
    assert pa.nnz + pb.nnz == round(0.2 * 2 * 32 * 32)
    assert pb.nnz > pa.nnz  # the larger-magnitude layer keeps more
    kept = np.concatenate([np.abs(p.weight.data) for p in (pa, pb)])
    dropped = np.concatenate([np.abs(w[p.weight.toarray() == 0]) for w, p in ((small, pa), (big, pb))])
    assert kept.min() >= dropped.max()


def test_bad_density_and_dense_weights_are_user_errors():
    layers = mdl.find_layers(mdl.Checkpoint("x", toy_tensors()))
    for d in (0.0, 1.5, -0.1, "abc"):
        with pytest.raises(UserError, match="density"):
            mdl.prune_layers(layers, d)
    with pytest.raises(UserError, match="dense"):
        mdl.sparse_layers(layers)


# ---- dedup ----------------------------------------------------------------------------------------------


def test_identical_layers_are_one_problem():
    layers = mdl.prune_layers(mdl.find_layers(mdl.Checkpoint("x", toy_tensors())), 0.1)
    ns = mdl.n_values(layers, n="64,128")
    jobs = mdl.plan(layers, ns, ["fp32", "fp16"])
    # 3 distinct (shape, density): the two enc layers share one; x 2 N x 2 dtypes
    assert len(jobs) == 3 * 2 * 2
    shared = [j for j in jobs if (j.m, j.k) == (64, 32)]
    assert len(shared) == 4 and all([lay.name for lay in j.layers] == ["enc.0.fc1.weight", "enc.1.fc1.weight"]
                                     for j in shared)
    assert {(j.dtype, j.n) for j in shared} == {("fp32", 64), ("fp32", 128), ("fp16", 64), ("fp16", 128)}
    assert all(j.rep.name == "enc.0.fc1.weight" for j in shared)
    # a different density is a different problem
    other = mdl.prune_layers(mdl.find_layers(mdl.Checkpoint("x", toy_tensors()), include=["enc.1.*"]), 0.2)
    jobs = mdl.plan([layers[0], other[0]], {layers[0].name: [64], other[0].name: [64]}, ["fp32"])
    assert len(jobs) == 2


def test_n_values_batch_seq_and_spatial():
    layers = mdl.find_layers(mdl.Checkpoint("x", toy_tensors()))
    ns = mdl.n_values(layers, batch="1,8", seq="128", spatial=["conv.*=7x7"])
    assert ns["head.weight"] == [128, 1024] and ns["conv.pw.weight"] == [49, 392]
    with pytest.raises(UserError, match="spatial"):
        mdl.n_values(layers, batch="1")
    with pytest.raises(UserError, match="N values"):
        mdl.n_values(layers)
    with pytest.raises(UserError, match="--n"):
        mdl.n_values(layers, n="0,4")


# ---- resume after an interruption (synthetic tuner, no GPU) ---------------------------------------------


class SyntheticTune:
    """Stands in for tuner.tune without a GPU: the real Search on the database's study storage with a synthetic
    objective, a Record stored the way tune() stores one, and tune()'s handling of Ctrl-C (KeyboardInterrupt inside
    the search: keep the best so far, report 'interrupted'). `interrupt_after`: the evaluation (counted over all
    problems) at which the synthetic Ctrl-C arrives."""

    def __init__(self, interrupt_after: int | None = None):
        self.interrupt_after = interrupt_after
        self.evals = 0
        self.problems: list[str] = []

    def __call__(self, problem: Problem, opts: TuneOptions, log):
        self.problems.append(problem.key())
        db = TuningDB(opts.db)
        name = study_name(problem, GPU)
        csr = get_space("csr_rowsplit")
        env = problem_env(problem.m, problem.k, problem.n, problem.nnz, problem.dtype)

        def evaluate(family, cfg):
            self.evals += 1
            if self.interrupt_after is not None and self.evals > self.interrupt_after:
                raise KeyboardInterrupt
            return 1.0 + len(json.dumps(cfg, sort_keys=True)) % 7 + 0.01 * problem.n, {"synthetic": True}

        interrupted = False
        try:
            search = Search(db.url, name, [csr], problem.dtype, env, dict(DEFAULT_LIMITS),
                            SearchOptions(trials=opts.trials, sampler="random", seed=0))
            res = search.run(evaluate)
        except KeyboardInterrupt:
            interrupted = True
            res = summarize(load_study(db.url, name), stopped="interrupted")
        if res.best_config is None:
            raise KeyboardInterrupt
        rec = make_record(res.best_value, res.best_config, gpu_name=GPU, m=problem.m, k=problem.k, n=problem.n,
                          density=problem.density, dtype=problem.dtype, pattern=problem.pattern,
                          trials=res.complete + res.failed, study_name=name, matrix_hash=problem.fingerprint(),
                          created_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
        db.store(rec)
        db.dispose()
        return {"trials": {"stopped": "interrupted" if interrupted else res.stopped}, "record_id": rec.id}


def _model_setup(tmp_path, n="64,128"):
    layers = mdl.prune_layers(mdl.find_layers(mdl.Checkpoint("x", toy_tensors())), 0.1)
    jobs = mdl.plan(layers, mdl.n_values(layers, n=n), ["fp32"])
    opts = TuneOptions(trials=4, db=str(tmp_path / "t.sqlite"), progress=False, compile_workers=1)
    return layers, jobs, opts


def _rows(db_path):
    db = TuningDB(db_path)
    try:
        with Session(db.engine) as s:
            return {(r.layer, r.n): (r.status, r.study_name, r.record_id) for r in s.scalars(select(ModelLayer))}
    finally:
        db.dispose()


def _trials_of(db_path, name):
    from optuna.trial import TrialState
    db = TuningDB(db_path)
    try:
        st = load_study(db.url, name)
        return len(st.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL)))
    finally:
        db.dispose()


def test_synthetic_tune_model_dedups_and_resumes_after_interrupt(tmp_path):
    layers, jobs, opts = _model_setup(tmp_path)
    assert len(jobs) == 6  # 3 distinct shapes/densities x 2 N
    # Ctrl-C during the third problem's search, after 2 of its 4 trials
    t1 = SyntheticTune(interrupt_after=4 * 2 + 2)
    r1 = tune_model("toy", layers, jobs, opts, GPU, tuner=t1, progress=False, log=lambda m: None)
    assert r1.interrupted and r1.tuned == 2 and r1.skipped == 0
    assert len(t1.problems) == 3
    rows = _rows(opts.db)
    done = {k for k, v in rows.items() if v[0] == "done"}
    third = jobs[2]
    assert {(lay.name, third.n) for lay in third.layers} <= {k for k, v in rows.items() if v[0] == "interrupted"}
    assert done == {(lay.name, j.n) for j in jobs[:2] for lay in j.layers}
    # both enc layers map to one problem (one study) per N
    assert rows[("enc.0.fc1.weight", 64)][1] == rows[("enc.1.fc1.weight", 64)][1]
    name3 = study_name(third.problem(), GPU)
    # 2 complete + the trial the Ctrl-C cut short, which the search closes as FAIL (never evaluated, so it does
    # not count against the budget)
    assert _trials_of(opts.db, name3) == 3

    # rerun: the two finished problems are skipped, the interrupted study goes on from its 2 evaluated trials
    t2 = SyntheticTune()
    r2 = tune_model("toy", layers, jobs, opts, GPU, tuner=t2, progress=False, log=lambda m: None)
    assert not r2.interrupted and r2.skipped == 2 and r2.tuned == 4
    assert t2.problems == [j.problem().key() for j in jobs[2:]]
    assert t2.evals == 2 + 3 * 4  # the interrupted study needed only its 2 missing trials
    assert _trials_of(opts.db, name3) == 5  # 2 complete + the FAIL the Ctrl-C left + 2 new
    rows = _rows(opts.db)
    assert len(rows) == sum(len(j.layers) for j in jobs) and all(v[0] == "done" for v in rows.values())
    db = TuningDB(opts.db)
    recs = {r.id: r for r in db.records()}
    db.dispose()
    assert all(recs[v[2]].study_name == v[1] for v in rows.values())  # every layer points at its problem's record

    # a third run has nothing left to do
    t3 = SyntheticTune()
    r3 = tune_model("toy", layers, jobs, opts, GPU, tuner=t3, progress=False, log=lambda m: None)
    assert r3.skipped == 6 and r3.tuned == 0 and t3.problems == []

    # a larger trial budget tunes every problem further, from where its study stands
    more = TuneOptions(trials=6, db=opts.db, progress=False, compile_workers=1)
    t4 = SyntheticTune()
    r4 = tune_model("toy", layers, jobs, more, GPU, tuner=t4, progress=False, log=lambda m: None)
    assert r4.skipped == 0 and r4.tuned == 6 and t4.problems == [j.problem().key() for j in jobs]
    assert 0 < t4.evals <= 6 * 2  # 2 more trials each (a repeated config reuses its value, not evaluated again)
    db = TuningDB(opts.db)
    trials = {}
    for r in db.records():
        trials[r.study_name] = max(trials.get(r.study_name, 0), r.trials)
    db.dispose()
    assert sorted(trials.values()) == [6] * 6
    t5 = SyntheticTune()
    r5 = tune_model("toy", layers, jobs, more, GPU, tuner=t5, progress=False, log=lambda m: None)
    assert r5.skipped == 6 and t5.problems == []


def test_synthetic_tune_model_failed_problem_goes_on(tmp_path):
    layers, jobs, opts = _model_setup(tmp_path, n="64")

    def tuner(problem, o, log):
        if problem.m == 48:
            raise UserError("no variant passed verification")
        return SyntheticTune()(problem, o, log)

    res = tune_model("toy", layers, jobs, opts, GPU, tuner=tuner, progress=False, log=lambda m: None)
    assert res.failed == 1 and res.tuned == 2 and not res.interrupted
    assert _rows(opts.db)[("head.weight", 64)][0] == "failed"


def test_model_table_leaves_schema_and_other_readers_alone(tmp_path):
    layers, jobs, opts = _model_setup(tmp_path, n="64")
    tune_model("toy", layers, jobs, opts, GPU, tuner=SyntheticTune(), progress=False, log=lambda m: None)
    from sparse_autotune.store.db import SCHEMA_VERSION, describe_file
    info = describe_file(opts.db)
    assert info["schema_version"] == SCHEMA_VERSION and info["records"] == 3
    out = tmp_path / "export.sqlite"
    db = TuningDB(opts.db)
    res = db.export(out)
    db.dispose()
    assert res.added == 3
    assert not has_model_table(TuningDB(out, readonly=True).engine)  # exports carry records only


# ---- the command line -----------------------------------------------------------------------------------


@pytest.fixture
def toy_files(tmp_path):
    from safetensors.numpy import save_file
    save_file(toy_tensors(), str(tmp_path / "toy.safetensors"))
    return tmp_path


def test_cli_dry_run_and_save_sparse(toy_files):
    p = toy_files
    out = p / "out" / "toy-d0.1.npz"
    proc = run_cli(["tune-model", str(p / "toy.safetensors"), "--prune", "magnitude", "--density", "0.1",
                    "--batch", "1,4", "--seq", "16", "--spatial", "conv.*=7x7", "--dtype", "fp32,fp16",
                    "--save-sparse", str(out), "--dry-run", "--json"], p / "db.sqlite")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert len(plan["layers"]) == 4
    assert {tuple(j["layers"]) for j in plan["problems"] if j["m"] == 64} == {("enc.0.fc1.weight", "enc.1.fc1.weight")}
    assert len(plan["problems"]) == 2 * 2 * 2 + 1 * 2 * 2  # linear: 3 layers, 2 distinct; conv: 1; x 2 N x 2 dtypes
    assert {j["n"] for j in plan["problems"] if j["m"] == 16} == {49, 196}
    assert not (p / "db.sqlite").exists()  # a dry run touches no database
    mats, extras, meta = mdl.load_bundle(out)
    assert {k: v.nnz for k, v in mats.items()} == {lay["name"]: lay["nnz"] for lay in plan["layers"]}
    assert meta["density"] == 0.1 and set(extras) == {"enc.0.fc1.bias", "enc.1.fc1.bias"}
    # the bundle is a checkpoint too: its existing zeros are used
    proc = run_cli(["tune-model", str(out), "--n", "32", "--dry-run", "--json"], p / "db.sqlite")
    assert proc.returncode == 0, proc.stderr
    assert [lay["nnz"] for lay in json.loads(proc.stdout)["layers"]] == [lay["nnz"] for lay in plan["layers"]]


def test_cli_dry_run_n_buckets_tunes_each_bucket_once_at_its_top(toy_files):
    """--n-buckets: N = 1 x 16, 3 x 16, 4 x 16 (16, 48, 64) become the buckets 16 and 64 (48 and 64 share one)."""
    p = toy_files
    args = ["tune-model", str(p / "toy.safetensors"), "--prune", "magnitude", "--density", "0.1", "--batch", "1,3,4",
            "--seq", "16", "--spatial", "conv.*=7x7", "--dry-run", "--json"]
    plain = run_cli(args, p / "db.sqlite")
    bucketed = run_cli(args + ["--n-buckets"], p / "db.sqlite")
    assert plain.returncode == 0 and bucketed.returncode == 0, plain.stderr + bucketed.stderr
    lin = lambda out: sorted({j["n"] for j in json.loads(out)["problems"] if j["m"] != 16})  # noqa: E731
    assert lin(plain.stdout) == [16, 48, 64] and lin(bucketed.stdout) == [16, 64]
    conv = lambda out: sorted({j["n"] for j in json.loads(out)["problems"] if j["m"] == 16})  # noqa: E731
    assert conv(plain.stdout) == [49, 147, 196] and conv(bucketed.stdout) == [64, 256]


@pytest.mark.parametrize("args, needles", [
    (["{p}/missing.safetensors", "--n", "8"], ["does not exist"]),
    (["{p}/notes.txt", "--n", "8"], ["unknown format"]),
    (["{p}/toy.safetensors", "--n", "8"], ["dense", "--prune"]),
    (["{p}/toy.safetensors", "--n", "8", "--prune", "magnitude", "--density", "1.5"], ["outside (0, 1]"]),
    (["{p}/toy.safetensors", "--n", "8", "--prune", "magnitude", "--density", "0"], ["outside (0, 1]"]),
    (["{p}/toy.safetensors", "--n", "8", "--prune", "magnitude"], ["--density"]),
    (["{p}/toy.safetensors", "--n", "8", "--prune", "magnitude", "--density", "0.1", "--include", "zz*"], ["no layer"]),
    (["{p}/toy.safetensors", "--prune", "magnitude", "--density", "0.1"], ["N values"]),
    (["{p}/toy.safetensors", "--n", "8", "--prune", "magnitude", "--density", "0.1", "--dtype", "fp64"], ["dtype"]),
    (["{p}/toy.safetensors", "--n", "8", "--prune", "magnitude", "--density", "0.1", "--prune-scope", "x"], ["scope"]),
    (["{p}/toy.pt", "--n", "8"], []),
])
def test_cli_tune_model_bad_input_one_line_exit_2(toy_files, args, needles):
    p = toy_files
    (p / "notes.txt").write_text("not a model\n")
    (p / "toy.pt").write_bytes(b"not a pickle or a zip")
    proc = run_cli(["tune-model", *[a.format(p=p) for a in args], "--dry-run"], p / "db.sqlite")
    assert_one_line_error(proc, *needles)
    assert not (p / "db.sqlite").exists()


# ---- the problem loop (bench, tune-model and the workers share it) ----------------------------------------------


class _Loop(ProblemLoop):
    """A problem loop over integers: `done` are skipped, `fail` raise UserError, `interrupt` raises KeyboardInterrupt,
    `over_after` moves the deadline into the past once that item is worked."""

    def __init__(self, done=(), fail=(), interrupt=None, over_after=None, **kw):
        self.lines: list[str] = []
        super().__init__(log=self.lines.append, **kw)
        self.done, self.fail, self.interrupt, self.over_after = set(done), set(fail), interrupt, over_after
        self.worked: list[int] = []

    def skip(self, item):
        return item in self.done

    def work(self, item):
        self.worked.append(item)
        if item == self.over_after:
            self.deadline = time.time() - 1
        if item == self.interrupt:
            raise KeyboardInterrupt
        if item in self.fail:
            raise UserError(f"item {item} is bad")


def test_problem_loop_skips_what_is_done_goes_on_after_a_failure_and_stops_at_the_budget():
    loop = _Loop(done={2}, fail={3}, over_after=4)
    res = loop.run([1, 2, 3, 4, 5, 6])
    assert loop.worked == [1, 3, 4]  # 2 was done before; no problem is started after the budget
    assert (res.total, res.finished, res.skipped, res.failed, res.stopped) == (6, 2, 1, 1, "time budget")
    assert loop.lines == ["3 failed: item 3 is bad",
                          "time budget reached after 2 problem(s); run the same command again to go on"]
    # the budget passing during the last problem stops nothing: all is done
    last = _Loop(done={1}, over_after=3)
    res = last.run([1, 2, 3])
    assert last.worked == [2, 3] and res.stopped == "done" and not last.lines


def test_problem_loop_ctrl_c_keeps_what_is_finished():
    loop = _Loop(interrupt=3)
    res = loop.run([1, 2, 3, 4])
    assert loop.worked == [1, 2, 3] and res.interrupted and res.finished == 2 and res.stopped == "interrupted"
    assert loop.lines == ["interrupted: what is finished is kept; run the same command again to go on"]


def test_problem_loop_draws_from_a_queue_only_while_the_budget_lasts():
    """An iterator source (a worker's claims) is drawn after the budget check: nothing is claimed after the deadline;
    a None (nothing to claim yet) is skipped and the budget checked again."""
    drawn = []

    def claims():
        for item in (None, 1, None, 2, 3, 4):
            drawn.append(item)
            yield item

    loop = _Loop(over_after=2)
    res = loop.run(claims())
    assert loop.worked == [1, 2] and drawn == [None, 1, None, 2]  # 3 was never claimed
    assert res.total is None and res.finished == 2 and res.stopped == "time budget"
    everything = _Loop()
    assert everything.run(claims()).finished == 4 and everything.worked == [1, 2, 3, 4]


def test_problem_loop_failed_hook_may_stop_the_loop():
    """A failure the hook re-raises (a worker's lost GPU context) ends the loop with that error."""
    class Stopping(_Loop):
        def failed(self, item, exc):
            raise exc

    loop = Stopping(fail={2})
    with pytest.raises(UserError, match="item 2"):
        loop.run([1, 2, 3])
    assert loop.worked == [1, 2]
