"""DistilBERT beyond the registry-driven tests: sinusoidal position tables, pre-training
(masked-LM) checkpoints under a task head, and an engine that takes no token types."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kiln import registry
from kiln.checkpoint import load_model, random_checkpoint
from kiln.models.distilbert import DistilBertForSequenceClassification, DistilBertModel, sinusoids
from kiln.testing import make_checkpoint


@torch.no_grad()
def test_sinusoidal_positions_are_transformers_table(tmp_path):
    import transformers
    from transformers.models.distilbert.modeling_distilbert import _create_sinusoidal_embeddings

    ref = _create_sinusoidal_embeddings(128, 32, torch.empty(128, 32))
    assert torch.allclose(sinusoids(128, 32), ref, atol=1e-6)
    # a checkpoint with sinusoidal positions loads (the table is stored) and computes what transformers does
    d = registry.get("distilbert", "text-classification")
    ckpt, hf = make_checkpoint(d, tmp_path / "ckpt", sinusoidal_pos_embds=True)
    ours = load_model(d.model, ckpt)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    assert (ours(ids, mask) - hf(input_ids=ids, attention_mask=mask).logits).abs().max() < 1e-5
    # kiln's own random weights (a config-only recipe) draw the table as transformers initialises it
    cfg = tmp_path / "config"
    cfg.mkdir()
    config = {**json.loads((ckpt / "config.json").read_text()), "sinusoidal_pos_embds": True}
    (cfg / "config.json").write_text(json.dumps(config))
    model = load_model(d.model, random_checkpoint(d.model, cfg, out_dir=tmp_path / "random"))
    table = model.distilbert.embeddings.position_embeddings.weight
    assert torch.allclose(table, ref, atol=1e-6)
    fresh = transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(**config))
    assert torch.allclose(fresh.distilbert.embeddings.position_embeddings.weight, table, atol=1e-6)


@torch.no_grad()
def test_a_pretraining_checkpoint_under_a_task_head(tmp_path):
    """distilbert-base-uncased is a DistilBertForMaskedLM: its body loads under a classifier whose
    head is drawn from the seed; its masked-LM keys are known and unused."""
    import transformers

    d = registry.get("distilbert", "text-classification")
    mlm_ckpt, _ = make_checkpoint(d, tmp_path / "mlm", architectures=["DistilBertForMaskedLM"])
    cfg = transformers.AutoConfig.from_pretrained(mlm_ckpt)
    torch.manual_seed(3)
    mlm = transformers.DistilBertForMaskedLM(cfg).eval()
    mlm.save_pretrained(tmp_path / "mlm")
    model = load_model(DistilBertForSequenceClassification, tmp_path / "mlm", random_head=True, seed=1)
    assert model.random_keys == ["classifier.bias", "classifier.weight", "pre_classifier.bias",
                                 "pre_classifier.weight"]
    assert {"vocab_projector.bias", "vocab_transform.weight"} <= set(model.ignored_checkpoint_keys)
    ids = torch.randint(0, 1000, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ref = mlm.distilbert(input_ids=ids, attention_mask=mask).last_hidden_state
    ours = model.distilbert(ids, mask)
    real = mask.bool()
    assert (ours - ref)[real].abs().max() < 1e-5
    # the base model alone loads the same body (keys without the "distilbert." prefix)
    base = load_model(DistilBertModel, tmp_path / "mlm")
    assert (base(ids, mask) - ours).abs().max() == 0


def test_the_engine_takes_no_token_types(deployable_engine):
    from conftest import engine_of

    from kiln.manifest import read_manifest
    from kiln.pipelines import pipeline

    engine, _, _ = engine_of(deployable_engine, "distilbert", "question-answering")
    m = read_manifest(engine)
    assert [s.name for s in m.inputs] == ["input_ids", "attention_mask"]
    feed, _ = pipeline(engine, load_engine=False).preprocess(["Who?"], ["Ada did."])
    assert sorted(feed) == ["attention_mask", "input_ids"]
    assert np.all(feed["attention_mask"] == 1)
    with pytest.raises(Exception, match="token_type_ids"):
        pipeline(engine).run({**feed, "token_type_ids": np.zeros_like(feed["input_ids"])})
