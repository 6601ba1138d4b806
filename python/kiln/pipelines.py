"""Task pipelines: text, images or audio in, answers out, through the C++ runtime
(`kiln.pipelines.pipeline(dir)`).

Each pipeline is pre-processing (the engine's own tokenizer, image or audio processor), one
`Engine.run`, and post-processing into the task's answer. `preprocess` is also what parity
feeds every backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import samples
from .errors import InputValueError, InvalidArgumentError
from .exporters.manifest import read_manifest


def top_labels(logits: np.ndarray, labels: list[str], top_k: int | None) -> list[list[dict]]:
    """[B, L] logits -> per row the top_k {"label", "score"} (softmax), best first."""
    from .processing.text import classify
    return [[{"label": label, "score": score} for label, score in classify(row, labels, top_k=top_k)]
            for row in logits]


class Pipeline:
    task = ""

    def __init__(self, engine_dir: str | Path, backend: str = "auto", num_threads: int = 0,
                 load_engine: bool = True):
        self.dir = Path(engine_dir)
        self.manifest = read_manifest(self.dir)
        self.engine = None
        if load_engine:
            self._open(backend, num_threads)

    def _open(self, backend: str, num_threads: int) -> None:
        from .runtime import Engine
        self.engine = Engine(self.dir, backend=backend, num_threads=num_threads)

    @property
    def backend(self) -> str | None:
        return self.engine.backend if self.engine else None

    @property
    def random_weights_note(self) -> str | None:
        if self.manifest.get("weights", "real") == "real":
            return None
        if self.manifest.get("weights") == "random":
            return (f"{self.manifest['name']} has random weights (every tensor seeded, real sizes): its "
                    "answers show the path works, they carry no meaning. Build with "
                    "`kiln build RECIPE --checkpoint HF_DIR` for real answers.")
        keys = self.manifest.get("random_keys", [])
        return (f"{self.manifest['name']} has a randomly initialised head ({len(keys)} tensors, "
                "seeded): its answers show the path works, they carry no meaning. Build with "
                "`kiln build RECIPE --checkpoint FINE_TUNED_DIR` for real answers.")

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.engine is None:
            raise InvalidArgumentError("this pipeline was made with load_engine=False")
        return self.engine.run(feed)

    def __call__(self, *args, **kwargs) -> Any:
        feed, ctx = self.preprocess(*args, **kwargs)
        return self.postprocess(self.run(feed), ctx)

    # subclasses: preprocess(...) -> (feed, ctx); postprocess(outputs, ctx) -> answer
    def parity_samples(self) -> list:
        raise NotImplementedError

    def random_feed(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Random valid inputs at the opt sizes (batch 3 where allowed), for parity."""
        from . import registry
        dims = self.manifest["dims"]
        sizes = {name: r["opt"] for name, r in dims.items()}
        if "batch" in dims:
            sizes["batch"] = max(dims["batch"]["min"], min(3, dims["batch"]["max"]))
        entry = registry.get(self.manifest["family"], self.manifest["task"])
        return entry.make_example(self.manifest["config"], sizes, seed)


class TextPipeline(Pipeline):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .processing.text import TextTokenizer
        self.tokenizer = TextTokenizer.from_dir(self.dir)
        seq = self.manifest["dims"]["sequence"]
        self.max_length = int(seq["max"])
        self.min_length = int(seq["min"])

    def _texts(self, texts) -> list[str]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise InputValueError(f"{self.manifest['name']}: no text given; expected one or more strings")
        batch_max = self.manifest["dims"]["batch"]["max"]
        if len(texts) > batch_max:
            raise InputValueError(f"{self.manifest['name']}: {len(texts)} texts, the engine takes at "
                                  f"most {batch_max} per call (dims.batch.max); split the batch")
        return texts

    def encode(self, texts, pairs=None, truncation: bool = False):
        enc = self.tokenizer.encode(texts, pairs, max_length=self.max_length, truncation=truncation)
        return enc, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask,
                     "token_type_ids": enc.token_type_ids}

    def preprocess(self, texts, truncation: bool = False):
        texts = self._texts(texts)
        enc, feed = self.encode(texts, truncation=truncation)
        return feed, {"texts": texts, "encoding": enc}

    def parity_samples(self) -> list:
        return [samples.SENTENCES[:4], samples.SENTENCES[4:5]]


class TextClassificationPipeline(TextPipeline):
    task = "text-classification"

    def postprocess(self, outputs, ctx, top_k: int | None = 1):
        return top_labels(outputs["logits"], self.manifest["labels"], top_k)


class TokenClassificationPipeline(TextPipeline):
    task = "token-classification"

    def parity_samples(self) -> list:
        return [samples.ENTITY_SENTENCES, samples.ENTITY_SENTENCES[:1]]

    def postprocess(self, outputs, ctx):
        from .processing.text import token_entities
        enc = ctx["encoding"]
        labels = self.manifest["labels"]
        return [token_entities(outputs["logits"][i], labels, enc.offsets[i], text,
                               special_mask=enc.special_tokens_mask[i])
                for i, text in enumerate(ctx["texts"])]


