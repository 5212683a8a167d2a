"""Model checkpoints on the CPU: read them, find their layers, prune them, write bundles, plan the distinct problems.

Checkpoints
  .safetensors   read with safetensors.numpy (no PyTorch needed; bfloat16 tensors are not readable by NumPy)
  .pt / .pth     a PyTorch state_dict (or {"state_dict": ...} / {"model": ...}), read with
                 torch.load(weights_only=True); needs torch installed
  .npz           a sparse bundle written by `tune-model --save-sparse` (or `save_bundle`), a single matrix
                 from scipy.sparse.save_npz, or dense arrays from numpy.savez (name -> array)

Layers
  Every 2-D tensor whose name ends in "weight" is taken as a Linear weight (out x in, as nn.Linear stores
  it), every 4-D weight of shape (Cout, Cin, 1, 1) as a 1x1 convolution (reshaped to Cout x Cin); in a
  sparse bundle every matrix is a layer. Embedding tables (names containing "embed") are lookups, not
  products: they are left out unless an --include pattern names them. --include / --exclude are fnmatch
  patterns on the tensor names (include: keep only matches; exclude: drop matches).
  3x3 convolution weights (Cout, Cin, 3, 3) are not SpMM layers: find_conv3x3_layers / select_conv3x3 pick them
  (those with a --spatial size) for conv3x3 problems (tuning.model.conv_plan).

Pruning (magnitude)
  layer   (default) each layer keeps exactly round(density * M * K) entries (at least 1) of largest |w|;
          ties at the threshold go to the lower row-major index.
  global  one threshold over all selected layers: round(density * total entries) entries of largest |w| are
          kept over the whole model; ties go to the earlier layer (checkpoint order), then to the lower
          row-major index. Layers end with different densities.
  Without --prune the existing zeros are used; a layer denser than 50 % is refused (prune it).

Dedup
  Layers with the same (M, K, density to 3 significant digits, dtype, N) are one problem, tuned once with the
  matrix of the first such layer in checkpoint order. Their sparsity patterns may differ: the tuned config is
  stored under the shared key, which the runtime's lookup finds for each of them (exact key: M, K, N,
  density within 0.1 %, dtype), and the report gives them the same times.
"""
from __future__ import annotations

import fnmatch
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import UserError
from .problem import Problem, check_density, check_dtype, check_layout

BUNDLE_KEY = "__sparse_autotune_bundle__"
BUNDLE_FORMAT = 1
DENSE_LIMIT = 0.5  # without --prune, a layer denser than this is refused
PRUNE_SCOPES = ("layer", "global")


# ---- checkpoints --------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """Tensors by name, in file order: NumPy arrays, or scipy CSR matrices (sparse bundles). `kinds` and
    `shapes` come from a bundle's metadata (the original shape of a 1x1 conv weight)."""

    path: str
    tensors: dict
    kinds: dict = field(default_factory=dict)
    orig_shapes: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def _first_line(exc: BaseException) -> str:
    s = str(exc)
    return s.splitlines()[0] if s else type(exc).__name__


def load_checkpoint(path) -> Checkpoint:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint {str(p)!r} does not exist or is not a file")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return Checkpoint(str(p), _load_safetensors(p))
    if suffix in (".pt", ".pth", ".bin"):
        return Checkpoint(str(p), _load_torch(p))
    if suffix == ".npz":
        return _load_npz(p)
    raise UserError(f"checkpoint {str(p)!r}: unknown format {suffix or '(no suffix)'!r} "
                    "(use .safetensors, a PyTorch state_dict .pt/.pth, or an .npz bundle)")


def _load_safetensors(p: Path) -> dict:
    try:
        from safetensors.numpy import load_file  # noqa: PLC0415
    except ImportError:
        raise UserError("reading .safetensors needs the safetensors package: pip install safetensors") from None
    try:
        return dict(load_file(str(p)))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise UserError(f"checkpoint {str(p)!r} could not be parsed as safetensors: {_first_line(exc)}") from None


def _load_torch(p: Path) -> dict:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        raise UserError(f"reading {p.suffix} checkpoints needs PyTorch: pip install torch "
                        "(or convert the checkpoint to .safetensors)") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"checkpoint {str(p)!r} could not be read as a PyTorch state_dict: {_first_line(exc)}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {str(p)!r} holds a {type(obj).__name__}, not a state_dict (name -> tensor)")
    out = {}
    for name, t in obj.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            t = t.detach().cpu()
            if t.dtype not in (torch.float16, torch.float32, torch.float64):
                t = t.float()  # bfloat16 etc.
            out[str(name)] = t.numpy()
    return out


