"""The numbers of the report: one :class:`Value` per cell of a table or figure, and ours read from the
summary CSVs (:func:`values_of`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qgen.errors import QgenError
from qgen.vocab import MEASURES, PRECISION_LABELS

SOURCES = ("table1", "table2", "table3", "table4", "figure1", "figure2")
TITLES = {
    "table1": "Table 1: generalization gaps",
    "table2": "Table 2: weight norms",
    "table3": "Table 3: sharpness-based measures",
    "table4": "Table 4: generalization gap under corruptions",
    "figure1": "Figure 1: learned bin width per layer",
    "figure2": "Figure 2: loss surfaces",
}


@dataclass(frozen=True)
class Value:
    """One number of a table or figure: ``detail`` names the cell within a precision ("" for none),
    e.g. ``"gaussian_noise, severity 3"`` in Table 4 or a layer name in Figure 1."""

    source: str
    dataset: str
    model: str
    precision: str
    quantity: str
    detail: str
    value: float

    @property
    def key(self) -> tuple[str, str, str, str, str, str]:
        return (self.source, self.dataset, self.model, self.precision, self.quantity, self.detail)


def corruption_detail(corruption: str, severity: int) -> str:
    return f"{corruption}, severity {severity}"


def _values(
    source: str,
    rows: Iterable[Mapping[str, Any]],
    quantities: Callable[[Mapping[str, Any]], Mapping[str, Any]],
) -> list[Value]:
    """Values of the summary ``rows`` of ``source``; ``quantities`` maps a row to its named numbers."""
    out = []
    for row in rows:
        detail = (
            corruption_detail(row["corruption"], int(row["severity"]))
            if source == "table4"
            else str(row.get("layer", ""))
        )
        for quantity, number in quantities(row).items():
            if number is not None:
                out.append(
                    Value(
                        source,
                        row["dataset"],
                        row["model"],
                        row["precision"],
                        quantity,
                        detail,
                        float(number),
                    )
                )
    return out


def _ok(row: Mapping[str, Any]) -> bool:
    return row.get("status", "ok") == "ok"


# How each of our summary files becomes values: source -> row -> {quantity: number}.
SUMMARY_QUANTITIES: dict[str, Callable[[Mapping[str, Any]], Mapping[str, Any]]] = {
    "table1": lambda r: {
        q: r[f"{q}_mean"] for q in ("train_acc", "test_acc", "train_loss", "test_loss", "gap")
    },
    "table2": lambda r: {"weight_norm": r["weight_norm"] if _ok(r) else None},
    "table3": lambda r: {m.name: r[m.name] if _ok(r) else None for m in MEASURES},
    "table4": lambda r: {q: r.get(q) for q in ("gap", "test_loss", "test_accuracy", "train_loss")},
    "figure1": lambda r: {"step_size": r["step_size"]},
    "figure2": lambda r: {q: r[q] for q in ("centre_loss", "centre_accuracy", "mean_rise", "max_loss")},
}


def values_of(source: str, rows: Sequence[Mapping[str, Any]]) -> list[Value]:
    """Our results of ``source`` (a name of :data:`SOURCES`) from the rows of its summary CSV
    (:func:`qgen.summary.read_summary`)."""
    if source not in SUMMARY_QUANTITIES:
        raise QgenError(f"unknown result source {source!r}; expected one of {list(SOURCES)}")
    try:
        return _values(source, rows, SUMMARY_QUANTITIES[source])
    except KeyError as exc:
        raise QgenError(f"{source} summary: missing column {exc.args[0]!r}") from None


def diverged(source: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cells of a summary with diverged runs, e.g. ``"Table 1, Digits NiN Int2: 2 of 2 runs diverged"``,
    so that a model whose every run diverged is listed rather than silently absent."""
    title = TITLES[source].split(":")[0]
    out = []
    for row in rows:
        where = f"{title}, {row['dataset']} {row['model']} {PRECISION_LABELS[row['precision']]}"
        if row.get("n_diverged"):
            out.append(f"{where}: {row['n_diverged']} of {row['n_runs']} runs diverged")
        elif row.get("status") not in (None, "ok"):
            out.append(f"{where}: the run's status is {row['status']}")
    return list(dict.fromkeys(out))
