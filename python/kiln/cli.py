"""The `kiln` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .backends import CPP_BACKENDS
from .errors import InvalidArgumentError, KilnError

EPILOG = """verbs:
  list      families and tasks, recipes in export/, engines built in engines/, C++ backends usable here
  build     export a recipe or a checkpoint: TorchScript, ONNX and AOTInductor artifacts + manifest.json
  run       answers from an engine through the C++ runtime (labels, entities, spans, embeddings,
            image labels, transcripts)
  parity    every backend vs eager PyTorch: max abs / rel error, cosine, task-level answer
  bench     latency and throughput of every backend, one run
  check-trt will TensorRT's ONNX parser accept the engine's graph (checked without a GPU)
  inspect   what an engine directory holds and promises
  demo      the main job: build the BERT deployables, semantic search, parity table
  triton-repo  engine directories -> a Triton model repository (kiln's runtime in Triton's Python
            backend, text-in models, streaming generation, native ONNX / TensorRT / TorchScript models)
  serve     serve engines with the Triton server bundled in nvidia-pytriton (127.0.0.1; Ctrl-C stops)
  bench-serve  the engine on a real Triton server under N concurrent clients, against Engine.run

examples:
  kiln build minilm-feature-extraction
  kiln build --checkpoint path/to/fine-tuned-distilbert --output engines/sentiment
  kiln run engines/minilm-feature-extraction "a cat sat on the mat" "a kitten on a rug"
  kiln run engines/bert-question-answering --question "Where was Marie Curie born?" \\
      "Marie Curie was born in Warsaw."
  kiln parity engines/minilm-feature-extraction --json parity.json
  kiln bench engines/minilm-feature-extraction --batch 1,8 --seq 128 --json bench.json
  kiln serve engines/minilm-feature-extraction
