"""What every kiln model file shares: its config and its loading contract.

HFConfig: a family's config is a dataclass subclass naming its `model_type`; its fields are
the config.json keys kiln reads. Training-only keys are ignored; keys that change the
computation and that the family does not implement are listed in `unsupported` and refused.

KilnModel: the attributes kiln.checkpoint.load_model reads (prefix, head / tied / ignored
keys, renames) and transformers-like initialisation of single state-dict entries.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

import torch
from torch import nn

from ..errors import InvalidArgumentError


class HFConfig:
    model_type: ClassVar[str]
    display_name: ClassVar[str]
    # (config.json key, what kiln would need to implement): refused when the key is truthy
    unsupported: ClassVar[tuple[tuple[str, str], ...]] = ()
    id2label: dict[int, str]

    def check_labels(self) -> None:
        """Normalise id2label to {int: str} and require the ids 0..N-1 (call in __post_init__)."""
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise InvalidArgumentError(f"id2label keys {sorted(self.id2label)}: expected 0..{len(self.id2label) - 1}")

    def check_multiple(self, name: str, of: str) -> None:
        value, divisor = getattr(self, name), getattr(self, of)
        if value % divisor:
            raise InvalidArgumentError(f"{name}={value} is not a multiple of {of}={divisor}")

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in self.id2label.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """From a Hugging Face config.json dict."""
        model_type = d.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise InvalidArgumentError(
                f"model_type={model_type!r}: this is not a {cls.display_name} config (expected {cls.model_type!r})"
            )
        for key, what in cls.unsupported:
            if d.get(key):
                raise InvalidArgumentError(f"{key}={d[key]!r}: kiln's {cls.display_name} does not implement {what}")
        names = {f.name for f in dataclasses.fields(cls)} - {"id2label"}  # type: ignore[arg-type]
        kwargs = {k: d[k] for k in names if k in d and d[k] is not None}
        if d.get("id2label"):
            kwargs["id2label"] = {int(k): v for k, v in d["id2label"].items()}
        elif d.get("num_labels"):
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(int(d["num_labels"]))}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A Hugging Face config.json dict (the transformers config of the family reads it back)."""
        d: dict[str, Any] = {"model_type": self.model_type}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            d[f.name] = list(value) if isinstance(value, tuple) else value
        d["id2label"] = {str(i): label for i, label in self.id2label.items()}
        d["label2id"] = self.label2id
        return d


class KilnModel(nn.Module):
    """Base of every kiln model class: `model.config`, and the checkpoint contract."""

    config_class: ClassVar[type[HFConfig]]
    base_model_prefix: ClassVar[str]
    hf_architecture: ClassVar[str]  # the transformers class a saved checkpoint names
    head_keys: tuple[str, ...] = ()  # state-dict keys a base checkpoint lacks (random_head)
    tied_keys: dict[str, str] = {}  # key -> the key it shares its tensor with
    ignored_keys: tuple[str, ...] = ()  # checkpoint keys known and unused
    checkpoint_renames: tuple[tuple[str, str], ...] = ()  # (old suffix, new suffix) in checkpoints

    # set by kiln.checkpoint.load_model and the exporters
    random_keys: list[str]  # keys initialised from the seed, not loaded
    ignored_checkpoint_keys: list[str]  # checkpoint keys known and unused
    random_weights: bool  # every weight drawn from the seed (a config-only checkpoint)

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        self.random_keys = []
        self.ignored_checkpoint_keys = []
        self.random_weights = False

    def checkpoint_key(self, name: str) -> str:
        """The model name of a checkpoint key, where a family's checkpoints spell one tensor in
        more than one layout (DETR's timm and transformers ResNet backbones); identity by default.
        Applied after `checkpoint_renames`, before the base-model prefix is matched."""
        return name

    def init_weight(self, name: str, tensor: torch.Tensor, owner: nn.Module, generator: torch.Generator) -> None:
        """Initialise one state-dict entry in place as transformers does for this family."""
        raise NotImplementedError

    def init_parameter(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """Initialise the state-dict entry `name` in place (random heads, config-only checkpoints)."""
        self.init_weight(name, tensor, self.get_submodule(name.rpartition(".")[0]), generator)
