"""Row reordering on real weights (CPU only): the union of columns of each group of 8 and of 16 consecutive rows (the
n = 8 side of tc_gather's mma.m16n8k16, rn = 1 and rn = 2), summed over the groups, in the natural order and after
core.reorder's minhash and greedy orders, for every Linear layer of the pruned MiniLM checkpoints; with the k-steps of
16 columns the kernel runs (the sum of ceil(union / 16)), the reduction against natural and each method's time. For
contrast, random 4096 x 4096 matrices at 10 % (uniform, powerlaw).

    python3 bench/reorder_unions.py [--data examples/minilm/data] [--densities 0.1,0.05] [--out STEM]

Writes STEM.json and STEM.md (default bench/results/reorder-unions-minilm) and prints the table. The issue's target
(issue 18): the reordered union at least 15 % smaller than the natural one, on average over the layers.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sparse_autotune.core import reorder as R  # noqa: E402
from sparse_autotune.core.checkpoint import find_layers, load_checkpoint  # noqa: E402
from sparse_autotune.core.problem import random_matrix  # noqa: E402

GROUPS = (8, 16)
METHODS = ("minhash", "greedy")
TARGET = 15.0  # % smaller on average (issue 18)


def measure(name: str, a, seed: int = 0) -> dict:
    """Unions, k-steps and times of every method and group size for one matrix."""
    row = {"name": name, "shape": list(a.shape), "nnz": int(a.nnz), "density": round(a.nnz / (a.shape[0] * a.shape[1]), 5)}
    for g in GROUPS:
        nat = R.group_unions(a, None, g)
        cell = {"natural": {"union": int(nat.sum()), "steps": int((-(-nat // 16)).sum())}}
        for m in METHODS:
            t = time.perf_counter()
            perm = R.reorder(a, m, g, seed)
            took = time.perf_counter() - t
            u = R.group_unions(a, perm, g)
            cell[m] = {"union": int(u.sum()), "steps": int((-(-u // 16)).sum()), "seconds": round(took, 4),
                       "reduction_pct": round(100.0 * (1 - u.sum() / max(1, nat.sum())), 2),
                       "steps_reduction_pct": round(100.0 * (1 - (-(-u // 16)).sum() / max(1, (-(-nat // 16)).sum())),
                                                    2),
                       "identity": bool(np.array_equal(perm, np.arange(a.shape[0])))}
        row[f"g{g}"] = cell
    return row


def summary(rows: list[dict]) -> dict:
    """Per group size and method: the mean of the per-matrix reductions, the reduction of the summed unions, the
    k-steps' mean reduction, and the total time."""
    out = {}
    for g in GROUPS:
        for m in METHODS:
            cells = [r[f"g{g}"] for r in rows]
            nat = sum(c["natural"]["union"] for c in cells)
            got = sum(c[m]["union"] for c in cells)
            out[f"g{g}/{m}"] = {
                "mean_reduction_pct": round(float(np.mean([c[m]["reduction_pct"] for c in cells])), 2),
                "total_reduction_pct": round(100.0 * (1 - got / max(1, nat)), 2),
                "mean_steps_reduction_pct": round(float(np.mean([c[m]["steps_reduction_pct"] for c in cells])), 2),
                "min_reduction_pct": round(float(min(c[m]["reduction_pct"] for c in cells)), 2),
                "seconds": round(sum(c[m]["seconds"] for c in cells), 3),
            }
    return out


