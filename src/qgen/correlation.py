"""Do the measures rank models by their generalization gap? Kendall's tau and Jiang's granulated Psi.

QGen reports no rank correlation (beyond the paper). The protocol is Jiang et al., "Fantastic
Generalization Measures and Where to Find Them" (ICLR 2020, arXiv:1912.02178), §4.

**Kendall's tau** between a measure ``mu`` and the gap ``g`` over ``n`` models, ``s_ij = sign(mu_i - mu_j)
sign(g_i - g_j)``:

* ``tau_b`` (the primary number; ``scipy.stats.kendalltau``'s default): ``Σ_{i<j} s_ij / sqrt(n_mu n_g)``
  with ``n_mu`` (``n_g``) the pairs not tied in ``mu`` (``g``); ``None`` for ``n < 2`` or a constant
  ``mu`` or ``g``;
* ``tau_a`` (Jiang's formula, "Kendall's rank correlation coefficient"): ``Σ_{i≠j} s_ij / (n(n-1))``, a
  tied pair counting 0 but staying in the denominator; ``None`` for ``n < 2``. Without ties both agree.

**Confidence interval** of ``tau_b``: the leave-one-model-out jackknife (Quenouille-Tukey) normal interval
``tau_b ± z SE``, ``SE² = (n-1)/n Σ_i (tau_b^(-i) - mean_i tau_b^(-i))²``, ``z`` the normal quantile of
``confidence``, clipped to [-1, 1]. Kendall's tau is a (ratio of) U-statistic(s), for which the
jackknife variance is consistent (Arvesen, 1969) under any dependence between ``mu`` and ``g``, unlike
the variance ``2(2n+5)/(9n(n-1))`` that holds only under independence; it is deterministic (no
resampling seed) and exact in O(n²) from the sign matrices; and unlike a bootstrap over models it
creates no duplicated models, whose artificial ties ``tau_b`` would drop from its denominator. ``None``
where ``n < 3`` or a leave-one-out ``tau_b`` is undefined. Models are treated as exchangeable; the
dependence that a designed grid induces between models sharing hyperparameters is ignored.

**Granulated Psi** (Jiang, "Granulated Kendall's coefficient"): for each hyperparameter axis, ``psi`` is
the mean ``tau`` over the groups of models that share the values of every other axis; ``Psi`` is the mean
of ``psi`` over the axes. Following ``shared/reference/correlation_vvtq_frost.md`` §1.2, a group with one
model is skipped and ``psi`` divides by the number of groups used (Jiang divides by the full product
of the other axes' sizes, which equals it on a complete grid); ``psi`` (``tau_b``) also skips groups where
``tau_b`` is undefined, while ``psi_a`` (``tau_a``) counts them as 0. Each ``psi`` has a normal interval
``mean ± z sd/√groups`` over its groups' ``tau_b`` (groups as independent replicates).

**Orientation.** A measure is taken as a complexity: ``tau > 0`` means a larger value goes with a larger
gap. Flatness scales must enter oriented (``1/sigma²`` etc.) before they reach this module.

**Learning rate.** In QGen's grid (App. B.3) the lr values depend on the optimizer (SGD {0.1, 0.05,
0.01}, Adam/RMSProp {0.001, 0.0005, 0.0001}), so no two models "differ only in optimizer" if lr is keyed
by value. :func:`grid_hyperparameters` keys it by its *level* within its optimizer (reference note §1.0).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qgen.experiments import RunSpec

CORRELATION_SCHEMA_VERSION = 1

HyperValue = str | int | float | bool
"""A hyperparameter value (hashable, JSON-ready)."""


@dataclass(frozen=True)
class ModelRecord:
    """One trained model: its hyperparameters (axis -> value), gap and measure values (``None``: missing)."""

    run_id: str
    hyperparameters: dict[str, HyperValue]
    gap: float
    measures: dict[str, float | None]


@dataclass(frozen=True)
class Tau:
    """Kendall's tau of one population (module docstring): ``tau_b``, ``tau_a`` and ``tau_b``'s jackknife
    standard error and confidence interval; ``None`` where undefined."""

    n: int
    tau_b: float | None
    tau_a: float | None
    std_error: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class AxisPsi:
    """``psi`` of one axis: mean ``tau_b`` over its ``groups_used`` groups (``psi_a``: mean ``tau_a`` over
    all ``groups`` with at least two models); ``singletons`` groups of one model were skipped."""

    psi: float | None
    psi_a: float | None
    groups: int
    groups_used: int
    singletons: int
    std_error: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Granulated:
    """Jiang's ``Psi`` (mean ``psi`` over the ``axes_used`` axes with a defined ``psi``), ``Psi_a`` (mean
    ``psi_a``) and every axis's ``psi``."""

    psi: float | None
    psi_a: float | None
    axes_used: int
    axes: dict[str, AxisPsi]


