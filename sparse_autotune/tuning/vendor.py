"""The vendor paths as candidates of a tune: cuSPARSE and cuBLAS of the problem's precision, timed in the tuner's finish
beside the search's winner, added to the study, and stored as a record of their own where one is faster.

The search explores the templated families only (core.families); finish() re-times its winner and times every vendor
path the same way in the same process (device.baselines). Then:
- the sparse winner's record is stored as before (its `family` and time stay the best sparse kernel's: no speed-up
  figure hides behind a vendor kernel);
- each vendor path of the problem's precision that verified is added to the Optuna study as a COMPLETE trial (user
  attributes family, config and `vendor`; no parameters, so the search's distributions are untouched; the search
  neither counts them against the trial budget nor reuses them as configs, search.is_vendor_trial);
- where a vendor path is faster than the sparse winner, a record of it is stored too (family `cusparse` / `dense`, its
  algorithm / math in the config): the fastest verified record of the key is the best, so lookup and the runtime
  run it, and the sparse record stays as history.
"Faster" is the store's rule (store.db.rank_us): the cold time (A from HBM, device.cold) where measured, else the warm
time. The sparse winner has its cold time (rec.cold_us), cuBLAS of the problem's own precision has the one finish
measured (cold_times' dense_cold_us, kept as its record's cold_us); cuSPARSE (and cuBLAS TF32 of an fp32 problem) are
not timed cold and compete with their warm time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..core import vendor as V
from ..store.db import rank_us


@dataclass
class Measured:
    """One measured candidate: time None where it failed (or did not verify); cold_us: timed with A from HBM (None:
    not measured)."""

    family: str
    config: dict
    time_us: float | None
    rel_err: float | None = None
    cold_us: float | None = None

    def as_dict(self) -> dict:
        return {"family": self.family, "config": self.config, "time_us": self.time_us, "cold_us": self.cold_us,
                "rel_err": self.rel_err, "vendor": V.is_vendor(self.family)}


def vendor_candidates(measured: list[dict], dtype: str, families=V.VENDOR_FAMILIES,
                      allow_tf32: bool = False) -> list[Measured]:
    """The vendor paths of device.baselines' `vendor` list that the runtime may run for this problem (its precision;
    TF32 only with the opt-in; `families` only) and that verified within the tolerance; in the list's order."""
    out = []
    for m in measured or []:
        fam, cfg, t, err = m.get("family"), m.get("config") or {}, m.get("time_us"), m.get("rel_err")
        if fam not in families or V.adapt(fam, cfg, dtype, allow_tf32) is None:
            continue
        ok = t is not None and err is not None and err <= V.tolerance(dtype, fam, cfg)
        out.append(Measured(fam, dict(cfg), t if ok else None, err))
    return out


def add_vendor_trials(storage, study_name: str, cands: list[Measured], log=None) -> int:
    """Add the candidates that ran to the study as COMPLETE trials (family, config and `vendor` in their user
    attributes); returns how many. A storage that refuses is logged, not fatal: the records carry the result."""
    import optuna  # noqa: PLC0415
    ran = [c for c in cands if c.time_us is not None]
    if not ran:
        return 0
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        for c in ran:
            study.add_trial(optuna.trial.create_trial(
                value=c.time_us, params={}, distributions={},
                user_attrs={"family": c.family, "config": json.dumps(c.config, sort_keys=True), "vendor": True,
                            "rel_err": c.rel_err}))
    except Exception as exc:  # noqa: BLE001
        if log:
            log(f"vendor paths not added to study {study_name}: {str(exc).splitlines()[0] if str(exc) else exc}")
        return 0
    return len(ran)


def chosen_report(chosen: Measured, sparse: Measured, rec, m: int, k: int, dtype: str, layout: str = "kn") -> dict:
    """The report's `chosen`: what the runtime runs for this key after this tune (the fastest of the sparse winner and
    the vendor paths, by rank_us), its record, and the sparse winner's ranking time over its own (1.0 where the sparse
    kernel was chosen)."""
    return {"family": chosen.family, "config": chosen.config, "time_us": chosen.time_us, "cold_us": chosen.cold_us,
            "vendor": V.is_vendor(chosen.family), "record_id": rec.id if rec is not None else None,
            "record_is_best": rec.is_best if rec is not None else None,
            "runs": V.describe(chosen.family, chosen.config, m, k, dtype, layout) or "the tuned kernel",
            "dense_copy_bytes": V.dense_bytes(m, k, dtype) if chosen.family == V.DENSE else 0,
            "sparse_over_chosen": (rank_us(sparse) / rank_us(chosen)) if sparse.time_us and chosen.time_us else None}


def finish_vendors(db, storage, study_name: str, rec, measured: list[dict], families=None,
                   allow_tf32: bool = False, log=None, cold: dict | None = None) -> dict:
    """After the sparse winner's record `rec` was stored: the vendor candidates (of `families`; None: all) added to the
    study, a record of the fastest one (rank_us) stored where it beats the sparse winner, and the report's fields
    (`chosen`, `vendor_candidates`). cold: device.cold.cold_times' result, whose dense_cold_us is the cold time of
    cuBLAS at dense_cold_mode (the problem's own precision)."""
    cands = vendor_candidates(measured, rec.dtype, V.VENDOR_FAMILIES if families is None else families, allow_tf32)
    dense_cold, mode = (cold or {}).get("dense_cold_us"), (cold or {}).get("dense_cold_mode")
    for c in cands:
        if dense_cold and c.time_us is not None and c.family == V.DENSE and c.config.get("math") == mode:
            c.cold_us = dense_cold
    sparse = Measured(rec.family, json.loads(rec.config_json), rec.time_us, rec.max_rel_err, rec.cold_us)
    chosen, _ = V.choose([sparse] + cands, key=rank_us)
    add_vendor_trials(storage, study_name, cands, log)
    chosen_rec = rec
    if chosen is not None and chosen is not sparse:
        chosen_rec = db.store(rec.derived(family=chosen.family, config_json=json.dumps(chosen.config, sort_keys=True),
                                          time_us=chosen.time_us, max_rel_err=chosen.rel_err, cold_us=chosen.cold_us,
                                          gflops=rec.gflops * rec.time_us / chosen.time_us))
        if chosen_rec.is_best:
            rec.is_best = False  # the sparse record is history now (as the store flagged it)
        if log:
            log(f"a vendor path is faster than the tuned kernel: {chosen.family} {json.dumps(chosen.config)} "
                f"{rank_us(chosen):.2f} us < {rank_us(sparse):.2f} us (cold where timed so: store.db.rank_us; "
                f"record {chosen_rec.id})")
    return {"chosen": chosen_report(chosen or sparse, sparse, chosen_rec, rec.m, rec.k, rec.dtype,
                                    rec.layout or "kn"),
            "vendor_candidates": [c.as_dict() for c in cands]}
