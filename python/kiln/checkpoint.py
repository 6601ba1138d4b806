"""Hugging Face checkpoint directory <-> kiln model, strictly.

    model = load_model(BertForSequenceClassification, "path/to/ckpt", random_head=True, seed=0)
    model.random_keys            # ["classifier.bias", "classifier.weight"]: initialised, not loaded
    model.ignored_checkpoint_keys  # checkpoint keys the model file declares as known and unused
    save_model(model, "out/")    # config.json + model.safetensors that transformers reads back

Loading is a name match plus the rules each model class declares (see kiln/models/bert.py):
the "bert." prefix of head checkpoints, head keys, tied keys, ignored keys, legacy renames.
Every missing key, unexpected key and shape mismatch is collected and reported together
in one CheckpointError; nothing is dropped by a blanket filter.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, InvalidArgumentError
from .models.base import HFConfig, KilnModel

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"


# --- reading ----------------------------------------------------------------------------------


def read_config_dict(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's config.json as a dict."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(
            f"checkpoint {path}: no {CONFIG_FILE}; expected a Hugging Face "
            f"checkpoint directory ({CONFIG_FILE} + {SAFETENSORS_FILE} or {TORCH_FILE})"
        )
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {file}: not readable as JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {file}: expected a JSON object, got {type(data).__name__}")
    return data


def config_from_dir(
    path: str | os.PathLike, config_cls: type[HFConfig] | None = None, *, overrides: dict[str, Any] | None = None
) -> Any:
    """The kiln config of a checkpoint directory.

    config_cls: the family's config class; by default chosen from config.json's model_type.
    overrides: config.json fields replaced before parsing (e.g. {"id2label": {...}}).
    """
    data = read_config_dict(path)
    data.update(overrides or {})
    if config_cls is None:
        from .registry import families

        model_type = data.get("model_type")
        config_cls = families().get(model_type) if isinstance(model_type, str) else None
        if config_cls is None:
            raise CheckpointError(
                f"checkpoint {path}: model_type {model_type!r} in {CONFIG_FILE} is not a kiln family; "
                f"expected one of {sorted(families())}"
            )
    try:
        return config_cls.from_dict(data)
    except (InvalidArgumentError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {Path(path) / CONFIG_FILE}: {e}") from None


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The weight file(s) of a checkpoint, safetensors preferred (as transformers does)."""
    path = Path(path)
    for single, index in ((SAFETENSORS_FILE, SAFETENSORS_INDEX), (TORCH_FILE, TORCH_INDEX)):
        if (path / single).is_file():
            return [path / single]
        if (path / index).is_file():
            try:
                weight_map = json.loads((path / index).read_text())["weight_map"]
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"checkpoint {path / index}: not a readable shard index ({e})") from None
            shards = [path / name for name in sorted(set(weight_map.values()))]
            absent = [s.name for s in shards if not s.is_file()]
            if absent:
                raise CheckpointError(f"checkpoint {path / index}: shard file(s) {absent} are missing")
            return shards
    raise CheckpointError(
        f"checkpoint {path}: no weights; expected {SAFETENSORS_FILE} or {TORCH_FILE} (or a sharded index of either)"
    )


def _read_weight_file(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(file))
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors, pickle and zip each raise their own error types
        raise CheckpointError(f"checkpoint {file}: not readable as weights ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {file}: expected a state dict of tensors")
    return state


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, by its checkpoint name."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        state.update(_read_weight_file(file))
    return state


def checkpoint_hash(path: str | os.PathLike) -> str:
    """sha256 (hex) of the checkpoint's weight file(s), read in name order."""
    digest = hashlib.sha256()
    for file in weight_files(path):
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# --- loading ----------------------------------------------------------------------------------


def _shape(t: torch.Tensor | torch.Size) -> str:
    return str(list(t.shape if isinstance(t, torch.Tensor) else t))