class QuestionAnsweringPipeline(TextPipeline):
    task = "question-answering"

    def preprocess(self, questions, contexts=None, truncation: bool = False):
        if contexts is None:  # a list of (question, context) pairs
            pairs = [questions] if isinstance(questions, tuple) else list(questions)
            questions, contexts = [q for q, _ in pairs], [c for _, c in pairs]
        questions, contexts = self._texts(questions), self._texts(contexts)
        if len(questions) != len(contexts):
            raise InputValueError(f"{self.manifest['name']}: {len(questions)} questions but "
                                  f"{len(contexts)} contexts; expected one context per question")
        enc, feed = self.encode(questions, contexts, truncation=truncation)
        return feed, {"questions": questions, "contexts": contexts, "encoding": enc}

    def parity_samples(self) -> list:
        return [samples.QA_PAIRS, samples.QA_PAIRS[:1]]

    def postprocess(self, outputs, ctx, max_answer_len: int = 30):
        from .processing.text import qa_best_span
        enc = ctx["encoding"]
        return [qa_best_span(outputs["start_logits"][i], outputs["end_logits"][i], enc.sequence_ids[i],
                             enc.offsets[i], ctx["contexts"][i], max_answer_len=max_answer_len)
                for i in range(len(ctx["contexts"]))]


class FeatureExtractionPipeline(TextPipeline):
    task = "feature-extraction"

    def postprocess(self, outputs, ctx):
        return outputs["embeddings"]

    def similarity(self, query: str, documents: list[str]) -> list[tuple[float, str]]:
        """Documents ranked by cosine similarity to the query, best first."""
        emb = self([query, *documents])
        emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
        scores = emb[1:] @ emb[0]
        return sorted(zip(scores.tolist(), documents), key=lambda x: -x[0])


class FillMaskPipeline(TextPipeline):
    task = "fill-mask"

    def postprocess(self, outputs, ctx, top_k: int = 5):
        from .processing.text import softmax
        enc = ctx["encoding"]
        mask_id = self.tokenizer.mask_token_id
        results = []
        for i in range(len(ctx["texts"])):
            positions = np.flatnonzero(enc.input_ids[i] == mask_id)
            if positions.size == 0:
                raise InputValueError(f"{self.manifest['name']}: text {i} has no "
                                      f"{self.tokenizer.mask_token} token to fill")
            row = []
            for p in positions:
                probs = softmax(outputs["logits"][i, p])
                best = np.argsort(-probs)[:top_k]
                row.append([{"token": self.tokenizer.id_to_token(int(t)), "token_id": int(t),
                             "score": float(probs[t])} for t in best])
            results.append(row)
        return results


class ImageClassificationPipeline(Pipeline):
    """Images (paths, bytes, PIL images, HxWxC uint8 arrays) -> top-k [{"label", "score"}] each,
    pre-processed as the engine's preprocessor_config.json says (kiln.processing.image)."""

    task = "image-classification"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .processing.image import ImageProcessor
        self.processor = ImageProcessor.from_dir(self.dir)
        spec = next(s for s in self.manifest["inputs"] if s["name"] == "pixel_values")
        expected = tuple(spec["shape"][2:])
        if self.processor.output_size != expected:
            raise InvalidArgumentError(
                f"{self.dir}: preprocessor_config.json makes {self.processor.output_size[0]}x"
                f"{self.processor.output_size[1]} images but the engine takes {expected[0]}x{expected[1]}")

    def preprocess(self, images):
        if not isinstance(images, (list, tuple)):
            images = [images]
        batch_max = self.manifest["dims"]["batch"]["max"]
        if len(images) > batch_max:
            raise InputValueError(f"{self.manifest['name']}: {len(images)} images, the engine takes at "
                                  f"most {batch_max} per call (dims.batch.max); split the batch")
        return {"pixel_values": self.processor(images)}, {"count": len(images)}

    def postprocess(self, outputs, ctx, top_k: int | None = 5):
        return top_labels(outputs["logits"], self.manifest["labels"], top_k)

    def parity_samples(self) -> list:
        photos = samples.photos()
        return [photos, photos[:1]]


