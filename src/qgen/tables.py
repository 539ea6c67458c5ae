"""Paper tables: summarise run results into tidy CSV files, then render CSV -> LaTeX with jinja2.

Each table has two steps so that a table is always rendered from files, never from in-memory state:
``summarize_*`` reads the runs' result files and returns rows (written as CSV), and :func:`render` fills a
jinja2 template from that CSV. Columns come from the vocabulary (:data:`qgen.vocab.PRECISIONS`,
:data:`qgen.vocab.MEASURES`, :data:`TABLE1_COLUMNS`), so a template never counts columns by hand.

Every template states the page it is laid out for (a one-column ``article`` page, or a landscape one for
the corruption tables) and fits it: ``tests/test_tables.py`` compiles each with wide labels and numbers
and finds no overfull box.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from qgen.errors import QgenError, UnknownNameError
from qgen.experiments import RunSpec, select_point
from qgen.vocab import MEASURE_FAMILIES, MEASURES, PRECISION_LABELS, PRECISIONS, dataset_facts

MEASURE_NAMES = tuple(m.name for m in MEASURES)


@dataclass(frozen=True)
class Table1Column:
    """A quantity of Table 1: its summary key (``<key>_mean``, ``<key>_std``), header, printed decimals,
    and how it is read from a run's ``metrics.json``."""

    key: str
    label: str
    digits: int
    read: Callable[[Mapping[str, Any]], float]


TABLE1_COLUMNS: tuple[Table1Column, ...] = (
    Table1Column("train_acc", "Train Acc", 2, lambda m: 100.0 * m["train"]["accuracy"]),
    Table1Column("test_acc", "Test Acc", 2, lambda m: 100.0 * m["test"]["accuracy"]),
    Table1Column("train_loss", "Train Loss", 3, lambda m: m["train"]["loss"]),
    Table1Column("test_loss", "Test Loss", 3, lambda m: m["test"]["loss"]),
    Table1Column("gap", "Gap", 3, lambda m: m["generalization_gap"]),
)
"""The columns of the paper's Table 1, in its order (accuracies in percent)."""


# --------------------------------------------------------------------------------------------------------
# Summaries: run results -> rows


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _dataset_label(result: Mapping[str, Any]) -> str:
    return dataset_facts(result["spec"]["dataset"]).label


def summarize_gaps(
    metrics: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, str]]
) -> list[dict[str, Any]]:
    """Paper Table 1: per experiment and precision, mean/std of the :data:`TABLE1_COLUMNS` over its runs.

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
            for column in TABLE1_COLUMNS:
                mean, std = _mean_std([column.read(m) for m in ok])
                record[f"{column.key}_mean"], record[f"{column.key}_std"] = mean, std
            out.append(record)
    return out


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


def _bracket_range(result: Mapping[str, Any], name: str) -> tuple[float | None, float | None]:
    """The lowest and highest value of measure ``name`` over its search's last bracket (the measure at
    the bracket's two ends and at the searched scale; ``measures.json`` ``normalized_bracket``), or
    ``(None, None)`` where an end is open (a saturated search) or the record has no bracket."""
    ends = result.get("normalized_bracket", {}).get(name)
    if ends is None or None in ends:
        return None, None
    values = [result["normalized"][name], *ends]
    return min(values), max(values)


def summarize_measures(
    measures: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Paper Table 3: the eight normalized measures of one run per row and precision.

    Each measure comes with whether its search saturated (its scale is then a bound, not a value), the
    range of the measure over the search's last bracket (``<name>.low``, ``<name>.high``: the resolution of
    the bisection, :func:`_bracket_range`) and the run's curvature where it was measured (CSV only).
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
            record[f"{name}.low"], record[f"{name}.high"] = (
                _bracket_range(result, name) if ok else (None, None)
            )
        curvature = result.get("curvature", {})
        record["hessian_top_eigenvalue"] = curvature.get("top_eigenvalue", {}).get("value")
        record["hessian_trace"] = curvature.get("trace", {}).get("value")
        out.append(record)
    return out


def _regularizer_values(block: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of one regularizer result (:class:`qgen.regularizer.RegularizerResult`) of a record."""
    expected, taylor = block.get("expected") or {}, block.get("taylor") or {}
    return {
        "r_realized": block.get("value"),
        "r_expected": expected.get("value"),
        "r_expected_se": expected.get("std_error"),
        "taylor_output_error": taylor.get("output_relative_error"),
        "loss_change": taylor.get("loss_change"),
        "loss_first_order": taylor.get("loss_first_order"),
        "loss_second_order": taylor.get("loss_second_order"),
    }


