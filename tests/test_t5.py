"""T5 beyond the registry-driven tests: the relative position buckets, the ReLU (v1.0) feed-forward
with the tied, scaled head, a decode step's position bias from the absolute position, and the
task settings a checkpoint's task_specific_params carry."""

from __future__ import annotations

import json

import pytest
import torch

from kiln import registry
from kiln.checkpoint import load_model
from kiln.errors import InvalidArgumentError
from kiln.models.t5 import T5Config, relative_position_bucket
from kiln.testing import graphs_equal_transformers, make_checkpoint

SUMMARIZATION = registry.get("t5", "summarization")


@pytest.mark.parametrize("buckets,distance", [(32, 128), (16, 32), (8, 20)])
def test_relative_position_buckets_are_transformers(buckets, distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-400, 401)[None, :] - torch.arange(0, 3)[:, None]
    for bidirectional in (True, False):
        ours = relative_position_bucket(relative, bidirectional, buckets, distance)
        ref = T5Attention._relative_position_bucket(relative, bidirectional, buckets, distance)
        assert torch.equal(ours, ref), (bidirectional, (ours != ref).nonzero()[:5])


@torch.no_grad()
def test_relu_v1_0_with_the_tied_scaled_head(tmp_path):
    """t5-small's kind: ReLU feed-forward, a tied head, the decoder output scaled by d_model^-0.5."""
    ckpt, hf = make_checkpoint(SUMMARIZATION, tmp_path / "ckpt", feed_forward_proj="relu")
    assert hf.config.scale_decoder_outputs and hf.config.feed_forward_proj == "relu"
    model = load_model(SUMMARIZATION.model, ckpt)
    assert model.output_scale == pytest.approx(hf.config.d_model**-0.5)
    assert model.lm_head.weight is model.shared.weight
    graphs_equal_transformers(SUMMARIZATION, ckpt, hf)


@torch.no_grad()
def test_a_decode_step_takes_its_bias_from_the_absolute_position(tmp_path):
    """Prefill 5 tokens, then one token at position 5 over the cache: the logits are transformers'
    for the whole 6-token sequence's last position (the causal bias at key - query, not at 0)."""
    ckpt, hf = make_checkpoint(SUMMARIZATION, tmp_path / "ckpt")
    model = load_model(SUMMARIZATION.model, ckpt)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, hf.config.vocab_size, (2, 9), generator=g)
    src_mask = torch.ones_like(src)
    src_mask[1, 6:] = 0
    dec = torch.randint(3, hf.config.vocab_size, (2, 6), generator=g)
    dec[:, 0] = 0
    ref = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=dec).logits[:, -1]
    cross = model.encode(src, src_mask)
    positions = torch.arange(5)[None].expand(2, 5)
    _, cache = model.decode(dec[:, :5], torch.ones(2, 5, dtype=torch.long), positions, src_mask,
                            model.empty_cache(2), cross)
    logits, present = model.decode(dec[:, 5:], torch.ones(2, 6, dtype=torch.long), torch.full((2, 1), 5),
                                   src_mask, cache, cross)
    assert present.shape[-2] == 6
    assert (logits[:, -1] - ref).abs().max() < 1e-4
    # the same step with the position wrong gives other logits: the position is what is used
    wrong, _ = model.decode(dec[:, 5:], torch.ones(2, 6, dtype=torch.long), torch.full((2, 1), 0), src_mask,
                            cache, cross)
    assert (wrong[:, -1] - ref).abs().max() > 1e-3


def test_task_settings_come_from_task_specific_params():
    from pathlib import Path

    config = T5Config.from_dict(json.loads(Path("export/configs/t5-small/config.json").read_text()))
    summarize = config.task_settings("summarization")
    assert summarize["prefix"] == "summarize: " and summarize["num_beams"] == 4
    assert config.task_settings("translation")["prefix"] == "translate English to German: "
    only_fr = T5Config(task_specific_params={"translation_en_to_fr": {"prefix": "translate English to French: "}})
    assert only_fr.task_settings("translation")["prefix"] == "translate English to French: "
    assert T5Config().task_settings("summarization") == {}


def test_the_engine_puts_the_prefix_first(deployable_engine):
    from conftest import engine_of

    from kiln.manifest import read_manifest
    from kiln.pipelines import pipeline

    engine, _, _ = engine_of(deployable_engine, "t5", "summarization")
    m = read_manifest(engine)
    assert m.processing["prefix"] == "summarize: "
    assert m.generation["decoder_start_token_id"] == 0 == m.generation["pad_token_id"]
    pipe = pipeline(engine, load_engine=False)
    prompts, _ = pipe.preprocess(["The kiln was hot."])
    assert prompts[0] == pipe.tokenizer.encode("summarize: The kiln was hot.")
    assert prompts[0][-1] == 1  # </s>


@pytest.mark.parametrize("value", ["gated-relu-x", "relu-gated", "softmax"])
def test_bad_feed_forward_kinds_are_refused(value):
    with pytest.raises(InvalidArgumentError, match="feed_forward_proj"):
        T5Config(feed_forward_proj=value)


def test_real_size_recipes_are_t5_small():
    from pathlib import Path

    from kiln.recipe import load_recipe

    for name in ("t5-summarization", "t5-translation"):
        r = load_recipe(name)
        config = T5Config.from_dict(json.loads((Path("export") / r.checkpoint / "config.json").read_text()))
        assert (config.d_model, config.num_layers, config.feed_forward_proj, config.vocab_size) == (512, 6, "relu", 32128)
        assert config.scale_decoder_outputs
