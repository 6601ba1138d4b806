"""`kiln triton-repo`: engine directories -> a Triton model repository.

Per one-graph engine (`<name>` is the engine directory's name):

    <name>        backend "python": kiln's C++ runtime through kiln/serving/model.py; tensors in
                  and out as the manifest says (batch implicit, max_batch_size = dims.batch.max,
                  symbolic dims -1), dynamic batching, allow_ragged_batch on the sequence inputs
    <name>-text   backend "python": text (question + context, image bytes, WAV bytes) in, the
                  task's answer as one JSON string per input out, through the engine's pipeline
                  (pre- and post-processing) and a BLS call to <name>
    <name>-onnx   platform onnxruntime_onnx (NVIDIA's Triton container; TensorRT accelerator optional)
    <name>-ts     platform pytorch_libtorch, `<input>__<i>` / `<output>__<i>` names
    <name>-trt-sm<cc>-<precision>   platform tensorrt_plan, one per plan

Per generation engine (GPT-2, BART): `<name>`, a decoupled Python model around
kiln.runtime.Generator that streams one response per token.

The native directories (-onnx, -ts, -trt-*) need backends that ship only in NVIDIA's containers;
here their configs are checked against Triton's schema (tritonclient's model_config_pb2).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidArgumentError
from ..manifest import Artifact, GenerationManifest, Manifest, TensorSpec, read_manifest
from . import batching
from .config import TRITON_DTYPES, Enum, check, parameters, render, schema_available

MODEL_PY = Path(__file__).with_name("model.py")
PYTHON_KINDS = ("engine", "text", "generate")
NATIVE_KINDS = ("onnx", "ts", "trt")
ALL_KINDS = PYTHON_KINDS + NATIVE_KINDS


@dataclass
class RepoOptions:
    """How `kiln triton-repo` / `kiln serve` write the models (the CLI's flags)."""

    backend: str = "auto"  # the Python models' kiln backend; auto: the best usable on this machine
    precision: str = "auto"  # which TensorRT plan the Python models run
    num_threads: int = 0  # intra-op threads per Python-model instance (0: leave as is)
    instances: int = 1  # instances (processes) of each engine model
    text_instances: int = 2  # instances of each -text model (each waits on its engine call)
    batching: str = "auto"  # exact | pad | auto (kiln.serving.batching)
    max_queue_delay_us: int = 2000  # how long the dynamic batcher waits to fill a batch
    generate_workers: int = 2  # generations a generate model runs at once
    kinds: tuple[str, ...] = ALL_KINDS
    copy_engines: bool = False  # engines copied into the repository (relocatable: containers, KServe)
    onnx_tensorrt: str | None = None  # -onnx: ORT's TensorRT accelerator at FP32 / FP16


@dataclass
class WrittenModel:
    name: str
    kind: str  # engine | text | generate | onnx | ts | trt
    path: Path
    config: str  # config.pbtxt as written
    runs_here: bool  # a backend the bundled CPU Triton has (python)
    notes: list[str] = field(default_factory=list)


def triton_dims(shape: tuple[str | int, ...]) -> list[int]:
    return [-1 if isinstance(d, str) else int(d) for d in shape]


def _tensor(spec: TensorSpec, batched: bool, ragged: bool = False, name: str | None = None) -> dict:
    d: dict = {
        "name": name or spec.name,
        "data_type": Enum(TRITON_DTYPES[spec.dtype]),
        "dims": triton_dims(spec.shape[1:] if batched else spec.shape),
    }
    if ragged:
        d["allow_ragged_batch"] = True
    return d


def pipeline_inputs(manifest: Manifest) -> list[str] | None:
    """The -text model's inputs for this engine, or None when it has no pipeline to serve."""
    from ..pipelines import PIPELINES

    if manifest.task not in PIPELINES:
        return None
    if manifest.task == "question-answering":
        return ["question", "context"]
    names = set(manifest.input_names)
    if "input_ids" in names:
        return ["text"]
    if "pixel_values" in names:
        return ["image"]
    if "input_values" in names:
        return ["audio"]
    return None


def resolve_backend(backend: str, manifest: Manifest | GenerationManifest) -> str:
    """'auto' made explicit for the config: what the runtime's auto opens on this machine (a
    TensorRT plan, else the CPU backend the build measured fastest here, else AOTInductor before
    TorchScript)."""
    from ..backends import CPP_BACKENDS, auto_backend

    if backend != "auto":
        if backend not in CPP_BACKENDS:
            raise InvalidArgumentError(f"--backend {backend!r}: expected auto or one of {', '.join(CPP_BACKENDS)}")
        return backend
    from ..runtime import available_backends

    graph = manifest.graph("decoder") if isinstance(manifest, GenerationManifest) else manifest
    chosen = auto_backend(graph, available_backends())
    if chosen is None:
        formats = {a.format for a in graph.artifacts}
        raise InvalidArgumentError(
            f"{manifest.name}: none of its artifacts ({', '.join(sorted(formats))}) runs on a backend usable here "
            f"({', '.join(available_backends())}); pass --backend for the server's machine"
        )
    return chosen


def _instance_group(kind: str, count: int) -> list[dict]:
    return [{"kind": Enum(kind), "count": count}]


def _common_params(options: RepoOptions, engine_dir: str, backend: str) -> dict:
    return {
        "engine_dir": engine_dir,
        "kiln_backend": backend,
        "precision": options.precision,
        "num_threads": str(options.num_threads),
    }


def engine_config(m: Manifest, name: str, engine_dir: str, options: RepoOptions) -> tuple[dict, list[str]]:
    """The Python-backend engine model: tensors in and out, batched by Triton, run by kiln."""
    backend = resolve_backend(options.backend, m)
    mode = batching.resolve_batching(m, options.batching, backend)
    is_batched = batching.batched(m)
    ragged = set(batching.ragged_dims(m))
    notes = [f"backend {backend}, batching {mode}"]
    config: dict = {
        "name": name,
        "backend": "python",
        "max_batch_size": m.dims["batch"].max if is_batched else 0,
        "input": [
            _tensor(s, is_batched, ragged=is_batched and any(d in ragged for d in s.shape[1:])) for s in m.inputs
        ],
        "output": [_tensor(s, is_batched) for s in m.outputs],
    }
    if is_batched:
        config["#batching"] = (
            "allow_ragged_batch: requests of different lengths reach one execute(); kiln's model.py runs\n"
            f"them {'padded into one Engine.run' if mode == 'pad' else 'as one Engine.run per shape (bit-exact)'}"
        )
        config["dynamic_batching"] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
    gpu = backend == "tensorrt"
    config["instance_group"] = _instance_group("KIND_GPU" if gpu else "KIND_CPU", options.instances)
    config["parameters"] = parameters(
        {"kiln_kind": "engine", **_common_params(options, engine_dir, backend), "batching": mode}
    )
    return config, notes


def text_config(m: Manifest, name: str, engine_model: str, engine_dir: str, options: RepoOptions) -> dict:
    inputs = pipeline_inputs(m) or []
    return {
        "name": name,
        "backend": "python",
        "#inputs": "one request holds one or more inputs (max_batch_size 0: the list is the request's own);\n"
        f"answers: one JSON string per input, as `kiln run --json` gives them ({m.task})",
        "max_batch_size": 0,
        "input": [{"name": n, "data_type": Enum("TYPE_STRING"), "dims": [-1]} for n in inputs],
        "output": [{"name": "answer", "data_type": Enum("TYPE_STRING"), "dims": [-1]}],
        "instance_group": _instance_group("KIND_CPU", options.text_instances),
        "parameters": parameters(
            {"kiln_kind": "pipeline", "engine_dir": engine_dir, "engine_model": engine_model, "task": m.task}
        ),
    }


def generate_config(m: GenerationManifest, name: str, engine_dir: str, options: RepoOptions) -> dict:
    backend = resolve_backend(options.backend, m)
    return {
        "name": name,
        "backend": "python",
        "#stream": "decoupled: one response per generated token (token_ids, text piece per returned row),\n"
        "then an empty response with the final flag; options are request parameters (max_new_tokens, ...)",
        "max_batch_size": 0,
        "input": [
            {"name": "text", "data_type": Enum("TYPE_STRING"), "dims": [1], "optional": True},
            {"name": "input_ids", "data_type": Enum("TYPE_INT64"), "dims": [-1], "optional": True},
        ],
        "output": [
            {"name": "token_ids", "data_type": Enum("TYPE_INT64"), "dims": [-1]},
            {"name": "text", "data_type": Enum("TYPE_STRING"), "dims": [-1]},
        ],
        "model_transaction_policy": {"decoupled": True},
        "instance_group": _instance_group("KIND_GPU" if backend == "tensorrt" else "KIND_CPU", 1),
        "parameters": parameters(
            {
                "kiln_kind": "generate",
                **_common_params(options, engine_dir, backend),
                "workers": str(options.generate_workers),
            }
        ),
    }


def _native_base(m: Manifest, name: str, platform: str) -> dict:
    return {"name": name, "platform": platform, "max_batch_size": m.dims["batch"].max if batching.batched(m) else 0}


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)  # same file system: no copy of hundreds of MB
    except OSError:
        shutil.copy2(src, dst)


