"""The paper's eight flatness measures of one model (QGen App. A, eqs. 15-22; searches of App. B.2).

Four searches find the largest perturbation scale that moves training accuracy by ``target`` (0.1):
``sigma`` (Gaussian noise), ``sigma_mag`` (magnitude-aware Gaussian noise), ``alpha`` (projected gradient
ascent in the box ``|u_i| <= alpha``) and ``alpha_mag`` (box ``|u_i| <= alpha' |w_i|``). Each scale enters
an *init* bound (``||W - W0||``) and an *orig* bound (``||W||``). Each search logs its progress
(:class:`SearchProgress`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from qgen.measures import bounds
from qgen.measures.perturb import (
    NOISE_CONVENTIONS,
    PERTURBED_SETS,
    EvalSet,
    NoiseConvention,
    PerturbedEvaluator,
    PerturbedSet,
    StepTally,
    gaussian_std,
    perturbed_names,
    perturbed_network,
)
from qgen.measures.search import SearchResult, bisect_scale, bisection_move
from qgen.norms import weight_vector
from qgen.progress import ProgressClock, duration
from qgen.vocab import MEASURES, SEARCHES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeasureSettings:
    """Every choice of the measurement protocol; defaults follow QGen App. B.2 and the reference code,
    except ``perturb`` (``all``, kept for configs and records written before ``reference`` existed; the
    paper config sets ``reference``, docs/decisions.md).

    Speed settings that leave every searched scale unchanged: ``copies_per_pass`` (``None``: all
    ``samples`` copies per pass on a GPU, one at a time on a CPU; see
    :class:`~qgen.measures.perturb.PerturbedEvaluator`) and ``stop_when_certain`` (a bisection step stops
    evaluating once its move no longer depends on the predictions left; the trajectory then records the
    deviation of the predictions made). ``sequential`` does change what is measured: a step stops once
    its move is clear at level ``sequential_confidence``.
    """

    target: float = 0.1
    tol: float = 0.01
    lo: float = 0.0
    hi: float = 2.0
    depth: int = 15
    samples: int = 10
    copies_per_pass: int | None = None
    noise: NoiseConvention = "reference"
    perturb: PerturbedSet = "all"
    ascent_steps: int = 20
    ascent_lr: float = 1e-4
    ascent_batch: int = 128
    epsilon: float = bounds.EPSILON
    delta: float = bounds.DELTA
    stop_when_certain: bool = True
    sequential: bool = False
    sequential_confidence: float = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        for key, choices in (("noise", NOISE_CONVENTIONS), ("perturb", PERTURBED_SETS)):
            if getattr(self, key) not in choices:
                raise ValueError(
                    f"measures.{key} must be one of {', '.join(choices)}; got {getattr(self, key)!r}"
                )


PROGRESS_EVERY_S = 30.0
"""Seconds between a search's progress lines within a bisection step (every completed step logs too)."""

_MOVES = {
    "within": "within tolerance, stop",
    "above": "above target, scale down",
    "below": "below target, scale up",
}


class SearchProgress:
    """Logs one search's progress at INFO: at its start, every :data:`PROGRESS_EVERY_S` seconds within a
    bisection step, after each step and at its end.

    A line gives the search, the step, its scale, the deviation of the predictions made so far, the
    fraction of the step's predictions made, the elapsed time and an estimate of the most time left: the
    predictions left if every remaining step ran in full, at the search's rate so far (the rate includes
    the ascent of the alpha searches; steps stopped early make the search end sooner).
    """

    def __init__(self, search: str, settings: MeasureSettings, n: int) -> None:
        self.search, self.depth = search, settings.depth
        self.target, self.tol = settings.target, settings.tol
        self.step_predictions = settings.samples * n
        self.clock = ProgressClock(PROGRESS_EVERY_S)
        self.completed = 0  # predictions made in completed steps
        self.step, self.scale = 0, 0.0
        log.info(
            "%s search: at most %d steps of %d copies x %d images", search, self.depth, settings.samples, n
        )

    def begin(self, step: int, scale: float) -> None:
        self.step, self.scale = step, scale

    def batch(self, tally: StepTally) -> None:
        """Log if a line is due (one clock read per batch)."""
        if self.clock.due():
            left = (self.depth - self.step) * self.step_predictions - tally.evaluated
            self._log(tally, f"deviation so far {tally.deviation():.4f}", left)

    def end(self, tally: StepTally) -> None:
        self.completed += tally.evaluated
        deviation = tally.deviation()
        move = bisection_move(deviation, self.target, self.tol)
        steps_left = 0 if move == "within" else self.depth - self.step - 1
        self._log(tally, f"deviation {deviation:.4f} ({_MOVES[move]})", steps_left * self.step_predictions)

    def finish(self, result: SearchResult) -> None:
        state = "converged" if result.converged else "not converged"
        if result.saturated is not None:
            state += f", saturated at the {result.saturated} end"
        log.info(
            "%s search: %.6g after %d steps (%s) in %s",
            self.search,
            result.value,
            result.iterations,
            state,
            duration(self.clock.elapsed()),
        )

    def _log(self, tally: StepTally, what: str, predictions_left: int) -> None:
        """One progress line; ``predictions_left`` bounds the predictions still to make."""
        elapsed = self.clock.elapsed()
        made = self.completed + tally.evaluated
        log.info(
            "%s search, step %d/%d at scale %.6g: %s, %.0f%% of the step evaluated; elapsed %s, "
            "up to ~%s left",
            self.search,
            self.step + 1,
            self.depth,
            self.scale,
            what,
            100 * tally.evaluated / self.step_predictions,
            duration(elapsed),
            duration(elapsed / made * predictions_left),
        )


