"""The report command: Markdown and HTML from the paper's tables, our summaries and the notes."""

from __future__ import annotations

from pathlib import Path

import pytest

from qgen import files, summary
from qgen.cli import main
from qgen.experiments import digest_of
from qgen.vocab import PRECISIONS

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "workflow" / "resources" / "paper"
TEMPLATES = [ROOT / "workflow" / "templates" / f"reproduction.{ext}.j2" for ext in ("md", "html")]


def write(path: Path, rows: list[dict]) -> Path:
    files.write_csv(path, rows)
    return path


TABLE1_CONFIG = {"summary": "table1", "rows": [], "experiments": [], "precisions": [], "settings": {}}


def table1_summary(tmp_path: Path, diverged: int = 0) -> Path:
    rows = []
    for i, precision in enumerate(PRECISIONS):
        row = {"experiment": "nin_cifar10", "dataset": "CIFAR-10", "model": "NiN", "precision": precision}
        row |= {"n_runs": 243, "n_diverged": diverged if precision == "int2" else 0}
        for q, v in (
            ("train_acc", 97.0),
            ("test_acc", 88.0),
            ("train_loss", 0.1 + i / 10),
            ("test_loss", 0.4),
        ):
            row |= {f"{q}_mean": v, f"{q}_std": 0.01}
        row |= {"gap_mean": 0.3 - i / 10, "gap_std": 0.01}
        rows.append(row)
    rows.append(rows[0] | {"experiment": "nin_digits", "dataset": "Digits"})
    summary.write_config(tmp_path / "table1.config.json", TABLE1_CONFIG)
    return write(tmp_path / "table1.csv", [row | {"provenance": digest_of(TABLE1_CONFIG)} for row in rows])


def test_report_cli_writes_markdown_and_html(tmp_path: Path) -> None:
    csv_path = table1_summary(tmp_path, diverged=243)
    out = [tmp_path / "reproduction.md", tmp_path / "reproduction.html"]
    argv = [
        "report",
        "--paper",
        *map(str, sorted(PAPER.glob("table*.csv"))),
        "--notes",
        str(PAPER / "notes.yaml"),
    ]
    argv += ["--results", f"table1={csv_path}", "--configs", f"table1={tmp_path / 'table1.config.json'}"]
    argv += ["--templates", *map(str, TEMPLATES), "--out", *map(str, out)]
    assert main(argv) == 0
    md, html = (p.read_text() for p in out)
    assert "Table 1: generalization gaps: 20 of 100 published cells reproduced." in md
    assert "| FP32 | train_acc | Train Acc | percent | 97.61 | 97.00 | -0.61 |" in md
    assert "| CIFAR-10 NiN | **PASS** | gap: FP32 0.300 → Int8 0.200 → Int4 0.100 → Int2 0.000 |" in md
    assert "Our results without a published counterpart: Digits NiN." in md
    assert (
        "Table 4: generalization gap under corruptions: 0 of 900 published cells reproduced (not run)." in md
    )
    assert "VVTQ" in md and "243 is 972" in md and "1.474" in md
    assert '<td class="NOT-RUN"><b>NOT RUN</b></td>' in html and "<html" in html and "&lt;" not in md
    assert "- Table 1, CIFAR-10 NiN Int2: 243 of 243 runs diverged" in md
    assert "<li>Table 1, CIFAR-10 NiN Int2: 243 of 243 runs diverged</li>" in html
    assert main([arg.replace("table1=", "table9=") for arg in argv]) == 1


def test_report_refuses_a_summary_of_another_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A table can never be rendered from a summary that is not exactly the configured one."""
    csv_path = table1_summary(tmp_path)
    argv = ["report", "--paper", str(PAPER / "table1.csv"), "--notes", str(PAPER / "notes.yaml")]
    summary.write_config(tmp_path / "other.json", TABLE1_CONFIG | {"rows": [{"experiment": "x"}]})
    argv += ["--results", f"table1={csv_path}", "--configs", f"table1={tmp_path / 'other.json'}"]
    argv += ["--templates", *map(str, TEMPLATES), "--out", str(tmp_path / "r.md"), str(tmp_path / "r.html")]
    assert main(argv) == 1
    message = caplog.text
    assert f"{csv_path} summarises other runs or settings than the config asks for" in message
    assert not (tmp_path / "r.md").exists()