def onnx_config(m: Manifest, name: str, options: RepoOptions) -> dict:
    config = _native_base(m, name, "onnxruntime_onnx")
    is_batched = batching.batched(m)
    config["input"] = [_tensor(s, is_batched) for s in m.inputs]
    config["output"] = [_tensor(s, is_batched) for s in m.outputs]
    if is_batched:
        config["#batching"] = (
            "Triton's batcher merges requests of one shape here (no ragged batching outside the Python\n"
            "model): clients that pad to a few fixed lengths get the biggest batches"
        )
        config["dynamic_batching"] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
    config["instance_group"] = [{"kind": Enum("KIND_GPU"), "count": 1}]
    if options.onnx_tensorrt:
        config["optimization"] = {
            "execution_accelerators": {
                "gpu_execution_accelerator": [
                    {
                        "name": "tensorrt",
                        "parameters": _plain_map(
                            {"precision_mode": options.onnx_tensorrt.upper(), "max_workspace_size_bytes": "1073741824"}
                        ),
                    }
                ]
            }
        }
    else:
        config["#accelerator"] = (
            "ONNX Runtime's TensorRT execution provider: kiln triton-repo --onnx-tensorrt fp16 adds\n"
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" ... } ] } }'
        )
    return config


def _plain_map(values: dict[str, str]) -> dict:
    from .config import Map

    return Map(values)


