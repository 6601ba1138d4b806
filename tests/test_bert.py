"""kiln's BERT against transformers: every task model, several configs, padded inputs, and the
real all-MiniLM-L6-v2 for sentence embeddings; plus the export paths the model file promises."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln.checkpoint import load_model
from kiln.errors import CheckpointError, InvalidArgumentError
from kiln.models import bert as kb

TOL = 1e-5  # fp32 max abs, every output

# different widths, head counts (head sizes 8, 16, 8), depths, FFN widths (also narrower than
# the model), activations, token-type vocabularies and LayerNorm eps
CONFIGS = {
    "gelu-2types": dict(),
    "relu-1type": dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=1, intermediate_size=64,
                       hidden_act="relu", type_vocab_size=1),
    "gelu_new-deep": dict(hidden_size=64, num_attention_heads=8, num_hidden_layers=3, intermediate_size=40,
                          hidden_act="gelu_new", layer_norm_eps=1e-5, max_position_embeddings=40),
}

# (transformers class, kiln class, config extras, output names)
MODELS = {
    "base": ("BertModel", kb.BertModel, {}, ("last_hidden_state", "pooler_output")),
    "sequence-classification": ("BertForSequenceClassification", kb.BertForSequenceClassification,
                                {"num_labels": 3}, ("logits",)),
    "token-classification": ("BertForTokenClassification", kb.BertForTokenClassification,
                             {"num_labels": 5}, ("logits",)),
    "question-answering": ("BertForQuestionAnswering", kb.BertForQuestionAnswering, {},
                           ("start_logits", "end_logits")),
    "masked-lm": ("BertForMaskedLM", kb.BertForMaskedLM, {}, ("logits",)),
}


def make_inputs(config: dict, batch: int = 3, seq: int = 13, seed: int = 0):
    """Random ids with padded rows (attention mask zeros) and a second segment where the
    config has two token types."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, config["vocab_size"], (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for b in range(1, batch):  # rows 1.. padded by different amounts
        mask[b, seq - 3 * b:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    types = torch.zeros(batch, seq, dtype=torch.int64)
    if config["type_vocab_size"] > 1:
        types[:, seq // 2:] = 1
        types = types * mask
    return ids, mask, types


def outputs_of(result, names) -> dict[str, torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return {names[0]: result}
    return {n: getattr(result, n) for n in names}


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_parity_with_transformers(save_hf_model, tiny_bert_config, config_name, model_name):
    hf_name, kiln_cls, extra, names = MODELS[model_name]
    config = {**tiny_bert_config, **CONFIGS[config_name], **extra}
    path, hf = save_hf_model(hf_name, seed=3, **CONFIGS[config_name], **extra)
    model = load_model(kiln_cls, path)
    assert model.random_keys == []
    ids, mask, types = make_inputs(config)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = outputs_of(model(ids, mask, types), names)
    for name in names:
        r = ref[name] if name != "logits" else ref.logits
        assert got[name].shape == r.shape, name
        err = (got[name] - r).abs().max().item()
        assert err <= TOL, f"{model_name}/{config_name} {name}: max abs {err:.2e} > {TOL}"
    # padding must be inert: a padded row equals the same row run alone without its padding
    n = int(mask[1].sum())
    with torch.no_grad():
        alone = outputs_of(model(ids[1:2, :n], mask[1:2, :n], types[1:2, :n]), names)
    for name in names:
        if got[name].dim() >= 2 and got[name].shape[1] == ids.shape[1]:  # per-token output
            err = (got[name][1:2, :n] - alone[name]).abs().max().item()
        else:
            err = (got[name][1:2] - alone[name]).abs().max().item()
        assert err <= TOL, f"{model_name}/{config_name} {name}: padding changed the output ({err:.2e})"


def test_output_types_and_shapes(tiny_bert_config):
    cfg = kb.BertConfig.from_dict({**tiny_bert_config, "num_labels": 4})
    ids, mask, types = make_inputs(tiny_bert_config, batch=2, seq=7)
    torch.manual_seed(0)
    with torch.no_grad():
        base = kb.BertModel(cfg).eval()(ids, mask, types)
        qa = kb.BertForQuestionAnswering(cfg).eval()(ids, mask, types)
        assert isinstance(base, kb.BertOutput) and base.last_hidden_state.shape == (2, 7, 32)
        assert base.pooler_output.shape == (2, 32)
        assert isinstance(qa, kb.QAOutput) and qa.start_logits.shape == qa.end_logits.shape == (2, 7)
        assert kb.BertForSequenceClassification(cfg).eval()(ids, mask, types).shape == (2, 4)
        assert kb.BertForTokenClassification(cfg).eval()(ids, mask, types).shape == (2, 7, 4)
        assert kb.BertForMaskedLM(cfg).eval()(ids, mask, types).shape == (2, 7, 120)
        emb = kb.BertForFeatureExtraction(cfg).eval()(ids, mask, types)
        assert emb.shape == (2, 32)
        np.testing.assert_allclose(emb.norm(dim=-1).numpy(), 1.0, atol=1e-6)
    mlm = kb.BertForMaskedLM(cfg)
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    assert mlm.cls.predictions.decoder.bias is mlm.cls.predictions.bias


def test_config_from_and_to_hf_dict(tiny_bert_config):
    import transformers

    cfg = kb.BertConfig.from_dict({**tiny_bert_config, "id2label": {"0": "neg", "1": "pos", "2": "mixed"},
                                   "hidden_dropout_prob": 0.3, "model_type": "bert"})
    assert cfg.num_labels == 3 and cfg.id2label[2] == "mixed" and cfg.label2id["pos"] == 1
    assert kb.BertConfig.from_dict({**tiny_bert_config, "num_labels": 5}).id2label[4] == "LABEL_4"
    assert kb.BertConfig.from_dict(tiny_bert_config).num_labels == 2  # transformers' default
    hf = transformers.BertConfig(**cfg.to_dict())
    assert hf.id2label == {0: "neg", 1: "pos", 2: "mixed"} and hf.hidden_size == 32
    assert kb.BertConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad, match", [
    ({"hidden_act": "swish"}, r"hidden_act='swish'.*gelu, gelu_new.*relu"),
    ({"position_embedding_type": "relative_key"}, r"position_embedding_type='relative_key'.*absolute"),
    ({"hidden_size": 30}, r"hidden_size=30 is not a multiple of num_attention_heads=4"),
    ({"model_type": "roberta"}, r"model_type='roberta'"),
    ({"is_decoder": True}, r"is_decoder"),
])
def test_config_rejects_what_kiln_does_not_implement(tiny_bert_config, bad, match):
    with pytest.raises(InvalidArgumentError, match=match):
        kb.BertConfig.from_dict({**tiny_bert_config, **bad})


def test_unsupported_config_in_a_checkpoint_is_a_checkpoint_error(save_hf_model):
    path, _ = save_hf_model("BertModel")
    import json
    cfg = json.loads((path / "config.json").read_text())
    cfg["hidden_act"] = "silu"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: hidden_act='silu'"):
        load_model(kb.BertModel, path)


def test_feature_extraction_pooling_option_is_checked(tiny_bert_config):
    with pytest.raises(InvalidArgumentError, match="pooling='sum'.*mean, cls, max"):
        kb.BertForFeatureExtraction(kb.BertConfig.from_dict(tiny_bert_config), pooling="sum")


# --- the real MiniLM: sentence embeddings ------------------------------------------------------

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply on Tuesday.",
    "Quantum computers use qubits.",
    "Café au lait, s'il vous plaît!",
]


