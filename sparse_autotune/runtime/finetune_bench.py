"""Fine-tuning benchmark (issue 19, `bench/probe.py finetune`): a pruned BERT/MiniLM-sized stack trained on an
embedding-distillation loss (MSE to the dense teacher's output), the student's linear layers as trainable SparseLinear
(runtime.nn_train) against the dense masked nn.Linear (gradients masked to the same pattern), same precision, same
seed, same data, same optimizer (Adam). Records both loss curves (final loss ratio sparse / dense) and the median step
time of each (forward + backward + optimizer step, CUDA events, after warm-up steps).

The stack: `blocks` blocks of MiniLM's real layer shapes, each
    h = h + W_o gelu(W_v LN(h))          W_v, W_o: 384 x 384
    h = h + W_2 gelu(W_1 LN(h))          W_1: 1536 x 384, W_2: 384 x 1536
(attention's softmax mixing is left out: the linear layers are what the sparse path changes). The teacher is the dense
stack (seeded random init, GPT-2-like scale); the student starts from the teacher's weights pruned by magnitude to
`density` per layer. The bundles under bench/state/minilm hold only pruned weights (no dense teacher), so the
teacher here is synthetic; the layer shapes and density are MiniLM's (examples/minilm).

Outputs (`write_outputs`): STEM.json (GPU, driver, CUDA, CuPy, torch, date, options, curves, times, summary), STEM.md,
STEM.png (the two loss curves).
"""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np

from ..core.outputs import write_doc
from ..errors import UserError

HIDDEN, INTER = 384, 1536
TDTYPES = ("fp32", "fp16")


def check_options(steps: int, blocks: int, tokens: int, density: float, dtype: str) -> None:
    if not 10 <= steps <= 5000:
        raise UserError(f"--steps must be 10 .. 5000 (got {steps})")
    if not 1 <= blocks <= 12:
        raise UserError(f"--blocks must be 1 .. 12 (got {blocks})")
    if not 8 <= tokens <= 16384:
        raise UserError(f"--tokens must be 8 .. 16384 (got {tokens})")
    if not 0.0 < density < 1.0:
        raise UserError(f"--density must be in (0, 1) (got {density})")
    if dtype not in TDTYPES:
        raise UserError(f"--dtype must be one of {', '.join(TDTYPES)} (got {dtype!r})")


def _stack(torch, blocks: int, linear):
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, i):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
            self.v, self.o = linear(i, "v", HIDDEN, HIDDEN), linear(i, "o", HIDDEN, HIDDEN)
            self.w1, self.w2 = linear(i, "w1", HIDDEN, INTER), linear(i, "w2", INTER, HIDDEN)

        def forward(self, h):
            g = torch.nn.functional.gelu
            h = h + self.o(g(self.v(self.ln1(h))))
            return h + self.w2(g(self.w1(self.ln2(h))))

    return nn.Sequential(*[Block(i) for i in range(blocks)])


