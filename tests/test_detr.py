"""DETR beyond the registry-driven tests: post-processing equal to transformers' on identical raw
outputs, the image processor's sizes and pixels on real photos, padded batches, the timm-named
backbone, strict loading, configs kiln refuses, random weights, the mask downsampling, the task
check, the recipe, `kiln run --save`.

Tiny configs with random weights, saved with save_pretrained, stand in for real checkpoints
(none are reachable here); random weights put every class near 1/(L + 1), so tests that need
kept detections sharpen the classifier (and the queries: kiln.testing.sharpen, the keys
registered as the deployable's `sharpen`) in the saved file.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from conftest import make_checkpoint

from kiln import registry, samples
from kiln.checkpoint import load_model, random_checkpoint
from kiln.errors import CheckpointError, InvalidArgumentError
from kiln.models.detr import DetrConfig, DetrForObjectDetection, downsample_mask
from kiln.processing.detection import DetrImageProcessor, post_process_object_detection, size_with_aspect_ratio
from kiln.testing import sharpen

D = registry.get("detr", "object-detection")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The deployable's tiny checkpoint (HF ResNet names) with a sharpened classifier, and the
    transformers model that reads it back."""
    import transformers

    ckpt, _ = make_checkpoint(D, tmp_path_factory.mktemp("detr") / "ckpt")
    sharpen(D, ckpt)  # random DETR weights: the decoder starts from zeros and attends almost uniformly
    return ckpt, transformers.DetrForObjectDetection.from_pretrained(str(ckpt)).eval()


@pytest.fixture(scope="module")
def tiny_engine(tiny, tmp_path_factory):
    """The sharpened checkpoint as a TorchScript engine (`kiln build --checkpoint DIR`)."""
    from kiln.exporters import build
    from kiln.recipe import Recipe

    out = tmp_path_factory.mktemp("detr-engine") / "detr"
    return build(Recipe.for_checkpoint(tiny[0], "object-detection"), output=out, formats=["torchscript"]).path


def _torch_feed(batch):
    return {k: torch.from_numpy(v) for k, v in batch.feed().items()}


# --- post-processing ---------------------------------------------------------------------------

def test_post_processing_equals_transformers_on_identical_outputs():
    """The same floats and the same ids as DetrImageProcessor.post_process_object_detection."""
    import transformers
    from transformers.models.detr.modeling_detr import DetrObjectDetectionOutput

    hf = transformers.DetrImageProcessor()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 100, 92, generator=g) * 4  # some queries pass 0.5, most do not
    boxes = torch.rand(3, 100, 4, generator=g)
    out = DetrObjectDetectionOutput(logits=logits, pred_boxes=boxes)
    sizes = [(512, 512), (400, 600), (300, 451)]
    kept = 0
    for threshold in (0.0, 0.3, 0.5, 0.9):
        for target in (sizes, torch.tensor(sizes), None):
            ref = hf.post_process_object_detection(out, threshold, target)
            ours = post_process_object_detection(logits.numpy(), boxes.numpy(), threshold,
                                                 None if target is None else sizes)
            for r, o in zip(ref, ours):
                assert np.array_equal(o["scores"], r["scores"].numpy())
                assert np.array_equal(o["labels"], r["labels"].numpy())
                assert np.array_equal(o["boxes"], r["boxes"].numpy())
                kept += len(o["scores"]) if threshold == 0.5 else 0
    assert kept > 0


def test_post_processing_refuses_mismatched_shapes():
    with pytest.raises(InvalidArgumentError, match=r"expected \[B, Q, L \+ 1\] and \[B, Q, 4\]"):
        post_process_object_detection(np.zeros((1, 5, 3)), np.zeros((1, 4, 4)))
    with pytest.raises(InvalidArgumentError, match="2 target sizes for a batch of 1"):
        post_process_object_detection(np.zeros((1, 5, 3)), np.zeros((1, 5, 4)), 0.5, [(1, 1), (2, 2)])