def _load_npz(p: Path) -> Checkpoint:
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"checkpoint {str(p)!r} could not be parsed as .npz: {_first_line(exc)}") from None
    if BUNDLE_KEY in arrays:
        try:
            meta = json.loads(str(arrays[BUNDLE_KEY]))
            if meta.get("format") != BUNDLE_FORMAT:
                raise ValueError(f"bundle format {meta.get('format')!r} (this version reads {BUNDLE_FORMAT})")
            tensors, kinds, shapes = {}, {}, {}
            for lay in meta["layers"]:
                name = lay["name"]
                a = sp.csr_matrix((arrays[f"{name}::data"], arrays[f"{name}::indices"], arrays[f"{name}::indptr"]),
                                  shape=tuple(lay["shape"]))
                tensors[name] = a
                kinds[name] = lay["kind"]
                shapes[name] = tuple(lay["orig_shape"])
            for name in meta.get("extras", []):
                tensors[name] = arrays[f"{name}::dense"]
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"sparse bundle {str(p)!r} is malformed: {_first_line(exc)}") from None
        return Checkpoint(str(p), tensors, kinds, shapes, meta)
    if {"data", "indices", "indptr", "shape", "format"} <= set(arrays):  # scipy.sparse.save_npz: one matrix
        try:
            a = sp.csr_matrix(sp.load_npz(p))
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"checkpoint {str(p)!r} could not be parsed as a sparse matrix: {_first_line(exc)}") from None
        return Checkpoint(str(p), {p.stem: a}, {p.stem: "linear"}, {p.stem: a.shape})
    return Checkpoint(str(p), arrays)


# ---- layers ---------------------------------------------------------------------------------------------


@dataclass
class Layer:
    name: str  # the weight tensor's name in the checkpoint
    kind: str  # linear | conv1x1
    weight: object  # M x K: a dense float ndarray, or a scipy CSR matrix (after pruning always CSR)
    orig_shape: tuple

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    @property
    def nnz(self) -> int:
        return int(self.weight.nnz) if sp.issparse(self.weight) else int(np.count_nonzero(self.weight))

    @property
    def density(self) -> float:
        m, k = self.shape
        return self.nnz / (m * k)

    def csr(self) -> sp.csr_matrix:
        a = sp.csr_matrix(self.weight if sp.issparse(self.weight) else np.asarray(self.weight, dtype=np.float32),
                          dtype=np.float32)
        a.eliminate_zeros()
        a.sort_indices()
        return a


def _split_patterns(patterns) -> list[str]:
    out = []
    for p in patterns or ():
        out += [s.strip() for s in str(p).split(",") if s.strip()]
    return out


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def find_layers(ckpt: Checkpoint, include=None, exclude=None) -> list[Layer]:
    """The layers to tune, in checkpoint order (see the module docstring for the rules)."""
    inc, exc = _split_patterns(include), _split_patterns(exclude)
    layers = []
    for name, t in ckpt.tensors.items():
        if sp.issparse(t):
            kind, w, shape = ckpt.kinds.get(name, "linear"), t, ckpt.orig_shapes.get(name, t.shape)
        else:
            t = np.asarray(t)
            if not np.issubdtype(t.dtype, np.floating) or not name.endswith("weight"):
                continue
            if t.ndim == 2:
                kind, w, shape = "linear", t, t.shape
            elif t.ndim == 4 and t.shape[2:] == (1, 1):
                kind, w, shape = "conv1x1", t.reshape(t.shape[0], t.shape[1]), t.shape
            else:
                continue
            if "embed" in name.lower() and not _matches(name, inc):
                continue
        if inc and not _matches(name, inc):
            continue
        if exc and _matches(name, exc):
            continue
        if 0 in w.shape:
            continue
        layers.append(Layer(name, kind, w, tuple(shape)))
    if not layers:
        what = f" (include {','.join(inc)!s}; exclude {','.join(exc)!s})" if inc or exc else ""
        raise UserError(f"no layer in checkpoint {ckpt.path!r} matched{what}: layers are 2-D '*weight' tensors "
                        "and 1x1 convolution weights")
    return layers


