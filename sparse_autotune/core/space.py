"""Declarative variant spaces (search_spaces/*.toml): parameters, conditions, constraints, known-good configs."""
from __future__ import annotations

import ast
import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..errors import UserError

# Used where no GPU is present (CPU tests, `spaces`): static shared memory per block, the opt-in dynamic
# maximum of an H100 (227 KB), threads per block.
# sm: the compute capability as an integer (90: Hopper), for constraints such as sm == 90. gate: 1 where a family's
# constraint that says only where it is worth searching (not where it runs: tc_bitmap's N 8-32, density >= 0.15)
# holds; the kernel's own correctness tests pass 0 (in the limits) to run it at any N and density.
DEFAULT_LIMITS = {"max_smem_bytes": 48 * 1024, "max_dyn_smem_bytes": 227 * 1024, "max_threads": 1024,
                  "sm": 90, "gate": 1}


def _next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, int(x)))))


_SAFE_FUNCS = {"max": max, "min": min, "next_pow2": _next_pow2, "abs": abs}
LAYOUTS = ("kn", "nk")  # core.problem.LAYOUTS (this module imports nothing of the problem's)
# How a kernel family serves a problem of the nk layout (y = x @ A^T + bias, x N x K, y N x M): the config parameter
# that Space.for_layout adds for nk problems (never written into a family's .toml), and its values: "native" (the
# family's template rendered for nk: one kernel; only families declaring `layouts = ["kn", "nk"]`) or "staged" (x
# transposed into a K x N workspace, the family's kn kernel into an M x N workspace, one kernel writing y = C^T + bias:
# device.staged, for every family).
NK_PATH = "nk_path"
NK_PATHS = ("native", "staged")


def split_path(config: dict) -> tuple[dict, str | None]:
    """(the kernel's own config, without nk_path; the nk path, None where the config has none)."""
    if NK_PATH not in config:
        return config, None
    rest = {k: v for k, v in config.items() if k != NK_PATH}
    return rest, config[NK_PATH]


FIRST_WHEN = "first_when"  # a known-good config's key: tried before the others where this holds (Space.defaults)


@lru_cache(maxsize=None)
def _code(expr: str):
    return compile(expr, "<space>", "eval")


_ABSENT = object()  # Space.size: a parameter left out of the config so far (inactive)
_GLOBALS = {"__builtins__": {}, **_SAFE_FUNCS}  # what an expression sees beside its env (its names win over these)


@lru_cache(maxsize=None)
def _names(expr: str) -> frozenset:
    """The names an expression reads."""
    return frozenset(n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name))


def _eval(expr: str, env: dict) -> Any:
    return eval(_code(expr), _GLOBALS, env)  # noqa: S307 - env as the locals: no dict built a call


@dataclass
class Param:
    name: str
    values: Any  # list, or {dtype: list}
    when: str | None = None
    default: Any = None  # a parameter added to a family later: its value in configs stored before it existed

    def choices(self, dtype: str) -> list:
        if isinstance(self.values, dict):
            return list(self.values.get(dtype, []))
        return list(self.values)


@dataclass
class Constraint:
    expr: str
    why: str