# --- pre-processing ----------------------------------------------------------------------------

def test_resize_sizes_equal_transformers():
    from transformers.image_transforms import get_size_with_aspect_ratio

    rng = np.random.default_rng(0)
    shapes = [(512, 512), (400, 600), (300, 451), (427, 640), (100, 1000), (1000, 100), (800, 1333), (1, 5000),
              *(tuple(int(v) for v in rng.integers(1, 4000, 2)) for _ in range(500))]
    for shortest, longest in ((800, 1333), (480, 800), (800, None), (600, 600)):
        for h, w in shapes:
            assert size_with_aspect_ratio(h, w, shortest, longest) == get_size_with_aspect_ratio((h, w), shortest,
                                                                                                 longest), (h, w)


@pytest.mark.parametrize("config", [
    {},  # transformers' defaults: shortest 800, longest 1333
    {"feature_extractor_type": "DetrFeatureExtractor", "size": 800, "max_size": 1333},  # the hub's legacy form
    {"size": {"shortest_edge": 480, "longest_edge": 800}, "resample": 3},
    {"size": {"max_height": 500, "max_width": 700}},
    {"size": {"height": 400, "width": 640}, "do_normalize": False},
])
def test_pixels_and_masks_equal_transformers_on_real_photos(tmp_path, config):
    """Exactly transformers' pixels and masks (PIL path), one photo and a padded batch of four."""
    import transformers
    from PIL import Image

    config = {"image_processor_type": "DetrImageProcessor", **config}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    hf = transformers.AutoImageProcessor.from_pretrained(str(tmp_path))
    assert type(hf).__name__ == "DetrImageProcessorPil"
    ours = DetrImageProcessor.from_dir(tmp_path)
    photos = samples.photos()
    for batch in (photos, photos[2:3]):
        ref = hf([Image.fromarray(p) for p in batch], return_tensors="np")
        got = ours(batch)
        assert got.pixel_values.dtype == np.float32 and got.pixel_mask.dtype == np.int64
        assert np.array_equal(got.pixel_values, ref["pixel_values"])
        assert np.array_equal(got.pixel_mask, ref["pixel_mask"])
        assert got.sizes == [p.shape[:2] for p in batch]


def test_processor_pads_up_to_a_minimum_and_refuses_bad_configs():
    proc = DetrImageProcessor()
    panorama = np.zeros((100, 1000, 3), np.uint8)  # resizes to 133 x 1333: under the engines' 320
    batch = proc([panorama], min_size=(320, 320))
    assert batch.pixel_values.shape == (1, 3, 320, 1333) and batch.resized == [(133, 1333)]
    assert batch.pixel_mask[0, :133].all() and not batch.pixel_mask[0, 133:].any()
    for bad, message in (({"size": {"shortest_edge": 800}}, "expected {shortest_edge, longest_edge}"),
                         ({"resample": 9}, "resample=9"),
                         ({"image_processor_type": "ViTImageProcessor"}, "expected a DetrImageProcessor")):
        with pytest.raises(InvalidArgumentError, match=re.escape(message)):
            DetrImageProcessor.from_dict(bad)


# --- the model -------------------------------------------------------------------------------

def test_mask_downsampling_equals_transformers_interpolate():
    """downsample_mask's integer indices are F.interpolate's "nearest" at every size a ResNet gives
    for H in 1..2000 (the engines take 320..1333), on a mask that is not a rectangle."""
    import torch.nn.functional as F

    def feature_size(n: int) -> int:
        for _ in range(5):  # the stem's conv and pool, then three stride-2 stages
            n = (n - 1) // 2 + 1
        return n

    g = torch.Generator().manual_seed(0)
    for n in range(1, 2001):
        h = feature_size(n)
        mask = (torch.rand(2, n, 7, generator=g) > 0.5).long()
        ref = F.interpolate(mask[None].float(), size=(h, 7)).to(torch.bool)[0]
        assert torch.equal(downsample_mask(mask, h, 7), ref), n
        ref = F.interpolate(mask.transpose(1, 2)[None].float(), size=(7, h)).to(torch.bool)[0]
        assert torch.equal(downsample_mask(mask.transpose(1, 2), 7, h), ref), n