class AudioPipeline(Pipeline):
    """WAV paths or arrays in (kiln.processing.audio, as the engine's preprocessor_config.json
    says): decoded, mixed to mono, resampled, normalised, padded to the longest and to the
    engine's smallest accepted length."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .processing.audio import AudioProcessor
        self.processor = AudioProcessor.from_dir(self.dir)
        samples_dim = self.manifest["dims"]["samples"]
        self.min_samples, self.max_samples = int(samples_dim["min"]), int(samples_dim["max"])

    def preprocess(self, audio):
        if isinstance(audio, (str, Path, tuple)) or (isinstance(audio, np.ndarray) and audio.ndim == 1):
            audio = [audio]
        audio = list(audio)
        batch_max = self.manifest["dims"]["batch"]["max"]
        if len(audio) > batch_max:
            raise InputValueError(f"{self.manifest['name']}: {len(audio)} audio inputs, the engine takes "
                                  f"at most {batch_max} per call (dims.batch.max); split the batch")
        batch = self.processor(audio, min_samples=self.min_samples, max_samples=self.max_samples)
        return batch.feed(), {"lengths": batch.lengths}

    def parity_samples(self) -> list:
        files = samples.speech_files()
        return [files, files[:1]]


class SpeechRecognitionPipeline(AudioPipeline):
    """Transcripts by CTC greedy decoding over each utterance's real frames (vocab.json)."""

    task = "automatic-speech-recognition"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .processing.ctc import CTCDecoder
        self.decoder = CTCDecoder.from_dir(self.dir)

    def postprocess(self, outputs, ctx) -> list[str]:
        from .processing.ctc import frame_lengths
        config = self.manifest["config"]
        logits = outputs["logits"]
        frames = frame_lengths(ctx["lengths"], config["conv_kernel"], config["conv_stride"])
        return [self.decoder.decode(logits[i, :n]) for i, n in enumerate(frames)]


class AudioClassificationPipeline(AudioPipeline):
    task = "audio-classification"

    def postprocess(self, outputs, ctx, top_k: int | None = 5):
        return top_labels(outputs["logits"], self.manifest["labels"], top_k)


class TextGenerationPipeline(Pipeline):
    """Text in, generated text out, through kiln::Generator (the C++ loop over the engine's
    decoder graph, and encoder graph for BART). Streams text as tokens arrive."""
    task = "text-generation"

    def __init__(self, engine_dir: str | Path, backend: str = "auto", num_threads: int = 0,
                 load_engine: bool = True):
        from .processing.bpe import BPETokenizer
        self.generator = None
        super().__init__(engine_dir, backend, num_threads, load_engine)
        self.tokenizer = BPETokenizer.from_dir(self.dir)

    def _open(self, backend: str, num_threads: int) -> None:
        from .runtime import Generator
        self.generator = Generator(self.dir, backend=backend, num_threads=num_threads)

    @property
    def backend(self) -> str | None:
        return self.generator.backend if self.generator else None

    def preprocess(self, texts) -> tuple[list[list[int]], dict]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InputValueError("texts: expected at least one prompt")
        return [self.tokenizer.encode(t, name=f"prompt {i}") for i, t in enumerate(texts)], {"texts": texts}

    def __call__(self, texts, on_text=None, **options) -> list[dict]:
        """Generated text per prompt: [{"text", "tokens", "score"?}]. on_text(row, piece) receives
        the text as it is generated (whole characters only); options are generate()'s."""
        if self.generator is None:
            raise InvalidArgumentError("this pipeline was made with load_engine=False")
        prompts, _ = self.preprocess(texts)
        on_tokens = None
        if on_text is not None:
            streams = [self.tokenizer.stream() for _ in prompts]

            def on_tokens(tokens) -> bool:
                for row, token in enumerate(tokens):
                    piece = streams[row].push(token) if token >= 0 else ""
                    if piece:
                        on_text(row, piece)
                return True
        result = self.generator.generate(prompts, on_tokens=on_tokens, **options)
        out = []
        for i, seq in enumerate(result.sequences):
            item = {"text": self.tokenizer.decode(seq), "tokens": list(seq)}
            if result.scores:
                item["score"] = float(result.scores[i])
            out.append(item)
        self.last_result = result
        return out


class Text2TextGenerationPipeline(TextGenerationPipeline):
    task = "summarization"


class TranslationPipeline(TextGenerationPipeline):
    task = "translation"


PIPELINES: dict[str, type[Pipeline]] = {
    cls.task: cls for cls in (TextClassificationPipeline, TokenClassificationPipeline,
                              QuestionAnsweringPipeline, FeatureExtractionPipeline, FillMaskPipeline,
                              ImageClassificationPipeline, SpeechRecognitionPipeline,
                              AudioClassificationPipeline, TextGenerationPipeline,
                              Text2TextGenerationPipeline, TranslationPipeline)
}


def pipeline(engine_dir: str | Path, backend: str = "auto", num_threads: int = 0,
             load_engine: bool = True) -> Pipeline:
    """The task pipeline for an engine directory (the task is read from its manifest)."""
    task = read_manifest(engine_dir)["task"]
    if task not in PIPELINES:
        raise InvalidArgumentError(f"{engine_dir}: no pipeline for task {task!r}; "
                                   f"known: {sorted(PIPELINES)}")
    return PIPELINES[task](engine_dir, backend=backend, num_threads=num_threads, load_engine=load_engine)