@pytest.fixture(scope="module")
def minilm_reference(minilm_dir):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        hidden = hf(**batch).last_hidden_state
    return batch, hidden


def test_minilm_sentence_embeddings_match_transformers(minilm_dir, minilm_reference):
    batch, hidden = minilm_reference
    assert int((batch["attention_mask"] == 0).sum()) > 0, "the batch must contain padding"
    # sentence-transformers' mean pooling + Normalize, by hand
    m = batch["attention_mask"][:, :, None].float()
    ref = F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=-1)
    model = load_model(kb.BertForFeatureExtraction, minilm_dir)
    assert model.random_keys == []
    assert "embeddings.position_ids" in model.ignored_checkpoint_keys
    with torch.no_grad():
        emb = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    err = (emb - ref).abs().max().item()
    assert err <= TOL, f"MiniLM embeddings: max abs {err:.2e}"

    cos = (emb @ emb.T).numpy()
    paraphrase, unrelated = cos[0, 1], max(cos[0, 2], cos[0, 3], cos[1, 2], cos[1, 3])
    assert paraphrase > 0.5 and paraphrase > unrelated + 0.3, cos


def test_minilm_cls_and_max_pooling(minilm_dir, minilm_reference):
    batch, hidden = minilm_reference
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    cls_model = load_model(kb.BertForFeatureExtraction, minilm_dir, pooling="cls", normalize=False)
    max_model = load_model(kb.BertForFeatureExtraction, minilm_dir, pooling="max", normalize=False)
    masked = hidden.masked_fill(batch["attention_mask"][:, :, None] == 0, -1e9)
    with torch.no_grad():
        assert (cls_model(*args) - hidden[:, 0]).abs().max().item() <= TOL
        assert (max_model(*args) - masked.amax(1)).abs().max().item() <= TOL