@torch.no_grad()
def test_padded_outputs_equal_transformers(tiny):
    """A padded batch of two photos of different sizes: kiln's eager outputs are transformers'."""
    ckpt, hf = tiny
    model = load_model(DetrForObjectDetection, ckpt)
    batch = _torch_feed(DetrImageProcessor.from_dir(ckpt)(samples.photos()[:2]))
    assert not batch["pixel_mask"].all()
    ours = model(batch["pixel_values"], batch["pixel_mask"])
    ref = hf(**batch)
    assert torch.allclose(ours.logits, ref.logits, atol=1e-5) and torch.allclose(ours.pred_boxes, ref.pred_boxes,
                                                                                   atol=1e-6)


def _to_timm(state: dict) -> dict:
    """An HF-ResNet DETR state dict in timm's names (written here from timm's resnet50 naming:
    conv1/bn1, layer1..4, blocks' conv1-3/bn1-3, downsample.0 (conv) / downsample.1 (BN)), with the
    num_batches_tracked counters the hub file keeps on the downsample BNs."""
    out = {}
    prefix = "model.backbone.conv_encoder.model."
    for k, v in state.items():
        if k.startswith(prefix):
            rest = k[len(prefix):]
            rest = rest.replace("embedder.embedder.convolution.", "conv1.").replace(
                "embedder.embedder.normalization.", "bn1.")
            m = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", rest)
            if m:
                stage, block, tail = int(m[1]), m[2], m[3]
                tail = re.sub(r"layer\.(\d)\.convolution\.", lambda t: f"conv{int(t[1]) + 1}.", tail)
                tail = re.sub(r"layer\.(\d)\.normalization\.", lambda t: f"bn{int(t[1]) + 1}.", tail)
                tail = tail.replace("shortcut.convolution.", "downsample.0.").replace("shortcut.normalization.",
                                                                                    "downsample.1.")
                rest = f"layer{stage + 1}.{block}.{tail}"
            k = prefix + rest
        out[k] = v
    for k in [k for k in out if k.endswith("downsample.1.running_var")]:
        out[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    return out


@torch.no_grad()
def test_timm_named_checkpoint_gives_identical_outputs(tiny, tmp_path):
    """The hub checkpoints' timm names (conv1/bn1/layerN/downsample) load into the same network:
    outputs identical to the transformers-named file's, the counters declared unused."""
    import shutil

    from safetensors.torch import load_file, save_file

    ckpt, _ = tiny
    timm = tmp_path / "timm"
    shutil.copytree(ckpt, timm)
    state = _to_timm(load_file(ckpt / "model.safetensors"))
    assert any(".layer1.0.downsample.1.num_batches_tracked" in k for k in state)
    assert not any("embedder" in k or "stages" in k for k in state)
    save_file(state, timm / "model.safetensors", metadata={"format": "pt"})
    a, b = load_model(DetrForObjectDetection, ckpt), load_model(DetrForObjectDetection, timm)
    assert b.ignored_checkpoint_keys == sorted(k for k in state if k.endswith("num_batches_tracked"))
    batch = _torch_feed(DetrImageProcessor.from_dir(ckpt)(samples.photos()[:2]))
    oa, ob = a(batch["pixel_values"], batch["pixel_mask"]), b(batch["pixel_values"], batch["pixel_mask"])
    assert torch.equal(oa.logits, ob.logits) and torch.equal(oa.pred_boxes, ob.pred_boxes)


def test_strict_loading_names_keys_and_shapes(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    ckpt, _ = tiny
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    state = load_file(ckpt / "model.safetensors")
    del state["model.input_projection.bias"]
    state["model.query_position_embeddings.weight"] = torch.zeros(7, 16)
    state["model.backbone.conv_encoder.model.fc.weight"] = torch.zeros(3, 32)  # timm's classifier: not DETR's
    # one tensor under both names: the timm key maps onto the transformers one
    state["model.backbone.conv_encoder.model.conv1.weight"] = state[
        "model.backbone.conv_encoder.model.embedder.embedder.convolution.weight"].clone()
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="both map to"):
        load_model(DetrForObjectDetection, bad)
    del state["model.backbone.conv_encoder.model.conv1.weight"]
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        load_model(DetrForObjectDetection, bad)
    msg = str(e.value)
    assert "3 problems" in msg
    assert "missing key 'model.input_projection.bias' (model shape [16])" in msg
    assert "shape mismatch for 'model.query_position_embeddings.weight': checkpoint [7, 16], model [12, 16]" in msg
    assert "unexpected key 'model.backbone.conv_encoder.model.fc.weight' (checkpoint shape [3, 32])" in msg


def test_a_base_checkpoint_needs_random_head(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    ckpt, _ = tiny
    base = tmp_path / "base"
    shutil.copytree(ckpt, base)
    state = {k[len("model."):]: v for k, v in load_file(ckpt / "model.safetensors").items() if k.startswith("model.")}
    save_file(state, base / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="class_labels_classifier.*random_head=True"):
        load_model(DetrForObjectDetection, base)
    model = load_model(DetrForObjectDetection, base, random_head=True, seed=1)
    assert model.random_keys == sorted(DetrForObjectDetection.head_keys)


@pytest.mark.parametrize("change, message", [
    ({"dilation": True}, "dilation=True: kiln's DETR does not implement DC5"),
    ({"position_embedding_type": "learned"}, "position_embedding_type='learned' is not supported"),
    ({"backbone_config": None, "use_timm_backbone": True, "backbone": "resnet18"}, "backbone='resnet18'"),
    ({"backbone_config": {"model_type": "resnet", "layer_type": "basic"}}, "layer_type='basic'"),
    ({"backbone_config": {"model_type": "swin"}}, "model_type='swin'"),
    ({"backbone_config": {"model_type": "resnet", "out_features": ["stage3"]}}, "out_features=['stage3']"),
    ({"backbone_config": {"model_type": "timm_backbone", "backbone": "resnet50", "output_stride": 16}},
     "output_stride=16"),
    ({"activation_function": "swish"}, "activation_function='swish'"),
])
def test_configs_kiln_does_not_implement_are_refused(change, message):
    base = {"model_type": "detr", **D.tiny}
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        DetrConfig.from_dict({**base, **change})


def test_configs_read_both_backbone_layouts_and_round_trip_through_transformers():
    import transformers

    hub = DetrConfig.from_dict({"model_type": "detr", "use_timm_backbone": True, "backbone": "resnet101",
                                "backbone_config": None, "num_labels": 91})
    assert hub.resnet.layout == "timm" and hub.resnet.depths == (3, 4, 23, 3) and hub.num_labels == 91
    assert DetrConfig.from_dict({"model_type": "detr", "use_timm_backbone": False}).resnet.depths == (3, 4, 6, 3)
    ours = DetrConfig.from_dict({"model_type": "detr", **D.tiny, "id2label": {0: "a", 1: "b", 2: "c"}})
    hf = transformers.DetrConfig(**{k: v for k, v in ours.to_dict().items() if k != "model_type"})
    assert hf.backbone_config.model_type == "resnet" and list(hf.backbone_config.depths) == [1, 2, 1, 1]
    again = DetrConfig.from_dict(hf.to_dict())
    assert again.resnet == ours.resnet and again.id2label == ours.id2label and again.d_model == ours.d_model


def test_random_weights_follow_transformers_init_and_seed(tmp_path):
    import math

    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"model_type": "detr", **D.tiny, "num_labels": 5}))
    a = random_checkpoint(DetrForObjectDetection, cfg, seed=0, out_dir=tmp_path / "a")
    b = random_checkpoint(DetrForObjectDetection, cfg, seed=0, out_dir=tmp_path / "b")
    c = random_checkpoint(DetrForObjectDetection, cfg, seed=1, out_dir=tmp_path / "c")
    sa, sb, sc = (load_model(DetrForObjectDetection, d).state_dict() for d in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["class_labels_classifier.weight"], sc["class_labels_classifier.weight"])
    bn = "model.backbone.conv_encoder.model.embedder.embedder.normalization."
    assert torch.all(sa[bn + "weight"] == 1) and torch.all(sa[bn + "running_var"] == 1)
    assert torch.all(sa[bn + "bias"] == 0) and torch.all(sa[bn + "running_mean"] == 0)
    conv = sa["model.backbone.conv_encoder.model.embedder.embedder.convolution.weight"]  # kaiming, fan_out
    assert abs(conv.std().item() - math.sqrt(2 / (conv.shape[0] * 49))) < 0.02
    assert abs(sa["model.decoder.layers.0.fc1.weight"].std().item() - 0.02) < 0.004
    assert torch.all(sa["model.decoder.layernorm.weight"] == 1) and torch.all(sa["model.input_projection.bias"] == 0)


