"""The model registry and the one factory that builds from it."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from qgen.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier.

    Raises ``KeyError`` (listing the known names) for an unknown ``name``, ``TypeError`` naming any
    keyword argument the model does not take, and ``ValueError`` for ``num_classes < 1``.
    """
    constructor = MODELS.get(name)
    accepted = set(inspect.signature(constructor).parameters) - {"num_classes"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"model {name!r} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'none'}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return constructor(num_classes, **kwargs)


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return MODELS.names()
