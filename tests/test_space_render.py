"""Variant spaces and template rendering (CPU only; the nvcc check needs the CUDA toolkit, not a GPU)."""
from __future__ import annotations

import concurrent.futures
import functools
import math
import re

import numpy as np
import optuna
import pytest

from sparse_autotune.device import compile as sat_compile
from sparse_autotune.core import render
from sparse_autotune.core import space
from sparse_autotune.core.families import get_family
from sparse_autotune.core.problem import random_matrix
from sparse_autotune.resources import resource_dir

DTYPES = ("fp32", "fp16")
# the reference problem of the brief: A 512 x 2048 at 10 % density, N = 256
M, K, N = 512, 2048, 256
NNZ = round(0.1 * M * K)
HEADER = re.compile(r"^// sparse-autotune family (\S+) \| (.*)$", re.MULTILINE)


# the pattern-specialised families render for one matrix: a small one (they have an nnz limit)
SMALL = random_matrix(64, 256, 0.05, "uniform", seed=0)


def spaces():
    return list(space.load_spaces())


# The whole-space sweeps below run for the families enabled by default in the default run, for the others in the heavy
# tier (pytest -m heavy; CI's time is short)
TIERS = [pytest.param(True, id="enabled"), pytest.param(False, id="not-enabled", marks=pytest.mark.heavy)]


def tier(enabled: bool):
    return [sp for sp in spaces() if sp.enabled == enabled]


def env_for(dtype, m=M, k=K, n=N):
    return space.problem_env(m, k, n, NNZ, dtype)


def env_of(sp, dtype):
    """The reference problem, or the small matrix's for the families rendered per pattern; a family's gate (where the
    tuner searches it: core.space.DEFAULT_LIMITS) off, so that every family's kernels are checked on it."""
    if sp.needs_matrix:
        return {**space.problem_env(SMALL.shape[0], SMALL.shape[1], N, SMALL.nnz, dtype), "gate": 0}
    return {**env_for(dtype), "gate": 0}


def rnd(sp, cfg, dtype):
    fam = get_family(sp.family)
    return render.render(sp, cfg, dtype, fam.context(SMALL, cfg) if sp.needs_matrix else None)


def is_kernel_source(src: str) -> bool:
    return 'extern "C" __global__' in src or ".entry spmm_kernel(" in src  # CUDA C++ or PTX


def header_fields(src: str) -> tuple[str, dict]:
    """The family and the key=value pairs of the first-line comment the template writes."""
    mt = HEADER.search(src)
    assert mt, "rendered source has no sparse-autotune header comment"
    return mt.group(1), dict(kv.split("=", 1) for kv in mt.group(2).split())


@functools.lru_cache(maxsize=None)
def _feasible(family: str, dtype: str) -> tuple[dict, ...]:
    """The feasible configs of the reference problem, listed once per module run (csr_rowsplit has ~160k)."""
    sp = space.get_space(family)
    return tuple(sp.feasible(dtype, env_of(sp, dtype)))


@functools.lru_cache(maxsize=None)
def _covering_indices(family: str, dtype: str, size: int, seed: int) -> tuple[int, ...]:
    sp = space.get_space(family)
    feas = _feasible(family, dtype)
    order = np.random.default_rng(seed).permutation(len(feas))
    pairs = sorted({(p.name, repr(v)) for p in sp.params for v in p.choices(dtype)})
    col = {pv: j for j, pv in enumerate(pairs)}
    has = np.zeros((len(feas), len(pairs)), dtype=bool)  # has[i, j]: config i takes value pair j
    for i, c in enumerate(feas):
        has[i, [col[(k, repr(v))] for k, v in c.items() if (k, repr(v)) in col]] = True
    need = has.any(axis=0)  # the pairs some feasible config takes
    in_order = has[order]
    chosen: list[int] = []
    while need.any():  # greedy set cover: the first config in the seeded order that covers the most pairs needed
        best_i = int(order[np.argmax(in_order[:, need].sum(axis=1))])
        chosen.append(best_i)
        need &= ~has[best_i]
    for i in order:
        if len(chosen) >= size:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return tuple(chosen)


