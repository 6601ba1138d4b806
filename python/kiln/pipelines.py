"""Task pipelines: text, images or audio in, answers out, through the C++ runtime
(`kiln.pipelines.pipeline(dir)`).

Each pipeline is pre-processing (the engine's own tokenizer, image or audio processor), one
`Engine.run`, and post-processing into the task's answer. `preprocess` is also what parity
feeds every backend. Each pipeline also says how `kiln run` shows its answers (`show`), so
the CLI only looks the pipeline up by the engine's task.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from . import samples
from .errors import InputValueError, InvalidArgumentError
from .manifest import GenerationManifest, Manifest, read_graph_manifest, read_manifest

Say = Callable[[str], None]
M = TypeVar("M", Manifest, GenerationManifest)
PIPELINES: dict[str, type[Pipeline[Any]]] = {}  # task -> pipeline class, filled as the classes are defined


def top_labels(logits: np.ndarray, labels: list[str], top_k: int | None) -> list[list[dict]]:
    """[B, L] logits -> per row the top_k {"label", "score"} (softmax), best first."""
    from .processing.text import classify

    return [[{"label": label, "score": score} for label, score in classify(row, labels, top_k=top_k)] for row in logits]


class Pipeline(Generic[M]):
    """What every pipeline shares: the engine directory, its manifest, `kiln run`'s output.
    Subclasses give preprocess(...) -> (feed, ctx) and postprocess(outputs, ctx) -> answers."""

    task = ""
    manifest: M
    preprocess: Callable[..., tuple[Any, dict]]
    postprocess: Callable[..., Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A pipeline class naming a task serves every engine of that task (PIPELINES)."""
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("task"):
            PIPELINES[cls.task] = cls

    def __init__(
        self,
        engine_dir: str | Path,
        backend: str = "auto",
        num_threads: int = 0,
        load_engine: bool = True,
        precision: str = "auto",
    ):
        self.dir = Path(engine_dir)
        self.manifest = self._read(self.dir)
        self.engine: Any = None
        if load_engine:
            self._open(backend, num_threads, precision)

    def _read(self, engine_dir: Path) -> M:
        raise NotImplementedError

    def _open(self, backend: str, num_threads: int, precision: str) -> None:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def batch_max(self) -> int:
        return self.manifest.dims["batch"].max

    @property
    def backend(self) -> str | None:
        return self.engine.backend if self.engine else None

    @property
    def random_weights_note(self) -> str | None:
        return self.manifest.random_weights_note

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.engine is None:
            raise InvalidArgumentError("this pipeline was made with load_engine=False")
        return self.engine.run(feed)

    def __call__(self, *args, **kwargs) -> Any:
        feed, ctx = self.preprocess(*args, **kwargs)
        return self.postprocess(self.run(feed), ctx)

    def _check_batch(self, count: int, what: str) -> None:
        if count > self.batch_max:
            raise InputValueError(
                f"{self.name}: {count} {what}, the engine takes at most {self.batch_max} per "
                "call (dims.batch.max); split the batch"
            )

    def parity_samples(self) -> list:
        raise NotImplementedError

    # --- `kiln run` -------------------------------------------------------------------------
    def cli_answers(self, inputs: list[str], args: Any) -> list:
        """The answers for the command line's inputs (options from the parsed arguments)."""
        if not inputs:
            raise InvalidArgumentError(f"{self.task} needs at least one input (as an argument or on standard input)")
        return self(inputs)

    def show(self, inputs: list[str], answers: list, say: Say) -> None:
        """Print the answers for a person (inputs, labels and words are data, never markup)."""
        from rich.markup import escape

        for text, answer in zip(inputs, answers):
            say(f"[bold]{escape(text)}[/]")
            say(f"  {escape(str(answer))}")

    def json_header(self) -> dict:
        """What every `kiln run --json` answer starts with: which engine, task, backend, weights."""
        return {"engine": self.name, "task": self.task, "backend": self.backend, "weights": self.manifest.weights}

    def answers_json(self, inputs: list[str], answers: list) -> dict:
        return {"results": answers}

    def save(self, inputs: list[str], answers: list, path: Path) -> list[Path]:
        """`kiln run --save PATH`: the answers as pictures (one file per input; PATH gets its
        index before the suffix when there are several). Pipelines whose answer is a picture
        override this."""
        raise InvalidArgumentError(f"--save: a {self.task} answer is not a picture; drop --save (or use --json)")

    def cli(self, inputs: list[str], args: Any, console: Any) -> int:
        """`kiln run ENGINE INPUTS...`: the answers, shown or as JSON (and drawn, with --save)."""
        t = time.perf_counter()
        answers = self.cli_answers(inputs, args)
        ms = (time.perf_counter() - t) * 1e3
        saved = self.save(inputs, answers, Path(args.save)) if getattr(args, "save", None) else []
        if args.json:
            print(
                json.dumps(
                    {
                        **self.json_header(),
                        "inputs": inputs,
                        **self.answers_json(inputs, answers),
                        **({"saved": [str(p) for p in saved]} if saved else {}),
                    }
                )
            )
            return 0
        if self.random_weights_note:
            console.print(f"[yellow]note:[/] {self.random_weights_note}")
        console.print(f"[dim]{self.name} · {self.task} · C++ runtime backend {self.backend} · {ms:.1f} ms[/]")
        self.show(inputs, answers, lambda line: console.print(line, soft_wrap=True))  # no folding inside an answer
        for path in saved:
            console.print(f"wrote {path}")
        return 0