"""


def _console():
    from .term import make_console

    return make_console()


def cmd_list(args) -> int:
    from rich.table import Table

    from .recipe import all_recipes, load_recipe

    console = _console()
    table = Table(title="recipes (export/)")
    for col in ("recipe", "family / task", "checkpoint", "head", "built"):
        table.add_column(col)
    for path in all_recipes():
        r = load_recipe(path)
        built = (Path(args.engines) / r.name / "manifest.json").is_file()
        table.add_row(
            r.name,
            f"{r.family} / {r.task}",
            r.checkpoint,
            "random unless --checkpoint" if r.random_head else "from checkpoint",
            "[green]yes[/]" if built else "no",
        )
    console.print(table)
    from . import registry

    tasks: dict[str, list[str]] = {}
    for family, task in registry.deployables():
        tasks.setdefault(family, []).append(task)
    console.print(
        "families (kiln build --checkpoint DIR builds any of them): "
        + "; ".join(f"{f}: {', '.join(t)}" for f, t in tasks.items())
    )
    try:
        from .runtime import available_backends

        console.print(f"C++ runtime backends usable here: {', '.join(available_backends())}")
    except ImportError as e:
        console.print(f"[yellow]C++ runtime not built ({e}); run `make setup`[/]")
    return 0


def cmd_build(args) -> int:
    from .exporters import build
    from .recipe import Recipe, load_recipe, parse_dims

    console = _console()
    if args.recipe:
        recipe = load_recipe(args.recipe)
        if args.task and args.task != recipe.task:
            raise InvalidArgumentError(
                f"--task {args.task}: the recipe {recipe.name} builds {recipe.task}; "
                "drop --task, or build the checkpoint alone (kiln build --checkpoint DIR --task ...)"
            )
    elif args.checkpoint:
        recipe = Recipe.for_checkpoint(args.checkpoint, args.task)
    else:
        raise InvalidArgumentError("kiln build needs a RECIPE (see `kiln list`) or --checkpoint HF_DIR (or both)")
    if args.dims:
        recipe.with_dims(parse_dims(args.dims))
    formats = [f for part in args.formats for f in part.split(",")] if args.formats else None
    precisions = [p for part in args.precision for p in part.split(",")] if args.precision else None
    with console.status(f"building {recipe.name}") as status:

        def progress(msg: str) -> None:
            status.update(f"{recipe.name}: {msg}")
            console.log(msg)

        result = build(
            recipe,
            checkpoint=args.checkpoint if args.recipe else None,
            output=args.output,
            formats=formats,
            precisions=precisions,
            version_compatible=args.version_compatible,
            linear_kernels=args.linear_kernels,
            progress=progress,
        )
    from .manifest import graph_manifests

    files = [
        str(g.dir.relative_to(result.path) / a.file) if g.dir != result.path else a.file
        for g in graph_manifests(result.path)
        for a in g.artifacts
    ]
    console.print(f"[green]built[/] {result.path} in {result.seconds['total']:.1f} s: " + ", ".join(files))
    for line in result.clamped.values():
        console.print(f"[yellow]dims clamped:[/] {line}")
    for fmt, why in result.skipped.items():
        console.print(f"[yellow]skipped {fmt}:[/] {why}")
    m = result.manifest
    if m.weights == "random":
        console.print(
            f"[yellow]note:[/] every weight is random (seed {recipe.seed}, real sizes): answers "
            "will be meaningless; pass --checkpoint HF_DIR for real ones"
        )
    elif m.weights != "real":
        console.print(
            f"[yellow]note:[/] the {recipe.task} head is randomly initialised (seed "
            f"{recipe.seed}): answers will be meaningless; pass --checkpoint with a "
            "fine-tuned checkpoint for real ones"
        )
    return 0


def _read_inputs(args) -> list[str]:
    texts = list(args.inputs)
    if not texts and not sys.stdin.isatty():
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    return texts


def cmd_run(args) -> int:
    from .pipelines import pipeline

    if args.threads < 0:
        raise InvalidArgumentError(f"--threads {args.threads}: expected 0 (leave as is) or a positive count")
    pipe = pipeline(args.engine, backend=args.backend, num_threads=args.threads, precision=args.precision)
    if (args.src_lang or args.tgt_lang) and "languages" not in pipe.manifest.processing:
        raise InvalidArgumentError(
            f"--src-lang / --tgt-lang: {args.engine} has no language codes (they are for mBART translation engines)"
        )
    return pipe.cli(_read_inputs(args), args, _console())


def cmd_parity(args) -> int:
    from .manifest import GenerationManifest, read_manifest
    from .parity import (
        GenerationParityReport,
        ParityReport,
        print_generation_report,
        print_report,
        run_generation_parity,
        run_parity,
        write_json,
    )

    backends = [b for part in args.backends for b in part.split(",")] if args.backends else None
    generation = isinstance(read_manifest(args.engine), GenerationManifest)
    report: ParityReport | GenerationParityReport
    with _console().status(f"parity: {args.engine}") as status:
        if generation:
            report = run_generation_parity(args.engine, backends, progress=lambda m: status.update(f"parity: {m}"))
            print_generation_report(report)
        else:
            report = run_parity(args.engine, backends)
            print_report(report)
    if args.json:
        write_json(report, args.json)
    return 0 if report.passed else 1


def cmd_int8(args) -> int:
    from .int8 import measure

    if args.threads < 1 or args.repeats < 1:
        raise InvalidArgumentError(f"--threads {args.threads} --repeats {args.repeats}: expected integers >= 1")
    report = measure(args.engine, args.backend, args.threads, args.repeats)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def cmd_bench(args) -> int:
    from .bench import print_bench, run_bench, write_json

    console = _console()
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        raise InvalidArgumentError(f"--batch {args.batch!r}: expected comma-separated integers, e.g. 1,8") from None
    only = [b for part in args.backends for b in part.split(",")] if args.backends else None
    from .manifest import GenerationManifest, read_manifest

    generation = isinstance(read_manifest(args.engine), GenerationManifest)
    with console.status("bench") as status:
        if generation:
            from .bench import run_generation_bench

            result = run_generation_bench(
                args.engine,
                batches,
                args.seq,
                args.new_tokens,
                args.beams,
                threads=args.threads,
                only=only,
                progress=lambda m: status.update(f"bench: {m}"),
                runs=args.runs,
            )
        else:
            result = run_bench(
                args.engine,
                batches,
                args.seq,
                threads=args.threads,
                iters=args.iters,
                only=only,
                beside_load=args.beside_load,
                progress=lambda m: status.update(f"bench: {m}"),
                attention=args.attention,
            )
    if generation:
        from .bench import generation_markdown, print_generation_bench

        print_generation_bench(result, console)
        if args.markdown:
            print(generation_markdown(result))
    else:
        print_bench(result, console)
    if args.markdown and not generation:
        from .bench import markdown

        print(markdown(result))
    if args.json:
        write_json(result, args.json)
        console.print(f"wrote {args.json}")
    return 0


def cmd_check_trt(args) -> int:
    from .check_trt import check_engine, print_report
    from .manifest import graph_manifests

    reports = {}
    for graph in graph_manifests(args.engine):  # a generation engine: each of its graphs
        with _console().status(f"TensorRT checks: {graph.dir}"):
            reports[graph.graph] = check_engine(graph.dir, args.ops_table)
        print_report(reports[graph.graph])
    if args.json:
        data = (
            next(iter(reports.values())).to_json()
            if len(reports) == 1
            else {
                "pass": all(r.passed for r in reports.values()),
                "graphs": {g: r.to_json() for g, r in reports.items()},
            }
        )
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0 if all(r.passed for r in reports.values()) else 1


def _inspect_graph(m, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    dims = ", ".join(
        f"{k} {v.min}..{v.max} (opt {v.opt})" + (f" = {' + '.join(v.sum)}" if v.sum else "") for k, v in m.dims.items()
    )
    console.print(f"dims: {dims}")
    table = Table(title="tensors")
    for col in ("", "name", "dtype", "shape", "values"):
        table.add_column(col)
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for s in specs:
            values = f"{s.values.min}..{s.values.max}" if s.values else ""
            table.add_row(kind, s.name, s.dtype, "[" + ", ".join(map(str, s.shape)) + "]", values)
    console.print(table)
    table = Table(title="artifacts")
    for col in ("format", "file", "MB", "precision", "versions", "sha256"):
        table.add_column(col)
    for a in m.artifacts:
        table.add_row(
            a.format,
            a.file,
            f"{a.bytes / 1e6:.1f}",
            a.precision,
            ", ".join(f"{k} {v}" for k, v in a.versions.items()),
            a.sha256[:16] + "…",
        )
    console.print(table)
    if m.backend_choice:
        c = m.backend_choice
        times = ", ".join(f"{b} {ms:.2f} ms" for b, ms in c.get("measured_ms", {}).items())
        cpu = escape(str(c.get("cpu")))
        console.print(f"auto runs {c.get('backend')} on {cpu} (measured at build: {times})")
    for a in m.artifacts:
        kernels = a.extra.get("linear_kernels")
        if isinstance(kernels, dict) and "why" in kernels:
            console.print(f"{a.format} {a.precision} linears: {escape(str(kernels['why']))}")
    if m.labels:
        console.print(f"labels: {', '.join(m.labels)}")


def cmd_inspect(args) -> int:
    from rich.markup import escape

    from .manifest import GenerationManifest, read_manifest

    console = _console()
    m = read_manifest(args.engine)
    console.print(f"[bold]{escape(m.name)}[/] — {escape(m.description)}")
    console.print(
        f"family {m.family}, task {m.task}, weights {m.weights}, format_version {m.format_version}, "
        f"built {m.created} by kiln {m.kiln_version}"
    )
    console.print(f"source {escape(m.source.checkpoint)} (sha256 {m.source.sha256[:16]}…)")
    if isinstance(m, GenerationManifest):
        c = m.cache
        console.print(
            f"generation engine: graphs {', '.join(m.graphs)}; KV cache (layers, 2, batch, heads, seq, "
            f"head_dim) with layers {c.layers}, heads {c.heads}, head_dim {c.head_dim}; vocabulary "
            f"{m.vocab_size}, {m.max_positions} positions"
        )
        console.print("generation defaults: " + ", ".join(f"{k}={v}" for k, v in m.generation.items()))
        for graph in m.graphs:
            console.rule(graph)
            _inspect_graph(m.graph(graph), console)
    else:
        _inspect_graph(m, console)
    if args.json:
        print(json.dumps(m.to_json(), indent=2))
    return 0


def cmd_demo(args) -> int:
    from .demo import main as demo_main

    return demo_main(engines_dir=Path(args.engines))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln",
        description="PyTorch models into deployable engines, run by one C++ runtime, with parity proven.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    s = sub.add_parser("list", help="recipes, built engines and usable backends")
    s.add_argument("--engines", default="engines", help="engines directory (default: engines)")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser(
        "build",
        help="export a recipe or a checkpoint into engines/<name>/",
        description="Export a recipe (export/<name>.toml or a path), or a Hugging Face "
        "checkpoint directory alone, into an engine directory: TorchScript "
        "(torch.jit.trace), ONNX (dynamic dims, opset 20) and AOTInductor (.pt2) artifacts "
        "plus manifest.json. Without a recipe the family comes from config.json's "
        "model_type and the task from its architectures (or --task); dims start from the "
        "family's defaults. Every dim is clamped to the checkpoint's own limits (positions), "
        "and the clamp is printed. The directory is written under a temporary name and "
        "renamed when complete.",
    )
    s.add_argument(
        "recipe", nargs="?", help="recipe name (see `kiln list`) or path to a .toml; optional with --checkpoint"
    )
    s.add_argument(
        "--checkpoint",
        help="Hugging Face checkpoint directory: with a recipe, used instead of "
        "the recipe's (a fine-tuned one gives the task head real weights); alone, built as it is",
    )
    s.add_argument(
        "--task",
        help="the task to build a checkpoint for, where its architectures do not say "
        "(e.g. summarization or translation for a BART checkpoint)",
    )
    s.add_argument(
        "--dims",
        nargs="+",
        metavar="NAME=MIN:OPT:MAX",
        help="shape ranges to use instead of the defaults, e.g. sequence=2:128:384 batch=1:1:8",
    )
    s.add_argument("--output", help="engine directory to write (default: engines/<recipe name>)")
    s.add_argument(
        "--formats",
        nargs="+",
        help="subset of torchscript,onnx,aoti,tensorrt (default: the "
        "recipe's; tensorrt needs the TensorRT Python module and a GPU, and is skipped with "
        "the reason where they are missing)",
    )
    s.add_argument(
        "--precision",
        nargs="+",
        help="fp32 (default); int8: quantised aoti and onnx artifacts beside the fp32 ones (CPU); "
        "fp16, bf16: TensorRT plans",
    )
    s.add_argument(
        "--version-compatible",
        action="store_true",
        help="build version-compatible TensorRT plans (runnable by the lean runtime)",
    )
    s.add_argument(
        "--linear-kernels",
        choices=["auto", "measure", "fixed"],
        default="auto",
        help="an encoder's AOTI linears: auto (default) compiles a model of 8 MB of weights and 0.2 GFLOP "
        "at its opt dims or more on oneDNN's prepacked kernels and on MKL's GEMM, times both on this CPU "
        "and keeps the faster; measure: the same at any size; fixed: oneDNN prepacked, untimed (a faster build)",
    )
    s.set_defaults(fn=cmd_build)

    s = sub.add_parser(
        "run",
        help="task answers through the C++ runtime",
        description="Run inputs through an engine with the C++ runtime and print the "
        "task's answer: labels with scores, entities with character spans, the answer "
        "span with its score, embeddings with their cosine similarities (texts); labels "
        "(image files: JPEG, PNG); the transcript or labels (WAV files). Inputs come "
        "from the arguments, or one per line on standard input.",
    )
    s.add_argument("engine", help="engine directory (engines/<name>)")
    s.add_argument(
        "inputs",
        nargs="*",
        help="texts (contexts for question-answering), image files or WAV files, as the engine's task takes",
    )
    s.add_argument(
        "--backend",
        default="auto",
        help="C++ runtime backend: auto (the best usable here), or "
        f"one of {', '.join(CPP_BACKENDS)} (usable here: see `kiln list`)",
    )
    s.add_argument(
        "--precision",
        default="auto",
        help="which artifact to run: auto (fp32, else fp16, else bf16, else int8), fp32, int8 (CPU "
        "backends, engines built with --precision int8), fp16 or bf16 (TensorRT plans)",
    )
    s.add_argument("--question", help="the question (question-answering engines)")
    s.add_argument(
        "--top-k",
        type=int,
        help="labels to show (classification tasks, >= 1); sampling from the k best tokens (generation)",
    )
    s.add_argument("--threads", type=int, default=0, help="intra-op threads (0: leave as is)")
    s.add_argument(
        "--save",
        help="write the answer as a picture (detection boxes, segment masks, depth maps) to "
        "this file; several inputs get numbered files",
    )
    s.add_argument("--threshold", type=float, help="score threshold of the answers kept (detection, segmentation)")
    s.add_argument(
        "--subtask",
        choices=("panoptic", "instance", "semantic"),
        help="image-segmentation (Mask2Former): the answer (default: the engine's, panoptic unless built otherwise)",
    )
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    g = s.add_argument_group(
        "generation (text-generation, summarization, translation engines; defaults: the engine's generation_config)"
    )
    g.add_argument("--max-new-tokens", type=int, help="tokens to generate at most")
    g.add_argument("--min-new-tokens", type=int, help="tokens to generate at least (eos held back)")
    g.add_argument("--num-beams", type=int, help="beam search with this many beams (1: greedy)")
    g.add_argument("--do-sample", action="store_true", help="sample instead of taking the best token")
    g.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    g.add_argument("--temperature", type=float, help="sampling temperature (> 0)")
    g.add_argument("--top-p", type=float, help="nucleus sampling: keep tokens up to this mass, in (0, 1]")
    g.add_argument("--repetition-penalty", type=float, help="penalise tokens already present (> 1)")
    g.add_argument("--no-repeat-ngram-size", type=int, help="never repeat an n-gram of this size")
    g.add_argument("--length-penalty", type=float, help="beam search: exponent of the length normaliser")
    g.add_argument("--src-lang", help="the source language code (mBART: en_XX, ...; default the tokenizer's)")
    g.add_argument("--tgt-lang", help="the target language code (mBART: fr_XX, ...; default the engine's)")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser(
        "parity",
        help="every backend vs eager PyTorch",
        description="Feed every backend available here (eager PyTorch as the reference, "
        "TorchScript in Python, ONNX Runtime, the C++ runtime with each backend, "
        "TensorRT where present) the same inputs made from real text and random ids; "
        "report per output max abs, max rel and cosine against the tolerances in the "
        "manifest, and the task-level check. Exits 1 on any failure.",
    )
    s.add_argument("engine", help="engine directory")
    s.add_argument("--json", help="write the report as JSON to this file")
    s.add_argument("--backends", nargs="+", help="only these backends (names as in the table)")
    s.set_defaults(fn=cmd_parity)

    s = sub.add_parser(
        "bench",
        help="latency / throughput of every backend",
        description="p50/p90/p99 latency and throughput for transformers eager, kiln "
        "eager, the artifacts called from Python, ONNX Runtime and the C++ runtime with "
        "each backend, on the same inputs, in one run.",
    )
    s.add_argument("engine", help="engine directory")
    s.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    s.add_argument(
        "--seq",
        type=int,
        help="length: tokens for text, samples for audio (default: the "
        "engine's opt value); images have fixed sizes; generation: prompt (GPT-2, default 32) or "
        "source (BART, default 512) tokens",
    )
    s.add_argument("--new-tokens", type=int, default=64, help="generation: tokens generated per row (default 64)")
    s.add_argument("--beams", type=int, help="generation: beams (default 1 for GPT-2, 4 for BART)")
    s.add_argument(
        "--runs",
        type=int,
        default=3,
        help="generation: measured runs per backend and batch, taking turns; each row is the run with the "
        "least median decode step (default 3)",
    )
    s.add_argument("--threads", type=int, default=2, help="threads for every backend (default 2)")
    s.add_argument("--iters", type=int, default=50, help="timed iterations per row (default 50)")
    s.add_argument(
        "--attention",
        choices=("eager", "sdpa"),
        help="the transformers baseline's attn_implementation (default: transformers' default for the "
        "model; Mask2Former's is SDPA in its Swin, eager in its decoder); the report names it",
    )
    s.add_argument("--backends", nargs="+", help="only these backends")
    s.add_argument(
        "--beside-load",
        action="store_true",
        help="also time the fastest C++ backend beside a competing kiln-run busy on the same engine "
        "(latency should rise by the CPU share it loses, no more)",
    )
    s.add_argument("--json", help="write the results as JSON to this file")
    s.add_argument("--markdown", action="store_true", help="also print a Markdown table (for the README)")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser(
        "int8",
        help="int8 vs fp32 of an engine built with --precision int8: accuracy and speed",
        description="Measure, in one run, what an engine's int8 artifacts cost in accuracy and gain in "
        "speed against its fp32 ones through the C++ runtime (and ONNX Runtime): sentence embeddings "
        "(cosine per sentence, Spearman of 60 pair similarities, 1x128 and 8x128 latency) or a decoder "
        "(top-1 agreement of next-token logits over real text, greedy tokens/s). Names the CPU and the load.",
    )
    s.add_argument("engine", help="engine directory built with --precision int8")
    s.add_argument("--backend", default="aoti", help="C++ runtime backend with fp32 and int8 artifacts (default aoti)")
    s.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    s.add_argument("--repeats", type=int, default=20, help="timed runs of each, alternated (default 20)")
    s.add_argument("--json", help="write the report as JSON to this file")
    s.set_defaults(fn=cmd_int8)

    s = sub.add_parser(
        "check-trt",
        help="will TensorRT accept this engine's ONNX? (no GPU needed)",
        description="Check an engine's ONNX graph against what TensorRT's ONNX parser "
        "accepts, without a GPU: opset 9-20, every operator and its element type in the "
        "parser's table (onnx_ops.tsv), no float64 tensor, `polygraphy surgeon sanitize "
        "--fold-constants` succeeds and the folded graph still matches eager PyTorch in "
        "ONNX Runtime. Exits 1 with the reason for any failure.",
    )
    s.add_argument("engine", help="engine directory")
    s.add_argument(
        "--ops-table",
        help="TensorRT operator table (default: $KILN_TRT_OPS, else the one that "
        "ships with kiln, kiln/data/tensorrt_onnx_ops.tsv: onnx-tensorrt release/10.1-GA)",
    )
    s.add_argument("--json", help="write the verdict as JSON to this file")
    s.set_defaults(fn=cmd_check_trt)

    s = sub.add_parser("inspect", help="what an engine directory holds")
    s.add_argument("engine", help="engine directory")
    s.add_argument("--json", action="store_true", help="also print the whole manifest")
    s.set_defaults(fn=cmd_inspect)

    s = sub.add_parser("demo", help="the main job (what `make demo` runs)")
    s.add_argument("--engines", default="engines", help="engines directory (default: engines)")
    s.set_defaults(fn=cmd_demo)

    from .serving.cli import add_parsers as add_serving_parsers

    add_serving_parsers(sub)  # triton-repo, serve, bench-serve
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # texts may follow options (`run ENGINE --question Q CONTEXT`), which argparse's nargs="*"
    # positional does not pick up by itself
    args, extra = parser.parse_known_args(argv)
    if extra and args.verb == "run" and not any(e.startswith("-") for e in extra):
        args.inputs = [*args.inputs, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args)
    except KilnError as e:  # usage errors exit 2 (as argparse's own), every other kiln error 1
        print(f"kiln: error [{e.code.name}]: {e}", file=sys.stderr)
        return 2 if isinstance(e, InvalidArgumentError) else 1


if __name__ == "__main__":
    from .command import entry

    sys.exit(entry())
