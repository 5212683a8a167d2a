"""The operand layout on the CPU (issue 17, section 3): kn (C = A @ B) and nk (y = x @ A^T + bias, x N x K and y N x M
as nn.Linear holds them). The problem's layout and key, the spaces' `layouts` and the nk_path parameter, rendering
and launching with the bias after C, the staged path's choice, the database's layout column (schema 4: migration,
uids, keys, merge), lookup (nk records first, then kn records natively or staged, the transfer margin), the command
line's --layout, tune-model's layouts, and op.linear's checks and launch through stand-ins. The GPU side:
tests/test_layout_gpu.py."""
from __future__ import annotations

import json
import shutil
import sqlite3
import types
from pathlib import Path

import numpy as np
import pytest

from fakes import FakeLaunch, FakeTensor, check_launch_matches_signature, fake_kernel, fake_torch
from layout_toy import NAME as TOY, toy_nk  # noqa: F401 - the fixture
from records import CONFIG, GPU, downgrade_to_v3, make_record, new_db, sql
from sparse_autotune.commands import main as cli
from sparse_autotune.core import families, space
from sparse_autotune.core.checkpoint import Checkpoint, find_layers, plan, sparse_layers
from sparse_autotune.core.problem import LAYOUTS, Problem, check_layout, random_matrix
from sparse_autotune.core.render import render
from sparse_autotune.core.space import NK_PATH, get_space, parse_space, problem_env, split_path
from sparse_autotune.errors import CandidateError, UserError
from sparse_autotune.store import lookup as lk
from sparse_autotune.store.db import SCHEMA_VERSION, TuningDB, describe_file, record_uid
from sparse_autotune.tuning.search import Search, SearchOptions

KEY = dict(m=512, k=2048, n=256, density=0.1, dtype="fp32")
FIXTURE = Path(__file__).parent / "fixtures" / "tuning-v1.sqlite"




def run(argv, capsys) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc, err, *needles):
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("sparse-autotune: error:"), err
    for n in needles:
        assert n in err, (n, err)


# ---- the problem -------------------------------------------------------------------------------------------------


def test_layout_is_validated_in_one_line_and_kn_keys_are_unchanged():
    assert LAYOUTS == ("kn", "nk") and check_layout("nk") == "nk"
    for bad in ("NK", "kn ", "", None, 3):
        with pytest.raises(UserError, match="unknown layout") as info:
            check_layout(bad)
        assert "\n" not in str(info.value) and "nn.Linear" in str(info.value)
    kn = Problem.random(64, 128, 8, 0.1, "fp16", seed=1)
    nk = Problem.random(64, 128, 8, 0.1, "fp16", seed=1, layout="nk")
    assert kn.layout == "kn" and kn.key() == "M64_K128_N8_d0.1_fp16_uniform"  # as every older version named it
    assert nk.key() == "M64_K128_N8_d0.1_fp16_uniform_nk" and nk.fingerprint() == kn.fingerprint()
    assert nk.min_bytes() == kn.min_bytes() + 64 * 2  # the bias
    assert Problem.from_matrix(kn.matrix, 8, "fp16", layout="nk").key().endswith("_matrix_nk")
    with pytest.raises(UserError, match="unknown layout 'mk'"):
        Problem.random(64, 128, 8, 0.1, layout="mk")
    with pytest.raises(UserError, match="unknown layout"):
        Problem(64, 128, 8, 0.1, layout="xy")


# ---- spaces, rendering, launching --------------------------------------------------------------------------------


def test_space_layouts_are_parsed_and_checked():
    base = {"family": "f", "template": "f.cu.j2", "params": {"a": {"values": [1, 2]}}}
    assert parse_space(base).layouts == ("kn",) and not parse_space(base).supports_layout("nk")
    assert parse_space({**base, "layouts": ["kn", "nk"]}).supports_layout("nk")
    for bad in (["nk"], ["kn", "nk", "nk"], ["kn", "mk"]):
        with pytest.raises(ValueError, match="layouts must list kn"):
            parse_space({**base, "layouts": bad}, "x.toml")
    with pytest.raises(ValueError, match="nk_path is not a family's parameter"):
        parse_space({**base, "params": {NK_PATH: {"values": ["native"]}}})


def test_for_layout_adds_the_nk_path_parameter_only_for_nk(toy_nk):
    rs = get_space("csr_rowsplit")
    assert rs.for_layout("kn") is rs and rs.default_path() == "staged"
    nk = rs.for_layout("nk")
    assert [p.name for p in nk.params] == [p.name for p in rs.params] + [NK_PATH]
    assert nk.param(NK_PATH).choices("fp32") == ["staged"] and nk.for_layout("nk") is nk
    assert all(NK_PATH not in p.name for p in rs.params)  # the registry's space is untouched
    toy = get_space(TOY)
    assert toy.default_path() == "native" and toy.for_layout("nk").param(NK_PATH).choices("fp32") == ["native",
                                                                                                      "staged"]
    # a config stored without a path (a known-good one, a kn record's) gets the family's default
    assert toy.for_layout("nk").normalize({"threads": 64}, "fp32") == {"threads": 64, NK_PATH: "native"}
    assert rs.for_layout("nk").normalize(CONFIG, "fp32")[NK_PATH] == "staged"
    assert toy.for_layout("nk").normalize({"threads": 64, NK_PATH: "sideways"}, "fp32") is None
    assert [c[NK_PATH] for c in toy.for_layout("nk").enumerate("fp32")] == ["native", "staged"] * 2
    assert problem_env(1, 2, 3, 4, "fp32")["layout"] == "kn" and problem_env(1, 2, 3, 4, "fp32", "nk")["layout"] == "nk"
    assert split_path({"a": 1, NK_PATH: "staged"}) == ({"a": 1}, "staged") and split_path({"a": 1}) == ({"a": 1}, None)


