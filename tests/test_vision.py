"""ViT and ConvNeXT beyond the registry-driven tests: base checkpoints with a random head, strict
loading, configs and random weights, pixel parity of the image processor with transformers' on
real photos (skimage.data), every input kind, input errors, random-weight recipes, `kiln run`.

Tiny configs with random weights, saved with save_pretrained, stand in for real checkpoints
(none are reachable here); every parameter is perturbed so that a skipped LayerNorm, bias or
layer scale shows.
"""
from __future__ import annotations

import io
import zlib
import json

import numpy as np
import pytest
import torch

from kiln import samples
from kiln.checkpoint import load_model, random_checkpoint
from kiln.errors import CheckpointError, InputValueError
from kiln.models.convnext import ConvNextConfig, ConvNextForImageClassification
from kiln.models.vit import ViTConfig, ViTForImageClassification
from kiln.processing.image import ImageProcessor
from kiln.recipe import RECIPE_DIR

LABELS = ["cat", "dog", "rocket", "coffee", "astronaut", "clock", "tree", "car", "boat", "bird"]
TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                image_size=32, patch_size=8, layer_norm_eps=1e-12)
TINY_CONVNEXT = dict(hidden_sizes=[8, 16, 24], depths=[1, 2, 1], num_stages=3, image_size=32)
VIT_PREPROCESSOR = {"image_processor_type": "ViTImageProcessor", "do_resize": True,
                    "size": {"height": 32, "width": 32}, "resample": 2, "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_normalize": True,
                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
CONVNEXT_PREPROCESSOR = {"image_processor_type": "ConvNextImageProcessor", "do_resize": True,
                         "size": {"shortest_edge": 32}, "crop_pct": 0.875, "resample": 3,
                         "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                         "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
FAMILIES = {
    "vit": ("ViTConfig", "ViTForImageClassification", TINY_VIT, VIT_PREPROCESSOR,
            ViTForImageClassification),
    "convnext": ("ConvNextConfig", "ConvNextForImageClassification", TINY_CONVNEXT,
                 CONVNEXT_PREPROCESSOR, ConvNextForImageClassification),
}


def make_checkpoint(out, family: str, seed: int = 0, base: bool = False, labels=LABELS):
    """A tiny transformers model of `family` with perturbed random weights, saved with
    save_pretrained, plus its preprocessor_config.json. Returns (dir, eval-mode HF model)."""
    import transformers
    cfg_name, cls_name, tiny, pre, _ = FAMILIES[family]
    cfg = getattr(transformers, cfg_name)(**tiny, id2label=dict(enumerate(labels)),
                                          label2id={l: i for i, l in enumerate(labels)})
    torch.manual_seed(seed)
    hf_cls = cls_name.replace("ForImageClassification", "Model") if base else cls_name
    model = getattr(transformers, hf_cls)(cfg).eval()
    with torch.no_grad():  # HF's init leaves biases 0, LayerNorms identity, layer scale 1e-6
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(pre))
    return out, model


# --- models ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_base_checkpoint_with_random_head(tmp_path, family):
    ckpt, hf = make_checkpoint(tmp_path / family, family, base=True)
    cls = FAMILIES[family][4]
    with pytest.raises(CheckpointError, match="classifier.weight.*random_head=True"):
        load_model(cls, ckpt)
    ours = load_model(cls, ckpt, random_head=True, seed=3)
    assert ours.random_keys == ["classifier.bias", "classifier.weight"]
    if family == "vit":  # ViTModel checkpoints carry the unused [CLS] pooler
        assert ours.ignored_checkpoint_keys == ["pooler.dense.bias", "pooler.dense.weight"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x).pooler_output if family == "convnext" else hf(pixel_values=x).last_hidden_state[:, 0]
        feats = ours.convnext(x) if family == "convnext" else ours.vit(x)[:, 0]
    assert (feats - ref).abs().max().item() <= 1e-4


def test_strict_loading_names_key_and_shapes(tmp_path):
    from safetensors.torch import load_file, save_file
    ckpt, _ = make_checkpoint(tmp_path / "vit", "vit")
    state = load_file(ckpt / "model.safetensors")
    state["vit.embeddings.position_embeddings"] = torch.zeros(1, 5, 32)
    del state["vit.layernorm.weight"]
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"(?s)missing key 'vit.layernorm.weight'.*"
                                              r"position_embeddings.*\[1, 5, 32\].*\[1, 17, 32\]"):
        load_model(ViTForImageClassification, ckpt)


