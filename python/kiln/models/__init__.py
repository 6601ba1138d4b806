"""kiln model files: one per family, each with its Config, blocks, base model and task heads.

Nothing heavy is imported here; `config_class_for(model_type)` resolves a family's config
class lazily from the `model_type` field of a Hugging Face config.json.
"""
from __future__ import annotations

import importlib

# HF config.json "model_type" -> "module:Class" of the kiln config that reads it
CONFIG_CLASSES: dict[str, str] = {
    "bert": "kiln.models.bert:BertConfig",
    "vit": "kiln.models.vit:ViTConfig",
    "convnext": "kiln.models.convnext:ConvNextConfig",
    "wav2vec2": "kiln.models.wav2vec2:Wav2Vec2Config",
    "gpt2": "kiln.models.gpt2:GPT2Config",
    "bart": "kiln.models.bart:BartConfig",
}


def config_class_for(model_type: str):
    """The kiln config class for a Hugging Face `model_type`, or None if kiln has no such family."""
    ref = CONFIG_CLASSES.get(model_type)
    if ref is None:
        return None
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)
