"""SegFormer (semantic segmentation) and GLPN (depth estimation): what the registry-driven test
(test_deployables.py) does not cover by itself.

- pre- and post-processing equal to transformers' on identical inputs (same floats, same ids,
  the pipelines' own postprocess on the same raw outputs);
- one MiT encoder serves both families under either prefix;
- strict loading: missing, unexpected and mis-shaped keys named with both shapes; the declared
  unused keys are exactly the BatchNorm counters transformers saves, nothing filtered wholesale;
- dims of multiples (GLPN's H, W in multiples of 32): the manifest field, recipes, the export,
  Engine.run and kiln-run refusing H = 100 by name;
- `kiln run --save` writes a picture of the image's size; the depth pipeline groups sizes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import engine_of, make_checkpoint

from kiln import registry, samples
from kiln.checkpoint import load_model
from kiln.errors import CheckpointError, InputShapeError, InputValueError, InvalidArgumentError, ManifestError
from kiln.manifest import DimRange, read_manifest

SEG = registry.get("segformer", "semantic-segmentation")
DEPTH = registry.get("glpn", "depth-estimation")
CONFIGS = Path(__file__).resolve().parents[1] / "export" / "configs"


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory):
    return make_checkpoint(SEG, tmp_path_factory.mktemp("segformer"))


@pytest.fixture(scope="module")
def glpn_ckpt(tmp_path_factory):
    return make_checkpoint(DEPTH, tmp_path_factory.mktemp("glpn"))


def _photos() -> list:
    return [Image.fromarray(p) for p in samples.photos()]


# --- pre-processing -------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["segformer-b0-ade-512", "glpn-nyu"])
def test_processors_equal_transformers_on_real_photos(config):
    """The recipes' preprocessor_config.json through kiln and through transformers (PIL path)."""
    import transformers

    from kiln.processing.image import ImageProcessor

    theirs = transformers.AutoImageProcessor.from_pretrained(CONFIGS / config)
    ours = ImageProcessor.from_dir(CONFIGS / config)
    for photo in _photos():
        ref = theirs(images=photo, return_tensors="np")["pixel_values"][0]
        got = ours([photo])[0]
        assert got.dtype == ref.dtype == np.float32
        np.testing.assert_array_equal(got, ref)
        assert ours.processed_size(photo.width, photo.height) == ref.shape[1:]


def test_glpn_sizes_round_down_to_32_and_tiny_images_are_refused():
    from kiln.processing.image import ImageProcessor

    proc = ImageProcessor.from_dir(CONFIGS / "glpn-nyu")
    assert proc.processed_size(451, 300) == (288, 448) and proc.processed_size(640, 427) == (416, 640)
    with pytest.raises(InvalidArgumentError, match="no one output size"):
        proc.output_size
    with pytest.raises(InputValueError, match="smaller than size_divisor=32"):
        proc([np.zeros((20, 100, 3), np.uint8)])
    with pytest.raises(InvalidArgumentError, match="size_divisor=0"):
        ImageProcessor.from_dict({"image_processor_type": "GLPNImageProcessor", "size_divisor": 0})


# --- post-processing: equal to transformers' on identical raw outputs ------------------------------