def covering_sample(sp: space.Space, dtype: str, size: int, seed: int = 0) -> list[dict]:
    """At least `size` feasible configs (for the reference problem) such that every value of every parameter that
    some feasible config has appears at least once: greedy set cover over a seeded shuffle, then seeded filler."""
    feas = _feasible(sp.family, dtype)
    return [dict(feas[i]) for i in _covering_indices(sp.family, dtype, size, seed)]


# ---- rendering ------------------------------------------------------------------------------------------

RENDER_ALL = 1000


@pytest.mark.parametrize("enabled", TIERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_config_renders(dtype, enabled):
    """Configs of every space (feasible or not) render, carry the kernel entry point, and state their own parameters
    in the header; no two configs give the same source. Every config of a space up to RENDER_ALL configs, else an
    evenly spread sample of RENDER_ALL of them that still takes every value of every parameter (rendering all ~65k fp16
    configs took ~40 s of CI's 15 minutes; 3000 a space ~100 s on a slow day); the count of the enumeration is checked
    whole."""
    for sp in tier(enabled):
        cfgs = list(sp.enumerate(dtype))
        n_cfg = len(cfgs)
        step = max(1, -(-n_cfg // RENDER_ALL))
        picked = {i for i in range(0, n_cfg, step)}
        kd = sp.kernel_dtype(dtype)  # one config for each value of each parameter (None: left out by its `when`)
        missing = {(p.name, repr(v)) for p in sp.params for v in p.choices(kd)} | {
            (p.name, "None") for p in sp.params if p.when}
        missing -= {(p.name, repr(cfgs[i].get(p.name))) for i in picked for p in sp.params}
        for i, c in enumerate(cfgs if missing else ()):  # (the spread sample leaves few: a value's first config)
            hit = {(name, r) for name, r in missing if repr(c.get(name)) == r}
            if hit:
                picked.add(i)
                missing -= hit
                if not missing:
                    break
        hashes = set()
        for i in sorted(picked):
            cfg = cfgs[i]
            src = rnd(sp, cfg, dtype)
            assert is_kernel_source(src), cfg
            assert "spmm_kernel" in src, cfg
            fam, fields = header_fields(src)
            assert fam == sp.family
            assert fields.pop("layout", "kn") == "kn", cfg  # a header may state the layout too (rendered kn here)
            assert fields == {"dtype": dtype, **{k: str(v) for k, v in cfg.items()}}, cfg
            hashes.add(render.source_hash(src))
        assert n_cfg == sp.size(dtype) and (n_cfg > 0) == sp.supports(dtype)  # none for a dtype it lacks
        assert len(hashes) == len(picked), "two different configs rendered to the same source"


@pytest.mark.parametrize("enabled", TIERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_render_is_deterministic(dtype, enabled):
    rng = np.random.default_rng(1)
    for sp in tier(enabled):
        cfgs = list(sp.enumerate(dtype))
        for i in rng.choice(len(cfgs), size=min(60, len(cfgs)), replace=False):
            a = rnd(sp, dict(cfgs[i]), dtype)
            b = rnd(sp, dict(reversed(list(cfgs[i].items()))), dtype)  # key order must not matter
            assert a.encode() == b.encode()
            assert render.source_hash(a) == render.source_hash(b)


def test_render_rejects_missing_parameter():
    sp = spaces()[0]
    cfg = next(iter(sp.enumerate("fp32")))
    cfg.pop(sp.params[0].name)
    with pytest.raises(Exception):  # StrictUndefined: a missing parameter is an error, not an empty string
        render.render(sp, cfg, "fp32")


@pytest.mark.parametrize("enabled", TIERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_parameter_value_survives_the_constraints(dtype, enabled):
    """For the reference problem, no constraint kills a parameter value entirely, and the rendered source of the
    covering sample shows each value."""
    for sp in tier(enabled):
        sample = covering_sample(sp, dtype, size=0)
        if not sp.supports(dtype):  # e.g. tc_gather computes fp16 only
            assert not sample
            continue
        seen: dict[str, set] = {p.name: set() for p in sp.params}
        for cfg in sample:
            assert sp.check(cfg, env_of(sp, dtype)) is None
            _, fields = header_fields(rnd(sp, cfg, dtype))
            for k, v in fields.items():
                if k not in ("dtype", "layout"):
                    seen[k].add(v)
        for p in sp.params:
            if p.when and "dtype" in p.when and not sp.active(p.name, sample[0], dtype):
                continue  # a parameter of other dtypes only (its `when` names the dtype: tc_gather2's split, fp32's)
            want = {str(v) for v in p.choices(dtype)}
            assert want, f"{p.name} has no values for {dtype}"
            assert seen[p.name] == want, f"{sp.family}.{p.name}: values {want - seen[p.name]} never feasible"


# ---- offline compilation with nvcc ----------------------------------------------------------------------

# families whose own test files build their covering samples or known goods with nvcc for their target (sm_90a) and
# check spills there: tests/families/test_tc_wgmma.py, test_tc_sp24.py
OWN_NVCC = {"tc_wgmma", "tc_sp24"}
SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _nvcc_reports(enabled: bool):
    """nvcc's reports for a covering sample of the families enabled by default (enabled=True) or of the others."""
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    jobs = []
    per_family = math.ceil(24 / len(spaces()))  # ~24 configs per dtype in all (more where covering needs it)
    for sp in spaces():
        if sp.enabled != enabled or sp.family in OWN_NVCC:
            continue
        for dtype in DTYPES:
            for cfg in covering_sample(sp, dtype, size=per_family, seed=2):
                jobs.append((sp.family, dtype, cfg, rnd(sp, cfg, dtype)))
    arch = {sp.family: sp.arch or "sm_90" for sp in spaces()}  # a family's own target (tc_wgmma: sm_90a)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda j: sat_compile.nvcc_check(j[3], arch=arch[j[0]]), jobs))
    return list(zip(jobs, reports))


@pytest.fixture(scope="module")
def nvcc_reports():
    return _nvcc_reports(enabled=True)


def _check_reports(reports, enabled: bool):
    assert {j[0] for j, _ in reports} == {sp.family for sp in spaces() if sp.enabled == enabled} - OWN_NVCC
    for (family, dtype, cfg, _), report in reports:
        assert f"entry function 'spmm_kernel' for '{get_family(family).space.arch or 'sm_90'}'" in report, \
            (family, dtype, cfg)
        assert "Used" in report and "registers" in report


def test_covering_sample_compiles_with_nvcc(nvcc_reports):
    """The families of OWN_NVCC are left to their own files' nvcc checks (CI's time)."""
    assert len(nvcc_reports) >= 15  # the enabled families, ~2 configs a family and dtype (tc_gather: no fp32)
    _check_reports(nvcc_reports, enabled=True)


@pytest.mark.heavy
def test_covering_sample_of_the_families_not_enabled_compiles_with_nvcc():
    """The families that are not enabled by default (--families names them): the heavy tier (pytest -m heavy)."""
    reports = _nvcc_reports(enabled=False)
    assert len(reports) >= 15
    _check_reports(reports, enabled=False)


def test_covering_sample_compiles_without_spills(nvcc_reports):
    """Measured with CUDA 13.0 for sm_90. csr_rowsplit: no config of the sample with <= 512 threads per block spills;
    a 1024-thread block (__launch_bounds__(1024) caps the registers) may spill a few bytes (seen: 4 bytes for fp16,
    rows 32 x lanes 32, vec 4, cols_per_thread 2, smem), and so may a split-row config (seen in session 19, the same
    bytes before and after `acc` existed: 4 bytes for fp16, rows 32 x lanes 2, vec 4, cols_per_thread 4, split 64, at
    40 registers). The other families only have to compile."""
    strict = 0
    for (family, dtype, cfg, _), report in nvcc_reports:
        mt = SPILL.search(report)
        assert mt, report
        if family == "csr_rowsplit" and cfg["rows_per_block"] * cfg["lanes_per_row"] <= 512:
            if cfg["split"] > 0:
                assert int(mt.group(1)) <= 8, f"{family} {dtype} {cfg} spills: {mt.group(0)}"
                continue
            strict += 1
            assert mt.groups() == ("0", "0"), f"{family} {dtype} {cfg} spills: {mt.group(0)}"
    assert strict >= 3  # the covering sample of session 19 holds 4 such configs


def test_smem_stage_uses_the_shared_memory_the_constraint_budgets(nvcc_reports):
    """The smem constraint budgets rows_per_block * (chunk + 1) * 8 bytes for staging and, with split > 0,
    (rows_per_block - 1) * tile width * 4 bytes of partial sums; ptxas must agree."""
    checked = split = 0
    for (family, dtype, cfg, _), report in nvcc_reports:
        if family != "csr_rowsplit":
            continue
        mt = re.search(r"(\d+) bytes smem", report)
        used = int(mt.group(1)) if mt else 0  # ptxas leaves the field out when there is none
        want = cfg["rows_per_block"] * (cfg["chunk"] + 1) * 8 if cfg.get("stage") == "smem" else 0
        if cfg["split"] > 0:
            want += (cfg["rows_per_block"] - 1) * cfg["lanes_per_row"] * cfg["vec"] * cfg["cols_per_thread"] * 4
            split += 1
        assert used == want, (cfg, report)
        checked += cfg.get("stage") == "smem"
    assert checked > 0 and split > 0


def test_nvcc_check_reports_compile_errors():
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found")
    from sparse_autotune.errors import CandidateError
    with pytest.raises(CandidateError) as info:
        sat_compile.nvcc_check('extern "C" __global__ void spmm_kernel() { this is not C++; }')
    assert info.value.stage == "compile"
    assert "error" in info.value.log


# ---- known-good configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_known_good_defaults_are_feasible_and_normalized(dtype):
    for sp in spaces():
        defaults = sp.defaults(dtype, env_of(sp, dtype))
        if not sp.supports(dtype):  # e.g. tc_gather computes fp16 only: no config at all
            assert not defaults and next(iter(sp.feasible(dtype, env_of(sp, dtype))), None) is None
            continue
        assert defaults, f"{sp.family}: no known-good config usable for {dtype}"
        for cfg in defaults:
            assert sp.check(cfg, env_of(sp, dtype)) is None
            assert sp.normalize(cfg, dtype) == cfg
            active = [p.name for p in sp.params if sp.active(p.name, cfg)]
            assert list(cfg) == active  # declaration order, active parameters only
            assert list(_walk_to(sp, dtype, cfg)) == [cfg]  # a config the enumeration yields, exactly once


def _walk_to(sp, dtype, cfg):
    """The configs of sp.enumerate(dtype) equal to cfg, by enumerate's own walk kept to cfg's branch (each parameter
    set as cfg sets it, or left out where cfg leaves it out): the enumeration's members without listing 500k of them."""
    env: dict = {}

    def on_branch(i):
        name = sp.params[i].name
        return env.get(name, _ABSENT) == cfg.get(name, _ABSENT)
    return sp._walk(sp.kernel_dtype(dtype), on_branch, env)


_ABSENT = object()


def _family_params():
    out = []
    for sp in spaces():
        out.append(pytest.param(sp.family, id=sp.family))
    return out


@pytest.mark.parametrize("family", _family_params())
def test_known_good_entries_are_exact_and_used(family):
    """Every known_good entry names exactly the active parameters (no stray keys silently dropped) and is a
    default for the reference problem in at least one dtype."""
    sp = space.get_space(family)
    for kg in sp.known_good:
        kg = {k: v for k, v in kg.items() if k != space.FIRST_WHEN}  # the one key beside the parameters
        used = [dt for dt in DTYPES if kg in sp.defaults(dt, env_of(sp, dt))]
        assert used, f"{sp.family}: known_good {kg} is never used"
        for dt in used:
            assert sp.normalize(kg, dt) == kg


# ---- Optuna mapping -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_suggest_round_trips_through_optuna_params(dtype):
    rng = np.random.default_rng(3)
    for sp in spaces():
        cfgs = list(sp.enumerate(dtype))
        sample = ([cfgs[i] for i in rng.choice(len(cfgs), size=min(100, len(cfgs)), replace=False)]
                  + sp.defaults(dtype, env_of(sp, dtype)))
        for cfg in sample:
            params = {"family": sp.family, **sp.to_optuna_params(cfg, dtype)}
            trial = optuna.trial.FixedTrial(params)
            assert trial.suggest_categorical("family", [sp.family]) == sp.family
            assert sp.suggest(trial, dtype) == cfg


def test_numeric_parameters_map_to_ordinals():
    sp = space.get_space("csr_rowsplit")
    cfg = sp.defaults("fp16", env_for("fp16"))[0]
    params = sp.to_optuna_params(cfg, "fp16")
    for p in sp.params:
        if p.name not in cfg:
            continue
        v = params[sp.optuna_name(p.name, "fp16")]
        if all(isinstance(c, int) for c in p.choices("fp16")):
            assert sorted(p.choices("fp16"))[v] == cfg[p.name]
        else:
            assert v == cfg[p.name]


# ---- malformed space files ------------------------------------------------------------------------------

def _good_space_data():
    return {"family": "toy", "template": "toy.j2", "description": "d",
            "params": {"a": {"values": [1, 2]}, "b": {"values": ["x", "y"], "when": "a == 2"}},
            "constraints": [{"expr": "a >= 1", "why": "positive"}],
            "known_good": [{"a": 1}]}


def test_parse_space_accepts_good_data():
    sp = space.parse_space(_good_space_data())
    assert sp.family == "toy" and [p.name for p in sp.params] == ["a", "b"]
    assert list(sp.enumerate("fp32")) == [{"a": 1}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert sp.defaults("fp32", {}) == [{"a": 1}]


def test_a_constraint_of_the_problem_alone_refuses_the_whole_space_without_walking_it():
    """Space.refusal: the first failing constraint that names no parameter (every config fails it); feasible then
    yields nothing, and agrees with check wherever the problem passes."""
    data = _good_space_data()
    data["constraints"] = [{"expr": "N % 8 == 0 and max_threads >= 256", "why": "whole rows"},
                           {"expr": "a * N <= 64", "why": "tile"}]
    sp = space.parse_space(data)
    assert sp.refusal({"N": 12}) == "whole rows (N % 8 == 0 and max_threads >= 256)"
    assert sp.refusal({"N": 16}, {"max_threads": 128}) is not None  # the limits count as the problem's
    assert list(sp.feasible("fp32", {"N": 12})) == []
    assert sp.refusal({"N": 64}) is None  # "tile" names a: not the problem's alone
    assert list(sp.feasible("fp32", {"N": 64})) == [{"a": 1}]
    assert list(sp.feasible("fp32", {"N": 16})) == [c for c in sp.enumerate("fp32") if sp.check(c, {"N": 16}) is None]
    tc = get_family("tc_sp24").space  # a real space: N = 13 is refused by its TMA rows, before 500 k configs
    assert "N % 8 == 0" in tc.refusal(space.problem_env(1024, 1024, 13, 50_000, "fp16"))
    assert tc.refusal(space.problem_env(1024, 1024, 16, 50_000, "fp16")) is None


def test_feasible_prunes_as_check_decides_one_config_at_a_time():
    """Space.feasible walks the space testing each constraint once its parameters are decided and dropping the subtree
    where one fails: it yields what check passes, in enumerate's order. A toy space covers the corners (a constraint on
    a parameter left inactive passes, a `when` on an earlier parameter, a parameter named like a problem name takes
    check's way); real spaces of every kind (tile families, conv, SDDMM, transposed SpMM; the smaller ones, as check is
    slow) at kn and nk, fp16 / bf16 / tf32 / fp32, with and without the gate, and problems they refuse in part."""
    data = _good_space_data()
    data["params"]["a"]["values"] = [2, 8, 1, 4]  # (c set under 2 and 8, then inactive under 1: no value left over)
    data["params"]["c"] = {"values": [0, 1, 2], "when": "a >= 2"}
    data["constraints"] = [{"expr": "b == 'y' or a != 2", "why": "pair"}, {"expr": "c * a <= N", "why": "tile"},
                           {"expr": "a <= max_threads // 256", "why": "threads"}]
    sp = space.parse_space(data)
    for n in (0, 3, 8, 100):
        for lim in (None, {"max_threads": 512}):
            want = [c for c in sp.enumerate("fp32") if sp.check(c, {"N": n}, lim) is None]
            got = list(sp.feasible("fp32", {"N": n}, lim))
            assert got == want == list(sp._feasible_by_check("fp32", {"N": n}, lim))
    assert {"a": 1} in list(sp.feasible("fp32", {"N": 0}))  # b and c inactive: "pair" and "tile" pass, as in check
    data["params"]["N"] = {"values": [1, 2]}  # a parameter shadowing the problem's N: check's way, same answer
    shadow = space.parse_space(data)
    assert list(shadow.feasible("fp32", {"N": 5})) == list(shadow._feasible_by_check("fp32", {"N": 5}))
    real = [get_family(f).space for f in ("tc_union", "tc_gather", "bitmap_rows", "csr_splitk", "tc_tiled")]
    real += [s for sub in ("conv", "sddmm", "spmm_t")
             for s in space.load_spaces(str(resource_dir("search_spaces") / sub))
             if s.family != "conv_tile"]  # (605k configs: minutes through check)
    for sp in real:
        for dtype, layout in (("fp16", "kn"), ("bf16", "nk"), ("tf32", "kn"), ("fp32", "nk")):
            lay = sp.for_layout(layout)
            for j, (m, k, n, nnz) in enumerate(((64, 256, 20, 800), (1024, 4096, 128, 400_000),
                                                (100, 70_000, 1, 1000), (64, 256, 20, 800))):
                lim = (None, {"gate": 0})[j % 2]  # (the first problem under both, the others under one: CI's time)
                env = space.problem_env(m, k, n, nnz, dtype, layout)
                assert list(lay.feasible(dtype, env, lim)) == list(lay._feasible_by_check(dtype, env, lim)), (
                    sp.family, dtype, layout, m, k, n, lim)
    from sparse_autotune.ops import conv  # noqa: PLC0415 - the conv spaces on conv problems (their own names)
    for sp in (s for s in conv.load_conv_spaces() if s.family != "conv_tile"):
        for g in (conv.Geometry(64, 64, 56, 56), conv.Geometry(256, 256, 14, 14, 8, 2, "nhwc")):
            for dtype in ("fp32", "fp16"):
                env = conv.conv_env(g, g.cout * g.cin * 9 // 10, dtype)
                assert list(sp.feasible(dtype, env)) == list(sp._feasible_by_check(dtype, env)), (sp.family, g, dtype)


def test_size_counts_what_enumerate_lists():
    """Space.size counts the configs without listing them (states below a parameter counted once): the same number
    as enumerate's list on a toy space whose `when`s read earlier parameters, one of them left inactive on a branch, and
    on the real spaces of every kind (the largest listed in test_every_config_renders, which checks its count too)."""
    data = _good_space_data()
    data["params"]["a"]["values"] = [2, 8, 1, 4]
    data["params"]["c"] = {"values": [0, 1, 2], "when": "a >= 2"}
    data["params"]["d"] = {"values": [5, 6], "when": "a == 1 or c == 1"}  # reads c, absent under a = 1
    sp = space.parse_space(data)
    listed = list(sp.enumerate("fp32"))
    assert sp.size("fp32") == len(listed) and {"a": 1, "d": 5} in listed
    assert sp.size("fp16") == len(list(sp.enumerate("fp16")))
    real = list(space.load_spaces())
    real += [s for sub in ("conv", "sddmm", "spmm_t") for s in space.load_spaces(str(resource_dir("search_spaces") / sub))]
    for s in real:
        for dtype in ("fp16", "tf32"):
            if s.size(dtype) <= 200_000:
                assert s.size(dtype) == sum(1 for _ in s.enumerate(dtype)), (s.family, dtype)


def test_impossible_values_are_those_a_single_parameter_constraint_rules_out_for_the_problem():
    """Space.impossible_values: a value is listed where a constraint naming only that parameter (besides the problem
    and the limits) fails at it; no feasible config has a listed value, and constraints naming two parameters list
    nothing."""
    data = _good_space_data()
    data["params"]["a"]["values"] = [1, 2, 4, 8]
    data["constraints"] = [{"expr": "a <= N", "why": "tile"}, {"expr": "a * 2 != 4 or b == 'y'", "why": "pair"}]
    sp = space.parse_space(data)
    assert sp.impossible_values("fp32", {"N": 3}) == {("a", 4), ("a", 8)}
    assert sp.impossible_values("fp32", {"N": 16}) == set()
    feas = list(sp.feasible("fp32", {"N": 3}))
    assert feas and not any(("a", v) in c.items() for c in feas for v in (4, 8))
    tc = get_family("tc_sp24").space  # N = 64: no column tile wider than 64
    assert {("bn", 128), ("bn", 256)} <= tc.impossible_values("fp16", space.problem_env(1024, 1024, 64, 50_000, "fp16"))


def test_known_good_first_when_puts_a_config_first_where_it_holds():
    """A known-good config with first_when (an expression of the problem, limits and config) is tried first where it
    holds, in file order elsewhere; one that does not parse is a malformed space."""
    data = _good_space_data()
    data["known_good"] = [{"a": 1}, {"a": 2, "b": "y", "first_when": "K * a > 100"}, {"a": 2, "b": "x"}]
    sp = space.parse_space(data)
    assert sp.defaults("fp32", {"K": 10}) == [{"a": 1}, {"a": 2, "b": "y"}, {"a": 2, "b": "x"}]
    assert sp.defaults("fp32", {"K": 60}) == [{"a": 2, "b": "y"}, {"a": 1}, {"a": 2, "b": "x"}]
    data["known_good"][1]["first_when"] = "K >"
    with pytest.raises(ValueError, match="first_when"):
        space.parse_space(data, "toy.toml")


def _drop(key):
    def f(d):
        del d[key]
    return f


MALFORMED = {
    "no family": _drop("family"),
    "no template": _drop("template"),
    "no params": _drop("params"),
    "param without values": lambda d: d["params"].update(a={}),
    "param spec not a table": lambda d: d["params"].update(a=[1, 2]),
    "constraint without expr": lambda d: d.update(constraints=[{"why": "w"}]),
    "constraints not a list of tables": lambda d: d.update(constraints="a > 0"),
}


@pytest.mark.parametrize("what", list(MALFORMED))
def test_parse_space_rejects_malformed_data(what):
    data = _good_space_data()
    MALFORMED[what](data)
    with pytest.raises(ValueError):
        space.parse_space(data, "toy.toml")


def test_parse_space_rejects_params_not_a_table():
    data = _good_space_data()
    data["params"] = [{"values": [1]}]
    with pytest.raises(ValueError):
        space.parse_space(data, "toy.toml")


def test_parse_space_rejects_constraint_syntax_error():
    data = _good_space_data()
    data["constraints"] = [{"expr": "a >", "why": "w"}]
    with pytest.raises(ValueError):
        space.parse_space(data, "toy.toml")


def test_parse_space_rejects_when_syntax_error():
    data = _good_space_data()
    data["params"]["b"]["when"] = "a =="
    with pytest.raises((ValueError, SyntaxError)):
        space.parse_space(data, "toy.toml")


def test_a_study_goes_on_after_a_categorical_parameter_gains_a_value():
    """bench --retune continues studies made by an older space: a categorical that gained a value (bf16's acc got
    h2x4) must not make Optuna refuse the study ('CategoricalDistribution does not support dynamic value space'), and
    a numeric parameter's longer list (an ordinal's range) must not either."""
    import optuna
    old = space.parse_space({"family": "f", "template": "f.cu.j2", "dtypes": ["fp16", "bf16"],
                             "params": {"acc": {"values": {"fp16": ["f32", "h2x4"], "bf16": ["f32"]}},
                                        "unroll": {"values": [1, 2]}}})
    new = space.parse_space({"family": "f", "template": "f.cu.j2", "dtypes": ["fp16", "bf16"],
                             "params": {"acc": {"values": {"fp16": ["f32", "h2x4"], "bf16": ["f32", "h2x4"]}},
                                        "unroll": {"values": [1, 2, 4]}}})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    for _ in range(3):
        t = study.ask()
        study.tell(t, float(old.suggest(t, "bf16")["unroll"]))
    study.enqueue_trial(new.to_optuna_params({"acc": "h2x4", "unroll": 4}, "bf16"))
    seen = []
    for _ in range(4):
        t = study.ask()
        cfg = new.suggest(t, "bf16")
        seen.append(cfg)
        study.tell(t, float(cfg["unroll"]))
    assert seen[0] == {"acc": "h2x4", "unroll": 4}  # the enqueued config comes back as itself
    assert new.optuna_name("acc", "bf16") != old.optuna_name("acc", "bf16")
    assert new.optuna_name("acc", "fp16") == old.optuna_name("acc", "fp16")  # unchanged choices: the same name


def test_nvcc_check_builds_through_nvrtc_and_through_nvcc(tmp_path, monkeypatch):
    """sat_compile.nvcc_check: NVRTC in process where its library loads (the test extra's nvidia-cuda-nvrtc), else
    nvcc; both give ptxas' report of the entry function, write the cubin asked for, and turn a source error into a
    CandidateError of the compile stage."""
    from sparse_autotune.errors import CandidateError
    if sat_compile.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA toolkit not installed)")
    good = 'extern "C" __global__ void k(float* x) { x[threadIdx.x] = 2.0f * x[threadIdx.x + 1]; }'
    bad = 'extern "C" __global__ void k(float* x) { x[threadIdx.x] = y; }'
    ways = (["nvrtc"] if sat_compile._nvrtc() is not None else []) + ["nvcc"]
    for way in ways:
        if way == "nvcc":
            monkeypatch.setattr(sat_compile, "_NVRTC", False)  # as where the library does not load
        cubin = tmp_path / f"{way}.cubin"
        rep = sat_compile.nvcc_check(good, "sm_90a", cubin=cubin)
        assert "entry function 'k' for 'sm_90a'" in rep and "Used" in rep, (way, rep)
        assert cubin.read_bytes()[:4] == b"\x7fELF", way
        with pytest.raises(CandidateError) as exc:
            sat_compile.nvcc_check(bad, "sm_90")
        assert exc.value.stage == "compile" and '"y"' in exc.value.log, way
