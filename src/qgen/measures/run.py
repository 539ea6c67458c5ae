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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from qgen import data, hessian, quant
from qgen.errors import QgenError
from qgen.experiments import RUN_SCHEMA_VERSION, RunSpec, require_known_keys
from qgen.folding import fold_batchnorm, folded_pairs, materialize_weights
from qgen.measures.flatness import MeasureSettings, flatness_measures
from qgen.measures.perturb import EvalSet
from qgen.norms import weight_parameters
from qgen.regularizer import RegularizerSettings, initial_step_regularizer, regularizer
from qgen.runs import load_model, load_run, resolve_device
from qgen.vocab import PRECISIONS

WeightChoice = Literal["quantized", "latent"]


def measured_network(model: nn.Module, weights: WeightChoice) -> nn.Module:
    """The network whose flatness is measured (see the module docstring)."""
    if weights == "quantized":
        return fold_batchnorm(materialize_weights(model, quantized=True)).eval()
    if weights == "latent":
        return model.eval()
    raise QgenError(f"weights must be 'quantized' or 'latent', got {weights!r}")


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
        augment="none",
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
        raise QgenError(f"eval_subset {subset} exceeds the training-set size {m}")
    return torch.randperm(m, generator=torch.Generator().manual_seed(seed))[:subset].sort().values


@dataclass(frozen=True)
class RunOptions:
    """Which network and data a measure job measures, and what it adds beyond the paper: curvature, and the
    regularizer ``R`` of eq. 7 (:mod:`qgen.regularizer`) with ``regularizer_samples`` uniform-noise draws."""

    weights: WeightChoice = "quantized"
    eval_subset: int | None = None
    batch_size: int = 500
    curvature: bool = True
    curvature_iters: int = 100
    curvature_samples: int = 100
    regularizer: bool = True
    regularizer_samples: int = 32


def split_options(options: Mapping[str, Any]) -> tuple[MeasureSettings, RunOptions]:
    """The config's ``measures`` block as search settings and run options; an unknown key is an error."""
    run_keys = {f.name for f in fields(RunOptions)}
    searches = {k: v for k, v in options.items() if k not in run_keys}
    require_known_keys(MeasureSettings, searches, "measure setting(s)")
    return MeasureSettings(**searches), RunOptions(**{k: v for k, v in options.items() if k in run_keys})


def measure_run(
    run_dir: Path, spec: RunSpec, data_root: Path, options: Mapping[str, Any], *, device: str = "auto"
) -> dict[str, Any]:
    """All measures of the run of ``spec`` in ``run_dir`` as one JSON-ready record (``measures.json``).

    ``options`` is the config's ``measures`` block (:func:`split_options`); the record keeps it as
    ``measure_settings``, which a table of these measures checks against its config. The run's files are
    checked to be of exactly ``spec`` first (:func:`qgen.runs.load_run`).
    """
    started = time.perf_counter()
    settings, run = split_options(options)
    model, metrics = load_run(run_dir, spec)
    record: dict[str, Any] = {
        "schema_version": RUN_SCHEMA_VERSION,
        "run_id": spec.run_id,
        "run_digest": spec.digest,
        "spec": spec.to_dict(),
        "measure_settings": dict(options),
        "status": metrics["status"],
        "weights": run.weights,
        "eval_subset": run.eval_subset,
    }
    if metrics["status"] != "ok":
        return record
    record["generalization_gap"] = metrics["generalization_gap"]  # what the measures predict
    dev = resolve_device(device)
    network = measured_network(model, run.weights).to(dev)
    reference = measured_network(load_model(run_dir / "init.pt", spec), run.weights).to(dev)
    evalset, m = training_eval_set(spec, data_root, run.eval_subset, run.batch_size, dev)
    record["folded_batchnorm"] = len(folded_pairs(model)) if run.weights == "quantized" else 0
    record |= flatness_measures(network, reference, evalset, m, settings)
    if run.curvature:
        record["curvature"] = curvature_of(
            network, evalset, settings.seed, run.curvature_iters, run.curvature_samples
        )
    if run.regularizer:
        noise = RegularizerSettings(noise_samples=run.regularizer_samples, seed=settings.seed)
        record["regularizer"] = regularizer_of(model.to(dev), spec, evalset, noise)
    record["wall_time_s"] = time.perf_counter() - started
    record["device"] = str(dev)
    return record


def regularizer_of(
    model: nn.Module, spec: RunSpec, evalset: EvalSet, settings: RegularizerSettings
) -> dict[str, Any]:
    """``R`` of eq. 7 on the evaluation set (beyond the paper; :mod:`qgen.regularizer`).

    For a quantized run, its realized noise (``realized``) and the uniform-noise expectation with its
    learned steps, on the trained (unfolded) model. For an FP32 run there is no quantization noise
    (``realized`` has ``value`` 0); ``initial_step`` holds, per weight bit width, the regularizer LSQ's
    initial step of the run's own weights would add. Weight noise only: activation quantization, where a
    run has it, is not part of ``R``.
    """
    batches = list(evalset.batches())
    if quant.bits_of(spec.precision) is not None:
        return {"realized": asdict(regularizer(model, batches, settings))}
    widths = sorted({b for b in PRECISIONS.values() if b is not None}, reverse=True)
    at_widths = {
        str(bits): asdict(
            initial_step_regularizer(
                model, batches, bits, quantize_first_last=spec.quantize_first_last, settings=settings
            )
        )
        for bits in widths
    }
    return {"realized": {"value": 0.0}, "initial_step": at_widths}


def curvature_of(network: nn.Module, evalset: EvalSet, seed: int, iters: int, samples: int) -> dict[str, Any]:
    """Top Hessian eigenvalue (at most ``iters`` power iterations) and Hutchinson trace (``samples``
    probes) of the training loss w.r.t. ``W`` (beyond the paper; PyHessian's quantities)."""
    params = weight_parameters(network)
    batches = list(evalset.batches())
    top = hessian.top_eigenvalue(network, batches, params=params, max_iter=iters, seed=seed)
    tr = hessian.trace(network, batches, params=params, samples=samples, seed=seed)
    return {"top_eigenvalue": asdict(top), "trace": asdict(tr), "omega": sum(p.numel() for p in params)}
