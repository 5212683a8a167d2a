"""The state of a scale-out storage as text or JSON: the problems by state, their trials, the workers."""
from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from ..tuning.queue import ANY_GPU, STATES, ProblemQueue
from ..tuning.search import evaluated


@dataclass
class Status:
    counts: dict
    problems: list[dict]
    workers: list[dict]
    trials_per_worker: dict

    def to_dict(self) -> dict:
        return {"counts": self.counts, "problems": self.problems, "workers": self.workers,
                "trials_per_worker": self.trials_per_worker}


def status(queue: ProblemQueue) -> Status:
    """Every problem of the queue with its trials (evaluated, running, lost), and every worker (lost: silent longer
    than its grace period)."""
    rows = queue.problems()
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in STATES}
    per_worker: dict[str, dict] = {}
    names = {s.study_name for s in optuna.get_all_study_summaries(queue.storage, include_best_trial=False)}
    problems = []
    for r in rows:
        p = {k: r[k] for k in ("id", "state", "gpu", "study_gpu", "label", "attempts", "worker", "error")}
        p["trials"] = {"evaluated": 0, "running": 0, "lost": 0}
        p["best_us"] = None
        if r["result"]:
            p["best_us"] = json.loads(r["result"])["best"]["time_us"]
        if r["study_name"] and r["study_name"] in names:
            study = optuna.load_study(study_name=r["study_name"], storage=queue.storage)
            for t in study.get_trials(deepcopy=False):
                if evaluated(t):
                    kind = "evaluated"
                elif t.state == TrialState.RUNNING:
                    kind = "running"
                elif t.state == TrialState.FAIL and not t.user_attrs.get("over_budget"):
                    kind = "lost"  # a dead worker's, failed by the heartbeat check (released ones are not lost)
                else:
                    continue
                p["trials"][kind] += 1
                worker = per_worker.setdefault(t.user_attrs.get("worker", "?"), {"evaluated": 0, "running": 0, "lost": 0})
                worker[kind] += 1
        problems.append(p)
    now = time.time()
    workers = []
    for w in queue.workers():
        age = now - w["heartbeat"]
        alive = w["state"] != "exited" and age <= w["grace"]
        workers.append({"id": w["id"], "host": w["host"], "device": w["device"], "gpu": w["gpu"],
                        "state": w["state"] if alive or w["state"] == "exited" else "lost",
                        "problem": w["problem_id"], "heartbeat_age_s": round(age, 1),
                        "started": _dt.datetime.fromtimestamp(w["started_at"]).isoformat(timespec="seconds")})
    return Status(counts, problems, workers, per_worker)


def status_text(st: Status, label: str) -> str:
    c = st.counts
    lines = [f"storage {label}",
             f"problems: {c['done']} done, {c['running'] + c['finalizing']} running, {c['queued']} queued, "
             f"{c['failed']} failed ({len(st.problems)} in all)", ""]
    lines.append(f"{'id':>4}  {'state':10}  {'trials':>7}  {'run':>3}  {'lost':>4}  {'best us':>8}  "
                 f"{'attempts':>8}  {'gpu':24}  problem")
    for p in st.problems:
        best = f"{p['best_us']:.2f}" if p["best_us"] is not None else "-"
        gpu = p["study_gpu"] or ("any" if p["gpu"] == ANY_GPU else p["gpu"])
        lines.append(f"{p['id']:>4}  {p['state']:10}  {p['trials']['evaluated']:>7}  {p['trials']['running']:>3}  "
                     f"{p['trials']['lost']:>4}  {best:>8}  {p['attempts']:>8}  {gpu[:24]:24}  {p['label']}"
                     + (f"  [{p['error']}]" if p["error"] else ""))
    lines += ["", "workers:"]
    lines.append(f"  {'worker':40}  {'state':8}  {'problem':>7}  {'beat':>7}  {'trials':>6}  {'run':>3}  {'lost':>4}  gpu")
    known = set()
    for w in st.workers:
        known.add(w["id"])
        t = st.trials_per_worker.get(w["id"], {"evaluated": 0, "running": 0, "lost": 0})
        prob = str(w["problem"]) if w["problem"] is not None else "-"
        lines.append(f"  {w['id'][:40]:40}  {w['state']:8}  {prob:>7}  {w['heartbeat_age_s']:>6.0f}s  "
                     f"{t['evaluated']:>6}  {t['running']:>3}  {t['lost']:>4}  {w['gpu']}")
    for wid, t in sorted(st.trials_per_worker.items()):
        if wid not in known:
            lines.append(f"  {wid[:40]:40}  {'-':8}  {'-':>7}  {'-':>7}  {t['evaluated']:>6}  {t['running']:>3}  "
                         f"{t['lost']:>4}")
    return "\n".join(lines)
