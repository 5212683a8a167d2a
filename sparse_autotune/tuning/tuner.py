"""One tuning run: problem -> spaces -> Optuna search (render, compile, verify, time) -> finalists timed cold ->
baselines -> DB.

The search ranks candidates warm (CUDA-graph replay: A stays in the L2 across launches); a decoding model reads every
layer's A from HBM ("cold", device.cold), and the warm best can be slower there than another family (H200, 4096 x 4096,
N = 16: tc_gather 10.2 us warm / 14.4 cold, tc_bitmap 10.6 / 11.0). So with TuneOptions.rank "cold" (the default)
GpuTuner.finish takes the search's FINALISTS best distinct configs within FINALIST_WITHIN of the best warm time
(finalists_of), times each cold and makes the fastest cold one the winner (choose_cold; the warm best where none could
be timed); its record keeps both times (time_us warm, cold_us cold: store.db.rank_us ranks it by the cold one). rank
"warm" is the earlier choice: the warm best, no finalists, no cold_us stored.

GpuTuner tunes on this process's GPU. $SPARSE_AUTOTUNE_TUNER=module:Class names another Tuner subclass for the
workers (tuner_class), e.g. the tests' synthetic tuner, so the scale-out machinery runs without a GPU."""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from .. import __version__
from ..errors import CandidateError, DeviceLostError, UserError
from ..core.problem import Problem
from ..tuning.options import FINALIST_WITHIN, FINALISTS, check_rank
from ..tuning.search import Search, SearchOptions, check_options, load_study, summarize
from ..core.space import problem_env, select_spaces
from ..store.db import Record, TuningDB


COMPILE_THREADS_ENV = "SPARSE_AUTOTUNE_COMPILE_THREADS"
# A candidate whose rough time (launch overhead included) is above GIVE_UP_FACTOR x the best so far, and above
# GIVE_UP_MIN_US, keeps that rough time instead of the full graph-replay timing: it cannot win, and on large problems
# the full timing of slow candidates was most of the GPU's time (bench/NOTES.md, session 5). The winner and the
# baselines are always timed in full.
GIVE_UP_FACTOR = 3.0
GIVE_UP_MIN_US = 50.0


def default_compile_threads() -> int:
    """Candidates compiled in parallel by one tuner: $SPARSE_AUTOTUNE_COMPILE_THREADS, else min(8, CPUs). Local workers
    get their share of the CPUs (spawn_workers sets the variable), so K workers do not run 8 K compiler threads
    while the one holding the GPU's turn needs a CPU to launch and time."""
    try:
        n = int(os.environ.get(COMPILE_THREADS_ENV, ""))
    except ValueError:
        n = 0
    return n if n > 0 else min(8, os.cpu_count() or 1)


@dataclass
class TuneOptions:
    trials: int = 100
    timeout: float | None = None
    sampler: str = "tpe"
    seed: int = 0
    db: str | None = None
    progress: bool = True
    families: tuple[str, ...] | None = None
    compile_workers: int = field(default_factory=default_compile_threads)  # compiled in parallel while others are timed
    warm_start: bool = True  # try the winners of the nearest tuned problems (this GPU, this dtype) first
    vendors: tuple[str, ...] | None = None  # the vendor paths timed as candidates (core.vendor); None: all of them
    allow_tf32: bool = False  # an fp32 problem may be served by cuBLAS's TF32 tensor cores (the user's opt-in)
    rank: str = "cold"  # the winner: the fastest finalist with A from HBM ("cold"), or the search's warm best ("warm")


@dataclass
class Finalist:
    """A config finish() times cold (rank "cold"): its warm time from the search; cold_us and the copies of A rotated
    (device.cold) where timed, else the error; `kernel`: what the tuner built to time it (reused for the winner)."""
    family: str
    config: dict
    warm_us: float
    cold_us: float | None = None
    cold_copies: int | None = None
    error: str | None = None
    kernel: object = field(default=None, repr=False)

    def as_dict(self) -> dict:
        d = {"family": self.family, "config": self.config, "warm_us": self.warm_us, "cold_us": self.cold_us}
        return {**d, "cold_error": self.error} if self.error else d


