"""Paper tables: summarise run results into tidy CSV files, then render CSV -> LaTeX with jinja2.

Each table has two steps so that a table is always rendered from files, never from in-memory state:
``summarize_*`` reads ``metrics.json`` files and returns rows (written as CSV), and :func:`render`
fills a jinja2 template from that CSV.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from qgen.errors import UnknownNameError
from qgen.experiments import RunSpec, select_point
from qgen.vocab import MEASURES, PRECISION_LABELS, PRECISIONS, dataset_facts

MEASURE_NAMES = tuple(m.name for m in MEASURES)

TABLE1_METRICS = {
    "train_acc": ("train", "accuracy", 100.0),
    "test_acc": ("test", "accuracy", 100.0),
    "train_loss": ("train", "loss", 1.0),
    "test_loss": ("test", "loss", 1.0),
}


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize_gaps(
    metrics: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, str]]
) -> list[dict[str, Any]]:
    """Paper Table 1: per experiment and precision, mean/std of accuracies, losses and the gap.

    ``rows`` lists ``{"experiment", "model"}`` (``model``: the display label) in table order. Diverged
    runs are counted, not averaged.
    """
    out = []
    for row in rows:
        for precision in PRECISIONS:
            runs = [
                m
                for m in metrics
                if m["spec"]["experiment"] == row["experiment"] and m["spec"]["precision"] == precision
            ]
            if not runs:
                continue
            ok = [m for m in runs if m["status"] == "ok"]
            record: dict[str, Any] = {
                "experiment": row["experiment"],
                "dataset": _dataset_label(runs[0]),
                "model": row["model"],
                "precision": precision,
                "n_runs": len(runs),
                "n_diverged": len(runs) - len(ok),
            }
            for key, (split, field, scale) in TABLE1_METRICS.items():
                values = [scale * m[split][field] for m in ok]
                record[f"{key}_mean"], record[f"{key}_std"] = _mean_std(values)
            record["gap_mean"], record["gap_std"] = _mean_std([m["generalization_gap"] for m in ok])
            out.append(record)
    return out


def _dataset_label(metrics: Mapping[str, Any]) -> str:
    return dataset_facts(metrics["spec"]["dataset"]).label


def one_run_per_precision(
    results: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> Iterator[tuple[Mapping[str, Any], str, Mapping[str, Any]]]:
    """``(row, precision, result)`` for tables whose rows each pick one grid point of an experiment.

    ``rows`` lists ``{"experiment", "where", "model"}``; ``where`` must pick exactly one grid point
    (:func:`qgen.experiments.select_point`).
    """
    specs = [RunSpec.from_dict(r["spec"]) for r in results]
    by_id = {spec.run_id: r for spec, r in zip(specs, results, strict=True)}
    for row in rows:
        chosen = {s.precision: s for s in select_point(specs, row["experiment"], row.get("where"))}
        for precision in PRECISIONS:
            if precision in chosen:
                yield row, precision, by_id[chosen[precision].run_id]


def _row_record(row: Mapping[str, Any], precision: str, result: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "experiment": row["experiment"],
        "dataset": _dataset_label(result),
        "model": row["model"],
        "precision": precision,
        "status": result["status"],
    }


def summarize_norms(
    metrics: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Paper Table 2: ``||W||_2`` of one run per row and precision."""
    return [
        _row_record(row, precision, m) | {"weight_norm": m.get("weight_norm")}
        for row, precision, m in one_run_per_precision(metrics, rows)
    ]


