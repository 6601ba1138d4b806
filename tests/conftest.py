"""Shared pytest fixtures.

minilm_dir         the real all-MiniLM-L6-v2 checkpoint ($KILN_CACHE/checkpoints); fails, not
                   skips, when it is absent: `make setup` fetches it
save_hf_model      factory: a transformers BERT with seeded random weights from a tiny config,
                   saved with save_pretrained (exactly the format of a user's checkpoint)
make_checkpoint    any registered deployable as a tiny transformers checkpoint of its reference
                   class (its `tiny` config), with the processing files its modality needs
deployable_engine  factory: that checkpoint built into every CPU format (`kiln build
                   --checkpoint DIR`'s path), once per session per deployable, by the session or
                   the helper process that builds them beside it (kiln.testing.TinyEngines)
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("kiln") is None:  # not pip-installed: test the source tree
    sys.path.insert(0, str(ROOT / "python"))

MINILM = "all-MiniLM-L6-v2"

TINY_BERT = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                 max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
                 pad_token_id=0)


def kiln_cache() -> Path:
    return Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from kiln.testing import minilm_path
    return minilm_path()  # fails, naming `make setup`, when the real checkpoint is absent


@pytest.fixture
def tiny_bert_config() -> dict:
    return dict(TINY_BERT)


@pytest.fixture
def save_hf_model(tmp_path_factory):
    """save_hf_model(hf_class_name, seed=0, **config) -> (checkpoint dir, eval-mode HF model).

    hf_class_name is a transformers BERT class name ("BertForMaskedLM", ...); config entries
    override the tiny BERT config.
    """
    import torch
    import transformers

    def make(hf_class_name: str, seed: int = 0, **config):
        cfg = transformers.BertConfig(**{**TINY_BERT, **config})
        torch.manual_seed(seed)
        model = getattr(transformers, hf_class_name)(cfg).eval()
        from kiln.testing import perturb
        perturb(model, seed, 0.05)
        path = tmp_path_factory.mktemp(hf_class_name.lower())
        model.save_pretrained(path)
        return path, model

    return make


# --- any deployable as a tiny transformers checkpoint (kiln.testing) --------------------------

from kiln.testing import LABELS, make_checkpoint  # noqa: E402


def all_deployables() -> list:
    from kiln import registry

    return sorted(registry.deployables().values(), key=lambda d: d.key)


def deployable_id(d) -> str:
    return f"{d.family}-{d.task}"


def _parametrized_deployables(items) -> set:
    """Keys of the deployables that the session's tests parametrized over them (`d`) build."""
    keys = set()
    for item in items:
        callspec = getattr(item, "callspec", None)
        key = getattr(callspec.params.get("d"), "key", None) if callspec is not None else None
        if key is not None and "deployable_engine" in item.fixturenames:
            keys.add(key)
    return keys


@pytest.fixture(scope="session")
def deployable_engine(tmp_path_factory, request):
    """deployable_engine(deployable) -> (engine dir, checkpoint dir, HF model): its tiny checkpoint
    built into every CPU format as `kiln build --checkpoint DIR --task TASK` builds it (dims at
    the deployable's defaults, clamped to the checkpoint's limits), once per session. Where the
    session runs tests parametrized over several deployables, a helper process builds theirs
    beside it, last first (KILN_TEST_HELPER=0: no helper)."""
    from kiln.testing import TinyEngines

    engines = TinyEngines(tmp_path_factory.mktemp("deployables"))
    keys = _parametrized_deployables(request.session.items)
    wanted = [d for d in all_deployables() if d.key in keys]
    if len(wanted) > 1 and os.environ.get("KILN_TEST_HELPER", "1") != "0":
        engines.start_helper(wanted)
    yield engines.get
    engines.stop_helper()


def engine_of(deployable_engine, family: str, task: str):
    from kiln import registry

    return deployable_engine(registry.get(family, task))


@pytest.fixture(scope="session")
def tiny_engines(deployable_engine):
    """task -> (engine dir, checkpoint dir) of the tiny BERT engines the registry-driven tests build."""
    return {task: engine_of(deployable_engine, "bert", task)[:2]
            for task in ("text-classification", "token-classification", "question-answering")}


@pytest.fixture(scope="session")
def minilm_engine(tmp_path_factory) -> Path:
    from kiln.exporters import build
    from kiln.recipe import load_recipe

    return build(load_recipe("minilm-feature-extraction"),
                 output=tmp_path_factory.mktemp("minilm") / "minilm-feature-extraction").path


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir() -> Path:
    """$KILN_CACHE/tokenizers/gpt2: GPT-2's real byte-level BPE (fetched by `make setup`)."""
    from kiln.testing import vocabulary_dir
    return vocabulary_dir("gpt2")


@pytest.fixture(scope="session")
def bart_tokenizer_dir() -> Path:
    """$KILN_CACHE/tokenizers/bart: the same BPE with BART's special tokens."""
    from kiln.testing import vocabulary_dir
    return vocabulary_dir("bart")
