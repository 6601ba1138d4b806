"""`make demo`: the main job, on the CPU.

1. build the MiniLM sentence-embedding deployable from the real checkpoint;
2. semantic search: documents ranked against a query through the C++ runtime;
3. build the three BERT task deployables (MiniLM body, randomly initialised heads);
4. run each task through the C++ runtime;
5. ViT, ConvNeXT and Wav2Vec2 at real sizes (random weights) on a real photo and real speech;
6. DETR, SegFormer, GLPN and Mask2Former at real sizes (random weights) on a real photo: boxes,
   a mask, a depth map and segments, drawn into pictures (build/demo/);
7. GPT-2 and BART at real sizes (random weights, real BPE vocabulary): text streamed from the
   C++ generation loop, a 4-beam summary;
8. parity of every backend against eager PyTorch on every engine (tokens too, for generation).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import samples

RECIPES = [
    "minilm-feature-extraction",
    "bert-text-classification",
    "bert-token-classification",
    "bert-question-answering",
]
MEDIA_RECIPES = [
    "vit-image-classification",
    "convnext-image-classification",
    "wav2vec2-speech-recognition",
    "wav2vec2-audio-classification",
]
DENSE_RECIPES = [
    "detr-object-detection",
    "segformer-semantic-segmentation",
    "glpn-depth-estimation",
    "mask2former-panoptic-segmentation",
]
GENERATION_RECIPES = ["gpt2-text-generation", "bart-summarization"]
PICTURES = Path("build/demo")


def _build_if_needed(name: str, engines_dir: Path, console) -> Path:
    """Build a recipe unless engines/<name> is newer than the recipe and kiln's own code."""
    from .errors import KilnError
    from .exporters import build
    from .manifest import read_manifest
    from .recipe import find_recipe, load_recipe

    out = engines_dir / name
    recipe = load_recipe(name)
    try:
        read_manifest(out)
        sources = [find_recipe(name), *Path(__file__).parent.rglob("*.py")]
        if (out / "manifest.json").stat().st_mtime > max(p.stat().st_mtime for p in sources):
            console.print(f"[dim]{name}: up to date in {out} (delete it to rebuild)[/]")
            return out
    except KilnError:
        pass
    with console.status(f"building {name}") as status:
        t = time.perf_counter()
        # fixed: one AOTI compile per graph (kiln build's default compiles an encoder twice and
        # keeps the faster linears: minutes more over the demo's 14 engines, for a few per cent)
        build(recipe, output=out, linear_kernels="fixed", progress=lambda msg: status.update(f"{name}: {msg}"))
    console.print(f"[green]built[/] {out} in {time.perf_counter() - t:.0f} s")
    return out


