"""Every deployable kiln knows, collected from the model files.

Each module in kiln/models/ that declares `DEPLOYABLES` (see kiln/deploy.py) is a family; this
module only collects them, keyed by (family, task). Adding a family is adding its model file.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import TYPE_CHECKING

from .deploy import Deployable

if TYPE_CHECKING:
    from .models.base import HFConfig
from .errors import InvalidArgumentError


@cache
def deployables() -> dict[tuple[str, str], Deployable]:
    """(family, task) -> Deployable, for every model file that declares DEPLOYABLES."""
    from . import models

    found: dict[tuple[str, str], Deployable] = {}
    for info in sorted(pkgutil.iter_modules(models.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{models.__name__}.{info.name}")
        for d in getattr(module, "DEPLOYABLES", ()):
            if d.key in found:
                raise InvalidArgumentError(f"{d.name} is declared twice ({module.__name__})")
            found[d.key] = d
    return found


def get(family: str, task: str) -> Deployable:
    try:
        return deployables()[(family, task)]
    except KeyError:
        known = ", ".join(f"{f}/{t}" for f, t in sorted(deployables()))
        raise InvalidArgumentError(f"no deployable {family}/{task}; known: {known}") from None


def families() -> dict[str, type[HFConfig]]:
    """model_type -> the family's config class."""
    return {d.family: d.config_class for d in deployables().values()}


def for_checkpoint(config: dict, task: str | None = None) -> Deployable:
    """The deployable a Hugging Face config.json describes: the family from its model_type,
    the task from `task` or else from its architectures (the transformers class it was saved as)."""
    model_type = config.get("model_type")
    candidates = [d for d in deployables().values() if d.family == model_type]
    if not candidates:
        raise InvalidArgumentError(
            f"config.json model_type {model_type!r} is not a kiln family; known: {', '.join(sorted(families()))}"
        )
    tasks = sorted(d.task for d in candidates)
    if task is not None:
        found = [d for d in candidates if d.task == task]
        if not found:
            raise InvalidArgumentError(f"--task {task!r}: {model_type} deploys {', '.join(tasks)}")
        return found[0]
    architectures = list(config.get("architectures") or [])
    found = [d for d in candidates if d.reference_class in architectures]
    if len(found) == 1:
        return found[0]
    if not found:
        raise InvalidArgumentError(
            f"config.json architectures {architectures}: no {model_type} task of kiln's is saved as that; "
            f"pass --task (one of {', '.join(tasks)})"
        )
    raise InvalidArgumentError(
        f"a {architectures[0]} checkpoint serves several tasks ({', '.join(sorted(d.task for d in found))}); "
        "pass --task to choose one"
    )
