"""examples/minilm/common.py on the CPU: a tiny random BERT written in the carried format (sparse bundle + dense npz +
config + tokenizer files) is rebuilt with the same outputs as the original with the same masked weights.
Needs torch and transformers (not in the test extra): skipped without them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from scripts import load_script
from sparse_autotune.core import checkpoint as mdl


def _load_common():
    """The example's common.py as a module of its own name (not `common` on sys.path, which others may use)."""
    return load_script("examples/minilm/common.py", "minilm_example_common")


@pytest.mark.parametrize("slim", [False, True])
def test_tiny_bert_rebuild_matches_masked_original(tmp_path, slim):
    torch = pytest.importorskip("torch", reason="torch is not installed (not in the test extra)")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (not in the test extra)")
    common = _load_common()
    ENCODER_LINEARS, build_encoder, cosines = common.ENCODER_LINEARS, common.build_encoder, common.cosines
    embed, encoder_linears = common.embed, common.encoder_linears
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "eating", "food", "the", "girl", "runs", "horse", "violin"]
    cfg = transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    orig = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    (tmp_path / "model").mkdir()
    cfg.to_json_file(str(tmp_path / "model" / "config.json"))
    (tmp_path / "model" / "vocab.txt").write_text("\n".join(words) + "\n")
    (tmp_path / "model" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                                          "do_lower_case": True}))
    sd = {k: v.detach().numpy() for k, v in orig.state_dict().items()}
    ck = mdl.Checkpoint("tiny", sd)
    layers = mdl.find_layers(ck, include=[f"encoder.layer.*.{p}.weight" for p in ENCODER_LINEARS])
    assert len(layers) == 2 * 6
    pruned = mdl.prune_layers(layers, 0.25)
    mdl.save_bundle(tmp_path / "minilm-d0.25.npz", pruned, mdl.biases_of(ck, pruned))
    names = {lay.name for lay in pruned} | set(mdl.biases_of(ck, pruned))
    dense = {k: (v.astype(np.float16) if "embeddings." in k and v.ndim == 2 else v)
             for k, v in sd.items() if k not in names and "position_ids" not in k}
    text = ["a man is eating food", "the girl runs", "a girl is eating the food"]
    if slim:  # prepare.py's default: the word table's rows at the token ids the inputs use (and the special tokens)
        from transformers import AutoTokenizer
        tok0 = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
        used = [*np.concatenate([np.asarray(x) for x in tok0(text)["input_ids"]]), *tok0.all_special_ids]
        rows, values = common.slim_table(dense[common.WORD_TABLE], used)
        assert len(rows) == len(words) - 2  # "horse" and "violin" are in no input: left out
        dense[common.WORD_TABLE], dense[common.WORD_ROWS] = values, rows
    np.savez(tmp_path / "minilm-dense.npz", **dense)
    with torch.no_grad():
        for lay in pruned:
            orig.get_parameter(lay.name).copy_(torch.from_numpy(lay.weight.toarray()))
            assert lay.nnz == round(0.25 * lay.shape[0] * lay.shape[1])
        for k, v in orig.state_dict().items():  # the carried embedding tables are fp16: the reference uses the same
            if "embeddings." in k and v.ndim == 2:
                v.copy_(v.half().float())
    model, tok = build_encoder(tmp_path, 0.25)
    assert len(encoder_linears(model)) == 12
    for name, lin in encoder_linears(model):
        np.testing.assert_array_equal(lin.weight.detach().numpy(), orig.get_parameter(name + ".weight").detach().numpy())
    got = embed(model, tok, text).numpy()
    ref = embed(orig, tok, text).numpy()
    assert cosines(got, ref).min() > 0.999999
    assert np.abs(got - ref).max() < 1e-5


def test_slim_word_table_round_trips_the_rows_it_keeps_and_refuses_ids_outside_the_table():
    common = _load_common()
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 8)).astype(np.float16)
    rows, values = common.slim_table(table, [[7, 3, 7], [49, 0, 3]])
    assert rows.dtype == np.int32 and rows.tolist() == [0, 3, 7, 49] and values.shape == (4, 8)
    full = common.full_table(values, rows, 50)
    assert full.shape == table.shape and full.dtype == table.dtype
    np.testing.assert_array_equal(full[rows], table[rows])
    others = np.setdiff1d(np.arange(50), rows)
    assert not full[others].any()
    with pytest.raises(ValueError, match="outside the table's 50 rows"):
        common.slim_table(table, [3, 50])