@dataclass
class Space:
    family: str
    template: str
    description: str
    params: list[Param]
    constraints: list[Constraint]
    known_good: list[dict] = field(default_factory=list)
    enabled: bool = True  # tuned by default; a disabled family is tuned only when asked for by name
    rank: int = 100  # the runtime's default kernel comes from the enabled family of lowest rank
    needs_matrix: bool = False  # the template is rendered for one sparsity pattern (its host side's context)
    dtypes: tuple[str, ...] = ("fp32", "fp16")  # the dtypes the family computes
    layouts: tuple[str, ...] = ("kn",)  # the operand layouts its template is written for (rendered with `layout`)
    # lookup's estimate of a kn record's time when it serves nk natively (nk kernel time / kn kernel time); a kn
    # record's time says nothing of the nk kernel, so families that do not state it are assumed 2x (store.lookup)
    nk_cost: float = 2.0
    # the NVRTC target the template needs beyond the device's own (e.g. "sm_90a" for wgmma; "" = the device's); a
    # family that sets it also refuses other GPUs with a constraint on `sm` (DEFAULT_LIMITS, GpuInfo.limits)
    arch: str = ""

    # ---- structure ------------------------------------------------------------------------------
    def active(self, name: str, partial: dict, dtype: str | None = None) -> bool:
        """The parameter's `when` holds for the config so far; a `when` may also name the problem's `dtype` (the dtype
        the family's kernel computes: kernel_dtype). Without a dtype such a parameter is active where the config has it."""
        p = self.param(name)
        if p.when is None:
            return True
        try:
            return bool(_eval(p.when, self._when_env(partial, dtype)))
        except NameError:
            if dtype is None:
                return name in partial
            raise

    def kernel_dtype(self, dtype: str) -> str:
        """The dtype the family's kernel computes a problem of `dtype` in: tf32 (fp32 storage, TF32 tensor-core math)
        runs as tf32 in a family that declares it, else exactly, as fp32, in a family that computes fp32 (an exact
        result is a valid TF32 answer); every other dtype as itself."""
        if dtype == "tf32" and "tf32" not in self.dtypes and "fp32" in self.dtypes:
            return "fp32"
        return dtype

    def _when_env(self, partial: dict, dtype: str | None) -> dict:
        return partial if dtype is None else {**partial, "dtype": self.kernel_dtype(dtype)}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def normalize(self, config: dict, dtype: str) -> dict | None:
        """Keep only the active parameters, in declaration order; None if a value is not in the space."""
        out = {}
        dtype = self.kernel_dtype(dtype)
        for p in self.params:
            if not self.active(p.name, out, dtype):
                continue
            value = config.get(p.name, p.default)
            if value is None or value not in p.choices(dtype):
                return None
            out[p.name] = value
        return out

    def for_layout(self, layout: str) -> "Space":
        """The space a problem of `layout` searches: this one for kn; for nk, with one more (last) parameter, nk_path:
        "native" and "staged" where the family declares nk, else "staged" alone (NK_PATH). Its default, which a config
        stored without it gets (a known-good config, a kn record's config), is the first: native where declared."""
        if layout == "kn" or any(p.name == NK_PATH for p in self.params):
            return self
        paths = list(NK_PATHS) if self.supports_layout("nk") else ["staged"]
        return dataclasses.replace(self, params=[*self.params, Param(NK_PATH, paths, None, paths[0])])

    def default_path(self) -> str:
        """The nk path a config without one runs: native where the family declares nk, else staged."""
        return "native" if self.supports_layout("nk") else "staged"

    # ---- feasibility ----------------------------------------------------------------------------
    def _stored_defaults(self, config: dict, dtype: str | None) -> dict:
        """The defaults of the active parameters a config leaves out (one stored before they existed runs with them:
        normalize), so that a constraint naming such a parameter is checked at the value the kernel gets."""
        out: dict = {}
        for p in self.params:
            if p.name in config or p.default is None:
                continue
            try:
                if self.active(p.name, {**config, **out}, dtype):
                    out[p.name] = p.default
            except NameError:  # its `when` names a parameter that is inactive here
                continue
        return out

    def supports(self, dtype: str) -> bool:
        return self.kernel_dtype(dtype) in self.dtypes

    def supports_layout(self, layout: str) -> bool:
        """The template is written for this operand layout (every family: kn; nk where `layouts` declares it)."""
        return layout in self.layouts

    def check(self, config: dict, problem_env: dict, limits: dict | None = None) -> str | None:
        """Return None if feasible, else the reason (the family's dtypes, then the first constraint that fails)."""
        if "dtype" in problem_env and not self.supports(problem_env["dtype"]):
            return f"{self.family} computes only {', '.join(self.dtypes)}"
        env = {**DEFAULT_LIMITS, **(limits or {}), **problem_env,
               **self._stored_defaults(config, problem_env.get("dtype")), **config}
        if "dtype" in problem_env:
            env["dtype"] = self.kernel_dtype(problem_env["dtype"])
        for c in self.constraints:
            try:
                ok = bool(_eval(c.expr, env))
            except NameError:  # a conditional parameter the constraint refers to is inactive
                ok = True
            if not ok:
                return f"{c.why} ({c.expr})"
        return None

    def _problem_names(self, problem_env: dict, limits: dict | None) -> dict:
        """What a constraint sees of the problem: the limits, the problem's names, dtype as the kernel computes it."""
        env = {**DEFAULT_LIMITS, **(limits or {}), **problem_env}
        if "dtype" in problem_env:
            env["dtype"] = self.kernel_dtype(problem_env["dtype"])
        return env

    def refusal(self, problem_env: dict, limits: dict | None = None) -> str | None:
        """The reason of the first constraint that names no parameter and fails for this problem (then no config of the
        space can run it: `feasible` yields none without walking the space), else None."""
        if "dtype" in problem_env and not self.supports(problem_env["dtype"]):
            return f"{self.family} computes only {', '.join(self.dtypes)}"
        env = self._problem_names(problem_env, limits)
        params = {p.name for p in self.params}
        for c in self.constraints:
            if _names(c.expr) & params:
                continue
            try:
                ok = bool(_eval(c.expr, env))
            except NameError:  # as check: a name the problem does not give
                continue
            if not ok:
                return f"{c.why} ({c.expr})"
        return None

    def impossible_values(self, dtype: str, problem_env: dict, limits: dict | None = None) -> set[tuple[str, Any]]:
        """(parameter, value) pairs that no feasible config of this problem has: a constraint naming that parameter
        alone (besides the problem's names and the limits) fails at that value, so every config holding it fails."""
        env = self._problem_names(problem_env, limits)
        by_name = {p.name: p for p in self.params}
        out: set[tuple[str, Any]] = set()
        for c in self.constraints:
            named = _names(c.expr) & by_name.keys()
            if len(named) != 1:
                continue
            (name,) = named
            for v in by_name[name].choices(dtype):
                try:
                    ok = bool(_eval(c.expr, {**env, name: v}))
                except NameError:
                    continue
                if not ok:
                    out.add((name, v))
        return out

    def enumerate(self, dtype: str) -> Iterator[dict]:
        """Every config of the space for a dtype (active parameters only), feasible or not; none for a dtype the
        family does not compute."""
        if not self.supports(dtype):
            return
        yield from self._walk(self.kernel_dtype(dtype))

    def _walk(self, kd: str, holds=None, env: dict | None = None) -> Iterator[dict]:
        """The configs in declaration order, parameter by parameter (a parameter whose `when` fails is left out), for
        the kernel dtype kd. holds(i): whether to go on below params[i] once it is decided (feasible's pruning); env:
        a dict that gets each parameter's value while it is set (what holds evaluates in). A loop over a stack of
        levels, not nested generators: a config yielded through ~17 `yield from`s cost ~20 us (2.6 million configs
        in the enabled spaces)."""
        params, n = self.params, len(self.params)
        partial: dict = {}
        wenv = {"dtype": self.kernel_dtype(kd)}  # what a `when` reads: the config so far and the dtype
        vals: list = [None] * n  # a level's values, or None where its parameter is inactive
        pos = [0] * n  # the next value's index at each level (1 once an inactive level was passed through)
        i, entering = 0, True
        while True:
            if entering:
                if i == n:
                    yield dict(partial)
                    i -= 1
                    if i < 0:
                        return
                else:
                    p = params[i]
                    vals[i] = None if p.when is not None and not _eval(p.when, wenv) else p.choices(kd)
                    pos[i] = 0
            p = params[i]
            vs = vals[i]
            if vs is None:  # inactive: one pass below, then up
                if pos[i] == 0:
                    pos[i] = 1
                    if holds is None or holds(i):
                        i, entering = i + 1, True
                        continue
            else:
                if pos[i] > 0:  # the value tried last
                    del partial[p.name], wenv[p.name]
                    if env is not None:  # inactive on another branch: absent again, as check sees it
                        del env[p.name]
                if pos[i] < len(vs):
                    v = vs[pos[i]]
                    pos[i] += 1
                    partial[p.name] = wenv[p.name] = v
                    if env is not None:
                        env[p.name] = v
                    if holds is None or holds(i):
                        i, entering = i + 1, True
                    else:
                        entering = False
                    continue
            i, entering = i - 1, False
            if i < 0:
                return

    def feasible(self, dtype: str, problem_env: dict, limits: dict | None = None) -> Iterator[dict]:
        """The configs of `enumerate` that `check` passes, in the same order. The walk tests each constraint once, as
        soon as every parameter it names is decided (set, or inactive: absent, so that the constraint is passed as
        check passes it), and drops the whole subtree where one fails: csr_gemv's 500k configs at N = 20 took 17 s
        through check, one at a time (a test's four launches, a minute of CI)."""
        if self.refusal(problem_env, limits) is not None or not self.supports(dtype):
            return
        env = self._problem_names(problem_env, limits)
        if any(p.name in env for p in self.params):  # a parameter named like a problem name or a limit: check's way
            yield from (c for c in self.enumerate(dtype) if self.check(c, problem_env, limits) is None)
            return
        kd = self.kernel_dtype(dtype)
        index = {p.name: i for i, p in enumerate(self.params)}
        due: list[list] = [[] for _ in self.params]  # the constraints decided once params[i] is
        for c in self.constraints:
            named = _names(c.expr) & index.keys()
            if named:  # (those naming no parameter are the problem's own: refusal passed them)
                due[max(index[n] for n in named)].append(_code(c.expr))

        def holds(i: int) -> bool:
            for code in due[i]:
                try:
                    if not eval(code, _GLOBALS, env):  # noqa: S307 - as _eval
                        return False
                except NameError:  # an inactive parameter (or a name the problem lacks): passed, as in check
                    continue
            return True

        yield from self._walk(kd, holds, env)

    def _feasible_by_check(self, dtype: str, problem_env: dict, limits: dict | None = None) -> Iterator[dict]:
        """feasible's definition, one config at a time through check (tests compare the walk with it)."""
        if self.refusal(problem_env, limits) is not None:
            return
        for cfg in self.enumerate(dtype):
            if self.check(cfg, problem_env, limits) is None:
                yield cfg

    def defaults(self, dtype: str, problem_env: dict, limits: dict | None = None) -> list[dict]:
        """The known-good configs valid for this problem, in file order; first those whose `first_when` (an expression
        of the problem, the limits and the config, as a constraint's) holds: the configs made for a kind of problem
        are tried within a short search's budget there (session 22: the K-slice config, last of 20, was never reached
        in 10 trials at K = 11008)."""
        first, rest = [], []
        for kg in self.known_good:
            cfg = self.normalize(kg, dtype)
            if cfg is None or self.check(cfg, problem_env, limits) is not None:
                continue
            when = kg.get(FIRST_WHEN)
            env = {**DEFAULT_LIMITS, **(limits or {}), **problem_env, **cfg} if when else None
            (first if when and _eval(when, env) else rest).append(cfg)
        return first + rest

    # ---- Optuna mapping: numbers as ordinals (an integer index into the sorted list), strings categorical
    def optuna_name(self, name: str, dtype: str | None = None) -> str:
        """The parameter's name in Optuna. A categorical one (strings) carries its choices for the dtype, like the
        family parameter does: Optuna refuses a categorical whose choices differ from those a study recorded for the
        same name, and a space that gains a value (e.g. bf16's acc h2x4) must not break the studies it continues
        (`bench --retune`); ordinals (integer indices) may change range under one name."""
        if dtype is None or self._is_ordinal(self.param(name), dtype):
            return f"{self.family}.{name}"
        choices = self.param(name).choices(self.kernel_dtype(dtype))
        return f"{self.family}.{name}[{','.join(str(c) for c in choices)}]"

    def _is_ordinal(self, p: Param, dtype: str) -> bool:
        dtype = self.kernel_dtype(dtype)
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p.choices(dtype))

    def suggest(self, trial, dtype: str) -> dict:
        cfg: dict = {}
        for p in self.params:
            if p.when is not None and not _eval(p.when, self._when_env(cfg, dtype)):
                continue
            choices = p.choices(self.kernel_dtype(dtype))
            if self._is_ordinal(p, dtype):
                idx = trial.suggest_int(self.optuna_name(p.name), 0, len(choices) - 1)
                cfg[p.name] = sorted(choices)[idx]
            else:
                cfg[p.name] = trial.suggest_categorical(self.optuna_name(p.name, dtype), choices)
        return cfg

    def to_optuna_params(self, config: dict, dtype: str) -> dict:
        out = {}
        for name, v in config.items():
            p = self.param(name)
            out[self.optuna_name(name, dtype)] = sorted(p.choices(self.kernel_dtype(dtype))).index(v) if self._is_ordinal(p, dtype) else v
        return out

    def size(self, dtype: str) -> int:
        """len(list(self.enumerate(dtype))), counted without listing: below params[i] the count depends only on the
        values (or absence) of the parameters that the `when`s of params[i:] read, so each such state is counted once
        (`sparse-autotune spaces` walked 2.6 million configs one by one: 21 s)."""
        if not self.supports(dtype):
            return 0
        kd = self.kernel_dtype(dtype)
        names = {p.name for p in self.params}
        reads: list[frozenset] = [frozenset()] * (len(self.params) + 1)
        for i in range(len(self.params) - 1, -1, -1):
            w = self.params[i].when
            reads[i] = reads[i + 1] | (_names(w) & names if w else frozenset())
        memo: dict = {}

        def count(i: int, partial: dict) -> int:
            if i == len(self.params):
                return 1
            key = (i, tuple(repr(partial.get(n, _ABSENT)) for n in sorted(reads[i])))
            if key in memo:
                return memo[key]
            p = self.params[i]
            if p.when is not None and not _eval(p.when, self._when_env(partial, kd)):
                total = count(i + 1, partial)
            else:
                total = 0
                for v in p.choices(kd):
                    partial[p.name] = v
                    total += count(i + 1, partial)
                    del partial[p.name]
            memo[key] = total
            return total
        return count(0, {})