def _show_labels(inputs: list[str], answers: list, say: Say) -> None:
    from rich.markup import escape

    for text, result in zip(inputs, answers):
        say(f"[bold]{escape(text)}[/]")
        for r in result:
            say(f"  {escape(r['label']):<12} {r['score']:.4f}")


class EnginePipeline(Pipeline[Manifest]):
    """A pipeline around one graph's kiln::Engine."""

    def _read(self, engine_dir: Path) -> Manifest:
        return read_graph_manifest(engine_dir)

    def _open(self, backend: str, num_threads: int, precision: str) -> None:
        from .runtime import Engine

        self.engine = Engine(self.dir, backend=backend, num_threads=num_threads, precision=precision)

    @property
    def labels(self) -> list[str]:
        if not self.manifest.labels:
            raise InvalidArgumentError(f"{self.name}: the manifest has no labels; rebuild the engine with `kiln build`")
        return self.manifest.labels


class _Classification(EnginePipeline):
    """`kiln run --top-k K` for the classification pipelines: the K best labels."""

    default_top_k = 1

    def cli_answers(self, inputs: list[str], args: Any) -> list:
        if not inputs:
            raise InvalidArgumentError(f"{self.task} needs at least one input (as an argument or on standard input)")
        if args.top_k is not None and args.top_k < 1:
            raise InvalidArgumentError(f"--top-k {args.top_k}: expected a number of labels >= 1")
        feed, ctx = self.preprocess(inputs)
        return self.postprocess(self.run(feed), ctx, top_k=args.top_k or self.default_top_k)

    def show(self, inputs: list[str], answers: list, say: Say) -> None:
        _show_labels(inputs, answers, say)


class TextPipeline(EnginePipeline):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .processing.text import TextTokenizer

        self.tokenizer = TextTokenizer.from_dir(self.dir)
        seq = self.manifest.dims["sequence"]
        self.max_length = seq.max
        self.min_length = seq.min

    def _texts(self, texts) -> list[str]:
        from .processing.text import as_text_list

        texts = as_text_list(texts)
        if not texts:
            raise InputValueError(f"{self.name}: no text given; expected one or more strings")
        self._check_batch(len(texts), "texts")
        return texts

    def encode(self, texts, pairs=None, truncation: bool = False):
        """The tokenised texts and the feed: the inputs this engine takes (a family without
        token types, such as DistilBERT, gets none)."""
        enc = self.tokenizer.encode(texts, pairs, max_length=self.max_length, truncation=truncation)
        return enc, {name: enc.inputs()[name] for name in self.manifest.input_names}

    def preprocess(self, texts, truncation: bool = False):
        texts = self._texts(texts)
        enc, feed = self.encode(texts, truncation=truncation)
        return feed, {"texts": texts, "encoding": enc}

    def parity_samples(self) -> list:
        return [samples.SENTENCES[:4], samples.SENTENCES[4:5]]


class TextClassificationPipeline(_Classification, TextPipeline):
    task = "text-classification"
    default_top_k = 1

    def postprocess(self, outputs, ctx, top_k: int | None = 1):
        return top_labels(outputs["logits"], self.labels, top_k)


class TokenClassificationPipeline(TextPipeline):
    task = "token-classification"

    def parity_samples(self) -> list:
        return [samples.ENTITY_SENTENCES, samples.ENTITY_SENTENCES[:1]]

    def postprocess(self, outputs, ctx):
        from .processing.text import token_entities

        enc = ctx["encoding"]
        labels = self.labels
        return [
            token_entities(outputs["logits"][i], labels, enc.offsets[i], text, special_mask=enc.special_tokens_mask[i])
            for i, text in enumerate(ctx["texts"])
        ]

    def show(self, inputs: list[str], answers: list, say: Say) -> None:
        from rich.markup import escape

        for text, result in zip(inputs, answers):
            say(f"[bold]{escape(text)}[/]")
            if not result:
                say("  (no entities)")
            for e in result:
                say(f"  {escape(e['label']):<6} {escape(repr(e['word']))} \\[{e['start']}:{e['end']}] {e['score']:.3f}")