def test_semantic_post_processing_equals_transformers(seg_ckpt):
    import transformers
    from transformers.modeling_outputs import SemanticSegmenterOutput

    from kiln.processing.segmentation import post_process_semantic_segmentation, segments, upsampled_scores

    ckpt, _ = seg_ckpt
    proc = transformers.AutoImageProcessor.from_pretrained(ckpt)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 8, 16, 24)).astype(np.float32)
    logits[2, :, :4, :4] = 0.5  # exact ties: the first label wins in both
    sizes = [(37, 53), (64, 96), (512, 341)]
    out = SemanticSegmenterOutput(logits=torch.from_numpy(logits))
    theirs = proc.post_process_semantic_segmentation(out, target_sizes=sizes, return_segmentation_scores=True)
    ours = post_process_semantic_segmentation(logits, sizes)
    for o, t, row, size in zip(ours, theirs, logits, sizes):
        assert o.dtype == np.int64 and o.shape == size
        np.testing.assert_array_equal(o, t["segmentation"].numpy())  # same ids
        np.testing.assert_array_equal(upsampled_scores(row, size), t["segmentation_scores"].numpy())  # same floats
    for o, t in zip(post_process_semantic_segmentation(logits), proc.post_process_semantic_segmentation(out)):
        np.testing.assert_array_equal(o, t.numpy())  # no target size: the logits' grid

    # transformers' image-segmentation pipeline on the same outputs: the same labels and masks
    pipe = transformers.pipeline("image-segmentation", model=str(ckpt), device="cpu")
    labels = [pipe.model.config.id2label[i] for i in range(8)]
    for b, size in enumerate(sizes):
        raw = SemanticSegmenterOutput(logits=torch.from_numpy(logits[b : b + 1]))
        raw["target_size"] = [size]
        annotation = pipe.postprocess(raw, subtask="semantic")
        found = segments(ours[b], labels)
        assert [a["label"] for a in annotation] == [s["label"] for s in found]
        for a, s in zip(annotation, found):
            np.testing.assert_array_equal(np.array(a["mask"]) == 255, ours[b] == s["id"])
        assert sum(s["share"] for s in found) == pytest.approx(1.0)
    with pytest.raises(InputValueError, match="2 target sizes for 3 images"):
        post_process_semantic_segmentation(logits, sizes[:2])


def test_depth_post_processing_equals_transformers(glpn_ckpt):
    import transformers
    from transformers.modeling_outputs import DepthEstimatorOutput

    from kiln.processing.depth import depth_image, post_process_depth_estimation

    ckpt, _ = glpn_ckpt
    proc = transformers.AutoImageProcessor.from_pretrained(ckpt)
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 10.0, (3, 32, 48)).astype(np.float32)
    sizes = [(300, 451), (64, 64), (427, 640)]
    theirs = proc.post_process_depth_estimation(DepthEstimatorOutput(predicted_depth=torch.from_numpy(depth)), sizes)
    ours = post_process_depth_estimation(depth, sizes)
    for o, t, size in zip(ours, theirs, sizes):
        assert o.dtype == np.float32 and o.shape == size
        np.testing.assert_array_equal(o, t["predicted_depth"].numpy())  # same floats (bicubic)
    for o, t in zip(post_process_depth_estimation(depth), proc.post_process_depth_estimation(
            DepthEstimatorOutput(predicted_depth=torch.from_numpy(depth)))):
        np.testing.assert_array_equal(o, t["predicted_depth"].numpy())

    # transformers' depth-estimation pipeline on the same outputs: the same 0-255 picture
    pipe = transformers.pipeline("depth-estimation", model=str(ckpt), device="cpu")
    for b, size in enumerate(sizes):
        raw = DepthEstimatorOutput(predicted_depth=torch.from_numpy(depth[b : b + 1]))
        raw["target_size"] = size
        answer = pipe.postprocess(raw)
        np.testing.assert_array_equal(answer["predicted_depth"].numpy(), ours[b])
        picture = np.array(answer["depth"])
        assert picture.dtype == np.uint8 and picture.shape == size
        np.testing.assert_array_equal(depth_image(ours[b]), picture)
    assert not depth_image(np.full((4, 4), 3.0)).any()  # a flat map: zeros (transformers divides by 0)


# --- one MiT encoder, two prefixes ----------------------------------------------------------------


