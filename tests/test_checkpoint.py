"""Checkpoint loading is strict and says what is wrong; random heads are seeded; kiln -> HF
checkpoint -> kiln / transformers round-trips."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from kiln.checkpoint import (checkpoint_hash, config_from_dir, load_model, read_state_dict,
                             save_model)
from kiln.errors import CheckpointError
from kiln.models import bert as kb

TOL = 1e-5


def _inputs(vocab: int = 120, batch: int = 2, seq: int = 9):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[1, 5:] = 0
    types = torch.zeros(batch, seq, dtype=torch.int64)
    types[:, 4:] = 1
    return ids, mask, types


def _rewrite(path, edit):
    """Apply edit(state_dict) to a checkpoint's model.safetensors."""
    state = load_file(str(path / "model.safetensors"))
    edit(state)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def _max_abs(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


# --- strictness ---------------------------------------------------------------------------------

def test_missing_key_is_named_with_its_shape(save_hf_model):
    path, _ = save_hf_model("BertForSequenceClassification")
    key = "bert.encoder.layer.1.attention.self.query.weight"
    _rewrite(path, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=rf"missing key '{key}' \(model shape \[32, 32\]\)"):
        load_model(kb.BertForSequenceClassification, path)


def test_unexpected_key_is_named_with_its_shape(save_hf_model):
    path, _ = save_hf_model("BertForTokenClassification")
    _rewrite(path, lambda s: s.update({"bert.encoder.layer.0.adapter.weight": torch.zeros(4, 3)}))
    expected = r"unexpected key 'bert.encoder.layer.0.adapter.weight' \(checkpoint shape \[4, 3\]\)"
    with pytest.raises(CheckpointError, match=expected):
        load_model(kb.BertForTokenClassification, path)


def test_shape_mismatch_names_both_shapes_and_every_problem_is_listed(save_hf_model):
    path, _ = save_hf_model("BertForSequenceClassification", num_labels=3)
    cfg = json.loads((path / "config.json").read_text())
    cfg["vocab_size"] = 121
    (path / "config.json").write_text(json.dumps(cfg))
    _rewrite(path, lambda s: (s.pop("bert.pooler.dense.bias"), s.update({"extra": torch.ones(2)})))
    with pytest.raises(CheckpointError) as info:
        load_model(kb.BertForSequenceClassification, path)
    msg = str(info.value)
    assert "(3 problems)" in msg
    assert ("shape mismatch for 'bert.embeddings.word_embeddings.weight': checkpoint [120, 32], "
            "model [121, 32]") in msg
    assert "missing key 'bert.pooler.dense.bias'" in msg
    assert "unexpected key 'extra'" in msg
    assert str(path / "model.safetensors") in msg


def test_base_checkpoint_keys_are_reported_with_both_names(minilm_dir, tmp_path):
    shutil.copy(minilm_dir / "config.json", tmp_path)
    state = load_file(str(minilm_dir / "model.safetensors"))
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][:100]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'bert.embeddings.word_embeddings.weight' \(checkpoint key "
                       r"'embeddings.word_embeddings.weight'\): checkpoint \[100, 384\], model \[30522, 384\]"):
        load_model(kb.BertForFeatureExtraction, tmp_path)


def test_missing_config_and_missing_or_unreadable_weights(save_hf_model, tmp_path):
    with pytest.raises(CheckpointError, match=r"no config.json"):
        load_model(kb.BertModel, tmp_path)
    path, _ = save_hf_model("BertModel")
    (path / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match=r"no weights; expected model.safetensors or pytorch_model.bin"):
        load_model(kb.BertModel, path)
    (path / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match=r"model.safetensors: not readable as weights"):
        load_model(kb.BertModel, path)
    (path / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"config.json: not readable as JSON"):
        load_model(kb.BertModel, path)


# --- formats ------------------------------------------------------------------------------------

def test_pytorch_model_bin(save_hf_model):
    path, hf = save_hf_model("BertForQuestionAnswering")
    torch.save(load_file(str(path / "model.safetensors")), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    model = load_model(kb.BertForQuestionAnswering, path)
    x = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=x[0], attention_mask=x[1], token_type_ids=x[2])
        got = model(*x)
    assert _max_abs(got, (ref.start_logits, ref.end_logits)) <= TOL