def _to_model_names(
    state: dict[str, torch.Tensor], model: nn.Module, model_keys: set[str]
) -> dict[str, tuple[str, torch.Tensor]]:
    """Checkpoint names -> model names ({model_name: (checkpoint_name, tensor)})."""
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
    model_has_prefix = bool(prefix) and any(k.startswith(prefix) for k in model_keys)
    ckpt_has_prefix = bool(prefix) and any(k.startswith(prefix) for k in state)
    renames = getattr(model, "checkpoint_renames", ())
    out: dict[str, tuple[str, torch.Tensor]] = {}
    for ckpt_name, tensor in state.items():
        name = ckpt_name
        for old, new in renames:
            if name.endswith(old):
                name = name[: -len(old)] + new
        if isinstance(model, KilnModel):
            name = model.checkpoint_key(name)
        if model_has_prefix and not ckpt_has_prefix:  # a base checkpoint into a task model
            name = prefix + name
        elif ckpt_has_prefix and not model_has_prefix and name.startswith(prefix):
            name = name[len(prefix) :]  # a task checkpoint's body into the base model
        if name in out:
            raise CheckpointError(f"checkpoint keys {out[name][0]!r} and {ckpt_name!r} both map to {name!r}")
        out[name] = (ckpt_name, tensor)
    return out


def _untie(model: nn.Module, key: str) -> None:
    """Give the parameter `key` a tensor of its own where it shares one with another name: a
    module shared by two paths (BART's embed_tokens is `shared`) is copied first."""
    import copy

    owner_path, _, attr = key.rpartition(".")
    owner = model.get_submodule(owner_path)
    shared_module = any(m is owner for name, m in model.named_modules(remove_duplicate=False) if name != owner_path)
    if shared_module:
        parent_path, _, child = owner_path.rpartition(".")
        owner = copy.deepcopy(owner)
        setattr(model.get_submodule(parent_path), child, owner)
    setattr(owner, attr, nn.Parameter(getattr(owner, attr).detach().clone()))