def test_one_mit_encoder_serves_both_families(glpn_ckpt, tmp_path):
    """A GLPN checkpoint's encoder, renamed to SegFormer's prefix, loads into kiln's SegFormer (a
    base checkpoint: random head) and computes exactly what kiln's GLPN computes with it; both
    equal transformers' GLPN encoder."""
    import transformers
    from safetensors.torch import load_file, save_file

    from kiln.models.glpn import GLPNForDepthEstimation
    from kiln.models.mit import MiTModel, mit_state_keys
    from kiln.models.segformer import SegformerForSemanticSegmentation

    ckpt, hf = glpn_ckpt
    state = load_file(str(ckpt / "model.safetensors"))
    config = json.loads((ckpt / "config.json").read_text())
    encoder = {k: v for k, v in state.items() if k.startswith("glpn.encoder.")}
    assert set(encoder) == set(mit_state_keys(DEPTH.config_class.from_dict(config), "glpn"))
    seg_dir = tmp_path / "segformer-from-glpn"
    seg_dir.mkdir()
    save_file({"segformer." + k[len("glpn."):]: v for k, v in encoder.items()}, str(seg_dir / "model.safetensors"),
              metadata={"format": "pt"})
    seg_config = {k: v for k, v in config.items() if k not in ("max_depth", "head_in_index")}
    seg_config.update(model_type="segformer", architectures=["SegformerForSemanticSegmentation"], num_labels=4)
    (seg_dir / "config.json").write_text(json.dumps(seg_config))

    seg = load_model(SegformerForSemanticSegmentation, seg_dir, random_head=True)
    glpn = load_model(GLPNForDepthEstimation, ckpt)
    assert type(seg.segformer) is type(glpn.glpn) is MiTModel
    assert seg.random_keys and all(k.startswith("decode_head.") for k in seg.random_keys)
    x = torch.from_numpy(DEPTH.graphs[0].make_example(glpn.config, {"batch": 2, "height": 96, "width": 64}, 3)[
        "pixel_values"])
    with torch.no_grad():
        a, b = seg.segformer(x), glpn.glpn(x)
        ref = hf.glpn(x, output_hidden_states=True).hidden_states
    assert [f.shape[1:] for f in a] == [(8, 24, 16), (16, 12, 8), (24, 6, 4), (32, 3, 2)]
    for fa, fb, fr in zip(a, b, ref):
        assert torch.equal(fa, fb)
        assert float((fa - fr).abs().max()) < 1e-5


# --- strict loading --------------------------------------------------------------------------------