def problem_env(m: int, k: int, n: int, nnz: int, dtype: str, layout: str = "kn") -> dict:
    """The problem's names in constraints: M, K, N, nnz, dtype, layout ("kn" or "nk")."""
    return {"M": int(m), "K": int(k), "N": int(n), "nnz": int(nnz), "dtype": dtype, "layout": layout}


def parse_space(data: dict, source: str = "<space>") -> Space:
    try:
        params = [Param(name, spec["values"], spec.get("when"), spec.get("default"))
                  for name, spec in data["params"].items()]
        cons = [Constraint(c["expr"], c.get("why", c["expr"])) for c in data.get("constraints", [])]
        space = Space(data["family"], data["template"], data.get("description", ""), params, cons,
                      list(data.get("known_good", [])), bool(data.get("enabled", True)), int(data.get("rank", 100)),
                      bool(data.get("needs_matrix", False)), tuple(data.get("dtypes", ("fp32", "fp16"))),
                      tuple(data.get("layouts", ("kn",))), float(data.get("nk_cost", 2.0)), str(data.get("arch", "")))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"{source}: malformed space ({type(exc).__name__}: {exc})") from None
    for kg in space.known_good:
        when = kg.get(FIRST_WHEN) if isinstance(kg, dict) else None
        try:
            if when is not None:
                _code(str(when))
        except SyntaxError as exc:
            raise ValueError(f"{source}: a known-good config's {FIRST_WHEN} does not parse ({exc.msg}): {when}") from None
    if ("kn" not in space.layouts or not set(space.layouts) <= set(LAYOUTS)
            or len(set(space.layouts)) != len(space.layouts)):
        raise ValueError(f"{source}: layouts must list kn, and nk where the template is written for it too "
                         f"(got {list(space.layouts)})")
    if not 0.5 <= space.nk_cost <= 10.0:
        raise ValueError(f"{source}: nk_cost must be between 0.5 and 10 (got {space.nk_cost})")
    if any(p.name == NK_PATH for p in space.params):
        raise ValueError(f"{source}: {NK_PATH} is not a family's parameter (the tuner adds it for nk problems)")
    exprs = [c.expr for c in space.constraints] + [p.when for p in space.params if p.when]
    for e in exprs:  # syntax errors surface at load time, not mid-tune
        try:
            compile(e, source, "eval")
        except SyntaxError as exc:
            raise ValueError(f"{source}: expression {e!r} does not parse ({exc.msg})") from None
    return space


