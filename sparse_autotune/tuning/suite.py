"""The benchmark suite: tune each case, time the winner and the baselines the same way, write JSON/MD/PNG.

`sparse-autotune bench --suite dl|quick|llm [--trials T] [--out DIR]`. Each finished case is appended to
`suite-<suite>-<gpu>.json` at once, so an interrupted or time-limited run resumes where it stopped
(cases already in the file are skipped). Tuned records also land in the tuning database.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import re
import statistics
import time
from pathlib import Path

from ..errors import UserError
from ..tuning.loop import ProblemLoop, log_stderr, tune_interrupted

RESNET = [((64, 256), 3136), ((256, 64), 3136), ((128, 512), 784), ((512, 128), 784),
          ((256, 1024), 196), ((1024, 256), 196), ((512, 2048), 49), ((2048, 512), 49)]
DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.3)
DTYPES = ("fp32", "fp16")
# dl also tunes the opt-in tf32 (fp32 storage, TF32 tensor cores; compared with cuBLAS TF32: issue 18); appended, so a
# resumed dl run keeps its fp32 / fp16 cases and adds the tf32 ones
DL_DTYPES = DTYPES + ("tf32",)
PATTERNS = ("uniform", "powerlaw")
# llm: the Linear layers of 7-8B decoder models (q/o, GQA k/v, MLP up/gate and down of LLaMA-2 and Mistral sizes) at
# decode and small-batch N, fp16 and bf16, uniform and per-row-uniform (Wanda / SparseGPT-style) patterns
LLM_SHAPES = ((4096, 4096), (1024, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336))
LLM_NS = (1, 8, 16, 32, 64, 128)
LLM_DENSITIES = (0.5, 0.3, 0.2, 0.1, 0.05)
LLM_DTYPES = ("fp16", "bf16")
LLM_PATTERNS = ("uniform", "rowuniform")
SUITES = ("dl", "quick", "llm")


def suite_cases(name: str) -> list[dict]:
    """The (M, K, N) shapes x densities x dtypes x patterns of a suite, in a fixed order."""
    if name == "dl":
        shapes = [(m, k, n * b) for (m, k), n in RESNET for b in (1, 8)]
        shapes += [(m, k, n) for (m, k) in ((768, 768), (3072, 768), (768, 3072)) for n in (128, 512, 2048)]
        shapes += [(m, k, n) for (m, k) in ((4096, 4096), (11008, 4096)) for n in (16, 64)]
        shapes += [(512, 2048, 256), (512, 2048, 1024)]
        combos = list(itertools.product(shapes, DENSITIES, DTYPES, PATTERNS))
        combos += list(itertools.product(shapes, DENSITIES, DL_DTYPES[len(DTYPES):], PATTERNS))
    elif name == "llm":
        # (pattern, dtype) outermost, so that a suite cut by its budget has every layer, N and density of the first
        # pairs (fp16 uniform first, then bf16 per-row-uniform) rather than all variants of the first layers
        shapes = [(m, k, n) for (m, k) in LLM_SHAPES for n in LLM_NS]
        pairs = [("uniform", "fp16"), ("rowuniform", "bf16"), ("rowuniform", "fp16"), ("uniform", "bf16")]
        assert sorted(pairs) == sorted(itertools.product(LLM_PATTERNS, LLM_DTYPES))
        combos = [(sh, d, dt, p) for p, dt in pairs for sh in shapes for d in LLM_DENSITIES]
    elif name == "quick":
        shapes = [(512, 2048, 256), (512, 2048, 1024), (768, 3072, 512), (1024, 256, 196)]
        combos = itertools.product(shapes, (0.05, 0.1), DTYPES, ("uniform",))
    else:
        raise UserError(f"unknown suite {name!r}: choose one of {', '.join(SUITES)}, search")  # search: searchbench.py
    return [{"M": m, "K": k, "N": n, "density": d, "dtype": dt, "pattern": p}
            for (m, k, n), d, dt, p in combos]


def case_key(c: dict) -> tuple:
    return (c["M"], c["K"], c["N"], c["density"], c["dtype"], c["pattern"])


def best_dense(rec: dict) -> float | None:
    """The best dense path of the same dtype: min(FP32, TF32) for fp32, FP16 / BF16 tensor cores for fp16 / bf16."""
    if rec["dtype"] in ("fp16", "bf16", "tf32"):  # tf32: cuBLAS TF32, its own precision
        return rec.get(f"cublas_{rec['dtype']}_us")
    vals = [v for v in (rec.get("cublas_fp32_us"), rec.get("cublas_tf32_us")) if v]
    return min(vals) if vals else None


def geomean(xs) -> float | None:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


class _SuiteRun(ProblemLoop):
    """The suite's cases on this GPU through the problem loop: each finished case appended to the suite's JSON file
    at once (what is done is skipped by a rerun)."""

    unit = "case"

    def __init__(self, cases: list[dict], path: Path, trials: int, db: str | None, deadline: float | None, log):
        super().__init__(deadline=deadline, log=log)
        self.cases, self.path, self.trials, self.db = cases, path, trials, db
        self.records = json.loads(path.read_text()) if path.exists() else []
        self.done = {case_key(r) for r in self.records}

    def skip(self, item) -> bool:
        return case_key(item[1]) in self.done

    def work(self, item) -> None:
        from ..core.problem import Problem  # noqa: PLC0415
        from ..tuning.tuner import TuneOptions, tune  # noqa: PLC0415
        i, c = item
        self.log(f"[{i + 1}/{len(self.cases)}] {c}")
        p = Problem.random(c["M"], c["K"], c["N"], c["density"], c["dtype"], c["pattern"], seed=0)
        r = tune(p, TuneOptions(trials=self.trials, db=self.db, progress=False), log=lambda m: None)
        if tune_interrupted(r):
            raise KeyboardInterrupt  # the case's best so far is in the tuning DB; a rerun tunes it further
        rec = case_record(c, r)
        self.records.append(rec)
        self.path.write_text(json.dumps(self.records, indent=1))
        bd = best_dense(rec)
        self.log(f"  {rec['family']} {rec['tuned_us']:.2f} us | cuSPARSE {rec['cusparse_us'] or float('nan'):.2f} | "
                 f"best dense {bd or float('nan'):.2f} | floor {rec['floor_us']:.2f}")

    def failed(self, item, exc) -> None:
        self.log(f"  case failed: {exc}")

    def budget_reached(self) -> None:
        self.log(f"time budget reached: {len(self.records)}/{len(self.cases)} cases done; run again to continue")

    def interrupted(self) -> None:
        self.log(f"interrupted: {len(self.records)}/{len(self.cases)} cases done and kept in {self.path}; run again "
                 "to continue")


def run_suite(suite: str, trials: int, out_dir: Path, db: str | None, budget_s: float | None = None,
              log=log_stderr) -> list[dict]:
    """Tune the suite's cases on this GPU (resuming: the cases in its JSON file are skipped), then write the report.
    budget_s: no new case is started after that many seconds. Ctrl-C: the report of the cases done, then
    KeyboardInterrupt."""
    from ..device.gpu import gpu_info, gpu_slug  # noqa: PLC0415
    info = gpu_info()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"suite-{suite}-{gpu_slug(info.name)}.json"
    cases = suite_cases(suite)
    run = _SuiteRun(cases, path, trials, db, None if budget_s is None else time.time() + budget_s, log)
    res = run.run(list(enumerate(cases)))
    write_report(run.records, out_dir / f"suite-{suite}-{gpu_slug(info.name)}", suite, len(cases))
    if res.interrupted:
        raise KeyboardInterrupt
    return run.records


def case_record(c: dict, r: dict) -> dict:
    """A suite case's line in suite-*.json from tune's report."""
    b, base = r["best"], r["baselines"]
    return {**c, "nnz": r["problem"]["nnz"], "family": b["family"], "config": b["config"], "tuned_us": b["time_us"],
            "cusparse_us": base["cusparse_us"], "cublas_fp32_us": base["cublas_fp32_us"],
            "cublas_tf32_us": base["cublas_tf32_us"], "cublas_fp16_us": base["cublas_fp16_us"],
            "cublas_bf16_us": base.get("cublas_bf16_us"),
            "floor_us": r["floor_us"], "bytes_floor_us": r.get("bytes_floor_us"), "a_bytes": r.get("a_bytes"),
            "a_bytes_per_nnz": r.get("a_bytes_per_nnz"), "max_rel_err": b["max_rel_err"],
            # the winner and cuBLAS of the same precision with A from HBM (device.cold): what a decoding model sees
            "tuned_cold_us": (r.get("cold") or {}).get("tuned_cold_us"),
            "dense_cold_us": (r.get("cold") or {}).get("dense_cold_us"),
            "cold_error": (r.get("cold") or {}).get("cold_error"),  # why a cold time is missing
            "trials": r["trials"]["complete"],
            # what the runtime runs: the tuned kernel, or a vendor path that beat it (family / tuned_us stay the kernel's)
            "chosen_family": (r.get("chosen") or b)["family"], "chosen_us": (r.get("chosen") or b)["time_us"],
            "gpu": r["gpu"], "driver": r["driver"], "cuda": r["cuda"], "cupy": r["cupy"]}


def shard_of(cases: list, shard: tuple[int, int] | None) -> list[int]:
    """The indices of the cases that shard (i, n) runs: every n-th case from the i-th (None: all). Interleaved, so
    that each shard gets its share of every layer, N and density wherever the suite stands."""
    if shard is None:
        return list(range(len(cases)))
    i, n = shard
    return list(range(i, len(cases), n))


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (0 <= I < N) -> (I, N); a UserError naming the problem otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise UserError(f"--shard {text!r}: expected I/N, e.g. 0/2 (this runner's share of the suite's cases)")
    i, n = int(m[1]), int(m[2])
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: I must be in 0..N-1 and N >= 1")
    return i, n


def ranking_us(r: dict) -> float:
    """A suite record's time by the store's rule (store.db.rank_us): its tuned kernel's cold time (tuned_cold_us) where
    measured, else its warm time (tuned_us); inf where it has neither."""
    from ..store.db import is_timed, rank_us  # noqa: PLC0415
    t = rank_us({"cold_us": r.get("tuned_cold_us"), "time_us": r.get("tuned_us")})
    return float(t) if is_timed(t) else float("inf")


def merge_records(paths: list[Path], suite: str, first_wins: bool = False, fastest_wins: bool = False) -> list[dict]:
    """The records of several suite-<suite>-<gpu>.json files (e.g. one per shard, each run on its own GPU) as one
    list in the suite's case order; a case in more than one file keeps the record of the longest search (the most
    trials: a shard's --retune of a case that both storages hold from before the split), the first file's on a tie;
    with first_wins, the first file's record whatever the trials (an --only re-run after a kernel change, put over
    the earlier report); with fastest_wins, the record with the lowest tuned time by ranking_us (cold where measured,
    else warm: a --families part that searched some families only, put beside the earlier report of all of them: the
    tuner over both would keep the faster), the first file's on a tie. A file that is not a list of this suite's
    records is refused with its name."""
    if first_wins and fastest_wins:
        raise UserError("--merge: --first-wins and --fastest-wins exclude each other")
    order = {case_key(c): j for j, c in enumerate(suite_cases(suite))}
    seen: dict[tuple, dict] = {}
    for p in paths:
        try:
            recs = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"--merge: cannot read {p}: {e}") from None
        if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
            raise UserError(f"--merge: {p} is not a suite's JSON (a list of case records)")
        for r in recs:
            try:
                k = case_key(r)
            except KeyError as e:
                raise UserError(f"--merge: {p}: a record without {e}") from None
            if k not in order:
                raise UserError(f"--merge: {p} holds a case that is not in suite {suite!r}: {k}")
            if k not in seen:
                seen[k] = r
            elif fastest_wins:
                if ranking_us(r) < ranking_us(seen[k]):
                    seen[k] = r
            elif not first_wins and r.get("trials", 0) > seen[k].get("trials", 0):
                seen[k] = r
    return sorted(seen.values(), key=lambda r: order[case_key(r)])


def cold_entries(records, source: str) -> list:
    """The cold times of a suite report's records (suite-<suite>-<gpu>.json: a list of case records, or an object with
    such a list under "records") or of a recold output's rows (bench/probe.py recold: {"gpu": ..., "rows": [...]}; the
    rows it did not time are left out) as store.db.ColdTime: each record's tuned kernel (family, config) at
    tuned_cold_us, with its warm time and verified error (set_cold's add), and cuBLAS of the problem's own precision
    (family dense, math: device.cold.DENSE_MODE) at dense_cold_us, where measured; for `db set-cold`. A record without
    its key, family or config, or a cold time that is not a positive number: a one-line UserError naming `source` and
    the record."""
    from ..core.vendor import DENSE  # noqa: PLC0415
    from ..device.cold import DENSE_MODE  # noqa: PLC0415
    from ..store.db import DEFAULT_LAYOUT, SPMM, ColdTime, is_timed  # noqa: PLC0415
    gpu = None
    if isinstance(records, dict) and isinstance(records.get("rows"), list):  # a recold output: its GPU in the header
        gpu = records.get("gpu")
        records = [r for r in records["rows"] if not (isinstance(r, dict) and (r.get("skipped") or r.get("error")))]
    elif isinstance(records, dict):
        records = records.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UserError(f"{source} is not a suite report (a list of case records, or {{\"records\": [...]}}) nor a "
                        "recold output ({\"gpu\": ..., \"rows\": [...]})")
    out, dense = [], {}
    for i, r in enumerate(records):
        where = f"{source}: record {i}"
        try:
            key = dict(gpu_name=str(r["gpu"] if gpu is None or "gpu" in r else gpu), m=int(r["M"]), k=int(r["K"]),
                       n=int(r["N"]), density=float(r["density"]), dtype=str(r["dtype"]), pattern=str(r["pattern"]),
                       layout=str(r.get("layout") or DEFAULT_LAYOUT), op=SPMM)
            family, config = str(r["family"]), r["config"]
        except KeyError as e:
            raise UserError(f"{where} has no {e}") from None
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}: a key field is not a number: {e}") from None
        if not isinstance(config, dict):
            raise UserError(f"{where}: config is not an object")
        for name in ("tuned_cold_us", "dense_cold_us"):
            if r.get(name) is not None and not is_timed(r[name]):
                raise UserError(f"{where}: {name} {r[name]!r} is not a positive number")
        if key["dtype"] not in DENSE_MODE:
            raise UserError(f"{where}: unknown dtype {key['dtype']!r}")
        err = r.get("max_rel_err", r.get("rel_err"))  # a suite record's, a recold row's
        if r.get("tuned_cold_us") is not None:
            out.append(ColdTime(**key, family=family, config=config, cold_us=float(r["tuned_cold_us"]),
                                time_us=float(r["tuned_us"]) if is_timed(r.get("tuned_us")) else None,
                                max_rel_err=float(err) if isinstance(err, (int, float)) else None))
        if r.get("dense_cold_us") is not None:
            dense.setdefault(tuple(key.items()), []).append(float(r["dense_cold_us"]))
    # cuBLAS once a key: a recold output times it with each config of a case (the median of those times)
    out += [ColdTime(**dict(k), family=DENSE, config={"math": DENSE_MODE[dict(k)["dtype"]]},
                     cold_us=statistics.median(v)) for k, v in dense.items()]
    return out


def write_merged(paths: list[Path], suite: str, out_dir: Path, first_wins: bool = False,
                 fastest_wins: bool = False) -> list[dict]:
    """--merge: the union of shard files written as one suite-<suite>-<gpu>.{json,md,png} (no GPU needed)."""
    from ..device.gpu import gpu_slug  # noqa: PLC0415
    records = merge_records(paths, suite, first_wins, fastest_wins)
    if not records:
        raise UserError("--merge: the files hold no records")
    gpus = sorted({r["gpu"] for r in records})
    if len(gpus) > 1:
        raise UserError(f"--merge: records of several GPU models ({', '.join(gpus)}): merge each model's files apart")
    stem = out_dir / f"suite-{suite}-{gpu_slug(gpus[0])}"
    target = stem.with_suffix(".json")
    if target.exists() and not any(target.resolve() == Path(p).resolve() for p in paths):
        raise UserError(f"--merge: {target} exists and is not one of the files merged: name it among them (its cases "
                        "are kept) or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(records, indent=1))
    write_report(records, stem, suite, len(suite_cases(suite)))
    return records


# ---- cold times measured again for the records' own winners (bench/probe.py recold) ----
# A fix to the cold timing (session 22: the rotation of A's copies fitted in the L2) leaves the records measured before
# it with too-warm cold times. Their winners are known (family, config), so the honest numbers need no new search: the
# winner is built, verified and timed cold again, cuBLAS too, and those times replace the record's.
RETIMED_FIELDS = ("tuned_cold_us", "dense_cold_us", "cold_error")
# the vendor paths' warm times that `probe recold --baselines` measures in the winner's process (device.baselines)
WARM_BASELINES = ("cusparse_us", "cublas_fp32_us", "cublas_tf32_us", "cublas_fp16_us", "cublas_bf16_us")


def retime_key(r: dict) -> tuple:
    """A record's or a recold row's identity: its case, family and config (a candidates file has several a case)."""
    return (*case_key(r), r.get("family"), json.dumps(r.get("config"), sort_keys=True))


def same_run_key(r: dict) -> tuple:
    """retime_key with the config as the family's space normalizes it for the case's dtype (a config stored before a
    parameter existed names the kernel its default builds: the record's and a row's of one kernel compare equal)."""
    from ..core.space import built_config  # noqa: PLC0415
    return (*case_key(r), r.get("family"),
            json.dumps(built_config(r.get("family"), r.get("config"), r["dtype"]), sort_keys=True))


def retime_cases(records: list[dict], conds: dict[str, set] | None = None, skip=()) -> list[dict]:
    """The records to time cold again: those matching conds (parse_case_filter; None: all) that hold a winner (family,
    config), less those whose retime_key is in skip (rows already measured)."""
    skip = set(skip)
    return [r for r in records if (conds is None or case_matches(r, conds)) and r.get("family")
            and isinstance(r.get("config"), dict) and retime_key(r) not in skip]


def _runtime_chose_kernel(r: dict) -> bool:
    """Whether a record's runtime choice is its tuned kernel (not a vendor path that beat it): the choice then follows
    the kernel's new config or time."""
    return r.get("chosen_family") == r["family"] and r.get("chosen_us") == r.get("tuned_us")


def apply_retimed(records: list[dict], rows: list[dict], warm: bool = False) -> tuple[list[dict], int, list[str]]:
    """The records with the cold times of `rows` (recold's output: a case key, the family and config timed, and
    RETIMED_FIELDS) put over theirs, each updated one marked with `cold_retimed` (the row's date). A row is refused
    (and said why) when no record has its case, or the record's winner is not the config it timed (the record changed
    since, e.g. by a merge), or it timed nothing (skipped: a budget's cut; or failed: its error). warm: the winner's
    warm time and the vendor paths' (WARM_BASELINES, `recold --baselines`) too, so that every ratio of the record is
    of one run (marked `warm_retimed`; the runtime's choice follows where it was the winner); a row without them is
    refused. Returns (new records, rows applied, why the others were not); the input is not modified."""
    by_key = {case_key(r): j for j, r in enumerate(records)}
    out = [dict(r) for r in records]
    applied, refused = 0, []
    for row in rows:
        k = case_key(row)
        j = by_key.get(k)
        if j is None:
            refused.append(f"{k}: no record of this case")
        elif row.get("skipped") or row.get("error"):
            refused.append(f"{k}: not timed ({row.get('skipped') or row.get('error')})")
        elif same_run_key(out[j]) != same_run_key(row):
            refused.append(f"{k}: the record's winner is {out[j].get('family')} {out[j].get('config')}, the row timed "
                           f"{row.get('family')} {row.get('config')}")
        elif warm and not (row.get("tuned_us") and all(f in row for f in WARM_BASELINES)):
            refused.append(f"{k}: no warm baselines in the row (time it with recold --baselines)")
        else:
            r = out[j]
            r.update({f: row.get(f) for f in RETIMED_FIELDS})
            r["cold_retimed"] = row.get("date") or True
            if warm:
                if _runtime_chose_kernel(r):
                    r["chosen_us"] = row["tuned_us"]  # (a vendor path the runtime chose keeps its suite time)
                r.update({f: row.get(f) for f in ("tuned_us", *WARM_BASELINES)})
                r["warm_retimed"] = row.get("date") or True
            applied += 1
    return out, applied, refused


def apply_adopted(records: list[dict], runs: list[list[dict]], margin: float = 0.01, by: str = "cold",
                  agree: bool = False) -> tuple[list[dict], int, int, list[str]]:
    """recold-apply --adopt: the records with, per case, the fastest config (by cold time, or by warm time with
    by="warm": the time issue 18's fp16 / tf32 targets compare) of one recold run that timed the record's own winner
    beside other configs (twins: each run compares its own times only; run to run the cold times of one kernel differ
    by up to 10-15 %). The run is the last of `runs` that timed the record's winner without an error. Where another
    config of that run is more than `margin` faster than the winner (by that time), it becomes the record's winner
    (family, config, warm and cold times, error, the format's bytes and byte floor, the runtime's choice where that was
    the kernel) and the record is marked `adopted` (date, the config replaced, its warm and cold times of the run, `by`);
    else the winner's own times of that run are put over the record's (apply_retimed). cuBLAS's cold time is the median
    of the case's rows of that run (each row timed it once; `db set-cold` takes the same).
    agree: a twin is adopted only where at least two runs timed it beside the winner and it was faster by the margin
    in each of them (a single run's margin is often its own luck: session 63 measured whole cases moving by up to
    ~10 % from one run to the next); its times are still the last such run's.
    Returns (new records, cases retimed, cases adopted, why the other cases were not); the input is not modified."""
    from ..device.ceilings import bc_bytes  # noqa: PLC0415
    if by not in ("cold", "warm"):
        raise ValueError(f"apply_adopted: by={by!r}, not 'cold' or 'warm'")
    field = "tuned_cold_us" if by == "cold" else "tuned_us"
    out = [dict(r) for r in records]
    by_key = {case_key(r): j for j, r in enumerate(out)}
    timed = lambda row: not row.get("skipped") and not row.get("error") and row.get(field)  # noqa: E731
    cases: dict[tuple, list[dict]] = {}  # the chosen run's rows of each case
    every: dict[tuple, list[list[dict]]] = {}  # each run's rows of the case, where that run timed the winner
    for rows in runs:
        mine: dict[tuple, list[dict]] = {}
        for row in rows:
            mine.setdefault(case_key(row), []).append(row)
        for k, rs in mine.items():
            j = by_key.get(k)
            if j is not None:
                want = same_run_key(out[j])
                if any(same_run_key(x) == want and timed(x) for x in rs):
                    cases[k] = rs
                    every.setdefault(k, []).append(rs)
    retimed = adopted = 0
    why = []
    seen = {case_key(row) for rows in runs for row in rows}
    for k in sorted(seen, key=str):
        j = by_key.get(k)
        if j is None:
            why.append(f"{k}: no record of this case")
            continue
        if k not in cases:
            why.append(f"{k}: no run timed the record's winner ({out[j].get('family')} {out[j].get('config')}) "
                       "beside the others: times of different runs are not compared")
            continue
        r = out[j]
        rs = [x for x in cases[k] if timed(x)]
        want = same_run_key(r)
        own = next(x for x in rs if same_run_key(x) == want)
        best = min(rs, key=lambda x: x[field])
        win = own if best[field] >= own[field] * (1 - margin) else best
        if win is not own and agree and not _agrees(every[k], same_run_key(win), want, field, margin, timed):
            why.append(f"{k}: {win['family']} {win['config']} was faster than the winner in the last run but not by "
                       f"{margin:.0%} in every run (at least two) that timed both: kept")
            win = own
        if win is own:
            retimed += 1
        else:
            was = {"family": r["family"], "config": r["config"], "tuned_us": r.get("tuned_us"),
                   "tuned_cold_us_same_run": own.get("tuned_cold_us"), "tuned_us_same_run": own.get("tuned_us"),
                   "by": by}
            if _runtime_chose_kernel(r):
                r["chosen_family"], r["chosen_us"] = win["family"], win["tuned_us"]
            if win.get("a_bytes") and r.get("a_bytes") and r.get("bytes_floor_us"):  # the same bandwidth, A's bytes
                bc = bc_bytes(r["M"], r["K"], r["N"], r["dtype"])
                r["bytes_floor_us"] = r["bytes_floor_us"] * (win["a_bytes"] + bc) / (r["a_bytes"] + bc)
                r["a_bytes"] = int(win["a_bytes"])
                r["a_bytes_per_nnz"] = win["a_bytes"] / r["nnz"] if r.get("nnz") else r.get("a_bytes_per_nnz")
            r.update(family=win["family"], config=win["config"], tuned_us=win["tuned_us"],
                     max_rel_err=win.get("rel_err", r.get("max_rel_err")),
                     adopted={"date": win.get("date"), "replaced": was})
            adopted += 1
        r.update({f: win.get(f) for f in RETIMED_FIELDS})
        dense = [x["dense_cold_us"] for x in rs if x.get("dense_cold_us")]
        r["dense_cold_us"] = statistics.median(dense) if dense else r.get("dense_cold_us")
        r["cold_retimed"] = win.get("date") or True
    return out, retimed, adopted, why


def _agrees(run_rows: list[list[dict]], twin: tuple, own: tuple, field: str, margin: float, timed) -> bool:
    """apply_adopted(agree=True): the twin beat the winner by `margin` in every run that timed both, and two or more
    runs did."""
    both = 0
    for rs in run_rows:
        t = next((x for x in rs if same_run_key(x) == twin and timed(x)), None)
        o = next((x for x in rs if same_run_key(x) == own and timed(x)), None)
        if t is None or o is None:
            continue
        both += 1
        if t[field] >= o[field] * (1 - margin):
            return False
    return both >= 2


CASE_FIELDS = {"m": "M", "k": "K", "n": "N", "density": "density", "dtype": "dtype", "pattern": "pattern"}


def parse_case_filter(text: str, opt: str = "--retune") -> dict[str, set]:
    """--retune 'N=16,32 density=0.05,0.1': space-separated FIELD=V1,V2 conditions on a suite's cases (all must hold;
    FIELD one of M, K, N, density, dtype, pattern) -> {field: values}; a UserError naming the problem otherwise."""
    conds: dict[str, set] = {}
    for part in (text or "").split():
        field, eq, vals = part.partition("=")
        key = CASE_FIELDS.get(field.lower())
        if not eq or key is None or not vals:
            raise UserError(f"{opt} {text!r}: {part!r} is not FIELD=V1,V2 with FIELD one of "
                            "M, K, N, density, dtype, pattern (e.g. 'N=16,32 dtype=bf16')")
        try:
            conv = int if key in ("M", "K", "N") else float if key == "density" else str
            conds.setdefault(key, set()).update(conv(v) for v in vals.split(","))
        except ValueError:
            raise UserError(f"{opt} {text!r}: {field} needs {'numbers' if key == 'density' else 'integers'}, got "
                            f"{vals!r}") from None
    if not conds:
        raise UserError(f"{opt} needs at least one FIELD=V1,V2 condition (e.g. 'N=16,32')")
    return conds


def case_matches(c: dict, conds: dict[str, set]) -> bool:
    return all((any(math.isclose(c[k], v) for v in vals) if k == "density" else c[k] in vals)
               for k, vals in conds.items())


def retune_indices(suite: str, conds: dict[str, set], opt: str = "--retune") -> list[int]:
    """The indices of the suite's cases that --retune's conditions match; a UserError if none does."""
    hit = [j for j, c in enumerate(suite_cases(suite)) if case_matches(c, conds)]
    if not hit:
        raise UserError(f"{opt}: no case of suite {suite!r} matches "
                        + " ".join(f"{k}={','.join(str(v) for v in sorted(vs))}" for k, vs in conds.items()))
    return hit


def _case_of_spec(spec: dict) -> tuple:
    return (spec["m"], spec["k"], spec["n"], round(float(spec["density"]), 6), spec["dtype"], spec["pattern"],
            spec["seed"], spec.get("layout", "kn"))


def _retune_ids(suite, cases, specs, queue, retune, more: int, log) -> tuple[list[int], list[int]]:
    """--retune's queue ids: (the ids to run, the first-run ids the report falls back on). A case's first run is its
    done row of the fewest trials, found by the case (not by the exact spec: the storage may hold a run of other
    --trials, or of another set of enabled families); a matching case is enqueued as that row's spec with `more`
    trials added (the same study, continued; the same command again finds it and resumes), the others keep their
    done row. A case with no done run is enqueued as this run's spec (matching: with `more` trials added)."""
    hit = {j for j, c in enumerate(cases) if case_matches(c, retune)}
    if not hit:
        raise UserError("--retune: none of the cases run here (--only) matches it")
    done: dict[tuple, dict] = {}
    for row in queue.problems():
        if row["state"] != "done":
            continue
        key = _case_of_spec(json.loads(row["spec"]))
        if key not in done or json.loads(row["spec"])["trials"] < json.loads(done[key]["spec"])["trials"]:
            done[key] = row
    ids, first, todo = [], [], []
    for j, spec in enumerate(specs):
        row = done.get(_case_of_spec(spec))
        base = json.loads(row["spec"]) if row is not None else spec
        if j in hit:
            todo.append((j, {**base, "trials": base["trials"] + more}))
            ids.append(None)
            first.append(row["id"] if row is not None else None)
        elif row is not None:
            ids.append(row["id"])
            first.append(row["id"])
        else:
            todo.append((j, spec))
            ids.append(None)
            first.append(None)
    for (j, _), rid in zip(todo, queue.enqueue([sp for _, sp in todo])):
        ids[j] = rid
        if first[j] is None:
            first[j] = rid
    earlier = sum(1 for j in hit if done.get(_case_of_spec(specs[j])) is not None)
    log(f"suite {suite}: {len(hit)} cases retuned with {more} more trials than their first run ({earlier} of them "
        "had one; the others run now)")
    return ids, first


def run_suite_scaleout(suite: str, trials: int, out_dir: Path, queue, run_workers, log=log_stderr,
                       shard: tuple[int, int] | None = None, retry_failed: bool = False,
                       retune: dict[str, set] | None = None, retune_trials: int = 20,
                       only: dict[str, set] | None = None, families: str | None = None) -> list[dict]:
    """The suite through a shared storage: every case is enqueued (seed 0, `trials` each), run_workers(ids) runs the
    workers (here, or the caller's K processes), and the done cases are written per GPU as run_suite does.
    shard (i, n): the workers take only every n-th case from the i-th (two GPUs, each with its own copy of the
    storage, split what is left); the report holds every done case of the storage, the shard's and those before.
    retry_failed: this run's failed cases (its shard's) go back to the queue first, attempts reset.
    retune (parse_case_filter): the matching cases' searches are opened again with retune_trials more trials (their
    specs ask trials + retune_trials of the same study: the configs tried keep their times, the known-good configs not
    yet tried come first, e.g. a family's new ones); rerunning the same command resumes it. A matching case keeps its
    earlier result in the report until its retune is done.
    only (parse_case_filter): the suite is cut to the matching cases (queue, shard and report): a part of the suite
    run again from nothing, e.g. after a family was enabled; join its report with the earlier one by --merge.
    families: the kernel families every case searches (comma-separated; default the enabled ones)."""
    from ..device.gpu import gpu_slug  # noqa: PLC0415
    from ..core.space import select_spaces  # noqa: PLC0415
    from ..tuning.queue import random_spec  # noqa: PLC0415
    cases = suite_cases(suite)
    if only is not None:
        cases = [cases[j] for j in retune_indices(suite, only, "--only")]
    families = tuple(s.family for s in select_spaces(families))
    specs = [random_spec(c["M"], c["K"], c["N"], c["density"], c["dtype"], c["pattern"], 0, trials, None, "tpe", families)
             for c in cases]  # no matrix is built here: each worker builds its case's when it claims it
    if retune is None:
        ids = queue.enqueue(specs)
        first = list(ids)  # each case's first run: what the report falls back on while a retune is not done
    else:
        ids, first = _retune_ids(suite, cases, specs, queue, retune, retune_trials, log)
    mine = [ids[j] for j in shard_of(cases, shard)]
    if retry_failed:
        log(f"suite {suite}: {queue.retry_failed(mine)} failed cases back in the queue")
    log(f"suite {suite}: {len(ids)} cases in the queue of {queue.label}"
        + (f"; shard {shard[0]}/{shard[1]}: {len(mine)} of them here" if shard else ""))
    t0 = time.time()
    run_workers(mine)
    rows = {r["id"]: r for r in queue.problems(sorted(set(ids) | set(first)))}
    by_gpu: dict[str, list[dict]] = {}
    for c, rid, rid0 in zip(cases, ids, first):
        row = rows[rid]
        if row["state"] == "failed":
            log(f"  case failed: {c}: {row['error']}")
        if row["state"] != "done" and rows[rid0]["state"] == "done":
            row = rows[rid0]  # a retune not done (or failed): the first run's result
        if row["state"] == "done":
            r = json.loads(row["result"])
            by_gpu.setdefault(r["gpu"], []).append(case_record(c, r))
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    for gpu, recs in by_gpu.items():
        stem = out_dir / f"suite-{suite}-{gpu_slug(gpu)}"
        stem.with_suffix(".json").write_text(json.dumps(recs, indent=1))
        write_report(recs, stem, suite, len(cases))
        records += recs
    log(f"suite {suite}: {len(records)}/{len(cases)} cases done in {time.time() - t0:.1f} s")
    return records


def _dtypes(records) -> list[str]:
    return [d for d in ("fp32", "tf32", "fp16", "bf16") if any(r["dtype"] == d for r in records)]


def _densities(records) -> list[float]:
    return sorted({r["density"] for r in records})


def summary(records: list[dict], suite: str = "dl") -> dict:
    out = {"cases": len(records),
           "geomean_vs_cusparse": geomean(_ratio(r, "cusparse_us") for r in records),
           "geomean_vs_best_dense": geomean(_ratio(r, "dense") for r in records)}
    for dt in _dtypes(records):
        for d in _densities(records):
            sel = [r for r in records if r["dtype"] == dt and abs(r["density"] - d) < 1e-9]
            if sel:
                out[f"{dt}@{d}"] = {
                    "cases": len(sel),
                    "vs_cusparse": geomean(_ratio(r, "cusparse_us") for r in sel),
                    "vs_cublas_fp32": geomean(_ratio(r, "cublas_fp32_us") for r in sel),
                    "vs_cublas_tf32": geomean(_ratio(r, "cublas_tf32_us") for r in sel),
                    "vs_best_dense": geomean(_ratio(r, "dense") for r in sel),
                    "vs_dense_cold": geomean(_cold_ratio(r) for r in sel)}
    big = sorted(r["tuned_us"] / r["floor_us"] for r in records if r["tuned_us"] >= 50 and r["floor_us"])
    out["median_tuned_over_floor_ge50us"] = big[len(big) // 2] if big else None
    at05 = [r for r in records if abs(r["density"] - 0.05) < 1e-9]
    out["vs_best_dense@0.05"] = geomean(_ratio(r, "dense") for r in at05)
    for dt, d in N512_GOALS:  # issue 18's targets (the compute-bound layers)
        sel = _n512(d, dt)
        out[_n512_key(dt, d)] = geomean(_ratio(r, f"cublas_{dt}_us") for r in records if sel(r))
    out["targets"] = targets(out, records) if suite != "llm" else llm_targets(records)
    return out


def _ratio(r: dict, key: str):
    """One case's speed-up over a baseline time field ("dense": the best dense path of its dtype); None without it."""
    v = r.get(key) if key != "dense" else best_dense(r)
    return v / r["tuned_us"] if v else None


def _n512(d: float, dtype: str):
    """A selector of issue 18's cases (the compute-bound layers): density d, N >= 512, one dtype."""
    return lambda r: r["dtype"] == dtype and abs(r["density"] - d) < 1e-9 and r["N"] >= 512


def _n512_key(dtype: str, d: float) -> str:
    """The summary's key of issue 18's target for (dtype, d): the geomean over cuBLAS of the same precision."""
    return f"{dtype}_vs_cublas_{dtype}@{d:g}_n512"


# issue 18's goals at N >= 512 over cuBLAS of the same precision, by (dtype, density)
N512_GOALS = {("tf32", 0.05): 1.2, ("fp16", 0.02): 1.5, ("fp16", 0.05): 1.2, ("fp16", 0.1): 0.9}


def _at(d: float, dtype: str | None = None):
    """A selector of the cases at density d (and of one dtype)."""
    return lambda r: abs(r["density"] - d) < 1e-9 and (dtype is None or r["dtype"] == dtype)


# The targets of the kernels issue, over the whole dl suite on the H100, and issue 18's at N >= 512 (tf32; fp16 by
# density): (name, summary value, ">=" or "<=", goal,
# the cases it is about, one case's own value): the last two count the cases that are at the goal on their own
TARGETS = (
    ("geomean speed-up over cuSPARSE", "geomean_vs_cusparse", ">=", 4.0,
     lambda r: True, lambda r: _ratio(r, "cusparse_us")),
    ("fp32 speed-up over cuBLAS FP32 at d = 0.1", ("fp32@0.1", "vs_cublas_fp32"), ">=", 4.0,
     _at(0.1, "fp32"), lambda r: _ratio(r, "cublas_fp32_us")),
    ("fp32 speed-up over cuBLAS FP32 at d = 0.05", ("fp32@0.05", "vs_cublas_fp32"), ">=", 6.0,
     _at(0.05, "fp32"), lambda r: _ratio(r, "cublas_fp32_us")),
    ("speed-up over the best dense path of the same dtype at d = 0.05", "vs_best_dense@0.05", ">=", 1.5,
     _at(0.05), lambda r: _ratio(r, "dense")),
    *((f"{dt} speed-up over cuBLAS {dt.upper()} at d = {d:g}, N >= 512", _n512_key(dt, d), ">=", goal, _n512(d, dt),
       functools.partial(_ratio, key=f"cublas_{dt}_us")) for (dt, d), goal in N512_GOALS.items()),
    ("median tuned / floor where tuned >= 50 us", "median_tuned_over_floor_ge50us", "<=", 2.0,
     lambda r: r["tuned_us"] >= 50, lambda r: r["tuned_us"] / r["floor_us"] if r.get("floor_us") else None),
)


def targets(s: dict, records: list[dict] | None = None) -> list[dict]:
    """Each target with its measured value, met or not, and the factor still missing (goal / value, or value / goal
    for an upper bound); value None where the records have no case for it. With the records: `cases_at_goal`, how
    many of the cases the target is about reach the goal on their own, and of how many (`cases`)."""
    out = []
    for name, key, op, goal, about, own in TARGETS:
        v = s.get(key) if isinstance(key, str) else (s.get(key[0]) or {}).get(key[1])
        met = None if v is None else (v >= goal if op == ">=" else v <= goal)
        short = None if v is None or met else (goal / v if op == ">=" else v / goal)
        row = {"target": name, "goal": f"{op} {goal:g}", "value": v, "met": met, "missing_factor": short}
        if records is not None:
            vals = [x for x in (own(r) for r in records if about(r)) if x is not None]
            row["cases"] = len(vals)
            row["cases_at_goal"] = sum(1 for x in vals if (x >= goal if op == ">=" else x <= goal))
        out.append(row)
    return out


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def _cold_ratio(r: dict):
    """cuBLAS of the same precision over the tuned kernel, both with A from HBM (device.cold); None without them."""
    return r["dense_cold_us"] / r["tuned_cold_us"] if r.get("dense_cold_us") and r.get("tuned_cold_us") else None


def _llm_ratio(r: dict):
    """The llm suite's speed-up: cold (A from HBM, as in a decoding model) where measured, else the warm one."""
    c = _cold_ratio(r)
    return c if c is not None else _ratio(r, "dense")


def _bytes_ratio(r: dict):
    t = r.get("tuned_cold_us") or r["tuned_us"]
    return t / r["bytes_floor_us"] if r.get("bytes_floor_us") else None


# The llm suite's targets (memory-bound layers): (name, the cases it is about, one case's value, how the values are
# combined, ">=" or "<=", goal). Speed-ups are over cuBLAS of the same dtype (FP16 for fp16, BF16 for bf16), both timed
# with A from HBM (cold, device.cold) where the record has it, and times over the byte floor are the cold ones: a
# decoding model reads every layer's weights from HBM, while the warm method keeps A in the L2 across replays.
LLM_TARGETS = (
    ("N <= 32, d = 0.5: geomean over cuBLAS of the same dtype", lambda r: r["N"] <= 32 and r["density"] == 0.5,
     _llm_ratio, geomean, ">=", 1.6),
    ("N <= 32, d = 0.1: geomean over cuBLAS of the same dtype", lambda r: r["N"] <= 32 and r["density"] == 0.1,
     _llm_ratio, geomean, ">=", 3.0),
    ("N <= 32, d = 0.05: geomean over cuBLAS of the same dtype", lambda r: r["N"] <= 32 and r["density"] == 0.05,
     _llm_ratio, geomean, ">=", 5.0),
    ("N = 64-128, d <= 0.3: geomean over cuBLAS of the same dtype",
     lambda r: 64 <= r["N"] <= 128 and r["density"] <= 0.3, _llm_ratio, geomean, ">=", 1.0),
    ("N = 64-128, d <= 0.3: the slowest case over cuBLAS of the same dtype",
     lambda r: 64 <= r["N"] <= 128 and r["density"] <= 0.3, _llm_ratio, min, ">=", 0.9),
    ("N <= 32, d <= 0.1: median tuned / bytes floor", lambda r: r["N"] <= 32 and r["density"] <= 0.1, _bytes_ratio,
     _median, "<=", 1.5),
)


def llm_targets(records: list[dict]) -> list[dict]:
    """The llm suite's targets from the records: value, met, missing factor, and the cases at the goal on their own."""
    out = []
    for name, about, own, how, op, goal in LLM_TARGETS:
        vals = [x for x in (own(r) for r in records if about(r)) if x is not None]
        v = how(vals) if vals else None
        met = None if v is None else (v >= goal if op == ">=" else v <= goal)
        short = None if v is None or met else (goal / v if op == ">=" else v / goal)
        out.append({"target": name, "goal": f"{op} {goal:g}", "value": v, "met": met, "missing_factor": short,
                    "cases": len(vals),
                    "cases_at_goal": sum(1 for x in vals if (x >= goal if op == ">=" else x <= goal))})
    return out


def shape_rows(records: list[dict]) -> list[dict]:
    """Per layer shape (M, K, N): cases, geomean speed-ups and how often each family won."""
    by: dict = {}
    for r in records:
        by.setdefault((r["M"], r["K"], r["N"]), []).append(r)
    rows = []
    for (m, k, n), sel in by.items():
        fams: dict = {}
        for r in sel:
            fams[r["family"]] = fams.get(r["family"], 0) + 1
        rows.append({"M": m, "K": k, "N": n, "cases": len(sel),
                     "vs_cusparse": geomean(r["cusparse_us"] / r["tuned_us"] for r in sel if r.get("cusparse_us")),
                     "vs_best_dense": geomean(best_dense(r) / r["tuned_us"] for r in sel if best_dense(r)),
                     "winners": dict(sorted(fams.items(), key=lambda kv: -kv[1]))})
    return rows


def write_report(records: list[dict], stem: Path, suite: str, total: int):
    if not records:
        return
    s = summary(records, suite)
    r0 = records[0]
    f = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [f"# Benchmark suite `{suite}` — {r0['gpu']}", "",
             f"Driver {r0['driver']}, CUDA {r0['cuda']}, CuPy {r0['cupy']}. {len(records)}/{total} cases. "
             "Times: median of CUDA-graph replays, B rotated past L2; speed-up = baseline time / tuned time. "
             "'Cold' times rotate A too (copies past twice the L2: A read from HBM, as in a decoding model); "
             + ("the targets below use them where measured." if suite == "llm" else "shown for reference."), "",
             f"Geomean speed-up over cuSPARSE: **{f(s['geomean_vs_cusparse'])}x**; over the best dense path of the "
             f"same dtype: **{f(s['geomean_vs_best_dense'])}x**. Median tuned/floor where tuned >= 50 us: "
             f"{f(s['median_tuned_over_floor_ge50us'])}.", "",
             "| dtype | density | cases | vs cuSPARSE | vs cuBLAS FP32 | vs best dense | vs dense, A from HBM |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for dt in _dtypes(records):
        for d in _densities(records):
            g = s.get(f"{dt}@{d}")
            if g:
                lines.append(f"| {dt} | {d} | {g['cases']} | {f(g['vs_cusparse'])} | {f(g['vs_cublas_fp32'])} | "
                             f"{f(g['vs_best_dense'])} | {f(g.get('vs_dense_cold'))} |")
    lines += ["", f"Targets ({'whole suite' if len(records) == total else f'{len(records)} of {total} cases'}):", "",
              "| target | goal | measured | met | missing factor | cases at the goal on their own |",
              "| --- | --- | ---: | --- | ---: | ---: |"]
    for t in s["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "no")
        lines.append(f"| {t['target']} | {t['goal']} | {f(t['value'])} | {met} | {f(t['missing_factor'])} | "
                     f"{t['cases_at_goal']} of {t['cases']} |")
    lines += ["", "By layer shape:", "", "| M | K | N | cases | vs cuSPARSE | vs best dense | winning families |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in shape_rows(records):
        wins = ", ".join(f"{fam} {c}" for fam, c in row["winners"].items())
        lines.append(f"| {row['M']} | {row['K']} | {row['N']} | {row['cases']} | {f(row['vs_cusparse'])} | "
                     f"{f(row['vs_best_dense'])} | {wins} |")
    lines += ["", "| M | K | N | density | dtype | pattern | family | tuned us | cuSPARSE | FP32 | TF32 | FP16 | BF16 | "
              "floor | bytes floor | A bytes/nnz | tuned cold | dense cold |",
              "| ---: | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        lines.append(f"| {r['M']} | {r['K']} | {r['N']} | {r['density']} | {r['dtype']} | {r['pattern']} | {r['family']} | "
                     f"{f(r['tuned_us'])} | {f(r['cusparse_us'])} | {f(r['cublas_fp32_us'])} | {f(r['cublas_tf32_us'])} | "
                     f"{f(r['cublas_fp16_us'])} | {f(r.get('cublas_bf16_us'))} | {f(r['floor_us'])} | "
                     f"{f(r.get('bytes_floor_us'))} | {f(r.get('a_bytes_per_nnz'))} | {f(r.get('tuned_cold_us'))} | "
                     f"{f(r.get('dense_cold_us'))} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib  # noqa: PLC0415
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return
    if not any(r.get("cusparse_us") for r in records):  # no baseline measured (synthetic runs): no plot to draw
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, key, title in ((axes[0], "cusparse_us", "speed-up over cuSPARSE"), (axes[1], "dense", "speed-up over best dense (same dtype)")):
        for dt, mk in (("fp32", "o"), ("tf32", "D"), ("fp16", "s"), ("bf16", "^")):
            sel = [r for r in records if r["dtype"] == dt]
            xs = [r["density"] for r in sel]
            ys = [((r[key] if key != "dense" else best_dense(r)) or float("nan")) / r["tuned_us"] for r in sel]
            ax.scatter(xs, ys, marker=mk, label=dt, alpha=0.7)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("density")
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"{suite} suite on {r0['gpu']}")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
