"""`sparse-autotune report`: report.md and PNG plots (matplotlib, headless Agg) from the tuning database.

- layers.png       per layer of a model (--model), speed-up of the tuned kernel over cuSPARSE and over the best
                   dense path of the same dtype (min(cuBLAS FP32, TF32) for fp32, cuBLAS FP16 for fp16, cuBLAS
                   BF16 for bf16), one panel per (dtype, N)
- totals.png       the model's total linear-layer time per (dtype, N): tuned sparse, cuSPARSE, best dense
- density.png      speed-up vs density over every best record of the GPU (the suite)
- convergence.png  best time vs trial of one Optuna study (--study, else the model's slowest problem, else the
                   record with the most trials)

Times of a layer are those of the best record of its problem's key (GPU, M, K, N, density within 0.1 %, dtype, layout),
the same record the runtime's exact lookup would use; layers that share a problem share its times. Where a vendor path
(cuSPARSE, cuBLAS on a dense copy: core.vendor) beat every kernel, that record is the key's best and the runtime runs
it: the report says so (`runs`, the runtime's time) and still gives the best sparse kernel's own time and speed-ups,
so no figure hides behind a vendor kernel. The density plot is of the best sparse kernels too.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

from ..tuning.suite import best_dense, geomean
from ..core.vendor import is_any_vendor, is_vendor
from ..errors import UserError
from ..store.model_layers import ModelLayer, model_layers
from ..store.db import Record, TuningDB


def _f(x, nd=2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))) else f"{x:.{nd}f}"


def _ratio(num, den):
    return num / den if num and den else None


def _pick_gpu(records: list[Record], rows: list[ModelLayer], gpu: str | None) -> str:
    names = Counter(r.gpu_name for r in rows) or Counter(r.gpu_name for r in records)
    if not names:
        raise UserError("the database holds no records: nothing to report")
    if gpu:
        hits = [g for g in names if gpu.lower() in g.lower()]
        if not hits:
            raise UserError(f"no records for a GPU matching {gpu!r} (have: {', '.join(sorted(names))})")
        names = Counter({g: names[g] for g in hits})
    return names.most_common(1)[0][0]


def _row_layout(db: TuningDB, r: ModelLayer) -> str:
    """The layout a model layer was tuned in: its record's, else its study's (an nk problem's key ends in _nk)."""
    rid = getattr(r, "record_id", None)
    own = db.get(rid) if rid is not None else None
    if own is not None:
        return own.layout or "kn"
    return "nk" if str(getattr(r, "study_name", "")).split("|")[0].endswith("_nk") else "kn"


def layer_rows(db: TuningDB, rows: list[ModelLayer]) -> list[dict]:
    """Each model layer with the times of its problem's best record (None where no record is stored), in the layout
    it was tuned in (tune-model: nk for Linear layers, kn for 1x1 convolutions, unless --layout said otherwise)."""
    out = []
    for r in rows:
        layout = _row_layout(db, r)
        op = "conv3x3" if r.kind == "conv3x3" else "spmm"  # tune-model's 3x3 conv layers: conv3x3 records
        rec = db.best(r.m, r.k, r.n, r.problem_density, r.dtype, gpu=r.gpu_name, layout=layout, op=op)  # the runtime's
        kern = _sparse_of(db, rec)  # the tuned kernel's own record (rec itself unless a vendor path won)
        d = {"layer": r.layer, "kind": r.kind, "m": r.m, "k": r.k, "n": r.n, "dtype": r.dtype, "layout": layout,
             "nnz": r.nnz,
             "density": r.density, "representative": r.representative, "status": r.status, "study": r.study_name,
             "record_id": kern.id if kern else None, "tuned_us": kern.time_us if kern else None,
             "cusparse_us": rec.cusparse_us if rec else None, "family": kern.family if kern else None,
             "best_dense_us": best_dense(rec.to_dict()) if rec else None, "trials": rec.trials if rec else None,
             "chosen_family": rec.family if rec else None, "chosen_us": rec.time_us if rec else None,
             "chosen_record_id": rec.id if rec else None}
        d["vs_cusparse"] = _ratio(d["cusparse_us"], d["tuned_us"])
        d["vs_dense"] = _ratio(d["best_dense_us"], d["tuned_us"])
        out.append(d)
    return out


def _sparse_of(db: TuningDB, rec: Record | None) -> Record | None:
    """A key's best record, or where it is a vendor path's, the fastest verified kernel record of the same key."""
    if rec is None or not is_any_vendor(rec.family):
        return rec
    return db.best_sparse(rec.m, rec.k, rec.n, rec.density, rec.dtype, gpu=rec.gpu_name, pattern=rec.pattern,
                          layout=rec.layout or "kn", op=getattr(rec, "op", None) or "spmm")


def totals(layers: list[dict]) -> list[dict]:
    """Per (dtype, N): the summed layer times (over layers with a record)."""
    groups = defaultdict(list)
    for d in layers:
        groups[(d["dtype"], d["n"])].append(d)
    out = []
    for (dt, n), ds in sorted(groups.items()):
        have = [d for d in ds if d["tuned_us"] is not None]
        t = sum(d["tuned_us"] for d in have)
        cs = [d["cusparse_us"] for d in have]
        bd = [d["best_dense_us"] for d in have]
        c = sum(cs) if have and all(cs) else None
        b = sum(bd) if have and all(bd) else None
        ch = sum(d["chosen_us"] for d in have) if have and all(d.get("chosen_us") for d in have) else None
        out.append({"dtype": dt, "n": n, "layers": len(ds), "with_record": len(have), "tuned_us": t if have else None,
                    "cusparse_us": c, "best_dense_us": b, "vs_cusparse": _ratio(c, t), "vs_dense": _ratio(b, t),
                    "chosen_us": ch, "vendor_layers": sum(1 for d in have if is_any_vendor(d.get("chosen_family")))})
    return out


def _save(plt, fig, path: Path) -> None:
    """Lay the figure out, write it as a PNG and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plt():
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


def plot_layers(layers: list[dict], path: Path, title: str) -> Path | None:
    groups = defaultdict(list)
    for d in layers:
        groups[(d["dtype"], d["n"])].append(d)
    if not groups:
        return None
    plt = _plt()
    nmax = max(len(v) for v in groups.values())
    fig, axes = plt.subplots(len(groups), 1, figsize=(max(6.0, 0.32 * nmax + 2), 2.6 * len(groups) + 1.2),
                             squeeze=False)
    for ax, ((dt, n), ds) in zip(axes[:, 0], sorted(groups.items())):
        xs = range(len(ds))
        ax.bar([x - 0.2 for x in xs], [d["vs_cusparse"] or 0 for d in ds], 0.4, label="over cuSPARSE")
        ax.bar([x + 0.2 for x in xs], [d["vs_dense"] or 0 for d in ds], 0.4, label="over best dense")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_ylabel("speed-up")
        ax.set_title(f"{dt}, N = {n}", fontsize=9)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([d["layer"] for d in ds], rotation=90, fontsize=6)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(plt, fig, path)
    return path


def plot_totals(tot: list[dict], path: Path, title: str) -> Path | None:
    tot = [t for t in tot if t["tuned_us"] is not None]
    if not tot:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(tot) + 2), 4))
    xs = range(len(tot))
    for off, key, label in ((-0.27, "tuned_us", "tuned sparse"), (0.0, "cusparse_us", "cuSPARSE"),
                            (0.27, "best_dense_us", "best dense")):
        ax.bar([x + off for x in xs], [t[key] or 0 for t in tot], 0.27, label=label)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{t['dtype']}\nN={t['n']}" for t in tot], fontsize=8)
    ax.set_ylabel("total linear-layer time (us)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title)
    _save(plt, fig, path)
    return path


def plot_density(records: list[Record], path: Path, title: str) -> Path | None:
    if not records:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, key, name in ((axes[0], "cusparse", "speed-up over cuSPARSE"),
                          (axes[1], "dense", "speed-up over best dense (same dtype)")):
        for dt, mk in (("fp32", "o"), ("tf32", "D"), ("fp16", "s"), ("bf16", "^")):
            sel = [r for r in records if r.dtype == dt]
            pts = [(r.density, _ratio(r.cusparse_us if key == "cusparse" else best_dense(r.to_dict()), r.time_us))
                   for r in sel]
            pts = [(x, y) for x, y in pts if y]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=mk, label=dt, alpha=0.7)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("density")
        ax.set_title(name, fontsize=10)
        if ax.get_legend_handles_labels()[0]:  # no baseline times (e.g. synthetic records): no points, no legend
            ax.legend()
    fig.suptitle(title)
    _save(plt, fig, path)
    return path


def convergence(db: TuningDB, study: str) -> list[tuple[int, float, float]] | None:
    """(trial number, value, best so far) of the COMPLETE trials of a study's search (the vendor paths' trials that the
    tuner's finish adds are not the search's), or None where it is not stored. Read from
    Optuna's tables through the database's own (read-only) connection: Optuna's storage would open the file for writing,
    which a read must not do (and cannot, in a read-only folder)."""
    from sqlalchemy import inspect, text  # noqa: PLC0415
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415
    q = text("SELECT t.number, v.value FROM trials t JOIN studies s ON s.study_id = t.study_id "
             "JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
             "WHERE s.study_name = :name AND t.state = 'COMPLETE' AND v.value IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
             "trial_user_attributes a WHERE a.trial_id = t.trial_id AND a.key = 'vendor') ORDER BY t.number")

    def read():
        with db.engine.connect() as conn:
            if not {"studies", "trials", "trial_values", "trial_user_attributes"} <= set(inspect(conn).get_table_names()):
                return []  # no Optuna tables (e.g. an exported file)
            return [(int(n), float(v)) for n, v in conn.execute(q, {"name": study})]
    try:
        rows = [] if db._empty else db._reading(read)
    except SQLAlchemyError:
        return None
    pts, best = [], math.inf
    for number, value in rows:
        best = min(best, value)
        pts.append((number, value, best))
    return pts or None


def plot_convergence(pts, path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, alpha=0.5, label="trial")
    ax.step([p[0] for p in pts], [p[2] for p in pts], where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("time (us)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(title, fontsize=9)
    _save(plt, fig, path)
    return path


def write_report(db_target: str, out: Path, model: str | None = None, gpu: str | None = None,
                 study: str | None = None) -> dict:
    """Write out/report.md and the PNGs; returns the numbers and the paths written."""
    db = TuningDB(db_target, create=False, readonly=True)  # a read: nothing is created or written, no side files
    try:
        rows = model_layers(db.engine, model) if model else []
        if model and not rows:
            have = sorted({r.model for r in model_layers(db.engine)})
            raise UserError(f"no model {model!r} in database {db.label!r}"
                            + (f" (models: {', '.join(have)})" if have else " (no model was tuned into it)"))
        records = db.select_records({"best_only": True, "op": "spmm"})  # the SpMM records (sddmm: `db list --op`)
        gpu_name = _pick_gpu(records, rows, gpu)
        rows = [r for r in rows if r.gpu_name == gpu_name]
        records = [r for r in records if r.gpu_name == gpu_name]
        vendor_won = Counter(r.family for r in records if is_vendor(r.family))
        records = [x for x in (_sparse_of(db, r) for r in records) if x is not None]  # the kernels' own figures
        layers = layer_rows(db, rows)
        conv = None
        if study is not None:
            conv = convergence(db, study)
        else:  # the model's slowest problem, else the records with the most trials whose study is stored
            cands = [d for d in layers if d["tuned_us"] is not None]
            names = [max(cands, key=lambda d: d["tuned_us"])["study"]] if cands else \
                [r.study_name for r in sorted(records, key=lambda r: (r.trials, r.id), reverse=True) if r.study_name]
            for name in dict.fromkeys(names[:20]):
                conv = convergence(db, name)
                if conv:
                    study = name
                    break
    finally:
        db.dispose()
    tot = totals(layers)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {str(out)!r}: {exc.strerror}") from None

    pngs = []
    title = f"{model} on {gpu_name}" if model else gpu_name
    for p in (plot_layers(layers, out / "layers.png", f"{title}: per-layer speed-up") if layers else None,
              plot_totals(tot, out / "totals.png", f"{title}: total linear-layer time") if tot else None,
              plot_density(records, out / "density.png", f"speed-up vs density, {len(records)} best records, {gpu_name}"),
              plot_convergence(conv, out / "convergence.png", f"convergence: {study}") if conv else None):
        if p is not None:
            pngs.append(str(p))

    lines = [f"# sparse-autotune report{f' — model `{model}`' if model else ''}", "",
             f"GPU: {gpu_name}. Database: `{Path(str(db_target)).name}`. Times: median of CUDA-graph replays; "
             "speed-up = baseline time / tuned time; best dense = min(cuBLAS FP32, TF32) for fp32, cuBLAS FP16 for "
             "fp16, cuBLAS BF16 for bf16 (n/a for a bf16 record stored before schema version 3).", ""]
    if layers:
        lines += ["## Total linear-layer time", "",
                  "`runtime us`: what the runtime runs, the tuned kernel or a vendor path where one was faster "
                  "(`vendor layers` of them); the speed-ups are the tuned sparse kernels' own.", "",
                  "| dtype | N | layers | tuned sparse us | cuSPARSE us | best dense us | vs cuSPARSE | vs best dense | "
                  "runtime us | vendor layers |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for t in tot:
            lines.append(f"| {t['dtype']} | {t['n']} | {t['with_record']}/{t['layers']} | {_f(t['tuned_us'])} | "
                         f"{_f(t['cusparse_us'])} | {_f(t['best_dense_us'])} | {_f(t['vs_cusparse'])} | "
                         f"{_f(t['vs_dense'])} | {_f(t['chosen_us'])} | {t['vendor_layers']} |")
        if (out / "totals.png").exists():
            lines += ["", "![total time](totals.png)"]
        lines += ["", "## Layers", "",
                  "Layers of the same (shape, density, dtype, N, layout) share one tuned problem (`tuned as`); "
                  "`layout` nk: y = x @ W^T + b as SparseLinear runs it, kn: C = W @ B.", "",
                  "| layer | M x K | density | dtype | N | tuned us | cuSPARSE us | best dense us | vs cuSPARSE | "
                  "vs best dense | family | runs | tuned as | layout |",
                  "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |"]
        for d in layers:
            runs = (f"{d['chosen_family']} {_f(d['chosen_us'])} us" if is_any_vendor(d["chosen_family"])
                    else ("the tuned kernel" if d["chosen_family"] else "n/a"))
            lines.append(f"| {d['layer']} | {d['m']}x{d['k']} | {d['density']:.4f} | {d['dtype']} | {d['n']} | "
                         f"{_f(d['tuned_us'])} | {_f(d['cusparse_us'])} | {_f(d['best_dense_us'])} | "
                         f"{_f(d['vs_cusparse'])} | {_f(d['vs_dense'])} | {d['family'] or 'n/a'} | {runs} | "
                         f"{'' if d['representative'] == d['layer'] else d['representative']} | {d['layout']} |")
        if (out / "layers.png").exists():
            lines += ["", "![per-layer speed-up](layers.png)"]
    gc = geomean(_ratio(r.cusparse_us, r.time_us) for r in records)
    gd = geomean(_ratio(best_dense(r.to_dict()), r.time_us) for r in records)
    lines += ["", "## Speed-up vs density (every best record of this GPU)", "",
              f"{len(records)} records; geomean speed-up over cuSPARSE {_f(gc)}x, over the best dense path {_f(gd)}x "
              "(the tuned sparse kernels' own).", ""]
    if vendor_won:
        lines += [f"A vendor path beat every kernel on {sum(vendor_won.values())} of these problems ("
                  + ", ".join(f"{fam} {c}" for fam, c in sorted(vendor_won.items()))
                  + "): the runtime runs it there; the figures above are still the best kernel's.", ""]
    if (out / "density.png").exists():
        lines += ["![speed-up vs density](density.png)", ""]
    lines += ["## Search convergence", ""]
    if conv:
        lines += [f"Study `{study}`: {len(conv)} completed trials, best {conv[-1][2]:.2f} us "
                  f"(first trial {conv[0][1]:.2f} us).", "", "![convergence](convergence.png)"]
    else:
        lines += [f"No Optuna study {'`' + study + '` ' if study else ''}stored in this database."]
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return {"markdown": str(md), "png": pngs, "gpu": gpu_name, "layers": layers, "totals": tot,
            "records": len(records), "vendor_won": dict(vendor_won), "study": study, "convergence": conv}
