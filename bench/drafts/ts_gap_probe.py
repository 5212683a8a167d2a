"""Probe (session 59): where ts's end-to-end time goes on a layer, config by config. Session 59's first run found the
landed path (conversion + kernel, the fp16 record config) at 42.5 us on 3072x768 N = 2048 d 0.05, where the conversion
(5.0) plus the fp16 kernel storing fp32 C (o32: 24.4) came to 29.4; on the other 32 layers the two agree within ~2 us.

    python3 bench/drafts/ts_gap_probe.py OUT.json [--case MxK:N:density:pattern ...]

Per case and config (the fp16 record's, it with pt 0 / l2 0 / pw 0, the config the tuner chose for tf32 there): the
ts launcher end to end (its default launch), its conversion alone, its kernel alone on the workspace the conversion
filled, and the fp16 kernel of the same config storing fp32 C (o32) on that workspace; each verified first (the ts
launcher against float64 at the tf32 tolerance), then timed by graph replay over 4 fresh B buffers; registers and
spills of both kernels from the CUfunction. Since session 60 also `nosc`: ts's kernel with C stored without its scales
(the template's diag 11, timing only), which splits what is left of ts's kernel over o32's (NOTES session 60, Next 2)
into the scales' loads and products and the rest (session 61: the scales are what is left, `nosc` within 0.4 us of
o32; the template's tsh, the scales loaded at the tile's start, recovered part of it on 2 of 5 configs and lost on 3:
dropped, results/session61/ts-gap.*).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tf32_via_fp16 as P  # noqa: E402  (its o32 render; cupy set up there)
from sparse_autotune.core.problem import random_matrix  # noqa: E402
from sparse_autotune.device.gpu import gpu_info  # noqa: E402
from sparse_autotune.device.kernel import DeviceCSR, build_kernel  # noqa: E402
from sparse_autotune.device.timing import time_launches  # noqa: E402
from sparse_autotune.errors import CandidateError  # noqa: E402

cp = P.cp
import cupyx.scipy.sparse as csp  # noqa: E402

CASES = ["3072x768:2048:0.05:uniform", "768x768:2048:0.05:uniform"]
TUNED = {"3072x768:2048:0.05:uniform": dict(ar=0, bn=64, kc=1, l2=12, mc=1, pt=0, pw=0, splitk=1, stages=8, wg=2)}


def _built(render, a, cfg, dtype):
    """build_kernel of tc_sp24 for A (host CSR) with the template rendered by `render`."""
    P.K_.render = render
    try:
        return build_kernel(DeviceCSR(a, dtype), "tc_sp24", cfg, dtype)
    finally:
        P.K_.render = P._RENDER


def fp16_record(m, k, n, d, pat):
    suite = json.load(open("bench/results/suite-dl-h200.json"))
    return next(r["config"] for r in suite if r["dtype"] == "fp16" and r["family"] == "tc_sp24"
                and (r["M"], r["K"], r["N"], r["density"], r["pattern"]) == (m, k, n, d, pat))


def attrs(f) -> str:
    """A RawKernel's registers and local memory (spills)."""
    try:
        return f"{f.num_regs} regs, {f.local_size_bytes} B local"
    except Exception as exc:  # noqa: BLE001
        return f"? ({type(exc).__name__})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--case", action="append", default=None)
    args = ap.parse_args()
    info = gpu_info()
    out = {"gpu": info.name, "driver": info.driver, "cuda": info.cuda_runtime, "cupy": info.cupy, "rows": []}
    st = lambda: cp.cuda.get_current_stream().ptr  # noqa: E731
    for case in args.case or CASES:
        shape, n, d, pat = case.split(":")
        m, k = (int(x) for x in shape.split("x"))
        n, d = int(n), float(d)
        base = fp16_record(m, k, n, d, pat)
        configs = {"fp16 record": base, "pt 0": dict(base, pt=0), "l2 0": dict(base, l2=0), "pw 0": dict(base, pw=0)}
        if case in TUNED:
            configs["tf32 tuned"] = TUNED[case]
        a = random_matrix(m, k, d, pat, seed=0)
        rng = np.random.default_rng(1)
        bs = [cp.asarray(rng.standard_normal((k, n)).astype(np.float32)) for _ in range(4)]
        ref = csp.csr_matrix(a.astype(np.float64)) @ bs[0].astype(cp.float64)
        c32 = cp.empty((m, n), dtype=cp.float32)
        for name, cfg in configs.items():
            row = {"case": case, "name": name, "config": cfg}
            try:
                kern = build_kernel(DeviceCSR(a, "tf32"), "tc_sp24", cfg, "tf32")
                ln = kern.launcher(n)
                k32 = _built(P._render_o32, a, cfg, "fp16")
                ln32 = k32.launcher(n)
            except CandidateError as exc:
                row["skip"] = str(exc)[:200]
                out["rows"].append(row)
                print(f"{case} {name}: skip {row['skip'][:100]}", flush=True)
                continue
            row["err"] = P._err(lambda: ln(bs[0].data.ptr, c32.data.ptr, st()), c32, ref)
            inner, conv, b16 = ln.inner, ln.convert, ln.b16
            row["ts_us"] = time_launches([lambda b=b: ln(b.data.ptr, c32.data.ptr, st()) for b in bs]).median_us
            row["conv_us"] = time_launches([lambda b=b: conv(b.data.ptr, b16, st()) for b in bs]).median_us
            conv(bs[0].data.ptr, b16, st())
            row["inner_us"] = time_launches([lambda: inner(b16, c32.data.ptr, st())] * 4).median_us
            c_o = cp.empty((m, n), dtype=cp.float32)
            row["o32_us"] = time_launches([lambda: ln32(b16, c_o.data.ptr, st())] * 4).median_us
            # nosc (session 60): ts's kernel with C stored unscaled (the template's diag 11: no scale loads or products;
            # wrong C, timing only) on the same workspace and A
            lnos = _built(P._render_with(diag=11), a, cfg, "tf32").launcher(n)
            c_n = cp.empty((m, n), dtype=cp.float32)
            row["nosc_us"] = time_launches([lambda: lnos.inner(b16, c_n.data.ptr, st())] * 4).median_us
            row["ts_fn"], row["o32_fn"] = attrs(kern.fn), attrs(k32.fn)
            out["rows"].append(row)
            json.dump(out, open(args.out, "w"), indent=1)
            print(f"| {case} | {name} | ts {row['ts_us']:.2f} | conv {row['conv_us']:.2f} | inner {row['inner_us']:.2f} "
                  f"| o32 {row['o32_us']:.2f} | nosc {row['nosc_us']:.2f} | err {row['err']:.1e} | {row['ts_fn']} / {row['o32_fn']} | {cfg}", flush=True)
    json.dump(out, open(args.out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