@dataclass(frozen=True)
class MeasureCorrelation:
    """One measure against the gap: ``tau`` over all models, ``Psi``, and ``tau`` within each precision.

    ``excluded`` lists the run ids left out because their measure or gap is missing or not finite.
    """

    n_models: int
    excluded: list[str]
    tau: Tau
    granulated: Granulated
    per_precision: dict[str, Tau]


@dataclass(frozen=True)
class CorrelationResult:
    """Every measure's correlation with the gap over one population (JSON-ready with ``asdict``)."""

    schema_version: int
    confidence: float
    n_models: int
    axes: list[str]
    precision_axis: str | None
    measures: dict[str, MeasureCorrelation]


def kendall_tau(measure: Sequence[float], gap: Sequence[float], *, confidence: float = 0.95) -> Tau:
    """Kendall's ``tau_b`` and ``tau_a`` of ``measure`` against ``gap``, with ``tau_b``'s jackknife interval.

    Both sequences hold one finite value per model.
    """
    _check_confidence(confidence)
    mu, g = _finite_pair(measure, gap)
    n = len(mu)
    if n < 2:
        return Tau(n, None, None, None, None, None)
    s_mu, s_g = _signs(mu), _signs(g)
    tau_a, tau_b = _taus(s_mu, s_g)
    se = _jackknife_se(s_mu, s_g)
    if tau_b is None or se is None:
        return Tau(n, tau_b, tau_a, None, None, None)
    low, high = _interval(tau_b, se, confidence)
    return Tau(n, tau_b, tau_a, se, low, high)


def granulated_kendall(
    hyperparameters: Sequence[Mapping[str, HyperValue]],
    measure: Sequence[float],
    gap: Sequence[float],
    *,
    confidence: float = 0.95,
) -> Granulated:
    """Jiang's granulated coefficient over the axes of ``hyperparameters`` (one mapping per model, all
    with the same axes; module docstring)."""
    mu, g = _finite_pair(measure, gap)
    if len(hyperparameters) != len(mu):
        raise ValueError(f"{len(hyperparameters)} hyperparameter sets for {len(mu)} measure values")
    axes = _axes(hyperparameters, [str(i) for i in range(len(mu))])
    per_axis = {axis: _axis_psi(hyperparameters, axes, axis, mu, g, confidence) for axis in axes}
    psis = [a.psi for a in per_axis.values() if a.psi is not None]
    psis_a = [a.psi_a for a in per_axis.values() if a.psi_a is not None]
    return Granulated(psi=_mean(psis), psi_a=_mean(psis_a), axes_used=len(psis), axes=per_axis)