def summarize_measures(
    measures: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Paper Table 3: the eight normalized measures of one run per row and precision.

    Each measure comes with whether its search saturated (its scale is then a bound, not a value)
    and the run's curvature where it was measured (CSV only).
    """
    out = []
    for row, precision, result in one_run_per_precision(measures, rows):
        record = _row_record(row, precision, result)
        ok = result["status"] == "ok"
        for measure in MEASURES:
            name = measure.name
            record[name] = result["normalized"][name] if ok else None
            record[f"{name}.saturated"] = (
                result["searches"][measure.search]["saturated"] is not None if ok else None
            )
        curvature = result.get("curvature", {})
        record["hessian_top_eigenvalue"] = curvature.get("top_eigenvalue", {}).get("value")
        record["hessian_trace"] = curvature.get("trace", {}).get("value")
        out.append(record)
    return out


def latex_escape(text: str) -> str:
    """Escape the LaTeX special characters of a plain-text label."""
    special = {
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "\\": r"\textbackslash{}",
    }
    return "".join(special.get(c, c) for c in str(text))


def fmt(value: float | None, digits: int) -> str:
    """A number with ``digits`` decimals, or an en dash for a missing value."""
    return "--" if value is None else f"{value:.{digits}f}"


def fmt_mean_std(mean: float | None, std: float | None, digits: int) -> str:
    """``mean ± std`` in LaTeX, or the mean alone where the std is undefined (a single run)."""
    if std is None:
        return fmt(mean, digits)
    return f"{mean:.{digits}f} $\\pm$ {std:.{digits}f}"


def gaps_context(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Template context of Table 1: the summary rows as they are, one per experiment and precision."""
    return {"rows": list(records)}


def norms_context(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Template context of Table 2: one row per (dataset, model) with a column per precision."""
    pivot: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        row = pivot.setdefault(
            (r["dataset"], r["model"]), {"dataset": r["dataset"], "model": r["model"], "norm": {}}
        )
        row["norm"][r["precision"]] = r["weight_norm"] if r["status"] == "ok" else None
    return {"rows": list(pivot.values()), "precisions": ["int2", "int4", "int8", "fp32"]}


def measures_context(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Template context of Table 3: rows grouped by model, each cell marked if lowest in its group.

    As in the paper, the lowest value of each measure among a model's precisions is marked.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["model"]), []).append(r)
    rows = []
    for members in groups.values():
        lowest = {}
        for name in MEASURE_NAMES:
            values = [r[name] for r in members if r[name] is not None]
            lowest[name] = min(values) if values else None
        for r in members:
            cells = [
                {
                    "value": r[name],
                    "lowest": r[name] is not None and r[name] == lowest[name],
                    "saturated": r[f"{name}.saturated"] is True,
                }
                for name in MEASURE_NAMES
            ]
            rows.append(
                {"dataset": r["dataset"], "model": r["model"], "precision": r["precision"], "cells": cells}
            )
    return {"rows": rows}


def summarize_corruptions(
    results: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Paper Tables 4-6: one row per model, precision, corruption and severity, from ``corruptions.csv``.

    ``gap`` is the corrupted test loss minus the clean training loss (§4.3, App. C.2).
    """
    out = []
    for row, precision, result in one_run_per_precision(results, rows):
        record = _row_record(row, precision, result)
        for cell in result["rows"]:
            out.append(
                record
                | {
                    "corruption": cell["corruption"],
                    "severity": cell["severity"],
                    "n": cell["n"],
                    "test_loss": cell["loss"],
                    "test_accuracy": cell["accuracy"],
                    "train_loss": cell["train_loss"],
                    "gap": cell["gap"],
                }
            )
    return out


def corruption_label(name: str) -> str:
    """How the paper prints a corruption (the registry's label); imported here so that the other tables'
    jobs need not load the corruption code (numpy, scipy, PIL)."""
    from qgen.corruptions import LABELS

    return LABELS.get(name, name)


# Column order of the corruption tables, as in the paper: the reference first.
CORRUPTION_TABLE_PRECISIONS = ("fp32", "int8", "int4", "int2")


def _gap_mark(value: float | None, reference: float | None) -> str | None:
    """``"better"`` if a gap is smaller than FP32's, ``"worse"`` if larger, else ``None``."""
    if value is None or reference is None or value == reference:
        return None
    return "better" if value < reference else "worse"


def _corruption_cells(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], dict[Any, Any]]:
    """(dataset, model, corruption) -> {(severity, precision): summary row}, in the records' order."""
    cells: dict[tuple[str, str, str], dict[Any, Any]] = {}
    for r in records:
        cells.setdefault((r["dataset"], r["model"], r["corruption"]), {})[(r["severity"], r["precision"])] = r
    return cells


def _gap_cell(cells: Mapping[Any, Any], severity: int, precision: str) -> dict[str, Any]:
    row = cells.get((severity, precision))
    reference = cells.get((severity, "fp32"))
    value = None if row is None else row["gap"]
    mark = None if precision == "fp32" else _gap_mark(value, None if reference is None else reference["gap"])
    accuracy = None if row is None or row["test_accuracy"] is None else 100 * row["test_accuracy"]
    return {"value": value, "mark": mark, "accuracy": accuracy}


def corruption_gaps_context(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Template context of Tables 4 and 5: a row per model and corruption, columns severity x precision.

    Each gap cell is marked ``better``/``worse`` against the FP32 gap of the same model, corruption and
    severity, as the paper highlights them.
    """
    precisions = [p for p in CORRUPTION_TABLE_PRECISIONS if any(r["precision"] == p for r in records)]
    severities = sorted({r["severity"] for r in records})
    rows = []
    for (dataset, model, corruption), cells in _corruption_cells(records).items():
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "corruption": corruption_label(corruption),
                "cells": [_gap_cell(cells, s, p) for s in severities for p in precisions],
            }
        )
    return {"rows": rows, "precisions": precisions, "severities": severities}


def corruption_accuracy_context(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Template context of Table 6: a row per model, corruption and precision; gap, accuracy per severity."""
    severities = sorted({r["severity"] for r in records})
    rows = []
    for (dataset, model, corruption), cells in _corruption_cells(records).items():
        for precision in CORRUPTION_TABLE_PRECISIONS:
            if not any(key[1] == precision for key in cells):
                continue
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "corruption": corruption_label(corruption),
                    "precision": precision,
                    "cells": [_gap_cell(cells, s, precision) for s in severities],
                }
            )
    return {"rows": rows, "severities": severities}


