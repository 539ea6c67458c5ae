"""The numbers of the report: one :class:`Value` per cell of a table or figure, with its uncertainty, and
ours read from the summary CSVs (:func:`values_of`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qgen.errors import MissingColumnError, QgenError
from qgen.tables import TABLE1_COLUMNS
from qgen.vocab import MEASURES, PRECISION_LABELS, REPORTED

SOURCES = REPORTED
NAMES = {
    "table1": "Table 1",
    "table2": "Table 2",
    "table3": "Table 3",
    "table4": "Table 4",
    "table5": "Table 5",
    "figure1": "Figure 1",
    "figure2": "Figure 2",
    "regularizer": "Regularizer table",
    "correlation": "Correlation table",
}
TITLES = {
    "table1": "generalization gaps",
    "table2": "weight norms",
    "table3": "sharpness-based measures",
    "table4": "generalization gap under corruptions (ImageNet-C)",
    "table5": "generalization gap under corruptions (CIFAR-100-C)",
    "figure1": "learned bin width per layer",
    "figure2": "loss surfaces",
    "regularizer": "R of eq. 7 measured (beyond the paper)",
    "correlation": "rank correlation of the measures with the gap (beyond the paper)",
}


def title(source: str) -> str:
    """``"Table 1: generalization gaps"``."""
    return f"{NAMES[source]}: {TITLES[source]}"


@dataclass(frozen=True)
class Value:
    """One number of a table or figure: ``detail`` names the cell within a precision ("" for none),
    e.g. ``"gaussian_noise, severity 3"`` in Table 4 or a layer name in Figure 1.

    ``uncertainty`` is its standard uncertainty: ``0.0`` for a number taken as exact (the paper's printed
    numbers), ``None`` where none is known (:data:`UNCERTAINTY` says which of ours have one).
    """

    source: str
    dataset: str
    model: str
    precision: str
    quantity: str
    detail: str
    value: float
    uncertainty: float | None = 0.0

    @property
    def key(self) -> tuple[str, str, str, str, str, str]:
        return (self.source, self.dataset, self.model, self.precision, self.quantity, self.detail)


def corruption_detail(corruption: str, severity: int) -> str:
    return f"{corruption}, severity {severity}"


Reading = Callable[[Mapping[str, Any]], Mapping[str, tuple[Any, float | None]]]
"""A summary row -> {quantity: (number or None, its standard uncertainty or None)}."""


def _standard_error(row: Mapping[str, Any], key: str) -> float | None:
    """``std / sqrt(n)`` of a Table 1 cell over its ``n`` runs that did not diverge (``None`` below two)."""
    n, std = row["n_runs"] - row["n_diverged"], row[f"{key}_std"]
    return None if std is None or n < 2 else std / math.sqrt(n)


def _bracket_uncertainty(row: Mapping[str, Any], name: str) -> float | None:
    """The standard uncertainty of a measure whose bisection bracket allows the range ``[low, high]``: a
    uniform distribution over it, ``(high - low) / (2 sqrt 3)`` (JCGM 100:2008, 4.3.7)."""
    low, high = row[f"{name}.low"], row[f"{name}.high"]
    return None if low is None or high is None else (high - low) / (2 * math.sqrt(3))


def _ok(row: Mapping[str, Any]) -> bool:
    return row.get("status", "ok") == "ok"


def _unknown(row: Mapping[str, Any], *quantities: str) -> dict[str, tuple[Any, None]]:
    """Quantities of a one-run cell: no uncertainty is known (one run gives no spread)."""
    return {q: (row[q], None) for q in quantities}


CORRUPTION_QUANTITIES = ("gap", "test_loss", "test_accuracy", "train_loss")
POPULATION = "population"
"""The scope of the correlation table's values: one population of models, not a (dataset, model)."""


def _regularizer(row: Mapping[str, Any]) -> dict[str, tuple[Any, float | None]]:
    """A quantized model's ``R`` (realized: one draw, no spread), its uniform-noise expectation (the
    Monte Carlo standard error) and the first-order expansion's relative error (exact: a ratio of two
    computed sums, not an estimate); an FP32 row at LSQ's initial step is a counterfactual, not a model,
    and gives no value."""
    if row["at_initial_step"] or row["r_realized"] is None:
        return {}
    return {
        "r_realized": (row["r_realized"], None),
        "r_expected": (row["r_expected"], row["r_expected_se"]),
        "taylor_output_error": (row["taylor_output_error"], 0.0),
    }