def markdown(result: dict) -> str:
    lines = ["# Row reordering: unions of columns per row group (tc_gather's blocks), MiniLM pruned layers", "",
             f"{result['date']} · {result['host']} · core/reorder.py (seed {result['seed']}). Union: the sum over the "
             "groups of 8 (16) consecutive rows of their distinct columns; steps: the sum of ceil(union / 16), the "
             "k-steps tc_gather runs. Reduction: 1 - reordered / natural, per matrix; mean over the layers. Target "
             f"(issue 18): >= {TARGET:.0f} % smaller on average.", "", "## Summary", "",
             "| set | group | method | mean reduction | total reduction | mean steps reduction | worst layer | time (s) "
             "| target |", "|---|---|---|---|---|---|---|---|---|"]
    for key, s in result["summary"].items():
        for gm, v in s.items():
            g, m = gm.split("/")
            ok = "met" if v["mean_reduction_pct"] >= TARGET else "missed"
            lines.append(f"| {key} | {g[1:]} | {m} | {v['mean_reduction_pct']:.1f} % | {v['total_reduction_pct']:.1f} % "
                         f"| {v['mean_steps_reduction_pct']:.1f} % | {v['min_reduction_pct']:.1f} % | {v['seconds']:.2f} "
                         f"| {ok if key.startswith('minilm') else ''} |")
    for key, rows in result["sets"].items():
        lines += ["", f"## {key}", "",
                  "| layer | shape | natural 8 | minhash 8 | greedy 8 | natural 16 | minhash 16 | greedy 16 | "
                  "time minhash / greedy (g8, s) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            c8, c16 = r["g8"], r["g16"]
            lines.append(
                f"| {r['name']} | {r['shape'][0]}x{r['shape'][1]} | {c8['natural']['union']} "
                f"| {c8['minhash']['union']} ({c8['minhash']['reduction_pct']:.1f} %) "
                f"| {c8['greedy']['union']} ({c8['greedy']['reduction_pct']:.1f} %) | {c16['natural']['union']} "
                f"| {c16['minhash']['union']} ({c16['minhash']['reduction_pct']:.1f} %) "
                f"| {c16['greedy']['union']} ({c16['greedy']['reduction_pct']:.1f} %) "
                f"| {c8['minhash']['seconds']:.3f} / {c8['greedy']['seconds']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "examples" / "minilm" / "data"))
    ap.add_argument("--densities", default="0.1,0.05")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-random", action="store_true", help="skip the random 4096 x 4096 contrast matrices")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reorder-unions-minilm"))
    args = ap.parse_args(argv)
    sets: dict[str, list[dict]] = {}
    for d in [x.strip() for x in args.densities.split(",") if x.strip()]:
        ckpt = load_checkpoint(Path(args.data) / f"minilm-d{d}.npz")
        key = f"minilm d={d}"
        sets[key] = []
        for layer in find_layers(ckpt):
            row = measure(layer.name, layer.csr(), args.seed)
            sets[key].append(row)
            print(f"{key} {layer.name} {row['shape']}: " + "  ".join(
                f"g{g} {row[f'g{g}']['natural']['union']} -> minhash {row[f'g{g}']['minhash']['reduction_pct']:.1f} % "
                f"greedy {row[f'g{g}']['greedy']['reduction_pct']:.1f} %" for g in GROUPS), flush=True)
    if not args.no_random:
        key = "random 4096x4096 d=0.1"
        sets[key] = []
        for pattern in ("uniform", "powerlaw"):
            row = measure(pattern, random_matrix(4096, 4096, 0.1, pattern, 0), args.seed)
            sets[key].append(row)
            print(f"{key} {pattern}: " + "  ".join(
                f"g{g} {row[f'g{g}']['natural']['union']} -> minhash {row[f'g{g}']['minhash']['reduction_pct']:.1f} % "
                f"greedy {row[f'g{g}']['greedy']['reduction_pct']:.1f} % ({row[f'g{g}']['greedy']['seconds']:.2f} s)"
                for g in GROUPS), flush=True)
    result = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "host": f"{platform.node()} ({platform.processor() or platform.machine()}, CPU only)",
              "seed": args.seed, "target_pct": TARGET, "sets": sets,
              "summary": {key: summary(rows) for key, rows in sets.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md[md.index("## Summary"):md.index("\n## ", md.index("## Summary") + 5)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