def load_model(
    model_cls: type[KilnModel],
    path: str | os.PathLike,
    *,
    random_head: bool = False,
    seed: int = 0,
    config_overrides: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> KilnModel:
    """A kiln model with the weights of a Hugging Face checkpoint directory, in eval mode.

    Accepts a base checkpoint (BertModel: keys without "bert.") and a task checkpoint (keys
    with "bert." plus the head's). With random_head=True, the head keys a checkpoint lacks
    (the class's `head_keys`) are initialised as transformers does, from a generator seeded
    with `seed`; without it they are missing keys like any other.

    config_overrides replace config.json fields before parsing (e.g. id2label for a new head);
    model_kwargs go to the model constructor (e.g. pooling="mean").

    The returned model carries `random_keys` (sorted model keys that were initialised, not
    loaded; empty when every weight is real) and `ignored_checkpoint_keys` (checkpoint keys the
    model file declares as known and unused, e.g. the legacy embeddings.position_ids).
    """
    path = Path(path)
    config = config_from_dir(path, model_cls.config_class, overrides=config_overrides)
    files = weight_files(path)  # before building the model: a missing file is the first error
    try:
        model = model_cls(config, **model_kwargs)
    except InvalidArgumentError as e:
        raise CheckpointError(
            f"checkpoint {path}: {model_cls.__name__} cannot be built from {CONFIG_FILE}: {e}"
        ) from None
    state = {}
    for file in files:
        state.update(_read_weight_file(file))

    model_state = model.state_dict()
    given = _to_model_names(state, model, set(model_state))
    # a tied key the checkpoint stores with values of its own is not a duplicate: it was trained
    # apart from its source (transformers does the same and unties it); give it its own tensor
    untied = [
        k
        for k, src in getattr(model, "tied_keys", {}).items()
        if k in given
        and src in given
        and given[k][1].shape == given[src][1].shape
        and not torch.equal(given[k][1], given[src][1])
    ]
    for key in untied:
        _untie(model, key)
    if untied:
        model_state = model.state_dict()
    tied = {k: v for k, v in getattr(model, "tied_keys", {}).items() if k not in untied}
    model.tied_keys = tied
    expected = {k: v.shape for k, v in model_state.items() if k not in tied}
    ignorable = set(getattr(model, "ignored_keys", ()))
    head = set(getattr(model, "head_keys", ()))

    where = files[0] if len(files) == 1 else path
    problems: list[str] = []
    missing = sorted(k for k in expected if k not in given)
    random_keys = [k for k in missing if random_head and k in head]
    for k in missing:
        if k in random_keys:
            continue
        hint = "; it is a task-head key: pass random_head=True to initialise the head randomly" if k in head else ""
        problems.append(f"missing key {k!r} (model shape {_shape(expected[k])}){hint}")
    ignored = []
    for name, (ckpt_name, tensor) in sorted(given.items()):
        shown = repr(name) if name == ckpt_name else f"{name!r} (checkpoint key {ckpt_name!r})"
        if name in expected:
            if tensor.shape != expected[name]:
                problems.append(
                    f"shape mismatch for {shown}: checkpoint {_shape(tensor)}, model {_shape(expected[name])}"
                )
        elif name in ignorable or name in tied:
            # a tied key stored anyway (older checkpoints save every name of a shared tensor):
            # the model reads it from the key it is tied to
            ignored.append(ckpt_name)
        else:
            problems.append(f"unexpected key {shown} (checkpoint shape {_shape(tensor)})")
    if problems:
        raise CheckpointError(
            f"checkpoint {where} does not fit {model_cls.__name__} ({len(problems)} problem"
            f"{'s' if len(problems) > 1 else ''}):\n  " + "\n  ".join(problems)
        )

    with torch.no_grad():
        for name, (_, tensor) in given.items():
            if name in expected:
                # checkpoints may be stored in fp16/bf16: copy_ casts into the fp32 parameters
                model_state[name].copy_(tensor)
        if random_keys:
            generator = torch.Generator().manual_seed(int(seed))
            for name in random_keys:  # sorted: the draw order, hence the values, is fixed
                model.init_parameter(name, model_state[name], generator)
    model.random_keys = random_keys
    model.ignored_checkpoint_keys = sorted(ignored)
    return model.eval()


# --- saving -----------------------------------------------------------------------------------


def save_model(model: KilnModel, path: str | os.PathLike) -> Path:
    """Write a kiln model as a Hugging Face checkpoint directory: config.json + model.safetensors.

    Tied duplicates are left out (transformers re-ties them on load); a model whose HF
    architecture is the base model (BertModel, BertForFeatureExtraction) is written with
    base-model key names. Files are written under temporary names and renamed when complete.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arch = getattr(model, "hf_architecture", type(model).__name__)
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    tied = set(getattr(model, "tied_keys", {}))
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name in tied:
            continue
        if arch == "BertModel" and name.startswith(prefix):  # base-model checkpoints carry no prefix
            name = name[len(prefix) :]
        tensors[name] = tensor.detach().to("cpu").contiguous()
    config = model.config.to_dict()
    config["architectures"] = [arch]

    def write(final: Path, writer) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=path)
        os.close(fd)
        try:
            writer(tmp)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # transformers refuses safetensors files without format metadata
    write(path / SAFETENSORS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write(path / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return path


# --- random weights at real sizes ---------------------------------------------------------------


def random_checkpoint(
    model_cls: type[KilnModel],
    config_dir: str | os.PathLike,
    *,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
) -> Path:
    """A checkpoint directory with every weight initialised as transformers would, from a
    generator seeded with `seed`, for a config-only directory (config.json, and processing
    files such as preprocessor_config.json, but no weights): real sizes, random values.

    The directory is written once to $KILN_CACHE/checkpoints/random/<config dir>-<config hash>-seed<seed>
    (or `out_dir`) and reused: the same config and seed always give the same weights, so the
    eager reference of a parity run is the checkpoint the engine was built from.
    """
    import shutil

    from .paths import cache_dir

    config_dir = Path(config_dir)
    config = config_from_dir(config_dir, model_cls.config_class)
    digest = hashlib.sha256((config_dir / CONFIG_FILE).read_bytes()).hexdigest()[:12]
    out = (
        Path(out_dir)
        if out_dir
        else (cache_dir() / "checkpoints" / "random" / f"{config_dir.name}-{digest}-seed{int(seed)}")
    )
    if (out / CONFIG_FILE).is_file() and (out / SAFETENSORS_FILE).is_file():
        return out  # save_model writes config.json last: its presence marks a complete directory
    try:
        model = model_cls(config)
    except InvalidArgumentError as e:
        raise CheckpointError(
            f"config {config_dir / CONFIG_FILE}: {model_cls.__name__} cannot be built from it: {e}"
        ) from None
    tied = set(getattr(model, "tied_keys", {}))
    state = model.state_dict()
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name in sorted(k for k in state if k not in tied):  # sorted: a fixed draw order
            model.init_parameter(name, state[name], generator)
    out.mkdir(parents=True, exist_ok=True)
    for file in sorted(config_dir.iterdir()):  # processing files travel with the weights
        if file.is_file() and file.name not in (CONFIG_FILE, SAFETENSORS_FILE, TORCH_FILE):
            shutil.copy2(file, out / file.name)
    save_model(model, out)
    return out