def _rewrite(src: Path, dst: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def test_segformer_loads_strictly_naming_keys_and_shapes(seg_ckpt, tmp_path):
    from kiln.models.segformer import SegformerForSemanticSegmentation

    ckpt, _ = seg_ckpt
    model = load_model(SegformerForSemanticSegmentation, ckpt)
    assert model.ignored_checkpoint_keys == ["decode_head.batch_norm.num_batches_tracked"]  # declared, by name

    def edit(state):
        del state["decode_head.classifier.weight"]
        state["decode_head.linear_fuse.weight"] = torch.zeros(16, 60, 1, 1)
        state["segformer.encoder.extra.weight"] = torch.zeros(3)
        state["decode_head.other.num_batches_tracked"] = torch.zeros((), dtype=torch.int64)  # not declared

    with pytest.raises(CheckpointError) as e:
        load_model(SegformerForSemanticSegmentation, _rewrite(ckpt, tmp_path / "bad", edit))
    msg = str(e.value)
    assert "does not fit SegformerForSemanticSegmentation (4 problems)" in msg
    assert "missing key 'decode_head.classifier.weight' (model shape [8, 16, 1, 1])" in msg
    assert "task-head key: pass random_head=True" in msg
    assert "shape mismatch for 'decode_head.linear_fuse.weight': checkpoint [16, 60, 1, 1], model [16, 64, 1, 1]" in msg
    assert "unexpected key 'segformer.encoder.extra.weight' (checkpoint shape [3])" in msg
    assert "unexpected key 'decode_head.other.num_batches_tracked'" in msg

    # transformers 5's in-memory names (what model.state_dict() of a live model says) are not a
    # checkpoint's: kiln keys on the saved names and refuses these by name
    live = {f"segformer.stages.0.blocks.0.attention.q_proj.weight": torch.zeros(8, 8)}
    with pytest.raises(CheckpointError, match=r"unexpected key 'segformer\.stages\.0\.blocks\.0\.attention\.q_proj"):
        load_model(SegformerForSemanticSegmentation, _rewrite(ckpt, tmp_path / "live", lambda s: s.update(live)))


def test_glpn_declares_exactly_the_batchnorm_counters_transformers_saves(glpn_ckpt, tmp_path):
    from safetensors.torch import load_file

    from kiln.models.glpn import GLPNForDepthEstimation

    ckpt, _ = glpn_ckpt
    saved = {k for k in load_file(str(ckpt / "model.safetensors")) if k.endswith("num_batches_tracked")}
    model = load_model(GLPNForDepthEstimation, ckpt)
    assert set(model.ignored_checkpoint_keys) == saved and len(saved) == 6
    # stages run coarsest first over hidden sizes [32, 24, 16, 8] into 16 channels: stage 2 keeps its
    # width and has no projection (transformers saves none), the others have one
    keys = model.state_dict()
    assert "decoder.stages.2.convolution.weight" not in keys
    assert all(f"decoder.stages.{i}.convolution.weight" in keys for i in (0, 1, 3))

    def edit(state):
        state["head.head.2.weight"] = torch.zeros(1, 16, 5, 5)
        del state["glpn.encoder.layer_norm.3.bias"]

    with pytest.raises(CheckpointError) as e:
        load_model(GLPNForDepthEstimation, _rewrite(ckpt, tmp_path / "bad", edit))
    assert "shape mismatch for 'head.head.2.weight': checkpoint [1, 16, 5, 5], model [1, 16, 3, 3]" in str(e.value)
    assert "missing key 'glpn.encoder.layer_norm.3.bias' (model shape [32])" in str(e.value)


def test_configs_kiln_does_not_implement_are_refused(tmp_path):
    from kiln.models.glpn import GLPNConfig
    from kiln.models.segformer import SegformerConfig

    with pytest.raises(InvalidArgumentError, match="reshape_last_stage=false"):
        SegformerConfig.from_dict({"model_type": "segformer", "reshape_last_stage": False})
    with pytest.raises(InvalidArgumentError, match=r"strides=\[4, 2, 2, 1\]"):
        GLPNConfig.from_dict({"model_type": "glpn", "strides": [4, 2, 2, 1]})
    with pytest.raises(InvalidArgumentError, match="head_in_index=1"):
        GLPNConfig.from_dict({"model_type": "glpn", "head_in_index": 1})
    with pytest.raises(InvalidArgumentError, match=r"depths=\[2, 2, 2\]: expected num_encoder_blocks=4"):
        SegformerConfig.from_dict({"model_type": "segformer", "depths": [2, 2, 2]})
    with pytest.raises(InvalidArgumentError, match=r"hidden_sizes\[2\]=160 is not a multiple of num_attention_heads"):
        SegformerConfig.from_dict({"model_type": "segformer", "num_attention_heads": [1, 2, 3, 8]})


# --- dims of multiples -------------------------------------------------------------------------------


def test_dim_multiple_in_the_manifest_and_recipes(tmp_path):
    from kiln.exporters import dynamic_shapes, example_sizes
    from kiln.recipe import load_recipe, parse_dims

    r = DimRange(64, 480, 1024, multiple=32)
    assert r.to_json() == {"min": 64, "opt": 480, "max": 1024, "multiple": 32}
    assert DimRange.from_json(r.to_json()) == r and r.allows(96) and not r.allows(100) and not r.allows(1056)
    assert r.clamp(1000).max == 992  # a clamp keeps the multiple
    assert DimRange(1, 1, 8).to_json() == {"min": 1, "opt": 1, "max": 8}  # absent unless > 1
    with pytest.raises(InvalidArgumentError, match="opt=100 not a multiple of 32"):
        DimRange(64, 100, 1024, multiple=32)
    with pytest.raises(InvalidArgumentError, match="multiple=0"):
        DimRange(64, 64, 64, multiple=0)
    recipe = load_recipe("glpn-depth-estimation")
    assert recipe.dims["height"].multiple == recipe.dims["width"].multiple == 32  # the deployable's rule
    with pytest.raises(InvalidArgumentError, match=r"--dims height: .*opt=100 not a multiple of 32"):
        recipe.with_dims(parse_dims(["height=64:100:1024"]))
    bad = tmp_path / "r.toml"
    bad.write_text('name = "r"\nfamily = "glpn"\ntask = "depth-estimation"\ncheckpoint = "x"\n'
                   "[dims]\nwidth = { min = 64, opt = 640, max = 1333 }\n")
    with pytest.raises(InvalidArgumentError, match=r"\[dims.width\]: .*max=1333 not a multiple of 32"):
        load_recipe(bad)
    # export: H and W as 32 * Dim (torch.export relies on it), a batch of 2, sizes multiples of 32
    sizes = example_sizes(recipe.dims)
    assert sizes == {"batch": 2, "height": 64, "width": 64}
    (shapes,) = dynamic_shapes(DEPTH.graphs[0], DEPTH.config_class(), recipe.dims)
    assert "32*height_32" in str(shapes[0][2]) and "32*width_32" in str(shapes[0][3])
    # SegFormer's H and W are one size: static in every artifact
    (seg_shapes,) = dynamic_shapes(SEG.graphs[0], SEG.config_class(), load_recipe("segformer-semantic-segmentation").dims)
    assert set(seg_shapes[0]) == {0}


def test_manifest_field_errors_name_the_field(deployable_engine, tmp_path):
    import shutil

    engine, _, _ = engine_of(deployable_engine, "glpn", "depth-estimation")
    m = read_manifest(engine)
    assert m.dims["height"].multiple == m.dims["width"].multiple == 32
    data = json.loads((engine / "manifest.json").read_text())
    assert data["dims"]["height"]["multiple"] == 32
    for value, match in ((0, "'dims.height.multiple' must be a positive integer"),
                         ("32", "'dims.height.multiple' must be a positive integer"),
                         (48, r"'dims.height': .*not a multiple of 48")):
        copy = tmp_path / f"m{value}"
        shutil.copytree(engine, copy)
        data["dims"]["height"]["multiple"] = value
        (copy / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ManifestError, match=match):
            read_manifest(copy)


def test_the_runtime_refuses_sizes_off_the_multiple_by_name(deployable_engine):
    from kiln.runtime import Engine

    engine, _, _ = engine_of(deployable_engine, "glpn", "depth-estimation")
    for backend in ("aoti", "torchscript"):
        e = Engine(engine, backend=backend)
        out = e.run({"pixel_values": np.zeros((1, 3, 96, 160), np.float32)})
        assert out["predicted_depth"].shape == (1, 96, 160)
        with pytest.raises(InputShapeError, match=r"dimension 2 \('height'\) is 100, not a multiple of 32.*e\.g\. 96 or 128"):
            e.run({"pixel_values": np.zeros((1, 3, 100, 128), np.float32)})
        with pytest.raises(InputShapeError, match=r"\('width'\) is 1376, outside the engine's range 64\.\.1344"):
            e.run({"pixel_values": np.zeros((1, 3, 64, 1376), np.float32)})


def test_kiln_run_tool_refuses_a_dim_off_the_multiple(deployable_engine):
    import sys

    tool = str(Path(sys.executable).parent / "kiln-run")  # installed beside the interpreter by make setup
    engine, _, _ = engine_of(deployable_engine, "glpn", "depth-estimation")
    bad = subprocess.run([tool, str(engine), "--dim", "height=100", "--iters", "1"], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "dimension 'height' is 100, not a multiple of 32" in bad.stdout + bad.stderr
    good = subprocess.run([tool, str(engine), "--dim", "height=96", "--dim", "width=128", "--iters", "1"],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr


def test_a_checkpoint_build_takes_the_processor_size_and_refuses_another(seg_ckpt, tmp_path):
    from kiln.exporters import build
    from kiln.recipe import Recipe, parse_dims

    ckpt, _ = seg_ckpt
    recipe = Recipe.for_checkpoint(ckpt)
    assert (recipe.dims["height"].min, recipe.dims["height"].max) == (64, 64)  # its preprocessor's 64x64
    recipe.with_dims(parse_dims(["height=512:512:512", "width=512:512:512"]))
    with pytest.raises(InvalidArgumentError, match=r"makes images of height=64:64:64, width=64:64:64 .*--dims height"):
        build(recipe, output=tmp_path / "engine", formats=["torchscript"])
    assert not (tmp_path / "engine").exists()


# --- the pipelines ---------------------------------------------------------------------------------


def test_depth_pipeline_groups_sizes_and_names_what_it_cannot_take(deployable_engine):
    from kiln.pipelines import pipeline

    engine, _, _ = engine_of(deployable_engine, "glpn", "depth-estimation")
    pipe = pipeline(engine)
    photos = samples.photos()
    answers = pipe([photos[1], photos[0], photos[1]])  # two sizes: two batches, answers in order
    assert [a["predicted_depth"].shape for a in answers] == [(400, 600), (512, 512), (400, 600)]
    np.testing.assert_array_equal(answers[0]["predicted_depth"], answers[2]["predicted_depth"])
    alone = pipe([photos[0]])[0]["predicted_depth"]
    assert np.abs(answers[1]["predicted_depth"] - alone).max() <= 1e-5  # batch 2 vs batch 1
    with pytest.raises(InputValueError, match="different sizes"):
        pipe.preprocess([photos[0], photos[1]])
    with pytest.raises(InputValueError, match=r"becomes 1408x64.*width 64\.\.1344"):
        pipe([np.zeros((64, 1408, 3), np.uint8)])
    with pytest.raises(InputValueError, match=r"image 0 \(64x20\) becomes 64x0"):
        pipe([np.zeros((20, 64, 3), np.uint8)])
    with pytest.raises(InputValueError, match="no image given"):
        pipe([])


@pytest.mark.parametrize("family, task", [("segformer", "semantic-segmentation"), ("glpn", "depth-estimation")])
def test_kiln_run_save_writes_a_picture_of_the_image_size(deployable_engine, tmp_path, family, task, capsys):
    from kiln.cli import main

    engine, _, _ = engine_of(deployable_engine, family, task)
    photos = []
    for name, array in zip(("coffee", "rocket"), samples.photos(("coffee", "rocket"))):
        path = tmp_path / f"{name}.jpg"
        Image.fromarray(array).save(path)
        photos.append(path)
    assert main(["run", str(engine), str(photos[0]), "--save", str(tmp_path / "one.png")]) == 0
    shown = capsys.readouterr().out
    with Image.open(tmp_path / "one.png") as picture:
        assert picture.format == "PNG" and picture.size == (600, 400) and picture.mode == "RGB"
    if task == "semantic-segmentation":
        assert "%" in shown and "labels" in shown
    else:
        assert "median" in shown and " m" in shown
    assert main(["run", str(engine), *map(str, photos), "--save", str(tmp_path / "two.png"), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["saved"] == [str(tmp_path / "two-0.png"), str(tmp_path / "two-1.png")]
    assert [r["size"] for r in answer["results"]] == [[400, 600], [427, 640]]
    with Image.open(tmp_path / "two-1.png") as picture:
        assert picture.size == (640, 427)
    assert main(["run", str(engine), str(photos[0]), "--save", str(tmp_path / "bad.xyz")]) == 2
    assert "name a picture file" in capsys.readouterr().err


def test_pictures_are_drawn_without_matplotlib():
    from kiln.processing.depth import colour_ramp, draw_depth
    from kiln.processing.segmentation import draw_segmentation, label_colours

    colours = label_colours(150)
    assert len({tuple(c) for c in colours}) == 150  # distinct
    ramp = colour_ramp(np.array([0.0, 0.5, 1.0]))
    assert ramp.dtype == np.uint8 and ramp[0].sum() > ramp[2].sum()  # near bright, far dark
    photo = Image.fromarray(samples.photos(("chelsea",))[0])
    labels = np.zeros((photo.height, photo.width), np.int64)
    labels[:, 200:] = 3
    picture = draw_segmentation(photo, labels, ["a", "b", "c", "d"])
    assert picture.size == photo.size
    assert np.array(picture)[-1, -1].tolist() != np.array(photo)[-1, -1].tolist()  # tinted
    assert draw_depth(np.linspace(1, 5, 64 * 96, dtype=np.float32).reshape(64, 96)).size == (96, 64)