def correlate(
    records: Sequence[ModelRecord],
    measures: Sequence[str] | None = None,
    *,
    precision_axis: str | None = "precision",
    confidence: float = 0.95,
) -> CorrelationResult:
    """Kendall's tau, Psi and per-precision tau of each measure against the gap over ``records``.

    ``measures`` defaults to every measure name in the records, in first-seen order; a record without a
    measure counts as missing it. ``precision_axis`` names the hyperparameter whose values split the
    per-precision ``tau`` (``None``: none).
    """
    if not records:
        raise ValueError("no model records to correlate")
    _check_confidence(confidence)
    ids = [r.run_id for r in records]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate run ids {duplicates[:3]} among the model records")
    axes = _axes([r.hyperparameters for r in records], ids)
    if precision_axis is not None and precision_axis not in axes:
        raise ValueError(
            f"precision axis {precision_axis!r} is not a hyperparameter of the records (axes {axes}); "
            "pass precision_axis=None to skip the per-precision tau"
        )
    names = list(measures) if measures is not None else _measure_names(records)
    return CorrelationResult(
        schema_version=CORRELATION_SCHEMA_VERSION,
        confidence=confidence,
        n_models=len(records),
        axes=axes,
        precision_axis=precision_axis,
        measures={name: _correlate_measure(records, name, precision_axis, confidence) for name in names},
    )


def grid_hyperparameters(spec: RunSpec, experiment: Mapping[str, Any]) -> dict[str, HyperValue]:
    """The axes of one run of ``experiment`` (a config entry) for Psi: each ``grid.model`` argument, the
    optimizer, ``lr_level``, the weight decay and the precision.

    ``lr_level`` is the rank (0 = smallest) of the run's lr among its optimizer's grid values, so that
    SGD at 0.1 and Adam at 0.001 share level 2 in QGen's grid and models differing only in optimizer
    exist (module docstring).
    """
    grid = experiment["grid"]
    lrs = grid["optimizer"].get(spec.optimizer)
    if lrs is None:
        raise ValueError(
            f"run {spec.run_id}: optimizer {spec.optimizer!r} is not in experiment "
            f"{experiment['name']!r} grid.optimizer {sorted(grid['optimizer'])}"
        )
    levels = sorted({float(lr) for lr in lrs})
    if spec.lr not in levels:
        raise ValueError(
            f"run {spec.run_id}: lr {spec.lr} is not in experiment {experiment['name']!r} "
            f"grid.optimizer.{spec.optimizer} {list(lrs)}"
        )
    axes: dict[str, HyperValue] = {k: spec.model_args[k] for k in grid.get("model", {})}
    return axes | {
        "optimizer": spec.optimizer,
        "lr_level": levels.index(spec.lr),
        "weight_decay": spec.weight_decay,
        "precision": spec.precision,
    }


def _correlate_measure(
    records: Sequence[ModelRecord], name: str, precision_axis: str | None, confidence: float
) -> MeasureCorrelation:
    pairs = [
        (r, float(v))
        for r in records
        if (v := r.measures.get(name)) is not None and math.isfinite(v) and math.isfinite(r.gap)
    ]
    kept = [r for r, _ in pairs]
    kept_ids = {r.run_id for r in kept}
    excluded = [r.run_id for r in records if r.run_id not in kept_ids]
    mu = [v for _, v in pairs]
    g = [float(r.gap) for r in kept]
    per_precision: dict[str, Tau] = {}
    if precision_axis is not None:
        for value in dict.fromkeys(r.hyperparameters[precision_axis] for r in records):
            chosen = [i for i, r in enumerate(kept) if r.hyperparameters[precision_axis] == value]
            per_precision[str(value)] = kendall_tau(
                [mu[i] for i in chosen], [g[i] for i in chosen], confidence=confidence
            )
    return MeasureCorrelation(
        n_models=len(kept),
        excluded=excluded,
        tau=kendall_tau(mu, g, confidence=confidence),
        granulated=granulated_kendall([r.hyperparameters for r in kept], mu, g, confidence=confidence),
        per_precision=per_precision,
    )