def test_configs_round_trip_through_transformers():
    import transformers
    for ours, theirs in ((ViTConfig(**TINY_VIT), transformers.ViTConfig),
                         (ConvNextConfig(**TINY_CONVNEXT), transformers.ConvNextConfig)):
        d = ours.to_dict()
        hf = theirs(**{k: v for k, v in d.items() if k != "model_type"})
        assert type(ours).from_dict(hf.to_dict()) == ours


def test_random_weights_follow_hf_init_and_seed(tmp_path):
    """Random weights at a given config: deterministic per seed, HF's init rules."""
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"model_type": "convnext", **TINY_CONVNEXT, "num_labels": 4}))
    (cfg / "preprocessor_config.json").write_text(json.dumps(CONVNEXT_PREPROCESSOR))
    a = random_checkpoint(ConvNextForImageClassification, cfg, seed=0, out_dir=tmp_path / "a")
    b = random_checkpoint(ConvNextForImageClassification, cfg, seed=0, out_dir=tmp_path / "b")
    c = random_checkpoint(ConvNextForImageClassification, cfg, seed=1, out_dir=tmp_path / "c")
    assert (a / "preprocessor_config.json").is_file()
    ma, mb, mc = (load_model(ConvNextForImageClassification, d).state_dict() for d in (a, b, c))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert not torch.equal(ma["classifier.weight"], mc["classifier.weight"])
    assert torch.all(ma["convnext.encoder.stages.0.layers.0.layer_scale_parameter"] == 1e-6)
    assert torch.all(ma["convnext.layernorm.weight"] == 1) and torch.all(ma["classifier.bias"] == 0)
    assert abs(ma["convnext.encoder.stages.2.layers.0.pwconv1.weight"].std().item() - 0.02) < 0.004


# --- image processing -------------------------------------------------------------------------

def _hf_processor(config: dict, tmp_path):
    import transformers
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    return transformers.AutoImageProcessor.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("name", ["vit-base-patch16-224", "convnext-tiny-224", "convnext-384"])
def test_pixels_match_transformers_on_real_photos(tmp_path, name):
    if name == "convnext-384":  # shortest_edge >= 384: ConvNeXT warps instead of crops
        config = {**CONVNEXT_PREPROCESSOR, "size": {"shortest_edge": 384}}
    else:
        config = json.loads((RECIPE_DIR / "configs" / name / "preprocessor_config.json").read_text())
    photos = samples.photos()
    ours = ImageProcessor.from_dict(config)(photos)
    theirs = _hf_processor(config, tmp_path)(photos, return_tensors="np")["pixel_values"]
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-5


def test_every_input_kind_gives_the_same_pixels(tmp_path):
    from PIL import Image
    photo = samples.photos(["chelsea"])[0]
    png = tmp_path / "chelsea.png"
    Image.fromarray(photo).save(png)
    proc = ImageProcessor.from_dict(CONVNEXT_PREPROCESSOR)
    ref = proc([photo])
    for image in (str(png), png, png.read_bytes(), Image.fromarray(photo)):
        assert np.array_equal(proc(image), ref)
    jpeg = io.BytesIO()
    Image.fromarray(photo).save(jpeg, format="JPEG", quality=95)
    assert np.abs(proc(jpeg.getvalue()) - ref).max() < 1.0  # lossy, same picture


def test_grayscale_rgba_and_palette_become_rgb_like_transformers(tmp_path):
    from PIL import Image
    photo = samples.photos(["coffee"])[0]
    rgba = np.dstack([photo, np.linspace(0, 255, photo.shape[1], dtype=np.uint8)[None].repeat(photo.shape[0], 0)])
    images = [Image.fromarray(photo).convert("L"), Image.fromarray(rgba),
              Image.fromarray(photo).convert("P"), samples.photos(["camera"])[0]]
    ours = ImageProcessor.from_dict(VIT_PREPROCESSOR)(images)  # the HxW uint8 array too
    theirs = _hf_processor(VIT_PREPROCESSOR, tmp_path)([*images[:3], Image.fromarray(images[3])],
                                                      do_convert_rgb=True, return_tensors="np")["pixel_values"]
    assert ours.shape == (4, 3, 32, 32)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_image_errors_name_the_input(tmp_path):
    from PIL import Image
    proc = ImageProcessor.from_dict(VIT_PREPROCESSOR)
    good = tmp_path / "good.jpg"
    Image.fromarray(samples.photos(["rocket"])[0]).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:2000])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(InputValueError, match=r"image 1 \(.*truncated\.jpg\).*truncated or corrupt"):
        proc([good, truncated])
    with pytest.raises(InputValueError, match=r"image 0 \(.*notes\.txt\).*unsupported format.*JPEG or PNG"):
        proc([text])
    with pytest.raises(InputValueError, match=r"image 0 \(.*missing\.png\): no such file"):
        proc([tmp_path / "missing.png"])
    with pytest.raises(InputValueError, match="no image given"):
        proc([])
    with pytest.raises(InputValueError, match=r"image 2: array of dtype float64.*expected uint8"):
        proc([good, good, np.zeros((8, 8, 3))])
    with pytest.raises(InputValueError, match=r"image 0: got int"):
        proc([3])
    with pytest.raises(InputValueError, match=r"image 0 \(é+\.\.\.\): not a usable file path \(File name too long\)"):  # found by the fuzzer
        proc(["é" * 3000])
    def declared(side: int) -> bytes:  # a 4x4 PNG whose valid header declares side x side pixels
        png = io.BytesIO()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png, format="PNG")
        head = bytearray(png.getvalue())
        head[16:24] = side.to_bytes(4, "big") * 2  # IHDR's width and height
        head[29:33] = zlib.crc32(bytes(head[12:29])).to_bytes(4, "big")  # and its CRC
        return bytes(head)

    with pytest.raises(InputValueError, match=r"9000x9000 pixels, more than kiln decodes \(64 megapixels\)"):
        proc([declared(9000)])  # refused from the header, before decoding allocates
    with pytest.raises(InputValueError, match=r"decompression bomb"):
        proc([declared(100_000)])