def summarize_regularizer(
    measures: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Beyond the paper, ``R`` of eq. 7 of one run per row and precision (``measures.json`` ``regularizer``).

    A quantized run gives one record at its own bit width (its realized noise and the uniform-noise
    expectation with its learned steps); an FP32 run gives one record without noise (``R = 0``) and one
    per weight bit width with LSQ's initial step of its own weights (``at_initial_step``).
    """
    out = []
    for row, precision, result in one_run_per_precision(measures, rows):
        record = _row_record(row, precision, result)
        block = result.get("regularizer") if result["status"] == "ok" else None
        realized, initial_steps = (
            ({}, {}) if block is None else (block["realized"], block.get("initial_step", {}))
        )
        out.append(
            record | {"bits": PRECISIONS[precision], "at_initial_step": False} | _regularizer_values(realized)
        )
        for bits, initial in initial_steps.items():
            out.append(record | {"bits": int(bits), "at_initial_step": True} | _regularizer_values(initial))
    return out


def _data_source(cell: Mapping[str, Any], run_id: str) -> str:
    """``official`` or ``generated``: the source of the corrupted data a ``corruptions.csv`` row records."""
    try:
        return json.loads(cell["data"])["source"]
    except (KeyError, TypeError, json.JSONDecodeError):
        raise QgenError(
            f"corruptions.csv of {run_id}: row {cell.get('corruption')}/{cell.get('severity')} records no "
            "data source ('data' column); rerun evaluate_corruptions"
        ) from None


def summarize_corruptions(
    results: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Paper Tables 4-6: one row per model, precision, corruption and severity, from ``corruptions.csv``.

    ``gap`` is the corrupted test loss minus the clean training loss (§4.3, App. C.2); ``n`` the number of
    corrupted images of the cell and ``source`` whether they are the official -C files or generated.
    """
    out = []
    for row, precision, result in one_run_per_precision(results, rows):
        record = _row_record(row, precision, result)
        run_id = RunSpec.from_dict(result["spec"]).run_id
        for cell in result["rows"]:
            out.append(
                record
                | {
                    "corruption": cell["corruption"],
                    "severity": cell["severity"],
                    "n": cell["n"],
                    "source": _data_source(cell, run_id),
                    "test_loss": cell["loss"],
                    "test_accuracy": cell["accuracy"],
                    "train_loss": cell["train_loss"],
                    "gap": cell["gap"],
                }
            )
    return out


# --------------------------------------------------------------------------------------------------------
# Formatting


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


MISSING = "--"
"""What a table prints for a missing value (its caption says so)."""


def fmt(value: float | None, digits: int) -> str:
    """A number with ``digits`` decimals and a typographic minus (``$-$``), or :data:`MISSING`."""
    if value is None:
        return MISSING
    text = f"{abs(value):.{digits}f}"
    return f"$-${text}" if value < 0 and float(text) != 0 else text


def fmt_sci(value: float | None, digits: int = 2) -> str:
    """A number in scientific notation for values that span decades (``$1.23\\cdot 10^{-5}$``), or
    :data:`MISSING`; zero prints as ``0``."""
    if value is None:
        return MISSING
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.{digits}e}".split("e")
    return f"${mantissa}\\cdot 10^{{{int(exponent)}}}$"  # a minus inside math is a minus sign


