"""The model registry and the one factory that builds from it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from qgen.errors import QgenError
from qgen.registry import Registry
from qgen.vocab import MODEL_ARGUMENTS, model_arguments, resolve_model_args


def check_signature(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Refuse a constructor whose keyword arguments differ from ``qgen.vocab.MODEL_ARGUMENTS[name]``.

    The DAG checks a config's model arguments against that torch-free description; this keeps the
    description equal to the code: the same names in the same order, each keyword-only, with the same
    default and annotated type.
    """
    if name not in MODEL_ARGUMENTS:
        raise TypeError(f"model {name!r} has no description in qgen.vocab.MODEL_ARGUMENTS; add one")
    parameters = list(inspect.signature(constructor).parameters.values())
    if not parameters or parameters[0].name != "num_classes":
        raise TypeError(f"model {name!r}: the constructor's first argument must be num_classes")
    actual = [(p.name, p.kind, p.default, str(p.annotation)) for p in parameters[1:]]
    described = [
        (a.name, inspect.Parameter.KEYWORD_ONLY, a.default, a.kind.__name__) for a in model_arguments(name)
    ]
    if actual != described:
        raise TypeError(
            f"model {name!r}: constructor arguments {actual} differ from their description in "
            f"qgen.vocab.MODEL_ARGUMENTS {described}; update one of them"
        )


MODELS: Registry[nn.Module] = Registry("model", check=check_signature)


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier.

    Raises ``KeyError`` (listing the known names) for an unknown ``name``, a
    :class:`~qgen.errors.QgenError` naming any keyword argument the model does not take or of the wrong
    type, and ``ValueError`` for ``num_classes < 1``. Arguments not given take their defaults.
    """
    constructor = MODELS.get(name)
    arguments = resolve_model_args(name, kwargs, f"model {name!r}")
    if num_classes < 1:
        raise QgenError(f"num_classes must be >= 1, got {num_classes}")
    return constructor(num_classes, **arguments)


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return MODELS.names()