def test_sharded_and_half_precision_checkpoints(save_hf_model, tmp_path):
    path, hf = save_hf_model("BertForTokenClassification", num_labels=4)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = load_model(kb.BertForTokenClassification, tmp_path)
    x = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=x[0], attention_mask=x[1], token_type_ids=x[2]).logits
        assert (model(*x) - ref).abs().max().item() <= TOL
        # an fp16 checkpoint loads into the fp32 model (values rounded to fp16)
        _rewrite(path, lambda s: s.update({k: v.half() for k, v in s.items()}))
        half = load_model(kb.BertForTokenClassification, path)
        assert half.classifier.weight.dtype == torch.float32
        assert (half.classifier.weight - hf.classifier.weight.half().float()).abs().max().item() == 0
    digest = hashlib.sha256()
    for shard in sorted(tmp_path.glob("model-*.safetensors")):
        digest.update(shard.read_bytes())
    assert checkpoint_hash(tmp_path) == digest.hexdigest()


def test_pretraining_checkpoint_and_legacy_names(save_hf_model):
    """A BertForPreTraining checkpoint (bert-base-uncased's layout) written the old way: TF
    LayerNorm gamma/beta names, the position_ids buffer, tied decoder duplicates."""
    path, hf = save_hf_model("BertForPreTraining")

    def legacy(state):
        for k in [k for k in state if k.endswith("LayerNorm.weight") or k.endswith("LayerNorm.bias")]:
            state[k.replace(".weight", ".gamma").replace(".bias", ".beta")] = state.pop(k)
        state["bert.embeddings.position_ids"] = torch.arange(64)[None]
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()

    _rewrite(path, legacy)
    mlm = load_model(kb.BertForMaskedLM, path)
    assert mlm.ignored_checkpoint_keys == sorted([
        "bert.embeddings.position_ids", "bert.pooler.dense.bias", "bert.pooler.dense.weight",
        "cls.predictions.decoder.bias", "cls.predictions.decoder.weight",
        "cls.seq_relationship.bias", "cls.seq_relationship.weight"])
    x = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=x[0], attention_mask=x[1], token_type_ids=x[2])
        assert (mlm(*x) - ref.prediction_logits).abs().max().item() <= TOL
        base = load_model(kb.BertModel, path)  # "bert." stripped, pre-training heads ignored
        assert "cls.seq_relationship.weight" in base.ignored_checkpoint_keys
        hf_base = hf.bert(input_ids=x[0], attention_mask=x[1], token_type_ids=x[2])
        assert _max_abs(base(*x), (hf_base.last_hidden_state, hf_base.pooler_output)) <= TOL


# --- random heads ---------------------------------------------------------------------------------

def test_random_head_on_the_base_minilm(minilm_dir):
    with pytest.raises(CheckpointError, match=r"missing key 'classifier.weight'.*random_head=True"):
        load_model(kb.BertForSequenceClassification, minilm_dir)
    a = load_model(kb.BertForSequenceClassification, minilm_dir, random_head=True, seed=0)
    b = load_model(kb.BertForSequenceClassification, minilm_dir, random_head=True, seed=0)
    c = load_model(kb.BertForSequenceClassification, minilm_dir, random_head=True, seed=1)
    assert a.random_keys == ["classifier.bias", "classifier.weight"]
    assert a.ignored_checkpoint_keys == ["embeddings.position_ids"]  # checkpoint names
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    assert torch.count_nonzero(a.classifier.bias) == 0
    assert abs(a.classifier.weight.std().item() - 0.02) < 0.002  # normal(0, initializer_range)
    # the body is the checkpoint's, untouched by the head's initialisation
    real = load_file(str(minilm_dir / "model.safetensors"))
    for key in ("pooler.dense.weight", "encoder.layer.5.output.dense.weight", "embeddings.LayerNorm.bias"):
        assert torch.equal(a.state_dict()["bert." + key], real[key])