class FlatnessSearch:
    """Runs the four searches of one model against one evaluation set."""

    def __init__(self, model: nn.Module, data: EvalSet, settings: MeasureSettings) -> None:
        self.settings = settings
        network = perturbed_network(model, settings.perturb)
        self.evaluator = PerturbedEvaluator(network, data, perturbed_names(network, settings.perturb))
        self.base_accuracy = self.evaluator.unperturbed_accuracy()
        on_gpu = data.labels.device.type == "cuda"
        self.chunk = settings.copies_per_pass or (settings.samples if on_gpu else 1)
        self.samples_used: dict[str, list[int]] = {}
        self.evaluated_fraction: dict[str, list[float]] = {}

    def _generators(self, search: str, step: int, copies: range) -> list[torch.Generator]:
        """One generator per copy, seeded by (seed, search, bisection step, copy): a copy's draws do not
        depend on how many other copies were evaluated, so stopping a step early changes no later draw."""
        device = self.evaluator.data.labels.device
        first = ((self.settings.seed * len(SEARCHES) + SEARCHES.index(search)) * 1000 + step) * 1000
        return [torch.Generator(device=device).manual_seed(first + k) for k in copies]

    def _decided(self, deviations: tuple[float, float] | None) -> bool:
        """Whether every deviation in the range leads the bisection to the same move."""
        if deviations is None:
            return False
        s = self.settings
        return bisection_move(deviations[0], s.target, s.tol) == bisection_move(
            deviations[1], s.target, s.tol
        )

    def _evaluate_copies(
        self, counts: Iterator[tuple[Tensor, int]], tally: StepTally, progress: SearchProgress
    ) -> bool:
        """Count one pass of perturbed copies into ``tally``; whether the step's move is settled."""
        per_copy = torch.zeros(())
        for correct, images in counts:
            tally.add(int(correct.sum()), len(correct) * images)
            per_copy = per_copy + correct
            progress.batch(tally)
            if self.settings.stop_when_certain and self._decided(tally.certain_range()):
                return True
        tally.copy_accuracies += (per_copy / tally.n).tolist()
        return self.settings.sequential and self._decided(
            tally.confident_range(self.settings.sequential_confidence)
        )

    def _search(
        self, search: str, draw: Callable[[float, int, range], Iterator[tuple[Tensor, int]]]
    ) -> SearchResult:
        """Bisect on the accuracy deviation at a scale: ``samples`` copies made by ``draw``, ``chunk`` per
        pass, each step stopped once settled; progress is logged (:class:`SearchProgress`)."""
        s = self.settings
        n = len(self.evaluator.data)
        used = self.samples_used.setdefault(search, [])
        fractions = self.evaluated_fraction.setdefault(search, [])
        progress = SearchProgress(search, s, n)

        def deviation(scale: float) -> float:
            tally = StepTally(s.samples, n, self.base_accuracy)
            step, drawn = len(used), 0
            progress.begin(step, scale)
            while drawn < s.samples:
                copies = range(drawn, min(drawn + self.chunk, s.samples))
                drawn = copies.stop
                if self._evaluate_copies(draw(scale, step, copies), tally, progress):
                    break
            used.append(drawn)
            fractions.append(tally.evaluated / (s.samples * n))
            progress.end(tally)
            return tally.deviation()

        result = bisect_scale(deviation, s.target, s.tol, s.lo, s.hi, s.depth)
        progress.finish(result)
        return result

    def gaussian_deltas(
        self, search: str, magnitude_aware: bool, scale: float, step: int, copies: range
    ) -> dict[str, Tensor]:
        """Gaussian offsets ``(len(copies), ...)`` of every perturbed parameter at ``scale``, with the std of
        :func:`~qgen.measures.perturb.gaussian_std` and each copy's own generator (:meth:`_generators`)."""
        s, generators = self.settings, self._generators(search, step, copies)
        deltas = {}
        for name, p in self.evaluator.base.items():
            std = gaussian_std(p, scale, magnitude_aware, s.noise, s.epsilon)
            noise = torch.stack([torch.randn(p.shape, generator=g, device=p.device) for g in generators])
            deltas[name] = noise * std
        return deltas

    def gaussian(self, magnitude_aware: bool) -> SearchResult:
        """sigma (or sigma'): mean accuracy of ``samples`` noisy copies per scale."""
        search = "sigma_mag" if magnitude_aware else "sigma"

        def draw(scale: float, step: int, copies: range) -> Iterator[tuple[Tensor, int]]:
            deltas = self.gaussian_deltas(search, magnitude_aware, scale, step, copies)
            return self.evaluator.correct_counts(deltas)

        return self._search(search, draw)

    def worst_case(self, magnitude_aware: bool) -> SearchResult:
        """alpha (or alpha'): mean accuracy after ``samples`` projected-ascent runs per scale."""
        search = "alpha_mag" if magnitude_aware else "alpha"
        base, s = self.evaluator.base, self.settings
        box = {name: p.abs() if magnitude_aware else torch.ones_like(p) for name, p in base.items()}

        def draw(scale: float, step: int, copies: range) -> Iterator[tuple[Tensor, int]]:
            generators = self._generators(search, step, copies)
            offsets = self.evaluator.ascend(
                box, scale, s.ascent_steps, s.ascent_lr, s.ascent_batch, generators
            )
            return self.evaluator.correct_counts(offsets)

        return self._search(search, draw)

    def run(self) -> dict[str, SearchResult]:
        """The four searches of :data:`qgen.vocab.SEARCHES`, in that order."""
        run = {
            "sigma": lambda: self.gaussian(False),
            "sigma_mag": lambda: self.gaussian(True),
            "alpha": lambda: self.worst_case(False),
            "alpha_mag": lambda: self.worst_case(True),
        }
        return {search: run[search]() for search in SEARCHES}