# --- the task check ----------------------------------------------------------------------------

def test_detection_check_holds_decisive_queries_and_reports_near_ties():
    from kiln.deploy import detection_check

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 10, 6)).astype(np.float32) * 3
    boxes = rng.uniform(0.2, 0.6, (2, 10, 4)).astype(np.float32)
    ref = {"logits": logits, "pred_boxes": boxes}
    check = detection_check(0.5, 1e-3, 0.99)
    ok, detail = check(ref, {k: v.copy() for k, v in ref.items()}, {})
    assert ok and "20 queries" in detail and "0 differ" in detail
    flipped = logits.copy()
    best = flipped[0, 0, :-1].argmax()
    flipped[0, 0, (best + 1) % 5] = flipped[0, 0, best] + 1  # another label wins by a clear margin
    assert not check(ref, {"logits": flipped, "pred_boxes": boxes}, {})[0]
    moved = boxes.copy()
    moved[1, 3, 0] += 0.05  # shifted by 5% of the image
    ok, detail = check(ref, {"logits": logits, "pred_boxes": moved}, {})
    assert not ok and float(re.search(r"min box IoU ([0-9.]+)", detail)[1]) < 0.99
    tie = logits.copy()
    top = np.sort(tie[0, 1, :-1])
    tie[0, 1, tie[0, 1, :-1].argsort()[-2]] = top[-1] - 1e-4  # a near-tie: either label is right
    swapped = tie.copy()
    i, j = tie[0, 1, :-1].argsort()[-2:]
    swapped[0, 1, [i, j]] = tie[0, 1, [j, i]]
    ok, detail = check({"logits": tie, "pred_boxes": boxes}, {"logits": swapped, "pred_boxes": boxes}, {})
    assert ok and "1 labels" in detail


