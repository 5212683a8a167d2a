"""csr_gemv's shared-memory wavefronts a B-row load request, modelled (session 20): the warp's 16-byte loads of
element e of its lanes' chunks, in quarter-warp phases of 8 lanes; a phase costs the most distinct 16-byte addresses
in one bank group (4 banks) of any group. Compares the CSR order (before session 20) with variants/csr_gemv.py's
dealt layout on random matrices. --nb 1 (GEMV, session 29): one 16-bit load of x a lane, a request costs the most
distinct 32-bit words in one bank; compares the CSR order, the res8 dealing and deal "bank" (build_bank). Checked against ncu: 8.85 wavefronts a request measured at 11008x4096 N=8 d 0.05
(l16 w8 nb8, CSR order), 8.80 modelled; 8.08 measured at 4096x4096 N=16 d 0.1 (split 2), 7.85 modelled.

  python3 bench/csr_gemv_banks.py [--m 1024] [--k 4096] [--density 0.05,0.1] [--lanes 16] [--nb 8] [--split 1]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from variants.csr_gemv import build  # noqa: E402


def csr_order(a: sp.csr_matrix, chunk_ptr: np.ndarray) -> np.ndarray:
    """The column indices of build()'s chunks in CSR order (pads: the row's last column)."""
    idx = np.zeros(max(8, int(chunk_ptr[-1]) * 8), dtype=np.int64)
    for r in range(a.shape[0]):
        ks = a.indices[a.indptr[r]:a.indptr[r + 1]]
        if len(ks):
            c0 = int(chunk_ptr[r]) * 8
            idx[c0:c0 + len(ks)] = ks
            idx[c0 + len(ks):int(chunk_ptr[r + 1]) * 8] = ks[-1]
    return idx


def wavefronts_nb1(chunk_ptr, idx, m: int, lanes: int) -> tuple[int, int]:
    """(requests, wavefronts) of the x gathers at nb 1: a warp's 16-bit loads of element e of its lanes' chunks (rows
    in warps of 32 / lanes); a request costs the most distinct 32-bit words in one of the 32 banks."""
    rpw = 32 // lanes
    cp = np.asarray(chunk_ptr, dtype=np.int64)
    req = wav = 0
    for r0 in range(0, m, rpw):
        rows = list(range(r0, min(m, r0 + rpw)))
        nch = [int(cp[r + 1] - cp[r]) for r in rows]
        for it in range(max((n + lanes - 1) // lanes for n in nch)):
            for e in range(8):
                words: dict = {}
                for lane in range(32):
                    ri, c = lane // lanes, it * lanes + lane % lanes
                    if ri >= len(rows) or c >= nch[ri]:
                        continue
                    k = int(idx[(int(cp[rows[ri]]) + c) * 8 + e])
                    words.setdefault((k >> 1) & 31, set()).add(k >> 1)
                if words:
                    req, wav = req + 1, wav + max(len(v) for v in words.values())
    return req, wav


def wavefronts(chunk_ptr, idx, m: int, nb: int, split: int, lanes: int) -> tuple[int, int]:
    """(requests, wavefronts) of the B-row loads of all warps (rows in warps of 32 / lanes)."""
    if nb == 1:
        return wavefronts_nb1(chunk_ptr, idx, m, lanes)
    cw, slots, rpw = nb // split, lanes // split, 32 // lanes
    if cw != 8:
        raise SystemExit("modelled for 16-byte pieces only (nb / split == 8)")
    req = wav = 0
    for r0 in range(0, m, rpw):
        rows = list(range(r0, min(m, r0 + rpw)))
        nch = [int(chunk_ptr[r + 1] - chunk_ptr[r]) for r in rows]
        for it in range(max((n + slots - 1) // slots for n in nch)):
            for e in range(8):
                w = 0
                for q in range(4):
                    groups: dict = {}
                    for lane in range(8 * q, 8 * q + 8):
                        ri, sub = lane // lanes, lane % lanes
                        c = it * slots + sub // split
                        if ri >= len(rows) or c >= nch[ri]:
                            continue
                        k = int(idx[(int(chunk_ptr[rows[ri]]) + c) * 8 + e])
                        addr = 2 * (nb * k + (sub % split) * cw)
                        groups.setdefault((addr // 16) % 8, set()).add(addr)
                    w += max((len(v) for v in groups.values()), default=0)
                if w:
                    req, wav = req + 1, wav + w
    return req, wav


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int, default=1024)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--density", default="0.05,0.1,0.3")
    ap.add_argument("--lanes", type=int, default=16)
    ap.add_argument("--nb", type=int, default=8)
    ap.add_argument("--split", type=int, default=1)
    a = ap.parse_args(argv)
    bank = a.nb == 1
    print("| M x K | density | lanes | nb | split | CSR order | dealt | fewer |" + (" deal bank | fewer |" if bank else ""))
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if bank else ""))
    for d in (float(x) for x in a.density.split(",")):
        mat = sp.random(a.m, a.k, density=d, format="csr", random_state=1, dtype=np.float32)
        chunk_ptr, _, idx = build(mat)
        r0, w0 = wavefronts(chunk_ptr, csr_order(mat, chunk_ptr), a.m, a.nb, a.split, a.lanes)
        r1, w1 = wavefronts(chunk_ptr, idx, a.m, a.nb, a.split, a.lanes)
        row = (f"| {a.m}x{a.k} | {d} | {a.lanes} | {a.nb} | {a.split} | {w0 / r0:.2f} | {w1 / r1:.2f} "
               f"| {w0 / w1:.2f}x |")
        if bank:
            cb, _, ib = build(mat, deal="bank")
            r2, w2 = wavefronts(cb, ib, a.m, a.nb, a.split, a.lanes)
            row += f" {w2 / r2:.2f} | {w0 / w2:.2f}x |"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