class QuestionAnsweringPipeline(TextPipeline):
    task = "question-answering"

    # questions with their contexts, where the other text pipelines take texts alone
    def preprocess(self, questions, contexts=None, truncation: bool = False):  # type: ignore[override]
        if contexts is None:  # a list of (question, context) pairs
            pairs = [questions] if isinstance(questions, tuple) else list(questions)
            questions, contexts = [q for q, _ in pairs], [c for _, c in pairs]
        questions, contexts = self._texts(questions), self._texts(contexts)
        if len(questions) != len(contexts):
            raise InputValueError(
                f"{self.name}: {len(questions)} questions but "
                f"{len(contexts)} contexts; expected one context per question"
            )
        enc, feed = self.encode(questions, contexts, truncation=truncation)
        return feed, {"questions": questions, "contexts": contexts, "encoding": enc}

    def parity_samples(self) -> list:
        return [samples.QA_PAIRS, samples.QA_PAIRS[:1]]

    def postprocess(self, outputs, ctx, max_answer_len: int = 30):
        from .processing.text import qa_best_span

        enc = ctx["encoding"]
        return [
            qa_best_span(
                outputs["start_logits"][i],
                outputs["end_logits"][i],
                enc.sequence_ids[i],
                enc.offsets[i],
                ctx["contexts"][i],
                max_answer_len=max_answer_len,
            )
            for i in range(len(ctx["contexts"]))
        ]

    def cli_answers(self, inputs: list[str], args: Any) -> list:
        if not args.question or not inputs:
            raise InvalidArgumentError("question-answering needs --question QUESTION and one or more contexts")
        return self([args.question] * len(inputs), inputs)

    def show(self, inputs: list[str], answers: list, say: Say) -> None:
        from rich.markup import escape

        for text, result in zip(inputs, answers):
            say(f"[bold]{escape(text)}[/]")
            say(
                f"  answer: {escape(repr(result['answer']))} \\[{result['start']}:{result['end']}] "
                f"score {result['score']:.4f}"
            )


class FeatureExtractionPipeline(TextPipeline):
    task = "feature-extraction"

    def postprocess(self, outputs, ctx):
        return outputs["embeddings"]

    def similarity(self, query: str, documents: list[str]) -> list[tuple[float, str]]:
        """Documents ranked by cosine similarity to the query, best first."""
        from .processing.text import cosine

        emb = self([query, *documents])
        scores = np.atleast_1d(cosine(emb[1:], emb[0]))
        return sorted(zip(scores.tolist(), documents), key=lambda x: -x[0])

    def answers_json(self, inputs: list[str], answers: Any) -> dict:
        from .processing.text import cosine

        emb = np.asarray(answers)
        return {"embeddings": emb.tolist(), "cosine": np.atleast_2d(cosine(emb, emb)).tolist()}

    def show(self, inputs: list[str], answers: Any, say: Say) -> None:
        from rich.markup import escape
        from rich.table import Table

        from .processing.text import cosine
        from .term import make_console

        emb = np.asarray(answers)
        for i, text in enumerate(inputs):
            say(
                f"\\[{i}] {escape(repr(text))}: dim {emb.shape[1]}, norm {np.linalg.norm(emb[i]):.4f}, "
                "first values [" + ", ".join(f"{v:+.4f}" for v in emb[i, :4]) + ", ...]"
            )
        if len(inputs) > 1:
            sims = np.atleast_2d(cosine(emb, emb))
            table = Table(title="cosine similarity")
            table.add_column("")
            for i in range(len(inputs)):
                table.add_column(f"[{i}]")
            for i in range(len(inputs)):
                table.add_row(f"[{i}]", *[f"{sims[i, j]:.3f}" for j in range(len(inputs))])
            make_console().print(table)


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
                raise InputValueError(f"{self.name}: text {i} has no {self.tokenizer.mask_token} token to fill")
            row = []
            for p in positions:
                probs = softmax(outputs["logits"][i, p])
                best = np.argsort(-probs)[:top_k]
                row.append(
                    [
                        {"token": self.tokenizer.id_to_token(int(t)), "token_id": int(t), "score": float(probs[t])}
                        for t in best
                    ]
                )
            results.append(row)
        return results

    def show(self, inputs: list[str], answers: list, say: Say) -> None:
        from rich.markup import escape

        for text, masks in zip(inputs, answers):
            say(f"[bold]{escape(text)}[/]")
            for k, candidates in enumerate(masks):
                best = ", ".join(f"{escape(repr(c['token']))} {c['score']:.3f}" for c in candidates)
                say(f"  mask {k}: {best}")


class ImageClassificationPipeline(_Classification):
    """Images (paths, bytes, PIL images, HxWxC uint8 arrays) -> top-k [{"label", "score"}] each,
    pre-processed as the engine's preprocessor_config.json says (kiln.processing.image)."""

    task = "image-classification"
    default_top_k = 5

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .processing.image import ImageProcessor

        self.processor = ImageProcessor.from_dir(self.dir)
        spec = next(s for s in self.manifest.inputs if s.name == "pixel_values")
        expected = tuple(spec.shape[2:])
        if self.processor.output_size != expected:
            raise InvalidArgumentError(
                f"{self.dir}: preprocessor_config.json makes {self.processor.output_size[0]}x"
                f"{self.processor.output_size[1]} images but the engine takes {expected[0]}x{expected[1]}"
            )

    def preprocess(self, images):
        if not isinstance(images, (list, tuple)):
            images = [images]
        self._check_batch(len(images), "images")
        return {"pixel_values": self.processor(images)}, {"count": len(images)}

    def postprocess(self, outputs, ctx, top_k: int | None = 5):
        return top_labels(outputs["logits"], self.labels, top_k)

    def parity_samples(self) -> list:
        photos = samples.photos()
        return [photos, photos[:1]]


