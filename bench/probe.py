"""The probe tool: measure kernel configs on the GPU outside a search, the way the tuner measures a candidate.

    python3 bench/probe.py ab --family tc_gather --param prefetch --a 0 --b 1 \\
        --case 512x2048:256:0.1:fp16 --case 3072x768:2048:0.05:fp16 [--pairs 12] [--out STEM]
    python3 bench/probe.py sweep [--case C ...] [--families F,G] [--samples 60] [--filter JSON]
                                 [--config FAMILY:JSON ...] [--out STEM]
    python3 bench/probe.py config --case C --family F --config JSON [--baselines] [--out STEM]
    python3 bench/probe.py profile --case C (--db PATH | --family F --config JSON) [--launches 5] [--ncu [FILE]]
    python3 bench/probe.py baselines [--case C ...] [--out STEM]
    python3 bench/probe.py recold (--records SUITE.json | --case C ... --config FAMILY:JSON|@FILE ...)
                                  [--only F=V,V ...] [--skip RECOLD.json ...] [--workers 8] [--budget S] [--out STEM]
    python3 bench/probe.py recold-apply --records SUITE.json --rows RECOLD.json [...] [--suite llm] [--adopt] --out DIR
    python3 bench/probe.py overhead [--out DIR]
    python3 bench/probe.py sddmm [--quick] [--budget S] [--dtype fp16,fp32] [--kind attention,weightgrad]
                                 [--configs 24] [--refine 8] [--seed 0] [--list] [--out STEM]
    python3 bench/probe.py linear --layers CKPT [--layers CKPT ...] [--include PATTERN] [--n 1,16,200]
                                  [--dtype fp32,fp16] [--policy off,quick] [--db PATH] [--budget S] [--out STEM]
    python3 bench/probe.py untuned --layers CKPT [--layers CKPT ...] [--n 200] [--dtype fp32,fp16]
                                   [--policy off,quick] [--db db/h100-80gb-hbm3.sqlite] [--budget S] [--out STEM]

A case is MxK:N:density:dtype[:pattern], the suite's random matrix (seed 0). Every config is measured as the
tuner measures a candidate: built (device.kernel.build_kernel), verified against float64 on a fresh B
(device.verify.check), then timed by CUDA-graph replay over the context's B buffers rotated past L2
(device.timing.time_launches on device.context.GpuProblem; median of 20). Baselines are device.baselines'.

  ab         paired A/B of one parameter: --pairs feasible configs with the parameter at A (seeded), each one's twin
             at B, timed A, B, A (the spread of A's two timings is the noise); per case the geomean of B/A
  sweep      the defaults and --samples random feasible configs of each family (--filter '{"fam": {"p": [v, ..]}}'
             keeps only the named families, at those values); the best per family. --config FAMILY:JSON (repeatable)
             measures that config too on every case where it is feasible, filter or not (parameters it leaves out
             take the space's defaults; marked "given" in the results; --config @FILE: one FAMILY:JSON a line)
  config     one config on each case, and with --baselines cuSPARSE and cuBLAS timed the same way
  profile    one config (the database's best record for the case, or --family/--config) verified, then launched
             --launches times for Nsight Compute; --ncu runs this under `ncu` (kernel spmm_kernel, the third
             launch) and writes its report to FILE (default OUTDIR/ncu/ncu-FAMILY-CASE.txt)
  recold     a suite's records (--only: some of them) timed cold again for their own winners: each built, verified
             and timed warm, then it and cuBLAS of the same precision with A from HBM (device.cold, as the tuner's
             finish); for records measured before a fix to the cold timing, without a new search -> recold-<gpu>.
             With --case and --config (as sweep's) instead: every given config on every case where it is feasible
  recold-apply  (no GPU) those times put over the records whose winner is the config timed; the suite's JSON and
             report written into --out (bench --merge's writer). --adopt: per case, a faster config timed in the same
             run as the winner (its twins) becomes the winner
  baselines  our baselines against PyTorch's (dense fp32, tf32, fp16, sparse CSR), both timed by time_launches
  untuned    the runtime (SpMM) on every Linear layer of real checkpoints at an N no record has, per tuning policy
             (off, quick), against min(cuSPARSE, cuBLAS of the same precision); first-call cost; lookups read --db
             only -> runtime-untuned-<gpu>.{json,md}
  linear     SparseLinear against nn.Linear of the same precision on the Linear layers of checkpoints (masked weight,
             bias), per N, dtype and policy: per-call time in a CUDA graph, eager wall time, kernels per call, the
             plan; outputs checked against the dense layer first -> runtime-linear-<gpu>.{json,md}
  sddmm      SDDMM (issue 19): attention-like and weight-gradient-like cases, tuned over sampled configs of the SDDMM
             families (verified first), against cuSPARSE SDDMM and dense + mask timed the same way
             (sparse_autotune/ops/sddmm_bench.py) -> sddmm-<gpu>.{json,md,png}; --list: the cases and configs, no GPU
  overhead   host cost per call: cached lookup (CPU), and on a GPU the kernel launch, op(B) with CuPy and PyTorch,
             SparseLinear and a CUDA-graph replay (wall time over thousands of calls on a 64x64 problem)

Outputs: STEM.json and STEM.md (overhead: DIR/runtime-overhead-<gpu or cpu>.{json,md}), with the GPU, driver,
CUDA and CuPy versions. The default output folder is $OUT if set (device calls), else bench/results/probe.
Bad input: one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

from sparse_autotune.core.problem import Problem, check_density, check_dtype, check_n, parse_shape  # noqa: E402
from sparse_autotune.errors import CandidateError, UserError, exit_status  # noqa: E402

DEFAULT_CASES = ("512x2048:256:0.1:fp32", "512x2048:256:0.1:fp16", "768x3072:512:0.05:fp32")
NCU_STALLS = r"regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
NCU_SECTIONS = ("SpeedOfLight", "MemoryWorkloadAnalysis", "Occupancy", "LaunchStats", "WarpStateStats",
                "SchedulerStats")


# ---- cases, outputs ----

@dataclass(frozen=True)
class Case:
    M: int
    K: int
    N: int
    density: float
    dtype: str
    pattern: str = "uniform"

    def label(self) -> str:
        return f"{self.M}x{self.K} N={self.N} d={self.density:g} {self.dtype} {self.pattern}"

    def slug(self) -> str:
        return f"{self.M}x{self.K}-n{self.N}-d{self.density:g}-{self.dtype}-{self.pattern}"

    def problem(self) -> Problem:
        return Problem.random(self.M, self.K, self.N, self.density, self.dtype, self.pattern, seed=0)


def parse_case(text: str) -> Case:
    parts = text.split(":")
    if len(parts) not in (4, 5):
        raise UserError(f"case {text!r}: expected MxK:N:density:dtype[:pattern], e.g. 512x2048:256:0.1:fp16")
    m, k = parse_shape(parts[0])
    try:
        n, d = int(parts[1]), float(parts[2])
    except ValueError:
        raise UserError(f"case {text!r}: N must be an integer and the density a number") from None
    from sparse_autotune.core.problem import PATTERNS  # noqa: PLC0415
    pattern = parts[4] if len(parts) == 5 else "uniform"
    if pattern not in PATTERNS:
        raise UserError(f"case {text!r}: unknown pattern {pattern!r} (choose {', '.join(PATTERNS)})")
    return Case(m, k, check_n(n), check_density(d), check_dtype(parts[3]), pattern)


def parse_config(text: str) -> dict:
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--config is not JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise UserError("--config must be a JSON object, e.g. '{\"rows_per_block\": 32}'")
    return cfg


def value(text: str):
    """A parameter value as the space declares it: int, float, else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def out_dir() -> Path:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results" / "probe"