def built_config(family: str, config, dtype: str):
    """The config as its family's space normalizes it for the dtype: the kernel it builds (a config stored before a
    parameter existed gets its default); as given where it is not a dict, no space knows the family (a vendor path)
    or a value is not in the space."""
    if not isinstance(config, dict):
        return config
    try:
        norm = get_space(family).normalize(config, dtype)
    except (KeyError, ValueError):
        norm = None
    return config if norm is None else norm


@lru_cache(maxsize=None)
def load_spaces(folder: str | None = None) -> tuple[Space, ...]:
    """The spaces of every registered family (core.families), or of the .toml files of one folder."""
    if folder is None:
        from .families import all_families  # noqa: PLC0415
        return tuple(f.space for f in all_families().values())
    spaces = []
    for f in sorted(Path(folder).glob("*.toml")):
        with open(f, "rb") as fh:
            spaces.append(parse_space(tomllib.load(fh), str(f)))
    return tuple(sorted(spaces, key=lambda s: (s.rank, s.family)))


def select_spaces(families: str | list[str] | tuple[str, ...] | None = None) -> list[Space]:
    """The spaces to tune: the enabled ones, or exactly those named (comma-separated string or list)."""
    spaces = load_spaces()
    if not families:
        return [s for s in spaces if s.enabled]
    names = [f.strip() for f in families.split(",")] if isinstance(families, str) else list(families)
    known = {s.family: s for s in spaces}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown kernel family {unknown[0]!r}: choose from {', '.join(known)}")
    return [known[n] for n in names]


def get_space(family: str) -> Space:
    for s in load_spaces():
        if s.family == family:
            return s
    raise KeyError(f"no search space for family {family!r}")
