"""The `kiln` command."""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from .errors import KilnError

EPILOG = """verbs:
  list      recipes in export/, engines built in engines/, C++ backends usable here
  build     export a recipe: TorchScript, ONNX and AOTInductor artifacts + manifest.json
  run       answers from an engine through the C++ runtime (labels, entities, spans, embeddings,
            image labels, transcripts)
  parity    every backend vs eager PyTorch: max abs / rel error, cosine, task-level answer
  bench     latency and throughput of every backend, one run
  check-trt will TensorRT's ONNX parser accept the engine's graph (checked without a GPU)
  inspect   what an engine directory holds and promises
  demo      the main job: build the BERT deployables, semantic search, parity table

examples:
  kiln build minilm-feature-extraction
  kiln run engines/minilm-feature-extraction "a cat sat on the mat" "a kitten on a rug"
  kiln run engines/bert-question-answering --question "Where was Marie Curie born?" \\
      "Marie Curie was born in Warsaw."
  kiln parity engines/minilm-feature-extraction --json parity.json
  kiln bench engines/minilm-feature-extraction --batch 1,8 --seq 128 --json bench.json
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
        table.add_row(r.name, f"{r.family} / {r.task}", r.checkpoint,
                      "random unless --checkpoint" if r.random_head else "from checkpoint",
                      "[green]yes[/]" if built else "no")
    console.print(table)
    try:
        from .runtime import available_backends
        console.print(f"C++ runtime backends usable here: {', '.join(available_backends())}")
    except ImportError as e:
        console.print(f"[yellow]C++ runtime not built ({e}); run `make setup`[/]")
    return 0


def cmd_build(args) -> int:
    from .exporters import build
    from .recipe import load_recipe
    console = _console()
    recipe = load_recipe(args.recipe)
    formats = [f for part in args.formats for f in part.split(",")] if args.formats else None
    with console.status(f"building {recipe.name}") as status:
        def progress(msg: str) -> None:
            status.update(f"{recipe.name}: {msg}")
            console.log(msg)
        precisions = [p for part in args.precision for p in part.split(",")] if args.precision else None
        result = build(recipe, checkpoint=args.checkpoint, output=args.output, formats=formats,
                       precisions=precisions, version_compatible=args.version_compatible,
                       progress=progress)
    from .exporters.manifest import graph_dirs, read_manifest
    m = result.manifest
    files = [str(Path(graph) / a["file"]) if graph else a["file"]
             for graph, path in graph_dirs(result.path) for a in read_manifest(path)["artifacts"]]
    console.print(f"[green]built[/] {result.path} in {result.seconds['total']:.1f} s: " + ", ".join(files))
    for fmt, why in result.skipped.items():
        console.print(f"[yellow]skipped {fmt}:[/] {why}")
    if m["weights"] == "random":
        console.print(f"[yellow]note:[/] every weight is random (seed {recipe.seed}, real sizes): answers "
                      "will be meaningless; pass --checkpoint HF_DIR for real ones")
    elif m["weights"] != "real":
        console.print(f"[yellow]note:[/] the {recipe.task} head is randomly initialised (seed "
                      f"{recipe.seed}): answers will be meaningless; pass --checkpoint with a "
                      "fine-tuned checkpoint for real ones")
    return 0


def _read_inputs(args) -> list[str]:
    texts = list(args.inputs)
    if not texts and not sys.stdin.isatty():
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    return texts


GENERATION_TASKS = ("text-generation", "summarization", "translation")


def _generation_options(args) -> dict:
    options = {"max_new_tokens": args.max_new_tokens, "min_new_tokens": args.min_new_tokens,
               "num_beams": args.num_beams, "temperature": args.temperature,
               "top_k": args.top_k, "top_p": args.top_p, "repetition_penalty": args.repetition_penalty,
               "no_repeat_ngram_size": args.no_repeat_ngram_size, "length_penalty": args.length_penalty}
    options = {k: v for k, v in options.items() if v is not None}
    if args.do_sample:
        options.update(do_sample=True, seed=args.seed)
    return options


def _run_generation(pipe, texts: list[str], args, console) -> int:
    """Prompts one at a time, the text streamed as it is generated (beam search prints the
    best beam when it is done)."""
    from rich.markup import escape
    if not texts:
        raise KilnError(f"{pipe.task} needs at least one prompt (as an argument or on standard input)")
    options = _generation_options(args)
    note = pipe.random_weights_note
    if note and not args.json:
        console.print(f"[yellow]note:[/] {note}")
    results = []
    for text in texts:
        if not args.json:
            console.print(f"[bold]{escape(text)}[/]")
        streamed: list[str] = []

        def on_text(row: int, piece: str) -> None:
            streamed.append(piece)
            if not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
        out = pipe([text], on_text=on_text, **options)[0]
        timings = pipe.last_result.timings
        ttft = timings["time_to_first_token_ms"]
        rate = len(out["tokens"]) / max(timings["total_ms"] / 1e3, 1e-9)
        if not args.json:
            if not streamed:  # beam search: the best sequence comes at the end
                sys.stdout.write(out["text"])
            sys.stdout.write("\n")
            console.print(f"[dim]{pipe.manifest['name']} · {pipe.task} · kiln::Generator on {pipe.backend} · "
                          f"{len(out['tokens'])} tokens · first token {ttft:.0f} ms · {rate:.1f} tokens/s[/]")
        results.append({"input": text, **out, "time_to_first_token_ms": ttft, "tokens_per_second": rate})
    if args.json:
        print(json.dumps({"engine": pipe.manifest["name"], "task": pipe.task, "backend": pipe.backend,
                          "weights": pipe.manifest.get("weights"), "options": options, "results": results}))
    return 0


def cmd_run(args) -> int:
    import time

    import numpy as np

    from .pipelines import pipeline
    console = _console()
    pipe = pipeline(args.engine, backend=args.backend, num_threads=args.threads)
    texts = _read_inputs(args)
    if pipe.task in GENERATION_TASKS:
        return _run_generation(pipe, texts, args, console)
    t = time.perf_counter()
    if pipe.task == "question-answering":
        if not args.question:
            raise KilnError("question-answering needs --question QUESTION and one or more contexts")
        results = pipe([args.question] * len(texts), texts)
    elif pipe.task in ("text-classification", "image-classification", "audio-classification") \
            and args.top_k:
        feed, ctx = pipe.preprocess(texts)
        results = pipe.postprocess(pipe.run(feed), ctx, top_k=args.top_k)
    else:
        results = pipe(texts)
    ms = (time.perf_counter() - t) * 1e3
    note = pipe.random_weights_note
    if pipe.task == "feature-extraction":
        emb = np.asarray(results)
        sims = (emb / np.linalg.norm(emb, axis=-1, keepdims=True))
        sims = sims @ sims.T
        payload = {"embeddings": emb.tolist(), "cosine": sims.tolist()}
    else:
        payload = {"results": results}
    if args.json:
        print(json.dumps({"engine": pipe.manifest["name"], "task": pipe.task, "backend": pipe.backend,
                          "weights": pipe.manifest.get("weights"), "inputs": texts, **payload}))
        return 0
    if note:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"[dim]{pipe.manifest['name']} · {pipe.task} · C++ runtime backend {pipe.backend} · "
                  f"{ms:.1f} ms[/]")
    if pipe.task == "feature-extraction":
        for i, text in enumerate(texts):
            console.print(f"[{i}] {text!r}: dim {emb.shape[1]}, norm {np.linalg.norm(emb[i]):.4f}, "
                          "first values [" + ", ".join(f"{v:+.4f}" for v in emb[i, :4]) + ", ...]")
        if len(texts) > 1:
            from rich.table import Table
            table = Table(title="cosine similarity")
            table.add_column("")
            for i in range(len(texts)):
                table.add_column(f"[{i}]")
            for i in range(len(texts)):
                table.add_row(f"[{i}]", *[f"{sims[i, j]:.3f}" for j in range(len(texts))])
            console.print(table)
        return 0
    from rich.markup import escape  # texts, labels and words are data, never markup
    say = functools.partial(console.print, soft_wrap=True)  # no folding inside an answer
    for text, result in zip(texts, results):
        say(f"[bold]{escape(text)}[/]")
        if pipe.task in ("text-classification", "image-classification", "audio-classification"):
            for r in result:
                say(f"  {escape(r['label']):<12} {r['score']:.4f}")
        elif pipe.task == "token-classification":
            if not result:
                say("  (no entities)")
            for e in result:
                say(f"  {escape(e['label']):<6} {escape(repr(e['word']))} \\[{e['start']}:{e['end']}] "
                    f"{e['score']:.3f}")
        elif pipe.task == "question-answering":
            say(f"  answer: {escape(repr(result['answer']))} \\[{result['start']}:{result['end']}] "
                f"score {result['score']:.4f}")
        elif pipe.task == "automatic-speech-recognition":
            say(f"  transcript: {escape(repr(result))}")
        else:
            say(f"  {escape(str(result))}")
    return 0


def cmd_parity(args) -> int:
    from .exporters.manifest import is_generation, read_manifest
    from .parity import print_generation_report, print_report, run_generation_parity, run_parity, write_json
    backends = [b for part in args.backends for b in part.split(",")] if args.backends else None
    with _console().status(f"parity: {args.engine}") as status:
        if is_generation(read_manifest(args.engine)):
            report = run_generation_parity(args.engine, backends,
                                           progress=lambda m: status.update(f"parity: {m}"))
        else:
            report = run_parity(args.engine, backends)
    (print_generation_report if is_generation(read_manifest(args.engine)) else print_report)(report)
    if args.json:
        write_json(report, args.json)
    return 0 if report.passed else 1


def cmd_bench(args) -> int:
    from .bench import print_bench, run_bench, write_json
    console = _console()
    batches = [int(b) for b in args.batch.split(",")]
    only = [b for part in args.backends for b in part.split(",")] if args.backends else None
    from .exporters.manifest import is_generation, read_manifest
    generation = is_generation(read_manifest(args.engine))
    with console.status("bench") as status:
        if generation:
            from .bench import run_generation_bench
            result = run_generation_bench(args.engine, batches, args.seq, args.new_tokens, args.beams,
                                          threads=args.threads, only=only,
                                          progress=lambda m: status.update(f"bench: {m}"))
        else:
            result = run_bench(args.engine, batches, args.seq, threads=args.threads, iters=args.iters,
                               only=only, progress=lambda m: status.update(f"bench: {m}"))
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
    from .exporters.manifest import graph_dirs
    from .exporters.tensorrt import check_engine, print_report
    reports = {}
    for graph, path in graph_dirs(args.engine):  # a generation engine: each of its graphs
        with _console().status(f"TensorRT checks: {path}"):
            reports[graph] = check_engine(path, args.ops_table)
        print_report(reports[graph])
    if args.json:
        data = (reports[""].to_json() if "" in reports
                else {"pass": all(r.passed for r in reports.values()),
                      "graphs": {g: r.to_json() for g, r in reports.items()}})
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0 if all(r.passed for r in reports.values()) else 1


def cmd_inspect(args) -> int:
    from rich.table import Table

    from .exporters.manifest import graph_dirs, is_generation, read_manifest
    console = _console()
    m = read_manifest(args.engine)
    if is_generation(m):
        console.print(f"[bold]{m['name']}[/] — {m.get('description', '')}")
        console.print(f"generation engine: graphs {', '.join(m['graphs'])}; KV cache (layers, 2, batch, "
                      f"heads, seq, head_dim) with layers {m['cache']['layers']}, heads {m['cache']['heads']}, "
                      f"head_dim {m['cache']['head_dim']}; vocabulary {m['vocab_size']}, "
                      f"{m['max_positions']} positions")
        console.print("generation defaults: " + ", ".join(f"{k}={v}" for k, v in m["generation"].items()))
        for graph, path in graph_dirs(args.engine):
            console.rule(graph)
            cmd_inspect(argparse.Namespace(engine=path, json=False))
        if args.json:
            print(json.dumps(m, indent=2))
        return 0
    console.print(f"[bold]{m['name']}[/] — {m.get('description', '')}")
    console.print(f"family {m['family']}, task {m['task']}, weights {m.get('weights')}, "
                  f"format_version {m['format_version']}, built {m.get('created')} by kiln "
                  f"{m.get('kiln_version')}")
    console.print(f"source {m['source'].get('checkpoint')} (sha256 {m['source'].get('sha256', '')[:16]}…)")
    dims = ", ".join(f"{k} {v['min']}..{v['max']} (opt {v['opt']})" for k, v in m["dims"].items())
    console.print(f"dims: {dims}")
    table = Table(title="tensors")
    for col in ("", "name", "dtype", "shape"):
        table.add_column(col)
    for kind in ("inputs", "outputs"):
        for s in m[kind]:
            table.add_row(kind[:-1], s["name"], s["dtype"], "[" + ", ".join(map(str, s["shape"])) + "]")
    console.print(table)
    table = Table(title="artifacts")
    for col in ("format", "file", "MB", "precision", "versions", "sha256"):
        table.add_column(col)
    for a in m["artifacts"]:
        table.add_row(a["format"], a["file"], f"{a['bytes'] / 1e6:.1f}", a.get("precision", ""),
                      ", ".join(f"{k} {v}" for k, v in a.get("versions", {}).items()), a["sha256"][:16] + "…")
    console.print(table)
    if m.get("labels"):
        console.print(f"labels: {', '.join(m['labels'])}")
    if args.json:
        print(json.dumps(m, indent=2))
    return 0


def cmd_demo(args) -> int:
    from .demo import main as demo_main
    return demo_main(engines_dir=Path(args.engines))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln", description="PyTorch models into deployable engines, "
                                "run by one C++ runtime, with parity proven.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    s = sub.add_parser("list", help="recipes, built engines and usable backends")
    s.add_argument("--engines", default="engines", help="engines directory (default: engines)")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("build", help="export a recipe into engines/<name>/",
                       description="Export a recipe (export/<name>.toml or a path) into an engine "
                       "directory: TorchScript (torch.jit.trace), ONNX (dynamic batch and sequence, "
                       "opset 20) and AOTInductor (.pt2) artifacts plus manifest.json. The directory "
                       "is written under a temporary name and renamed when complete.")
    s.add_argument("recipe", help="recipe name (see `kiln list`) or path to a .toml")
    s.add_argument("--checkpoint", help="Hugging Face checkpoint directory to use instead of the "
                   "recipe's (a fine-tuned one gives the task head real weights)")
    s.add_argument("--output", help="engine directory to write (default: engines/<recipe name>)")
    s.add_argument("--formats", nargs="+", help="subset of torchscript,onnx,aoti,tensorrt (default: the "
                   "recipe's; tensorrt needs the TensorRT Python module and a GPU, and is skipped with "
                   "the reason where they are missing)")
    s.add_argument("--precision", nargs="+", help="TensorRT precisions: fp32,fp16,bf16 (default fp32)")
    s.add_argument("--version-compatible", action="store_true",
                   help="build version-compatible TensorRT plans (runnable by the lean runtime)")
    s.set_defaults(fn=cmd_build)

    s = sub.add_parser("run", help="task answers through the C++ runtime",
                       description="Run inputs through an engine with the C++ runtime and print the "
                       "task's answer: labels with scores, entities with character spans, the answer "
                       "span with its score, embeddings with their cosine similarities (texts); labels "
                       "(image files: JPEG, PNG); the transcript or labels (WAV files). Inputs come "
                       "from the arguments, or one per line on standard input.")
    s.add_argument("engine", help="engine directory (engines/<name>)")
    s.add_argument("inputs", nargs="*", help="texts (contexts for question-answering), image files or "
                   "WAV files, as the engine's task takes")
    s.add_argument("--backend", default="auto", help="C++ runtime backend: auto, aoti, torchscript")
    s.add_argument("--question", help="the question (question-answering engines)")
    s.add_argument("--top-k", type=int, help="labels to show (classification tasks); sampling from the k best tokens (generation)")
    s.add_argument("--threads", type=int, default=0, help="intra-op threads (0: leave as is)")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    g = s.add_argument_group("generation (text-generation, summarization, translation engines; "
                             "defaults: the engine's generation_config)")
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
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("parity", help="every backend vs eager PyTorch",
                       description="Feed every backend available here (eager PyTorch as the reference, "
                       "TorchScript in Python, ONNX Runtime, the C++ runtime with each backend, "
                       "TensorRT where present) the same inputs made from real text and random ids; "
                       "report per output max abs, max rel and cosine against the tolerances in the "
                       "manifest, and the task-level check. Exits 1 on any failure.")
    s.add_argument("engine", help="engine directory")
    s.add_argument("--json", help="write the report as JSON to this file")
    s.add_argument("--backends", nargs="+", help="only these backends (names as in the table)")
    s.set_defaults(fn=cmd_parity)

    s = sub.add_parser("bench", help="latency / throughput of every backend",
                       description="p50/p90/p99 latency and throughput for transformers eager, kiln "
                       "eager, the artifacts called from Python, ONNX Runtime and the C++ runtime with "
                       "each backend, on the same inputs, in one run.")
    s.add_argument("engine", help="engine directory")
    s.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    s.add_argument("--seq", type=int, help="length: tokens for text, samples for audio (default: the "
                   "engine's opt value); images have fixed sizes; generation: prompt (GPT-2, default 32) or "
                   "source (BART, default 512) tokens")
    s.add_argument("--new-tokens", type=int, default=64, help="generation: tokens generated per row (default 64)")
    s.add_argument("--beams", type=int, help="generation: beams (default 1 for GPT-2, 4 for BART)")
    s.add_argument("--threads", type=int, default=2, help="threads for every backend (default 2)")
    s.add_argument("--iters", type=int, default=50, help="timed iterations per row (default 50)")
    s.add_argument("--backends", nargs="+", help="only these backends")
    s.add_argument("--json", help="write the results as JSON to this file")
    s.add_argument("--markdown", action="store_true", help="also print a Markdown table (for the README)")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("check-trt", help="will TensorRT accept this engine's ONNX? (no GPU needed)",
                       description="Check an engine's ONNX graph against what TensorRT's ONNX parser "
                       "accepts, without a GPU: opset 9-20, every operator and its element type in the "
                       "parser's table (onnx_ops.tsv), no float64 tensor, `polygraphy surgeon sanitize "
                       "--fold-constants` succeeds and the folded graph still matches eager PyTorch in "
                       "ONNX Runtime. Exits 1 with the reason for any failure.")
    s.add_argument("engine", help="engine directory")
    s.add_argument("--ops-table", help="TensorRT operator table (default: $KILN_TRT_OPS, else the one that "
                   "ships with kiln, kiln/data/tensorrt_onnx_ops.tsv: onnx-tensorrt release/10.1-GA)")
    s.add_argument("--json", help="write the verdict as JSON to this file")
    s.set_defaults(fn=cmd_check_trt)

    s = sub.add_parser("inspect", help="what an engine directory holds")
    s.add_argument("engine", help="engine directory")
    s.add_argument("--json", action="store_true", help="also print the whole manifest")
    s.set_defaults(fn=cmd_inspect)

    s = sub.add_parser("demo", help="the main job (what `make demo` runs)")
    s.add_argument("--engines", default="engines", help="engines directory (default: engines)")
    s.set_defaults(fn=cmd_demo)
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
    except KilnError as e:
        print(f"kiln: error [{e.code.name}]: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