@dataclass(frozen=True)
class Table:
    """How one paper table is built: metrics -> summary rows, summary rows -> template context."""

    summarize: Callable[[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]], list[dict[str, Any]]]
    context: Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]


TABLES: dict[str, Table] = {
    "table1": Table(summarize_gaps, gaps_context),
    "table2": Table(summarize_norms, norms_context),
    "table3": Table(summarize_measures, measures_context),
    "table4": Table(summarize_corruptions, corruption_gaps_context),
    "table5": Table(summarize_corruptions, corruption_gaps_context),
    "table6": Table(summarize_corruptions, corruption_accuracy_context),
}


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise UnknownNameError(f"unknown table {name!r}; known: {sorted(TABLES)}") from None


def render(template: Path | str, context: Mapping[str, Any], source: str = "a qgen summary") -> str:
    """Fill a LaTeX jinja2 template; ``source`` (the summary file and its digest) goes into its header.

    LaTeX-friendly delimiters: blocks ``\\BLOCK{...}``, values ``\\VAR{...}``, comments ``\\#{...}``.
    """
    path = Path(template)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(path.parent),
        block_start_string=r"\BLOCK{",
        block_end_string="}",
        variable_start_string=r"\VAR{",
        variable_end_string="}",
        comment_start_string=r"\#{",
        comment_end_string="}",
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters |= {"esc": latex_escape, "fmt": fmt}
    env.globals |= {
        "fmt_mean_std": fmt_mean_std,
        "precision_label": PRECISION_LABELS.get,
        "groupby_first": _first_of_group,
        "source": source,
    }
    return env.get_template(path.name).render(**context)


def _first_of_group(records: Sequence[Mapping[str, Any]], index: int, *keys: str) -> bool:
    """Whether ``records[index]`` starts a new group of equal ``keys`` (for multirow-style labels)."""
    return index == 0 or any(records[index][k] != records[index - 1][k] for k in keys)
