"""A CPU model of tc_sp24's stage ring, to check the producer's gathering steps (perm, ov, ovc) before they run on a
GPU: a barrier protocol that is wrong hangs a tune or corrupts C, and a GPU call that finds it costs minutes.

`producer_ops` reads the producer's step for one chunk out of a rendered kernel (the chunk loop of the producer
warp(s), from `for (int i = 0; i < nch; ++i) {` to the ring's `if (++st == STAGES)`), as a list of (op, guard, arg):
the waits on `empty`, the named barrier 3, lead's expect_tx (arg: what it expects), A's bulk copy, B's boxes (lead's
whole boxes or a thread's row boxes), the cp.async pieces and their mbarrier arrival, each with the C condition it
runs under (`lead`, `gth`) as a Python expression.

`simulate` runs those steps for several producer threads (thread 0 is lead) and one consumer over a ring of stages,
under a random schedule, with the mbarrier rules of the PTX ISA:
- a wait on parity P passes when the barrier's completed phases are of the other parity than P (`try_wait.parity`:
  so a thread that skipped waits can pass one a whole number of ring turns early);
- `full` completes a phase when its pending arrivals (1, plus one raised by each `cp.async.mbarrier.arrive` at issue
  and dropped when that thread's earlier copies land) are in and its transaction bytes (expected by lead, counted down
  by TMA and bulk copies as they land, negative in between allowed) are 0;
- the consumer waits on `full`, checks that the stage holds every piece of its chunk, and releases a chunk's stage
  after it has waited for the next one (the last of a tile at the tile's end), as the kernel's consumers do.
It reports a copy issued into a stage whose previous chunk the consumer has not released, bytes landing on a phase
not theirs, a chunk read incomplete, and a deadlock. The model is the protocol only: no addresses, no timing.
"""
from __future__ import annotations

import random
import re

_OPS = (  # (substring of the statement's first line, op): the first that matches
    ("mbar_wait(empty", "wait_empty"),
    ("bar.sync 3", "bar"),
    ("cp_async16z(", "cp_copy"),
    ("cp_async_arrive(full", "cp_arrive"),
    ("mbar_arrive_tx(full", "arrive_tx"),
    ("bulk_g2s(", "a_copy"),
)
_TX = {"bytes": "all", "gth ? (unsigned int)AST : bytes": "a_if_gth"}  # lead's expect_tx argument -> what it expects


def _cond(c: str) -> str:
    py = c.replace("||", " or ").replace("&&", " and ").replace("true", "True")
    py = re.sub(r"!(?!=)", " not ", py)
    names = set(re.findall(r"[A-Za-z_]\w*", py)) - {"or", "and", "not", "True"}
    if not names <= {"lead", "gth"}:
        raise ValueError(f"barrier_model: a producer guard it cannot read: {c!r}")
    return py.strip()


def producer_ops(src: str) -> tuple[list[tuple[str, str, str]], str]:
    """(ops, gth): ops a list of (op, guard, arg) in program order, the guard a Python expression over lead / gth,
    arg lead's expect_tx kind ("all" / "a_if_gth") for arrive_tx; gth the chunk's gathered flag's C expression."""
    start = src.index("for (int i = 0; i < nch; ++i) {")
    end = src.index("if (++st == STAGES)", start)
    lines = src[start:end].splitlines()[1:]
    ops: list[tuple[str, str, str]] = []
    gth = None
    stack: list[str] = []  # the open blocks' guards ("True" or a guard)
    pending: list[str] = []  # guards of the next statement (an `if (...)` / `for (...)` header without braces)
    for raw in lines:
        s = raw.strip()
        if not s or s.startswith("#") or s.startswith("//"):
            continue
        m = re.match(r"const bool gth = (.*);", s)
        if m:
            gth = m.group(1)
            continue
        if s.startswith("}"):
            stack.pop()
            continue
        m = re.match(r"if \((.*)\)\s*(\{)?\s*$", s)
        if m:  # `if (c) {` or `if (c)` before a statement
            (stack if m.group(2) else pending).append(_cond(m.group(1)))
            continue
        m = re.match(r"for \((.*)\)\s*(\{)?\s*(//.*)?$", s)
        if m:
            (stack if m.group(2) else pending).append("True")
            continue
        if s == "{":
            stack.append("True")
            continue
        guard_list = stack + pending
        m = re.match(r"if \(([^{;]*?)\) (\w.*;)", s)  # `if (c) statement;` on one line
        if m:
            guard_list = guard_list + [_cond(m.group(1))]
            s = m.group(2)
        op = next((o for key, o in _OPS if key in s), None)
        if op is None and "tma_g2s(" in s:
            op = "b_box" if "(c0 + i) * KC" in s else "row_box"
        if op is not None:
            arg = ""
            if op == "arrive_tx":
                arg = _TX[re.search(r"mbar_arrive_tx\(full \+ 8 \* st, (.*)\);", s).group(1)]
            guard = " and ".join(f"({g})" for g in guard_list if g != "True") or "True"
            ops.append((op, guard, arg))
        if s.endswith(";") or s.endswith("{"):
            pending = []
        if s.endswith("{"):
            stack.append("True")
    if gth is None:
        raise ValueError("barrier_model: no `const bool gth` in the producer's step (not a gathering form)")
    return ops, gth


class _Full:
    def __init__(self):
        self.done, self.pend, self.tx = 0, 1, 0

    def settle(self):
        if self.pend == 0 and self.tx == 0:
            self.done, self.pend, self.tx = self.done + 1, 1, 0