def torchscript_config(m: Manifest, name: str, gpu: bool, options: RepoOptions) -> dict:
    config = _native_base(m, name, "pytorch_libtorch")
    is_batched = batching.batched(m)
    config["#names"] = (
        "Triton's PyTorch backend binds tensors by position: <name>__<index> (forward()'s argument\n"
        "and output order, as the manifest lists them)"
    )
    config["input"] = [_tensor(s, is_batched, name=f"{s.name}__{i}") for i, s in enumerate(m.inputs)]
    config["output"] = [_tensor(s, is_batched, name=f"{s.name}__{i}") for i, s in enumerate(m.outputs)]
    if is_batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
    if not gpu:
        config["#device"] = (
            "KIND_CPU: kiln's trace creates a tensor on the CPU (a device constant in the graph, e.g. the\n"
            "position ids' aten::arange), so the module cannot run on a GPU as traced"
        )
    config["instance_group"] = [{"kind": Enum("KIND_GPU" if gpu else "KIND_CPU"), "count": 1}]
    config["parameters"] = parameters({"INFERENCE_MODE": "true"})
    return config


def trt_config(m: Manifest, name: str, art: Artifact, options: RepoOptions) -> dict:
    config = _native_base(m, name, "tensorrt_plan")
    is_batched = batching.batched(m)
    profiles = art.profiles
    if is_batched and profiles:  # the plan's own limit: its profiles' largest batch
        first = m.inputs[0].name
        config["max_batch_size"] = max(int(p[first]["max"][0]) for p in profiles if first in p)
    config["default_model_filename"] = Path(art.file).name
    config["input"] = [_tensor(s, is_batched) for s in m.inputs]
    config["output"] = [_tensor(s, is_batched) for s in m.outputs]
    if is_batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
    trt = art.versions.get("tensorrt", "unknown")
    compatible = bool(art.extra.get("version_compatible"))
    config["#plan"] = (
        f"built with TensorRT {trt} for compute capability {art.extra.get('compute_capability', '?')}: "
        + (
            f"version-compatible, runs on TensorRT {trt.split('.')[0]}.x >= {trt} when the server is started with\n"
            "--backend-config=tensorrt,version-compatible=true"
            if compatible
            else f"the Triton container must ship TensorRT {trt} exactly (see README.md)"
        )
    )
    config["instance_group"] = [
        {"kind": Enum("KIND_GPU"), "count": 1, "profile": [str(i) for i in range(max(1, len(profiles)))]}
    ]
    config["parameters"] = parameters(
        {
            "tensorrt_version": trt,
            "compute_capability": str(art.extra.get("compute_capability", "")),
            "version_compatible": "true" if compatible else "false",
            "precision": art.precision,
        }
    )
    return config