def numbered_paths(path: Path, count: int) -> list[Path]:
    """`kiln run --save PATH` for `count` answers: PATH itself for one, PATH with the index before
    its suffix for several (out.png -> out-0.png, out-1.png, ...)."""
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def _save_pictures(pictures: list[Any], path: Path) -> list[Path]:
    """Write PIL images to `path` (numbered when several), in the format its suffix names."""
    from PIL import Image

    suffix = path.suffix.lower()
    if suffix not in Image.registered_extensions():
        raise InvalidArgumentError(f"--save {path}: name a picture file (.png, .jpg, ...), not {suffix or 'no suffix'}")
    out = []
    for picture, file in zip(pictures, numbered_paths(path, len(pictures))):
        try:
            picture.save(file)
        except (OSError, ValueError) as e:
            raise InvalidArgumentError(f"--save {file}: cannot write it ({e})") from None
        out.append(file)
    return out


def _as_image_list(images: Any) -> list:
    if not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) == 0:
        raise InputValueError(
            "no image given; expected one or more images (paths, bytes, PIL images or HxWxC uint8 arrays)"
        )
    return list(images)


class ObjectDetectionPipeline(EnginePipeline):
    """Images (paths, bytes, PIL images, HxWxC uint8 arrays) -> per image the detections above a
    threshold, [{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}] in the original
    image's pixels, as transformers' object-detection pipeline answers; pre- and post-processed
    as the engine's preprocessor_config.json says (kiln.processing.detection).

    Calling the pipeline runs each image alone, as transformers' pipeline does, so an image's
    answer never depends on its companions; `preprocess` pads a batch to its largest image (and
    to the engine's smallest size) with the pixel mask, as DetrImageProcessor does: what parity
    feeds and what a caller batching for throughput runs."""

    task = "object-detection"
    default_threshold = 0.5

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .processing.detection import DetrImageProcessor

        self.processor = DetrImageProcessor.from_dir(self.dir)

    def preprocess(self, images):
        if not isinstance(images, (list, tuple)):
            images = [images]
        self._check_batch(len(images), "images")
        dims = self.manifest.dims
        batch = self.processor(images, min_size=(dims["height"].min, dims["width"].min))
        h, w = batch.pixel_mask.shape[1:]
        if h > dims["height"].max or w > dims["width"].max:
            raise InputValueError(
                f"{self.name}: the images are processed to {h}x{w} (height x width) but the engine takes at most "
                f"{dims['height'].max}x{dims['width'].max}; check preprocessor_config.json's size"
            )
        return batch.feed(), {"sizes": batch.sizes}

    def postprocess(self, outputs, ctx, threshold: float = 0.5):
        from .processing.detection import detections, post_process_object_detection

        raw = post_process_object_detection(outputs["logits"], outputs["pred_boxes"], threshold, ctx["sizes"])
        return [detections(r, self.labels) for r in raw]

    def __call__(self, images, threshold: float = 0.5) -> list[list[dict]]:
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise InvalidArgumentError(f"threshold {threshold!r}: expected a score in [0, 1]")
        self._check_batch(len(images), "images")
        if not images:
            self.preprocess(images)  # the processor's error for no image
        answers = []
        for image in images:
            feed, ctx = self.preprocess([image])
            answers += self.postprocess(self.run(feed), ctx, threshold)
        return answers

    def parity_samples(self) -> list:
        photos = samples.photos()
        return [photos[:2], photos[2:3]]  # two photos of different sizes padded into one batch; one alone

    def cli_answers(self, inputs: list[str], args: Any) -> list:
        if not inputs:
            raise InvalidArgumentError(
                f"{self.task} needs at least one image file (as an argument or on standard input)"
            )
        threshold = self.default_threshold if args.threshold is None else args.threshold
        if not 0.0 <= threshold <= 1.0:  # NaN included
            raise InvalidArgumentError(f"--threshold {args.threshold}: expected a score in [0, 1]")
        return self(inputs, threshold=threshold)

    def show(self, inputs: list[str], answers: list, say: Say) -> None:
        from rich.markup import escape

        for name, found in zip(inputs, answers):
            say(f"[bold]{escape(name)}[/]: {len(found)} detection{'s' if len(found) != 1 else ''}")
            for a in found:
                b = a["box"]
                say(
                    f"  {escape(a['label']):<16} {a['score']:.4f}  "
                    f"\\[{b['xmin']}, {b['ymin']}, {b['xmax']}, {b['ymax']}] (xmin, ymin, xmax, ymax)"
                )

    def save(self, inputs: list[str], answers: list, path: Path) -> list[Path]:
        """Each photo with its detections drawn (boxes, labels, scores), at the photo's size;
        several inputs give PATH's stem numbered: boxes-0.png, boxes-1.png, ..."""
        from .processing.detection import draw_detections
        from .processing.image import load_image

        pictures = [
            draw_detections(load_image(image, i), found) for i, (image, found) in enumerate(zip(inputs, answers))
        ]
        return _save_pictures(pictures, path)


