"""Our summaries against the paper's cells."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from qgen import files
from qgen.errors import MissingColumnError
from qgen.report.claims import CLAIMS, INCONCLUSIVE, Verdict, evaluate
from qgen.report.compare import compare
from qgen.report.paper import read_paper_table
from qgen.report.values import diverged, values_of
from qgen.tables import TABLE1_COLUMNS
from qgen.vocab import MEASURES

MOSTLY_SMALLER = next(c for c in CLAIMS if c.name == "corrupted_gap_mostly_smaller")
PAPER = Path(__file__).resolve().parents[1] / "workflow" / "resources" / "paper"


def write(path: Path, rows: list[dict]) -> Path:
    files.write_csv(path, rows)
    return path


def table4_summary(tmp_path: Path) -> Path:
    """A hand-made results/summary/table4.csv in the corruption helper's contract (one row per cell)."""
    rows = []
    for precision, gap in (("fp32", 1.2), ("int8", 1.0), ("int4", 0.9), ("int2", 1.3)):
        for severity in (1, 2):
            rows.append(
                {
                    "experiment": "resnet18_imagenet",
                    "dataset": "ImageNet-1K",
                    "model": "ResNet-18",
                    "precision": precision,
                    "corruption": "gaussian_noise",
                    "severity": severity,
                    "test_loss": gap + 1.0,
                    "test_accuracy": 0.5,
                    "train_loss": 1.0,
                    "gap": gap * severity,
                }
            )
    return write(tmp_path / "table4.csv", rows)


def test_our_table4_meets_the_papers_cells_and_its_claims(tmp_path: Path) -> None:
    ours = values_of("table4", files.read_csv(table4_summary(tmp_path)))
    section = compare(read_paper_table(PAPER / "table4.csv"), ours, [], "table4")
    assert section["reproduced"] == 8 and section["cells"] == 900
    [group] = section["compared"]
    row = next(
        r for r in group.rows if r["detail"] == "gaussian_noise, severity 1" and r["precision"] == "FP32"
    )
    assert (row["paper"], row["ours"], row["difference"]) == ("1.067", "1.200", "+0.133")
    assert {v.uncertainty for v in ours} == {None}  # corruptions.csv holds no spread of the losses
    verdict = evaluate(MOSTLY_SMALLER, {"table4": ours})["ImageNet-1K ResNet-18"]
    assert verdict == Verdict(
        INCONCLUSIVE,
        "0 of 6 cells (0.0%) below FP32, 6 undecided; needs more than 50%; 8 value(s) without an "
        "uncertainty, so undecided (taken as exact: PASS)",
    )


def test_our_values_carry_the_uncertainty_of_their_source() -> None:
    table1 = {"dataset": "D", "model": "M", "precision": "fp32", "n_runs": 5, "n_diverged": 1}
    table1 |= {f"{c.key}_mean": 1.0 for c in TABLE1_COLUMNS} | {f"{c.key}_std": 0.4 for c in TABLE1_COLUMNS}
    gap = next(v for v in values_of("table1", [table1]) if v.quantity == "gap")
    assert gap.uncertainty == pytest.approx(0.4 / math.sqrt(4))  # 4 runs that did not diverge
    single = table1 | {"n_runs": 1, "n_diverged": 0} | {f"{c.key}_std": None for c in TABLE1_COLUMNS}
    assert {v.uncertainty for v in values_of("table1", [single])} == {None}
    old = {k: v for k, v in table1.items() if k != "n_diverged"}  # a summary of an older qgen
    with pytest.raises(MissingColumnError, match=r"table1 summary: missing column 'n_diverged'.*--forcerun"):
        values_of("table1", [old])
    table3 = {"dataset": "D", "model": "M", "precision": "int4", "status": "ok"}
    for m in MEASURES:
        table3 |= {m.name: 2.0, f"{m.name}.low": 1.9, f"{m.name}.high": 2.3}
    table3 |= {f"{MEASURES[0].name}.low": None}  # a saturated search: no bracket
    got = {v.quantity: v.uncertainty for v in values_of("table3", [table3])}
    assert got[MEASURES[0].name] is None
    assert got[MEASURES[1].name] == pytest.approx(0.4 / (2 * math.sqrt(3)))  # uniform over [1.9, 2.3]
    table2 = {"dataset": "D", "model": "M", "precision": "int4", "status": "ok", "weight_norm": 3.0}
    assert [v.uncertainty for v in values_of("table2", [table2])] == [None]


def test_regularizer_and_correlation_rows_become_values_with_their_uncertainty() -> None:
    base = {"dataset": "Digits", "model": "NiN", "status": "ok", "bits": 4, "loss_change": 0.1}
    numbers = {"r_realized": 0.02, "r_expected": 0.03, "r_expected_se": 0.001, "taylor_output_error": 0.2}
    rows = [
        base | numbers | {"precision": "int4", "at_initial_step": False},
        base | numbers | {"precision": "fp32", "at_initial_step": True},  # a counterfactual, not a model
        base
        | {"precision": "fp32", "at_initial_step": False, "r_realized": 0.0, "r_expected": None}
        | {"r_expected_se": None, "taylor_output_error": None},
    ]
    got = {(v.precision, v.quantity): (v.value, v.uncertainty) for v in values_of("regularizer", rows)}
    assert got == {
        ("int4", "r_realized"): (0.02, None),
        ("int4", "r_expected"): (0.03, 0.001),
        ("int4", "taylor_output_error"): (0.2, 0.0),
        ("fp32", "r_realized"): (0.0, None),
    }
    tau = {"measure": "norm.w", "label": "||W||", "statistic": "tau", "group": "precision=int4", "value": 0.3}
    (value,) = values_of("correlation", [tau | {"std_error": 0.1}])
    assert (value.dataset, value.model, value.quantity, value.detail) == (
        "population",
        "",
        "norm.w",
        "tau precision=int4",
    )
    assert (value.value, value.uncertainty) == (0.3, 0.1)
    assert diverged("correlation", [tau]) == []