def test_templates_get_the_layout_and_nk_only_where_declared(toy_nk):
    toy = get_space(TOY)
    kn, nk = render(toy, {"threads": 64}, "fp32"), render(toy, {"threads": 64, NK_PATH: "native"}, "fp32", None, "nk")
    assert "layout=kn" in kn and "bias" not in kn
    assert "layout=nk" in nk and "float* __restrict__ C, const float* __restrict__ bias, int M" in nk
    assert NK_PATH not in nk  # the path is not the template's
    with pytest.raises(ValueError, match="not written for layout 'nk'"):
        render(get_space("csr_rowsplit"), CONFIG, "fp32", None, "nk")
    from sparse_autotune.device.kernel import build_kernel
    with pytest.raises(CandidateError, match="render: family csr_rowsplit is not written for layout 'nk'"):
        build_kernel(None, "csr_rowsplit", CONFIG, "fp32", layout="nk")


def test_nk_launch_puts_the_bias_right_after_c(toy_nk):
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    assert check_launch_matches_signature(TOY, "fp32", a, 32, layout="nk") == 2
    assert check_launch_matches_signature(TOY, "fp32", a, 32) == 2
    kern = fake_kernel(TOY, {"threads": 64}, "fp32", a, layout="nk")
    ln = kern.launcher(32)
    from sparse_autotune.device.kernel import BiasLauncher, Launcher
    assert isinstance(ln, BiasLauncher) and not isinstance(fake_kernel(TOY, {"threads": 64}, "fp32", a).launcher(32),
                                                           BiasLauncher)
    fake = FakeLaunch([8, 8, 8, 8, 8, 8, 4, 4, 4])
    ln._launch = fake
    ln(0xB0, 0xC0, 5)  # no bias: a null pointer
    ln(0xB0, 0xC0, 5, 0xB1A5)
    assert fake.calls[0][1][3:6] == [0xB0, 0xC0, 0] and fake.calls[1][1][3:6] == [0xB0, 0xC0, 0xB1A5]
    assert fake.calls[1][1][6:] == [64, 32, 256]
    assert isinstance(kern.launcher(0), Launcher) and kern.launcher(0).is_noop  # N == 0: nothing to launch
    assert kern.a_bytes() > 0  # A's arrays only (the bias is not A)


def test_family_args_without_nk_are_called_without_bias(toy_nk):
    a = random_matrix(64, 256, 0.05, "uniform", 0)
    rs = fake_kernel("csr_rowsplit", CONFIG, "fp32", a)
    assert len(rs.args(32, "B", "C")) == 11  # the 4-argument host side, as always
    rs.layout = "nk"  # a kernel the registry would never render for nk
    with pytest.raises(ValueError, match="does not declare the nk layout"):
        rs.args(32, "B", "C", "bias")


def test_a_host_side_that_misplaces_the_bias_is_refused(tmp_path):
    from layout_toy import HOST, write
    folder = write(tmp_path / "bad")
    moved = HOST.replace('head + ((bias,) if kernel.layout == "nk" else ()) + tail',
                         'head + tail + ((bias,) if kernel.layout == "nk" else ())')
    assert moved != HOST
    (folder / f"{TOY}.py").write_text(moved)
    families.add_folder(folder)
    try:
        kern = fake_kernel(TOY, {"threads": 64}, "fp32", random_matrix(64, 256, 0.05), layout="nk")
        with pytest.raises(CandidateError, match="bias right after C"):
            kern.launcher(32)
    finally:
        families.remove_folder(folder)


def test_build_for_chooses_native_or_staged(toy_nk, monkeypatch):
    from sparse_autotune.device import staged
    built = []

    def fake_build(a, family, config, dtype, layout="kn"):
        built.append((family, config, layout))
        return types.SimpleNamespace(layout=layout, config=config, family=family)
    monkeypatch.setattr(staged, "build_kernel", fake_build)
    compiled = []
    monkeypatch.setattr(staged, "compile_kernel", lambda src, name: compiled.append((name, "sat_add_bias" in src)))
    assert staged.build_for(None, TOY, {"threads": 64, NK_PATH: "native"}, "fp32", "nk").layout == "nk"
    got = staged.build_for(None, TOY, {"threads": 64, NK_PATH: "staged"}, "fp32", "nk")
    assert isinstance(got, staged.StagedKernel) and got.kern.layout == "kn" and got.path == "staged"
    assert got.config == {"threads": 64, NK_PATH: "staged"}
    staged.build_for(None, TOY, {"threads": 64}, "fp32", "nk")  # no path: the family's default (native)
    staged.build_for(None, "csr_rowsplit", CONFIG, "fp32", "nk")  # csr_rowsplit declares no nk: staged
    staged.build_for(None, TOY, {"threads": 64, NK_PATH: "staged"}, "fp32", "kn")  # kn: the path is dropped
    assert [b[2] for b in built] == ["nk", "kn", "nk", "kn", "kn"]
    assert all(NK_PATH not in b[1] for b in built)
    assert compiled == [("sat_transpose", True)] * 2  # the staging kernels compiled with each staged build
    with pytest.raises(CandidateError, match="unknown nk path"):
        staged.build_for(None, TOY, {"threads": 64, NK_PATH: "sideways"}, "fp32", "nk")
    with pytest.raises(ValueError, match="runs a kn kernel"):
        staged.StagedKernel(types.SimpleNamespace(layout="nk"))


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_the_staging_kernels_compile_with_nvcc(dtype):
    from sparse_autotune.device import compile as sat_compile
    from sparse_autotune.device.staged import source
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    report = sat_compile.nvcc_check(source(dtype), arch="sm_90")
    assert "sat_transpose" in report and "sat_add_bias" in report and "sat_add_bias_wide" in report


