"""The transcribed paper tables: their shape, spot-checked cells, and the arithmetic of Table 1."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

from qgen import tables
from qgen.corruptions import CORRUPTIONS
from qgen.report.paper import PaperCell, read_paper_table, table1_arithmetic
from qgen.vocab import PRECISIONS

PAPER = Path(__file__).resolve().parents[1] / "workflow" / "resources" / "paper"


def paper(table: str) -> list[PaperCell]:
    return read_paper_table(PAPER / f"{table}.csv")


@pytest.mark.parametrize(
    ("table", "groups", "quantities"),
    [
        ("table1", 5, {"train_acc", "test_acc", "train_loss", "test_loss", "gap"}),
        ("table2", 10, {"weight_norm"}),
        ("table3", 11, set(tables.MEASURE_NAMES)),
    ],
)
def test_transcribed_tables_1_to_3_have_the_papers_shape(table: str, groups: int, quantities: set) -> None:
    cells = paper(table)
    keys = {c.value.key for c in cells}
    assert len(keys) == len(cells) == groups * 4 * len(quantities)
    assert {c.value.quantity for c in cells} == quantities
    assert all(c.unit and c.row and c.column for c in cells)
    assert len({(c.value.dataset, c.value.model) for c in cells}) == groups


def test_transcribed_table4_is_3_models_15_corruptions_5_severities_4_precisions() -> None:
    with open(PAPER / "table4.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    combos = {(r["model"], r["corruption"], int(r["severity"]), r["precision"]) for r in rows}
    expected = set(
        itertools.product(("ResNet-18", "MobileNet-V2", "ResNet-50"), CORRUPTIONS, range(1, 6), PRECISIONS)
    )
    assert len(rows) == 900 and combos == expected
    assert {r["quantity"] for r in rows} == {"gap"} and {r["dataset"] for r in rows} == {"ImageNet-1K"}


@pytest.mark.parametrize(
    ("table", "dataset", "model", "precision", "quantity", "detail", "text"),
    [
        ("table1", "CIFAR-10", "NiN", "int2", "gap", "", "0.224"),
        ("table1", "ImageNet-1K", "ResNet-18", "fp32", "train_acc", "", "69.96"),
        ("table2", "CIFAR-10", "ResNet-50", "int4", "weight_norm", "", "238.117"),
        ("table3", "ImageNet-1K", "DeiT-T", "int2", "sharpness.mag.orig", "", "33.763"),
        ("table4", "ImageNet-1K", "MobileNet-V2", "int8", "gap", "brightness, severity 1", "0.05"),
        ("table4", "ImageNet-1K", "ResNet-50", "int2", "gap", "jpeg_compression, severity 5", "2.228"),
    ],
)
def test_spot_checked_cells_match_the_paper(table, dataset, model, precision, quantity, detail, text) -> None:
    by_key = {c.value.key: c for c in paper(table)}
    assert by_key[(table, dataset, model, precision, quantity, detail)].text == text


def test_table1_arithmetic_finds_the_two_inconsistent_gaps() -> None:
    problems = table1_arithmetic(paper("table1"))
    assert len(problems) == 2
    assert "CIFAR-100 NiN Int8" in problems[0] and "1.474" in problems[0]
    assert "CIFAR-100 NiN Int2" in problems[1]