def finalists_of(res, limit: int = FINALISTS, within: float = FINALIST_WITHIN) -> list[Finalist]:
    """The search's warm best (res.best_*) and then its next distinct configs (res.ranked, fastest warm first, any
    family) whose warm time is within `within` x the best's, `limit` in all; [] where the search found nothing."""
    if res.best_config is None:
        return []
    out = [Finalist(res.best_family, res.best_config, res.best_value)]
    for fam, cfg, value in res.ranked or []:
        if len(out) >= limit or value > res.best_value * within:
            break
        if (fam, cfg) != (res.best_family, res.best_config):
            out.append(Finalist(fam, cfg, value))
    return out


def choose_cold(finals: list[Finalist], time_cold, log) -> Finalist:
    """Time each finalist cold (time_cold(f) -> (us, copies); an exception keeps its one-line error and leaves it out;
    DeviceLostError passes on) and return the fastest cold one (a tie: the faster warm one), or the first (the warm
    best) where none could be timed. Logs one line: each finalist's cold time and the winner."""
    for f in finals:
        try:
            f.cold_us, f.cold_copies = time_cold(f)
        except DeviceLostError:
            raise
        except Exception as exc:  # noqa: BLE001
            f.error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc) else type(exc).__name__
    timed = [f for f in finals if f.cold_us is not None]
    winner = min(timed, key=lambda f: f.cold_us) if timed else finals[0]
    log("finalists timed cold: " + ", ".join(f"{f.family} {f.cold_us:.2f} us" if f.cold_us is not None else
                                               f"{f.family} failed ({f.error})" for f in finals)
        + f" -> {winner.family}" + ("" if timed else " (the warm best: no cold timing)"))
    return winner


def study_name(problem: Problem, gpu_name: str) -> str:
    return f"{problem.key()}|{gpu_name}|{problem.fingerprint()}"


def _index_bytes(cfg: dict | None) -> int:
    return 2 if cfg and cfg.get("index_bits") == 16 else 4