class SemanticSegmentationPipeline(EnginePipeline):
    """Images (paths, bytes, PIL images, HxWxC uint8 arrays) -> per image the label of every pixel
    at the image's own size, as transformers' SegFormer processor and image-segmentation
    pipeline give it: {"segmentation": int64 (H, W) label ids, "segments": [{"id", "label",
    "pixels", "share"}] for the labels present, by id}."""

    task = "semantic-segmentation"
    show_labels = 15  # `kiln run` lists the largest; --json lists all

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .processing.image import ImageProcessor

        self.processor = ImageProcessor.from_dir(self.dir)
        h, w = self.processor.output_size
        dims = self.manifest.dims
        if not (dims["height"].allows(h) and dims["width"].allows(w)):
            raise InvalidArgumentError(
                f"{self.dir}: preprocessor_config.json makes {h}x{w} images but the engine takes height "
                f"{dims['height'].min}..{dims['height'].max}, width {dims['width'].min}..{dims['width'].max}"
            )

    def preprocess(self, images):
        from .processing.image import load_image

        images = _as_image_list(images)
        self._check_batch(len(images), "images")
        loaded = [load_image(img, i) for i, img in enumerate(images)]
        pixels = np.stack([self.processor.process_one(img) for img in loaded])
        return {"pixel_values": pixels}, {"sizes": [(img.height, img.width) for img in loaded]}

    def postprocess(self, outputs, ctx):
        from .processing.segmentation import post_process_semantic_segmentation, segments

        maps = post_process_semantic_segmentation(outputs["logits"], ctx["sizes"])
        return [{"segmentation": m, "segments": segments(m, self.labels)} for m in maps]

    def parity_samples(self) -> list:
        photos = samples.photos()
        return [photos, photos[:1]]  # a batch of 4 and a single image: batch 1 and > 1 on one artifact

    def show(self, inputs: list[str], answers: list, say: Say) -> None:
        from rich.markup import escape

        for name, answer in zip(inputs, answers):
            h, w = answer["segmentation"].shape
            found = sorted(answer["segments"], key=lambda s: -s["pixels"])
            say(f"[bold]{escape(name)}[/] ({w}x{h}, {len(found)} labels)")
            for s in found[: self.show_labels]:
                say(f"  {escape(s['label']):<24} {100 * s['share']:6.2f}%")
            rest = found[self.show_labels :]
            if rest:  # --json lists every label
                say(f"  ({len(rest)} more labels, {100 * sum(s['share'] for s in rest):.2f}% of the image together)")

    def answers_json(self, inputs: list[str], answers: list) -> dict:
        return {"results": [{"size": list(a["segmentation"].shape), "segments": a["segments"]} for a in answers]}

    def save(self, inputs: list[str], answers: list, path: Path) -> list[Path]:
        """The label map over each photo: colours blended at 50 %, a legend of the labels present."""
        from .processing.image import load_image
        from .processing.segmentation import draw_segmentation

        pictures = [
            draw_segmentation(load_image(name, i), a["segmentation"], self.labels)
            for i, (name, a) in enumerate(zip(inputs, answers))
        ]
        return _save_pictures(pictures, path)