def test_the_search_of_an_nk_problem_explores_both_paths(toy_nk, tmp_path):
    """An nk problem's spaces (Tuner._start: Space.for_layout) carry nk_path: the search tries native and staged for a
    family declaring nk, staged only for the others, and its known-good configs come with the default path."""
    spaces = [get_space(TOY).for_layout("nk"), get_space("csr_rowsplit").for_layout("nk")]
    seen = []

    def evaluate(family, cfg):
        seen.append((family, cfg.get(NK_PATH)))
        return 1.0 + len(seen) * 0.01, {}
    env = problem_env(512, 2048, 64, 104858, "fp32", "nk")
    res = Search(f"sqlite:///{tmp_path / 's.sqlite'}", "nk-study", spaces, "fp32", env, dict(space.DEFAULT_LIMITS),
                 SearchOptions(trials=30, sampler="random", seed=1)).run(evaluate)
    assert seen[0] == (TOY, "native")  # the first known-good config: the toy's, on its default path
    assert {p for f, p in seen if f == TOY} == {"native", "staged"}
    assert {p for f, p in seen if f == "csr_rowsplit"} == {"staged"}
    assert NK_PATH in res.best_config


# ---- the database: schema 4 ---------------------------------------------------------------------------------------


def test_record_uid_of_kn_is_unchanged_and_nk_differs():
    kn = make_record(10.0, CONFIG)
    before = record_uid(kn)
    kn.layout = "kn"
    assert record_uid(kn) == before  # explicit kn: the same uid as a record without a layout (older versions')
    nk = make_record(10.0, CONFIG, layout="nk")
    assert record_uid(nk) != before
    # the payload of versions 2-3, computed here by hand: a kn record's uid is what those versions computed
    import hashlib
    payload = ["sat-record", GPU, 512, 2048, 256, 0.1, "fp32", "uniform", "csr_rowsplit",
               json.dumps(CONFIG, sort_keys=True, separators=(",", ":")), 10.0, "2025-01-01 12:00:00.000000",
               "0123456789abcdef"]
    assert before == hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


def test_kn_and_nk_are_separate_keys(tmp_path):
    p = new_db(tmp_path / "t.sqlite", make_record(10.0, CONFIG), make_record(8.0, CONFIG, layout="nk"),
               make_record(12.0, {**CONFIG, "unroll": 2}, layout="nk"))
    db = TuningDB(p, create=False, readonly=True)
    try:
        assert db.best(**KEY).time_us == 10.0 and db.best(**KEY).layout == "kn"
        assert db.best(**KEY, layout="nk").time_us == 8.0  # a faster nk record does not take kn's best
        assert db.best_sparse(**KEY, layout="nk").time_us == 8.0
        assert [(r.layout, r.is_best) for r in db.records()] == [("kn", True), ("nk", True), ("nk", False)]
        assert db.records()[1].to_dict()["layout"] == "nk"
        assert list(db.records()[0].to_dict())[8:10] == ["pattern", "layout"]
    finally:
        db.dispose()
    info = describe_file(p)
    assert info["problems"] == [] and info["best"] == 2  # one best per (key, layout): clean
    con = sqlite3.connect(p)  # two bests of one nk key: db check names the key with its layout
    con.execute("UPDATE sat_records SET is_best = 1 WHERE time_us = 12.0")
    con.commit()
    con.close()
    assert any("2 records are the best of one key" in x and x.endswith("uniform nk): 2, 3")
               for x in describe_file(p)["problems"])


def test_a_v3_file_is_migrated_to_4_with_every_record_kn(tmp_path):
    v3 = downgrade_to_v3(new_db(tmp_path / "v3.sqlite", make_record(10.0, CONFIG), make_record(9.0, {"a": 1})))
    cols = [r[1] for r in sql(v3, "PRAGMA table_info(sat_records)")]
    assert "layout" not in cols and describe_file(v3)["schema_version"] == 3 and describe_file(v3)["needs_migration"]
    uids = sql(v3, "SELECT uid FROM sat_records ORDER BY id")
    # read-only: read as kn, nothing written
    digest = v3.read_bytes()
    ro = TuningDB(v3, create=False, readonly=True)
    assert [r.layout for r in ro.records()] == ["kn", "kn"] and [(r.uid,) for r in ro.records()] == uids
    assert ro.best(**KEY).time_us == 9.0 and ro.best(**KEY, layout="nk") is None
    assert ro.best_sparse(**KEY, layout="nk") is None
    ro.dispose()
    assert lk.lookup(**KEY, gpu=GPU, db=v3, adapt=False).time_us == 9.0
    assert v3.read_bytes() == digest
    # writable: migrated in place, every row kn, uids and best flags kept, and nk records can be stored beside
    db = TuningDB(v3)
    db.store(make_record(7.0, CONFIG, layout="nk"))
    db.dispose()
    # op: schema 5, cold_us: 6
    assert [r[1] for r in sql(v3, "PRAGMA table_info(sat_records)")][-3:] == ["layout", "op", "cold_us"]
    assert sql(v3, "SELECT layout, uid, is_best FROM sat_records ORDER BY id")[:2] == [("kn", u, b) for (u,), b in
                                                                                         zip(uids, (0, 1))]
    assert sql(v3, "SELECT layout, is_best FROM sat_records WHERE id = 3") == [("nk", 1)]
    assert describe_file(v3)["schema_version"] == SCHEMA_VERSION and describe_file(v3)["problems"] == []