# --- engines, pipelines, the command line ------------------------------------------------------

def test_an_image_alone_and_padded_in_a_batch_give_the_same_detections(tiny, tiny_engine):
    """The pixel mask hides padding from the transformer and the boxes are relative to each
    image's own region, so padding that leaves the backbone's strided grids as they are (rocket,
    480 x 719 processed, beside the coffee's 480 x 720: every stride-2 stage rounds both alike, and
    the padding's zeros are what the convolutions pad with) gives the detections the image gives
    alone. Padding that grows a grid (the astronaut, 480 x 480, padded to 720) moves what the
    backbone computes near the image's edge: the answer changes, as transformers' does, to
    transformers' answer for that batch."""
    from kiln.pipelines import pipeline

    pipe = pipeline(tiny_engine, backend="torchscript")
    rocket, coffee, astronaut = samples.photos(["rocket", "coffee", "astronaut"])
    alone = pipe([rocket], threshold=0.0)[0]
    assert any(a["score"] > 0.5 for a in alone), "the sharpened model keeps some"
    feed, ctx = pipe.preprocess([rocket, coffee])
    assert feed["pixel_values"].shape[2:] == (480, 720) and not feed["pixel_mask"][0].all()
    padded = pipe.postprocess(pipe.run(feed), ctx, threshold=0.0)[0]
    assert [a["label"] for a in alone] == [p["label"] for p in padded]
    np.testing.assert_allclose([a["score"] for a in alone], [p["score"] for p in padded], atol=1e-5)
    assert all(abs(a["box"][k] - p["box"][k]) <= 1 for a, p in zip(alone, padded) for k in a["box"])

    feed, ctx = pipe.preprocess([astronaut, coffee])
    assert feed["pixel_mask"][0].sum() == 480 * 480 and feed["pixel_values"].shape[2:] == (480, 720)
    ours = pipe.run(feed)
    with torch.no_grad():
        ref = tiny[1](**{k: torch.from_numpy(v) for k, v in feed.items()})
    assert np.abs(ours["logits"] - ref.logits.numpy()).max() < 1e-4
    assert np.abs(ours["pred_boxes"] - ref.pred_boxes.numpy()).max() < 1e-5