def main(engines_dir: Path = Path("engines")) -> int:
    from rich.rule import Rule

    from .parity import print_generation_report, print_report, run_generation_parity, run_parity
    from .pipelines import FeatureExtractionPipeline, Text2TextGenerationPipeline, TextGenerationPipeline, pipeline
    from .term import make_console

    console = make_console()

    console.print(Rule("1. sentence embeddings from the real all-MiniLM-L6-v2"))
    minilm = _build_if_needed("minilm-feature-extraction", engines_dir, console)

    console.print(Rule("2. semantic search through the C++ runtime"))
    search = FeatureExtractionPipeline(minilm)
    t = time.perf_counter()
    ranked = search.similarity(samples.SEARCH_QUERY, samples.SEARCH_DOCUMENTS)
    ms = (time.perf_counter() - t) * 1e3
    console.print(f"query: [bold]{samples.SEARCH_QUERY}[/]")
    for rank, (score, doc) in enumerate(ranked, 1):
        console.print(f"  {rank}. {score:.3f}  {doc}")
    console.print(
        f"[dim]{len(samples.SEARCH_DOCUMENTS) + 1} texts embedded in {ms:.0f} ms by the "
        f"C++ runtime ({search.backend} backend)[/]"
    )

    console.print(Rule("3. BERT task deployables (MiniLM body, random heads)"))
    console.print(
        "[yellow]These heads are randomly initialised (seeded), as no fine-tuned BERT task "
        "checkpoint is reachable here: their labels, tags and spans show the path works "
        "end to end and are compared across backends; they carry no meaning.[/]"
    )
    engines = {"minilm-feature-extraction": minilm}
    for name in RECIPES[1:]:
        engines[name] = _build_if_needed(name, engines_dir, console)

    console.print(Rule("4. task answers through the C++ runtime"))
    cls = pipeline(engines["bert-text-classification"])
    for text, res in zip(samples.SENTENCES[:2], cls(samples.SENTENCES[:2])):
        console.print(f"  {text!r} -> {res[0]['label']} ({res[0]['score']:.3f})")
    ner = pipeline(engines["bert-token-classification"])
    ents = ner(samples.ENTITY_SENTENCES[:1])[0]
    console.print(f"  {samples.ENTITY_SENTENCES[0]!r} -> " + ", ".join(f"{e['label']}:{e['word']!r}" for e in ents[:6]))
    qa = pipeline(engines["bert-question-answering"])
    q, c = samples.QA_PAIRS[0]
    ans = qa([q], [c])[0]
    console.print(f"  Q: {q} -> {ans['answer']!r} (score {ans['score']:.3f})")

    console.print(Rule("5. images and speech (random weights at real sizes)"))
    console.print(
        "[yellow]No ViT, ConvNeXT or Wav2Vec2 weights are reachable here: these are built at "
        "their real sizes (ViT-base/16, ConvNeXT-tiny, Wav2Vec2-base) with seeded random "
        "weights, so labels and transcripts are noise; the pre-processing (real photos, "
        "real synthesised speech), the engines and parity are the real thing.[/]"
    )
    for name in MEDIA_RECIPES:
        engines[name] = _build_if_needed(name, engines_dir, console)
    photo = samples.photos()[0]
    for name in ("vit-image-classification", "convnext-image-classification"):
        top = pipeline(engines[name])([photo])[0][0]
        console.print(f"  {name}: skimage astronaut photo -> {top['label']} ({top['score']:.3f})")
    speech = samples.speech_files()[0]
    text = pipeline(engines["wav2vec2-speech-recognition"])([speech])[0]
    console.print(f"  wav2vec2-speech-recognition: espeak-ng speech -> {text[:60]!r}")
    top = pipeline(engines["wav2vec2-audio-classification"])([speech])[0][0]
    console.print(f"  wav2vec2-audio-classification: espeak-ng speech -> {top['label']} ({top['score']:.3f})")

    console.print(Rule("6. boxes, masks and depth (random weights at real sizes)"))
    console.print(
        "[yellow]No DETR, SegFormer, GLPN or Mask2Former weights are reachable here: DETR-ResNet-50, SegFormer-b0 "
        "(ADE20K's 150 labels), GLPN (MiT-b4, NYU) and Mask2Former Swin-tiny (COCO panoptic's 133 labels) are "
        "built with seeded random weights, so the "
        "boxes, labels and depths are noise; the processors, the engines, the post-processing and "
        "the pictures are the real thing.[/]"
    )
    for name in DENSE_RECIPES:
        engines[name] = _build_if_needed(name, engines_dir, console)
    photo = samples.photos()[0]
    PICTURES.mkdir(parents=True, exist_ok=True)
    pictures = []
    detr = pipeline(engines["detr-object-detection"])
    found = sorted(detr([photo], threshold=0.0)[0], key=lambda a: -a["score"])[:5]  # random weights: no score > 0.5
    pictures += detr.save([photo], [found], PICTURES / "detr-boxes.png")
    console.print(
        "  detr-object-detection: skimage astronaut photo -> 5 best of 100 queries: "
        + ", ".join(f"{a['label']} {a['score']:.3f}" for a in found)
    )
    seg = pipeline(engines["segformer-semantic-segmentation"])
    answer = seg([photo])
    pictures += seg.save([photo], answer, PICTURES / "segformer-mask.png")
    top = sorted(answer[0]["segments"], key=lambda s: -s["pixels"])[:3]
    console.print(
        "  segformer-semantic-segmentation: astronaut -> "
        + ", ".join(f"{s['label']} {100 * s['share']:.1f}%" for s in top)
    )
    glpn = pipeline(engines["glpn-depth-estimation"])
    depth = glpn([photo])
    pictures += glpn.save([photo], depth, PICTURES / "glpn-depth.png")
    d = depth[0]["predicted_depth"]
    console.print(
        f"  glpn-depth-estimation: astronaut -> depth {d.min():.3f} .. {d.max():.3f}, median {float(np.median(d)):.3f}"
    )
    m2f = pipeline(engines["mask2former-panoptic-segmentation"])
    # random weights: panoptic keeps nothing (transformers weighs each mask by its class score, ~1/134,
    # before the 0.5 mask threshold), so the picture shows the instance answer of the same outputs
    feed, ctx = m2f.preprocess([photo])
    outputs = m2f.run(feed)
    panoptic = m2f.postprocess(outputs, ctx, subtask="panoptic", threshold=0.0)
    instance = m2f.postprocess(outputs, ctx, subtask="instance", threshold=0.0)
    pictures += m2f.save([photo], instance, PICTURES / "mask2former-instance.png")
    top = sorted(instance[0]["segments"], key=lambda s: -s["pixels"])[:3]
    console.print(
        f"  mask2former-panoptic-segmentation: astronaut -> panoptic {len(panoptic[0]['segments'])} segments; "
        f"instance {len(instance[0]['segments'])} segments, largest "
        + ", ".join(f"{s['label']} {s['score']:.3f} {100 * s['share']:.1f}%" for s in top)
    )
    console.print(f"  pictures: {', '.join(str(p) for p in pictures)}")

    console.print(Rule("7. text generation: GPT-2 and BART (random weights at real sizes)"))
    console.print(
        "[yellow]No GPT-2 or BART weights are reachable here: GPT-2 small (124M) and BART-base "
        "(139M) are built with seeded random weights, so the text is noise; the tokenizer (GPT-2's "
        "real BPE), the KV-cache graphs, the C++ generation loop and token parity are real.[/]"
    )
    for name in GENERATION_RECIPES:
        engines[name] = _build_if_needed(name, engines_dir, console)
    import sys

    gpt2 = TextGenerationPipeline(engines["gpt2-text-generation"])
    console.print(f"  gpt2-text-generation, greedy, streamed from kiln::Generator ({gpt2.backend}):")
    console.print(f"  [bold]{samples.PROMPTS[0]}[/]", end="")
    console.file.flush()
    out = gpt2(
        samples.PROMPTS[0], on_text=lambda row, piece: (sys.stdout.write(piece), sys.stdout.flush()), max_new_tokens=40
    )
    timings = gpt2.last_result.timings
    console.print(
        f"\n  [dim]{len(out[0]['tokens'])} tokens, first after {timings['time_to_first_token_ms']:.0f} ms, "
        f"{len(out[0]['tokens']) / (timings['total_ms'] / 1e3):.1f} tokens/s[/]"
    )
    bart = Text2TextGenerationPipeline(engines["bart-summarization"])
    summary = bart(samples.ARTICLE, max_new_tokens=60)[0]
    console.print(
        f"  bart-summarization, {bart.manifest.generation.get('num_beams')} beams "
        f"({bart.backend}), {len(bart.tokenizer.encode(samples.ARTICLE))}-token article -> "
        f"{len(summary['tokens'])} tokens in {bart.last_result.timings['total_ms'] / 1e3:.1f} s: "
        f"{summary['text'][:80]!r}..."
    )

    console.print(Rule("8. parity: every backend vs eager PyTorch fp32"))
    ok = True
    for name, path in engines.items():
        if name in GENERATION_RECIPES:
            tokens = run_generation_parity(path)
            print_generation_report(tokens, console)
            ok &= tokens.passed
        else:
            tensors = run_parity(path)
            print_report(tensors, console)
            ok &= tensors.passed
    console.print(
        f"[bold green]demo done: all parity checks pass[/]; pictures in {PICTURES}/"
        if ok
        else f"[bold red]demo done: parity FAILED (see above)[/]; pictures in {PICTURES}/"
    )
    return 0 if ok else 1