def test_the_v1_fixture_migrates_through_every_version_to_4(tmp_path):
    v1 = tmp_path / "v1.sqlite"
    shutil.copyfile(FIXTURE, v1)
    ro = TuningDB(v1, create=False, readonly=True)
    ro_uids = [r.uid for r in ro.records()]
    ro.dispose()
    TuningDB(v1).dispose()
    assert sql(v1, "SELECT DISTINCT layout FROM sat_records") == [("kn",)]
    assert [u for (u,) in sql(v1, "SELECT uid FROM sat_records ORDER BY id")] == ro_uids  # the uids v2 gave them


def test_merge_and_export_keep_the_layout(tmp_path, capsys):
    src = new_db(tmp_path / "src.sqlite", make_record(8.0, CONFIG, layout="nk"), make_record(10.0, CONFIG))
    dst = new_db(tmp_path / "dst.sqlite", make_record(9.0, {**CONFIG, "unroll": 2}, layout="nk"))
    db = TuningDB(dst)
    res = db.merge_from(src)
    again = db.merge_from(src)
    db.dispose()
    assert (res.added, res.new_best, again.added, again.skipped) == (2, 2, 0, 2)
    assert sql(dst, "SELECT layout, time_us, is_best FROM sat_records ORDER BY id") == [
        ("nk", 9.0, 0), ("nk", 8.0, 1), ("kn", 10.0, 1)]
    out = tmp_path / "exp.sqlite"
    rc, text, _ = run(["db", "export", out, "--db", dst], capsys)
    assert rc == 0 and sql(out, "SELECT layout, is_best FROM sat_records ORDER BY time_us") == [
        ("nk", 1), ("nk", 0), ("kn", 1)]
    rc, text, _ = run(["db", "list", "--db", dst], capsys)
    assert rc == 0 and "layout" in text.splitlines()[0] and " nk " in text and " kn " in text


# ---- lookup ---------------------------------------------------------------------------------------------------------


def _rec(t, cfg=None, family="csr_rowsplit", **over):
    return make_record(t, cfg or CONFIG, family=family, **over)


def test_nk_lookup_uses_nk_records_first_then_kn_records(toy_nk, tmp_path):
    p = new_db(tmp_path / "t.sqlite", _rec(10.0, cusparse_us=50.0, cublas_fp32_us=50.0),
               _rec(9.0, {"threads": 64, NK_PATH: "native"}, TOY, n=128, layout="nk", cusparse_us=50.0,
                    cublas_fp32_us=50.0))
    # kn: the kn record; an nk record never serves a kn problem
    kn = lk.lookup(**KEY, gpu=GPU, db=p)
    assert (kn.source, kn.family, kn.layout, kn.path, kn.record_layout) == ("exact", "csr_rowsplit", "kn", None, "kn")
    assert lk.lookup(**{**KEY, "n": 128}, gpu=GPU, db=p).record_layout == "kn"  # the nk exact key is not kn's
    # nk: the nk record (nearest: N=128 is another bucket) before the exact kn record
    nk = lk.lookup(**KEY, gpu=GPU, db=p, layout="nk")
    assert (nk.source, nk.family, nk.record_layout, nk.path) == ("nearest", TOY, "nk", "native")
    assert nk.config == {"threads": 64, NK_PATH: "native"}
    nk128 = lk.lookup(**{**KEY, "n": 128}, gpu=GPU, db=p, layout="nk")
    assert nk128.source == "exact" and nk128.record_layout == "nk"
    # another GPU model's nk records come after this model's kn records
    h200 = lk.lookup(**KEY, gpu="NVIDIA H200", cc="9.0", db=p, layout="nk")
    assert h200.source == "same-arch" and h200.record_layout == "nk"


def test_a_kn_record_serves_nk_natively_or_staged_by_its_family(toy_nk, tmp_path):
    p = new_db(tmp_path / "t.sqlite", _rec(10.0, cusparse_us=50.0, cublas_fp32_us=50.0),
               _rec(4.0, {"threads": 128}, TOY, n=64, cusparse_us=50.0, cublas_fp32_us=50.0))
    staged = lk.lookup(**KEY, gpu=GPU, db=p, layout="nk")
    assert (staged.source, staged.family, staged.record_layout, staged.layout, staged.path) == (
        "exact", "csr_rowsplit", "kn", "nk", "staged")
    assert staged.config == {**CONFIG, NK_PATH: "staged"} and staged.stored_config == CONFIG
    native = lk.lookup(**{**KEY, "n": 64}, gpu=GPU, db=p, layout="nk")
    assert (native.family, native.path, native.config) == (TOY, "native", {"threads": 128, NK_PATH: "native"})
    # exact only: an exact kn key serves nk too (no nearest)
    assert lk.lookup(**KEY, gpu=GPU, db=p, layout="nk", fallback=False).path == "staged"
    assert lk.lookup(**{**KEY, "n": 100}, gpu=GPU, db=p, layout="nk", fallback=False) is None
    # candidates (quick tuning): the same order and paths
    cands = lk.candidates(**{**KEY, "n": 64}, gpu=GPU, db=p, layout="nk")
    assert [(c.family, c.path) for c in cands[:2]] == [(TOY, "native"), ("csr_rowsplit", "staged")]
    assert all(c.layout == "nk" for c in cands)


def test_an_nk_record_whose_path_cannot_run_is_passed_over(toy_nk, tmp_path):
    """A stored native config of a family that declares no nk (a family changed since) is not run staged instead."""
    p = new_db(tmp_path / "t.sqlite", _rec(5.0, {**CONFIG, NK_PATH: "native"}, layout="nk"),
               _rec(7.0, {**CONFIG, "unroll": 2}, n=128, cusparse_us=50.0, cublas_fp32_us=50.0))
    got = lk.lookup(**KEY, gpu=GPU, db=p, layout="nk")
    assert got.record_layout == "kn" and got.config["unroll"] == 2 and got.path == "staged"