class ImageSegmentationPipeline(SemanticSegmentationPipeline):
    """Mask2Former: images -> per image the segments of one subtask, as transformers'
    image-segmentation pipeline and Mask2FormerImageProcessor give them (kiln.processing.mask2former):
    {"subtask", "segmentation": int (H, W) at the image's size (label ids for semantic, segment ids
    for instance and panoptic, -1 where no segment is), "segments": [{"id", "label", "label_id",
    "score", "was_fused", "pixels", "share"}]}. The subtask defaults to the engine's (its task option,
    panoptic unless the recipe says otherwise); threshold 0.9, mask_threshold 0.5 and
    overlap_mask_area_threshold 0.5 are the pipeline's defaults, as transformers'."""

    task = "image-segmentation"
    default_threshold = 0.9

    @property
    def subtask(self) -> str:
        return str(self.manifest.task_options.get("subtask", "panoptic"))

    def postprocess(  # type: ignore[override]
        self,
        outputs,
        ctx,
        subtask: str | None = None,
        threshold: float | None = None,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.5,
        label_ids_to_fuse=None,
    ):
        from .processing import mask2former as m2f

        subtask = subtask or self.subtask
        if subtask not in m2f.SUBTASKS:
            raise InvalidArgumentError(f"subtask {subtask!r}: expected one of {', '.join(m2f.SUBTASKS)}")
        threshold = self.default_threshold if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:  # NaN included
            raise InvalidArgumentError(f"threshold {threshold!r}: expected a score in [0, 1]")
        cls, masks, sizes = outputs["class_queries_logits"], outputs["masks_queries_logits"], ctx["sizes"]
        if subtask == "semantic":
            from .processing.segmentation import segments

            maps = m2f.post_process_semantic_segmentation(cls, masks, sizes)
            return [
                {
                    "subtask": subtask,
                    "segmentation": m,
                    "segments": [
                        {**s, "label_id": s["id"], "score": None, "was_fused": False} for s in segments(m, self.labels)
                    ],
                }
                for m in maps
            ]
        if subtask == "instance":
            results = m2f.post_process_instance_segmentation(cls, masks, threshold, sizes)
        else:
            results = m2f.post_process_panoptic_segmentation(
                cls, masks, threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse, sizes
            )
        return [
            {"subtask": subtask, "segmentation": r["segmentation"], "segments": m2f.segment_list(r, self.labels)}
            for r in results
        ]

    def __call__(self, images, **options) -> list[dict]:  # type: ignore[override]
        feed, ctx = self.preprocess(images)
        return self.postprocess(self.run(feed), ctx, **options)

    def cli_answers(self, inputs: list[str], args: Any) -> list:
        if not inputs:
            raise InvalidArgumentError(
                f"{self.task} needs at least one image file (as an argument or on standard input)"
            )
        return self(inputs, subtask=getattr(args, "subtask", None), threshold=args.threshold)

    def show(self, inputs: list[str], answers: list, say: Say) -> None:
        from rich.markup import escape

        for name, answer in zip(inputs, answers):
            h, w = answer["segmentation"].shape
            found = answer["segments"]
            say(f"[bold]{escape(name)}[/] ({w}x{h}, {answer['subtask']}: {len(found)} segments)")
            for s in sorted(found, key=lambda s: -s["pixels"])[: self.show_labels]:
                score = "" if s["score"] is None else f"{s['score']:.4f}"
                say(f"  {escape(s['label']):<24} {score:>6}  {100 * s['share']:6.2f}%")
            rest = found[self.show_labels :]
            if rest:
                say(f"  ({len(rest)} more segments)")

    def answers_json(self, inputs: list[str], answers: list) -> dict:
        return {
            "results": [
                {"subtask": a["subtask"], "size": list(a["segmentation"].shape), "segments": a["segments"]}
                for a in answers
            ]
        }

    def save(self, inputs: list[str], answers: list, path: Path) -> list[Path]:
        """Each photo with its segments tinted, outlined and listed (label, score, share)."""
        from .processing.image import load_image
        from .processing.mask2former import draw_segments

        pictures = [
            draw_segments(load_image(name, i), a["segmentation"], a["segments"])
            for i, (name, a) in enumerate(zip(inputs, answers))
        ]
        return _save_pictures(pictures, path)


class DepthEstimationPipeline(EnginePipeline):
    """Images -> per image the depth of every pixel at the image's own size, as transformers'
    GLPN processor and depth-estimation pipeline give it: {"predicted_depth": float32 (H, W)
    (the checkpoint's units: metres for NYU and KITTI), "depth": uint8 (H, W), the pipeline's
    0-255 picture}. Each image keeps its own size (rounded down to a multiple of 32): images of
    one size run as one batch."""

    task = "depth-estimation"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .processing.image import ImageProcessor

        self.processor = ImageProcessor.from_dir(self.dir)
        dims = self.manifest.dims
        self.height, self.width = dims["height"], dims["width"]
        divisor = self.processor.size_divisor
        if divisor is None or divisor % self.height.multiple or divisor % self.width.multiple:
            raise InvalidArgumentError(
                f"{self.dir}: preprocessor_config.json has size_divisor {divisor}; the engine takes sizes in "
                f"multiples of {self.height.multiple} (a GLPNImageProcessor with size_divisor 32 makes them)"
            )

    def preprocess(self, images):
        """One batch: the images must come out of the processor at one size (`__call__` groups them)."""
        from .processing.image import load_image

        images = _as_image_list(images)
        self._check_batch(len(images), "images")
        loaded = [load_image(img, i) for i, img in enumerate(images)]
        pixels = [self._process(img, i) for i, img in enumerate(loaded)]
        shapes = sorted({p.shape[1:] for p in pixels})
        if len(shapes) > 1:
            raise InputValueError(
                f"{self.name}: the images come out at different sizes {[list(s) for s in shapes]}; one batch "
                "takes one size (call the pipeline itself, which groups them, or pass them one at a time)"
            )
        return {"pixel_values": np.stack(pixels)}, {"sizes": [(img.height, img.width) for img in loaded]}

    def _process(self, image: Any, index: int) -> np.ndarray:
        h, w = self.processor.processed_size(image.width, image.height)
        if not (self.height.allows(h) and self.width.allows(w)):
            raise InputValueError(
                f"{self.name}: image {index} ({image.width}x{image.height}) becomes {w}x{h}; the engine takes "
                f"width {self.width.min}..{self.width.max} and height {self.height.min}..{self.height.max} "
                "(multiples of 32): resize the image, or rebuild the engine with larger --dims"
            )
        return self.processor.process_one(image)

    def __call__(self, images) -> list[dict]:  # type: ignore[override]
        """Answers in the order given; images of one processed size run together (up to the
        engine's batch), as one batch each."""
        from .processing.image import load_image

        loaded = [load_image(img, i) for i, img in enumerate(_as_image_list(images))]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(loaded):
            groups.setdefault(self.processor.processed_size(img.width, img.height), []).append(i)
        answers: list[Any] = [None] * len(loaded)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_max):
                chunk = indices[start : start + self.batch_max]
                feed, ctx = self.preprocess([loaded[i] for i in chunk])
                for i, answer in zip(chunk, self.postprocess(self.run(feed), ctx)):
                    answers[i] = answer
        return answers

    def postprocess(self, outputs, ctx):
        from .processing.depth import depth_image, post_process_depth_estimation

        depths = post_process_depth_estimation(outputs["predicted_depth"], ctx["sizes"])
        return [{"predicted_depth": d, "depth": depth_image(d)} for d in depths]

    def parity_samples(self) -> list:
        """The four photos cut to one size (chelsea's, the smallest: 300x451 -> 288x448 in the
        model), as one batch; and the astronaut alone (512x512)."""
        photos = samples.photos()
        h, w = min(p.shape[0] for p in photos), min(p.shape[1] for p in photos)
        return [[np.ascontiguousarray(p[:h, :w]) for p in photos], photos[:1]]

    def show(self, inputs: list[str], answers: list, say: Say) -> None:
        from rich.markup import escape

        for name, answer in zip(inputs, answers):
            d = answer["predicted_depth"]
            say(
                f"[bold]{escape(name)}[/] ({d.shape[1]}x{d.shape[0]}): depth {d.min():.3f} .. {d.max():.3f} m, "
                f"median {float(np.median(d)):.3f} m"
            )

    def answers_json(self, inputs: list[str], answers: list) -> dict:
        return {
            "results": [
                {
                    "size": list(a["predicted_depth"].shape),
                    "min": float(a["predicted_depth"].min()),
                    "max": float(a["predicted_depth"].max()),
                    "median": float(np.median(a["predicted_depth"])),
                }
                for a in answers
            ]
        }

    def save(self, inputs: list[str], answers: list, path: Path) -> list[Path]:
        """Each depth map colour-mapped (near bright, far dark) with a scale bar, at the image's size."""
        from .processing.depth import draw_depth

        return _save_pictures([draw_depth(a["predicted_depth"]) for a in answers], path)


