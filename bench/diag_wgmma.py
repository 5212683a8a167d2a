"""Where a tc_wgmma chunk's time goes: each config timed as built (diag 0, verified) and with parts of its pipeline
cut out by the template's `diag` switch (variants/tc_wgmma.cu.j2; results wrong on purpose, so not verified):

    diag 1  the consumers neither decode nor issue wgmmas (the producer's copies alone: TMA boxes, records, barriers)
    diag 2  no decode (A fragments zero): the copies and the wgmmas
    diag 3  no B boxes (tma 2 only): the records, the decode and the wgmmas (on stale B)
    diag 4  B boxes only (tma 2 only): no record copies, the consumers as at 1 (with 1 and 3: which copies set the time)
    diag 9  as built (verified), plus a timeline: each block stamps %globaltimer at its phases (entry, map patched,
            first chunk in, consumers done, producer done, split-K partial stored, C stored); the table gives the
            medians of the phases and the kernel's span (timeline-<case>-<config>.json keeps every block's stamps)

    python3 bench/diag_wgmma.py --case 4096x4096:128:0.1:fp16 --config '{"bn":128,...}' [--config ...] [--out STEM]

Timing as the tuner's (device.timing.time_launches: CUDA-graph replay, B buffers rotated past L2, median). The table
gives each variant's time and its time a block-chunk in SM cycles (at --clock-ghz, default 1.83: (t - overhead) x
clock / (chunks a block x waves), overhead --overhead-us, default 3). Diagnostic only: never a config or a record.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import probe  # noqa: E402  (bench/probe.py: cases, the device context, output helpers)

DIAGS = {0: "as built", 1: "copies only", 2: "copies + wgmma (no decode)", 3: "no B boxes", 4: "B boxes only",
         9: "timeline"}
# tc_sp24's cut-outs (variants/tc_sp24.cu.j2 `diag`)
DIAGS_SP24 = {0: "as built", 1: "copies only", 2: "copies + wgmma (no register loads)", 3: "no B boxes",
              4: "no A copies", 5: "no copies (loads and wgmmas on stale shared memory)",
              6: "the bare wgmma loop (no copies, no barriers)", 7: "bare loop, no register loads",
              8: "bare loop, no register loads, no per-chunk wait (the probe's loop)", 9: "timeline",
              10: "no residual"}


PHASES = ("entry", "patched", "first_in", "consumed", "partial", "stored", "produced")


def timeline(dev, ctx, cfg: dict, family: str = "tc_wgmma"):
    """Verified time (us) and the blocks' phase stamps of one more launch (us from the kernel's first entry). tc_sp24's
    stamps (variants/tc_sp24.cu.j2 diag 9) fill the same slots: `patch` is then the producer's start (barriers'
    init), `epilogue` split-K's store and reduction, `reduce` the residual and C's stores."""
    import numpy as np  # noqa: PLC0415
    from sparse_autotune.device.gpu import cupy  # noqa: PLC0415
    cp = cupy()
    kern = dev.kernel(ctx, family, cfg)
    grid, _ = kern.geometry(ctx.problem.n)
    blocks = int(np.prod(grid))
    tsb = cp.zeros(16 * blocks, dtype=cp.uint64)
    orig = kern.args
    object.__setattr__(kern, "args", lambda n, b, c, bias=None: (*orig(n, b, c, bias), tsb))
    t = dev.measure_kernel(ctx, kern)["time_us"]  # verified: raises where the stamps changed the results
    tsb.fill(0)
    kern(ctx.b_bufs[0], ctx.c)
    cp.cuda.runtime.deviceSynchronize()
    x = cp.asnumpy(tsb).reshape(blocks, 16).astype(np.int64)
    summary, blocks_rows = phases(x)
    return t, {"summary": summary, "blocks": blocks_rows}


def phases(x):
    """(summary, per-block rows) of the stamps x [blocks, 16] (int64: %globaltimer ns at slots 0-6, the SM at 7, clock64
    at 8-14; 0 where a phase was not stamped). The summary's phases are block medians in us from %globaltimer, whose
    ticks are 256 ns on the H200 (session 36: every phase came out as a multiple of 0.256 us), and again from clock64
    (`*_ck`, the same phases in us at `ghz`, the SM clock measured as each block's clock64 span over its globaltimer
    span where that span is at least 2 us): cycle-exact, for the short phases (fill, reduce)."""
    import numpy as np  # noqa: PLC0415
    gt = x[:, :7].astype(np.float64)
    stamped = x[:, :7] > 0
    t0 = gt[:, 0].min()
    rel = np.where(stamped, (gt - t0) / 1e3, np.nan)  # us from the first block's entry
    ent, pat, fin, con, par, sto, pro = (rel[:, i] for i in range(7))
    end = np.where(np.isnan(sto), par, sto)
    med = lambda v: float(np.nanmedian(v)) if np.any(~np.isnan(v)) else float("nan")  # noqa: E731
    summary = {"span": float(np.nanmax(end)), "last_entry": float(np.nanmax(ent)), "patch": med(pat - ent),
               "fill": med(fin - ent), "loop": med(con - fin), "produce": med(pro - ent), "epilogue": med(par - con),
               "reduce": med(sto - par)}
    ck = np.where(x[:, 8:15] > 0, x[:, 8:15].astype(np.float64), np.nan)
    last = np.where(np.isnan(ck[:, 5]), ck[:, 4], ck[:, 5])
    last_gt = np.where(np.isnan(rel[:, 5]), rel[:, 4], rel[:, 5])
    span_us = last_gt - ent
    rate = np.where(span_us >= 2.0, (last - ck[:, 0]) / np.where(span_us > 0, span_us, np.nan) / 1e3, np.nan)
    ghz = med(rate)
    if ghz == ghz and ghz > 0:  # not NaN: at least one block spanned 2 us
        e, p, f, c, r, s5, o = (ck[:, i] for i in range(7))
        cyc = lambda v: med(v) / (ghz * 1e3)  # noqa: E731  cycles -> us
        summary.update(ghz=ghz, patch_ck=cyc(p - e), fill_ck=cyc(f - e), loop_ck=cyc(c - f), produce_ck=cyc(o - e),
                       epilogue_ck=cyc(r - c), reduce_ck=cyc(s5 - r))
    blocks_rows = [{"sm": int(x[b, 7]), **{PHASES[i]: (None if np.isnan(rel[b, i]) else round(float(rel[b, i]), 3))
                                            for i in range(7)}} for b in range(len(x))]
    return summary, blocks_rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", required=True)
    ap.add_argument("--config", action="append", required=True, help="a config of --family as JSON (repeatable)")
    ap.add_argument("--family", default="tc_wgmma", choices=("tc_wgmma", "tc_sp24"),
                    help="tc_sp24: its cut-outs 1-8 and 9: 1 copies only, 2 no register loads, 3 no B boxes, "
                         "4 no A copies, 5 no copies, 6 no copies and no barriers, 7 as 6 without register "
                         "loads, 8 as 7 without the per-chunk wait, 9 the timeline, 10 no residual")
    ap.add_argument("--diag", default="0,1,2,3")
    ap.add_argument("--clock-ghz", type=float, default=1.83)
    ap.add_argument("--overhead-us", type=float, default=3.0)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    import sparse_autotune.device.kernel as dk  # noqa: PLC0415
    from sparse_autotune.core.render import render as real_render  # noqa: PLC0415
    from sparse_autotune.device.timing import time_launches  # noqa: PLC0415

    state = {"diag": 0}

    def render(space, config, dtype, context=None, layout="kn"):
        return real_render(space, config, dtype, {**(context or {}), "diag": state["diag"]}, layout)

    dk.render = render
    diags = [int(x) for x in a.diag.split(",")]
    names = DIAGS_SP24 if a.family == "tc_sp24" else DIAGS
    bad = [d for d in diags if d not in names]
    if bad:
        ap.error(f"--diag {bad[0]}: not one of {', '.join(map(str, names))}")
    for ctext in a.config:
        if a.family == "tc_wgmma" and {3, 4} & set(diags) and json.loads(ctext).get("tma") != 2:
            ap.error(f"--diag 3 and 4 cut B's boxes or the record copies of tma 2 only: {ctext}")
        if a.family == "tc_sp24" and set(diags) - {0, 9, 10} and json.loads(ctext).get("ar", 0):
            ap.error(f"--diag 1-8 cut the shared-memory path of A (ar 0) only: {ctext}")
    dev = probe.Device()
    rows = []
    lines = [f"# {a.family} pipeline cut-outs ({dev.versions_line()})", "",
             "| case | config | diag | us | cycles a block-chunk |", "| --- | --- | ---: | ---: | ---: |"]
    for text in a.case:
        case = probe.parse_case(text)
        ctx = dev.context(case)
        p = ctx.problem
        for ctext in a.config:
            cfg = json.loads(ctext)
            for d in diags:
                state["diag"] = d
                row = {"case": case.label(), "config": cfg, "diag": d, "what": names[d]}
                try:
                    if d == 0:
                        res = dev.measure(ctx, a.family, cfg)
                        t = res["time_us"]
                    elif d == 9:
                        t, tl = timeline(dev, ctx, cfg, a.family)
                        row["timeline"] = tl
                    else:
                        kern = dev.kernel(ctx, a.family, cfg)
                        t = time_launches([lambda bb=bb: kern(bb, ctx.c) for bb in ctx.b_bufs]).median_us
                    kc = cfg.get("kc", 4)
                    nch_total = -(-p.k // ((32 if a.family == "tc_sp24" else 16) * kc))
                    rows_blk = 64 * cfg.get("wg", 1)
                    blocks = -(-p.m // rows_blk) * cfg.get("splitk", 1) * -(-p.n // cfg.get("bn", 128))
                    per_sm = -(-blocks // (132 * cfg.get("minb", 1)))
                    chunks = -(-nch_total // cfg.get("splitk", 1)) * per_sm
                    row.update(time_us=t, cycles_chunk=(t - a.overhead_us) * 1e3 * a.clock_ghz / chunks)
                except Exception as exc:  # noqa: BLE001
                    row.update(error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                rows.append(row)
                probe.log(json.dumps(row))
                c = json.dumps(cfg, separators=(",", ":"))
                if "timeline" in row:
                    tl = row["timeline"]
                    lines.append(f"| {row['case']} | `{c}` | 9 timeline | {t:.2f} | "
                                 + ", ".join(f"{k} {v:.2f}" for k, v in tl["summary"].items()) + " |")
                elif "error" in row:
                    lines.append(f"| {row['case']} | `{c}` | {d} {names[d]} | failed: {row['error'][:80]} | |")
                else:
                    lines.append(f"| {row['case']} | `{c}` | {d} {names[d]} | {t:.2f} | {row['cycles_chunk']:.0f} |")
    out = probe.stem(a.out, f"diag-{a.family.replace('tc_', '')}-{probe._slug(dev)}")
    probe.write(out, {"meta": dev.meta, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