def build_models(blocks: int, density: float, dtype: str, seed: int = 0):
    """(teacher, dense masked student, sparse student, masks) on the GPU, in the dtype; both students start from the
    teacher's weights pruned by magnitude (runtime.nn.magnitude_mask)."""
    import torch  # noqa: PLC0415

    from .nn import SparseLinear, magnitude_mask  # noqa: PLC0415
    tdt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    torch.manual_seed(seed)
    teacher = _stack(torch, blocks, lambda i, n, fi, fo: torch.nn.Linear(fi, fo))
    for mod in teacher.modules():
        if isinstance(mod, torch.nn.Linear):
            torch.nn.init.normal_(mod.weight, std=0.02)
            torch.nn.init.zeros_(mod.bias)
    dense_lin = {}
    for name, mod in teacher.named_modules():
        if isinstance(mod, torch.nn.Linear):
            dense_lin[name] = mod
    masks = {name: magnitude_mask(m.weight, density) for name, m in dense_lin.items()}
    student_d = _stack(torch, blocks, lambda i, n, fi, fo: torch.nn.Linear(fi, fo))
    student_d.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        for name, mod in student_d.named_modules():
            if name in masks:
                mod.weight.mul_(masks[name])
    student_s = _stack(torch, blocks, lambda i, n, fi, fo: torch.nn.Identity())
    student_s.load_state_dict({k: v for k, v in teacher.state_dict().items() if ".ln" in k}, strict=False)
    for name, mod in list(student_d.named_modules()):
        if name in masks:
            parent, _, leaf = name.rpartition(".")
            sl = SparseLinear.from_dense(mod, masks[name], dtype=dtype, trainable=True)
            setattr(student_s.get_submodule(parent), leaf, sl)
    teacher, student_d, student_s = (m.to(device="cuda", dtype=tdt) for m in (teacher, student_d, student_s))
    for p in teacher.parameters():
        p.requires_grad_(False)
    for name, mod in student_s.named_modules():  # the bias trains in both students
        if hasattr(mod, "train_state") and mod.train_state is not None and mod.bias is not None:
            mod.bias.requires_grad_(True)
    return teacher, student_d, student_s, {k: v.to("cuda") for k, v in masks.items()}


def train(model, teacher, data, steps: int, lr: float, masks=None, warmup: int = 5, log=None) -> dict:
    """Adam on MSE(model(x), teacher(x)) over `data` (a list of input batches, cycled); masks: the dense masked
    student's gradient masks (applied before each step). Returns the loss curve and the step times (CUDA events)."""
    import torch  # noqa: PLC0415
    params = [p for p in model.parameters() if p.requires_grad] + [
        m.bias for m in model.modules() if getattr(m, "train_state", None) is not None and m.bias is not None]
    opt = torch.optim.Adam(params, lr=lr, eps=1e-4)
    masked = []
    if masks:
        mods = dict(model.named_modules())
        masked = [(mods[n].weight, mk.to(mods[n].weight.dtype)) for n, mk in masks.items()]
    targets = [teacher(x).detach() for x in data]
    losses, times = [], []
    for step in range(steps):
        x, t = data[step % len(data)], targets[step % len(data)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x).float(), t.float())
        loss.backward()
        for w, mk in masked:
            w.grad.mul_(mk)
        opt.step()
        end.record()
        end.synchronize()
        losses.append(float(loss))
        if step >= warmup:
            times.append(start.elapsed_time(end) * 1000.0)
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"  step {step}: loss {losses[-1]:.4g}")
    return {"loss": losses, "step_us": times}


def run(steps: int = 300, blocks: int = 4, tokens: int = 512, density: float = 0.1, dtype: str = "fp32",
        lr: float = 3e-4, seed: int = 0, batches: int = 8, log=print) -> dict:
    import torch  # noqa: PLC0415

    from ..device.gpu import gpu_info  # noqa: PLC0415
    check_options(steps, blocks, tokens, density, dtype)
    info = gpu_info()
    teacher, dense, sparse, masks = build_models(blocks, density, dtype, seed)
    tdt = next(teacher.parameters()).dtype
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    data = [torch.randn(tokens, HIDDEN, device="cuda", generator=g).to(tdt) for _ in range(batches)]
    log(f"dense masked nn.Linear, {dtype}, {steps} steps")
    rd = train(dense, teacher, data, steps, lr, masks=masks, log=log)
    log(f"sparse SparseLinear (trainable), {dtype}, {steps} steps")
    rs = train(sparse, teacher, data, steps, lr, log=log)
    tail = max(1, steps // 10)
    final_d, final_s = float(np.mean(rd["loss"][-tail:])), float(np.mean(rs["loss"][-tail:]))
    plans = []
    for name, mod in sparse.named_modules():
        st = getattr(mod, "train_state", None)
        if st is not None:
            n = tokens
            p = mod.op.plan(n, "nk")
            plans.append({"layer": name, "shape": f"{mod.out_features}x{mod.in_features}", "family": p.family,
                          "source": p.source,
                          "spmm_t": None if st.spmm_t is None else st.spmm_t.plan(n).family,
                          "sddmm": None if st.sddmm is None else st.sddmm.plan(n, dtype).family})
    med_d, med_s = float(np.median(rd["step_us"])), float(np.median(rs["step_us"]))
    summary = {"initial_loss_dense": rd["loss"][0], "initial_loss_sparse": rs["loss"][0],
               "final_loss_dense": final_d, "final_loss_sparse": final_s,
               "final_loss_ratio": final_s / final_d if final_d else None,
               "loss_drop_dense": rd["loss"][0] / final_d if final_d else None,
               "loss_drop_sparse": rs["loss"][0] / final_s if final_s else None,
               "median_step_us_dense": med_d, "median_step_us_sparse": med_s,
               "sparse_speedup": med_d / med_s if med_s else None}
    return {**info.versions(), "torch": torch.__version__, "date": dt.date.today().isoformat(),
            "options": {"steps": steps, "blocks": blocks, "tokens": tokens, "density": density, "dtype": dtype,
                        "lr": lr, "seed": seed, "batches": batches, "optimizer": "Adam"},
            "dense": rd, "sparse": rs, "plans": plans, "summary": summary}


def _fmt(x, nd=3):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}g}"