# --- export: TorchScript trace, torch.export, ONNX ---------------------------------------------

EXPORT_CLASSES = [kb.BertModel, kb.BertForSequenceClassification, kb.BertForTokenClassification,
                  kb.BertForQuestionAnswering, kb.BertForMaskedLM, kb.BertForFeatureExtraction]


def _flat(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _dynamic_shapes():
    batch = torch.export.Dim("batch", min=1, max=32)
    seq = torch.export.Dim("sequence", min=2, max=64)
    return {name: {0: batch, 1: seq} for name in ("input_ids", "attention_mask", "token_type_ids")}


@pytest.mark.parametrize("cls", EXPORT_CLASSES, ids=lambda c: c.__name__)
def test_trace_and_export_are_shape_generic(tiny_bert_config, cls):
    """Traced / exported at (2, 16), run at other batch sizes and lengths (1 x 2 included)."""
    cfg = kb.BertConfig.from_dict(tiny_bert_config)
    torch.manual_seed(0)
    model = cls(cfg).eval()
    example = make_inputs(tiny_bert_config, batch=2, seq=16)
    others = [make_inputs(tiny_bert_config, batch=5, seq=37, seed=1),
              make_inputs(tiny_bert_config, batch=1, seq=2, seed=2)]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False).eval())
        program = torch.export.export(model, example, dynamic_shapes=_dynamic_shapes(), strict=False)
        for x in others:
            ref = _flat(model(*x))
            for name, got in (("trace", traced(*x)), ("export", program.module()(*x))):
                for r, g in zip(ref, _flat(got), strict=True):
                    assert g.shape == r.shape, name
                    assert (g - r).abs().max().item() <= TOL, name


@pytest.mark.parametrize("cls", [kb.BertForQuestionAnswering, kb.BertForFeatureExtraction],
                         ids=lambda c: c.__name__)
def test_onnx_export_runs_in_onnxruntime(tiny_bert_config, tmp_path, cls):
    ort = pytest.importorskip("onnxruntime")
    cfg = kb.BertConfig.from_dict(tiny_bert_config)
    torch.manual_seed(0)
    model = cls(cfg).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, make_inputs(tiny_bert_config, 2, 16), None, input_names=names,
                                    dynamic_shapes=_dynamic_shapes(), opset_version=20, dynamo=True,
                                    external_data=False)
    program.save(str(tmp_path / "m.onnx"), external_data=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for x in (make_inputs(tiny_bert_config, 4, 29, seed=1), make_inputs(tiny_bert_config, 1, 2, seed=2)):
        with torch.no_grad():
            ref = _flat(model(*x))
        got = session.run(None, {n: t.numpy() for n, t in zip(names, x)})
        for r, g in zip(ref, got, strict=True):
            assert np.abs(g - r.numpy()).max() <= TOL