def _trt_readme(name: str, art: Artifact) -> str:
    trt = art.versions.get("tensorrt", "unknown")
    cc = art.extra.get("compute_capability", "?")
    compatible = bool(art.extra.get("version_compatible"))
    lines = [
        f"# {name}",
        "",
        f"TensorRT plan `{Path(art.file).name}` ({art.precision}), built by kiln with TensorRT {trt} on a GPU of",
        f"compute capability {cc}. A plan runs only on that GPU architecture, and:",
        "",
    ]
    if compatible:
        lines += [
            f"- it is version-compatible: any TensorRT {trt.split('.')[0]}.x at or after {trt} runs it, when",
            "  the server is started with `--backend-config=tensorrt,version-compatible=true`.",
        ]
    else:
        lines += [
            f"- it needs TensorRT {trt} exactly: use the Triton container release that ships it (NVIDIA's",
            "  framework support matrix lists the TensorRT of each release), or rebuild the plan there",
            "  (`kiln build RECIPE --formats tensorrt`), or build version-compatible plans",
            "  (`kiln build ... --version-compatible`) and start the server with",
            "  `--backend-config=tensorrt,version-compatible=true`.",
        ]
    lines += ["", "Its optimisation profiles (instance_group.profile lists them all):", ""]
    for i, p in enumerate(art.profiles):
        lines.append(
            f"- profile {i}: " + "; ".join(f"{k} min {v['min']} opt {v['opt']} max {v['max']}" for k, v in p.items())
        )
    return "\n".join(lines) + "\n"


def _has_cpu_constants(ts_file: Path) -> bool:
    """Whether a TorchScript module pins a tensor to the CPU (then it cannot run on a GPU as traced)."""
    import torch

    module = torch.jit.load(str(ts_file), map_location="cpu")
    graph = str(module.inlined_graph)
    return 'prim::Constant[value="cpu"]' in graph


