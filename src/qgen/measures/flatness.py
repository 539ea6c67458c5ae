"""The paper's eight flatness measures of one model (QGen App. A, eqs. 15-22; searches of App. B.2).

Four searches find the largest perturbation scale that moves training accuracy by ``target`` (0.1):
``sigma`` (Gaussian noise), ``sigma_mag`` (magnitude-aware Gaussian noise), ``alpha`` (projected gradient
ascent in the box ``|u_i| <= alpha``) and ``alpha_mag`` (box ``|u_i| <= alpha' |w_i|``). Each scale enters
an *init* bound (``||W - W0||``) and an *orig* bound (``||W||``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from qgen.measures import bounds
from qgen.measures.perturb import (
    EvalSet,
    NoiseConvention,
    PerturbedEvaluator,
    gaussian_std,
    monte_carlo_mean,
    perturbed_names,
    sequential_decision,
)
from qgen.measures.search import SearchResult, bisect_scale
from qgen.norms import weight_vector

SEARCHES = ("sigma", "sigma_mag", "alpha", "alpha_mag")


@dataclass(frozen=True)
class MeasureSettings:
    """Every choice of the measurement protocol; defaults follow QGen App. B.2 and the reference code.

    ``copies_per_pass`` is a speed setting only: ``None`` evaluates all ``samples`` copies per pass on a
    GPU and one at a time on a CPU (see :class:`~qgen.measures.perturb.PerturbedEvaluator`).
    """

    target: float = 0.1
    tol: float = 0.01
    lo: float = 0.0
    hi: float = 2.0
    depth: int = 15
    samples: int = 10
    copies_per_pass: int | None = None
    noise: NoiseConvention = "reference"
    perturb: Literal["all", "weights"] = "all"
    ascent_steps: int = 20
    ascent_lr: float = 1e-4
    ascent_batch: int = 128
    epsilon: float = bounds.EPSILON
    delta: float = bounds.DELTA
    sequential: bool = False
    sequential_confidence: float = 0.99
    seed: int = 0


class FlatnessSearch:
    """Runs the four searches of one model against one evaluation set."""

    def __init__(self, model: nn.Module, data: EvalSet, settings: MeasureSettings) -> None:
        self.settings = settings
        self.evaluator = PerturbedEvaluator(model, data, perturbed_names(model, settings.perturb))
        self.base_accuracy = self.evaluator.unperturbed_accuracy()
        on_gpu = data.labels.device.type == "cuda"
        self.chunk = settings.copies_per_pass or (settings.samples if on_gpu else 1)
        self.samples_used: dict[str, list[int]] = {}

    def _generator(self, search: str) -> torch.Generator:
        device = self.evaluator.data.labels.device
        return torch.Generator(device=device).manual_seed(self.settings.seed * 1000 + SEARCHES.index(search))

    def _deviation(self, search: str, draw_at: Any) -> Any:
        s = self.settings
        decide = (
            sequential_decision(self.base_accuracy, s.target, s.tol, s.sequential_confidence)
            if s.sequential
            else None
        )
        used = self.samples_used.setdefault(search, [])

        def deviation(scale: float) -> float:
            mean, n = monte_carlo_mean(lambda k: draw_at(scale, k), s.samples, self.chunk, decide)
            used.append(n)
            return abs(mean - self.base_accuracy)

        return deviation

    def gaussian(self, magnitude_aware: bool) -> SearchResult:
        """sigma (or sigma'): mean accuracy of ``samples`` noisy copies per scale."""
        search = "sigma_mag" if magnitude_aware else "sigma"
        gen, base, s = self._generator(search), self.evaluator.base, self.settings

        def draw(scale: float, copies: int) -> Tensor:
            deltas = {}
            for name, p in base.items():
                std = gaussian_std(p, scale, magnitude_aware, s.noise, s.epsilon)
                noise = torch.randn((copies, *p.shape), generator=gen, device=p.device)
                deltas[name] = noise * std
            return self.evaluator.accuracy(deltas)

        return bisect_scale(self._deviation(search, draw), s.target, s.tol, s.lo, s.hi, s.depth)

    def worst_case(self, magnitude_aware: bool) -> SearchResult:
        """alpha (or alpha'): mean accuracy after ``samples`` projected-ascent runs per scale."""
        search = "alpha_mag" if magnitude_aware else "alpha"
        gen, base, s = self._generator(search), self.evaluator.base, self.settings
        box = {name: p.abs() if magnitude_aware else torch.ones_like(p) for name, p in base.items()}

        def draw(scale: float, copies: int) -> Tensor:
            offsets = self.evaluator.ascend(
                box, scale, copies, s.ascent_steps, s.ascent_lr, s.ascent_batch, gen
            )
            return self.evaluator.accuracy(offsets)

        return bisect_scale(self._deviation(search, draw), s.target, s.tol, s.lo, s.hi, s.depth)

    def run(self) -> dict[str, SearchResult]:
        return {
            "sigma": self.gaussian(False),
            "sigma_mag": self.gaussian(True),
            "alpha": self.worst_case(False),
            "alpha_mag": self.worst_case(True),
        }


def bound_values(
    w: Tensor, w0: Tensor, scales: dict[str, float], m: int, settings: MeasureSettings
) -> dict[str, float]:
    """The eight raw measures of App. A from the weights and the four searched scales."""
    dist = w - w0
    omega = w.numel()
    norm_sq, dist_sq = float(w.square().sum()), float(dist.square().sum())
    sigma, sigma_mag, alpha, alpha_mag = (scales[k] for k in SEARCHES)
    eps, delta = settings.epsilon, settings.delta
    return {
        "pacbayes.init": bounds.pacbayes(dist_sq, sigma, m),
        "pacbayes.orig": bounds.pacbayes(norm_sq, sigma, m),
        "pacbayes.mag.init": bounds.pacbayes_mag(dist_sq, dist, sigma_mag, m, eps),
        "pacbayes.mag.orig": bounds.pacbayes_mag(norm_sq, dist, sigma_mag, m, eps),
        "sharpness.init": bounds.sharpness(dist_sq, omega, alpha, m),
        "sharpness.orig": bounds.sharpness(norm_sq, omega, alpha, m),
        "sharpness.mag.init": bounds.sharpness_mag(dist_sq, dist, alpha_mag, m, delta, eps),
        "sharpness.mag.orig": bounds.sharpness_mag(norm_sq, dist, alpha_mag, m, delta, eps),
    }


def flatness_measures(
    model: nn.Module, init_model: nn.Module, data: EvalSet, m: int, settings: MeasureSettings
) -> dict[str, Any]:
    """All measures of ``model`` (W) against ``init_model`` (W0), with ``m`` the training-set size.

    The model's parameters and buffers are not modified.
    """
    w, w0 = weight_vector(model), weight_vector(init_model)
    if w.shape != w0.shape:
        raise ValueError(f"model and init model have different weight counts ({w.numel()} vs {w0.numel()})")
    search = FlatnessSearch(model, data, settings)
    results = search.run()
    scales = {k: r.value for k, r in results.items()}
    raw = bound_values(w, w0, scales, m, settings)
    return {
        "settings": asdict(settings),
        "m": m,
        "omega": w.numel(),
        "evaluated_images": len(data),
        "train_accuracy": search.base_accuracy,
        "norms": {
            "w": math.sqrt(float(w.square().sum())),
            "w_minus_w0": math.sqrt(float((w - w0).square().sum())),
        },
        "searches": {k: asdict(r) | {"samples_used": search.samples_used[k]} for k, r in results.items()},
        "flatness": {k: 1 / v**2 for k, v in scales.items()},
        "raw": raw,
        "normalized": {k: bounds.normalized(v, m) for k, v in raw.items()},
        "forward_images": search.evaluator.images_evaluated,
    }