# --- engines end to end ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def vision_engines(deployable_engine) -> dict:
    """family -> (engine dir, checkpoint dir) of the tiny engines the registry-driven tests build."""
    from conftest import engine_of
    return {family: engine_of(deployable_engine, family, "image-classification")[:2] for family in FAMILIES}


def test_random_weights_recipe_builds_and_says_so(tmp_path, monkeypatch):
    """The repo recipes' path (a config-only dir, random_weights) at a tiny config."""
    from kiln.exporters import build
    from kiln.parity import run_parity
    from kiln.pipelines import pipeline
    from kiln.recipe import load_recipe
    monkeypatch.setenv("KILN_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "recipes" / "configs" / "tiny-vit"
    cfg.mkdir(parents=True)
    (cfg / "config.json").write_text(json.dumps({"model_type": "vit", **TINY_VIT, "num_labels": 7}))
    (cfg / "preprocessor_config.json").write_text(json.dumps(VIT_PREPROCESSOR))
    recipe_file = tmp_path / "recipes" / "tiny-vit.toml"
    recipe_file.write_text((RECIPE_DIR / "vit-image-classification.toml").read_text()
                           .replace("configs/vit-base-patch16-224", "configs/tiny-vit"))
    result = build(load_recipe(recipe_file), output=tmp_path / "engine", formats=["torchscript", "onnx"])
    m = result.manifest
    assert m.weights == "random" and m.labels == [f"LABEL_{i}" for i in range(7)]
    assert m.source.checkpoint.startswith(str(tmp_path / "cache"))
    assert "random weights" in pipeline(result.path, load_engine=False).random_weights_note
    assert run_parity(result.path).passed


def test_kiln_run_labels_a_photo_file(vision_engines, tmp_path, capsys):
    """`kiln run ENGINE photo.jpg` prints the labels the pipeline gives, for a real JPEG."""
    import json

    from PIL import Image

    from kiln.cli import main
    from kiln.pipelines import pipeline
    engine, _ = vision_engines["vit"]
    photo = tmp_path / "photo.jpg"
    Image.fromarray(samples.photos()[0]).save(photo, quality=95)
    assert main(["run", str(engine), str(photo), "--json", "--top-k", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["results"][0] == pipeline(engine)([str(photo)])[0][:3]
    assert main(["run", str(engine), str(photo)]) == 0
    out = capsys.readouterr().out
    assert str(photo) in out and data["results"][0][0]["label"] in out
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photo.read_bytes()[:200])
    assert main(["run", str(engine), str(broken)]) == 1
    assert "broken.jpg" in capsys.readouterr().err


def test_wrong_image_size_for_a_fixed_size_engine(vision_engines):
    """Through the pipeline any photo is resized to the engine's size (the documented
    conversion); raw pixels of another size are refused by the runtime, naming the input."""
    from kiln.errors import InputShapeError
    from kiln.pipelines import pipeline
    from kiln.runtime import Engine
    engine, _ = vision_engines["convnext"]
    wide = np.zeros((60, 200, 3), np.uint8)
    assert len(pipeline(engine)([wide])[0]) == 5  # resized, then classified
    with pytest.raises(InputShapeError, match=r"pixel_values.*32"):
        Engine(engine).run({"pixel_values": np.zeros((1, 3, 48, 48), np.float32)})
