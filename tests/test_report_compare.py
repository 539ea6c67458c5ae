"""Our summaries against the paper's cells."""

from __future__ import annotations

from pathlib import Path

from qgen import files
from qgen.report.claims import CLAIMS, PASS, Verdict, evaluate
from qgen.report.compare import compare
from qgen.report.paper import read_paper_table
from qgen.report.values import values_of

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
    verdict = evaluate(MOSTLY_SMALLER, {"table4": ours})["ImageNet-1K ResNet-18"]
    assert verdict == Verdict(PASS, "4 of 6 cells (66.7%) below FP32; needs more than 50%")
