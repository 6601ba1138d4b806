"""Wav2Vec2: logits parity with transformers (both feature encoders, both encoder layouts, both
weight-norm key layouts, padded batches), audio processing and CTC decoding against
transformers' feature extractor and tokenizer on real (espeak-ng) speech, audio errors, and
one tiny CTC engine end to end on every backend.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from kiln import samples
from kiln.checkpoint import load_model
from kiln.errors import CheckpointError, InputValueError
from kiln.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2ForSequenceClassification
from kiln.processing.audio import AudioProcessor, read_wav
from kiln.processing.ctc import CTCDecoder

TINY = dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            conv_dim=(16, 16, 16), conv_stride=(5, 4, 2), conv_kernel=(10, 4, 2),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, classifier_proj_size=8,
            num_labels=3)
VARIANTS = {  # name: (feat_extract_norm, do_stable_layer_norm, conv_bias)
    "base": ("group", False, False),      # wav2vec2-base: GroupNorm first conv, post-LN encoder
    "lv60": ("layer", True, True),        # wav2vec2-large-lv60: LayerNorm convs, pre-LN encoder
    "layer-postln": ("layer", False, False),
}
HEADS = {"Wav2Vec2ForCTC": Wav2Vec2ForCTC,
         "Wav2Vec2ForSequenceClassification": Wav2Vec2ForSequenceClassification}
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]


def _hf_model(hf_class: str, seed: int = 0, **config):
    import transformers
    cfg = transformers.Wav2Vec2Config(**{**TINY, **config})
    torch.manual_seed(seed)
    model = getattr(transformers, hf_class)(cfg).eval()
    with torch.no_grad():  # HF's init leaves norms at identity and biases at 0: perturb all
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _padded_batch(samples_: int = 4000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, samples_, generator=g)
    mask = torch.ones(3, samples_, dtype=torch.int64)
    mask[1, 3000:] = 0
    mask[2, 1234:] = 0
    return x * mask, mask


# --- model parity ------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("hf_class", HEADS)
def test_logits_match_transformers(tmp_path, variant, hf_class):
    norm, stable, bias = VARIANTS[variant]
    hf = _hf_model(hf_class, feat_extract_norm=norm, do_stable_layer_norm=stable, conv_bias=bias)
    hf.save_pretrained(tmp_path)
    ours = load_model(HEADS[hf_class], tmp_path)
    assert ours.random_keys == [] and ours.ignored_checkpoint_keys == ["wav2vec2.masked_spec_embed"]
    x, mask = _padded_batch()
    with torch.no_grad():
        ref_masked, test_masked = hf(x, attention_mask=mask).logits, ours(x, mask)
        # transformers without a mask ("base" models' usage) == kiln with an all-ones mask
        ref_plain, test_plain = hf(x).logits, ours(x, torch.ones_like(mask))
    assert test_masked.shape == ref_masked.shape
    for ref, test in ((ref_masked, test_masked), (ref_plain, test_plain)):
        err = (ref - test).abs().max().item()
        assert err <= 1e-4, (variant, hf_class, err)
    assert (ref_masked - ref_plain).abs().max() > 1e-3, "the mask changes the answer: it was applied"


def test_old_weight_norm_key_names_load(tmp_path):
    """Checkpoints written before torch's parametrizations name the positional conv's weight
    norm weight_g / weight_v: they load to the same model."""
    from safetensors.torch import load_file, save_file
    hf = _hf_model("Wav2Vec2ForCTC")
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    old = {k.replace("parametrizations.weight.original0", "weight_g")
            .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in old
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours = load_model(Wav2Vec2ForCTC, tmp_path)
    x, mask = _padded_batch()
    with torch.no_grad():
        err = (hf(x, attention_mask=mask).logits - ours(x, mask)).abs().max().item()
    assert err <= 1e-4


def test_checkpoint_of_another_shape_is_refused(tmp_path):
    _hf_model("Wav2Vec2ForCTC").save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["conv_dim"] = [16, 16, 24]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"conv_layers\.2\.conv\.weight.*\[16, 16, 2\].*\[24, 16, 2\]"):
        load_model(Wav2Vec2ForCTC, tmp_path)


def test_config_refuses_what_kiln_does_not_implement():
    with pytest.raises(Exception, match="use_weighted_layer_sum"):
        Wav2Vec2Config.from_dict({"model_type": "wav2vec2", "use_weighted_layer_sum": True})
    cfg = Wav2Vec2Config()
    assert (cfg.frames(16000), cfg.frames(480000), cfg.min_samples) == (49, 1499, 400)


def test_export_with_dynamic_samples():
    """torch.export takes 1 s .. 30 s at 16 kHz through the standard 7-conv stack."""
    cfg = Wav2Vec2Config(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, conv_dim=(8,) * 7, num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2)
    model = Wav2Vec2ForCTC(cfg).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    batch, samples_ = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("samples", min=16000, max=480000)
    x, mask = torch.randn(2, 16000), torch.ones(2, 16000, dtype=torch.int64)
    ep = torch.export.export(model, (x, mask), dynamic_shapes=({0: batch, 1: samples_}, {0: batch, 1: samples_}))
    for n in (16000, 33333):
        x, mask = torch.randn(1, n), torch.ones(1, n, dtype=torch.int64)
        with torch.no_grad():
            out = ep.module()(x, mask)
            assert torch.allclose(out, model(x, mask), atol=1e-5)
        assert out.shape[1] == cfg.frames(n)


# --- audio processing ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def speech() -> list[Path]:
    return samples.speech_files()


def test_wav_decoding_formats(speech, tmp_path):
    """16-bit (espeak-ng), 24-bit stereo, 32-bit, float and 8-bit WAVs decode to the same audio."""
    import scipy.io.wavfile
    src = speech[0]
    ref, rate = read_wav(src)
    assert rate == 22050 and ref.shape[1] == 1
    _, raw = scipy.io.wavfile.read(src)
    np.testing.assert_array_equal(ref[:, 0], raw / 32768.0)
    for args, atol in ((["-b", "24", "-c", "2"], 1e-6), (["-b", "32", "-e", "signed"], 1e-6),
                       (["-e", "floating-point", "-b", "32"], 1e-6), (["-b", "8"], 1 / 64)):
        out = tmp_path / f"{'_'.join(args)}.wav"
        subprocess.run(["sox", str(src), *args, str(out)], check=True)
        x, r = read_wav(out)
        assert r == 22050 and x.shape[0] == ref.shape[0]
        np.testing.assert_allclose(x.mean(axis=1), ref[:, 0], atol=atol)


@pytest.mark.parametrize("return_attention_mask", [True, False])
def test_features_match_transformers(speech, return_attention_mask):
    import transformers
    fe = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=return_attention_mask, do_normalize=True)
    proc = AudioProcessor.from_dict(fe.to_dict())
    waves = [proc.load(f) for f in speech]  # 22050 Hz -> 16 kHz: resampled
    assert all(abs(w.size - read_wav(f)[0].shape[0] * 16000 / 22050) <= 1 for w, f in zip(waves, speech))
    ours = proc(speech)
    if return_attention_mask:  # a padded batch, normalised over each utterance's real samples
        ref = fe(waves, sampling_rate=16000, padding=True, return_tensors="np")
        np.testing.assert_allclose(ours.input_values, ref["input_values"], atol=1e-6)
        np.testing.assert_array_equal(ours.attention_mask, ref["attention_mask"])
    else:  # transformers feeds these models one utterance at a time, without a mask
        for i, w in enumerate(waves):
            ref = fe(w, sampling_rate=16000, return_tensors="np")["input_values"][0]
            np.testing.assert_allclose(ours.input_values[i, :w.size], ref, atol=1e-6)
        assert ours.attention_mask.all()
    assert ours.lengths == [w.size for w in waves]


def test_resampling_agrees_with_sox(speech, tmp_path):
    out = tmp_path / "16k.wav"
    subprocess.run(["sox", str(speech[0]), "-r", "16000", str(out)], check=True)
    ours = AudioProcessor(do_normalize=False).load(speech[0])
    theirs = read_wav(out)[0][:, 0]
    assert abs(ours.size - theirs.size) <= 1
    n = min(ours.size, theirs.size)
    assert np.corrcoef(ours[:n], theirs[:n])[0, 1] > 0.99  # two good filters, not bit-equal


def test_audio_errors(speech, tmp_path):
    proc = AudioProcessor()
    with pytest.raises(InputValueError, match=r"missing\.wav.*cannot be read"):
        proc([tmp_path / "missing.wav"])
    (tmp_path / "notes.txt").write_text("not audio")
    with pytest.raises(InputValueError, match=r"notes\.txt.*not a WAV file"):
        proc([tmp_path / "notes.txt"])
    data = speech[0].read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputValueError, match=r"cut\.wav.*truncated"):
        proc([tmp_path / "cut.wav"])
    subprocess.run(["sox", str(speech[0]), "-e", "ima-adpcm", str(tmp_path / "adpcm.wav")], check=True)
    with pytest.raises(InputValueError, match=r"adpcm\.wav.*not supported"):
        proc([tmp_path / "adpcm.wav"])
    with pytest.raises(InputValueError, match=r"audio 1: empty audio"):
        proc([speech[0], np.zeros(0, np.float32)])
    with pytest.raises(InputValueError, match=r"audio 0 .*samples.*at most 16000"):
        proc([speech[0]], max_samples=16000)
    with pytest.raises(InputValueError, match=r"22050 Hz.*resampling is turned off"):
        AudioProcessor(resample=False)([speech[0]])


# --- CTC decoding --------------------------------------------------------------------------------

def _vocab_dir(path: Path) -> Path:
    import transformers
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    transformers.Wav2Vec2CTCTokenizer(str(path / "vocab.json")).save_pretrained(path)
    return path


def test_ctc_decode_matches_transformers(tmp_path):
    import transformers
    d = _vocab_dir(tmp_path / "tok")
    tok = transformers.Wav2Vec2CTCTokenizer.from_pretrained(d)
    ours = CTCDecoder.from_dir(d)
    v = {t: i for i, t in enumerate(VOCAB)}
    crafted = [v[c] for c in "HEEL"] + [0, v["L"], v["O"], v["|"], v["|"], 0, v["W"], 1, v["E"], 0, 0, v["|"]]
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 60, len(VOCAB))).astype(np.float32)
    logits[:, :, 0] += 1.5  # blanks dominate, as in real CTC output
    ids = [crafted, *logits.argmax(-1).tolist()]
    assert ours.decode_ids(crafted) == tok.decode(crafted) == "HELLO W<s>E"
    assert [ours.decode_ids(i) for i in ids] == tok.batch_decode(ids)
    assert ours.batch_decode(logits) == tok.batch_decode(logits.argmax(-1))
    assert ours.decode_ids(crafted, skip_special_tokens=True) == "HELLO WE"


# --- one engine end to end -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def asr_engine(tmp_path_factory):
    """A tiny CTC checkpoint (standard 7-conv stack, "lv60" layout, a real character vocabulary)
    saved by transformers, built into every format."""
    import transformers
    from kiln import registry
    from kiln.exporters import build
    from kiln.recipe import Recipe
    root = tmp_path_factory.mktemp("w2v-asr")
    ckpt = root / "ckpt"
    hf = _hf_model("Wav2Vec2ForCTC", vocab_size=len(VOCAB), conv_dim=(16,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2),
                   conv_kernel=(10, 3, 3, 3, 3, 2, 2), feat_extract_norm="layer", do_stable_layer_norm=True,
                   conv_bias=True)
    hf.save_pretrained(ckpt)
    _vocab_dir(ckpt)
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(ckpt)
    entry = registry.get("wav2vec2", "automatic-speech-recognition")
    recipe = Recipe(name="tiny-wav2vec2-asr", family="wav2vec2", task="automatic-speech-recognition",
                    checkpoint=str(ckpt), dims=dict(entry.dims),
                    tolerances={p: dict(t) for p, t in entry.tolerances.items()})
    return build(recipe, output=root / "engine").path, ckpt


def test_asr_engine_parity_on_every_backend(asr_engine):
    from kiln.exporters.manifest import read_manifest
    from kiln.parity import run_parity
    engine, _ = asr_engine
    m = read_manifest(engine)
    assert {a["format"] for a in m["artifacts"]} == {"torchscript", "onnx", "aoti"}
    assert {"vocab.json", "preprocessor_config.json"} <= set(m["processing"]["files"])
    assert m["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", "frames", len(VOCAB)]}]
    report = run_parity(engine)
    assert set(report.backends) == {"torchscript-python", "onnxruntime", "kiln-torchscript", "kiln-aoti"}
    for name, b in report.backends.items():
        assert b.error is None, b.error
        assert b.outputs["logits"]["max_abs"] <= 1e-4, (name, b.outputs)
        assert b.task_match, b.task_detail
    assert report.passed


def test_transcripts_match_transformers(asr_engine, speech):
    import transformers
    from kiln.pipelines import pipeline
    engine, ckpt = asr_engine
    pipe = pipeline(engine)  # the C++ runtime, best backend
    ours = pipe(speech)
    fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(ckpt)
    tok = transformers.Wav2Vec2CTCTokenizer.from_pretrained(ckpt)
    model = transformers.Wav2Vec2ForCTC.from_pretrained(ckpt).eval()
    theirs = []
    for w in (pipe.processor.load(f) for f in speech):  # one utterance at a time, as HF's pipeline
        feats = fe(w, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            ids = model(**feats).logits.argmax(-1)[0]
        theirs.append(tok.decode(ids))
    assert ours == theirs
    assert any(t for t in ours), "the tiny model says something"
    with pytest.raises(InputValueError, match=r"at most 480000"):
        pipe([np.zeros(480001, np.float32)])


def test_random_weights_checkpoint_round_trips_through_transformers(tmp_path):
    """The random-weights path of the recipes (a config-only directory): kiln's init gives a
    checkpoint transformers reads back to the same logits, with norms at identity and a live
    positional conv (g = ||v||)."""
    import transformers
    from kiln.checkpoint import random_checkpoint
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    transformers.Wav2Vec2Config(**TINY).to_json_file(cfg_dir / "config.json")
    ckpt = random_checkpoint(Wav2Vec2ForCTC, cfg_dir, seed=3, out_dir=tmp_path / "ckpt")
    ours = load_model(Wav2Vec2ForCTC, ckpt)
    norm = ours.wav2vec2.encoder.layers[0].layer_norm
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    wn = ours.wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight
    torch.testing.assert_close(wn(), wn.original1)
    hf = transformers.Wav2Vec2ForCTC.from_pretrained(ckpt).eval()
    x, mask = _padded_batch()
    with torch.no_grad():
        assert (hf(x, attention_mask=mask).logits - ours(x, mask)).abs().max() <= 1e-4


def test_kiln_run_transcribes_a_wav_file(asr_engine, speech, capsys, tmp_path):
    """`kiln run ENGINE speech.wav` prints the pipeline's transcript; a non-WAV file is an error."""
    import json

    from kiln.cli import main
    from kiln.pipelines import pipeline
    engine, _ = asr_engine
    assert main(["run", str(engine), str(speech[0]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["task"] == "automatic-speech-recognition"
    assert data["results"] == pipeline(engine)([speech[0]])
    assert main(["run", str(engine), str(speech[0])]) == 0
    assert f"transcript: {data['results'][0]!r}" in capsys.readouterr().out
    not_wav = tmp_path / "notes.wav"
    not_wav.write_text("this is text, not audio")
    assert main(["run", str(engine), str(not_wav)]) == 2
    assert "notes.wav" in capsys.readouterr().err


def test_graph_is_tensorrt_ready(asr_engine):
    from kiln.exporters.tensorrt import check_engine
    report = check_engine(asr_engine[0])
    assert report.passed, [f for f in report.findings if not f.ok]