def test_random_head_labels_and_mlm_head_init(minilm_dir):
    labels = {"0": "O", "1": "B-PER", "2": "I-PER"}
    tok = load_model(kb.BertForTokenClassification, minilm_dir, random_head=True,
                     config_overrides={"id2label": labels})
    assert tok.classifier.weight.shape == (3, 384) and tok.config.id2label[1] == "B-PER"
    # checkpoint names: token heads skip the pooler
    assert tok.ignored_checkpoint_keys == ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]
    mlm = load_model(kb.BertForMaskedLM, minilm_dir, random_head=True, seed=5)
    assert mlm.random_keys == sorted(kb.BertForMaskedLM.head_keys)
    p = mlm.cls.predictions
    assert torch.all(p.transform.LayerNorm.weight == 1) and torch.count_nonzero(p.transform.LayerNorm.bias) == 0
    assert torch.count_nonzero(p.bias) == 0 and p.transform.dense.weight.std().item() > 0.01
    # a random head is only for head keys: a missing body key is still an error
    qa = load_model(kb.BertForQuestionAnswering, minilm_dir, random_head=True)
    assert qa.random_keys == ["qa_outputs.bias", "qa_outputs.weight"]


def test_random_head_does_not_cover_missing_body_keys(minilm_dir, tmp_path):
    shutil.copy(minilm_dir / "config.json", tmp_path)
    state = load_file(str(minilm_dir / "model.safetensors"))
    del state["encoder.layer.0.intermediate.dense.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 problem\).*\n.*missing key 'bert.encoder.layer.0.intermediate"
                                              r".dense.bias' \(model shape \[1536\]\)$"):
        load_model(kb.BertForSequenceClassification, tmp_path, random_head=True)


# --- saving -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hf_name, kiln_cls, extra", [
    ("BertForSequenceClassification", kb.BertForSequenceClassification, {"num_labels": 3}),
    ("BertForMaskedLM", kb.BertForMaskedLM, {}),
    ("BertModel", kb.BertModel, {}),
])
def test_save_load_round_trip(save_hf_model, tmp_path, hf_name, kiln_cls, extra):
    import transformers

    path, hf = save_hf_model(hf_name, **extra)
    model = load_model(kiln_cls, path)
    save_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [hf_name] and config["model_type"] == "bert"
    again = load_model(kiln_cls, tmp_path)
    assert again.ignored_checkpoint_keys == []
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    hf_again = getattr(transformers, hf_name).from_pretrained(tmp_path).eval()
    x = _inputs()
    with torch.no_grad():
        a = hf(input_ids=x[0], attention_mask=x[1], token_type_ids=x[2])
        b = hf_again(input_ids=x[0], attention_mask=x[1], token_type_ids=x[2])
    for key in a.keys():
        assert torch.equal(a[key], b[key]), key


def test_save_feature_extraction_and_random_head_as_hf_checkpoints(minilm_dir, tmp_path):
    emb = load_model(kb.BertForFeatureExtraction, minilm_dir)
    save_model(emb, tmp_path / "emb")
    saved = load_file(str(tmp_path / "emb" / "model.safetensors"))
    assert "embeddings.word_embeddings.weight" in saved  # a BertModel (base) checkpoint
    assert json.loads((tmp_path / "emb" / "config.json").read_text())["architectures"] == ["BertModel"]
    assert load_model(kb.BertForFeatureExtraction, tmp_path / "emb").ignored_checkpoint_keys == []

    head = load_model(kb.BertForSequenceClassification, minilm_dir, random_head=True, seed=3)
    save_model(head, tmp_path / "head")
    reloaded = load_model(kb.BertForSequenceClassification, tmp_path / "head")  # a full checkpoint now
    assert reloaded.random_keys == []
    assert torch.equal(reloaded.classifier.weight, head.classifier.weight)


# --- config and hash ----------------------------------------------------------------------------------

def test_config_from_dir_and_checkpoint_hash(minilm_dir, tmp_path):
    cfg = config_from_dir(minilm_dir)
    assert isinstance(cfg, kb.BertConfig)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 6, 12)
    digest = hashlib.sha256((minilm_dir / "model.safetensors").read_bytes()).hexdigest()
    assert checkpoint_hash(minilm_dir) == digest
    assert len(read_state_dict(minilm_dir)) == 6 * 16 + 6 + 2  # layers, embeddings (+ position_ids), pooler

    shutil.copy(minilm_dir / "config.json", tmp_path)
    state = load_file(str(minilm_dir / "model.safetensors"))
    state["pooler.dense.bias"] = state["pooler.dense.bias"] + 1
    save_file(state, str(tmp_path / "model.safetensors"))
    assert checkpoint_hash(tmp_path) != digest

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    with pytest.raises(CheckpointError, match=r"model_type 'gpt_neox'.*not a kiln family.*'bert'"):
        config_from_dir(tmp_path)
