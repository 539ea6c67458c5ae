"""A training run's model: built from its spec, loaded from its checkpoints, verified, evaluated.

Everything that *uses* a trained run (the flatness measures, the loss landscape, the corruption
evaluation, Figure 1) goes through :func:`load_run`, which reads the run's ``metrics.json`` and
``model.pt`` and checks that both were made from exactly the spec the config asks for
(:mod:`qgen.provenance`); the trainer builds its model with :func:`build_model` too. Files in a run
directory (``results/runs/<experiment>/<precision>/<point>/``):

* ``model.pt``: ``{"spec", "run_digest", "epoch", "state_dict"}``, the selected epoch's weights;
* ``init.pt``: ``{"spec", "run_digest", "state_dict"}``, the weights before the first step (W0);
* ``metrics.json``: the run's record (:func:`qgen.train.train`), with ``spec`` and ``run_digest``,
  written last.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from qgen import data, files, models, quant
from qgen.distributed import Replicas
from qgen.errors import QgenError
from qgen.experiments import RunSpec
from qgen.provenance import rebuild_hint, require_digest, require_same


@dataclass(frozen=True)
class Evaluation:
    """Mean per-sample cross-entropy and accuracy (a fraction) over a whole split."""

    loss: float
    accuracy: float


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available; anything else is passed to :class:`torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(spec: RunSpec) -> nn.Module:
    """The run's model with quantizers attached (the step init reads the freshly built weights).

    ``spec.quant_policy`` picks the layers: LSQ's (:func:`qgen.quant.quantize_model`, whose signed or
    unsigned inputs a forward pass of one seeded random image tells) or VVTQ's (:func:`qgen.vvtq.quantize`).
    """
    info = data.dataset_info(spec.dataset)
    model = models.create_model(spec.model, info.num_classes, **spec.model_args)
    bits, activation_bits = quant.bits_of(spec.precision), quant.activation_bits_of(spec.precision)
    if spec.quant_policy == "vvtq":
        from qgen import vvtq  # imports timm, which costs every job ~1.5 s

        return vvtq.quantize(model, bits, activation_bits)
    example = None
    if activation_bits is not None:
        size = info.image_size
        example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(spec.seed))
    return quant.quantize_model(
        model,
        bits,
        activation_bits=activation_bits,
        quantize_first_last=spec.quantize_first_last,
        example=example,
    )


def tensors_digest(state_dict: dict[str, Tensor]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes: equal weights, equal digest."""
    hasher = hashlib.sha256()
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        hasher.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        hasher.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def load_checkpoint(path: Path, spec: RunSpec) -> dict[str, Any]:
    """A run checkpoint (``model.pt`` or ``init.pt``), checked to belong to ``spec``."""
    checkpoint = files.load_torch(path, f"delete it and {rebuild_hint(path)}")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise QgenError(f"{path} is not a qgen run checkpoint (no state_dict); {rebuild_hint(path)}")
    require_digest(path, "run spec", checkpoint.get("run_digest"), spec.digest)
    return checkpoint


def load_model(path: Path, spec: RunSpec) -> nn.Module:
    """The model of ``spec`` with the weights saved in ``path`` (``model.pt`` or ``init.pt``), eval mode."""
    model = build_model(spec)
    model.load_state_dict(load_checkpoint(path, spec)["state_dict"])
    return model.eval()


def read_metrics(run_dir: Path, spec: RunSpec) -> dict[str, Any]:
    """The run's ``metrics.json``, checked to be of exactly ``spec`` (keys that differ are named)."""
    path = run_dir / "metrics.json"
    metrics = files.read_json(path)
    require_same(path, "run spec", metrics.get("spec"), spec.to_dict())
    return metrics


def load_run(run_dir: Path, spec: RunSpec) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model (``model.pt``) and metrics of the run of ``spec`` in ``run_dir``, both verified
    against ``spec``; :func:`load_model` reads ``init.pt`` the same way."""
    metrics = read_metrics(run_dir, spec)
    return load_model(run_dir / "model.pt", spec), metrics


@torch.no_grad()
def evaluate(model: nn.Module, loader: data.BatchLoader, replicas: Replicas | None = None) -> Evaluation:
    """Eval-mode loss and accuracy with summed per-sample losses (not a mean of batch means).

    Sums stay on the model's device until the end, so no batch waits on the host. With ``replicas``, each
    process evaluates its shard of ``loader`` and the sums are added over processes.
    """
    model.eval()
    device = next(model.parameters()).device
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for images, labels in loader:
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
    if replicas is not None and replicas.parallel:
        sums = replicas.sum(torch.stack([total_loss, correct.double()]))
        total_loss, correct = sums[0], sums[1].long()
    return Evaluation(float(total_loss) / loader.num_samples, int(correct) / loader.num_samples)
