"""Loss surfaces along two filter-normalized random directions (Li et al., NeurIPS 2018): paper Figure 2.

The surface of a trained model with parameters ``theta*`` is

    L(alpha, beta) = L_S(theta* + alpha * delta + beta * eta)

on a grid of ``(alpha, beta)``, where ``delta`` and ``eta`` are Gaussian directions rescaled filter by filter
to the norms of the matching filters of ``theta*`` (Li et al. §4, "filter-wise normalization"; their
code's ``--xnorm filter --xignore biasbn``). For QAT models (research notes §C.2):

- ``theta*`` are the *latent* float weights. Quantizers stay active, so every perturbed point is
  re-quantized with the learned steps and the surface is that of the function the network computes.
- Only parameters with more than one dimension move (conv and linear weights). Biases, BatchNorm affine
  parameters and LSQ steps get a zero direction; BatchNorm running statistics stay fixed (eval mode).
- ``L_S`` is the mean cross-entropy over a fixed set of unaugmented training images (the whole training
  set or a seeded subset of it), with the accuracy alongside.

The grid is evaluated one row (fixed ``beta``) at a time, ``copies_per_pass`` perturbed copies per pass
over the data (:class:`~qgen.measures.perturb.PerturbedEvaluator`: functional calls, so the model itself is
never modified). After every row the rows done so far are written atomically to a checkpoint beside the
output, and a killed job resumes at its first unfinished row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qgen import files, quant
from qgen.errors import CorruptFileError, QgenError
from qgen.experiments import RunSpec, digest_of, require_known_keys
from qgen.measures.perturb import EvalSet, PerturbedEvaluator
from qgen.measures.run import eval_subset_index, training_eval_set
from qgen.provenance import rebuild_hint
from qgen.runs import load_run, resolve_device

log = logging.getLogger(__name__)

SURFACE_SCHEMA_VERSION = 2
NORM_EPS = 1e-10  # Li et al.'s guard against an all-zero filter of the random direction


@dataclass(frozen=True)
class LandscapeSettings:
    """The grid ``span x span`` with ``points`` per axis, the direction seed and the evaluation set.

    Defaults follow Li et al.'s 2-D plots (51 x 51 on [-1, 1]^2). ``subset`` evaluates a fixed seeded
    sample of that many training images instead of the whole training set. ``batch_size`` and
    ``copies_per_pass`` only trade memory for speed; ``copies_per_pass=None`` evaluates a whole row per
    pass on a GPU and one point at a time on a CPU (where vmapped convolutions are slower).
    """

    span: tuple[float, float] = (-1.0, 1.0)
    points: int = 51
    seed: int = 123
    subset: int | None = None
    batch_size: int = 500
    copies_per_pass: int | None = None

    def __post_init__(self) -> None:
        lo, hi = self.span
        if not lo < hi:
            raise QgenError(f"span must be [min, max] with min < max, got {list(self.span)}")
        if self.points < 2:
            raise QgenError(f"points must be >= 2, got {self.points}")
        if (self.copies_per_pass is not None and self.copies_per_pass < 1) or self.batch_size < 1:
            raise QgenError(
                f"copies_per_pass and batch_size must be >= 1, got {self.copies_per_pass}, {self.batch_size}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LandscapeSettings:
        require_known_keys(cls, data, "landscape setting(s)")
        values = dict(data)
        if "span" in values:
            values["span"] = tuple(float(v) for v in values["span"])
        return cls(**values)

    def coordinates(self) -> np.ndarray:
        """The ``points`` grid coordinates of either axis."""
        return np.linspace(self.span[0], self.span[1], self.points)


def moved_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters the directions move: those with more than one dimension, except LSQ steps.

    For a quantized layer this is the latent weight (``...parametrizations.weight.original``).
    """
    steps = {id(p) for p in quant.step_parameters(model)}
    return [name for name, p in model.named_parameters() if p.dim() > 1 and id(p) not in steps]


def filter_normalize(direction: Tensor, weight: Tensor) -> Tensor:
    """``direction`` with each filter (slice along dim 0) rescaled to the norm of ``weight``'s filter.

    Li et al. (2018), eq. in §4: ``d_ij <- d_ij / ||d_ij|| * ||theta_ij||``.
    """
    d, w = direction.flatten(1), weight.detach().flatten(1)
    scale = w.norm(dim=1) / (d.norm(dim=1) + NORM_EPS)
    return (d * scale[:, None]).view_as(direction)


