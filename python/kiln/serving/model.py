"""The Triton Python-backend model that runs kiln: one generic file, copied as `<model>/1/model.py`
into every Python model of a repository `kiln triton-repo` writes.

What it serves comes from the model's config `parameters` (all strings):

    kiln_kind      engine    tensors in, tensors out: kiln.runtime.Engine on a batch of requests
                   pipeline  text / image bytes / WAV bytes in, the task's answer as JSON strings
                             out: the engine's pipeline pre- and post-processing around a BLS call
                             to the engine model (so those requests are batched with the others)
                   generate  decoupled: a prompt (text or input_ids) in, one response per
                             generated token, then the final flag (kiln.runtime.Generator)
    engine_dir     the engine directory (absolute, or relative to the repository's root)
    kiln_backend   aoti | torchscript | tensorrt | auto
    precision      which TensorRT plan (auto | fp32 | fp16 | bf16)
    num_threads    intra-op threads of the runtime (0: leave as is)
    batching       engine: exact | pad (kiln.serving.batching)
    engine_model   pipeline: the engine model to call
    workers        generate: generations run at once (threads; the runtime releases the GIL)

A kiln error fails only the request that caused it, with kiln's code and message
(`kiln error [INPUT_SHAPE]: ...`); the model keeps serving.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend stub

from kiln.errors import InputNameError, InputValueError, KilnError
from kiln.serving import batching


def _parameters(model_config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}


def _engine_dir(params: dict[str, str], args: dict) -> Path:
    path = Path(params["engine_dir"])
    if not path.is_absolute():  # relative to the repository's root (a relocatable repository)
        path = Path(args["model_repository"]).parent / path
    return path


def _error(e: BaseException) -> Any:
    code = pb_utils.TritonError.INVALID_ARG if batching.is_client_error(e) else pb_utils.TritonError.INTERNAL
    return pb_utils.TritonError(e.text if isinstance(e, _Passed) else batching.error_text(e), code)


def _error_response(e: BaseException) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=_error(e))


def _json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.config = json.loads(args["model_config"])
        self.params = _parameters(self.config)
        self.kind = self.params.get("kiln_kind", "engine")
        self.dir = _engine_dir(self.params, args)
        backend = self.params.get("kiln_backend", "auto")
        precision = self.params.get("precision", "auto")
        threads = int(self.params.get("num_threads", "0") or 0)
        if self.kind == "engine":
            from kiln.manifest import read_graph_manifest
            from kiln.runtime import Engine

            self.manifest = read_graph_manifest(self.dir)
            self.engine = Engine(self.dir, backend=backend, num_threads=threads, precision=precision)
            mode = self.params.get("batching", "exact")
            invariant = batching.batch_invariant(self.engine, self.manifest)[0] if mode == "exact" else None
            self.batcher = batching.Batcher(self.manifest, mode, self.engine.backend, invariant)
            self.outputs = self.manifest.output_names
        elif self.kind == "pipeline":
            from kiln.pipelines import pipeline
            from kiln.serving.repository import pipeline_inputs

            self.pipe: Any = pipeline(self.dir, load_engine=False)
            self.engine_model = self.params["engine_model"]
            self.inputs: list[str] = pipeline_inputs(self.pipe.manifest) or []
            self.outputs = self.pipe.manifest.output_names
        elif self.kind == "generate":
            from kiln.processing.bpe import BPETokenizer
            from kiln.runtime import Generator

            self.generator = Generator(self.dir, backend=backend, num_threads=threads, precision=precision)
            self.tokenizer = BPETokenizer.from_dir(self.dir)
            workers = int(self.params.get("workers", "2") or 2)
            self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kiln-generate")
            self.inflight = 0
            self.lock = threading.Condition()
        else:
            raise pb_utils.TritonModelException(f"kiln_kind {self.kind!r}: expected engine, pipeline or generate")

    def execute(self, requests: list) -> list | None:
        if self.kind == "engine":
            return self._execute_engine(requests)
        if self.kind == "pipeline":
            return [self._execute_pipeline(r) for r in requests]
        for r in requests:  # decoupled: each generation streams from its own thread
            with self.lock:
                self.inflight += 1
            self.pool.submit(self._generate, r)
        return None

    def finalize(self) -> None:
        if self.kind == "generate":
            with self.lock:
                self.lock.wait_for(lambda: self.inflight == 0, timeout=30)
            self.pool.shutdown(wait=False)

    # --- engine: a batch of tensor requests -------------------------------------------------
    def _execute_engine(self, requests: list) -> list:
        responses: list[Any] = [None] * len(requests)
        feeds: dict[int, batching.Feed] = {}
        for i, request in enumerate(requests):
            try:
                feed = {}
                for name in self.manifest.input_names:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is None:  # Triton checks required inputs; kept for a config edited by hand
                        raise InputNameError(f"engine '{self.manifest.name}': input {name} is missing")
                    feed[name] = tensor.as_numpy()
                batching.check_batch(self.manifest, feed)
                self.engine.validate(feed)  # named errors before any kernel, for this request only
                feeds[i] = feed
            except Exception as e:
                responses[i] = _error_response(e)
        for run in self.batcher.plan(feeds):
            try:
                outputs = self.engine.run(run.feed)
                for i, mine in zip(run.requests, self.batcher.split(run, outputs)):
                    wanted = requests[i].requested_output_names() or self.outputs
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(n, mine[n]) for n in self.outputs if n in wanted]
                    )
            except Exception as e:
                for i in run.requests:
                    responses[i] = _error_response(e)
        return responses

    # --- pipeline: text / image / audio in, answers out ------------------------------------
    def _execute_pipeline(self, request: Any) -> Any:
        try:
            values = {}
            for name in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None:
                    raise InputNameError(f"model input {name} is missing; this model takes {', '.join(self.inputs)}")
                values[name] = [bytes(v) for v in tensor.as_numpy().reshape(-1)]
            answers = self._answers(values)
            items = [json.dumps(a, default=_json).encode() for a in batching.answer_items(answers)]
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("answer", np.array(items, dtype=object))])
        except Exception as e:
            return _error_response(e)

    def _answers(self, values: dict[str, list[bytes]]) -> Any:
        def texts(name: str) -> list[str]:
            try:
                return [v.decode("utf-8") for v in values[name]]
            except UnicodeDecodeError as e:
                raise InputValueError(f"{name}: not UTF-8 text ({e})") from None

        if "question" in values:
            feed, ctx = self.pipe.preprocess(texts("question"), texts("context"))
        elif "text" in values:
            feed, ctx = self.pipe.preprocess(texts("text"))
        elif "image" in values:
            feed, ctx = self.pipe.preprocess(values["image"])
        else:  # WAV bytes: decoded by the pipeline's own reader, from files
            with tempfile.TemporaryDirectory(prefix="kiln-audio-") as tmp:
                paths = []
                for i, wav in enumerate(values["audio"]):
                    path = os.path.join(tmp, f"audio-{i}.wav")
                    with open(path, "wb") as f:
                        f.write(wav)
                    paths.append(path)
                feed, ctx = self.pipe.preprocess(paths)
        outputs = self._call_engine({n: feed[n] for n in self.pipe.manifest.input_names})
        return self.pipe.postprocess(outputs, ctx)

    def _call_engine(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = pb_utils.InferenceRequest(
            model_name=self.engine_model,
            requested_output_names=self.outputs,
            inputs=[pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in feed.items()],
        )
        response = request.exec()
        if response.has_error():  # already kiln's text: pass it on as it is
            raise _Passed(response.error().message())
        return {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in self.outputs}

    # --- generate: one response per token, then the final flag ------------------------------
    def _generate(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            text = pb_utils.get_input_tensor_by_name(request, "text")
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids")
            if (text is None) == (ids is None):
                raise InputValueError("give the prompt as exactly one of the inputs text (a string) or input_ids")
            if text is not None:
                values = text.as_numpy().reshape(-1)
                if values.size != 1:
                    raise InputValueError(f"text: one prompt per request, got {values.size}")
                try:
                    prompt_text = bytes(values[0]).decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputValueError(f"text: not UTF-8 text ({e})") from None
                prompt = self.tokenizer.encode(prompt_text)
            else:
                prompt = batching.prompt_ids(ids.as_numpy())
            options = batching.generation_options(json.loads(request.parameters() or "{}"))
            streams: list[Any] = []

            def on_tokens(tokens: list[int]) -> bool:
                if request.is_cancelled():
                    return False
                while len(streams) < len(tokens):
                    streams.append(self.tokenizer.stream())
                pieces = [streams[r].push(t) if t >= 0 else "" for r, t in enumerate(tokens)]
                sender.send(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("token_ids", np.asarray(tokens, dtype=np.int64)),
                            pb_utils.Tensor("text", np.array([p.encode() for p in pieces], dtype=object)),
                        ]
                    )
                )
                return True

            self.generator.generate([prompt], on_tokens=on_tokens, **options)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:
            sender.send(_error_response(e), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            with self.lock:
                self.inflight -= 1
                self.lock.notify_all()


class _Passed(KilnError):
    """An error the engine model already worded (`kiln error [CODE]: ...`): passed on unchanged,
    with the code it names."""

    def __init__(self, text: str):
        super().__init__(text, batching.code_in(text))
        self.text = text