def test_kept_detections_equal_transformers_pipeline(tiny, tiny_engine):
    """At the default threshold, with a sharpened classifier: the same detections as transformers'."""
    import transformers
    from PIL import Image

    from kiln.pipelines import pipeline

    photos = [Image.fromarray(p) for p in samples.photos()]
    ours = pipeline(tiny_engine, backend="torchscript")(photos)
    theirs = transformers.pipeline("object-detection", model=str(tiny[0]), device="cpu")(photos)
    assert 0 < sum(len(o) for o in ours) < len(photos) * 12, "the sharpened model keeps some, drops some"
    for o, t in zip(ours, theirs):
        assert [x["label"] for x in o] == [x["label"] for x in t]
        np.testing.assert_allclose([x["score"] for x in o], [x["score"] for x in t], atol=1e-5)
        assert all(abs(x["box"][k] - y["box"][k]) <= 1 for x, y in zip(o, t) for k in x["box"])


def test_a_panorama_is_padded_up_to_the_engine_minimum(tiny_engine):
    from kiln.pipelines import pipeline

    pipe = pipeline(tiny_engine, backend="torchscript")
    wide = np.ascontiguousarray(np.repeat(samples.photos(["rocket"])[0], 3, axis=1)[:100])  # 100 x 1920
    h, w = pipe.processor.output_size(100, 1920)
    assert h < 320  # shorter than the engine takes: padded up, the mask says so
    feed, ctx = pipe.preprocess([wide])
    assert feed["pixel_mask"].shape == (1, 320, w) and feed["pixel_mask"][0, :h].all()
    assert not feed["pixel_mask"][0, h:].any()
    assert len(pipe([wide], threshold=0.0)[0]) == 12
    with pytest.raises(InvalidArgumentError, match=r"threshold 1.5: expected a score in \[0, 1\]"):
        pipe([wide], threshold=1.5)