class Tuner:
    """Tuning of one problem, in two steps: search() (several workers may run it on one study) and finish() (once:
    the record stored in the tuning DB). tune() runs both; a scale-out worker (worker.py) runs search() on a
    shared study and finish() only where it won the problem's finalisation.

    Subclasses call _start (problem, opts, log, db, spaces, env), set limits and gpu_name, and define evaluate(),
    finish(), device_name() and devices(); prepare(family, config) may build a candidate ahead of its evaluation
    (in parallel threads): evaluate(family, config, prepared) then gets what it returned.
    """

    prepare = None
    interrupted = False  # set by search() when a Ctrl-C ended it

    @classmethod
    def device_name(cls) -> str:
        """The GPU model this tuner tunes for in this process (the queue's problems are claimed for it)."""
        raise NotImplementedError

    @classmethod
    def devices(cls, k: int) -> list[str]:
        """The CUDA_VISIBLE_DEVICES values that k local workers can be given (the visible GPUs)."""
        raise NotImplementedError

    def _start(self, problem: Problem, opts: TuneOptions, log) -> None:
        """Checks the options, then opens (or creates) the tuning DB; shared by the tuners' constructors."""
        check_options(opts.trials, opts.sampler, opts.timeout)
        check_rank(opts.rank)
        from ..core.vendor import VENDOR_FAMILIES, split_families  # noqa: PLC0415
        families, named_vendors = split_families(opts.families)  # vendor names among the families: those paths
        self.vendors = tuple(opts.vendors) if opts.vendors is not None else (named_vendors or VENDOR_FAMILIES)
        chosen = select_spaces(families)
        # e.g. tc_gather computes fp16 only; an nk problem's spaces have the nk_path parameter (core.space.for_layout)
        self.spaces = [s.for_layout(problem.layout) for s in chosen if s.supports(problem.dtype)]
        if not self.spaces:
            raise UserError(f"no kernel family of {', '.join(s.family for s in chosen)} computes {problem.dtype}")
        self.problem, self.opts, self.log = problem, opts, log
        self.db = TuningDB(opts.db, create=True)
        self.t_start = time.time()
        self.env = problem_env(problem.m, problem.k, problem.n, problem.nnz, problem.dtype, problem.layout)

    def _check_found(self, res) -> None:
        """finish() of a search that found nothing: Ctrl-C passes on, else a one-line error."""
        if res.best_config is None:
            if self.interrupted:
                raise KeyboardInterrupt  # nothing to store: the caller stops (tune-model keeps what it had)
            raise UserError(f"no variant passed verification in {res.complete + res.failed} trials "
                            f"({res.failed} failed): nothing stored")

    def on_trial(self, frozen) -> None:  # a hook for subclasses
        pass

    def time_cold(self, finalist: Finalist) -> tuple[float, int]:
        """(median us, copies of A) of a finalist timed with A from HBM; a tuner whose finish() ranks cold defines it
        (it may keep what it built in finalist.kernel)."""
        raise NotImplementedError

    def choose_finalist(self, res):
        """(res, finalists, winner): with opts.rank "cold", the finalists (finalists_of) timed cold (choose_cold) and
        res with the fastest cold one as its best (best_value: its warm time from the search); with rank "warm", res
        as it is, [] and None."""
        if self.opts.rank != "cold" or res.best_config is None:  # checked by _start
            return res, [], None
        finals = finalists_of(res)
        winner = choose_cold(finals, self.time_cold, self.log)
        if winner is not finals[0]:
            res = replace(res, best_family=winner.family, best_config=winner.config, best_value=winner.warm_us)
        return res, finals, winner

    def study_name(self) -> str:
        return study_name(self.problem, self.gpu_name)

    def seeds(self) -> list[tuple[str, dict]]:
        """The warm start: configs of the nearest problems tuned on this GPU model for this dtype (tuning DB first,
        then the shipped databases); none with warm_start off."""
        if not self.opts.warm_start:
            return []
        from ..store.lookup import seed_configs  # noqa: PLC0415
        p = self.problem
        seeds = seed_configs(self.db, p.m, p.k, p.n, p.density, p.dtype, self.gpu_name, p.pattern,
                             families={s.family for s in self.spaces}, layout=p.layout)
        if seeds:
            self.log(f"warm start: {len(seeds)} config(s) of the nearest tuned problems are tried first")
        return seeds

    def search(self, storage=None, worker: str | None = None, shared: bool = False, stop=None):
        """The Optuna search (storage: the tuning DB's URL unless given); returns search.SearchResult."""
        opts = self.opts
        bar = None
        if opts.progress:
            from tqdm import tqdm  # noqa: PLC0415
            bar = tqdm(total=opts.trials, desc="tuning", unit="trial", file=sys.stderr, dynamic_ncols=True)

        def on_trial(frozen, counted, best):
            self.best_us = best
            self.on_trial(frozen)
            if bar is None:
                return
            bar.n = min(counted, opts.trials)
            state = "ok" if frozen.value is not None else "failed"
            bar.set_postfix_str(f"best {best:.2f} us" if best is not None else state)
            bar.refresh()

        storage = storage if storage is not None else self.db.url
        self.storage = storage  # finish() adds the vendor paths' trials to this study (tuning.vendor)
        name = self.study_name()
        self.interrupted = False
        sopts = SearchOptions(trials=opts.trials, timeout=opts.timeout, sampler=opts.sampler, seed=opts.seed,
                              batch=max(1, opts.compile_workers) if self.prepare else 1, worker=worker,
                              shared=shared, seeds=self.seeds())
        try:
            search = Search(storage, name, self.spaces, self.problem.dtype, self.env, self.limits, sopts)
            return search.run(self.evaluate, prepare=self.prepare, on_trial=on_trial, stop=stop)
        except KeyboardInterrupt:
            self.interrupted = True
            self.log("interrupted: keeping what was tuned so far")
            return summarize(load_study(storage, name), stopped="interrupted")
        finally:
            if bar is not None:
                bar.close()