def random_direction(model: nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """A filter-normalized Gaussian direction for every parameter of ``model``; zero where not moved.

    Draws come from ``generator`` (on the CPU, in parameter order) so a seed fixes the direction on any
    device.
    """
    moved = set(moved_parameters(model))
    direction = {}
    for name, p in model.named_parameters():
        if name in moved:
            draw = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            direction[name] = filter_normalize(draw, p)
        else:
            direction[name] = torch.zeros_like(p.detach())
    return direction


def cosine(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """Cosine similarity of two directions (near 0 for independent Gaussian ones in high dimension)."""
    dot = sum(float((a[k].double() * b[k].double()).sum()) for k in a)
    norm_a = math.sqrt(sum(float(v.double().square().sum()) for v in a.values()))
    norm_b = math.sqrt(sum(float(v.double().square().sum()) for v in b.values()))
    return dot / (norm_a * norm_b)


@dataclass(frozen=True)
class Surface:
    """A loss surface as stored in ``.npz``; ``loss[i, j]`` and ``accuracy[i, j]`` are at ``(x[j], y[i])``.

    ``subset`` holds the indices of the training images evaluated (all ``train_size`` of them when no
    subset was drawn); ``centre_*`` are the unperturbed model's values.
    """

    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    centre_loss: float
    centre_accuracy: float
    seed: int
    subset: np.ndarray
    train_size: int
    cosine: float
    run_id: str
    run_digest: str
    spec: str
    settings: str
    config: str

    def save(self, path: Path | str) -> None:
        files.save_npz(path, schema_version=SURFACE_SCHEMA_VERSION, **asdict(self))

    @classmethod
    def load(cls, path: Path | str) -> Surface:
        """The surface in ``path``; a truncated file or one of an older format is a named error."""
        try:
            with np.load(path) as archive:
                missing = sorted({f.name for f in fields(cls)} - set(archive.files))
                values = {f.name: archive[f.name] for f in fields(cls) if f.name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise CorruptFileError(
                f"{path} cannot be read as a loss surface ({error}); {rebuild_hint(path)}"
            ) from error
        if missing:
            raise CorruptFileError(
                f"{path}: not a qgen loss surface of this version (missing {missing}); {rebuild_hint(path)}"
            )
        for name in ("centre_loss", "centre_accuracy", "cosine"):
            values[name] = float(values[name])
        for name in ("seed", "train_size"):
            values[name] = int(values[name])
        for name in ("run_id", "run_digest", "spec", "settings", "config"):
            values[name] = str(values[name])
        return cls(**values)


def checkpoint_path(out: Path, fingerprint: str) -> Path:
    """Where the finished rows of ``out`` are kept while it is computed: one file per model and grid
    (``fingerprint``), so a changed run or grid starts afresh and leaves the other's rows alone."""
    return out.with_name(f"{out.name}.{fingerprint[:16]}.partial")


def _load_rows(
    checkpoint: Path, fingerprint: str, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(loss, accuracy, rows_done)`` from ``checkpoint``, or empty arrays if there is none."""
    if not checkpoint.exists():
        return np.full(shape, np.nan), np.full(shape, np.nan), 0
    with np.load(checkpoint) as saved:
        if str(saved["fingerprint"]) != fingerprint:
            raise QgenError(
                f"{checkpoint} holds the rows of another model or grid (a digest collision?); delete it"
            )
        return saved["loss"], saved["accuracy"], int(saved["rows_done"])


def grid_fingerprint(identity: str, settings: LandscapeSettings) -> str:
    """Digest of the model ``identity`` and the settings that define the surface (not the speed ones:
    ``batch_size`` and ``copies_per_pass`` may change between a killed job and its resumption)."""
    return digest_of([identity, list(settings.span), settings.points, settings.seed, settings.subset])


def evaluate_grid(
    model: nn.Module,
    data: EvalSet,
    settings: LandscapeSettings,
    *,
    checkpoint: Path | None = None,
    fingerprint: str = "",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Loss and accuracy at every grid point (rows: ``beta``, columns: ``alpha``) and the directions' cosine.

    With ``checkpoint``, finished rows are saved there after each row, under ``fingerprint``
    (:func:`grid_fingerprint`), and a later call with the same checkpoint and fingerprint resumes after them.
    """
    model.eval()
    generator = torch.Generator().manual_seed(settings.seed)
    delta = random_direction(model, generator)
    eta = random_direction(model, generator)
    names = moved_parameters(model)
    evaluator = PerturbedEvaluator(model, data, names)
    coords = settings.coordinates()
    n = len(coords)
    device = next(model.parameters()).device
    copies = settings.copies_per_pass or (n if device.type == "cuda" else 1)
    loss, accuracy, done = (
        _load_rows(checkpoint, fingerprint, (n, n))
        if checkpoint
        else (np.full((n, n), np.nan), np.full((n, n), np.nan), 0)
    )
    if done:
        log.info("resuming after %d of %d rows (%s)", done, n, checkpoint)
    started = time.perf_counter()
    for i in range(done, n):
        beta = float(coords[i])
        for start in range(0, n, copies):
            alpha = torch.as_tensor(coords[start : start + copies], dtype=torch.float32)
            deltas = {}
            for name in names:
                d = delta[name]
                a = alpha.to(d.device).view(-1, *([1] * d.dim()))
                deltas[name] = a * d + beta * eta[name]
            row_loss, row_acc = evaluator.loss_and_accuracy(deltas)
            loss[i, start : start + len(alpha)] = row_loss.cpu().numpy()
            accuracy[i, start : start + len(alpha)] = row_acc.double().cpu().numpy()
        if checkpoint:
            files.save_npz(checkpoint, fingerprint=fingerprint, loss=loss, accuracy=accuracy, rows_done=i + 1)
        elapsed = time.perf_counter() - started
        log.info(
            "row %d/%d (beta=%+.3f) done; %.0f s elapsed, about %.0f s left",
            i + 1,
            n,
            beta,
            elapsed,
            elapsed / (i + 1 - done) * (n - i - 1),
        )
    return loss, accuracy, cosine({k: delta[k] for k in names}, {k: eta[k] for k in names})


def centre_values(model: nn.Module, data: EvalSet) -> tuple[float, float]:
    """Loss and accuracy of the unperturbed model on ``data`` (the surface's value at (0, 0))."""
    names = moved_parameters(model)
    evaluator = PerturbedEvaluator(model, data, names)
    zeros = {name: torch.zeros_like(evaluator.base[name]).unsqueeze(0) for name in names}
    loss, acc = evaluator.loss_and_accuracy(zeros)
    return float(loss[0]), float(acc[0])


def surface_of_run(
    run_dir: Path,
    spec: RunSpec,
    data_root: Path,
    config: dict[str, Any],
    out: Path,
    *,
    device: str = "auto",
) -> Surface:
    """Compute and write (``out``, ``.npz``) the loss surface of the run of ``spec`` in ``run_dir``.

    ``config`` is the config's surface block (``figures.figure2.surface``, :class:`LandscapeSettings`);
    the surface records it and the run's digest, which Figure 2 checks against its config. The run's files
    are checked to be of ``spec`` first. Resumable: rows finished by an earlier, killed call are read back
    from :func:`checkpoint_path`, which is removed once ``out`` is written.
    """
    settings = LandscapeSettings.from_dict(config)
    model, metrics = load_run(run_dir, spec)
    if metrics["status"] != "ok":
        raise QgenError(f"{run_dir / 'metrics.json'}: run status is {metrics['status']!r}, expected 'ok'")
    dev = resolve_device(device)
    model = model.to(dev)
    data, m = training_eval_set(spec, data_root, settings.subset, settings.batch_size, dev)
    index = eval_subset_index(m, settings.subset, spec.seed)
    model_hash = hashlib.sha256((run_dir / "model.pt").read_bytes()).hexdigest()
    log.info(
        "%s: %d x %d surface on %d training images (%s), seed %d",
        spec.run_id,
        settings.points,
        settings.points,
        len(data),
        dev,
        settings.seed,
    )
    fingerprint = grid_fingerprint(f"{spec.digest}:{model_hash}", settings)
    checkpoint = checkpoint_path(out, fingerprint)
    loss, accuracy, cos = evaluate_grid(model, data, settings, checkpoint=checkpoint, fingerprint=fingerprint)
    centre_loss, centre_accuracy = centre_values(model, data)
    coords = settings.coordinates()
    surface = Surface(
        x=coords,
        y=coords,
        loss=loss,
        accuracy=accuracy,
        centre_loss=centre_loss,
        centre_accuracy=centre_accuracy,
        seed=settings.seed,
        subset=np.arange(m) if index is None else index.numpy(),
        train_size=m,
        cosine=cos,
        run_id=spec.run_id,
        run_digest=spec.digest,
        spec=spec.to_json(),
        settings=json.dumps(asdict(settings)),
        config=json.dumps(config, sort_keys=True),
    )
    surface.save(out)
    checkpoint.unlink(missing_ok=True)
    log.info("%s: centre loss %.4f, directions' cosine %.2e; wrote %s", spec.run_id, centre_loss, cos, out)
    return surface