def fmt_mean_std(mean: float | None, std: float | None, digits: int) -> str:
    """``mean ± std`` in LaTeX (the ``± std`` a size smaller), or the mean alone where the std is undefined
    (a single run)."""
    if std is None:
        return fmt(mean, digits)
    return f"{fmt(mean, digits)}\\,{{\\scriptsize$\\pm$\\,{fmt(std, digits)}}}"


def fmt_count(n: int) -> str:
    """An integer with thin-space thousands separators (``50\\,000``)."""
    return f"{n:,}".replace(",", r"\,")


@dataclass(frozen=True)
class Span:
    """A header cell spanning table columns ``first`` to ``last`` (1-based, for ``\\cmidrule``)."""

    label: str
    first: int
    last: int

    @property
    def width(self) -> int:
        return self.last - self.first + 1


def spans(groups: Sequence[tuple[str, int]], first: int) -> list[Span]:
    """Consecutive spans of ``(label, columns)`` groups, the first starting at column ``first``."""
    out = []
    for label, width in groups:
        out.append(Span(label, first, first + width - 1))
        first += width
    return out


def _grouped(records: Sequence[Mapping[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[Any]]:
    """Records grouped by ``keys``, groups and members in the records' order."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


# --------------------------------------------------------------------------------------------------------
# Template contexts: summary rows -> what a template lays out


def gaps_context(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Template context of Table 1: a group per (dataset, model), a row per precision, the
    :data:`TABLE1_COLUMNS` as columns."""
    groups = [
        {"dataset": dataset, "model": model, "rows": members}
        for (dataset, model), members in _grouped(records, "dataset", "model").items()
    ]
    return {
        "columns": TABLE1_COLUMNS,
        "groups": groups,
        "diverged": any(r["n_diverged"] for r in records),
        "missing": any(r[f"{c.key}_mean"] is None for r in records for c in TABLE1_COLUMNS),
    }


TABLE2_PRECISIONS = tuple(reversed(PRECISIONS))
"""The paper's Table 2 lists the precisions from the lowest bit width up."""


def norms_context(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Template context of Table 2: a group per dataset, one row per model with a column per precision."""
    groups = []
    for (dataset,), members in _grouped(records, "dataset").items():
        rows = [
            {
                "model": model,
                "norm": {r["precision"]: r["weight_norm"] if r["status"] == "ok" else None for r in runs},
            }
            for (model,), runs in _grouped(members, "model").items()
        ]
        groups.append({"dataset": dataset, "rows": rows})
    precisions = [p for p in TABLE2_PRECISIONS if any(r["precision"] == p for r in records)]
    missing = any(row["norm"].get(p) is None for g in groups for row in g["rows"] for p in precisions)
    return {"groups": groups, "precisions": precisions, "missing": missing}


def measures_context(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Template context of Table 3: a group per (dataset, model), a row per precision, a column per
    measure under its family (:data:`qgen.vocab.MEASURE_FAMILIES`).

    As in the paper, the lowest value of each measure among a model's precisions is marked.
    """
    groups = []
    for (dataset, model), members in _grouped(records, "dataset", "model").items():
        lowest = {}
        for name in MEASURE_NAMES:
            values = [r[name] for r in members if r[name] is not None]
            lowest[name] = min(values) if values else None
        rows = [
            {
                "precision": r["precision"],
                "cells": [
                    {
                        "value": r[name],
                        "lowest": r[name] is not None and r[name] == lowest[name],
                        "saturated": r[f"{name}.saturated"] is True,
                    }
                    for name in MEASURE_NAMES
                ],
            }
            for r in members
        ]
        groups.append({"dataset": dataset, "model": model, "rows": rows})
    cells = [c for g in groups for row in g["rows"] for c in row["cells"]]
    families = [
        (label, sum(m.family == family for m in MEASURES)) for family, label in MEASURE_FAMILIES.items()
    ]
    return {
        "families": spans(families, first=2),
        "measures": [m.label for m in MEASURES],
        "groups": groups,
        "saturated": any(c["saturated"] for c in cells),
        "missing": any(c["value"] is None for c in cells),
    }


REFERENCE_PRECISION = next(iter(PRECISIONS))
"""The precision every corruption-table cell is compared with: full precision, the first of the vocabulary."""


def corruption_label(name: str) -> str:
    """How the paper prints a corruption (the registry's label); imported here so that the other tables'
    jobs need not load the corruption code (numpy, scipy, PIL)."""
    from qgen.corruptions import LABELS

    return LABELS.get(name, name)


def _gap_mark(value: float | None, reference: float | None) -> str | None:
    """``"better"`` if a gap is smaller than FP32's, ``"worse"`` if larger, else ``None``."""
    if value is None or reference is None or value == reference:
        return None
    return "better" if value < reference else "worse"


def _gap_cell(cells: Mapping[Any, Any], severity: int, precision: str) -> dict[str, Any]:
    row = cells.get((severity, precision))
    reference = cells.get((severity, REFERENCE_PRECISION))
    value = None if row is None else row["gap"]
    mark = (
        None
        if precision == REFERENCE_PRECISION
        else _gap_mark(value, None if reference is None else reference["gap"])
    )
    accuracy = None if row is None or row["test_accuracy"] is None else 100 * row["test_accuracy"]
    return {"value": value, "mark": mark, "accuracy": accuracy}


def _images(members: Sequence[Mapping[str, Any]]) -> str:
    """The corrupted images per cell of one model, e.g. ``10\\,000`` (or ``60--100`` where cells differ)."""
    counts = sorted({int(r["n"]) for r in members})
    return fmt_count(counts[0]) if len(counts) == 1 else f"{fmt_count(counts[0])}--{fmt_count(counts[-1])}"


def _corruption_data(records: Sequence[Mapping[str, Any]]) -> str:
    """Caption words naming the corrupted test sets of ``records``: official files or generated ones."""
    words = {
        "official": "the official corrupted {dataset} test set (Hendrycks \\& Dietterich, 2019)",
        "generated": (
            "-C style corruptions of the {dataset} test images generated by qgen (not an official -C set)"
        ),
    }
    pairs = dict.fromkeys((r["dataset"], r["source"]) for r in records)
    return "; ".join(words[source].format(dataset=latex_escape(dataset)) for dataset, source in pairs)


def _cells_by_corruption(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str], dict[Any, Any]]:
    """(corruption,) -> {(severity, precision): summary row}, in the records' order."""
    return {
        key: {(r["severity"], r["precision"]): r for r in members}
        for key, members in _grouped(records, "corruption").items()
    }


def _corruption_context(records: Sequence[Mapping[str, Any]], accuracy: bool) -> dict[str, Any]:
    """Template context of Tables 4-6: a group per model, a row per corruption and precision, a column per
    severity (with the accuracy beside the gap if ``accuracy``).

    Each gap cell is marked ``better``/``worse`` against the FP32 gap of the same model, corruption and
    severity, as the paper highlights them.
    """
    precisions = [p for p in PRECISIONS if any(r["precision"] == p for r in records)]
    severities = sorted({r["severity"] for r in records})
    models = []
    for (dataset, model), members in _grouped(records, "dataset", "model").items():
        rows = [
            {
                "corruption": corruption_label(corruption),
                "first": k == 0,
                "precision": precision,
                "cells": [_gap_cell(cells, s, precision) for s in severities],
            }
            for (corruption,), cells in _cells_by_corruption(members).items()
            for k, precision in enumerate(p for p in precisions if any(key[1] == p for key in cells))
        ]
        models.append({"dataset": dataset, "model": model, "images": _images(members), "rows": rows})
    if accuracy:
        severity_spans = spans([(f"Severity {s}", 2) for s in severities], first=3)
        columns = ["Gap", "Acc"] * len(severities)
    else:
        severity_spans = spans([("Severity", len(severities))], first=3)
        columns = [str(s) for s in severities]
    cells = [c for m in models for row in m["rows"] for c in row["cells"]]
    return {
        "reference": REFERENCE_PRECISION,
        "severities": severities,
        "corruptions": len({r["corruption"] for r in records}),
        "data": _corruption_data(records),
        "models": models,
        "accuracy": accuracy,
        "severity_spans": severity_spans,
        "columns": columns,
        "missing": any(c["value"] is None or (accuracy and c["accuracy"] is None) for c in cells),
    }


def corruption_gaps_context(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Template context of Tables 4 and 5: the gap per severity (:func:`_corruption_context`)."""
    return _corruption_context(records, accuracy=False)


def corruption_accuracy_context(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Template context of Table 6: gap and top-1 accuracy per severity (:func:`_corruption_context`)."""
    return _corruption_context(records, accuracy=True)


def regularizer_context(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Template context of the regularizer table: a group per (dataset, model), a row per precision (and,
    for FP32, per bit width at LSQ's initial step)."""
    groups = [
        {"dataset": dataset, "model": model, "rows": members}
        for (dataset, model), members in _grouped(records, "dataset", "model").items()
    ]
    return {
        "groups": groups,
        "initial_step": any(r["at_initial_step"] for r in records),
        "missing": any(r["r_expected"] is None and not r["at_initial_step"] and r["bits"] for r in records),
    }


def correlation_context(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Template context of the rank-correlation table: a row per measure of
    :data:`qgen.vocab.POPULATION_MEASURES` in two panels, tau over all models (with its interval), Psi and
    tau within each precision; psi per axis (the :func:`qgen.population.correlation_records` rows)."""
    cells = {(r["measure"], r["statistic"], r["group"]): r for r in records}
    measures = list(dict.fromkeys(r["measure"] for r in records))
    # An axis the sweep does not vary (one value: no group of two models) has no psi and no column.
    axes = list(dict.fromkeys(r["group"] for r in records if r["statistic"] == "psi" and r["groups"]))
    within = list(dict.fromkeys(r["group"] for r in records if r["group"].startswith("precision=")))
    rows = [
        {
            "label": cells[(m, "tau", "all")]["label"],
            "tau": cells[(m, "tau", "all")],
            "psi": [cells[(m, "psi", axis)] for axis in axes],
            "Psi": cells[(m, "Psi", "all")],
            "within": [cells[(m, "tau", group)] for group in within],
        }
        for m in measures
    ]
    n = cells[(measures[0], "tau", "all")]["n"] if measures else 0
    levels = {float(r["confidence"]) for r in records}
    if len(levels) > 1:
        raise QgenError(f"the correlation rows hold intervals at several levels {sorted(levels)}")
    return {
        "rows": rows,
        "confidence": f"{100 * levels.pop():g}" if levels else "",
        "axes": [axis.replace("_", " ") for axis in axes],
        "within": [PRECISION_LABELS[group.removeprefix("precision=")] for group in within],
        "models": n,
        "within_span": Span("$\\tau$ per precision", 4, 3 + len(within)),
        "psi_span": Span("$\\psi$ per axis", 2, 1 + len(axes)),
        "missing": any(
            c["value"] is None for r in rows for c in (r["tau"], r["Psi"], *r["psi"], *r["within"])
        ),
    }


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
    "regularizer": Table(summarize_regularizer, regularizer_context),
}
"""The tables built from their rows' runs; the rank-correlation table (``correlation``) is summarised by
:func:`qgen.population.correlation_records` and laid out by :func:`correlation_context`."""
CONTEXTS: dict[str, Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]] = {
    name: t.context for name, t in TABLES.items()
} | {"correlation": correlation_context}


def context(name: str) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]:
    """How table ``name``'s summary rows are laid out by its template."""
    try:
        return CONTEXTS[name]
    except KeyError:
        raise UnknownNameError(f"unknown table {name!r}; known: {sorted(CONTEXTS)}") from None


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
    env.filters |= {"esc": latex_escape, "fmt": fmt, "sci": fmt_sci}
    env.globals |= {
        "fmt_mean_std": fmt_mean_std,
        "precision_label": PRECISION_LABELS.get,
        "dash": MISSING,
        "source": source,
    }
    return env.get_template(path.name).render(**context)