def test_kiln_run_prints_detections_and_saves_a_png_of_the_photos_size(tiny_engine, tmp_path, capsys):
    from PIL import Image

    from kiln.cli import main

    def run(*argv):
        code = main(["run", str(tiny_engine), *map(str, argv), "--backend", "torchscript"])
        out, err = capsys.readouterr()
        return code, out + err

    photo = tmp_path / "coffee.jpg"
    Image.fromarray(samples.photos(["coffee"])[0]).save(photo)
    code, out = run(photo, "--threshold", "0.3", "--save", tmp_path / "boxes.png")
    assert code == 0, out
    assert "detection" in out and "(xmin, ymin, xmax, ymax)" in out and "boxes.png" in out
    with Image.open(tmp_path / "boxes.png") as img:
        assert img.format == "PNG" and img.size == (600, 400)
        drawn = np.asarray(img.convert("RGB")).astype(int)
    assert np.abs(drawn - np.asarray(Image.open(photo).convert("RGB")).astype(int)).max() > 100  # boxes drawn
    code, out = run(photo, "--json", "--threshold", "0")
    answer = json.loads(out)
    assert answer["task"] == "object-detection" and len(answer["results"][0]) == 12
    assert set(answer["results"][0][0]) == {"score", "label", "box"}
    code, out = run(photo, "--threshold", "2")
    assert code == 2 and "--threshold 2.0: expected a score in [0, 1]" in out
    code, out = run(photo, photo, "--save", tmp_path / "many.png")
    assert code == 0 and (tmp_path / "many-0.png").is_file() and (tmp_path / "many-1.png").is_file()


# --- the recipe -------------------------------------------------------------------------------

def test_the_recipe_is_detr_resnet_50_with_coco_labels():
    from kiln.checkpoint import config_from_dir
    from kiln.recipe import RECIPE_DIR, load_recipe

    recipe = load_recipe("detr-object-detection")
    assert recipe.random_weights and (recipe.dims["height"].min, recipe.dims["height"].max) == (320, 1333)
    config = config_from_dir(RECIPE_DIR / recipe.checkpoint, DetrConfig)
    assert config.num_labels == 91 and config.id2label[1] == "person" and config.id2label[90] == "toothbrush"
    assert config.id2label[0] == config.id2label[12] == "N/A"
    assert config.resnet.depths == (3, 4, 6, 3) and config.resnet.hidden_sizes[-1] == 2048
    with torch.device("meta"):
        params = sum(p.numel() for p in DetrForObjectDetection(config).parameters())
    assert 41_000_000 < params < 42_000_000  # facebook/detr-resnet-50: 41.5M
    proc = DetrImageProcessor.from_dir(RECIPE_DIR / recipe.checkpoint)
    assert proc.size == {"shortest_edge": 800, "longest_edge": 1333}


def test_the_recipe_builds_a_checkpoint_transformers_saved(tiny, tmp_path):
    """`kiln build detr-object-detection --checkpoint DIR`: the checkpoint's weights and labels."""
    from kiln.exporters import build
    from kiln.manifest import read_manifest
    from kiln.recipe import load_recipe

    result = build(load_recipe("detr-object-detection"), checkpoint=tiny[0], output=tmp_path / "e",
                   formats=["torchscript"])
    m = read_manifest(result.path)
    assert (m.weights, m.random_keys) == ("real", [])
    assert m.labels[:3] == ["N/A", "person", "bicycle"] and m.config["num_queries"] == 12
    assert {s.name: s.values for s in m.inputs}["pixel_mask"].max == 1


def test_tensorrt_profiles_span_the_processors_range():
    """The TensorRT optimisation profile is the recipe's real H, W range (shortest edge 800,
    longest 1333, padded up to 320), for both inputs."""
    from kiln.gpu import profiles_for
    from kiln.recipe import load_recipe

    dims = {n: r.to_json() for n, r in load_recipe("detr-object-detection").dims.items()}
    (profile,) = profiles_for([s.to_json() for s in D.graphs[0].input_specs(DetrConfig())], dims)
    assert profile["pixel_values"] == {"min": [1, 3, 320, 320], "opt": [1, 3, 800, 1066], "max": [8, 3, 1333, 1333]}
    assert profile["pixel_mask"] == {"min": [1, 320, 320], "opt": [1, 800, 1066], "max": [8, 1333, 1333]}
