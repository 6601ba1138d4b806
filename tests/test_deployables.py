"""Every registered deployable, end to end, with no test written for it by hand.

For each (family, task) the registry collects: a tiny transformers model of its reference
class, saved with save_pretrained (the format of a user's checkpoint); kiln loads it strictly
and its eager outputs equal transformers' graph by graph; `kiln build --checkpoint` builds
every CPU format; parity passes on every backend, answers included; the pipeline's answers
equal transformers' pipeline's (or, for generation, transformers' generate's tokens); and
every graph is ready for TensorRT's ONNX parser. A new family gets all of this by declaring
its deployables.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LABELS, all_deployables, deployable_id, make_checkpoint

from kiln import samples
from kiln.checkpoint import load_model
from kiln.manifest import GenerationManifest, graph_manifests, read_manifest
from kiln.testing import graphs_equal_transformers

DEPLOYABLES = all_deployables()
ids = [deployable_id(d) for d in DEPLOYABLES]
EVERY_BACKEND = {"torchscript-python", "aoti-python", "onnxruntime", "kiln-torchscript", "kiln-aoti"}


@pytest.mark.parametrize("d", DEPLOYABLES, ids=ids)
@torch.no_grad()
def test_loads_strictly_and_computes_what_transformers_does(d, tmp_path):
    ckpt, hf = make_checkpoint(d, tmp_path / "ckpt")
    graphs_equal_transformers(d, ckpt, hf)


GENERATION = [d for d in DEPLOYABLES if d.generation is not None]


def _store_own_head(d, ckpt, **config) -> object:
    """Give the checkpoint an lm_head.weight unlike its embeddings (and `config` in config.json);
    returns transformers' model loaded from it."""
    import json

    import transformers
    from safetensors.torch import load_file, save_file

    state = load_file(ckpt / "model.safetensors")
    embeddings = next(k for k in ("transformer.wte.weight", "model.shared.weight", "shared.weight") if k in state)
    state["lm_head.weight"] = torch.randn(state[embeddings].shape, generator=torch.Generator().manual_seed(7))
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    if config:
        saved = {k: v for k, v in json.loads((ckpt / "config.json").read_text()).items() if k not in config}
        (ckpt / "config.json").write_text(json.dumps({**saved, **{k: v for k, v in config.items() if v is not None}}))
    hf = getattr(transformers, d.reference_class).from_pretrained(ckpt).eval()
    assert torch.equal(hf.get_output_embeddings().weight, state["lm_head.weight"])
    return hf