def stem(given: str | None, default: str) -> Path:
    p = Path(given) if given else out_dir() / default
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def write(path: Path, data: dict, lines: list[str], echo: bool = True) -> None:
    """PATH.json (data) and PATH.md (lines), and (echo) the Markdown on stdout."""
    Path(f"{path}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    Path(f"{path}.md").write_text("\n".join(lines) + "\n")
    if echo:
        print("\n".join(lines), flush=True)
    print(f"wrote {path}.json and {path}.md", file=sys.stderr, flush=True)


def config_text(cfg) -> str:
    """A config in a table cell: its parameters as k=v, in the config's order (twins of one case told apart)."""
    if not isinstance(cfg, dict):
        return "" if cfg is None else str(cfg)
    return " ".join(f"{k}={v}" for k, v in cfg.items())


def fmt(x, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- the device: one context per case, one way to measure a config ----

class Device:
    def __init__(self):
        from sparse_autotune.device.gpu import gpu_info  # noqa: PLC0415
        self.info = gpu_info()  # no GPU: one line, exit 2
        v = self.info.versions()
        self.meta = {"gpu": v["gpu"], "cc": v["cc"], "driver": v["driver"], "cuda": v["cuda"], "cupy": v["cupy"],
                     "date": dt.date.today().isoformat()}

    def versions_line(self) -> str:
        m = self.meta
        return f"{m['gpu']}, driver {m['driver']}, CUDA {m['cuda']}, CuPy {m['cupy']}, {m['date']}"

    def context(self, case: Case):
        from sparse_autotune.device.context import GpuProblem  # noqa: PLC0415
        return GpuProblem(case.problem(), self.info)

    def env(self, ctx) -> dict:
        from sparse_autotune.core.space import problem_env  # noqa: PLC0415
        p = ctx.problem
        return problem_env(p.m, p.k, p.n, p.nnz, p.dtype)

    def kernel(self, ctx, family: str, cfg: dict):
        from sparse_autotune.device.kernel import build_kernel  # noqa: PLC0415
        return build_kernel(ctx.a_dev, family, cfg, ctx.problem.dtype)

    def measure(self, ctx, family: str, cfg: dict) -> dict:
        """Build, verify (fresh B, float64 reference) and time one config: the tuner's candidate measurement.
        CandidateError when it does not compile, launch or verify."""
        return self.measure_kernel(ctx, self.kernel(ctx, family, cfg))

    def measure_kernel(self, ctx, kern) -> dict:
        """Verify and time a kernel already built (measure's second half)."""
        from sparse_autotune.device.timing import time_launches  # noqa: PLC0415
        from sparse_autotune.device.verify import check  # noqa: PLC0415
        b, ref = ctx.fresh_check()
        err = check(lambda: kern(b, ctx.c), ctx.c, ref, ctx.problem.dtype)
        try:
            t = time_launches([lambda bb=bb: kern(bb, ctx.c) for bb in ctx.b_bufs])
        except Exception as exc:  # noqa: BLE001 - as the tuner: a failed timing is a failed candidate
            raise CandidateError("time", str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        return {"time_us": t.median_us, "min_us": t.min_us, "spread": t.spread, "timing": t.method,
                "rel_err": err, "gflops": ctx.problem.flops / (t.median_us * 1e-6) / 1e9}

    def baselines(self, ctx) -> dict:
        from sparse_autotune.device.baselines import time_baselines  # noqa: PLC0415
        return time_baselines(ctx, log)


def _space(family: str):
    from sparse_autotune.core.space import get_space  # noqa: PLC0415
    return get_space(family)


# ---- ab ----

def cmd_ab(a) -> int:
    cases = [parse_case(c) for c in a.case]
    va, vb = value(a.a), value(a.b)
    if a.pairs <= 0:
        raise UserError(f"--pairs must be positive (got {a.pairs})")
    space = _space(a.family)
    if a.param not in {p.name for p in space.params}:
        raise UserError(f"{a.family} has no parameter {a.param!r}")
    dev = Device()
    limits = dev.info.limits()
    rows, summary = [], []
    from sparse_autotune.tuning.suite import geomean  # noqa: PLC0415
    for case in cases:
        ctx = dev.context(case)
        env = dev.env(ctx)
        feas = [c for c in space.feasible(case.dtype, env, limits) if c.get(a.param) == va]
        feas = [c for c in feas if space.check({**c, a.param: vb}, env, limits) is None]
        picks = random.Random(0).sample(feas, min(a.pairs, len(feas)))
        log(f"== {case.label()}: {len(picks)} pairs of {len(feas)}")
        case_rows = []
        for cfg in picks:
            twin = {**cfg, a.param: vb}
            try:
                ta1 = dev.measure(ctx, a.family, cfg)["time_us"]
                tb = dev.measure(ctx, a.family, twin)["time_us"]
                ta2 = dev.measure(ctx, a.family, cfg)["time_us"]
            except CandidateError as exc:
                log(f"   {json.dumps(cfg, sort_keys=True)}: {exc}")
                case_rows.append({"config": cfg, "error": str(exc)})
                continue
            ta = min(ta1, ta2)
            case_rows.append({"config": cfg, "a_us": ta, "a_again_us": max(ta1, ta2), "b_us": tb, "b_over_a": tb / ta,
                              "noise": abs(ta1 - ta2) / ta})
            log(f"   A {ta:8.2f} us  B {tb:8.2f} us  B/A {tb / ta:5.2f}  (A twice: {ta1:.2f}, {ta2:.2f})")
        ok = [r for r in case_rows if "error" not in r]
        summary.append({"case": asdict(case), "pairs": len(ok), "errors": len(case_rows) - len(ok),
                        "geomean_b_over_a": geomean(r["b_over_a"] for r in ok),
                        "best_a_us": min((r["a_us"] for r in ok), default=None),
                        "best_b_us": min((r["b_us"] for r in ok), default=None),
                        "median_noise": sorted(r["noise"] for r in ok)[len(ok) // 2] if ok else None})
        rows.append({"case": asdict(case), "pairs": case_rows})
    lines = [f"# {a.family}: {a.param} = {vb} (B) against {va} (A)", "",
             f"{dev.versions_line()}. Paired configs (the same but for {a.param}), verified, timed A, B, A "
             "(CUDA-graph replay, median of 20); B/A < 1: B is faster.", "",
             "| case | pairs | geomean B/A | best A us | best B us | median noise (A twice) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for s, case in zip(summary, cases):
        lines.append(f"| {case.label()} | {s['pairs']} | {fmt(s['geomean_b_over_a'])} | {fmt(s['best_a_us'])} | "
                     f"{fmt(s['best_b_us'])} | {fmt(s['median_noise'], 3)} |")
    write(stem(a.out, f"ab-{a.param}"), {**dev.meta, "family": a.family, "param": a.param, "a": va, "b": vb,
                                         "summary": summary, "cases": rows}, lines)
    return 0


# ---- sweep ----

def cmd_sweep(a) -> int:
    from sparse_autotune.core.space import select_spaces  # noqa: PLC0415
    cases = [parse_case(c) for c in (a.case or DEFAULT_CASES)]
    if a.samples < 0:
        raise UserError(f"--samples must be >= 0 (got {a.samples})")
    filt = None
    if a.filter:
        try:
            filt = json.loads(a.filter)
        except json.JSONDecodeError as exc:
            raise UserError(f"--filter is not JSON: {exc}") from None
        if not isinstance(filt, dict) or not all(isinstance(v, dict) for v in filt.values()):
            raise UserError('--filter must map families to {param: [values]}, e.g. \'{"csr_rowsplit": {"vec": [4]}}\'')
    given = parse_given(a.config or [])
    named = sorted(set(filt or {}) | {f for f, _ in given})
    spaces = select_spaces(a.families if a.families else (named or None))
    if any(f not in {s.family for s in spaces} for f, _ in given):
        raise UserError("--config names a family that --families leaves out")
    dev = Device()
    limits = dev.info.limits()
    results, lines = [], ["# Sweep: random feasible configs of each family", "",
                          f"{dev.versions_line()}. {a.samples} random feasible configs per family"
                          f"{' (filtered: ' + json.dumps(filt) + ')' if filt else ' plus its defaults'}, "
                          "each verified and timed as the tuner does (CUDA-graph replay, median of 20).", "",
                          "| case | family | ok | failed | best us | best default us | best config |",
                          "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for case in cases:
        ctx = dev.context(case)
        env = dev.env(ctx)
        log(f"== {case.label()}")
        for space in spaces:
            if not space.supports(case.dtype):
                continue
            feas = list(space.feasible(case.dtype, env, limits))
            rng = random.Random(0)
            defaults = []
            if filt is not None:
                want = filt.get(space.family, {})
                feas = [c for c in feas if all(c.get(p) in v for p, v in want.items())]
            else:
                defaults = space.defaults(case.dtype, env, limits)
            mine = []  # the --config configs of this family feasible here (not twice, not again as a default)
            for fam, raw in given:
                if fam != space.family:
                    continue
                cfg = space.normalize(raw, case.dtype)
                why = "a value not in the space for this dtype" if cfg is None else space.check(cfg, env, limits)
                if why is not None:
                    log(f"  SKIP {fam} {json.dumps(raw, sort_keys=True)}: infeasible here: {why}")
                elif cfg not in mine:
                    mine.append(cfg)
            defaults = [c for c in defaults if c not in mine]
            sample = rng.sample(feas, min(a.samples, len(feas)))
            cfgs = mine + defaults + [c for c in sample if c not in mine and c not in defaults]
            ok, failed = [], []
            t0 = time.time()
            for i, cfg in enumerate(cfgs):
                try:
                    ok.append({"config": cfg, "default": len(mine) <= i < len(mine) + len(defaults),
                               **({"given": True} if i < len(mine) else {}), **dev.measure(ctx, space.family, cfg)})
                except CandidateError as exc:
                    failed.append({"config": cfg, "error": str(exc)})
                    log(f"  FAIL {space.family} {json.dumps(cfg, sort_keys=True)}: {exc}")
            ok.sort(key=lambda r: r["time_us"])
            best_default = min((r["time_us"] for r in ok if r["default"]), default=None)
            log(f"  {space.family}: {len(ok)} ok, {len(failed)} failed in {time.time() - t0:.0f} s; best "
                f"{fmt(ok[0]['time_us'] if ok else None)} us, best default {fmt(best_default)} us")
            for r in ok[:4] + [r for r in ok[4:] if r.get("given")]:
                mark = " (given)" if r.get("given") else ""
                log(f"    {r['time_us']:7.2f} us  {json.dumps(r['config'], sort_keys=True)}{mark}")
            results.append({"case": asdict(case), "family": space.family, "ok": len(ok), "failed": failed,
                            "best_default_us": best_default, "top": ok[:8],
                            "all": [[r["time_us"], r["config"]] for r in ok],
                            "given": [[r["time_us"], r["config"]] for r in ok if r.get("given")]})
            lines.append(f"| {case.label()} | {space.family} | {len(ok)} | {len(failed)} | "
                         f"{fmt(ok[0]['time_us'] if ok else None)} | {fmt(best_default)} | "
                         f"{'`' + json.dumps(ok[0]['config'], sort_keys=True) + '`' if ok else ''} |")
        _sweep_write(a, dev, filt, given, results, lines, last=case == cases[-1])  # each case's results kept
    return 0


def _sweep_write(a, dev, filt, given, results, lines, last: bool) -> None:
    out = list(lines)
    if given:
        out += ["", "Given configs (--config) per case, fastest first:", "",
                "| case | family | us | config |", "| --- | --- | ---: | --- |"]
        for r in results:
            label = Case(**r["case"]).label()
            for t, cfg in r["given"]:
                out.append(f"| {label} | {r['family']} | {fmt(t)} | `{json.dumps(cfg, sort_keys=True)}` |")
    write(stem(a.out, f"sweep-{_slug(dev)}"), {**dev.meta, "samples": a.samples, "filter": filt,
                                              "given": [{"family": f, "config": c} for f, c in given],
                                              "results": results}, out, echo=last)


def parse_given(texts: list[str]) -> list[tuple[str, dict]]:
    """--config FAMILY:JSON values: (family, config as given; each case normalizes it for its dtype: parameters left
    out take their defaults). One line and exit 2 for an unknown family or parameter, bad JSON, or a config that no
    dtype of the family normalizes (a value not in the space, a parameter without a default missing)."""
    from sparse_autotune.core.space import get_space  # noqa: PLC0415
    lines = []
    for text in texts:  # @FILE: one FAMILY:JSON a line (blank lines and # comments skipped)
        if text.startswith("@"):
            try:
                body = Path(text[1:]).read_text()
            except OSError as exc:
                raise UserError(f"--config {text}: cannot read it ({exc.strerror})") from None
            lines += [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        else:
            lines.append(text)
    out = []
    for text in lines:
        fam, sep, js = text.partition(":")
        if not sep:
            raise UserError(f"--config {text!r}: expected FAMILY:JSON, e.g. tc_gather2:'{{\"rn\": 2}}'")
        try:
            space = get_space(fam.strip())
        except KeyError:
            raise UserError(f"--config {text!r}: unknown family {fam.strip()!r}") from None
        cfg = parse_config(js)
        unknown = sorted(set(cfg) - {p.name for p in space.params})
        if unknown:
            raise UserError(f"--config {text!r}: {space.family} has no parameter {unknown[0]!r}")
        if all(space.normalize(cfg, d) is None for d in space.dtypes):
            raise UserError(f"--config {text!r}: a value is not in {space.family}'s space, or a parameter without a "
                            "default is missing")
        out.append((space.family, cfg))
    return out


def _slug(dev: Device) -> str:
    from sparse_autotune.device.gpu import gpu_slug  # noqa: PLC0415
    return gpu_slug(dev.info.name)


# ---- config ----

def cmd_config(a) -> int:
    cases = [parse_case(c) for c in a.case]
    cfg = parse_config(a.config)
    space = _space(a.family)
    dev = Device()
    rows = []
    lines = [f"# {a.family} {json.dumps(cfg, sort_keys=True)}", "", f"{dev.versions_line()}.", "",
             "| case | time us | GFLOP/s | rel. error | timing | cuSPARSE us | cuBLAS fp32 / tf32 / fp16 us |",
             "| --- | ---: | ---: | ---: | --- | ---: | --- |"]
    for case in cases:
        ctx = dev.context(case)
        why = space.check(cfg, dev.env(ctx), dev.info.limits())
        row = {"case": asdict(case)}
        try:
            if why is not None:
                raise CandidateError("check", why)
            row.update(dev.measure(ctx, a.family, cfg))
        except CandidateError as exc:
            row["error"] = str(exc)
        base = dev.baselines(ctx) if a.baselines else {}
        row["baselines"] = base
        if a.cold and "error" not in row:  # the winner and cuBLAS again with A from HBM, as the tuner's finish does
            from sparse_autotune.device.cold import cold_times  # noqa: PLC0415
            from sparse_autotune.device.cold import rotation, _free_bytes  # noqa: PLC0415
            kern = dev.kernel(ctx, a.family, cfg)
            kern.warm()
            _, read, ncopy = rotation(kern, ctx.problem.n, ctx.gpu.l2_bytes)
            log(f"cold: a launch reads {read / 1e6:.1f} MB of A's device arrays ({kern.a.nbytes() / 1e6:.1f} MB on the "
                f"device), free {(_free_bytes() or 0) / 1e9:.1f} GB, {ncopy} copies")
            row["cold"] = cold_times(kern, ctx, log)
            log(f"cold: {row['cold']}")
        rows.append(row)
        dense = " / ".join(fmt(base.get(f"cublas_{m}_us")) for m in ("fp32", "tf32", "fp16")) if base else ""
        if "error" in row:
            lines.append(f"| {case.label()} | {row['error']} | | | | {fmt(base.get('cusparse_us'))} | {dense} |")
        else:
            lines.append(f"| {case.label()} | {row['time_us']:.2f} | {row['gflops']:.0f} | {row['rel_err']:.2g} | "
                         f"{row['timing']} | {fmt(base.get('cusparse_us')) if base else ''} | {dense} |")
    write(stem(a.out, f"config-{a.family}-{cases[0].slug()}"), {**dev.meta, "family": a.family, "config": cfg,
                                                                 "cases": rows}, lines)
    return 1 if any("error" in r for r in rows) else 0


# ---- recold: the cold times of a suite's records measured again, for their own winners ----

_RC: dict = {}  # a recold worker process's device state (gpu info, turn)


def _case_fields(r: dict) -> dict:
    """A record's or row's case (M, K, N, density, dtype, pattern: Case's fields)."""
    return {f.name: r[f.name] for f in fields(Case)}


def _recold_init(baselines: bool = False) -> None:
    from sparse_autotune.device.gpu import gpu_info  # noqa: PLC0415
    from sparse_autotune.device.turn import current_gpu_key, turn_for  # noqa: PLC0415
    _RC["info"] = gpu_info()
    _RC["baselines"] = baselines
    _RC["turn"] = turn_for(current_gpu_key())  # timing runs alone: the other workers build and compile meanwhile


def _recold_one(rec: dict, deadline: float) -> dict:
    """One record's winner built, verified (fresh B, float64 reference) and timed warm, then it and cuBLAS cold
    (device.cold.cold_times, as the tuner's finish does), and (--baselines) the vendor paths warm
    (device.baselines.time_baselines, as the tuner's finish does); the case's context is built as the suite's (seed 0)."""
    from sparse_autotune.device.baselines import time_baselines  # noqa: PLC0415
    from sparse_autotune.device.cold import cold_times  # noqa: PLC0415
    from sparse_autotune.device.context import GpuProblem  # noqa: PLC0415
    from sparse_autotune.device.gpu import cupy  # noqa: PLC0415
    from sparse_autotune.device.staged import build_for  # noqa: PLC0415
    from sparse_autotune.device.timing import time_launches  # noqa: PLC0415
    from sparse_autotune.device.verify import check  # noqa: PLC0415
    from sparse_autotune.tuning.suite import WARM_BASELINES  # noqa: PLC0415
    keys = _case_fields(rec)
    row = {**keys, "family": rec["family"], "config": rec["config"], "tuned_us_before": rec.get("tuned_us"),
           "tuned_cold_us_before": rec.get("tuned_cold_us"), "dense_cold_us_before": rec.get("dense_cold_us"),
           "date": dt.date.today().isoformat()}
    if time.time() > deadline:
        return {**row, "skipped": "budget"}
    t0 = time.perf_counter()
    case = Case(**keys)
    p = case.problem()
    turn = _RC["turn"]
    try:
        with turn():
            ctx = GpuProblem(p, _RC["info"])
        kern = build_for(ctx.a_dev, rec["family"], rec["config"], p.dtype, p.layout)  # compiled outside the turn
        row["a_bytes"] = int(kern.a_bytes())  # the format's bytes of A (recold-apply --adopt: the record's byte floor)
        with turn():
            b, ref = ctx.fresh_check()
            row["rel_err"] = check(lambda: ctx.launch(kern, b), ctx.c, ref, p.dtype)
            row["tuned_us"] = time_launches([lambda bb=bb: ctx.launch(kern, bb) for bb in ctx.b_bufs]).median_us
            cold = cold_times(kern, ctx)
        row.update({k: cold.get(k) for k in ("tuned_cold_us", "dense_cold_us", "cold_copies", "dense_cold_copies")})
        row["cold_error"] = cold.get("cold_error")
        if _RC.get("baselines"):  # the vendor paths warm in the same process as the winner (the suite's timing)
            with turn():
                base = time_baselines(ctx)
            row.update({k: base.get(k) for k in WARM_BASELINES})  # None where a path failed (its error logged)
    except Exception as exc:  # noqa: BLE001 - a case that fails is reported, the others go on
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        ctx = kern = None
        cupy().get_default_memory_pool().free_all_blocks()
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def candidate_records(cases: list[Case], given: list[tuple[str, dict]], limits: dict) -> tuple[list[dict], list[str]]:
    """recold's records for --case x --config: each given config normalized for each case's dtype (parameters left out
    take the space's defaults) where that is feasible (the family computes the dtype, the constraints hold under the
    GPU's limits), each (case, family, config) once; and why each of the others was left out."""
    from sparse_autotune.core.problem import nnz_of  # noqa: PLC0415
    from sparse_autotune.core.space import get_space, problem_env  # noqa: PLC0415
    from sparse_autotune.tuning.suite import retime_key  # noqa: PLC0415
    recs, why, seen = [], [], set()
    for case in cases:
        env = problem_env(case.M, case.K, case.N, nnz_of(case.M, case.K, case.density), case.dtype)
        for fam, cfg in given:
            space = get_space(fam)
            norm = space.normalize(cfg, case.dtype) if space.supports(case.dtype) else None
            bad = (f"{fam} computes only {', '.join(space.dtypes)}" if not space.supports(case.dtype) else
                   "a value is not in the space" if norm is None else space.check(norm, env, limits))
            if bad is not None:
                why.append(f"{case.label()} {fam} {json.dumps(cfg, sort_keys=True)}: {bad}")
                continue
            rec = {**asdict(case), "family": fam, "config": norm}
            if retime_key(rec) not in seen:
                seen.add(retime_key(rec))
                recs.append(rec)
    return recs, why


def cmd_recold(a) -> int:
    from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: PLC0415
    import multiprocessing  # noqa: PLC0415
    from sparse_autotune.tuning.suite import case_key, parse_case_filter, retime_cases, retime_key  # noqa: PLC0415
    if bool(a.records) == bool(a.case or a.config):
        raise UserError("give --records SUITE.json, or --case C ... with --config FAMILY:JSON|@FILE ... (not both)")
    if a.case and not a.config or a.config and not a.case:
        raise UserError("--case and --config go together: every config is timed on every case where it is feasible")
    if a.workers < 1:
        raise UserError("--workers must be at least 1")
    conds = parse_case_filter(" ".join(a.only), "--only") if a.only else None
    skip = set()
    for f in a.skip or []:
        skip |= {retime_key(r) for r in _read_recold_rows(f, "--skip") if not r.get("skipped") and not r.get("error")}
    if a.records:
        todo = retime_cases(_read_json_list(a.records, "--records"), conds, skip)
        what = str(a.records)
        if not todo:  # before the GPU: a filter that leaves nothing is bad input
            raise UserError(f"recold: nothing to time ({what}: --only / --skip leave none)")
    else:
        cases, given = [parse_case(c) for c in a.case], parse_given(a.config)
    dev = Device()
    if not a.records:
        limits = {**dev.info.limits(), "gate": 0} if a.ungated else dev.info.limits()
        todo, left_out = candidate_records(cases, given, limits)
        for why in left_out:
            log(f"left out: {why}")
        todo = retime_cases(todo, conds, skip)
        what = f"{len(given)} given configs x {len(cases)} cases"
    if not todo:
        raise UserError(f"recold: nothing to time ({what}: --only / --skip / feasibility leave none)")
    out = stem(a.out, f"recold-{_slug(dev)}")
    deadline = time.time() + a.budget if a.budget > 0 else float("inf")
    log(f"recold: {len(todo)} of {what}, {a.workers} worker processes")
    rows: list[dict] = []
    lines = [f"# Warm and cold times of given configs ({what})", "", f"{dev.versions_line()}.", "",
             "| case | family | config | warm us (before) | cold us (before) | cuBLAS cold us (before) | copies | s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]

    def flush(last: bool) -> None:
        order = {retime_key(r): j for j, r in enumerate(todo)}
        rows.sort(key=lambda r: order[retime_key(r)])
        body = [f"| {Case(**_case_fields(r)).label()} | "
                f"{r['family']} | {config_text(r.get('config'))} | "
                + (f"{r.get('skipped') or r.get('error')} | | | | |" if r.get("skipped") or
                                       r.get("error") else
                f"{fmt(r.get('tuned_us'))} ({fmt(r.get('tuned_us_before'))}) | {fmt(r.get('tuned_cold_us'))} "
                f"({fmt(r.get('tuned_cold_us_before'))}) | {fmt(r.get('dense_cold_us'))} "
                f"({fmt(r.get('dense_cold_us_before'))}) | {r.get('cold_copies')} | {r.get('seconds')} |")
                for r in rows]
        write(out, {**dev.meta, "records": what, "rows": rows}, lines + body, echo=last)

    ctx = multiprocessing.get_context("spawn")  # CUDA in each worker: no fork of an initialised parent
    with ProcessPoolExecutor(a.workers, mp_context=ctx, initializer=_recold_init, initargs=(a.baselines,)) as pool:
        futs = {pool.submit(_recold_one, r, deadline): r for r in todo}
        for i, f in enumerate(as_completed(futs), 1):
            r = futs[f]
            try:
                row = f.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker: the case is reported as failed
                row = {**_case_fields(r), "family": r["family"], "config": r["config"],
                       "error": f"worker: {type(exc).__name__}: {exc}"}
            rows.append(row)
            if not row.get("skipped"):
                log(f"[{i}/{len(todo)}] {case_key(row)} {row['family']}: " + (row.get("error") or
                    f"warm {fmt(row.get('tuned_us'))} (was {fmt(row.get('tuned_us_before'))}), cold "
                    f"{fmt(row.get('tuned_cold_us'))} (was {fmt(row.get('tuned_cold_us_before'))}), cuBLAS cold "
                    f"{fmt(row.get('dense_cold_us'))} (was {fmt(row.get('dense_cold_us_before'))}), {row['seconds']} s"))
            if i % 16 == 0:
                flush(False)
    flush(True)
    done = sum(1 for r in rows if "tuned_cold_us" in r and not r.get("error"))
    log(f"recold: {done} timed, {sum(1 for r in rows if r.get('skipped'))} left by the budget (run again with --skip "
        f"{out}.json), {sum(1 for r in rows if r.get('error'))} failed")
    return 1 if any(r.get("error") for r in rows) else 0


def cmd_recold_apply(a) -> int:
    """No GPU: recold's rows put over a suite's records (suite.apply_retimed), written with the report (bench --merge's
    writer) into --out."""
    from sparse_autotune.tuning.suite import apply_adopted, apply_retimed, write_merged  # noqa: PLC0415
    from sparse_autotune.device.gpu import gpu_slug  # noqa: PLC0415
    records = _read_json_list(a.records, "--records")
    runs = [_read_recold_rows(f, "--rows") for f in a.rows]
    rows = [r for run in runs for r in run]
    if (a.adopt_by != "cold" or a.agree) and not a.adopt:
        raise UserError("--adopt-by and --agree go with --adopt")
    if a.adopt and a.warm:
        raise UserError("--warm and --adopt: choose one (--adopt compares the times of twins timed in one run)")
    if a.adopt:
        if not 0 <= a.margin < 1:
            raise UserError(f"--margin {a.margin}: a fraction in [0, 1)")
        new, applied, adopted, refused = apply_adopted(records, runs, a.margin, by=a.adopt_by, agree=a.agree)
        log(f"recold-apply --adopt (by {a.adopt_by} time): {adopted} cases take a faster config of the same run, "
            f"{applied} keep theirs")
        applied += adopted
    else:
        new, applied, refused = apply_retimed(records, rows, warm=a.warm)
    for why in refused:
        log(f"not applied: {why}")
    gpus = sorted({r.get("gpu") for r in new})
    if len(gpus) != 1:
        raise UserError(f"--records {a.records}: records of {len(gpus)} GPU models")
    out_dir = Path(a.out)
    target = out_dir / f"suite-{a.suite}-{gpu_slug(gpus[0])}.json"
    if target.exists() and target.resolve() != Path(a.records).resolve():
        raise UserError(f"--out {a.out}: {target} exists and is not --records (nothing is overwritten)")
    out_dir.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(new, indent=1))
    write_merged([target], a.suite, out_dir)
    log(f"recold-apply: {applied} of {len(rows)} rows applied to {target} (and its report)")
    return 0


def _read_json(path, opt: str):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{opt} {path}: cannot read it as JSON: {exc}") from None


def _read_recold_rows(path, opt: str) -> list[dict]:
    """The rows of a recold output (a JSON object with 'rows'); one line and exit 2 for anything else."""
    data = _read_json(path, opt)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise UserError(f"{opt} {path}: not a recold output (a JSON object with 'rows')")
    return data["rows"]


def _read_json_list(path, opt: str) -> list[dict]:
    data = _read_json(path, opt)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(f"{opt} {path}: not a suite's JSON (a list of case records)")
    return data


# ---- profile ----

def _record_config(case: Case, db_path: str, gpu_name: str) -> tuple[str, dict, float]:
    from sparse_autotune.store.db import TuningDB  # noqa: PLC0415
    db = TuningDB(db_path, create=False, readonly=True)
    try:  # the fastest kernel's record: where a vendor path (cuBLAS, cuSPARSE) is the key's best there is no kernel of
        # ours to profile in it (session 37: `profile --db` died on family 'dense')
        rec = db.best_sparse(case.M, case.K, case.N, case.density, case.dtype, gpu=gpu_name, pattern=case.pattern)
    finally:
        db.dispose()
    if rec is None:
        raise UserError(f"no kernel record for {case.label()} on {gpu_name} in {db_path}")
    return rec.family, json.loads(rec.config_json), rec.time_us


def _find_ncu() -> str:
    found = shutil.which("ncu") or next((str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/ncu"))), None)
    if not found:
        raise UserError("no ncu (Nsight Compute) on this machine: not on PATH nor in /usr/local/cuda*/bin")
    return found


def run_under_ncu(inner: list[str], kernel: str, skip: int, report, full: bool) -> int:
    """This script with the arguments `inner` under Nsight Compute: the usual sections (or --set full) plus the stall
    reasons, one launch of the kernels matching `kernel` after `skip` of them, the text report into `report`."""
    ncu = _find_ncu()
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    sections = ["--set", "full"] if full else [x for s in NCU_SECTIONS for x in ("--section", s)]
    # the stall reasons, each as warp-cycles per issued instruction (the text report prints no breakdown else)
    sections += ["--metrics", NCU_STALLS]
    cmd = [ncu, *sections, "-k", f"regex:{kernel}", "-s", str(skip), "-c", "1",
           sys.executable, str(Path(__file__).resolve()), *inner]
    log("running " + " ".join(cmd) + f" > {report}")
    with open(report, "w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    log(f"ncu rc={rc}: {report}")
    return rc


def cmd_profile(a) -> int:
    case = parse_case(a.case)
    if a.launches <= 0:
        raise UserError(f"--launches must be positive (got {a.launches})")
    if bool(a.family) != bool(a.config):
        raise UserError("give --family and --config together (or --db for the case's best record)")
    if not a.family and not a.db:
        raise UserError("give --db (the case's best record), or --family and --config")
    cfg = parse_config(a.config) if a.config else None
    if a.ncu is not None:
        fam = a.family or "best"
        inner = ["profile", "--case", a.case, "--launches", str(a.launches)]
        inner += ["--family", a.family, "--config", a.config] if a.family else ["--db", a.db]
        return run_under_ncu(inner, "spmm_kernel", 2, a.ncu or out_dir() / "ncu" / f"ncu-{fam}-{case.slug()}.txt",
                             a.ncu_full)
    dev = Device()
    if cfg is None:
        family, cfg, stored = _record_config(case, a.db, dev.info.name)
    else:
        family, stored = a.family, None
    ctx = dev.context(case)
    print(json.dumps({"family": family, "config": cfg, "time_us": stored, "nnz": ctx.problem.nnz}), flush=True)
    from sparse_autotune.device.verify import check  # noqa: PLC0415
    kern = dev.kernel(ctx, family, cfg)
    b, ref = ctx.fresh_check()
    check(lambda: kern(b, ctx.c), ctx.c, ref, case.dtype)  # the first launch: verified
    for i in range(a.launches):
        kern(ctx.b_bufs[i % len(ctx.b_bufs)], ctx.c)
    ctx.cp.cuda.runtime.deviceSynchronize()
    return 0


# ---- baselines ----

def cmd_baselines(a) -> int:
    cases = [parse_case(c) for c in (a.case or ("512x2048:256:0.1:fp32", "512x2048:1024:0.1:fp32"))]
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        raise UserError("baselines compares with PyTorch: torch is not installed") from None
    from sparse_autotune.device.gpu import cupy  # noqa: PLC0415
    from sparse_autotune.device.timing import time_launches  # noqa: PLC0415
    from sparse_autotune.device.verify import rel_error  # noqa: PLC0415
    dev = Device()
    cp = cupy()
    streams: dict = {}

    def on_cupy_stream(fn):
        """fn() issued on CuPy's current stream (the one time_launches captures), through a torch view of it."""
        def run():
            ptr = cp.cuda.get_current_stream().ptr
            s = streams.get(ptr)
            if s is None:
                s = streams[ptr] = torch.cuda.ExternalStream(ptr)
            with torch.cuda.stream(s):
                fn()
        return run

    def timed(make, out, n: int, ref) -> dict:
        """make(i) -> the call for B buffer i writing `out`: verified on buffer 0 against the float64 reference,
        then timed over the n buffers."""
        try:
            launches = [on_cupy_stream(make(i)) for i in range(n)]
            launches[0]()
            torch.cuda.synchronize()
            err = rel_error(cp.from_dlpack(out), ref)
            t = time_launches(launches)
            return {"us": t.median_us, "timing": t.method + (f" ({t.note})" if t.note else ""), "rel_err": err}
        except Exception as exc:  # noqa: BLE001 - a path torch does not offer here: say so, keep the others
            return {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"}

    rows = []
    lines = ["# Baselines: ours against PyTorch's, timed the same way", "",
             f"{dev.versions_line()}, PyTorch {torch.__version__}. Both sides timed by device.timing.time_launches "
             "(CUDA-graph replay, B rotated past L2, median of 20); PyTorch's calls issued on the same stream.", "",
             "| case | path | ours us | PyTorch us | PyTorch / ours | PyTorch rel. error | PyTorch timing |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for case in cases:
        ctx = dev.context(case)
        ours = dev.baselines(ctx)
        n = len(ctx.b_bufs)
        a32 = torch.from_dlpack(ctx.a_dense_f32())
        b32 = [torch.from_dlpack(b).float() for b in ctx.b_bufs]
        b16 = [b.half() for b in b32]
        theirs = {}
        for mode, a_t, bs, tf32 in (("fp32", a32, b32, False), ("tf32", a32, b32, True),
                                    ("fp16", a32.half(), b16, None)):
            out = torch.empty(case.M, case.N, device="cuda", dtype=a_t.dtype)

            def make(i, a_t=a_t, bs=bs, out=out, tf32=tf32):
                def call():
                    if tf32 is not None:  # read when the call is issued (and captured)
                        torch.backends.cuda.matmul.allow_tf32 = tf32
                    torch.matmul(a_t, bs[i], out=out)
                return call
            theirs[f"cublas_{mode}"] = timed(make, out, n, ctx.ref)
        torch.backends.cuda.matmul.allow_tf32 = False
        a_csr = a32.to_sparse_csr()
        out = torch.empty(case.M, case.N, device="cuda")
        theirs["cusparse"] = timed(lambda i: (lambda: torch.mm(a_csr, b32[i], out=out)), out, n, ctx.ref)
        rows.append({"case": asdict(case), "ours": ours, "torch": theirs})
        for path in ("cusparse", "cublas_fp32", "cublas_tf32", "cublas_fp16"):
            o, t = ours.get(f"{path}_us"), theirs[path]
            if "error" in t:
                lines.append(f"| {case.label()} | {path} | {fmt(o)} | {t['error']} | | | |")
            else:
                lines.append(f"| {case.label()} | {path} | {fmt(o)} | {t['us']:.2f} | "
                             f"{fmt(t['us'] / o if o else None)} | {t['rel_err']:.2g} | {t['timing']} |")
    write(stem(a.out, f"baselines-{_slug(dev)}"), {**dev.meta, "torch": torch.__version__, "cases": rows}, lines)
    return 0


# ---- overhead ----

def per_call_us(fn, calls: int = 5000, warm: int = 200, sync=None) -> float:
    """Host wall time per call of fn() over `calls` calls (after `warm`), synchronising before and after: the
    host-side cost of a call, what `overhead` measures (kernels are timed on the GPU by time_launches)."""
    for _ in range(warm):
        fn()
    if sync:
        sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    if sync:
        sync()
    return (time.perf_counter() - t0) / calls * 1e6


OVERHEAD_ROWS = (("bare_kernel_launch_us", "bare kernel launch (Kernel call: kern(B, C), CuPy arrays)"),
                 ("rawkernel_call_us", "CuPy RawKernel call, arguments prebuilt (how Kernel launched before)"),
                 ("launcher_us", "launcher only (cuLaunchKernel, packed args)"),
                 ("op_cupy_us", "op(B, out=C), CuPy"), ("op_cupy_alloc_us", "op(B), CuPy, allocating C"),
                 ("op_torch_us", "op(B, out=C), PyTorch"), ("op_torch_alloc_us", "op(B), PyTorch, allocating C"),
                 ("sparse_linear_us", "SparseLinear forward, 64x64 at 10 %, x of 16x64"),
                 ("nn_linear_us", "nn.Linear forward, 64x64, x of 16x64"),
                 ("graph_replay_us", "op(B, out=C) captured in a torch.cuda.CUDAGraph: one replay"))


def _overhead_lookup(res: dict) -> None:
    """Lookup with 1000 records in a user database: the first (uncached) call and cached calls."""
    import tempfile  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from sparse_autotune.store.db import Record, TuningDB  # noqa: PLC0415
    from sparse_autotune.store.lookup import lookup  # noqa: PLC0415
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "t.sqlite"
        db = TuningDB(p)
        rng = np.random.default_rng(0)
        for i in range(1000):
            db.store(Record(gpu_name="NVIDIA H100 80GB HBM3", gpu_cc="9.0", m=int(2 ** rng.integers(6, 14)),
                            k=int(2 ** rng.integers(6, 14)), n=int(2 ** rng.integers(4, 12)),
                            density=float(rng.choice([0.02, 0.05, 0.1, 0.2, 0.3])), dtype="fp32", pattern="uniform",
                            family="csr_rowsplit", config_json=json.dumps({"i": i}),
                            time_us=float(rng.uniform(1, 100)), gflops=1.0, max_rel_err=1e-7, trials=1,
                            matrix_hash="h", package_version="0", cuda_version="0", driver_version="0",
                            cupy_version="0", created_at=dt.datetime(2026, 1, 1)))
        db.dispose()

        def one():
            return lookup(512, 2048, 256, 0.1, "fp32", gpu="NVIDIA H100 80GB HBM3", cc="9.0", db=p)
        lookup.cache_clear()
        res["lookup_first_ms"] = per_call_us(one, calls=1, warm=0) / 1e3
        res["lookup_cached_us"] = per_call_us(one, calls=20000, warm=0)
        res["lookup_records"] = 1000
        lookup.cache_clear()


def _overhead_gpu(res: dict) -> None:
    import numpy as np  # noqa: PLC0415

    import sparse_autotune as sa  # noqa: PLC0415
    from sparse_autotune.core.problem import random_matrix  # noqa: PLC0415
    from sparse_autotune.device.gpu import cupy, gpu_info  # noqa: PLC0415
    cp = cupy()
    res.update(gpu_info().versions())
    a = random_matrix(64, 64, 0.1, "uniform", 0, np.float32)  # a tiny kernel: host overhead dominates
    op = sa.SpMM(a, n_hint=16)
    kern = op._kernel(16)
    b = cp.asarray(np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    c = cp.empty((64, 16), cp.float32)
    sync = cp.cuda.Device().synchronize
    res["bare_kernel_launch_us"] = per_call_us(lambda: kern(b, c), sync=sync)
    grid, block = kern.geometry(16)[:2]
    args16, smem = kern.args(16, b, c), kern.smem_bytes()
    res["rawkernel_call_us"] = per_call_us(lambda: kern.fn(grid, block, args16, shared_mem=smem), sync=sync)
    launcher, b_ptr, c_ptr = kern.launcher(16), b.data.ptr, c.data.ptr
    stream_ptr = cp.cuda.get_current_stream().ptr
    res["launcher_us"] = per_call_us(lambda: launcher(b_ptr, c_ptr, stream_ptr), sync=sync)
    res["op_cupy_us"] = per_call_us(lambda: op(b, out=c), sync=sync)
    res["op_cupy_alloc_us"] = per_call_us(lambda: op(b), sync=sync)
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return
    from sparse_autotune.runtime.nn import SparseLinear  # noqa: PLC0415
    res["torch"] = torch.__version__
    tb = torch.as_tensor(b.get()).cuda()
    tc = torch.empty(64, 16, device="cuda")
    res["op_torch_us"] = per_call_us(lambda: op(tb, out=tc), sync=sync)
    res["op_torch_alloc_us"] = per_call_us(lambda: op(tb), sync=sync)
    with torch.no_grad():
        torch.manual_seed(0)
        lin = torch.nn.Linear(64, 64).cuda()
        layer = SparseLinear.from_dense(lin, 0.1, n_hint=16)
        x = torch.randn(16, 64, device="cuda")  # N = 16 rows of 64 features
        res["sparse_linear_us"] = per_call_us(lambda: layer(x), sync=sync)
        res["nn_linear_us"] = per_call_us(lambda: lin(x), sync=sync)
    try:  # op(B, out=C) captured into a CUDA graph (after the eager calls above planned N = 16), then replayed
        ref = torch.as_tensor(a.toarray()).cuda() @ tb
        g = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            op(tb, out=tc)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(g):
            op(tb, out=tc)
        tc.zero_()
        res["graph_replay_us"] = per_call_us(g.replay, sync=torch.cuda.synchronize)
        torch.cuda.synchronize()
        res["graph_replay_correct"] = bool(torch.allclose(tc, ref, rtol=1e-4, atol=1e-4))
    except Exception as exc:  # noqa: BLE001 - report, do not lose the other numbers
        res["graph_replay_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def cmd_overhead(a) -> int:
    out = Path(a.out) if a.out else out_dir()
    out.mkdir(parents=True, exist_ok=True)
    res = {"date": dt.date.today().isoformat()}
    _overhead_lookup(res)
    from sparse_autotune.device.gpu import gpu_available  # noqa: PLC0415
    if gpu_available():
        _overhead_gpu(res)
    name = res.get("gpu", "cpu").replace(" ", "-").lower()
    lines = [f"# Runtime overhead — {res.get('gpu', 'CPU only')}", "",
             f"Versions: driver {res.get('driver', '-')}, CUDA {res.get('cuda', '-')}, CuPy {res.get('cupy', '-')}"
             + (f", PyTorch {res['torch']}." if "torch" in res else "."),
             "Host wall time per call, averaged over thousands of calls on a tiny problem (64x64, N=16) so that the "
             "host side, not the kernel, is measured (`bench/probe.py overhead`).", "", "| what | per call |",
             "| --- | ---: |",
             f"| lookup, first call ({res['lookup_records']} records in the DB) | {res['lookup_first_ms']:.2f} ms |",
             f"| lookup, cached | {res['lookup_cached_us']:.2f} us |"]
    lines += [f"| {label} | {res[k]:.2f} us |" for k, label in OVERHEAD_ROWS if k in res]
    if "graph_replay_correct" in res:
        lines += ["", f"Graph replay result matches dense A @ B: {res['graph_replay_correct']}."]
    if "graph_replay_error" in res:
        lines += ["", f"CUDA-graph capture failed: {res['graph_replay_error']}"]
    write(out / f"runtime-overhead-{name}", res, lines)
    return 0


# ---- the runtime untuned: real layers, an N no record has, policies off / quick ----

def _vendor_best(base: dict, dtype: str) -> tuple[float | None, str]:
    """min(cuSPARSE, cuBLAS of the same precision: FP32 for fp32 (TF32 only on opt-in), FP16, BF16) and its name."""
    dense_key = {"fp32": "cublas_fp32_us", "tf32": "cublas_tf32_us", "fp16": "cublas_fp16_us", "bf16": "cublas_bf16_us"}[dtype]
    cands = [(base.get("cusparse_us"), "cuSPARSE"), (base.get(dense_key), f"cuBLAS {dtype.upper()}")]
    cands = [(t, n) for t, n in cands if t]
    return min(cands) if cands else (None, "none")


def _layer_run_values(a) -> tuple[list[int], list[str], list[str]]:
    """N values, dtypes and policies of `untuned` / `linear`, checked (one line and exit 2 on a bad one). With --db the
    lookups read that file only: the databases shipped in db/ are left out (SPARSE_AUTOTUNE_NO_SHIPPED_DB), so that a
    GPU's own shipped records do not answer a run meant to have none (e.g. --db db/h100-80gb-hbm3.sqlite on an H200)."""
    policies = a.policy.split(",")
    for pol in policies:
        if pol not in ("off", "quick"):
            raise UserError(f"unknown policy {pol!r}: off, quick")
    if a.db:
        os.environ["SPARSE_AUTOTUNE_NO_SHIPPED_DB"] = "1"
    return [check_n(x) for x in a.n.split(",")], [check_dtype(x) for x in a.dtype.split(",")], policies


def cmd_untuned(a) -> int:
    """Each layer of the checkpoints at each dtype and N: the runtime's SpMM (policy off, then quick, each from a
    fresh user database, lookups reading --db) against min(cuSPARSE, dense of the same precision), timed the same way."""
    import tempfile  # noqa: PLC0415
    import inspect  # noqa: PLC0415
    from sparse_autotune.core.checkpoint import find_layers, load_checkpoint  # noqa: PLC0415
    from sparse_autotune.core.problem import TOLERANCE, Problem  # noqa: PLC0415
    from sparse_autotune.device.context import GpuProblem  # noqa: PLC0415
    from sparse_autotune.device.gpu import cupy  # noqa: PLC0415
    from sparse_autotune.device.timing import time_launches  # noqa: PLC0415
    from sparse_autotune.device.verify import rel_error  # noqa: PLC0415
    import sparse_autotune as sa  # noqa: PLC0415
    # the arguments and the checkpoints first: a mistake is one line before the GPU is touched
    ns, dtypes, policies = _layer_run_values(a)
    takes_tune = "tune" in inspect.signature(sa.SpMM).parameters
    for pol in policies:
        if pol != "off" and not takes_tune:
            raise UserError("this checkout's SpMM has no tune= option: run with --policy off")
    layers = []
    for path in a.layers:
        ck = load_checkpoint(path)
        layers += [(Path(path).name, ly) for ly in find_layers(ck)]
    dev = Device()
    cp = cupy()
    log(f"{len(layers)} layers from {len(a.layers)} checkpoint(s); N {ns}; dtypes {dtypes}; policies {policies}; "
        f"lookups read {a.db or '(the default search path)'}")
    rows: list[dict] = []
    t_start = time.time()
    user_dbs = {pol: Path(tempfile.mkdtemp()) / f"user-{pol}.sqlite" for pol in policies}
    for dtype in dtypes:
        for n in ns:
            for src, ly in layers:
                if a.budget and time.time() - t_start > a.budget:
                    log(f"budget of {a.budget} s reached: {len(rows)} records")
                    break
                host = ly.csr()
                prob = Problem.from_matrix(host, n, dtype)
                ctx = GpuProblem(prob, dev.info)
                base = dev.baselines(ctx)
                vend_us, vend = _vendor_best(base, dtype)
                for pol in policies:
                    os.environ["SPARSE_AUTOTUNE_DB"] = str(user_dbs[pol])  # quick tuning's records, per policy
                    sa.lookup.cache_clear()
                    kw = {"tune": pol} if takes_tune else {}
                    row = {"checkpoint": src, "layer": ly.name, "M": prob.m, "K": prob.k, "N": n,
                           "density": round(prob.density, 4), "dtype": dtype, "policy": pol,
                           "cusparse_us": base.get("cusparse_us"), "dense_us": base.get(
                               {"fp32": "cublas_fp32_us", "fp16": "cublas_fp16_us", "bf16": "cublas_bf16_us"}[dtype]),
                           "vendor_best_us": vend_us, "vendor_best": vend}
                    try:
                        op = sa.SpMM(host, dtype=dtype, db=a.db, **kw)
                        c = cp.empty((prob.m, n), dtype=ctx.c.dtype)
                        t0 = time.perf_counter()
                        op(ctx.b_bufs[0], out=c)
                        cp.cuda.get_current_stream().synchronize()
                        row["first_call_s"] = time.perf_counter() - t0
                        err = rel_error(c, ctx.ref)
                        row["rel_err"] = err
                        if not err <= TOLERANCE[dtype]:
                            raise RuntimeError(f"wrong result: relative error {err:.3g}")
                        t = time_launches([lambda bb=bb: op(bb, out=c) for bb in ctx.b_bufs])
                        fam, _cfg, source = op.plan(n)
                        row.update(runtime_us=t.median_us, family=fam, source=source, timing=t.method,
                                   vs_vendor_best=vend_us / t.median_us if vend_us else None)
                    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                        row["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
                    rows.append(row)
                    log(f"{dtype} N={n} {ly.name} {prob.m}x{prob.k} d={prob.density:.3f} {pol}: "
                        f"{fmt(row.get('runtime_us'))} us ({row.get('family')}, {row.get('source')}) vs {vend} "
                        f"{fmt(vend_us)} -> {fmt(row.get('vs_vendor_best'))}x" + (f" ERROR {row['error']}" if "error" in row else ""))
                del ctx
                cp.get_default_memory_pool().free_all_blocks()
    meta = {**dev.meta, "db": a.db, "policies": policies}
    summary, lines = untuned_report(meta, rows)
    out = stem(a.out, f"runtime-untuned-{_slug(dev)}")
    write(out, {**meta, "summary": summary, "records": rows}, lines)
    return 0


UNTUNED_NOISE = 0.03  # a layer within 3 % of its goal is at the goal: the timing noise of two separate timings


def untuned_report(meta: dict, rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The summary per (checkpoint, dtype, N, policy) and the Markdown of `probe untuned` from its records."""
    summary = []
    keys = sorted({(r["checkpoint"], r["dtype"], r["N"], r["policy"]) for r in rows})
    for key in keys:
        sel = [r for r in rows if (r["checkpoint"], r["dtype"], r["N"], r["policy"]) == key]
        ok = [r["vs_vendor_best"] for r in sel if r.get("vs_vendor_best")]
        goal = 0.9 if key[3] == "off" else 1.0
        summary.append({"checkpoint": key[0], "dtype": key[1], "N": key[2], "policy": key[3], "layers": len(sel),
                        "errors": sum(1 for r in sel if "error" in r), "min_vs_vendor_best": min(ok) if ok else None,
                        "geomean_vs_vendor_best": math.exp(sum(map(math.log, ok)) / len(ok)) if ok else None,
                        "goal": goal, "layers_at_goal": sum(1 for x in ok if x >= goal * (1 - UNTUNED_NOISE)),
                        "total_runtime_us": sum(r.get("runtime_us") or 0 for r in sel),
                        "total_vendor_best_us": sum(r.get("vendor_best_us") or 0 for r in sel),
                        "median_first_call_s": statistics.median([r["first_call_s"] for r in sel if "first_call_s" in r])
                        if any("first_call_s" in r for r in sel) else None})
    lines = [f"# The runtime on layers it was not tuned for — {meta['gpu']}", "",
             f"{meta['gpu']}, driver {meta['driver']}, CUDA {meta['cuda']}, CuPy {meta['cupy']}, {meta['date']}. "
             f"Lookups read `{meta.get('db') or 'the default search path'}` only (no record of this GPU "
             "model); each policy starts from an empty user database. Times: median of CUDA-graph replays, B rotated "
             "(device.timing), the runtime's call (`SpMM.__call__`) against min(cuSPARSE, cuBLAS of the same precision: "
             "FP32 for fp32, FP16, BF16) timed the same way; every result verified against float64 first. Goal: "
             "policy off >= 0.9x, quick >= 1.0x on every layer; 'at goal' allows 3 % of timing noise "
             "(`bench/probe.py untuned`).", "",
             "| checkpoint | dtype | N | policy | layers | at goal | slowest layer | geomean | total runtime / total vendor "
             "us | first call (median) | errors |", "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s_ in summary:
        lines.append(f"| {s_['checkpoint']} | {s_['dtype']} | {s_['N']} | {s_['policy']} | {s_['layers']} | "
                     f"{s_['layers_at_goal']} | {fmt(s_['min_vs_vendor_best'])}x | {fmt(s_['geomean_vs_vendor_best'])}x | "
                     f"{fmt(s_['total_runtime_us'], 1)} / {fmt(s_['total_vendor_best_us'], 1)} | "
                     f"{fmt((s_['median_first_call_s'] or 0) * 1e3, 1)} ms | {s_['errors']} |")
    lines += ["", "| layer | M x K | density | dtype | N | policy | runtime us | family | source | cuSPARSE | dense | "
              "vs best vendor | first call ms |", "| --- | --- | ---: | --- | ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['M']}x{r['K']} | {r['density']} | {r['dtype']} | {r['N']} | {r['policy']} | "
                     f"{fmt(r.get('runtime_us'))} | {r.get('family', r.get('error', ''))} | {r.get('source', '')} | "
                     f"{fmt(r['cusparse_us'])} | {fmt(r['dense_us'])} | {fmt(r.get('vs_vendor_best'))} | "
                     f"{fmt((r.get('first_call_s') or 0) * 1e3, 1)} |")
    return summary, lines



# ---- SparseLinear against nn.Linear (issue 17 sections 3 and 5) ----

LINEAR_NOISE = 0.03  # a layer within 3 % of nn.Linear in the graph is at the goal (two separate timings)


def _capture(torch, fn, xs, calls: int):
    """A CUDA graph of `calls` calls of fn over the rotating inputs xs, replayed once; eager warm-up first (plans,
    compiles, allocator), then a warm-up on a side stream as capture requires."""
    for x in xs:
        fn(x)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for x in xs:
            fn(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(xs[i % len(xs)])
    g.replay()
    return g


def _replay_us(torch, g, calls: int, replays: int) -> float:
    """Per-call time of one block of `replays` replays of g (a graph of `calls` calls), by CUDA events."""
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(replays):
        g.replay()
    e1.record()
    e1.synchronize()
    return e0.elapsed_time(e1) * 1e3 / (calls * replays)


def _graph_us(torch, fn, xs, calls: int = 20, replays: int = 10, repeats: int = 5) -> float:
    """Per-call time of fn(x) in a CUDA graph of `calls` calls over the rotating inputs xs: median over `repeats` of
    (elapsed of `replays` replays) / (calls * replays)."""
    g = _capture(torch, fn, xs, calls)
    torch.cuda.synchronize()
    return statistics.median(_replay_us(torch, g, calls, replays) for _ in range(repeats))


def _graph_pair(torch, fa, fb, xs, calls: int = 20, replays: int = 10, rounds: int = 7) -> tuple[float, float]:
    """Per-call times of fa(x) and fb(x), each in its own CUDA graph of `calls` calls over the rotating inputs xs
    (captured as _graph_us does), replayed in alternating blocks of `replays` replays (fa, fb, fa, fb, ...; `rounds`
    each): the medians. The GPU's clock and whatever else runs on it then move both (a single nn.Linear timing before
    the sparse layer's had the first fp32 layer of a run at 0.92x of its very own F.linear call: session 11)."""
    graphs = [_capture(torch, fn, xs, calls) for fn in (fa, fb)]
    torch.cuda.synchronize()
    times: tuple[list, list] = ([], [])
    for _ in range(rounds):
        for g, out in zip(graphs, times):
            out.append(_replay_us(torch, g, calls, replays))
    return statistics.median(times[0]), statistics.median(times[1])


def _eager_pair(torch, fa, fb, xs, calls: int = 100, rounds: int = 9) -> tuple[float, float]:
    """Wall time per eager call (host dispatch and GPU work pipelined) of fa and of fb, measured in alternating blocks
    of `calls` calls (fa, fb, fa, fb, ...; `rounds` each) after a warm-up, so that the host's slow moments hit both
    alike: the median block of each, us per call."""
    def block(fn) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(calls):
            fn(xs[i % len(xs)])
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e6 / calls
    for fn in (fa, fb):
        for x in xs:
            fn(x)
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(block(fa))
        tb.append(block(fb))
    return statistics.median(ta), statistics.median(tb)


def _kernels_per_call(torch, fn, x) -> int:
    """CUDA kernels one call launches (torch.profiler), after a warm-up call."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415
    fn(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(x)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower())


def cmd_linear(a) -> int:
    """SparseLinear against nn.Linear of the same precision (the masked weight, the layer's bias) on the Linear layers
    of checkpoints, per N, dtype and tuning policy: per-call time in a CUDA graph and eager, kernels per call, the
    runtime's plan; every output checked against the dense layer first."""
    import tempfile  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    from sparse_autotune.core.checkpoint import find_layers, load_checkpoint  # noqa: PLC0415
    from sparse_autotune.core.problem import TOLERANCE  # noqa: PLC0415
    ns, dtypes, policies = _layer_run_values(a)
    layers = []
    for path in a.layers:
        ck = load_checkpoint(path)
        for ly in find_layers(ck, include=a.include):
            if ly.kind != "linear":
                continue
            bname = ly.name[: -len("weight")] + "bias" if ly.name.endswith("weight") else None
            bias = ck.tensors.get(bname) if bname else None
            layers.append((Path(path).name, ly, None if bias is None else np.asarray(bias, dtype=np.float32)))
    dev = Device()
    import torch  # noqa: PLC0415
    from sparse_autotune.runtime.nn import SparseLinear  # noqa: PLC0415
    tdt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    log(f"{len(layers)} Linear layers from {len(a.layers)} checkpoint(s); N {ns}; dtypes {dtypes}; policies "
        f"{policies}; lookups read {a.db or '(the default search path)'}")
    torch.backends.cuda.matmul.allow_tf32 = False
    rows: list[dict] = []
    t_start = time.time()
    user_dbs = {pol: Path(tempfile.mkdtemp()) / f"user-{pol}.sqlite" for pol in policies}
    gen = torch.Generator(device="cuda").manual_seed(0)
    stop = False
    for dtype in dtypes:
        for n in ns:
            for src, ly, bias in layers:
                if a.budget and time.time() - t_start > a.budget:
                    log(f"budget of {a.budget} s reached: {len(rows)} records")
                    stop = True
                    break
                host = ly.csr()
                m, k = host.shape
                w = torch.from_numpy(host.toarray()).to("cuda", tdt[dtype])
                b = None if bias is None else torch.from_numpy(bias).to("cuda", tdt[dtype])
                lin = torch.nn.Linear(k, m, bias=b is not None, device="cuda", dtype=tdt[dtype])
                with torch.no_grad():
                    lin.weight.copy_(w)
                    if b is not None:
                        lin.bias.copy_(b)
                xs = [torch.randn(n, k, device="cuda", generator=gen).to(tdt[dtype]) for _ in range(4)]
                with torch.no_grad():
                    ref = torch.nn.functional.linear(xs[0].double(), w.double(), None if b is None else b.double())
                    dense_graph = _graph_us(torch, lin, xs)
                    dense_kernels = _kernels_per_call(torch, lin, xs[0])
                for pol in policies:
                    os.environ["SPARSE_AUTOTUNE_DB"] = str(user_dbs[pol])
                    row = {"checkpoint": src, "layer": ly.name, "M": m, "K": k, "N": n, "dtype": dtype,
                           "density": round(host.nnz / (m * k), 4), "policy": pol, "bias": b is not None,
                           "linear_graph_us": dense_graph,
                           "linear_kernels": dense_kernels}
                    try:
                        with torch.no_grad():
                            sl = SparseLinear(torch.from_numpy(host.toarray()), None if b is None else b.cpu(),
                                              dtype=dtype, db=a.db, tune=pol)
                            t0 = time.perf_counter()
                            y = sl(xs[0])
                            torch.cuda.synchronize()
                            row["first_call_s"] = time.perf_counter() - t0
                            err = float((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                            row["rel_err"] = err
                            if not err <= TOLERANCE[dtype]:
                                raise RuntimeError(f"wrong result: relative error {err:.3g}")
                            row["graph_us"], row["linear_graph_us"] = _graph_pair(torch, sl, lin, xs)
                            row["eager_us"], row["linear_eager_us"] = _eager_pair(torch, sl, lin, xs)
                            row["kernels"] = _kernels_per_call(torch, sl, xs[0])
                        plan = sl.op.plan(n, layout="nk")  # what SparseLinear runs: op.linear's plan
                        row.update(family=plan.family, source=plan.source, path=getattr(plan, "path", None),
                                   vs_linear_graph=row["linear_graph_us"] / row["graph_us"],
                                   eager_minus_linear_us=row["eager_us"] - row["linear_eager_us"])
                    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                        row["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
                    rows.append(row)
                    log(f"{dtype} N={n} {ly.name} {m}x{k} {pol}: graph {fmt(row.get('graph_us'))} us vs nn.Linear "
                        f"{fmt(row['linear_graph_us'])} -> {fmt(row.get('vs_linear_graph'))}x; eager {fmt(row.get('eager_us'))} vs "
                        f"{fmt(row.get('linear_eager_us'))} us; {row.get('kernels')} kernels ({row.get('family')}, {row.get('path')}, "
                        f"{row.get('source')})" + (f" ERROR {row['error']}" if "error" in row else ""))
                del xs, lin, w
                torch.cuda.empty_cache()
            if stop:
                break
        if stop:
            break
    meta = {**dev.meta, "db": a.db, "policies": policies}
    summary, lines = linear_report(meta, rows)
    out = stem(a.out, f"runtime-linear-{_slug(dev)}")
    write(out, {**meta, "summary": summary, "records": rows}, lines)
    return 0


def linear_report(meta: dict, rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Summary per (checkpoint, dtype, N, policy) and the Markdown of `probe linear`."""
    summary = []
    for key in sorted({(r["checkpoint"], r["dtype"], r["N"], r["policy"]) for r in rows}):
        sel = [r for r in rows if (r["checkpoint"], r["dtype"], r["N"], r["policy"]) == key]
        ok = [r for r in sel if "error" not in r]
        ratios = [r["vs_linear_graph"] for r in ok]
        summary.append({"checkpoint": key[0], "dtype": key[1], "N": key[2], "policy": key[3], "layers": len(sel),
                        "errors": len(sel) - len(ok),
                        "graph_at_goal": sum(1 for x in ratios if x >= 1 - LINEAR_NOISE),
                        "slowest_vs_linear_graph": min(ratios) if ratios else None,
                        "geomean_vs_linear_graph": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None,
                        "total_graph_us": sum(r["graph_us"] for r in ok), "total_linear_graph_us":
                        sum(r["linear_graph_us"] for r in ok),
                        "eager_within_10us": sum(1 for r in ok if r["eager_minus_linear_us"] <= 10.0),
                        "max_eager_minus_linear_us": max((r["eager_minus_linear_us"] for r in ok), default=None),
                        "one_kernel_layers": sum(1 for r in ok if r["kernels"] <= r["linear_kernels"])})
    lines = [f"# SparseLinear against nn.Linear — {meta['gpu']}", "",
             f"{meta['gpu']}, driver {meta['driver']}, CUDA {meta['cuda']}, CuPy {meta['cupy']}, {meta['date']}. "
             f"Lookups read `{meta.get('db') or 'the default search path'}`{' only' if meta.get('db') else ''} and a "
             "fresh user database per policy. "
             "nn.Linear: the same masked weight and bias, same dtype (TF32 off). Graph: per-call time in CUDA graphs "
             "of 20 calls over 4 rotating inputs, SparseLinear's and nn.Linear's replayed in alternating blocks of 10 "
             "replays, medians of 7; eager: wall time per call, median of 9 blocks of 100 "
             "calls alternating with nn.Linear's blocks (host dispatch included). Kernels: CUDA kernels one call "
             "launches (torch.profiler). Goal (issue 17 section 5): "
             "graph >= 1.0x of nn.Linear within 3 % noise, eager within 10 us (`bench/probe.py linear`).", "",
             "| checkpoint | dtype | N | policy | layers | graph at goal | slowest | geomean | total graph us (sparse / "
             "nn.Linear) | eager within 10 us | worst eager excess us | kernels <= nn.Linear's | errors |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s_ in summary:
        lines.append(f"| {s_['checkpoint']} | {s_['dtype']} | {s_['N']} | {s_['policy']} | {s_['layers']} | "
                     f"{s_['graph_at_goal']} | {fmt(s_['slowest_vs_linear_graph'])}x | {fmt(s_['geomean_vs_linear_graph'])}x"
                     f" | {fmt(s_['total_graph_us'], 1)} / {fmt(s_['total_linear_graph_us'], 1)} | "
                     f"{s_['eager_within_10us']} | {fmt(s_['max_eager_minus_linear_us'], 1)} | "
                     f"{s_['one_kernel_layers']} | {s_['errors']} |")
    lines += ["", "| layer | M x K | density | dtype | N | policy | graph us | nn.Linear graph us | vs nn.Linear | "
              "eager us | nn.Linear eager us | kernels | family | path | source |",
              "| --- | --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['M']}x{r['K']} | {r['density']} | {r['dtype']} | {r['N']} | {r['policy']} | "
                     f"{fmt(r.get('graph_us'))} | {fmt(r['linear_graph_us'])} | {fmt(r.get('vs_linear_graph'))} | "
                     f"{fmt(r.get('eager_us'), 1)} | {fmt(r.get('linear_eager_us'), 1)} | {r.get('kernels', '')} | "
                     f"{r.get('family', r.get('error', ''))} | {r.get('path') or ''} | {r.get('source', '')} |")
    return summary, lines


# ---- sddmm ----

def cmd_sddmm(a) -> int:
    from sparse_autotune.ops import sddmm_bench as sb  # noqa: PLC0415
    dtypes = sb.parse_list(a.dtype, sb.BENCH_DTYPES, "dtype")
    kinds = sb.parse_list(a.kind, sb.KINDS, "kind")
    sb.check_options(a.configs, a.refine, a.budget, a.seed)
    cases = sb.suite_cases(quick=a.quick, dtypes=dtypes, kinds=kinds, seed=a.seed)
    if a.list:
        print("\n".join(sb.describe(cases, a.configs, a.seed)), flush=True)
        return 0
    dev = Device()
    out = stem(a.out, f"sddmm-{_slug(dev)}")
    doc = sb.run_suite(cases, out, configs=a.configs, refine=a.refine, budget=a.budget, seed=a.seed, quick=a.quick,
                       log=log)
    print("\n".join(sb.markdown(doc)), flush=True)
    log(f"wrote {out}.json, {out}.md" + (f" and {out}.png" if Path(f"{out}.png").exists() else ""))
    return 1 if doc["summary"]["errors"] or not doc["summary"]["finished"] else 0


# ---- conv (issue 19: sparse 3x3 convolution) ----

def cmd_conv(a) -> int:
    """conv3x3 benchmark: ResNet-50's 3x3 layers, tuned over sampled configs, against cuDNN FP32 / TF32 / FP16 in NCHW
    and channels_last (sparse_autotune/ops/conv_bench.py) -> conv-<gpu>.{json,md,png}."""
    from sparse_autotune.ops import conv_bench as cb  # noqa: PLC0415
    dtypes = tuple(x.strip() for x in a.dtype.split(",") if x.strip())
    if not dtypes or any(t not in ("fp32", "fp16", "bf16") for t in dtypes):
        raise UserError(f"--dtype {a.dtype!r}: comma-separated fp32, fp16, bf16")
    if a.layout not in ("nchw", "nhwc"):
        raise UserError(f"--layout must be nchw or nhwc (got {a.layout!r})")
    if a.configs < 1 or a.budget < 0:
        raise UserError("--configs must be at least 1 and --budget at least 0")
    families = None
    if a.families:  # conv3x3 kernel families of the sweep (default all; conv_pattern compiles slowly)
        from sparse_autotune.ops.conv import conv_families  # noqa: PLC0415
        families = tuple(x.strip() for x in a.families.split(",") if x.strip())
        bad = [f for f in families if f not in conv_families()]
        if bad or not families:
            raise UserError(f"--families {a.families!r}: comma-separated of {', '.join(conv_families())}")
    if a.ncu is not None and not a.one:
        raise UserError("--ncu profiles one config: give it with --one LAYER:B:D:DTYPE --family F --config JSON")
    if a.one:  # ONE verified config of one case (for ncu: the kernel conv3x3_kernel, its first launch)
        if not a.family or not a.config:
            raise UserError("--one needs --family F and --config JSON")
        try:
            cfg = json.loads(a.config)
        except ValueError:
            raise UserError(f"--config is not JSON: {a.config!r}")
        (case,) = cb.parse_cases(a.one, a.layout)[:1]
        if a.ncu is not None:  # the first launch is the verified one: profile the second
            inner = ["conv", "--one", a.one, "--layout", a.layout, "--family", a.family, "--config", a.config,
                     "--launches", str(max(a.launches, 2)), "--seed", str(a.seed)]
            return run_under_ncu(inner, "conv3x3", 1, a.ncu or out_dir() / "ncu" / f"ncu-{a.family}-{case['name']}.txt",
                                 a.ncu_full)
        res = cb.run_one(case, a.family, cfg, a.launches, a.seed)
        print(json.dumps(res, default=list), flush=True)
        return 0 if res["ok"] else 1
    cases = cb.parse_cases(a.cases, a.layout) if a.cases else \
        cb.suite_cases(quick=a.quick, full=a.full, dtypes=dtypes, layout=a.layout, sweep=a.sweep)
    if a.list:
        print("\n".join(c["name"] for c in cases), flush=True)
        return 0
    dev = Device()
    out = stem(a.out, f"conv-{_slug(dev)}")
    doc = cb.run_suite(cases, out, dev.meta, configs=a.configs, budget=a.budget, seed=a.seed, log=log,
                       families=families)
    print("\n".join(cb.markdown(doc)[:5]), flush=True)
    log(f"wrote {out}.json, {out}.md" + (f" and {out}.png" if Path(f"{out}.png").exists() else ""))
    return 1 if doc["summary"]["errors"] or not doc["summary"]["finished"] else 0


# ---- finetune ----

def cmd_finetune(a) -> int:
    """Fine-tuning benchmark (issue 19): trainable SparseLinear vs the dense masked nn.Linear on a pruned MiniLM-sized
    stack (sparse_autotune/runtime/finetune_bench.py) -> finetune-<gpu>.{json,md,png}."""
    from sparse_autotune.runtime import finetune_bench as fb  # noqa: PLC0415
    steps = a.steps or (120 if a.quick else 300)
    blocks = a.blocks or (2 if a.quick else 4)
    fb.check_options(steps, blocks, a.tokens, a.density, a.dtype)
    dev = Device()
    out = stem(a.out, f"finetune-{_slug(dev)}")
    doc = fb.run(steps=steps, blocks=blocks, tokens=a.tokens, density=a.density, dtype=a.dtype, lr=a.lr, seed=a.seed,
                 log=log)
    fb.write_outputs(out, doc)
    print("\n".join(fb.markdown(doc)), flush=True)
    log(f"wrote {out}.json, {out}.md" + (f" and {out}.png" if Path(f"{out}.png").exists() else ""))
    return 0


# ---- the command line ----

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors as the package's one-line UserError (exit 2)
        raise UserError(message)


def _layer_run_args(sp, n_default: str, n_help: str, db_help: str) -> None:
    """The options `untuned` and `linear` share: checkpoints, N, dtypes, policies, database, budget."""
    sp.add_argument("--layers", action="append", required=True,
                    help="a checkpoint (sparse bundle .npz, safetensors, .pt) whose Linear layers are used (repeatable)")
    sp.add_argument("--n", default=n_default, help=n_help)
    sp.add_argument("--dtype", default="fp32,fp16", help="comma-separated dtypes (default fp32,fp16)")
    sp.add_argument("--policy", default="off,quick", help="comma-separated runtime tuning policies (default off,quick)")
    sp.add_argument("--db", help=db_help)
    sp.add_argument("--budget", type=float, default=0, help="start no new layer after this many seconds (0: none)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="probe.py", description=__doc__.splitlines()[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[1:]))
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    case_help = "MxK:N:density:dtype[:pattern], e.g. 512x2048:256:0.1:fp16"

    ab = sub.add_parser("ab", help="paired A/B of one parameter of one family")
    ab.add_argument("--family", required=True)
    ab.add_argument("--param", required=True)
    ab.add_argument("--a", required=True, help="the baseline value")
    ab.add_argument("--b", required=True, help="the value tried against it")
    ab.add_argument("--case", action="append", required=True, help=case_help + " (repeatable)")
    ab.add_argument("--pairs", type=int, default=12, help="paired configs per case (default 12)")
    ab.add_argument("--out", help="output stem: OUT.json and OUT.md (default OUTDIR/ab-PARAM)")

    sw = sub.add_parser("sweep", help="defaults and random feasible configs of every family; the best per family")
    sw.add_argument("--case", action="append", help=case_help + f" (repeatable; default {', '.join(DEFAULT_CASES)})")
    sw.add_argument("--families", help="comma-separated families (default: the enabled ones, or those of --filter)")
    sw.add_argument("--samples", type=int, default=60, help="random configs per family and case (default 60)")
    sw.add_argument("--filter", help='JSON {"family": {"param": [values]}}: only these families, at these values')
    sw.add_argument("--config", action="append", metavar="FAMILY:JSON",
                    help="a config measured on every case where it is feasible, besides the sample (repeatable; "
                    "@FILE: one FAMILY:JSON a line)")
    sw.add_argument("--out", help="output stem (default OUTDIR/sweep-GPU)")

    cf = sub.add_parser("config", help="one config on each case, optionally with the baselines")
    cf.add_argument("--case", action="append", required=True, help=case_help + " (repeatable)")
    cf.add_argument("--family", required=True)
    cf.add_argument("--config", required=True, help="the config as JSON")
    cf.add_argument("--baselines", action="store_true", help="time cuSPARSE and cuBLAS on each case too")
    cf.add_argument("--cold", action="store_true", help="time it and cuBLAS again with A from HBM (device.cold), "
                                                        "logging why a side fails")
    cf.add_argument("--out", help="output stem (default OUTDIR/config-FAMILY-CASE)")

    pr = sub.add_parser("profile", help="launch one config a few times, for Nsight Compute")
    pr.add_argument("--case", required=True, help=case_help)
    pr.add_argument("--db", help="tuning database holding the case's best record for this GPU")
    pr.add_argument("--family", help="with --config: this config instead of a record")
    pr.add_argument("--config", help="a config as JSON (with --family)")
    pr.add_argument("--launches", type=int, default=5, help="launches after the verified one (default 5)")
    pr.add_argument("--ncu", nargs="?", const="", default=None, metavar="FILE",
                    help="run under ncu; its report into FILE (default OUTDIR/ncu/ncu-FAMILY-CASE.txt)")
    pr.add_argument("--ncu-full", action="store_true", help="ncu --set full instead of the usual sections")

    bl = sub.add_parser("baselines", help="our baselines against PyTorch's, timed the same way")
    bl.add_argument("--case", action="append", help=case_help + " (repeatable)")
    bl.add_argument("--out", help="output stem (default OUTDIR/baselines-GPU)")

    un = sub.add_parser("untuned", help="the runtime on real layers at an N no record has: policies off / quick "
                        "against min(cuSPARSE, dense)")
    _layer_run_args(un, n_default="200", n_help="comma-separated N (default 200: no shipped record has it)",
                    db_help="the database lookups read (e.g. db/h100-80gb-hbm3.sqlite: another GPU's records)")
    un.add_argument("--out", help="output stem (default OUTDIR/runtime-untuned-GPU)")

    li = sub.add_parser("linear", help="SparseLinear against nn.Linear on real layers: CUDA graph, eager, kernels "
                        "per call")
    _layer_run_args(li, n_default="1,16,200", n_help="comma-separated N = tokens a call (default 1,16,200)",
                    db_help="the database lookups read (default: the default search path)")
    li.add_argument("--include", action="append", help="only layers whose name matches these fnmatch patterns")
    li.add_argument("--out", help="output stem (default OUTDIR/runtime-linear-GPU)")

    sd = sub.add_parser("sddmm", help="SDDMM benchmark: tuned kernels against cuSPARSE SDDMM and dense + mask")
    sd.add_argument("--quick", action="store_true", help="a few cases (3 per dtype) instead of the default suite")
    sd.add_argument("--budget", type=float, default=0, help="start no new case after this many seconds (0: none)")
    sd.add_argument("--dtype", default="fp16,fp32", help="comma-separated dtypes: fp16, fp32, bf16 (default fp16,fp32)")
    sd.add_argument("--kind", default="attention,weightgrad", help="comma-separated case kinds (default both)")
    sd.add_argument("--configs", type=int, default=24, help="sampled configs per family and case (default 24)")
    sd.add_argument("--refine", type=int, default=8, help="neighbours of each family's best per case (default 8)")
    sd.add_argument("--seed", type=int, default=0, help="seed of the masks, inputs and config sample (default 0)")
    sd.add_argument("--list", action="store_true", help="list the cases and sampled configs and stop (no GPU)")
    sd.add_argument("--out", help="output stem (default OUTDIR/sddmm-GPU)")

    cv = sub.add_parser("conv", help="conv3x3 benchmark: ResNet-50 3x3 layers against cuDNN FP32/TF32/FP16")
    cv.add_argument("--quick", action="store_true", help="3 cases (under a minute of GPU time)")
    cv.add_argument("--full", action="store_true", help="the whole cross product (densities 0.05-0.3: ~15 min)")
    cv.add_argument("--budget", type=float, default=210, help="start no new case after this many seconds (default "
                                                               "210; 0: none)")
    cv.add_argument("--dtype", default="fp32,fp16", help="comma-separated dtypes (default fp32,fp16)")
    cv.add_argument("--layout", default="nchw", help="nchw (default) or nhwc")
    cv.add_argument("--configs", type=int, default=3, help="sampled configs per family and case (default 3)")
    cv.add_argument("--seed", type=int, default=0, help="seed of the weights, inputs and config sample")
    cv.add_argument("--list", action="store_true", help="list the cases and stop (no GPU)")
    cv.add_argument("--out", help="output stem (default OUTDIR/conv-GPU)")
    cv.add_argument("--sweep", action="store_true", help="the quick cases + 512@7 b1 d0.1 fp32 + 64@56 b8 d0.05 fp16 "
                                                         "(config sweeps: with --configs 60 --families ...)")
    cv.add_argument("--cases", help="comma-separated LAYER:BATCH:DENSITY:DTYPE, e.g. 64@56:1:0.1:fp32,512@7:1:0.1:fp32")
    cv.add_argument("--families", help="comma-separated conv3x3 kernel families (default all)")
    cv.add_argument("--one", metavar="LAYER:B:D:DTYPE", help="ONE verified launch of --family/--config on this case "
                    "(for `ncu -k regex:conv3x3 --launch-count 1`); prints JSON, exit 1 if wrong")
    cv.add_argument("--family", help="with --one: the family")
    cv.add_argument("--config", help="with --one: the config (JSON)")
    cv.add_argument("--launches", type=int, default=1, help="with --one: launches (default 1; the first verified)")
    cv.add_argument("--ncu", nargs="?", const="", default=None, metavar="FILE",
                    help="with --one: run it under ncu (its second launch); the report into FILE (default "
                         "OUTDIR/ncu/ncu-FAMILY-CASE.txt)")
    cv.add_argument("--ncu-full", action="store_true", help="ncu --set full instead of the usual sections")

    ft = sub.add_parser("finetune", help="fine-tuning: trainable SparseLinear vs dense masked nn.Linear (loss, step time)")
    ft.add_argument("--quick", action="store_true", help="2 blocks, 120 steps (about a minute of GPU time)")
    ft.add_argument("--steps", type=int, default=None, help="training steps (default 300; --quick 120)")
    ft.add_argument("--blocks", type=int, default=None, help="blocks of the stack (default 4; --quick 2)")
    ft.add_argument("--tokens", type=int, default=512, help="tokens a step (default 512)")
    ft.add_argument("--density", type=float, default=0.1, help="kept fraction of each weight (default 0.1)")
    ft.add_argument("--dtype", default="fp32", help="fp32 or fp16 (default fp32)")
    ft.add_argument("--lr", type=float, default=3e-4, help="Adam's learning rate (default 3e-4)")
    ft.add_argument("--seed", type=int, default=0, help="seed of the teacher, data (default 0)")
    ft.add_argument("--out", help="output stem (default OUTDIR/finetune-GPU)")

    rc = sub.add_parser("recold", help="a suite's records: their winners and cuBLAS timed cold again (A from HBM)")
    rc.add_argument("--records", help="the suite's JSON, e.g. bench/results/suite-llm-h200.json (or any JSON list of "
                    "case + family + config)")
    rc.add_argument("--case", action="append", help=case_help + " (repeatable; with --config instead of --records)")
    rc.add_argument("--config", action="append", metavar="FAMILY:JSON", help="a config timed on every --case where it "
                    "is feasible (repeatable; @FILE: one FAMILY:JSON a line, e.g. a draft's configs file)")
    rc.add_argument("--only", action="append", metavar="F=V,V", help="only the records matching (repeatable, all hold; "
                    "F one of M K N density dtype pattern), as bench --only")
    rc.add_argument("--skip", action="append", metavar="JSON", help="an earlier recold output: its timed cases are "
                    "skipped (repeatable; resume after a budget's cut)")
    rc.add_argument("--workers", type=int, default=8, help="processes: they build and compile in parallel and take "
                    "the GPU's turn to time (default 8)")
    rc.add_argument("--budget", type=float, default=0, help="start no new case after this many seconds (0: none)")
    rc.add_argument("--ungated", action="store_true", help="time configs outside a family's search gate too (the "
                    "`gate` constraint, e.g. tc_bitmap at N = 1 and density 0.2): where it runs, not where the tuner searches")
    rc.add_argument("--baselines", action="store_true", help="also time cuSPARSE and cuBLAS (FP32, TF32, FP16, BF16) "
                    "warm in the same process as each winner, as the suite does (recold-apply --warm puts them over the "
                    "records with the winner's warm time: every ratio of one run)")
    rc.add_argument("--out", help="output stem (default OUTDIR/recold-GPU)")

    ra = sub.add_parser("recold-apply", help="no GPU: recold outputs put over a suite's records; report rewritten")
    ra.add_argument("--records", required=True, help="the suite's JSON")
    ra.add_argument("--rows", nargs="+", required=True, help="recold outputs (JSON)")
    ra.add_argument("--suite", default="llm", help="the suite (default llm)")
    ra.add_argument("--adopt", action="store_true", help="per case, the fastest config (cold, or --adopt-by warm) of a "
                    "run that timed the record's winner beside others (twins) becomes the winner where it is faster "
                    "by --margin; then `db set-cold --add --from RECOLD.json` puts the same run's times into the "
                    "database")
    ra.add_argument("--margin", type=float, default=0.01, help="--adopt: how much faster, as a fraction of the "
                    "winner's time in the same run (default 0.01)")
    ra.add_argument("--adopt-by", choices=("cold", "warm"), default="cold", help="--adopt: the time twins are compared "
                    "by: cold (A from HBM, default) or warm (the time issue 18's fp16 / tf32 targets compare; then "
                    "re-time the adopted winners in a run of their own, recold --baselines and --warm, so that no "
                    "best-of-several pick stays in the numbers)")
    ra.add_argument("--agree", action="store_true", help="--adopt: a twin only where at least two of the --rows runs "
                    "timed it beside the winner and it was faster by --margin in each (one run's margin is often its "
                    "own luck; session 63)")
    ra.add_argument("--warm", action="store_true", help="the winner's warm time and the vendor paths' (rows of recold "
                    "--baselines) over the record's too: every ratio of the record from one run (not with --adopt)")
    ra.add_argument("--out", required=True, help="output folder: suite-SUITE-GPU.{json,md,png} (an existing JSON "
                    "there must be --records itself)")

    ov = sub.add_parser("overhead", help="host cost per call of lookup and of the runtime operator")
    ov.add_argument("--out", help="output folder (default OUTDIR): runtime-overhead-<gpu or cpu>.{json,md}")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    return {"ab": cmd_ab, "profile": cmd_profile, "sweep": cmd_sweep, "config": cmd_config, "baselines": cmd_baselines,
            "overhead": cmd_overhead, "untuned": cmd_untuned, "linear": cmd_linear, "sddmm": cmd_sddmm,
            "finetune": cmd_finetune, "conv": cmd_conv, "recold": cmd_recold,
            "recold-apply": cmd_recold_apply}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(exit_status("probe.py", main))