def _top_indices(mag: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the `keep` largest entries of a flat array; ties go to the lower index (a stable sort)."""
    order = np.argsort(-mag, kind="stable")
    return order[:keep]


def prune_layers(layers: list[Layer], density: float, scope: str = "layer") -> list[Layer]:
    """Magnitude pruning (module docstring): new Layers whose weights are CSR matrices."""
    density = check_density(density)
    if scope not in PRUNE_SCOPES:
        raise UserError(f"unknown prune scope {scope!r}: choose one of {', '.join(PRUNE_SCOPES)}")
    dense = [np.abs(np.asarray(lay.weight.toarray() if sp.issparse(lay.weight) else lay.weight, dtype=np.float32))
             for lay in layers]
    masks = []
    if scope == "layer":
        for mag in dense:
            keep = max(1, int(round(density * mag.size)))
            mask = np.zeros(mag.size, dtype=bool)
            mask[_top_indices(mag.ravel(), keep)] = True
            masks.append(mask.reshape(mag.shape))
    else:
        flat = np.concatenate([m.ravel() for m in dense])
        keep = max(1, int(round(density * flat.size)))
        mask = np.zeros(flat.size, dtype=bool)
        mask[_top_indices(flat, keep)] = True
        start = 0
        for mag in dense:
            masks.append(mask[start:start + mag.size].reshape(mag.shape))
            start += mag.size
    out = []
    for lay, mask in zip(layers, masks):
        w = lay.weight.toarray() if sp.issparse(lay.weight) else np.asarray(lay.weight)
        a = sp.csr_matrix(np.where(mask, w, 0).astype(np.float32))
        if a.nnz < int(mask.sum()):
            print(f"sparse-autotune: warning: layer {lay.name} has only {a.nnz} nonzeros, fewer than the "
                  f"{int(mask.sum())} asked for", file=sys.stderr)
        a.sort_indices()
        out.append(Layer(lay.name, lay.kind, a, lay.orig_shape))
    return out


def sparse_layers(layers: list[Layer]) -> list[Layer]:
    """Without pruning: each layer's existing zeros; a layer denser than DENSE_LIMIT is refused."""
    out = []
    for lay in layers:
        a = lay.csr()
        d = a.nnz / (a.shape[0] * a.shape[1])
        if d > DENSE_LIMIT:
            raise UserError(f"layer {lay.name} is dense (density {d:.2f}): prune it with "
                            "--prune magnitude --density D")
        if a.nnz == 0:
            raise UserError(f"layer {lay.name} is all zeros: exclude it (--exclude)")
        out.append(Layer(lay.name, lay.kind, a, lay.orig_shape))
    return out


# ---- the sparse bundle ----------------------------------------------------------------------------------


def save_bundle(path, layers: list[Layer], extras: dict | None = None, meta: dict | None = None,
                values_dtype=np.float32) -> Path:
    """Write the (pruned) layers as CSR arrays, plus optional dense `extras` (e.g. biases), to one .npz.
    `load_checkpoint` / `load_bundle` read it back; values are stored as `values_dtype`."""
    p = Path(path)
    if p.suffix != ".npz":
        raise UserError(f"--save-sparse {str(p)!r}: the bundle is an .npz file")
    arrays, info = {}, []
    for lay in layers:
        a = lay.csr()
        arrays[f"{lay.name}::data"] = a.data.astype(values_dtype)
        arrays[f"{lay.name}::indices"] = a.indices.astype(np.int32)
        arrays[f"{lay.name}::indptr"] = a.indptr.astype(np.int64 if a.nnz >= 2**31 else np.int32)
        info.append({"name": lay.name, "kind": lay.kind, "shape": list(a.shape),
                     "orig_shape": [int(s) for s in lay.orig_shape], "nnz": int(a.nnz)})
    extras = extras or {}
    for name, arr in extras.items():
        arrays[f"{name}::dense"] = np.asarray(arr)
    m = {"format": BUNDLE_FORMAT, "layers": info, "extras": list(extras), **(meta or {})}
    arrays[BUNDLE_KEY] = np.array(json.dumps(m))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(p, **arrays)
    except OSError as exc:
        raise UserError(f"cannot write {str(p)!r}: {exc.strerror or exc}") from None
    return p


def load_bundle(path) -> tuple[dict, dict, dict]:
    """(layers: name -> CSR matrix M x K, extras: name -> ndarray, metadata) of a bundle written by save_bundle."""
    ck = load_checkpoint(path)
    if not ck.meta:
        raise UserError(f"{str(path)!r} is not a sparse-autotune bundle")
    layers = {k: v for k, v in ck.tensors.items() if sp.issparse(v)}
    extras = {k: v for k, v in ck.tensors.items() if not sp.issparse(v)}
    return layers, extras, ck.meta


def biases_of(ckpt: Checkpoint, layers: list[Layer]) -> dict:
    """The bias tensors that go with the layers ("x.weight" -> "x.bias"), where the checkpoint has them."""
    out = {}
    for lay in layers:
        if lay.name.endswith("weight"):
            b = lay.name[: -len("weight")] + "bias"
            if b in ckpt.tensors and not sp.issparse(ckpt.tensors[b]):
                out[b] = np.asarray(ckpt.tensors[b])
    return out


# ---- N per layer ----------------------------------------------------------------------------------------


def parse_int_list(text, what: str) -> list[int]:
    out = []
    for s in str(text).split(","):
        s = s.strip()
        if not s:
            continue
        try:
            v = int(s)
        except ValueError:
            v = 0
        if v <= 0:
            raise UserError(f"{what} {text!r}: expected comma-separated positive integers")
        out.append(v)
    if not out:
        raise UserError(f"{what} {text!r}: no value given")
    return out


def parse_spatial_specs(items) -> list[tuple[str, int, int, int]]:
    """--spatial PATTERN=HxW[sS] (repeatable) as (pattern, H, W, stride): H x W the layer's input image, S its stride
    (1, the default, or 2); with stride 1 the output is H x W too (a 1x1 conv, or a 3x3 conv with padding 1)."""
    out = []
    for it in items or ():
        m = re.fullmatch(r"\s*(.+?)\s*=\s*(\d+)\s*[xX×]\s*(\d+)\s*(?:[sS]\s*(\d+)\s*)?", str(it))
        if (not m or int(m.group(2)) <= 0 or int(m.group(3)) <= 0
                or (m.group(4) is not None and int(m.group(4)) not in (1, 2))):
            raise UserError(f"--spatial {it!r}: expected PATTERN=HxW or PATTERN=HxWs2 (stride 1 or 2), "
                            "e.g. 'layer1.*=56x56'")
        out.append((m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4) or 1)))
    return out


