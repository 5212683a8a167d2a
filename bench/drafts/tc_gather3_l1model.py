"""tc_gather3, session 14: the L1/shared-memory wavefront model behind bench/drafts/tc_gather3.md "session 14: from
the profile" (no GPU). Per config and case, from the real layout (variants/tc_gather3.py):

  ldmatrix   steps x ctiles x tile_n / 16 x (measured wavefronts an x4)       the gathers (77 % at d 0.05)
  LDGSTS     slices x ks x ctiles x tile_n x 2 B / 128                         B staged
  A loads    steps x ctiles x wn x (2 rn + 1)                                  LDG.64 of the weights (256 B a
                                                                               warp: 2) + LDG.U8 of the slots (1)
  epilogue   2 x M x N x 2 B / 128                                             C tile written + read
per SM (132), x 1.12 (the ncu run of session 14 measured 63 % L1/TEX throughput where this count gives 56 %), at the
SM clock the graph-replay timings ran at (~1.8 GHz: ncu's 61.2 us at 1.35 GHz against 45.9 us). `--sweep FILE`: the
model against a probe sweep's measured times (the fraction of the L1 wall each config reached).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sparse_autotune.core.families import get_family  # noqa: E402
from sparse_autotune.core.problem import random_matrix  # noqa: E402

SMS, CLOCK, NCU_SCALE = 132, 1.8e9, 1.12
_LAY: dict = {}


def l1_us(m: int, k: int, n: int, d: float, cfg: dict) -> dict:
    h = get_family("tc_gather3").host
    key = (m, k, d, cfg["rn"], cfg["rb"], cfg["upw"], cfg["ks"])
    if key not in _LAY:
        lay = h.build(random_matrix(m, k, d, "uniform", 0), *key[3:], "fp16")
        _LAY[key] = (lay["steps"], lay["slices"], h.bank_wavefronts(lay), lay["tiles"])
    steps, slices, wf, tiles = _LAY[key]
    tn = cfg["tile_n"]
    ct = -(-n // tn)
    ldsm = steps * ct * tn / 16 * wf
    stg = slices * cfg["ks"] * ct * tn * 2 / 128
    a = steps * ct * cfg["wn"] * (2 * cfg["rn"] + 1)
    epi = 2 * m * n * 2 / 128
    tot = (ldsm + stg + a + epi) * NCU_SCALE / SMS
    mma_us = steps * cfg["rn"] * ct * tn / 16 * 4096 / 600e12 * 1e6
    return {"l1_us": tot / CLOCK * 1e6, "mma_us": mma_us, "ldsm_frac": ldsm / (ldsm + stg + a + epi),
            "blocks": tiles * ct}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--sweep":
        res = json.loads(Path(sys.argv[2]).read_text())["results"]
        for r in res:
            c = r["case"]
            for t in r["top"]:
                mod = l1_us(c["M"], c["K"], c["N"], c["density"], t["config"])
                print(f"{c['M']}x{c['K']} N={c['N']} d={c['density']} {t['time_us']:6.1f} us  L1 wall "
                      f"{mod['l1_us']:5.1f} ({mod['l1_us'] / t['time_us']:.0%})  MMA {mod['mma_us']:4.1f}  "
                      f"{json.dumps({x: t['config'][x] for x in ('rn', 'rb', 'upw', 'wn', 'tile_n', 'ks', 'stages')})}")
        return
    for m, k, n, d in ((3072, 768, 2048, 0.02), (3072, 768, 2048, 0.05), (3072, 768, 2048, 0.1)):
        for cfg in (dict(rn=1, rb=128, upw=2, wn=1, tile_n=64, ks=256), dict(rn=2, rb=128, upw=1, wn=1, tile_n=64, ks=256),
                    dict(rn=2, rb=128, upw=1, wn=2, tile_n=128, ks=128)):
            mod = l1_us(m, k, n, d, cfg)
            print(m, k, n, d, cfg, {x: round(v, 2) for x, v in mod.items()})


if __name__ == "__main__":
    main()