def test_a_kn_record_serving_nk_is_a_transferred_source(tmp_path):
    """A kn record read for nk: its kernel's time plus the staged path's estimated cost (staged_extra_us) must beat its
    own vendor baselines by TRANSFER_MARGIN, cuSPARSE counted at NK_CUSPARSE_FACTOR times its kn time (column-major
    operands, the bias kernel); an exact nk record with the same narrow win keeps its kernel."""
    extra = lk.staged_extra_us(KEY["m"], KEY["k"], KEY["n"], "fp32")
    assert 5.0 < extra < 10.0  # two launches and a pass over x and y (512 x 2048, N = 256, fp32)
    # cuSPARSE 1.05x the kernel in kn, but 2x that in nk: the staged kernel still wins by more than the margin
    cus = dict(cusparse_us=10.5, cublas_fp32_us=80.0)
    p = new_db(tmp_path / "t.sqlite", _rec(10.0, **cus))
    assert lk.lookup(**KEY, gpu=GPU, db=p).family == "csr_rowsplit"
    nk = lk.lookup(**KEY, gpu=GPU, db=p, layout="nk")
    assert (nk.family, nk.path, nk.note) == ("csr_rowsplit", "staged", None)
    # cuBLAS just slower than the staged kernel (10 us + extra): a narrow win, not carried to nk
    narrow = dict(cusparse_us=80.0, cublas_fp32_us=(10.0 + extra) * 1.05)
    q = new_db(tmp_path / "q.sqlite", _rec(10.0, **narrow))
    assert lk.lookup(**KEY, gpu=GPU, db=q).family == "csr_rowsplit"
    nk = lk.lookup(**KEY, gpu=GPU, db=q, layout="nk")
    assert (nk.family, nk.path, nk.layout, nk.record_layout) == ("dense", "native", "nk", "kn")
    assert "not carried to the nk layout (a kn record)" in nk.note and "staged in nk, estimated" in nk.note
    own = new_db(tmp_path / "o.sqlite", _rec(10.0, layout="nk", cusparse_us=10.5, cublas_fp32_us=10.6))
    got = lk.lookup(**KEY, gpu=GPU, db=own, layout="nk")
    assert (got.family, got.source, got.record_layout) == ("csr_rowsplit", "exact", "nk") and got.note is None
    wide = new_db(tmp_path / "w.sqlite", _rec(10.0, cusparse_us=20.0, cublas_fp32_us=40.0))
    assert lk.lookup(**KEY, gpu=GPU, db=wide, layout="nk").family == "csr_rowsplit"


def test_a_vendor_record_of_kn_serves_nk_as_its_nk_form(tmp_path):
    p = new_db(tmp_path / "t.sqlite", _rec(5.0, {"math": "fp32"}, "dense"))
    got = lk.lookup(**KEY, gpu=GPU, db=p, layout="nk")
    assert (got.family, got.config, got.path, got.record_layout) == ("dense", {"math": "fp32"}, "native", "kn")


def test_nk_is_served_by_cublas_not_cusparse_from_kn_records(tmp_path):
    """cuSPARSE in nk (column-major operands plus a bias kernel) ran at 0.31-0.73x of nn.Linear on MiniLM when H200 kn
    records of cuSPARSE served SparseLinear (session 11): a kn record of cuSPARSE, or a kernel whose kn baselines
    preferred cuSPARSE, serves nk with cuBLAS (F.linear) where the record has cuBLAS's time; an nk record of cuSPARSE
    (cuSPARSE measured in nk) keeps it, and kn problems keep the kn verdicts."""
    cus = new_db(tmp_path / "c.sqlite", _rec(8.0, {"alg": "CUSPARSE_SPMM_CSR_ALG3"}, "cusparse", cusparse_us=8.0,
                                             cublas_fp32_us=22.0))
    assert lk.lookup(**KEY, gpu=GPU, db=cus).family == "cusparse"
    nk = lk.lookup(**KEY, gpu=GPU, db=cus, layout="nk")
    assert (nk.family, nk.config, nk.path) == ("dense", {"math": "fp32"}, "native") and "F.linear" in nk.note
    # the kernel lost to cuSPARSE x 2 (8.2 < 10 + staged) and to cuBLAS: cuBLAS serves nk, though cuSPARSE's estimate
    # is the smaller
    lost = new_db(tmp_path / "l.sqlite", _rec(10.0, cusparse_us=4.1, cublas_fp32_us=9.0))
    nk = lk.lookup(**KEY, gpu=GPU, db=lost, layout="nk")
    assert nk.family == "dense" and "cuBLAS FP32" in nk.note
    assert lk.lookup(**KEY, gpu=GPU, db=lost).family == "cusparse"  # kn: cuSPARSE's own time won
    own = new_db(tmp_path / "o.sqlite", _rec(8.0, {"alg": "CUSPARSE_SPMM_CSR_ALG3"}, "cusparse", layout="nk"))
    assert lk.lookup(**KEY, gpu=GPU, db=own, layout="nk").family == "cusparse"


def test_the_default_of_an_nk_problem_has_its_path(toy_nk, tmp_path):
    got = lk.lookup(**KEY, gpu=GPU, db=tmp_path / "none.sqlite", layout="nk")
    assert got.source == "default" and got.layout == "nk" and got.path == got.config[NK_PATH]
    enabled = get_space(got.family)
    assert got.path == enabled.default_path()
    with pytest.raises(UserError, match="unknown layout"):
        lk.lookup(**KEY, gpu=GPU, db=tmp_path / "none.sqlite", layout="kN")