def markdown(doc: dict) -> list[str]:
    s, o = doc["summary"], doc["options"]
    lines = [f"# Fine-tuning: SparseLinear vs dense masked nn.Linear ({doc.get('gpu', '?')})", "",
             f"GPU {doc.get('gpu')}, driver {doc.get('driver')}, CUDA {doc.get('cuda')}, CuPy {doc.get('cupy')}, "
             f"torch {doc.get('torch')}, {doc.get('date')}", "",
             f"{o['blocks']} blocks of MiniLM shapes (384x384 x2, 1536x384, 384x1536) at density {o['density']}, "
             f"{o['dtype']}, {o['tokens']} tokens a step, {o['steps']} steps of Adam (lr {o['lr']}), MSE to the dense "
             "teacher's output.", "",
             "| | dense masked | sparse |", "|---|---:|---:|",
             f"| first loss | {_fmt(s['initial_loss_dense'])} | {_fmt(s['initial_loss_sparse'])} |",
             f"| final loss (last 10 %) | {_fmt(s['final_loss_dense'])} | {_fmt(s['final_loss_sparse'])} |",
             f"| loss drop (first / final) | {_fmt(s['loss_drop_dense'])} | {_fmt(s['loss_drop_sparse'])} |",
             f"| median step (us) | {_fmt(s['median_step_us_dense'], 4)} | {_fmt(s['median_step_us_sparse'], 4)} |",
             "", f"final loss ratio sparse / dense: **{_fmt(s['final_loss_ratio'])}**; step-time speed-up of sparse: "
             f"**{_fmt(s['sparse_speedup'])}x**", "", "| layer | shape | forward | dX (spmm_t) | dW (sddmm) | source |",
             "|---|---|---|---|---|---|"]
    for p in doc.get("plans", []):
        lines.append(f"| {p['layer']} | {p['shape']} | {p['family']} | {p['spmm_t']} | {p['sddmm']} | {p['source']} |")
    return lines


def plot(doc: dict, path) -> bool:
    try:
        import matplotlib  # noqa: PLC0415
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(doc["dense"]["loss"], label="dense masked nn.Linear")
    ax.semilogy(doc["sparse"]["loss"], label="SparseLinear (trainable)")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE to teacher")
    ax.legend()
    ax.set_title(f"fine-tuning, {doc['options']['dtype']}, density {doc['options']['density']}")
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return True


def write_outputs(stem, doc: dict, png: bool = True) -> list[Path]:
    """STEM.json, STEM.md and (png) STEM.png; the files written."""
    return write_doc(stem, doc, markdown(doc), plot if png else None)


__all__ = ["build_models", "check_options", "markdown", "plot", "run", "train", "write_outputs"]