class GpuTurnMixin:
    """A GPU tuner's turn on its GPU (self.turn: device.turn) by phase (self.turn_s), and one candidate verified and
    timed in it: what the SpMM tuner (GpuTuner) and the SDDMM tuner (sddmm_tune.GpuSddmmTuner) share."""

    @contextmanager
    def _phase(self, name: str):
        """Hold the GPU's turn, adding the time held to this problem's phase `name`."""
        held0 = self.turn.held_s
        try:
            with self.turn():
                yield
        finally:
            self.turn_s[name] += self.turn.held_s - held0

    def verify_and_time(self, fresh, out, launches, dtype: str, flops: int):
        """In the "trials" phase: fresh() -> (run, reference) with fresh inputs, run() verified into `out` against the
        reference (device.verify.check: poisoned first, the dtype's tolerance), then `launches` timed
        (device.timing.time_launches, given up above give_up_threshold of the best so far). (median us, attrs); a
        CandidateError where it fails (a failed launch that poisoned the context stops the run: DeviceLostError)."""
        from ..device.timing import time_launches  # noqa: PLC0415
        from ..device.verify import check  # noqa: PLC0415
        with self._phase("trials"):
            t0 = time.perf_counter()
            try:
                run, ref = fresh()
                err = check(run, out, ref, dtype)
            except CandidateError as exc:
                if exc.stage == "launch":
                    _assert_context_alive()
                raise
            finally:
                t1 = time.perf_counter()
                self.turn_s["verify"] += t1 - t0
            try:
                t = time_launches(launches, give_up_above_us=give_up_threshold(self.best_us))
            except Exception as exc:  # noqa: BLE001
                _assert_context_alive()
                raise CandidateError("time", str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
            finally:
                self.turn_s["time"] += time.perf_counter() - t1
        if t.method == "estimate":
            self.given_up += 1
        return t.median_us, {"rel_err": err, "spread": t.spread, "timing": t.method,
                             "gflops": flops / (t.median_us * 1e-6) / 1e9}


class GpuTuner(GpuTurnMixin, Tuner):
    """Tuning on this process's GPU: candidates compiled, verified and timed; finish() times the winner and the
    baselines again the same way and stores the record."""

    def __init__(self, problem: Problem, opts: TuneOptions, log=lambda msg: print(msg, file=sys.stderr)):
        from ..device.gpu import gpu_info  # noqa: PLC0415
        self.info = info = gpu_info()
        self._start(problem, opts, log)  # nothing is written to the database before tuning starts
        from ..device.context import GpuProblem  # noqa: PLC0415
        self.limits = info.limits()
        self.gpu_name = info.name
        log(f"problem {problem.key()}: nnz={problem.nnz}, {problem.flops / 1e6:.1f} MFLOP; GPU {info.name} "
            f"(sm_{info.cc.replace('.', '')}); database {self.db.label}")
        from ..device.turn import current_gpu_key, turn_for  # noqa: PLC0415
        self.turn = turn_for(current_gpu_key())  # kernels run in this GPU's turn (other processes may share it)
        self.best_us = None  # the study's best time so far (search's on_trial), for giving up on slow candidates
        # this problem's GPU turn by phase; "verify" and "time" are the parts of "trials" spent verifying and timing
        self.turn_s = {"init": 0.0, "trials": 0.0, "verify": 0.0, "time": 0.0, "finish": 0.0}
        self.given_up = 0  # candidates not timed in full (give_up_above_us)
        with self._phase("init"):
            self.ctx = GpuProblem(problem, info, seed=opts.seed)

    @classmethod
    def device_name(cls) -> str:
        from ..device.gpu import gpu_info  # noqa: PLC0415
        return gpu_info().name

    @classmethod
    def devices(cls, k: int) -> list[str]:
        from ..device.gpu import cupy, gpu_info  # noqa: PLC0415
        gpu_info()  # no GPU: one line, exit 2
        count = cupy().cuda.runtime.getDeviceCount()
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        return [d.strip() for d in env.split(",") if d.strip()][:count] if env else [str(i) for i in range(count)]

    def prepare(self, family: str, cfg: dict):
        """The candidate's kernel, compiled (outside the GPU's turn, in the search's threads); evaluate times it. An nk
        problem's candidate is a native nk kernel or the staged path, by its nk_path (device.staged.build_for)."""
        from ..device.staged import build_for  # noqa: PLC0415
        return build_for(self.ctx.a_dev, family, cfg, self.problem.dtype, self.problem.layout)

    def evaluate(self, family: str, cfg: dict, kern=None):
        """Verify and time one candidate: its kernel from prepare (built here without one)."""
        ctx, problem = self.ctx, self.problem
        if kern is None:
            kern = self.prepare(family, cfg)

        def fresh():
            b, ref = ctx.fresh_check()
            return (lambda: ctx.launch(kern, b)), ref  # nk: with the bias
        return self.verify_and_time(fresh, ctx.c, [lambda bb=bb: ctx.launch(kern, bb) for bb in ctx.b_bufs],
                                    problem.dtype, problem.flops)

    def time_cold(self, finalist: Finalist) -> tuple[float, int]:
        """The finalist built (prepare, outside the GPU's turn) and timed with A rotated among copies (device.cold) in
        the "finish" phase; the kernel kept in finalist.kernel."""
        from ..device.cold import time_kernel_cold  # noqa: PLC0415
        from ..device.gpu import cupy  # noqa: PLC0415
        kern = self.prepare(finalist.family, finalist.config)
        try:
            with self._phase("finish"):
                t, copies = time_kernel_cold(kern, self.ctx)
        except Exception:
            _assert_context_alive()
            raise
        finally:
            cupy().get_default_memory_pool().free_all_blocks()  # the copies of A
        finalist.kernel = kern
        return t.median_us, copies

    def finish(self, res) -> dict:
        """The winner (rank "cold": the fastest of the finalists with A from HBM, choose_finalist) and the baselines,
        verified and timed again the same way in this process; the record stored."""
        self._check_found(res)
        t_fin = time.perf_counter()
        res, finals, winner = self.choose_finalist(res)
        self.turn_s["finish_finalists"] = time.perf_counter() - t_fin  # building and timing them cold
        from ..device.baselines import time_baselines  # noqa: PLC0415
        from ..device.cold import cold_times  # noqa: PLC0415
        from ..device.ceilings import bytes_floor, ceilings, floor_us  # noqa: PLC0415
        from ..device.timing import time_launches  # noqa: PLC0415
        from ..device.verify import check  # noqa: PLC0415
        problem, ctx, info, opts, db = self.problem, self.ctx, self.info, self.opts, self.db
        name = self.study_name()
        kern = winner.kernel if winner is not None and winner.kernel is not None else \
            self.prepare(res.best_family, res.best_config)
        for f in finals:
            f.kernel = None  # the others' kernels are not needed any more
        measured = (winner.cold_us, winner.cold_copies) if winner is not None and winner.cold_us is not None else None
        with self._phase("finish"):
            b, ref = ctx.fresh_check()
            err = check(lambda: ctx.launch(kern, b), ctx.c, ref, problem.dtype)
            t = time_launches([lambda bb=bb: ctx.launch(kern, bb) for bb in ctx.b_bufs])
            t0 = time.perf_counter()
            base = time_baselines(ctx, self.log)
            t1 = time.perf_counter()
            # the winner (where not timed so as a finalist) and cuBLAS, A from HBM (device.cold)
            cold = cold_times(kern, ctx, self.log, tuned=measured)
            t2 = time.perf_counter()
            ceil = ceilings()
        # where a problem's finish goes (the llm suite's large layers spent 30-57 s there: session 11)
        self.turn_s["finish_baselines"] = t1 - t0
        self.turn_s["finish_cold"] = t2 - t1
        floor = floor_us(problem, ceil, _index_bytes(res.best_config))
        dense_us = base.get(f"cublas_{problem.dtype}_us")
        bfloor = bytes_floor(problem, kern.a_bytes(), ceil, dense_us)
        gflops = problem.flops / (t.median_us * 1e-6) / 1e9
        v = info.versions()
        rec = Record(
            gpu_name=info.name, gpu_cc=info.cc, m=problem.m, k=problem.k, n=problem.n, density=problem.density,
            dtype=problem.dtype, pattern=problem.pattern, layout=problem.layout, family=res.best_family,
            config_json=json.dumps(res.best_config, sort_keys=True), time_us=t.median_us, gflops=gflops,
            cusparse_us=base["cusparse_us"], cublas_fp32_us=base["cublas_fp32_us"],
            cublas_tf32_us=base["cublas_tf32_us"], cublas_fp16_us=base["cublas_fp16_us"],
            cublas_bf16_us=base.get("cublas_bf16_us"), floor_us=floor,
            max_rel_err=err, trials=res.complete + res.failed, matrix_hash=problem.fingerprint(), study_name=name,
            cold_us=cold["tuned_cold_us"] if opts.rank == "cold" else None,  # rank warm: ranked warm, as before
            package_version=__version__, cuda_version=v["cuda"], driver_version=v["driver"], cupy_version=v["cupy"],
            created_at=_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None))
        db.store(rec)
        from ..tuning.vendor import finish_vendors  # noqa: PLC0415 - the vendor paths as candidates (their record)
        vendors = finish_vendors(db, getattr(self, "storage", db.url), name, rec, base.get("vendor"),
                                 getattr(self, "vendors", None), opts.allow_tf32, self.log,
                                 cold if opts.rank == "cold" else None)
        db.dispose()

        def ratio(x):
            return None if x is None else x / t.median_us

        return {
            "problem": problem_dict(problem),
            "gpu": v["gpu"], "cc": v["cc"], "driver": v["driver"], "cuda": v["cuda"], "cupy": v["cupy"],
            "package_version": __version__,
            "best": {"family": res.best_family, "config": res.best_config, "time_us": t.median_us,
                     "gflops": gflops, "max_rel_err": err, "timing_spread": t.spread, "timing": t.method,
                     "search_time_us": res.best_value, "cold_us": rec.cold_us},
            "rank": opts.rank,  # how the winner was chosen: "cold" (the finalists' cold times) or "warm"
            "finalists": [f.as_dict() for f in finals],  # rank cold: the configs timed cold, the warm best first
            "baselines": {k: base.get(k) for k in ("cusparse_us", "cusparse_alg", "cublas_fp32_us", "cublas_tf32_us",
                                                  "cublas_fp16_us", "cublas_bf16_us")},
            "baseline_errors": base["baseline_errors"], "baseline_timing": base.get("timing", {}),
            "speedup": {"vs_cusparse": ratio(base["cusparse_us"]), "vs_cublas_fp32": ratio(base["cublas_fp32_us"]),
                        "vs_cublas_tf32": ratio(base["cublas_tf32_us"]),
                        "vs_cublas_fp16": ratio(base["cublas_fp16_us"]),
                        "vs_cublas_bf16": ratio(base.get("cublas_bf16_us"))},
            "cold": cold,
            **vendors,  # chosen: what the runtime runs (the best sparse kernel or a vendor path); vendor_candidates
            "floor_us": floor, **bfloor, "ceilings": ceil,
            "trials": trials_dict(res, opts, self.interrupted),
            "study": name, "db": db.label, "record_id": rec.id, "record_is_best": rec.is_best,
            "elapsed_s": time.time() - self.t_start,
            "gpu_turn_s": {**{k: round(v, 3) for k, v in self.turn_s.items()}, "given_up": self.given_up},
        }