@pytest.mark.parametrize("d", GENERATION, ids=[deployable_id(d) for d in GENERATION])
@torch.no_grad()
def test_an_untied_output_head_is_the_checkpoints_own(d, tmp_path):
    """tie_word_embeddings false: the checkpoint's lm_head is loaded (not the embeddings), and a
    checkpoint without one is refused, naming the key."""
    from safetensors.torch import load_file, save_file

    from kiln.errors import CheckpointError

    ckpt, hf = make_checkpoint(d, tmp_path / "ckpt", tie_word_embeddings=False)
    if torch.equal(hf.get_output_embeddings().weight, hf.get_input_embeddings().weight):
        # transformers 5 ties T5's head whatever the config says (its config keeps the flag as
        # scale_decoder_outputs): write the checkpoint as the Hub holds T5 v1.1 and flan-t5, with
        # tie_word_embeddings false and a head of its own
        hf = _store_own_head(d, ckpt, tie_word_embeddings=False, scale_decoder_outputs=None)
    assert not torch.equal(hf.get_output_embeddings().weight, hf.get_input_embeddings().weight)
    graphs_equal_transformers(d, ckpt, hf)
    state = load_file(ckpt / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing key 'lm_head.weight'"):
        load_model(d.model, ckpt)


@pytest.mark.parametrize("d", GENERATION, ids=[deployable_id(d) for d in GENERATION])
@torch.no_grad()
def test_a_tied_head_stored_with_values_of_its_own_is_untied(d, tmp_path):
    """A config that says tied, with an lm_head.weight in the checkpoint unlike the embeddings (a
    head fine-tuned apart, a checkpoint re-saved by transformers 5): the head is the checkpoint's,
    as transformers loads it, never silently the embeddings."""
    ckpt, _ = make_checkpoint(d, tmp_path / "ckpt")
    graphs_equal_transformers(d, ckpt, _store_own_head(d, ckpt))


@pytest.mark.parametrize("d", DEPLOYABLES, ids=ids)
def test_builds_every_format_and_every_backend_matches_eager(d, deployable_engine):
    engine, ckpt, _ = deployable_engine(d)
    m = read_manifest(engine)
    assert (m.family, m.task, m.weights, m.random_keys) == (d.family, d.task, "real", [])
    assert m.kind == d.kind
    for g in graph_manifests(engine):
        assert {a.format for a in g.artifacts} == {"torchscript", "onnx", "aoti"}
        for a in g.artifacts:
            g.artifact_path(a)  # inside the engine, the size and sha256 the manifest records
        assert all(s.values is not None for s in g.inputs if s.dtype == "int64"), "index inputs are bounded"
        if d.labels:
            assert g.labels == LABELS[d.task]  # from the checkpoint's id2label
    if isinstance(m, GenerationManifest):
        from kiln.parity import run_generation_parity

        report = run_generation_parity(engine)
        for graph, r in report.graphs.items():
            assert EVERY_BACKEND <= set(r.backends), (graph, sorted(r.backends))
        for case, rows in report.tokens.items():
            assert {"kiln-torchscript", "kiln-aoti", "onnxruntime"} <= set(rows), case
            if "sampling" not in case:
                assert "transformers-generate" in rows, case
        failed = {c: {b: v for b, v in rows.items() if not v[0]} for c, rows in report.tokens.items()}
        assert report.passed, (
            failed,
            {
                g: {n: b.error or b.task_detail for n, b in r.backends.items() if not b.passed}
                for g, r in report.graphs.items()
            },
        )
    else:
        from kiln.parity import run_parity

        report = run_parity(engine)
        assert set(report.backends) == EVERY_BACKEND
        assert "kiln-tensorrt" in report.skipped and "tensorrt-python" in report.skipped
        for name, b in report.backends.items():
            assert b.error is None, b.error
            assert b.task_match, (name, b.task_detail)
            for out, o in b.outputs.items():
                assert o["pass"] and o["cosine"] >= 0.9999, (name, out, o)
        assert report.passed and report.iterations >= 3


# --- answers: the pipeline through the C++ runtime vs transformers' own ------------------------


def _hf_pipeline(task: str, ckpt):
    import transformers

    return transformers.pipeline(task, model=str(ckpt), device="cpu")


def _classification(pipe, ckpt, inputs):
    feed, ctx = pipe.preprocess(inputs)
    ours = pipe.postprocess(pipe.run(feed), ctx, top_k=None)
    theirs = _hf_pipeline(pipe.task, ckpt)(inputs, top_k=len(pipe.manifest.labels))
    for o, t in zip(ours, theirs):
        assert [x["label"] for x in o] == [x["label"] for x in t]
        np.testing.assert_allclose([x["score"] for x in o], [x["score"] for x in t], atol=1e-5)


def _text_classification(pipe, ckpt, hf):
    _classification(pipe, ckpt, samples.SENTENCES)


def _token_classification(pipe, ckpt, hf):
    ours = pipe(samples.ENTITY_SENTENCES)
    theirs = _hf_pipeline("token-classification", ckpt)(samples.ENTITY_SENTENCES, aggregation_strategy="simple")
    assert sum(len(o) for o in ours) > 0, "the tiny model tags something"
    for o, t in zip(ours, theirs):
        assert [(e["label"], e["start"], e["end"]) for e in o] == [(e["entity_group"], e["start"], e["end"]) for e in t]
        np.testing.assert_allclose([e["score"] for e in o], [e["score"] for e in t], atol=1e-4)


def _question_answering(pipe, ckpt, hf):
    """kiln's answer equals a brute-force search over transformers' logits, inside the context."""
    import transformers

    answers = pipe([q for q, _ in samples.QA_PAIRS], [c for _, c in samples.QA_PAIRS])
    tok = transformers.AutoTokenizer.from_pretrained(str(ckpt))
    for (q, c), ans in zip(samples.QA_PAIRS, answers):
        enc = tok(q, c, return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            out = hf(**{k: v for k, v in enc.items() if k in pipe.manifest.input_names})
        ctx = [i for i, s in enumerate(enc.sequence_ids(0)) if s == 1]
        ps = torch.softmax(out.start_logits[0, ctx], -1)
        pe = torch.softmax(out.end_logits[0, ctx], -1)
        best = max(((ps[i] * pe[j]).item(), i, j) for i in range(len(ctx)) for j in range(i, min(len(ctx), i + 30)))
        start, end = offsets[ctx[best[1]]][0], offsets[ctx[best[2]]][1]
        assert (ans["start"], ans["end"]) == (start, end)
        assert ans["answer"] == c[start:end] and ans["answer"] in c
        assert ans["score"] == pytest.approx(best[0], abs=1e-5)


def _fill_mask(pipe, ckpt, hf):
    text = f"The capital of France is {pipe.tokenizer.mask_token}."
    ours = pipe([text])[0][0]
    theirs = _hf_pipeline("fill-mask", ckpt)(text, top_k=5)
    assert [o["token_id"] for o in ours] == [t["token"] for t in theirs]
    np.testing.assert_allclose([o["score"] for o in ours], [t["score"] for t in theirs], atol=1e-5)


def _feature_extraction(pipe, ckpt, hf):
    """The embeddings are what sentence-transformers computes with transformers."""
    import transformers

    texts = [samples.SEARCH_QUERY, *samples.SEARCH_DOCUMENTS]
    enc = transformers.AutoTokenizer.from_pretrained(str(ckpt))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = hf(**{k: v for k, v in enc.items() if k in pipe.manifest.input_names}).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert np.abs(pipe(texts) - ref).max() <= 1e-5


def _image_classification(pipe, ckpt, hf):
    from PIL import Image

    photos = [Image.fromarray(p) for p in samples.photos()]
    _classification(pipe, ckpt, photos)


def _object_detection(pipe, ckpt, hf):
    """Every query (threshold 0) of every photo, one photo per call as transformers' pipeline runs
    them: the same labels, scores and whole-pixel boxes; and kiln's post-processing of the engine's
    outputs against transformers' of its own model's: the same label ids, boxes within 1e-3 px."""
    import transformers
    from PIL import Image

    from kiln.processing.detection import post_process_object_detection

    photos = [Image.fromarray(p) for p in samples.photos()]
    ours = pipe(photos, threshold=0.0)
    theirs = _hf_pipeline("object-detection", ckpt)(photos, threshold=0.0)
    queries = pipe.manifest.config["num_queries"]
    processor = transformers.AutoImageProcessor.from_pretrained(str(ckpt))
    for photo, o, t in zip(photos, ours, theirs):
        assert len(o) == len(t) == queries
        assert [x["label"] for x in o] == [x["label"] for x in t]
        np.testing.assert_allclose([x["score"] for x in o], [x["score"] for x in t], atol=1e-5)
        corners = ("xmin", "ymin", "xmax", "ymax")
        box_o = np.array([[x["box"][k] for k in corners] for x in o])
        box_t = np.array([[x["box"][k] for k in corners] for x in t])
        assert np.abs(box_o - box_t).max() <= 1  # whole pixels of floats within 1e-3 px
        feed, ctx = pipe.preprocess([photo])
        out = pipe.run(feed)
        raw = post_process_object_detection(out["logits"], out["pred_boxes"], 0.0, ctx["sizes"])[0]
        with torch.no_grad():
            hf_out = hf(**processor(photo, return_tensors="pt"))
        ref = processor.post_process_object_detection(hf_out, 0.0, [(photo.height, photo.width)])[0]
        assert raw["labels"].tolist() == ref["labels"].tolist()
        assert np.abs(raw["boxes"] - ref["boxes"].numpy()).max() <= 1e-3


def _speech_recognition(pipe, ckpt, hf):
    import transformers

    speech = samples.speech_files()
    ours = pipe(speech)
    fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(ckpt)
    tok = transformers.AutoTokenizer.from_pretrained(ckpt)
    theirs = []
    for w in (pipe.processor.load(f) for f in speech):  # one utterance at a time, as HF's pipeline
        feats = fe(w, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            theirs.append(tok.decode(hf(**feats).logits.argmax(-1)[0]))
    assert ours == theirs
    assert any(t for t in ours), "the tiny model says something"


def _audio_classification(pipe, ckpt, hf):
    """One utterance at a time (as transformers' pipeline runs them), from the same 16 kHz waves."""
    hf_pipe = _hf_pipeline("audio-classification", ckpt)
    for wave in (pipe.processor.load(f) for f in samples.speech_files()):
        feed, ctx = pipe.preprocess([wave])
        ours = pipe.postprocess(pipe.run(feed), ctx, top_k=None)[0]
        theirs = hf_pipe({"raw": wave, "sampling_rate": 16000}, top_k=len(pipe.manifest.labels))
        assert [x["label"] for x in ours] == [x["label"] for x in theirs]
        np.testing.assert_allclose([x["score"] for x in ours], [x["score"] for x in theirs], atol=1e-5)


def _generation(pipe, ckpt, hf):
    """The pipeline's text is the decoded tokens of transformers' generate, streamed piece by piece."""
    import transformers

    from kiln.parity import transformers_generate

    text = samples.PROMPTS[2]
    prompts, _ = pipe.preprocess([text])
    prefix = pipe.manifest.processing.get("prefix", "")
    if getattr(hf.config, "task_specific_params", None):  # T5: the checkpoint's task prefix goes first
        assert prefix and prefix in str(hf.config.task_specific_params), prefix
    # the prompt's ids are the checkpoint's own tokenizer's (a SentencePiece model converted at build)
    assert prompts[0] == transformers.AutoTokenizer.from_pretrained(ckpt)(prefix + text).input_ids
    pieces: list[str] = []
    out = pipe(text, on_text=lambda row, piece: pieces.append(piece), max_new_tokens=20)
    assert "".join(pieces) == out[0]["text"] or not pieces  # beam search streams at the end
    ref = transformers_generate(pipe.manifest)(prompts, {"max_new_tokens": 20})
    assert out[0]["tokens"] == ref[0]


def _semantic_segmentation(pipe, ckpt, hf):
    """Photo by photo, kiln's label map (the C++ runtime, kiln's processing) against transformers'
    image-segmentation pipeline's masks: every pixel where transformers' own upsampled scores are
    decisive (top-2 margin > 1e-3) has transformers' label; near-ties may differ, and are rare."""
    import transformers
    from PIL import Image
    from transformers.modeling_outputs import SemanticSegmenterOutput

    photos = [Image.fromarray(p) for p in samples.photos()]
    ours = pipe(photos)
    hf_pipe = _hf_pipeline("image-segmentation", ckpt)
    proc = transformers.AutoImageProcessor.from_pretrained(str(ckpt))
    label_ids = {label: i for i, label in enumerate(pipe.labels)}
    decisive_total = 0
    for photo, answer in zip(photos, ours):
        theirs = np.full((photo.height, photo.width), -1)
        for seg in hf_pipe(photo):
            theirs[np.array(seg["mask"]) == 255] = label_ids[seg["label"]]
        assert (theirs >= 0).all() and answer["segmentation"].shape == theirs.shape
        with torch.no_grad():
            logits = hf(**proc(images=photo, return_tensors="pt")).logits
        scores = proc.post_process_semantic_segmentation(
            SemanticSegmenterOutput(logits=logits), target_sizes=[(photo.height, photo.width)],
            return_segmentation_scores=True,
        )[0]["segmentation_scores"].numpy()
        top2 = np.sort(scores, axis=0)[-2:]
        decisive = top2[1] - top2[0] > 1e-3
        differ = answer["segmentation"] != theirs
        assert not (differ & decisive).any(), int((differ & decisive).sum())
        assert differ.mean() < 1e-3
        decisive_total += int(decisive.sum())
        present = {s["label"] for s in answer["segments"]}
        assert {pipe.labels[i] for i in np.unique(theirs[decisive])} <= present
    assert decisive_total > 0.9 * sum(p.width * p.height for p in photos), "the tiny model's answers are decisive"


def _depth_estimation(pipe, ckpt, hf):
    """Photo by photo (four sizes, so four batches), kiln's depth at the image's size against
    transformers' depth-estimation pipeline: AbsRel <= 1e-4, the 0-255 picture within 1 level on
    >= 99.9 % of its pixels."""
    from PIL import Image

    photos = [Image.fromarray(p) for p in samples.photos()]
    ours = pipe(photos)
    hf_pipe = _hf_pipeline("depth-estimation", ckpt)
    for photo, answer in zip(photos, ours):
        theirs = hf_pipe(photo)
        ref = theirs["predicted_depth"].numpy()
        got = answer["predicted_depth"]
        assert got.shape == ref.shape == (photo.height, photo.width)
        assert np.mean(np.abs(got - ref) / ref) <= 1e-4
        levels = np.abs(answer["depth"].astype(int) - np.array(theirs["depth"]).astype(int))
        assert (levels <= 1).mean() >= 0.999, (levels <= 1).mean()
        assert ref.max() - ref.min() > 0.1, "the tiny model's depth is not flat"


def _image_segmentation(pipe, ckpt, hf):
    """Mask2Former, photo by photo, each subtask against transformers' image-segmentation pipeline
    (threshold 0 for instance and panoptic, so that the tiny random model keeps segments): the
    same segments in order (labels, scores to 1e-4) whose masks agree on >= 99.9 % of the pixels;
    semantic: the same labels present, the maps agreeing on >= 99.9 % of the pixels."""
    from PIL import Image

    photos = [Image.fromarray(p) for p in samples.photos()]
    hf_pipe = _hf_pipeline("image-segmentation", ckpt)
    kept = 0
    for subtask in ("panoptic", "instance", "semantic"):
        options = {} if subtask == "semantic" else {"threshold": 0.0}
        for photo in photos:
            ours = pipe([photo], subtask=subtask, **options)[0]
            theirs = hf_pipe(photo, subtask=subtask, **options)
            assert ours["segmentation"].shape == (photo.height, photo.width)
            assert [s["label"] for s in ours["segments"]] == [t["label"] for t in theirs], subtask
            for s, t in zip(ours["segments"], theirs):
                if subtask != "semantic":
                    assert abs(s["score"] - t["score"]) <= 1e-4, (subtask, s, t["score"])
                mask = ours["segmentation"] == s["id"]
                assert (mask == (np.array(t["mask"]) == 255)).mean() >= 0.999, (subtask, s["label"])
            kept += len(ours["segments"])
    assert kept > 3 * len(photos), "the tiny model finds segments"


ANSWERS = {
    "text-classification": _text_classification,
    "token-classification": _token_classification,
    "question-answering": _question_answering,
    "fill-mask": _fill_mask,
    "feature-extraction": _feature_extraction,
    "image-classification": _image_classification,
    "object-detection": _object_detection,
    "automatic-speech-recognition": _speech_recognition,
    "audio-classification": _audio_classification,
    "text-generation": _generation,
    "summarization": _generation,
    "translation": _generation,
    "semantic-segmentation": _semantic_segmentation,
    "depth-estimation": _depth_estimation,
    "image-segmentation": _image_segmentation,
}


@pytest.mark.parametrize("d", DEPLOYABLES, ids=ids)
def test_answers_equal_transformers(d, deployable_engine):
    from kiln.pipelines import pipeline

    engine, ckpt, hf = deployable_engine(d)
    assert d.task in ANSWERS, f"no answer check for the task {d.task}: add one to ANSWERS"
    pipe = pipeline(engine)
    from kiln.backends import auto_backend
    from kiln.manifest import graph_manifests
    from kiln.runtime import available_backends
    # a compiled artifact through the C++ runtime: the one `kiln build` measured faster here
    assert pipe.backend == auto_backend(graph_manifests(engine)[-1], available_backends()) in ("aoti", "torchscript")
    ANSWERS[d.task](pipe, ckpt, hf)


@pytest.mark.parametrize("d", DEPLOYABLES, ids=ids)
def test_every_graph_is_tensorrt_ready(d, deployable_engine):
    from kiln.check_trt import check_engine

    engine, _, _ = deployable_engine(d)
    for g in graph_manifests(engine):
        report = check_engine(g.path)
        assert report.passed, (g.graph, [f for f in report.findings if not f.ok])
        checks = {f.check for f in report.findings}
        assert checks == {"opset", "domains", "operators", "types", "float64", "fold-constants", "folded-parity"}
