"""Model registry and factory.

Each architecture family lives in its own module and files its constructors in :data:`MODELS`
with ``@MODELS.register(name)``, as in timm's ``register_model``; adding a model touches one
file. Importing this package imports every family, so the registry is complete.
"""

from __future__ import annotations

from qgen.models import cifar_resnet, imagenet, mobilenet_v1, nin, vgg  # noqa: F401  (registration)
from qgen.models._factory import MODELS, create_model, model_names

__all__ = ["MODELS", "create_model", "model_names"]