def test_seeds_of_an_nk_problem_prefer_nk_records(tmp_path):
    p = new_db(tmp_path / "t.sqlite", _rec(10.0), _rec(11.0, {**CONFIG, "unroll": 2, NK_PATH: "staged"}, n=512,
                                                       layout="nk"))
    db = TuningDB(p)
    try:
        kn = lk.seed_configs(db, **KEY, gpu=GPU)
        nk = lk.seed_configs(db, **KEY, gpu=GPU, layout="nk")
    finally:
        db.dispose()
    assert kn == [("csr_rowsplit", CONFIG)]  # nk records do not seed a kn search
    assert [c.get(NK_PATH) for _, c in nk] == [None, "staged"]  # the exact kn record is nearer than N=512 + 0.25


# ---- the command line -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", [["tune", "--shape", "8x8", "--density", "0.5"],
                                 ["lookup", "--shape", "8x8", "--density", "0.5"]])
def test_bad_layout_is_one_line_exit_2(cmd, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_AUTOTUNE_DB", str(tmp_path / "t.sqlite"))
    rc, out, err = run([*cmd, "--layout", "kx"], capsys)
    assert_one_line(rc, err, "argument --layout", "unknown layout 'kx'")
    assert out == "" and not (tmp_path / "t.sqlite").exists()


def test_the_help_says_what_nk_is(capsys):
    with pytest.raises(SystemExit):
        cli.main(["tune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--layout" in text and "the nn.Linear layout: x is N x K" in text and "bias fused" in text


def test_lookup_prints_the_layout_path(toy_nk, tmp_path, capsys):
    p = new_db(tmp_path / "t.sqlite", _rec(10.0, cusparse_us=50.0, cublas_fp32_us=50.0))
    base = ["lookup", "--shape", "512x2048", "--density", "0.1", "--n", "256", "--db", p, "--gpu", GPU]
    rc, out, _ = run(base, capsys)
    assert rc == 0 and "layout nk" not in out and "nk_path" not in out
    rc, out, _ = run([*base, "--layout", "nk"], capsys)
    assert rc == 0 and out.startswith("exact: csr_rowsplit") and '"nk_path": "staged"' in out
    assert "layout nk, staged: x transposed" in out and "(no nk record: a kn record serves it)" in out
    rc, out, _ = run([*base, "--layout", "nk", "--json"], capsys)
    got = json.loads(out)
    assert got["layout"] == "nk" and got["path"] == "staged" and got["record_layout"] == "kn"


def _checkpoint(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    w[np.abs(w) < 1.2] = 0.0
    c = rng.standard_normal((16, 32, 1, 1)).astype(np.float32)
    c[np.abs(c) < 1.2] = 0.0
    path = tmp_path / "m.npz"
    np.savez(path, **{"fc.weight": w, "conv.pw.weight": c})
    return path


def test_tune_model_runs_linear_layers_in_nk_and_convolutions_in_kn(tmp_path, capsys):
    ck = _checkpoint(tmp_path)
    rc, out, _ = run(["tune-model", ck, "--n", "16", "--dry-run", "--json"], capsys)
    got = {tuple(p["layers"]): p["layout"] for p in json.loads(out)["problems"]}
    assert rc == 0 and got == {("fc.weight",): "nk", ("conv.pw.weight",): "kn"}
    rc, out, _ = run(["tune-model", ck, "--n", "16", "--dry-run", "--layout", "kn"], capsys)
    assert rc == 0 and out.count(" kn: 1 layer(s)") == 2 and " nk:" not in out
    rc, out, err = run(["tune-model", ck, "--n", "16", "--dry-run", "--layout", "linear"], capsys)
    assert_one_line(rc, err, "argument --layout", "unknown layout 'linear'")
    layers = sparse_layers(find_layers(Checkpoint("x", {"a.weight": np.eye(8, dtype=np.float32),
                                                        "b.weight": np.eye(8, dtype=np.float32)})))
    jobs = plan(layers, {"a.weight": [4], "b.weight": [4]}, ["fp32"])
    assert len(jobs) == 1 and jobs[0].layout == "nk" and jobs[0].problem().key().endswith("_nk")
    with pytest.raises(UserError, match="unknown layout"):
        plan(layers, {"a.weight": [4], "b.weight": [4]}, ["fp32"], "x")


def test_the_queue_spec_carries_nk_only():
    from sparse_autotune.tuning.queue import problem_spec, spec_label
    kn = problem_spec(Problem.random(64, 128, 8, 0.1), 10, None, "tpe", None)
    nk = problem_spec(Problem.random(64, 128, 8, 0.1, layout="nk"), 10, None, "tpe", None)
    assert "layout" not in kn and nk["layout"] == "nk" and spec_label(nk).endswith(" nk")
    assert {k: v for k, v in nk.items() if k != "layout"} == kn


def test_the_report_line_says_the_layout():
    p = {"m": 64, "k": 128, "n": 8, "density": 0.1, "nnz": 819, "dtype": "fp16", "pattern": "uniform"}
    assert cli._problem_line(p) == "problem   A 64x128 (uniform, density 0.1, nnz 819) @ B 128x8, fp16"
    line = cli._problem_line({**p, "layout": "nk"})
    assert "y = x @ A^T + bias" in line and "x 8x128, y 8x64" in line and "layout nk" in line


# ---- op.linear through stand-ins for CuPy and torch -----------------------------------------------------------------


class _Rec:
    """An nk launcher stand-in: records (x_ptr, y_ptr, stream, bias_ptr)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_ptr, y_ptr, stream, bias_ptr):
        self.calls.append((x_ptr, y_ptr, stream, bias_ptr))


class _Arr:
    def __init__(self, shape, dtype=np.float32, device=0, contiguous=True):
        self.shape, self.ndim, self.dtype = tuple(shape), len(shape), np.dtype(dtype)
        self.device = types.SimpleNamespace(id=device)
        self.flags = types.SimpleNamespace(c_contiguous=contiguous)
        self.data = types.SimpleNamespace(ptr=id(self))


def _cupy(capturing=False):
    rt = types.SimpleNamespace(getDevice=lambda: 0, streamIsCapturing=lambda s: capturing)
    cuda = types.SimpleNamespace(runtime=rt, get_current_stream=lambda: types.SimpleNamespace(ptr=0x77))
    return types.SimpleNamespace(cuda=cuda, ndarray=_Arr, empty=lambda shape, dtype: _Arr(shape, dtype),
                                 ascontiguousarray=lambda a: _Arr(a.shape, a.dtype))


def test_linear_with_cupy_arrays_checks_and_launches_the_nk_launcher():
    import sparse_autotune as sa
    op = sa.SpMM(random_matrix(6, 10, 0.5, "uniform", 0))
    op._cp, op._dev_id = _cupy(), 0
    rec = op._nk_launchers[4] = _Rec()
    kn = op._launchers[4] = _Rec()
    x, bias = _Arr((4, 10)), _Arr((6,))
    y = op.linear(x, bias)
    assert y.shape == (4, 6) and rec.calls == [(x.data.ptr, y.data.ptr, 0x77, bias.data.ptr)] and not kn.calls
    out = _Arr((4, 6))
    assert op.linear(x, out=out) is out and rec.calls[-1] == (x.data.ptr, out.data.ptr, 0x77, 0)
    nc = _Arr((4, 10), contiguous=False)
    op.linear(nc, _Arr((6,), contiguous=False))
    assert rec.calls[-1][0] != nc.data.ptr and rec.calls[-1][3] not in (0, bias.data.ptr)
    for bad, match in ((_Arr((10, 4)), r"x has shape \(10, 4\), expected \(N, 10\)"), (_Arr((4, 10, 1)), "x has shape"),
                       (_Arr((4, 10), np.float16), "x has dtype float16"), (_Arr((4, 10), device=1), "x is on GPU 1")):
        with pytest.raises(UserError, match=match):
            op.linear(bad)
    for bad_bias in (_Arr((4,)), _Arr((6,), np.float16), _Arr((6,), device=1), _Arr((1, 6)), np.zeros(6, np.float32)):
        with pytest.raises(UserError, match=r"bias must be a CuPy array of shape \(6,\)"):
            op.linear(x, bad_bias)
    for bad_out in (_Arr((6, 4)), _Arr((4, 6), np.float16), _Arr((4, 6), contiguous=False)):
        with pytest.raises(UserError, match=r"out must be a C-contiguous \(4, 6\)"):
            op.linear(x, out=bad_out)
    with pytest.raises(UserError, match="x must be a CuPy array"):
        op.linear(np.zeros((4, 10), np.float32))
    n_calls = len(rec.calls)
    assert op.linear(_Arr((0, 10))).shape == (0, 6) and len(rec.calls) == n_calls  # N == 0: nothing launched
    op._cp = _cupy(capturing=True)  # a new N while capturing: refused, nothing planned
    with pytest.raises(UserError, match="call op.linear once with this N before CUDA graph capture"):
        op.linear(_Arr((8, 10)))
    assert 8 not in op._nk_launchers and 8 not in op._nk_plans and not kn.calls


def test_linear_with_torch_tensors_runs_on_torch_stream():
    import sparse_autotune as sa
    op = sa.SpMM(random_matrix(6, 10, 0.5, "uniform", 0))
    torch_, made = fake_torch()
    op._cp, op._dev_id = _cupy(), 0
    op._torch = (torch_, "float32", lambda dev: 0x5EED + dev)
    rec = op._nk_launchers[3] = _Rec()
    x, bias = FakeTensor((3, 10)), FakeTensor((6,))
    y = op.linear(x, bias)
    assert y is made[-1] and y.shape == (3, 6) and rec.calls == [(x.data_ptr(), y.data_ptr(), 0x5EED, bias.data_ptr())]
    for bad, match in ((FakeTensor((3, 10), cuda=False), "x is a CPU tensor"), (FakeTensor((3, 9)), "x has shape"),
                       (FakeTensor((3, 10), dtype="float16"), "x has dtype float16"), (FakeTensor((3, 10), device=1), "GPU 1")):
        with pytest.raises(UserError, match=match):
            op.linear(bad)
    for bad_bias in (FakeTensor((6,), cuda=False), FakeTensor((5,)), FakeTensor((6,), dtype="float16"), FakeTensor((6,), device=1)):
        with pytest.raises(UserError, match=r"bias must be a CUDA tensor of shape \(6,\)"):
            op.linear(x, bad_bias)
    with pytest.raises(UserError, match=r"out must be a C-contiguous \(3, 6\) tensor"):
        op.linear(x, out=FakeTensor((6, 3)))


def test_plan_of_nk_and_its_path():
    from sparse_autotune.runtime.spmm import Plan
    kn = Plan("csr_rowsplit", CONFIG, "exact")
    nk = Plan("csr_rowsplit", {**CONFIG, NK_PATH: "staged"}, "exact", "nk")
    vendor = Plan("cusparse", {"alg": "CUSPARSE_SPMM_ALG_DEFAULT"}, "exact", "nk")
    assert kn.layout == "kn" and kn.path is None and nk.path == "staged" and vendor.path == "native"
    family, cfg, source = nk  # still the tuple it always was
    assert (family, source) == ("csr_rowsplit", "exact") and nk == ("csr_rowsplit", cfg, "exact")
    assert "layout='nk', path='staged'" in repr(nk) and "layout" not in repr(kn)
    import pickle
    back = pickle.loads(pickle.dumps(nk))
    assert back.layout == "nk" and back == nk
    import sparse_autotune as sa
    op = sa.SpMM(random_matrix(6, 10, 0.5, "uniform", 0))
    with pytest.raises(UserError, match="unknown layout 'kk'"):
        op.plan(4, "kk")
    state = {k: v for k, v in op.__dict__.items() if k not in ("_nk_plans", "_nk_launchers", "quick_nk")}
    old = sa.SpMM.__new__(sa.SpMM)
    old.__setstate__(state)  # an operator pickled before the nk layout existed
    assert old._nk_launchers == {} and old._nk_plans == {} and old.quick_nk == {}



def test_a_kn_record_serving_nk_natively_is_costed_by_the_family_nk_cost(toy_nk, tmp_path):
    """A kn record of a family that declares nk, read for nk, counts its space's nk_cost times its kn time against the
    vendor baselines (the toy family states none: 2.0); a space's nk_cost outside [0.5, 10] is refused."""
    from sparse_autotune.core.families import get_family
    from sparse_autotune.core.space import parse_space
    assert get_family(TOY).space.nk_cost == 2.0 and get_family("csr_gemv").space.nk_cost == 1.0
    p = new_db(tmp_path / "t.sqlite", _rec(10.0, {"threads": 64}, TOY, cusparse_us=80.0, cublas_fp32_us=15.0))
    assert lk.lookup(**KEY, gpu=GPU, db=p).family == TOY  # kn: 10 us beats cuBLAS's 15
    nk = lk.lookup(**KEY, gpu=GPU, db=p, layout="nk")  # nk: 2 x 10 us does not
    assert (nk.family, nk.path) == ("dense", "native") and "its nk kernel, estimated" in nk.note
    q = new_db(tmp_path / "q.sqlite", _rec(10.0, {"threads": 64}, TOY, cusparse_us=80.0, cublas_fp32_us=40.0))
    assert (lk.lookup(**KEY, gpu=GPU, db=q, layout="nk").family, lk.lookup(**KEY, gpu=GPU, db=q, layout="nk").path) \
        == (TOY, "native")
    base = {"family": "f", "template": "f.cu.j2", "params": {"a": {"values": [1]}}}
    with pytest.raises(ValueError, match="nk_cost"):
        parse_space({**base, "nk_cost": 0.1}, "f.toml")
    with pytest.raises(ValueError, match="malformed"):
        parse_space({**base, "nk_cost": "fast"}, "f.toml")


def test_sparse_linear_state_drops_the_fast_calls():
    """SparseLinear's pickled state holds no fast-path closures (they close over launchers): a copy starts without
    them, and a layer pickled before they existed gets an empty table."""
    torch = pytest.importorskip("torch")
    from sparse_autotune.runtime.nn import SparseLinear
    layer = SparseLinear(torch.from_numpy(random_matrix(6, 10, 0.5, "uniform", 0).toarray()), torch.ones(6))
    layer._fast["key"] = ("bias", 0, None, lambda x: x)
    state = layer.__getstate__()
    assert state["_fast"] == {} and "key" in layer._fast
    back = SparseLinear.__new__(SparseLinear)
    back.__setstate__(state)
    assert back._fast == {} and back.out_features == 6
    old = SparseLinear.__new__(SparseLinear)
    old.__setstate__({k: v for k, v in state.items() if k != "_fast"})
    assert old._fast == {}


def test_the_cublaslt_constants_match_the_installed_header():
    """device.vendor's LtBiasGemm passes cublasLt.h's enum values and struct size by number (ctypes): they must be the
    header's (the one the nvidia-cublas wheel installs; skipped where there is none)."""
    import re
    import sys

    from sparse_autotune.device import vendor as v
    found = [p for d in sys.path for p in Path(d).glob("nvidia/cu1*/include/cublasLt.h")] if sys.path else []
    found += list(Path("/usr/local").glob("cuda*/include/cublasLt.h"))
    if not found:
        pytest.skip("no cublasLt.h on this machine")
    text = found[0].read_text()

    def enum(name):
        return int(re.search(rf"\b{name}\s*=\s*(\d+)", text).group(1))
    assert enum("CUBLASLT_MATMUL_DESC_TRANSA") == v.LT_TRANSA and enum("CUBLASLT_MATMUL_DESC_TRANSB") == v.LT_TRANSB
    assert enum("CUBLASLT_MATMUL_DESC_EPILOGUE") == v.LT_EPILOGUE
    assert enum("CUBLASLT_MATMUL_DESC_BIAS_POINTER") == v.LT_BIAS_POINTER
    assert enum("CUBLASLT_EPILOGUE_BIAS") == v.LT_EPILOGUE_BIAS
    assert enum("CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES") == v.LT_PREF_MAX_WORKSPACE_BYTES
    # the heuristic result: the algo (8 x uint64), workspaceSize (size_t), state, wavesCount, int reserved[4]
    end = text.index("} cublasLtMatmulHeuristicResult_t;")
    body = text[text.rindex("typedef struct {", 0, end):end]
    fields = re.findall(r"^\s*([A-Za-z_]\w*)\s+([A-Za-z_]\w*(?:\[\d+\])?);", body, re.M)
    assert [f[0] for f in fields] == ["cublasLtMatmulAlgo_t", "size_t", "cublasStatus_t", "float", "int"], fields
    assert fields[-1][1] == "reserved[4]" and "uint64_t data[8];\n} cublasLtMatmulAlgo_t;" in text
    assert v.LT_HEURISTIC_RESULT_BYTES == 64 + 8 + 4 + 4 + 16