def parse_spatial(items) -> list[tuple[str, int]]:
    """--spatial PATTERN=HxW[sS] (repeatable): the output positions of matching conv layers."""
    return [(pat, ((h - 1) // s + 1) * ((w - 1) // s + 1)) for pat, h, w, s in parse_spatial_specs(items)]


def n_values(layers: list[Layer], n=None, batch=None, seq=None, spatial=None) -> dict[str, list[int]]:
    """N values per layer. --n: these N for every layer. Else --batch (default 1) times, for a Linear layer,
    --seq (tokens; default 1) and, for a 1x1 conv, H*W from the first --spatial pattern that matches it."""
    if n is not None:
        if batch is not None or seq is not None:
            raise UserError("give either --n or --batch/--seq, not both")
        ns = parse_int_list(n, "--n")
        return {lay.name: ns for lay in layers}
    if batch is None and seq is None and not spatial:
        raise UserError("tune-model needs the N values: --n LIST, or --batch LIST (with --seq T for a Transformer, "
                        "--spatial PATTERN=HxW for convolutions)")
    batches = parse_int_list(batch, "--batch") if batch is not None else [1]
    s = parse_int_list(seq, "--seq") if seq is not None else [1]
    if len(s) != 1:
        raise UserError("--seq takes one value")
    sp_rules = parse_spatial(spatial)
    out = {}
    for lay in layers:
        if lay.kind == "conv1x1":
            hw = next((v for pat, v in sp_rules if fnmatch.fnmatchcase(lay.name, pat)), None)
            if hw is None:
                raise UserError(f"conv layer {lay.name} needs its output size: --spatial '{lay.name}=HxW' "
                                "(patterns allowed), or --n")
            out[lay.name] = [b * hw for b in batches]
        else:
            out[lay.name] = [b * s[0] for b in batches]
    return out


# ---- 3x3 convolutions: tuned as conv3x3 problems (ops.conv; tuning.model.conv_plan) ----------------------


def find_conv3x3_layers(ckpt: Checkpoint, include=None, exclude=None) -> list[Layer]:
    """The 3x3 convolution weights (4-D '*weight' tensors of shape (Cout, Cin, 3, 3)) in checkpoint order, --include /
    --exclude applied: Layers of kind conv3x3 whose weight is Cout x (Cin * 9), column ci * 9 + ky * 3 + kx (ops.conv's
    compressed format). find_layers leaves them out: they are conv3x3 problems, not SpMM ones."""
    inc, exc = _split_patterns(include), _split_patterns(exclude)
    out = []
    for name, t in ckpt.tensors.items():
        if sp.issparse(t) or not name.endswith("weight"):
            continue
        t = np.asarray(t)
        if not np.issubdtype(t.dtype, np.floating) or t.ndim != 4 or t.shape[2:] != (3, 3) or 0 in t.shape:
            continue
        if (inc and not _matches(name, inc)) or (exc and _matches(name, exc)):
            continue
        out.append(Layer(name, "conv3x3", t.reshape(t.shape[0], t.shape[1] * 9), tuple(t.shape)))
    return out


def select_conv3x3(layers: list[Layer], spatial=None, include=None) -> tuple[list[tuple[Layer, int, int, int]],
                                                                               list[str]]:
    """([(layer, H, W, stride)] of the 3x3 layers with a --spatial size (the first pattern that matches), [one-line
    notes of those skipped for want of one]). A layer that --include named is not skipped: it is a UserError."""
    rules = parse_spatial_specs(spatial)
    chosen, notes = [], []
    for lay in layers:
        hit = next(((h, w, s) for pat, h, w, s in rules if fnmatch.fnmatchcase(lay.name, pat)), None)
        if hit is not None:
            chosen.append((lay, *hit))
        elif _split_patterns(include):
            raise UserError(f"3x3 conv layer {lay.name} (named by --include) needs its input size: --spatial "
                            f"'{lay.name}=HxW' (or HxWs2 for stride 2), or leave it out: --exclude '{lay.name}'")
        else:
            notes.append(f"note: 3x3 conv layer {lay.name} skipped: no --spatial size for it "
                         f"(--spatial '{lay.name}=HxW', or HxWs2 for stride 2, tunes it as a conv3x3 problem)")
    return chosen, notes


# ---- the plan: distinct problems ------------------------------------------------------------------------


def density_key(d: float) -> float:
    return float(f"{d:.3g}")


@dataclass
class Job:
    """One distinct problem and the layers it stands for (the first one's matrix is tuned)."""

    m: int
    k: int
    density: float  # density key (3 significant digits)
    dtype: str
    n: int
    layers: list  # Layer objects, checkpoint order
    layout: str = "kn"  # the operand layout the layers run in (core.problem; layout_of)

    @property
    def rep(self) -> Layer:
        return self.layers[0]

    def problem(self) -> Problem:
        return Problem.from_matrix(self.rep.csr(), self.n, self.dtype, layout=self.layout)


# The layout each kind of layer runs in at the runtime: a Linear layer's SparseLinear computes y = x @ W^T + b with x
# and y as PyTorch holds them (nk); a 1x1 convolution is W @ X per image, X Cin x (H * W) (kn).
KIND_LAYOUT = {"linear": "nk", "conv1x1": "kn"}


def layout_of(lay: Layer, layout: str | None = None) -> str:
    """The layout a layer is tuned in: `layout` where given (tune-model --layout), else its kind's (KIND_LAYOUT)."""
    return layout if layout is not None else KIND_LAYOUT.get(lay.kind, "kn")


def plan(layers: list[Layer], ns: dict[str, list[int]], dtypes, layout: str | None = None) -> list[Job]:
    """Distinct (M, K, density key, dtype, N, layout) problems in order: dtype, then N, then first layer. layout: every
    layer's (kn or nk), or None: each layer's kind's (layout_of: nk for Linear layers, kn for 1x1 convolutions)."""
    if layout is not None:
        check_layout(layout)
    jobs: dict[tuple, Job] = {}
    for dt in dtypes:
        check_dtype(dt)
        for n in sorted({n for lay in layers for n in ns[lay.name]}):
            for lay in layers:
                if n not in ns[lay.name]:
                    continue
                key = (*lay.shape, density_key(lay.density), dt, n, layout_of(lay, layout))
                if key in jobs:
                    jobs[key].layers.append(lay)
                else:
                    jobs[key] = Job(lay.shape[0], lay.shape[1], key[2], dt, n, [lay], key[5])
    return list(jobs.values())
