"""`tune --op conv3x3` and `lookup --op conv3x3`: the sparse 3x3 convolution (ops.conv, tuning.conv_tune,
runtime.conv). --shape is Cout x Cin, --hw the input image H x W, --batch, --stride 1 or 2, --layout nchw or nhwc.
Bad input: one line, exit 2, before anything is allocated or written."""
from __future__ import annotations

import json

from ..errors import UserError

CONV_LAYOUTS = ("nchw", "nhwc")
DEFAULT_HW = "56x56"


def _layout_any(text):
    """--layout of tune / lookup: SpMM's kn / nk, or conv3x3's nchw / nhwc (which operator takes which: checked later)."""
    from ..core.problem import check_layout  # noqa: PLC0415
    if text in CONV_LAYOUTS:
        return text
    return check_layout(text)


def add_conv_args(p) -> None:
    """conv3x3's options on tune / lookup's parser."""
    p.add_argument("--hw", default=None, help=f"conv3x3: the input image H x W (default {DEFAULT_HW}; conv3x3 only)")
    p.add_argument("--batch", default=None, help="conv3x3: images per call (default 1; conv3x3 only)")
    p.add_argument("--stride", default=None, help="conv3x3: 1 or 2 (default 1; conv3x3 only)")


def conv_layout_refused(a) -> None:
    """A non-conv operator given conv3x3's options or layouts: one line."""
    for name in ("hw", "batch", "stride"):
        if getattr(a, name, None) is not None:
            raise UserError(f"--{name} is an option of --op conv3x3 only")
    if getattr(a, "layout", None) in CONV_LAYOUTS:
        raise UserError(f"--layout {a.layout} is conv3x3's (give --op conv3x3); SpMM's layouts are kn and nk")


def _geometry(a):
    from ..core.problem import check_dim  # noqa: PLC0415
    from ..ops.conv import check_geometry, parse_hw  # noqa: PLC0415
    for name, given in (("--n", getattr(a, "n", None) is not None), ("--k", getattr(a, "k", None) is not None),
                        ("--allow-tf32", getattr(a, "allow_tf32", False)),
                        ("--storage", getattr(a, "storage", None) is not None),
                        ("--workers", getattr(a, "workers", 1) != 1)):
        if given:
            raise UserError(f"{name} is not an option of --op conv3x3 (conv3x3: --shape CoutxCin, --hw HxW, --batch, "
                            "--stride, --layout nchw|nhwc, --density, --dtype)")
    if not a.shape:
        raise UserError("--op conv3x3 needs --shape CoutxCin (e.g. 64x64)")
    if a.layout is not None and a.layout not in CONV_LAYOUTS:
        raise UserError(f"--layout {a.layout} is SpMM's: conv3x3 takes nchw or nhwc")
    h, w = parse_hw(a.hw or DEFAULT_HW)
    batch = check_dim(a.batch if a.batch is not None else 1, "batch")
    stride = a.stride if a.stride is not None else "1"
    if str(stride).strip() not in ("1", "2"):
        raise UserError(f"--stride must be 1 or 2 (got {stride!r})")
    cout, cin = a.shape
    return check_geometry(cout, cin, h, w, batch, int(stride), a.layout or "nchw")


def _check_conv_dtype(dtype: str) -> None:
    from ..ops.conv import CONV_DTYPES  # noqa: PLC0415
    if dtype not in CONV_DTYPES:
        raise UserError(f"conv3x3 computes {', '.join(CONV_DTYPES)} (got {dtype})")