def _axis_psi(
    hyperparameters: Sequence[Mapping[str, HyperValue]],
    axes: list[str],
    axis: str,
    mu: np.ndarray,
    g: np.ndarray,
    confidence: float,
) -> AxisPsi:
    """``psi`` of ``axis``: groups are the models sharing every other axis's value."""
    others = [a for a in axes if a != axis]
    groups: dict[tuple[HyperValue, ...], list[int]] = {}
    for i, h in enumerate(hyperparameters):
        groups.setdefault(tuple(h[a] for a in others), []).append(i)
    taus_a: list[float] = []
    taus_b: list[float] = []
    singletons = 0
    for members in groups.values():
        if len(members) < 2:
            singletons += 1
            continue
        tau_a, tau_b = _taus(_signs(mu[members]), _signs(g[members]))
        taus_a.append(tau_a)
        if tau_b is not None:
            taus_b.append(tau_b)
    psi = _mean(taus_b)
    se = statistics.stdev(taus_b) / math.sqrt(len(taus_b)) if len(taus_b) >= 2 else None
    low, high = _interval(psi, se, confidence) if psi is not None and se is not None else (None, None)
    return AxisPsi(
        psi=psi,
        psi_a=_mean(taus_a),
        groups=len(taus_a),
        groups_used=len(taus_b),
        singletons=singletons,
        std_error=se,
        ci_low=low,
        ci_high=high,
    )


def _signs(x: np.ndarray) -> np.ndarray:
    """The ``n x n`` matrix ``sign(x_i - x_j)`` as int8."""
    return np.sign(x[:, None] - x[None, :]).astype(np.int8)


def _taus(s_mu: np.ndarray, s_g: np.ndarray) -> tuple[float, float | None]:
    """``(tau_a, tau_b)`` from the sign matrices of at least two models."""
    n = len(s_mu)
    concordance = int((s_mu.astype(np.int64) * s_g).sum()) // 2
    untied_mu, untied_g = np.count_nonzero(s_mu) // 2, np.count_nonzero(s_g) // 2
    tau_a = concordance / (n * (n - 1) / 2)
    tau_b = concordance / math.sqrt(untied_mu * untied_g) if untied_mu and untied_g else None
    return tau_a, tau_b


def _jackknife_se(s_mu: np.ndarray, s_g: np.ndarray) -> float | None:
    """The leave-one-out jackknife standard error of ``tau_b``; ``None`` if any leave-one-out ``tau_b`` is
    undefined (or fewer than three models)."""
    n = len(s_mu)
    if n < 3:
        return None
    products = s_mu.astype(np.int64) * s_g
    row_concordance = products.sum(axis=1)
    row_mu, row_g = np.count_nonzero(s_mu, axis=1), np.count_nonzero(s_g, axis=1)
    concordance = row_concordance.sum() / 2 - row_concordance
    untied = (row_mu.sum() / 2 - row_mu) * (row_g.sum() / 2 - row_g)
    if np.any(untied == 0):
        return None
    leave_one_out = concordance / np.sqrt(untied)
    return math.sqrt((n - 1) / n * float(np.square(leave_one_out - leave_one_out.mean()).sum()))


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _interval(center: float, se: float, confidence: float) -> tuple[float, float]:
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    return max(-1.0, center - z * se), min(1.0, center + z * se)


def _finite_pair(measure: Sequence[float], gap: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    mu, g = np.asarray(measure, dtype=np.float64), np.asarray(gap, dtype=np.float64)
    if mu.shape != g.shape or mu.ndim != 1:
        raise ValueError(f"measure and gap must be 1-d of one length, got shapes {mu.shape} and {g.shape}")
    bad = np.flatnonzero(~(np.isfinite(mu) & np.isfinite(g)))
    if len(bad):
        raise ValueError(f"measure or gap is not finite at model index(es) {bad[:5].tolist()}")
    return mu, g


def _axes(hyperparameters: Sequence[Mapping[str, HyperValue]], ids: Sequence[str]) -> list[str]:
    """The common axes of every model (in the first model's order), or a ``ValueError`` naming a model
    whose axes differ."""
    if not hyperparameters:
        return []
    axes = list(hyperparameters[0])
    for model_id, h in zip(ids, hyperparameters, strict=True):
        if set(h) != set(axes):
            raise ValueError(
                f"model {model_id} has hyperparameters {sorted(h)}, expected the axes {sorted(axes)} of "
                f"model {ids[0]}: every model needs a value for every axis"
            )
    return axes


def _measure_names(records: Iterable[ModelRecord]) -> list[str]:
    return list(dict.fromkeys(name for r in records for name in r.measures))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