def bound_values(
    w: Tensor, w0: Tensor, scales: Mapping[str, float | None], m: int, settings: MeasureSettings
) -> dict[str, float | None]:
    """The eight raw measures of App. A (:data:`qgen.vocab.MEASURES`) from the weights and searched scales
    (``None`` for a measure whose search has no scale)."""
    dist = w - w0
    norm_sq = {"init": float(dist.square().sum()), "orig": float(w.square().sum())}
    return {
        measure.name: None
        if scales[measure.search] is None
        else bounds.measure_value(
            measure,
            norm_sq[measure.reference],
            dist,
            scales[measure.search],
            m,
            settings.epsilon,
            settings.delta,
        )
        for measure in MEASURES
    }


def bracket_values(
    w: Tensor, w0: Tensor, results: Mapping[str, SearchResult], m: int, settings: MeasureSettings
) -> dict[str, list[float | None]]:
    """Each normalized measure at the two ends of its search's bracket (``None`` at an open end): what the
    bisection's resolution allows the measure to be, Table 3's uncertainty (docs/decisions.md)."""
    ends = [bound_values(w, w0, {k: r.bracket[i] for k, r in results.items()}, m, settings) for i in (0, 1)]
    return {
        name: [None if end[name] is None else bounds.normalized(end[name], m) for end in ends]
        for name in ends[0]
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
        "perturbed": {
            "tensors": len(search.evaluator.names),
            "parameters": sum(p.numel() for p in search.evaluator.base.values()),
        },
        "norms": {
            "w": math.sqrt(float(w.square().sum())),
            "w_minus_w0": math.sqrt(float((w - w0).square().sum())),
        },
        "searches": {
            k: asdict(r)
            | {"samples_used": search.samples_used[k], "evaluated_fraction": search.evaluated_fraction[k]}
            for k, r in results.items()
        },
        "flatness": {k: 1 / v**2 for k, v in scales.items()},
        "raw": raw,
        "normalized": {k: bounds.normalized(v, m) for k, v in raw.items()},
        "normalized_bracket": bracket_values(w, w0, results, m, settings),
        "forward_images": search.evaluator.images_evaluated,
    }