class AudioPipeline(EnginePipeline):
    """WAV paths or arrays in (kiln.processing.audio, as the engine's preprocessor_config.json
    says): decoded, mixed to mono, resampled, normalised, padded to the longest and to the
    engine's smallest accepted length."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from .processing.audio import AudioProcessor

        self.processor = AudioProcessor.from_dir(self.dir)
        samples_dim = self.manifest.dims["samples"]
        self.min_samples, self.max_samples = samples_dim.min, samples_dim.max

    def preprocess(self, audio):
        if isinstance(audio, (str, Path, tuple)) or (isinstance(audio, np.ndarray) and audio.ndim == 1):
            audio = [audio]
        audio = list(audio)
        self._check_batch(len(audio), "audio inputs")
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

        config = self.manifest.config
        logits = outputs["logits"]
        frames = frame_lengths(ctx["lengths"], config["conv_kernel"], config["conv_stride"])
        return [self.decoder.decode(logits[i, :n]) for i, n in enumerate(frames)]

    def show(self, inputs: list[str], answers: list, say: Say) -> None:
        from rich.markup import escape

        for name, text in zip(inputs, answers):
            say(f"[bold]{escape(name)}[/]")
            say(f"  transcript: {escape(repr(text))}")


class AudioClassificationPipeline(_Classification, AudioPipeline):
    task = "audio-classification"
    default_top_k = 5

    def postprocess(self, outputs, ctx, top_k: int | None = 5):
        return top_labels(outputs["logits"], self.labels, top_k)


class TextGenerationPipeline(Pipeline[GenerationManifest]):
    """Text in, generated text out, through kiln::Generator (the C++ loop over the engine's
    decoder graph, and encoder graph for BART). Streams text as tokens arrive."""

    task = "text-generation"

    def __init__(
        self,
        engine_dir: str | Path,
        backend: str = "auto",
        num_threads: int = 0,
        load_engine: bool = True,
        precision: str = "auto",
    ):
        from .processing.bpe import BPETokenizer

        self.generator: Any = None
        super().__init__(engine_dir, backend, num_threads, load_engine, precision)
        self.tokenizer = BPETokenizer.from_dir(self.dir)

    def _read(self, engine_dir: Path) -> GenerationManifest:
        m = read_manifest(engine_dir)
        if not isinstance(m, GenerationManifest):
            raise InvalidArgumentError(f"{engine_dir}: a {m.task} engine, not a generation engine")
        return m

    def _open(self, backend: str, num_threads: int, precision: str) -> None:
        from .runtime import Generator

        self.generator = Generator(self.dir, backend=backend, num_threads=num_threads, precision=precision)

    @property
    def backend(self) -> str | None:
        return self.generator.backend if self.generator else None

    @property
    def languages(self) -> dict | None:
        """The engine's language codes (mBART), from its tokenizer: {codes, position, source, target}."""
        return self.manifest.processing.get("languages")

    def preprocess(self, texts, src_lang: str | None = None) -> tuple[list[list[int]], dict]:
        """Token ids per text: T5's task prefix first, the source language code where the
        tokenizer has them (src_lang: default the tokenizer's)."""
        from .processing.languages import language_id, with_source_language
        from .processing.text import as_text_list

        texts = as_text_list(texts)
        if not texts:
            raise InputValueError("texts: expected at least one prompt")
        if src_lang is not None:
            language_id(self.languages, src_lang, "src_lang")
        prefix = self.manifest.processing.get("prefix", "")  # T5's task prefix ("summarize: ")
        for i, t in enumerate(texts):
            self.tokenizer.check_text(t, name=f"prompt {i}")
        prompts = [self.tokenizer.encode(prefix + t, name=f"prompt {i}") for i, t in enumerate(texts)]
        if src_lang is not None and self.languages and src_lang != self.languages["source"]:
            prompts = [with_source_language(p, self.languages, src_lang) for p in prompts]
        return prompts, {"texts": texts}

    def language_options(self, tgt_lang: str | None) -> dict:
        """generate()'s options for a target language: mBART-50 forces its code as the first
        generated token; mbart-large-cc25 starts the decoder from it."""
        from .processing.languages import language_id

        if tgt_lang is None:
            return {}
        code = language_id(self.languages, tgt_lang, "tgt_lang")
        assert self.languages is not None
        if self.languages["position"] == "suffix":
            return {"decoder_start_token_id": code}
        return {"forced_bos_token_id": code}

    def __call__(
        self, texts, on_text=None, src_lang: str | None = None, tgt_lang: str | None = None, **options
    ) -> list[dict]:
        """Generated text per prompt: [{"text", "tokens", "score"?}]. on_text(row, piece) receives
        the text as it is generated (whole characters only); src_lang / tgt_lang: language codes
        (mBART engines); options are generate()'s."""
        if self.generator is None:
            raise InvalidArgumentError("this pipeline was made with load_engine=False")
        prompts, _ = self.preprocess(texts, src_lang)
        options = {**self.language_options(tgt_lang), **options}
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
            item: dict[str, Any] = {"text": self.tokenizer.decode(seq), "tokens": list(seq)}
            if result.scores:
                item["score"] = float(result.scores[i])
            out.append(item)
        self.last_result = result
        return out

    def cli(self, inputs: list[str], args: Any, console: Any) -> int:
        """Prompts one at a time, the text streamed as it is generated (beam search prints the
        best beam when it is done)."""
        from rich.markup import escape

        if not inputs:
            raise InvalidArgumentError(f"{self.task} needs at least one prompt (as an argument or on standard input)")
        options = generation_options(args)
        languages = {k: v for k, v in (("src_lang", args.src_lang), ("tgt_lang", args.tgt_lang)) if v is not None}
        if self.random_weights_note and not args.json:
            console.print(f"[yellow]note:[/] {self.random_weights_note}")
        results = []
        for text in inputs:
            if not args.json:
                console.print(f"[bold]{escape(text)}[/]")
            streamed: list[str] = []

            def on_text(row: int, piece: str, streamed: list[str] = streamed) -> None:
                streamed.append(piece)
                if not args.json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()

            out = self([text], on_text=on_text, **languages, **options)[0]
            timings = self.last_result.timings
            ttft = timings["time_to_first_token_ms"]
            rate = len(out["tokens"]) / max(timings["total_ms"] / 1e3, 1e-9)
            if not args.json:
                if not streamed:  # beam search: the best sequence comes at the end
                    sys.stdout.write(out["text"])
                sys.stdout.write("\n")
                console.print(
                    f"[dim]{self.name} · {self.task} · kiln::Generator on {self.backend} · "
                    f"{len(out['tokens'])} tokens · first token {ttft:.0f} ms · {rate:.1f} tokens/s[/]"
                )
            results.append({"input": text, **out, "time_to_first_token_ms": ttft, "tokens_per_second": rate})
        if args.json:
            print(
                json.dumps(
                    {
                        **self.json_header(),
                        "options": {**options, **languages},
                        "results": results,
                    }
                )
            )
        return 0


def generation_options(args: Any) -> dict:
    """generate()'s options from `kiln run`'s arguments (unset ones keep the engine's defaults)."""
    options = {
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.min_new_tokens,
        "num_beams": args.num_beams,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "length_penalty": args.length_penalty,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if args.do_sample:
        options.update(do_sample=True, seed=args.seed)
    return options


class Text2TextGenerationPipeline(TextGenerationPipeline):
    task = "summarization"


class TranslationPipeline(TextGenerationPipeline):
    task = "translation"


def pipeline(
    engine_dir: str | Path,
    backend: str = "auto",
    num_threads: int = 0,
    load_engine: bool = True,
    precision: str = "auto",
) -> Pipeline[Any]:
    """The task pipeline for an engine directory (the task is read from its manifest)."""
    task = read_manifest(engine_dir).task
    if task not in PIPELINES:
        raise InvalidArgumentError(f"{engine_dir}: no pipeline for task {task!r}; known: {sorted(PIPELINES)}")
    return PIPELINES[task](
        engine_dir, backend=backend, num_threads=num_threads, load_engine=load_engine, precision=precision
    )
