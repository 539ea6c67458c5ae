"""A population of measured models: each run's measures and gap, and what the rank correlation shows.

Beyond the paper: Jiang et al. (2019) and Dziugaite et al. (2020) built the flatness measures to rank
models by their generalization gap across a population; QGen measures a handful of models (Table 3) while
it trains 1,944. Every run of the configured sweep (``correlation.experiments``, or a seeded sample of
their grid points, :func:`qgen.experiments.sampled_points`) gets a measure job; its ``measures.json``
holds the bounds, curvature, norms, ``R`` of eq. 7 and the run's gap. From those records this module
builds:

* :func:`figure3_records`: one row per model (its axes, gap and every measure of
  :data:`qgen.vocab.POPULATION_MEASURES`), the data of Figure 3's scatter plots;
* :func:`correlation_records`: for every measure, Kendall's tau over all models, the granulated Psi and
  its per-axis psi (optimizer, learning-rate level, weight decay, the swept model arguments, precision),
  and tau within each precision (:mod:`qgen.correlation`), one tidy row per statistic.

Every measure is a complexity: a larger value predicts a larger gap (flatness scales enter as the
bounds that use them). Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qgen.correlation import ModelRecord, Tau, correlate, grid_hyperparameters
from qgen.experiments import RunSpec
from qgen.vocab import MEASURES, POPULATION_MEASURES, dataset_facts

Reader = Callable[[Mapping[str, Any]], float | None]


def _path(*keys: str) -> Reader:
    """A reader of ``record[keys[0]][keys[1]]...``; ``None`` where any key is missing (e.g. curvature off)."""

    def read(record: Mapping[str, Any]) -> float | None:
        value: Any = record
        for key in keys:
            if not isinstance(value, Mapping) or key not in value:
                return None
            value = value[key]
        return None if value is None else float(value)

    return read


READERS: Mapping[str, Reader] = {
    **{m.name: _path("normalized", m.name) for m in MEASURES},
    "hessian.top_eigenvalue": _path("curvature", "top_eigenvalue", "value"),
    "hessian.trace": _path("curvature", "trace", "value"),
    "norm.w": _path("norms", "w"),
    "norm.w_minus_w0": _path("norms", "w_minus_w0"),
    "regularizer": _path("regularizer", "realized", "value"),
}
"""How each measure of :data:`qgen.vocab.POPULATION_MEASURES` is read from a ``measures.json`` record."""


def model_records(
    results: Sequence[Mapping[str, Any]], experiments: Mapping[str, Mapping[str, Any]]
) -> list[ModelRecord]:
    """The measured models of ``results`` (``measures.json`` records) that trained without diverging."""
    records = []
    for result in results:
        if result["status"] != "ok":
            continue
        spec = RunSpec.from_dict(result["spec"])
        axes = grid_hyperparameters(spec, experiments[spec.experiment])
        measures = {name: read(result) for name, read in READERS.items()}
        records.append(ModelRecord(spec.run_id, axes, float(result["generalization_gap"]), measures))
    return records


def _experiments(sliced: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {experiment["name"]: experiment for experiment in sliced["experiments"]}


def figure3_records(results: Sequence[Mapping[str, Any]], sliced: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Figure 3's data: one row per model with its dataset, axes, gap and every measure."""
    rows = []
    specs = {spec.run_id: spec for spec in (RunSpec.from_dict(r["spec"]) for r in results)}
    for record in model_records(results, _experiments(sliced)):
        spec = specs[record.run_id]
        rows.append(
            {
                "run_id": record.run_id,
                "experiment": spec.experiment,
                "dataset": dataset_facts(spec.dataset).label,
                **{f"axis.{k}": v for k, v in record.hyperparameters.items()},
                "gap": record.gap,
                **record.measures,
            }
        )
    return rows


STATISTIC_COLUMNS = ("n", "value", "value_a", "std_error", "ci_low", "ci_high", "groups", "groups_used")


def _row(measure: str, statistic: str, group: str, **values: Any) -> dict[str, Any]:
    """One tidy row: ``value`` is ``tau_b`` (or a mean of them), ``value_a`` the same with ``tau_a``."""
    label = {
        "measure": measure,
        "label": POPULATION_MEASURES[measure],
        "statistic": statistic,
        "group": group,
    }
    return label | dict.fromkeys(STATISTIC_COLUMNS) | values


def _tau(tau: Tau) -> dict[str, Any]:
    return {
        "n": tau.n,
        "value": tau.tau_b,
        "value_a": tau.tau_a,
        "std_error": tau.std_error,
        "ci_low": tau.ci_low,
        "ci_high": tau.ci_high,
    }


def correlation_records(
    results: Sequence[Mapping[str, Any]], sliced: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The rank correlation of every measure with the gap over the models of ``results``.

    One row per (measure, statistic, group): ``tau`` over all models (group ``all``), ``psi`` per axis
    (group: the axis), ``Psi`` over the axes (group ``all``), and ``tau`` within each precision (group
    ``precision=<name>``). ``value`` is the ``tau_b`` statistic (ties as scipy), ``value_a`` its ``tau_a``
    counterpart; the interval is the jackknife's (tau) or over the groups (psi), at the level of the slice's
    ``confidence`` (the config's ``correlation.confidence``).
    """
    result = correlate(
        model_records(results, _experiments(sliced)),
        list(POPULATION_MEASURES),
        confidence=sliced["confidence"],
    )
    rows = []
    for name, correlation in result.measures.items():
        rows.append(_row(name, "tau", "all", **_tau(correlation.tau)))
        granulated = correlation.granulated
        for axis, psi in granulated.axes.items():
            rows.append(
                _row(
                    name,
                    "psi",
                    axis,
                    n=correlation.n_models,
                    value=psi.psi,
                    value_a=psi.psi_a,
                    std_error=psi.std_error,
                    ci_low=psi.ci_low,
                    ci_high=psi.ci_high,
                    groups=psi.groups,
                    groups_used=psi.groups_used,
                )
            )
        rows.append(
            _row(
                name,
                "Psi",
                "all",
                n=correlation.n_models,
                value=granulated.psi,
                value_a=granulated.psi_a,
                groups=len(granulated.axes),
                groups_used=granulated.axes_used,
            )
        )
        for precision, tau in correlation.per_precision.items():
            rows.append(_row(name, "tau", f"precision={precision}", **_tau(tau)))
    return [row | {"confidence": result.confidence} for row in rows]
