"""Measuring one trained run: load its weights, prepare the network, run the searches, add curvature.

Which network is measured (``weights``, docs/decisions.md):

- ``"quantized"`` (default): the function the trained model computes. Quantized layers' weights are
  replaced by their quantized values ``w_hat`` and BatchNorm is folded into the preceding layers, so
  ``W`` are the folded weights the network really uses and perturbations act on them directly.
- ``"latent"``: the latent float weights with the quantizers left active and BatchNorm unfolded
  (a perturbation smaller than half a bin can be rounded away). For FP32 runs both choices differ
  only in the BatchNorm folding.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from qgen import data, files, hessian
from qgen.experiments import RUN_SCHEMA_VERSION, RunSpec
from qgen.folding import fold_batchnorm, folded_pairs, materialize_weights
from qgen.measures.flatness import MeasureSettings, flatness_measures
from qgen.measures.perturb import EvalSet
from qgen.norms import weight_parameters
from qgen.train import build_model, resolve_device

WeightChoice = Literal["quantized", "latent"]


def load_model(path: Path, spec: RunSpec) -> nn.Module:
    """The model of ``spec`` with the weights saved in ``path`` (``model.pt`` or ``init.pt``), eval mode."""
    model = build_model(spec)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
    return model.eval()


def load_run(run_dir: Path) -> tuple[RunSpec, nn.Module, dict[str, Any]]:
    """The run's spec, trained model (``model.pt``) and metrics; :func:`load_model` reads ``init.pt``."""
    metrics = files.read_json(run_dir / "metrics.json")
    spec = RunSpec.from_dict(metrics["spec"])
    return spec, load_model(run_dir / "model.pt", spec), metrics


def measured_network(model: nn.Module, weights: WeightChoice) -> nn.Module:
    """The network whose flatness is measured (see the module docstring)."""
    if weights == "quantized":
        return fold_batchnorm(materialize_weights(model, quantized=True)).eval()
    if weights == "latent":
        return model.eval()
    raise ValueError(f"weights must be 'quantized' or 'latent', got {weights!r}")


def training_eval_set(
    spec: RunSpec, data_root: Path, subset: int | None, batch_size: int, device: torch.device
) -> tuple[EvalSet, int]:
    """The unaugmented training images (optionally a fixed seeded subset) and ``m``, the training-set size.

    The images are stored channels-last, which the convolutions of every perturbed copy inherit.
    """
    loader = data.build_loader(
        spec.dataset,
        "train",
        root=data_root,
        batch_size=batch_size,
        augment=False,
        shuffle=False,
        seed=spec.seed,
        subset=spec.n_train,
        device=device,
    )
    images, labels = (torch.cat(parts) for parts in zip(*loader, strict=True))
    m = len(labels)
    index = eval_subset_index(m, subset, spec.seed)
    if index is not None:
        images, labels = images[index.to(device)], labels[index.to(device)]
    # channels_last makes CPU convolutions markedly faster; the values are the same to float rounding.
    return EvalSet(images.contiguous(memory_format=torch.channels_last), labels, batch_size), m


def eval_subset_index(m: int, subset: int | None, seed: int) -> torch.Tensor | None:
    """Sorted indices of the fixed ``subset`` of ``m`` training images drawn with ``seed``; ``None``: all."""
    if subset is None:
        return None
    if subset > m:
        raise ValueError(f"eval_subset {subset} exceeds the training-set size {m}")
    return torch.randperm(m, generator=torch.Generator().manual_seed(seed))[:subset].sort().values


def measure_run(
    run_dir: Path,
    data_root: Path,
    settings: MeasureSettings,
    *,
    weights: WeightChoice = "quantized",
    eval_subset: int | None = None,
    batch_size: int = 500,
    curvature: bool = True,
    curvature_iters: int = 100,
    curvature_samples: int = 100,
    device: str = "auto",
) -> dict[str, Any]:
    """All measures of the run in ``run_dir`` as one JSON-ready record (``measures.json``)."""
    started = time.perf_counter()
    spec, model, metrics = load_run(run_dir)
    record: dict[str, Any] = {
        "schema_version": RUN_SCHEMA_VERSION,
        "run_id": spec.run_id,
        "spec": asdict(spec),
        "status": metrics["status"],
        "weights": weights,
        "eval_subset": eval_subset,
    }
    if metrics["status"] != "ok":
        return record
    dev = resolve_device(device)
    network = measured_network(model, weights).to(dev)
    reference = measured_network(load_model(run_dir / "init.pt", spec), weights).to(dev)
    evalset, m = training_eval_set(spec, data_root, eval_subset, batch_size, dev)
    record["folded_batchnorm"] = len(folded_pairs(model)) if weights == "quantized" else 0
    record |= flatness_measures(network, reference, evalset, m, settings)
    if curvature:
        record["curvature"] = curvature_of(
            network, evalset, settings.seed, curvature_iters, curvature_samples
        )
    record["wall_time_s"] = time.perf_counter() - started
    record["device"] = str(dev)
    return record


def curvature_of(network: nn.Module, evalset: EvalSet, seed: int, iters: int, samples: int) -> dict[str, Any]:
    """Top Hessian eigenvalue (at most ``iters`` power iterations) and Hutchinson trace (``samples``
    probes) of the training loss w.r.t. ``W`` (beyond the paper; PyHessian's quantities)."""
    params = weight_parameters(network)
    batches = list(evalset.batches())
    top = hessian.top_eigenvalue(network, batches, params=params, max_iter=iters, seed=seed)
    tr = hessian.trace(network, batches, params=params, samples=samples, seed=seed)
    return {"top_eigenvalue": asdict(top), "trace": asdict(tr), "omega": sum(p.numel() for p in params)}
