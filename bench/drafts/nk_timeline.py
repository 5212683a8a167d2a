"""Where tc_sp24 nk's time goes on MiniLM's real layers (layer 0 at d 0.05, fp16; session 42): for each layer, N and
config, the kernel as built (verified), its timeline (diag 9: each block's phase stamps, medians and how many blocks an
SM ran at once), and the cut-outs diag 10 (no residual) and "nostore" (y's stores skipped: the template's store_y_*
calls removed; results wrong, timing only). Run on the device (examples/minilm/data carried):
    python3 bench/drafts/nk_timeline.py OUT.json"""
import json
import sys

import numpy as np

sys.path.insert(0, "bench")
import sparse_autotune.device.kernel as K  # noqa: E402
from diag_wgmma import phases  # noqa: E402
from sparse_autotune.core.checkpoint import load_bundle  # noqa: E402
from sparse_autotune.core.families import get_family  # noqa: E402
from sparse_autotune.core.problem import storage  # noqa: E402
from sparse_autotune.core.render import _env  # noqa: E402
from sparse_autotune.device.gpu import cupy  # noqa: E402
from sparse_autotune.device.kernel import DeviceCSR, build_kernel  # noqa: E402
from sparse_autotune.device.timing import time_launches  # noqa: E402
from sparse_autotune.device.vendor import DenseLauncher  # noqa: E402

cp = cupy()
sp24 = get_family("tc_sp24").space
TPL = open("variants/tc_sp24.cu.j2").read()
STORES = ("{{- store_y_staged('bbase + warp * (BN * %d)' % NKP) }}", "{{- store_y_direct() }}", "{{- store_y_window() }}")
NOSTORE = TPL
for s_ in STORES:
    assert NOSTORE.count(s_) == 1, s_
    NOSTORE = NOSTORE.replace(s_, "\n    if (MY == -12345) {\n" + s_ + "\n    }")  # never true: the stores skipped, kept live
FORM = {"src": TPL, "diag": 0}


def patched(space, config, dtype, context=None, layout="kn"):
    return _env().from_string(FORM["src"]).render(dtype=dtype, layout=layout, diag=FORM["diag"], **config)


K.render = patched
CFGS = [dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=25, pw=1), dict(bn=64, kc=4, wg=2, stages=4, splitk=1, l2=12),
        dict(bn=64, kc=2, wg=1, stages=4, splitk=1, l2=12), dict(bn=64, kc=4, wg=1, stages=4, splitk=1, l2=12),
        dict(bn=64, kc=4, wg=2, stages=4, splitk=1),
        # session 42 (y by the row block's window at l2): more of the l2 space
        dict(bn=128, kc=2, wg=2, stages=4, splitk=1, l2=12, pw=1), dict(bn=64, kc=2, wg=2, stages=4, splitk=1, l2=12),
        dict(bn=128, kc=4, wg=1, stages=4, splitk=1, l2=12), dict(bn=128, kc=2, wg=1, stages=6, splitk=1, l2=12)]
CFGS = [sp24.normalize(c, "fp16") for c in CFGS]
layers, extras, _ = load_bundle("examples/minilm/data/minilm-d0.05.npz")
st = lambda: cp.cuda.get_current_stream().ptr  # noqa: E731
rng = np.random.default_rng(0)
out = []


def concurrency(x):
    """Per SM, the most blocks whose [entry, C stored] intervals overlap, as a histogram over SMs."""
    ent, end, sm = x[:, 0], np.where(x[:, 5] > 0, x[:, 5], x[:, 4]), x[:, 7]
    most = {}
    for s in np.unique(sm):
        ev = sorted([(int(t), 1) for t in ent[sm == s]] + [(int(t), -1) for t in end[sm == s]])
        cur = best = 0
        for _, d in ev:
            cur += d
            best = max(best, cur)
        most[int(s)] = best
    vals, counts = np.unique(list(most.values()), return_counts=True)
    return {int(v): int(c) for v, c in zip(vals, counts)}


for name in ("encoder.layer.0.attention.self.query", "encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense"):
    a = layers[name + ".weight"].astype(np.float32)
    m, k = a.shape
    ad = DeviceCSR(a, "fp16")
    bias = cp.asarray(storage(np.asarray(extras[name + ".bias"], dtype=np.float32), "fp16"))
    for n in (1024, 4096):
        xs = [cp.asarray(storage(rng.standard_normal((n, k)).astype(np.float32), "fp16")) for _ in range(8)]
        y = cp.empty((n, m), dtype=cp.float16)
        w = cp.asarray(storage(a.toarray(), "fp16"))
        ref = xs[0].astype(cp.float32) @ w.astype(cp.float32).T + bias.astype(cp.float32)
        dl = DenseLauncher(w, n, "fp16", "nk")
        dense = time_launches([lambda x=x: dl(x.data.ptr, y.data.ptr, st(), bias.data.ptr) for x in xs]).median_us
        for cfg in CFGS:
            r = {"layer": name, "m": m, "k": k, "n": n, "dense_us": dense,
                 "cfg": {q: cfg[q] for q in ("bn", "kc", "wg", "stages", "l2", "pw")}}
            for form, src, diag in (("built", TPL, 0), ("no_residual", TPL, 10), ("nostore", NOSTORE, 0),
                                    ("timeline", TPL, 9)):
                FORM["src"], FORM["diag"] = src, diag
                kern = build_kernel(ad, "tc_sp24", cfg, "fp16", layout="nk")
                tsb = None
                if diag == 9:
                    grid, _ = kern.geometry(n)
                    tsb = cp.zeros(16 * int(np.prod(grid)), dtype=cp.uint64)
                    orig = kern.args
                    object.__setattr__(kern, "args", lambda n_, b, c, bias_=None, o=orig, t=tsb: (*o(n_, b, c, bias_), t))
                ln = kern.launcher(n)
                y.fill(7)
                ln(xs[0].data.ptr, y.data.ptr, st(), bias.data.ptr)
                cp.cuda.Device().synchronize()
                err = float(cp.max(cp.abs(y.astype(cp.float32) - ref)) / (cp.max(cp.abs(ref)) + 1e-9))
                t = time_launches([lambda x=x: ln(x.data.ptr, y.data.ptr, st(), bias.data.ptr) for x in xs]).median_us
                r[form] = {"us": t, "err": err}
                if tsb is not None:
                    tsb.fill(0)
                    ln(xs[0].data.ptr, y.data.ptr, st(), bias.data.ptr)
                    cp.cuda.Device().synchronize()
                    x = cp.asnumpy(tsb).reshape(-1, 16).astype(np.int64)
                    summary, _ = phases(x)
                    r[form].update(summary=summary, blocks=int(len(x)), concurrent=concurrency(x))
            out.append(r)
            s = r["timeline"]["summary"]
            print(f"| {m}x{k} | {n} | {r['cfg']} | dense {dense:.2f} | built {r['built']['us']:.2f} (err {r['built']['err']:.1e}) | "
                  f"nores {r['no_residual']['us']:.2f} | nostore {r['nostore']['us']:.2f} | blocks {r['timeline']['blocks']} "
                  f"conc {r['timeline']['concurrent']} | span {s['span']:.2f} fill {s.get('fill_ck', s['fill']):.2f} "
                  f"loop {s.get('loop_ck', s['loop']):.2f} epi {s.get('epilogue_ck', s['epilogue']):.2f} "
                  f"store {s.get('reduce_ck', s['reduce']):.2f} |", flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