def _correlation(row: Mapping[str, Any]) -> dict[str, tuple[Any, float | None]]:
    """A statistic of one measure: its value (``tau_b`` or a mean of them) with its standard error (the
    jackknife's for tau, over the groups for psi; none for Psi)."""
    return {row["measure"]: (row["value"], row["std_error"])}


READINGS: dict[str, Reading] = {
    "table1": lambda r: {c.key: (r[f"{c.key}_mean"], _standard_error(r, c.key)) for c in TABLE1_COLUMNS},
    "table2": lambda r: _unknown(r, "weight_norm") if _ok(r) else {},
    "table3": lambda r: (
        {m.name: (r[m.name], _bracket_uncertainty(r, m.name)) for m in MEASURES} if _ok(r) else {}
    ),
    "table4": lambda r: _unknown(r, *CORRUPTION_QUANTITIES),
    "table5": lambda r: _unknown(r, *CORRUPTION_QUANTITIES),
    "figure1": lambda r: _unknown(r, "step_size"),
    "figure2": lambda r: _unknown(r, "centre_loss", "centre_accuracy", "mean_rise", "max_loss"),
    "regularizer": _regularizer,
    "correlation": _correlation,
}
"""How each of our summaries becomes values."""

UNCERTAINTY: dict[str, str] = {
    "table1": "the standard error over the runs of a cell, std / sqrt(n), n the runs that did not diverge; "
    "a cell of one run has none",
    "table2": "none: each cell is one run, and one run gives no spread",
    "table3": "the resolution of the measure's scale search: the measure at the two ends of the last "
    "interval the bisection halved, as a uniform distribution, (high - low) / (2 sqrt 3); none where a "
    "search saturated (an end of its interval was never evaluated)",
    "table4": "none: corruptions.csv holds each cell's mean loss over its n images, not their spread",
    "table5": "none: corruptions.csv holds each cell's mean loss over its n images, not their spread",
    "figure1": "none: each precision is one run",
    "figure2": "none: a surface file holds the mean loss over the evaluated images at each grid point, not "
    "per-image losses, so no bootstrap over the images is possible",
    "regularizer": "the Monte Carlo standard error of E R over its uniform-noise draws; the realized R is "
    "one draw (none); the first-order error is exact (a ratio of two computed sums)",
    "correlation": "the jackknife standard error of tau over the models; psi's over its groups, "
    "std / sqrt(g); none for Psi",
}
"""What the standard uncertainty of each of our sources is (the report and docs/decisions.md state it)."""


def _detail(source: str, row: Mapping[str, Any]) -> str:
    if source in ("table4", "table5"):
        return corruption_detail(row["corruption"], int(row["severity"]))
    if source == "correlation":
        return f"{row['statistic']} {row['group']}"
    return str(row.get("layer", ""))


def _cell(source: str, row: Mapping[str, Any]) -> tuple[str, str, str]:
    """The (dataset, model, precision) of a row; the correlation table's rows are of the population."""
    if source == "correlation":
        return POPULATION, "", ""
    return row["dataset"], row["model"], row["precision"]


def values_of(source: str, rows: Sequence[Mapping[str, Any]]) -> list[Value]:
    """Our results of ``source`` (a name of :data:`SOURCES`) from the rows of its summary CSV
    (:func:`qgen.summary.read_summary`), each with the uncertainty :data:`UNCERTAINTY` describes."""
    if source not in READINGS:
        raise QgenError(f"unknown result source {source!r}; expected one of {list(SOURCES)}")
    out = []
    try:
        for row in rows:
            detail, cell = _detail(source, row), _cell(source, row)
            for quantity, (number, u) in READINGS[source](row).items():
                if number is not None:
                    out.append(Value(source, *cell, quantity, detail, float(number), u))
    except KeyError as exc:
        raise MissingColumnError(f"{source} summary", exc.args[0]) from None
    return out


def diverged(source: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cells of a summary with diverged runs, e.g. ``"Table 1, Digits NiN Int2: 2 of 2 runs diverged"``,
    so that a model whose every run diverged is listed rather than silently absent."""
    out = []
    for row in rows:
        if source == "correlation":  # diverged runs are not part of the population
            continue
        where = f"{NAMES[source]}, {row['dataset']} {row['model']} {PRECISION_LABELS[row['precision']]}"
        if row.get("n_diverged"):
            out.append(f"{where}: {row['n_diverged']} of {row['n_runs']} runs diverged")
        elif row.get("status") not in (None, "ok"):
            out.append(f"{where}: the run's status is {row['status']}")
    return list(dict.fromkeys(out))