def simulate(ops, stages: int, tiles, nprod: int = 3, seed: int = 0, max_steps: int = 200_000) -> list[str]:
    """Run the step `ops` for every chunk of `tiles` ((chunks, gathered chunks at its end) each; the ring runs on
    across tiles as pt's does) with nprod producer threads and one consumer; the problems found (empty: none)."""
    rng = random.Random(seed)
    chunks = [(k >= n - g) for n, g in tiles for k in range(n)]
    ends = set()
    j = 0
    for n, _ in tiles:
        j += n
        ends.add(j - 1)
    S = stages
    full = [_Full() for _ in range(S)]
    empty = [0] * S  # completed phases (one consumer: each release completes one)
    released: set[int] = set()
    content: list[tuple[int, set]] = [(-1, set())] * S
    problems: list[str] = []
    events: list[tuple] = []  # copies and cp.async arrivals in flight, in issue order:
    #                           (kind, thread, stage, chunk, piece, bytes)
    bar = {"n": 0, "gen": 0}
    has_a = any(op == "a_copy" for op, _, _ in ops)  # ar > 0: the consumers load A themselves (AST = 0)

    def need(j_, gth):
        return ({"A"} if has_a else set()) | ({f"B{t}" for t in range(nprod)} if gth else {"B"})

    def issue(t, j_, piece, nbytes, kind="tx"):
        st = j_ % S
        if j_ >= S and (j_ - S) not in released:
            problems.append(f"thread {t} wrote stage {st} for chunk {j_} while chunk {j_ - S} was not released")
        events.append((kind, t, st, j_, piece, nbytes))

    def producer(t):
        lead = t == 0
        for j_, g in enumerate(chunks):
            st, u = j_ % S, j_ // S
            ph = u & 1
            for op, guard, arg in ops:
                if not eval(guard, {}, {"lead": lead, "gth": g}):
                    continue
                if op == "wait_empty":
                    yield ("wait", lambda st=st, ph=ph: (empty[st] & 1) != (ph ^ 1))
                elif op == "bar":
                    gen = bar["gen"]
                    bar["n"] += 1
                    if bar["n"] == nprod:
                        bar["n"], bar["gen"] = 0, gen + 1
                    yield ("wait", lambda gen=gen: bar["gen"] > gen)
                elif op == "arrive_tx":
                    f = full[st]
                    if f.done != u:
                        problems.append(f"lead expected chunk {j_}'s bytes on stage {st}'s phase {f.done}, not {u}")
                    f.tx += int(has_a) + (0 if (arg == "a_if_gth" and g) else nprod)
                    f.pend -= 1
                    f.settle()
                    yield ("step",)
                elif op == "a_copy":
                    issue(t, j_, "A", 1)
                    yield ("step",)
                elif op == "b_box":
                    issue(t, j_, "B", nprod)
                    yield ("step",)
                elif op == "row_box":
                    issue(t, j_, f"B{t}", 1)
                    yield ("step",)
                elif op == "cp_copy":
                    issue(t, j_, f"B{t}", 0, "cp")
                    yield ("step",)
                elif op == "cp_arrive":
                    full[st].pend += 1  # raised at issue, dropped when the thread's earlier copies land
                    events.append(("arrive", t, st, j_, None, 0))
                    yield ("step",)

    def consumer():
        for j_, g in enumerate(chunks):
            st, u = j_ % S, j_ // S
            yield ("wait", lambda st=st, u=u: (full[st].done & 1) != (u & 1))
            c, have = content[st]
            if c != j_ or not need(j_, g) <= have:
                problems.append(f"the consumer read chunk {j_} from stage {st} holding chunk {c} pieces {sorted(have)}")
            if j_ > 0 and (j_ - 1) not in released and (j_ - 1) not in ends:
                released.add(j_ - 1)
                empty[(j_ - 1) % S] += 1
            if j_ in ends:
                released.add(j_)
                empty[st] += 1
            yield ("step",)

    threads = {t: producer(t) for t in range(nprod)}
    threads["c"] = consumer()
    waiting: dict = {}
    for _ in range(max_steps):
        if problems:
            return problems
        ready = [k for k in threads if k not in waiting or waiting[k]()]
        landable = [e for i, e in enumerate(events)  # an arrival waits for its thread's copies issued before it
                    if e[0] != "arrive" or not any(x[0] == "cp" and x[1] == e[1] for x in events[:i])]
        if not ready and not landable:
            if not threads:
                return problems
            blocked = ", ".join(str(k) for k in threads)
            return [f"deadlock: threads {blocked} wait and no copy is in flight"]
        pick = rng.randrange(len(ready) + len(landable))
        if pick < len(ready):
            k = ready[pick]
            waiting.pop(k, None)
            try:
                req = next(threads[k])
                if req[0] == "wait":
                    waiting[k] = req[1]
            except StopIteration:
                del threads[k]
                waiting.pop(k, None)
            continue
        e = landable[pick - len(ready)]
        events.remove(e)
        kind, t, st, j_, piece, nbytes = e
        if kind == "arrive":
            f = full[st]
            if f.done != j_ // S:
                problems.append(f"thread {t}'s cp.async arrival for chunk {j_} fell on stage {st}'s phase {f.done}")
            f.pend -= 1
            f.settle()
            continue
        c, have = content[st]
        content[st] = (j_, (have if c == j_ else set()) | {piece})
        if kind == "cp":
            continue
        f = full[st]
        if f.done != j_ // S:
            problems.append(f"chunk {j_}'s {piece} bytes landed on stage {st}'s phase {f.done}")
        f.tx -= nbytes
        f.settle()
    return problems + [f"no end after {max_steps} steps"]