def give_up_threshold(best_us: float | None) -> float | None:
    """A candidate whose rough time is above this is not timed in full (timing.time_launches): GIVE_UP_FACTOR times the
    best so far, never below GIVE_UP_MIN_US (launch overhead can inflate the rough time of a small kernel); None
    before any candidate was timed."""
    if not best_us or GIVE_UP_FACTOR <= 0:
        return None
    return max(GIVE_UP_FACTOR * best_us, GIVE_UP_MIN_US)


def problem_dict(problem: Problem) -> dict:
    return {"m": problem.m, "k": problem.k, "n": problem.n, "density": problem.density, "nnz": problem.nnz,
            "dtype": problem.dtype, "pattern": problem.pattern, "layout": problem.layout,
            "matrix_hash": problem.fingerprint(), "seed": problem.seed}


def trials_dict(res, opts: TuneOptions, interrupted: bool = False) -> dict:
    return {"budget": opts.trials, "complete": res.complete, "failed": res.failed, "pruned": res.pruned,
            "new": res.new_trials, "stopped": "interrupted" if interrupted else res.stopped, "sampler": opts.sampler}


def tune(problem: Problem, opts: TuneOptions, log=lambda msg: print(msg, file=sys.stderr)) -> dict:
    """Tune one problem on the current GPU, store the best verified config, return the report dict."""
    tuner = GpuTuner(problem, opts, log)
    return tuner.finish(tuner.search())


