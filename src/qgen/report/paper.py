"""The paper's side: its tables as transcribed into ``workflow/resources/paper/table*.csv`` (one row per
published cell), its known problems (``notes.yaml``), and the arithmetic of its Table 1."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from qgen.errors import QgenError
from qgen.report.values import SOURCES, Value, corruption_detail
from qgen.vocab import PRECISION_LABELS, PRECISIONS

PAPER_COLUMNS = (
    "table",
    "dataset",
    "model",
    "precision",
    "quantity",
    "value",
    "unit",
    "paper_row",
    "paper_column",
)


@dataclass(frozen=True)
class PaperCell:
    """A published number: the value, its text as printed, its unit and where it stands in the paper."""

    value: Value
    text: str
    unit: str
    row: str
    column: str

    @property
    def decimals(self) -> int:
        return len(self.text.partition(".")[2])


def read_paper_table(path: Path | str) -> list[PaperCell]:
    """A transcribed paper table; every row must carry the columns of :data:`PAPER_COLUMNS`."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = sorted(set(PAPER_COLUMNS) - set(reader.fieldnames or ()))
        if missing:
            raise QgenError(f"{path}: missing column(s) {missing}; expected at least {list(PAPER_COLUMNS)}")
        rows = list(reader)
    cells = []
    for line, row in enumerate(rows, 2):
        if row["precision"] not in PRECISIONS or row["table"] not in SOURCES:
            raise QgenError(
                f"{path}:{line}: unknown table {row['table']!r} or precision {row['precision']!r}"
            )
        detail = corruption_detail(row["corruption"], int(row["severity"])) if "corruption" in row else ""
        try:
            number = float(row["value"])
        except ValueError:
            raise QgenError(f"{path}:{line}: value {row['value']!r} is not a number") from None
        value = Value(
            row["table"], row["dataset"], row["model"], row["precision"], row["quantity"], detail, number
        )
        cells.append(PaperCell(value, row["value"], row["unit"], row["paper_row"], row["paper_column"]))
    return cells


@dataclass(frozen=True)
class Note:
    """A known problem of the paper (notes.yaml), attached to tables and optionally one dataset/model."""

    text: str
    tables: tuple[str, ...] = ()
    dataset: str | None = None
    model: str | None = None

    @property
    def scoped(self) -> bool:
        """Whether the note is about one dataset and/or model rather than a whole table."""
        return self.dataset is not None or self.model is not None

    def on_table(self, source: str) -> bool:
        return source in self.tables and not self.scoped

    def on_group(self, source: str, dataset: str, model: str) -> bool:
        return (
            source in self.tables
            and self.scoped
            and self.dataset in (None, dataset)
            and self.model in (None, model)
        )


def read_notes(path: Path | str) -> list[Note]:
    entries = yaml.safe_load(Path(path).read_text())
    notes = []
    for i, entry in enumerate(entries):
        unknown = sorted(set(entry) - {"text", "tables", "dataset", "model"})
        if unknown or "text" not in entry:
            raise QgenError(f"{path}: entry {i} has unknown keys {unknown} or no 'text'")
        notes.append(
            Note(entry["text"], tuple(entry.get("tables", ())), entry.get("dataset"), entry.get("model"))
        )
    return notes


def table1_arithmetic(cells: Sequence[PaperCell]) -> list[str]:
    """Rows of the paper's Table 1 whose gap is not test loss - train loss up to the printed rounding."""
    by_row: dict[tuple[str, str, str], dict[str, PaperCell]] = {}
    for c in cells:
        if c.value.source == "table1":
            by_row.setdefault((c.value.dataset, c.value.model, c.value.precision), {})[c.value.quantity] = c
    problems = []
    for (dataset, model, precision), row in by_row.items():
        parts = [row[q] for q in ("gap", "test_loss", "train_loss")]
        tolerance = sum(0.5 * 10**-c.decimals for c in parts)
        test, train = row["test_loss"], row["train_loss"]
        computed = test.value.value - train.value.value
        if abs(computed - row["gap"].value.value) > tolerance + 1e-12:
            problems.append(
                f"Table 1, {dataset} {model} {PRECISION_LABELS[precision]}: Generalization "
                f"{row['gap'].text} but Test Loss - Train Loss = {test.text} - {train.text} = {computed:.3f}"
            )
    return problems