class RepositoryWriter:
    """Writes the models of one or more engines into a model repository directory."""

    def __init__(self, output: str | Path, options: RepoOptions | None = None):
        self.output = Path(output)
        self.options = options or RepoOptions()
        bad = [k for k in self.options.kinds if k not in ALL_KINDS]
        if bad:
            raise InvalidArgumentError(f"model kinds {bad}: expected some of {', '.join(ALL_KINDS)}")
        self.written: list[WrittenModel] = []
        self.check = schema_available()

    def _model_dir(self, name: str) -> Path:
        path = self.output / name
        if path.exists():
            if name in {w.name for w in self.written}:
                raise InvalidArgumentError(
                    f"two engines would both be served as {name!r}; give the engine directories different names"
                )
            shutil.rmtree(path)
        (path / "1").mkdir(parents=True)
        return path

    def _write(self, name: str, kind: str, config: dict, runs_here: bool, notes: list[str]) -> WrittenModel:
        path = self.output / name
        text = render(config)
        if self.check:
            check(text, str(path / "config.pbtxt"))
        (path / "config.pbtxt").write_text(text)
        if runs_here:
            shutil.copy2(MODEL_PY, path / "1" / "model.py")
        w = WrittenModel(name, kind, path, text, runs_here, notes)
        self.written.append(w)
        return w

    def _engine_ref(self, m: Manifest | GenerationManifest, name: str) -> str:
        """The engine_dir parameter: the engine's absolute path, or (copy_engines) its copy inside
        the repository, relative to the repository's root."""
        if not self.options.copy_engines:
            return str(m.dir.resolve())
        dst = self.output / name / "engine"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(m.dir, dst, copy_function=lambda s, d: _link_or_copy(Path(s), Path(d)))
        return f"{name}/engine"

    def add(self, engine_dir: str | Path) -> list[WrittenModel]:
        m = read_manifest(engine_dir)
        name = m.name if Path(engine_dir).name == "." else Path(engine_dir).resolve().name
        start = len(self.written)
        kinds = self.options.kinds
        if isinstance(m, GenerationManifest):
            if "generate" in kinds or "engine" in kinds:
                self._model_dir(name)
                ref = self._engine_ref(m, name)
                self._write(name, "generate", generate_config(m, name, ref, self.options), True, ["decoupled stream"])
            return self.written[start:]
        if "engine" in kinds:
            self._model_dir(name)
            ref = self._engine_ref(m, name)
            config, notes = engine_config(m, name, ref, self.options)
            self._write(name, "engine", config, True, notes)
            if "text" in kinds and pipeline_inputs(m):
                self._model_dir(f"{name}-text")
                self._write(
                    f"{name}-text", "text", text_config(m, f"{name}-text", name, ref, self.options), True, [m.task]
                )
        if "onnx" in kinds and (art := m.artifact("onnx")) is not None:
            path = self._model_dir(f"{name}-onnx")
            src = m.artifact_path(art, verify_sha256=False)
            _link_or_copy(src, path / "1" / "model.onnx")
            data = src.with_name(src.name + ".data")
            if data.is_file():  # external weights (models over 2 GB)
                _link_or_copy(data, path / "1" / data.name)
            self._write(f"{name}-onnx", "onnx", onnx_config(m, f"{name}-onnx", self.options), False, [])
        if "ts" in kinds and (art := m.artifact("torchscript")) is not None:
            path = self._model_dir(f"{name}-ts")
            src = m.artifact_path(art, verify_sha256=False)
            _link_or_copy(src, path / "1" / "model.pt")
            gpu = not _has_cpu_constants(src)
            notes = [] if gpu else ["KIND_CPU: the trace pins a tensor to the CPU"]
            self._write(f"{name}-ts", "ts", torchscript_config(m, f"{name}-ts", gpu, self.options), False, notes)
        if "trt" in kinds:
            for art in m.artifacts_of("tensorrt"):
                cc = str(art.extra.get("compute_capability", "")).replace(".", "")
                trt_name = f"{name}-trt-sm{cc}-{art.precision}"
                path = self._model_dir(trt_name)
                _link_or_copy(m.artifact_path(art, verify_sha256=False), path / "1" / Path(art.file).name)
                (path / "README.md").write_text(_trt_readme(trt_name, art))
                self._write(trt_name, "trt", trt_config(m, trt_name, art, self.options), False, [])
        return self.written[start:]


def write_repository(
    engine_dirs: list[str | Path], output: str | Path, options: RepoOptions | None = None
) -> list[WrittenModel]:
    """Every engine's models into `output` (created); returns what was written."""
    writer = RepositoryWriter(output, options)
    writer.output.mkdir(parents=True, exist_ok=True)
    for engine_dir in engine_dirs:
        writer.add(engine_dir)
    return writer.written