def cmd_tune_conv(a) -> int:
    from ..core.problem import nnz_of  # noqa: PLC0415
    from ..tuning.conv_tune import ConvProblem, GpuConvTuner, split_conv_families  # noqa: PLC0415
    from ..tuning.search import check_options  # noqa: PLC0415
    from ..tuning.tuner import TuneOptions  # noqa: PLC0415
    from .main import _checked_db  # noqa: PLC0415
    g = _geometry(a)
    _check_conv_dtype(a.dtype)
    if a.matrix:
        raise UserError("--matrix is not an option of --op conv3x3 (a checkpoint's 3x3 layers: tune-model)")
    if a.density is None:
        raise UserError("--op conv3x3 needs --density d")
    nnz_of(g.cout, g.cin * 9, a.density)
    check_options(a.trials, a.sampler, a.timeout)
    families, vendors = split_conv_families(a.families)
    db = _checked_db(a.db)
    from ..device.gpu import gpu_info  # noqa: PLC0415
    gpu_info()  # no GPU: one line, exit 2, nothing written
    problem = ConvProblem.random(g, a.density, a.dtype, a.pattern, a.seed)
    opts = TuneOptions(trials=a.trials, timeout=a.timeout, sampler=a.sampler, seed=a.seed, db=db,
                       progress=not a.no_progress, families=families, warm_start=False, vendors=vendors)
    tuner = GpuConvTuner(problem, opts)
    report = tuner.finish(tuner.search())
    print(json.dumps(report, indent=2, default=str) if a.json else "\n".join(report_lines(report)))
    return 0


def report_lines(r: dict) -> list[str]:
    """tune --op conv3x3's report."""
    p, b, base = r["problem"], r["best"], r["baselines"]

    def us(x):
        return "-" if x is None else f"{x:.2f} us"

    def x_(t):
        return "-" if t is None else f"{t / b['time_us']:.2f}x"
    lines = [
        f"problem   conv3x3 Y = conv2d(X, W, stride {p['stride']}, padding 1): W {p['cout']}x{p['cin']}x3x3 "
        f"({p['pattern']}, density {p['density']:g}, nnz {p['nnz']}), X {p['batch']}x{p['cin']}x{p['h']}x{p['w']} "
        f"({p['layout']}), {p['dtype']}",
        f"gpu       {r['gpu']} (cc {r['cc']}), driver {r['driver']}, CUDA {r['cuda']}, CuPy {r['cupy']}",
        f"best      {b['family']} {json.dumps(b['config'], sort_keys=True)}",
        f"time      {b['time_us']:.2f} us  {b['gflops']:.0f} GFLOP/s (useful)  rel err {b['max_rel_err']:.1e}",
        f"floor     {us(r['floor_us'])}",
    ]
    for mem in ("nchw", "channels_last"):
        parts = [f"{m.upper()} {us(base.get(f'cudnn_{m}_{mem}_us'))} -> {x_(base.get(f'cudnn_{m}_{mem}_us'))}"
                 for m in ("fp32", "tf32", "fp16", "bf16") if f"cudnn_{m}_{mem}_us" in base]
        lines.append(f"cuDNN     {mem}: " + ("   ".join(parts) if parts else "not timed"))
    t = r["trials"]
    lines.append(f"trials    {t['complete']} ok, {t['failed']} failed, {t['pruned']} infeasible rejected; {t['new']} "
                 f"new this run ({t['stopped']})")
    lines.append(f"stored    record {r['record_id']} (op conv3x3) in {r['db']}")
    c = r.get("chosen") or {}
    if c.get("vendor"):
        lines.append(f"chosen    {c['family']} {json.dumps(c['config'])} {us(c['time_us'])}: the runtime runs {c['runs']}")
    return lines


def cmd_lookup_conv(a) -> int:
    from ..ops.conv_paths import describe  # noqa: PLC0415
    from ..runtime.conv import lookup_conv  # noqa: PLC0415
    g = _geometry(a)
    _check_conv_dtype(a.dtype)
    res = lookup_conv(g, a.density, a.dtype, gpu=a.gpu, db=a.db, fallback=not a.exact)
    if a.json:
        print(json.dumps(None if res is None else {"op": "conv3x3", **res.__dict__}, default=str))
    elif res is None:
        print("no stored conv3x3 config for this problem")
    else:
        where = "built-in default (the first known-good config of the conv3x3 families)" if res.record_id is None \
            else f"record {res.record_id} (op conv3x3) in {res.db}, tuned on {res.gpu} ({res.time_us:.2f} us)"
        print(f"{res.source}: {res.family} {json.dumps(res.config, sort_keys=True)}\n  from {where}\n"
              f"  runs {describe(res.family, res.config)}")
    return 0


__all__ = ["add_conv_args", "cmd_lookup_conv", "cmd_tune_conv", "conv_layout_refused", "report_lines"]