def _assert_context_alive():
    """After a failed launch: if the CUDA context is poisoned (illegal address...), stop the whole run."""
    from ..device.gpu import cupy  # noqa: PLC0415
    cp = cupy()
    try:
        cp.cuda.runtime.deviceSynchronize()
    except Exception as exc:  # noqa: BLE001
        raise DeviceLostError(f"a kernel corrupted the CUDA context ({str(exc).splitlines()[0]}); "
                        "the run stops, the trials so far are kept in the study") from None


TUNER_ENV = "SPARSE_AUTOTUNE_TUNER"


def tuner_class() -> type[Tuner]:
    """The tuner a worker process (and make_tuner) uses: GpuTuner, or the Tuner subclass that $SPARSE_AUTOTUNE_TUNER
    names as `module:Class` (importable where the workers run), e.g. the tests' synthetic tuner, which needs no GPU."""
    spec = os.environ.get(TUNER_ENV, "").strip()
    if not spec:
        return GpuTuner
    module, _, name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"${TUNER_ENV}={spec!r}: cannot import it ({why}); expected module:Class") from None
    if not (isinstance(cls, type) and issubclass(cls, Tuner)):
        raise UserError(f"${TUNER_ENV}={spec!r} is not a Tuner subclass")
    return cls


def make_tuner(problem: Problem, opts: TuneOptions, log=lambda msg: print(msg, file=sys.stderr)) -> Tuner:
    """The tuner of tuner_class() for one problem."""
    return tuner_class()(problem, opts, log)
