"""Mask2Former beyond the registry-driven tests: other Swin layouts against transformers, the two
deformable-attention implementations against each other, the checkpoint quirks, and the three
post-processings against transformers' on the same raw outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_checkpoint

from kiln import registry
from kiln.checkpoint import load_model
from kiln.deploy import universal_outputs
from kiln.errors import CheckpointError
from kiln.models.mask2former import TINY_BACKBONE, msda_gather, msda_grid_sample

D = registry.get("mask2former", "image-segmentation")


def _outputs_equal(ckpt, hf, size: int, batch: int = 2, atol: float = 1e-4, **kwargs) -> None:
    x = torch.from_numpy(np.random.default_rng(0).uniform(-2, 2.5, (batch, 3, size, size)).astype(np.float32))
    with torch.no_grad():
        ref = universal_outputs(hf, {"pixel_values": x}, {})  # with its switch logits
        for impl in ("gather", "grid_sample"):
            ours = load_model(D.model, ckpt, deformable_attention=impl, **kwargs)(x)
            assert ours.masks_queries_logits.shape == (batch, hf.config.num_queries, size // 4, size // 4)
            for name, want in ref.items():
                got = getattr(ours, name)
                assert got.shape == want.shape, (name, got.shape, want.shape)
                err = float((got - want).abs().max())
                assert err <= atol, (impl, name, err)
                assert float(want.abs().max()) > 1e-2


@torch.no_grad()
def test_a_w12_swin_whose_last_stage_is_one_window_equals_transformers(tmp_path):
    """At 384 with window 12 the last stage (12 x 12) is one window, which transformers' backbone
    still shifts (always_partition); pre-LN decoder layers and the transformer's input projections
    (feature_size != hidden_dim) on the way."""
    backbone = {**TINY_BACKBONE, "image_size": 384, "window_size": 12, "depths": [2, 2, 2, 2]}
    ckpt, hf = make_checkpoint(D, tmp_path / "w12", backbone_config=backbone, hidden_dim=16, pre_norm=True)
    _outputs_equal(ckpt, hf, 384)


@torch.no_grad()
def test_batch_one_and_many_and_other_sizes_equal_transformers(tmp_path):
    """The tiny w7 layout at sizes that pad every stage differently (64: 16/8/4/2 maps in 7-windows;
    96; 160), batch 1 and 3."""
    ckpt, hf = make_checkpoint(D, tmp_path / "w7")
    for size, batch in ((64, 1), (96, 3), (160, 1)):
        _outputs_equal(ckpt, hf, size, batch)


def test_the_two_deformable_attention_implementations_are_equal():
    """grid_sample (transformers' arithmetic) and the gather version agree to 1e-6, sampling
    locations far outside the maps and exactly on their edges included."""
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 5), (6, 10), (12, 20)]
    B, nh, hd, Q, L, P = 2, 2, 4, 7, 3, 4
    value = torch.randn(B, sum(h * w for h, w in shapes), nh, hd, generator=g)
    loc = torch.rand(B, Q, nh, L, P, 2, generator=g) * 1.6 - 0.3  # 30 % beyond each side
    loc[0, 0, 0, :, 0] = torch.tensor([0.0, 0.0])
    loc[0, 0, 0, :, 1] = torch.tensor([1.0, 1.0])
    loc[0, 1, 0, :, 0] = torch.tensor([-5.0, 7.0])
    weights = torch.rand(B, Q, nh, L, P, generator=g).softmax(-1)
    a = msda_grid_sample(value, shapes, loc, weights)
    b = msda_gather(value, shapes, loc, weights)
    assert a.shape == (B, Q, nh * hd)
    assert float((a - b).abs().max()) <= 1e-6
    # at Swin-tiny's level sizes at 384 (12, 24, 48), every position a query, unit-variance values:
    # outputs up to ~2.5 agree to ~1e-6 of their size (fp32 rounding of 12 weighted terms)
    shapes = [(12, 12), (24, 24), (48, 48)]
    S = sum(h * w for h, w in shapes)
    value = torch.randn(1, S, 8, 32, generator=g)
    loc = torch.rand(1, S, 8, L, P, 2, generator=g) * 1.4 - 0.2
    weights = torch.rand(1, S, 8, L, P, generator=g).softmax(-1)
    a = msda_grid_sample(value, shapes, loc, weights)
    assert float((a - msda_gather(value, shapes, loc, weights)).abs().max()) <= 5e-6


def test_checkpoint_quirks(tmp_path):
    """The hub's files lack swin.layernorm (transformers 5 saves it): both load; criterion.empty_weight
    is known and unused; any other stray key is refused by name."""
    from safetensors.torch import load_file, save_file

    ckpt, _ = make_checkpoint(D, tmp_path / "ckpt")
    model = load_model(D.model, ckpt)
    assert "criterion.empty_weight" in model.ignored_checkpoint_keys
    state = load_file(ckpt / "model.safetensors")
    for k in [k for k in state if ".swin.layernorm." in k]:
        del state[k]
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    assert load_model(D.model, ckpt).ignored_checkpoint_keys == ["criterion.empty_weight"]
    state["model.pixel_level_module.encoder.extra.weight"] = torch.zeros(1)
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="unexpected key 'model.pixel_level_module.encoder.extra.weight'"):
        load_model(D.model, ckpt)


def _raw_outputs(batch: int = 3, queries: int = 10, labels: int = 6, size: int = 24, seed: int = 0):
    """Raw outputs shaped like a trained model's: sharp class logits (some queries confident, some
    "no object"), smooth mask logits of blobs with clear insides and outsides."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(batch, queries, labels + 1, generator=g) * 4
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.rand(batch, queries, 2, generator=g) * 2 - 1
    radius = torch.rand(batch, queries, generator=g) * 0.6 + 0.2
    dist = ((yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2).sqrt()
    masks = (radius[..., None, None] - dist) * 12 + torch.randn(batch, queries, size, size, generator=g) * 0.3
    return cls, masks


def _processor():
    import transformers

    return transformers.Mask2FormerImageProcessorPil()


def test_post_processing_equals_transformers_on_the_same_outputs():
    """Semantic, instance and panoptic, with and without target sizes, at several thresholds,
    label_ids_to_fuse included: the same maps and the same segments (ids, labels, fused, scores)
    as transformers' Mask2FormerImageProcessor on identical raw outputs."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerForUniversalSegmentationOutput

    from kiln.processing import mask2former as m2f

    proc = _processor()
    cls, masks = _raw_outputs()
    out = Mask2FormerForUniversalSegmentationOutput(class_queries_logits=cls, masks_queries_logits=masks)
    sizes = [(50, 70), (33, 33), (120, 90)]
    for target in (None, sizes):
        ours = m2f.post_process_semantic_segmentation(cls.numpy(), masks.numpy(), target)
        theirs = proc.post_process_semantic_segmentation(out, target_sizes=target)
        assert all(np.array_equal(o, t.numpy()) for o, t in zip(ours, theirs))
        for threshold in (0.0, 0.5, 0.8):
            ours = m2f.post_process_instance_segmentation(cls.numpy(), masks.numpy(), threshold, target)
            theirs = proc.post_process_instance_segmentation(out, threshold=threshold, target_sizes=target)
            for o, t in zip(ours, theirs):
                assert np.array_equal(o["segmentation"], t["segmentation"].numpy().astype(np.int32))
                assert o["segments_info"] == t["segments_info"]
            for fuse in (None, {1, 3}):
                for overlap in (0.8, 0.5):
                    ours = m2f.post_process_panoptic_segmentation(
                        cls.numpy(), masks.numpy(), threshold, 0.5, overlap, fuse, target
                    )
                    theirs = proc.post_process_panoptic_segmentation(
                        out,
                        threshold=threshold,
                        overlap_mask_area_threshold=overlap,
                        label_ids_to_fuse=fuse,
                        target_sizes=target,
                    )
                    for o, t in zip(ours, theirs):
                        assert np.array_equal(o["segmentation"], t["segmentation"].numpy().astype(np.int32))
                        assert o["segments_info"] == t["segments_info"]
    found = m2f.post_process_panoptic_segmentation(cls.numpy(), masks.numpy(), 0.5, label_ids_to_fuse={1, 3})
    assert sum(len(r["segments_info"]) for r in found) > 3, "the outputs make segments"
    assert any(s["was_fused"] for r in found for s in r["segments_info"])


def test_the_task_check_holds_every_subtask():
    """The parity check passes identical outputs, and fails a changed label, a dropped query and
    a shifted mask."""
    from kiln.deploy import universal_segmentation_check

    check = universal_segmentation_check()
    cls, masks = _raw_outputs()
    ref = {"class_queries_logits": cls.numpy(), "masks_queries_logits": masks.numpy()}
    ok, detail = check(ref, dict(ref), {})
    assert ok, detail
    kept = np.argwhere(torch.softmax(cls, -1)[..., :-1].max(-1).values.numpy() > 0.6)
    b, q = kept[0]
    relabelled = cls.numpy().copy()
    relabelled[b, q, :-1] = relabelled[b, q, :-1][::-1]
    assert not check(ref, {**ref, "class_queries_logits": relabelled}, {})[0]
    shifted = masks.numpy().copy()
    shifted[b, q] = np.roll(shifted[b, q], 5, axis=0)
    assert not check(ref, {**ref, "masks_queries_logits": shifted}, {})[0]


def _one_switch_flipped(model, x: torch.Tensor, k: int) -> dict:
    """What a candidate computes when fp32 rounding sends switch k (a flat index into
    attention_mask_logits) the other way: its logit just across the threshold, and every later
    switch decided on that path (reruns until the decisions settle, one layer per round)."""
    block = model.blocked_positions
    logits = model(x).attention_mask_logits
    across = -1e-6 if not bool(block(logits.flatten()[k])) else 1e-6  # sigmoid(±1e-9) rounds to 0.5
    for _ in range(32):
        pinned = logits.flatten().clone()
        pinned[k] = across
        out = model.forward_pinned(x, pinned.view_as(logits))
        settled = out.attention_mask_logits.flatten().clone()
        settled[k] = across
        if torch.equal(block(settled), block(pinned)):
            break
        logits = settled.view_as(logits)
    return {**{n: v.numpy() for n, v in out._asdict().items()}, "attention_mask_logits": settled.view_as(logits).numpy()}


@torch.no_grad()
def test_parity_judges_a_flipped_switch_on_the_candidates_own_switches(deployable_engine, tmp_path):
    """A candidate whose one masked-attention switch per batch went the other way (what fp32
    reordering does to a logit near 0; the later layers then attend elsewhere and the outputs move
    by more than their tolerance): parity reruns the reference on the candidate's switches and
    passes it where the reference's logit at that switch was within the switch table's atol of 0,
    and fails it where it was not (a decisive switch flipped, or the atol below that logit)."""
    import json
    import shutil

    from kiln.backends import Runner, eager_model
    from kiln.manifest import read_graph_manifest
    from kiln.parity import parity_feeds, run_parity

    engine, _, _ = deployable_engine(D)
    manifest = read_graph_manifest(engine)
    model = eager_model(manifest).model
    feeds = parity_feeds(manifest)
    own = [model(torch.from_numpy(f["pixel_values"])).attention_mask_logits.flatten() for f in feeds]

    def parity(pick, switch_atol: float):
        def infer(feed):
            x = torch.from_numpy(feed["pixel_values"])
            with torch.no_grad():
                return _one_switch_flipped(model, x, pick(model(x).attention_mask_logits.flatten()))

        copy = tmp_path / f"engine-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(engine, copy)
        spec = json.loads((copy / "manifest.json").read_text())
        table = {p: {o: t.to_json() for o, t in outs.items()} for p, outs in D.graphs[0].tolerances.items()}
        table["fp32"]["attention_mask_logits"]["atol"] = switch_atol
        spec["tolerances"] = table
        (copy / "manifest.json").write_text(json.dumps(spec))
        runner = Runner("flipped", "python", lambda: infer)
        return run_parity(copy, backends=["flipped"], extra=[runner]).backends["flipped"]

    nearest = lambda logits: int(logits.abs().argmin())  # noqa: E731
    margin = max(float(o.abs().min()) for o in own)  # the farthest of the flipped logits from 0
    near = parity(nearest, margin * 1.01 + 2e-6)
    assert near.passed, near.task_detail
    assert "judged on its own switches (1 of" in near.task_detail, near.task_detail
    # the same flips, with the switch atol below the reference's logit there: caught
    assert not parity(nearest, margin / 2).passed
    # a decisive switch flipped: caught at any atol the table could reasonably hold
    far = parity(lambda logits: int(logits.abs().argmax()), margin * 1.01 + 2e-6)
    assert not far.passed and "judged on its own switches" in far.task_detail, far.task_detail


def test_kiln_run_prints_and_draws_each_subtask(deployable_engine, tmp_path, capsys):
    """`kiln run ENGINE photo --subtask S --save out.png`: the segments (label, score, share) and a
    picture of the photo's size; --json lists every segment; a bad subtask is a usage error."""
    import json

    from PIL import Image

    from kiln import samples
    from kiln.cli import main

    engine, _, _ = deployable_engine(D)
    photo = tmp_path / "coffee.jpg"
    Image.fromarray(samples.photos(("coffee",))[0]).save(photo)
    for subtask in ("panoptic", "instance", "semantic"):
        out = tmp_path / f"{subtask}.png"
        args = ["run", str(engine), str(photo), "--subtask", subtask, "--save", str(out)]
        assert main([*args, "--threshold", "0"] if subtask != "semantic" else args) == 0
        shown = capsys.readouterr().out
        assert f"{subtask}:" in shown and "segments" in shown, shown
        if subtask != "panoptic":  # the tiny model's panoptic queries may all be "no object"
            assert "%" in shown, shown
        with Image.open(out) as picture:
            assert picture.size == (600, 400) and picture.mode == "RGB"
    assert main(["run", str(engine), str(photo), "--subtask", "instance", "--threshold", "0", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    (result,) = answer["results"]
    assert result["subtask"] == "instance" and result["size"] == [400, 600] and result["segments"]
    assert {"label", "score", "share", "pixels"} <= set(result["segments"][0])
    with pytest.raises(SystemExit):
        main(["run", str(engine), str(photo), "--subtask", "amodal"])


def test_the_grid_sample_variant_builds_and_is_checked_for_tensorrt(tmp_path):
    """The recipe option deformable_attention = "grid_sample" builds an ONNX graph with GridSample
    (TensorRT parses it, fp32 / fp16), which kiln check-trt passes and ONNX Runtime runs as the
    gather variant computes (the default, whose graph has no GridSample: the registry tests)."""
    import dataclasses

    import onnx
    import onnxruntime as ort

    from kiln.check_trt import check_engine
    from kiln.exporters import build
    from kiln.recipe import Recipe

    ckpt, _ = make_checkpoint(D, tmp_path / "ckpt")
    recipe = dataclasses.replace(
        Recipe.for_checkpoint(ckpt, D.task), task_options={"deformable_attention": "grid_sample"}
    )
    engine = build(recipe, output=tmp_path / "engine", formats=["onnx"]).path
    graph = onnx.load(str(engine / "model.onnx"), load_external_data=False).graph
    assert "GridSample" in {n.op_type for n in graph.node}
    report = check_engine(engine)
    assert report.passed, [f for f in report.findings if not f.ok]
    x = np.random.default_rng(0).uniform(-2, 2.5, (2, 3, 64, 64)).astype(np.float32)
    got = ort.InferenceSession(str(engine / "model.onnx")).run(None, {"pixel_values": x})
    with torch.no_grad():
        want = load_model(D.model, ckpt, deformable_attention="gather")(torch.from_numpy(x))
    for g, w in zip(got, want):
        assert np.abs(g - w.numpy()).max() <= 1e-4


def test_a_nan_input_does_not_index_out_of_bounds():
    """NaN sampling locations (a NaN pixel propagates into the offsets) are sampled off the map by
    the gather implementation, as grid_sample treats them, instead of casting to an index out of
    bounds (which a compiled gather aborts the process on; the fuzzer found it through AOTI)."""
    shapes = [(2, 3), (4, 6), (8, 12)]
    value = torch.randn(1, sum(h * w for h, w in shapes), 2, 4)
    loc = torch.rand(1, 5, 2, 3, 4, 2)
    loc[0, 0] = float("nan")
    weights = torch.rand(1, 5, 2, 3, 4).softmax(-1)
    out = msda_gather(value, shapes, loc, weights)
    ref = msda_grid_sample(value, shapes, loc, weights)
    assert torch.isfinite(out[0, 1:]).all() and float((out[0, 1:] - ref[0, 1:]).abs().max()) <= 1e-6


@torch.no_grad()
def test_the_checkpoint_maker_sharpens_the_queries_and_keeps_the_recipes_preprocessing(tmp_path):
    """`python -m kiln.testing RECIPE DIR` (what the README's real-size runs build from): the
    recipe's preprocessor_config.json (384 x 384), not the tiny tests'; the keys the deployable
    names multiplied by its factor and nothing else (against the same seed unsharpened); kiln
    still equal to transformers on the sharpened file; a pattern that matches no key refused."""
    import dataclasses
    import json

    from safetensors.torch import load_file

    from kiln.testing import main, sharpen

    config = tmp_path / "config.json"
    config.write_text(json.dumps({**D.tiny, "num_labels": 5}))
    recipe = "mask2former-panoptic-segmentation"
    assert main([recipe, str(tmp_path / "plain"), "--config", str(config), "--no-sharpen"]) == 0
    assert main([recipe, str(tmp_path / "sharp"), "--config", str(config)]) == 0
    processor = json.loads((tmp_path / "sharp" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 384, "width": 384}
    plain, sharp = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "sharp" / "model.safetensors")
    scaled = [k for k in plain if not torch.equal(plain[k], sharp[k])]
    assert "class_predictor.weight" in scaled and "model.transformer_module.queries_features.weight" in scaled
    assert "model.transformer_module.queries_embedder.weight" in scaled and not any("_attn." in k for k in scaled)
    for k in scaled:
        assert torch.allclose(sharp[k], plain[k] * D.sharpen_factor)
    import transformers

    hf = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(str(tmp_path / "sharp")).eval()
    _outputs_equal(tmp_path / "sharp", hf, 64, batch=1)
    renamed = dataclasses.replace(D, sharpen=(*D.sharpen, r"model\.no_such_head\.weight"))
    with pytest.raises(CheckpointError, match="no_such_head"):
        sharpen(renamed, tmp_path / "sharp")
