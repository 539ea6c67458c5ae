"""The report command: Markdown and HTML from the paper's tables, our summaries and the notes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from qgen import files, summary
from qgen.cli import main
from qgen.corruptions import CORRUPTIONS
from qgen.experiments import digest_of
from qgen.report.render import _html_inline
from qgen.vocab import PRECISIONS

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "workflow" / "resources" / "paper"
TEMPLATES = [ROOT / "workflow" / "templates" / f"reproduction.{ext}.j2" for ext in ("md", "html")]


def config(name: str) -> dict:
    return {"summary": name, "rows": [], "experiments": [], "precisions": [], "settings": {}}


def write_summary(tmp_path: Path, name: str, rows: list[dict]) -> tuple[str, str]:
    """A summary CSV and its config slice; the ``--results`` and ``--configs`` arguments naming them."""
    summary.write_config(tmp_path / f"{name}.config.json", config(name))
    digest = digest_of(config(name))
    files.write_csv(tmp_path / f"{name}.csv", [row | {"provenance": digest} for row in rows])
    return f"{name}={tmp_path / f'{name}.csv'}", f"{name}={tmp_path / f'{name}.config.json'}"


def table1_rows(diverged: int = 0, gap_std: float = 0.01) -> list[dict]:
    """CIFAR-10 NiN, 243 runs per precision (``diverged`` of the Int2 ones diverged); gap 0.3, 0.2, 0.1, 0."""
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
        row |= {"gap_mean": 0.3 - i / 10, "gap_std": gap_std}
        rows.append(row)
    return [*rows, rows[0] | {"experiment": "nin_digits", "dataset": "Digits"}]


def table5_rows() -> list[dict]:
    """Digits NiN on generated -C data: every quantized gap below FP32's, by 0.01, on 60 images."""
    return [
        {
            "experiment": "nin_digits",
            "dataset": "Digits",
            "model": "NiN (2x1)",
            "precision": p,
            "status": "ok",
        }
        | {"corruption": c, "severity": s, "n": 60, "source": "generated"}
        | {"test_loss": 1.0, "test_accuracy": 0.5, "train_loss": 0.9, "gap": 0.1 - (p != "fp32") * 0.01}
        for p in PRECISIONS
        for c in CORRUPTIONS[:2]
        for s in (1, 2)
    ]


def section(md: str, claim: str) -> list[str]:
    """The table rows of one claim's section of the Markdown report."""
    start = md.index(f"(`{claim}`,")
    return [x for x in md[start : md.index("\n### ", start)].splitlines() if x.startswith("| ") and "**" in x]


def scope_row(md: str, claim: str, scope: str) -> str:
    return next(x for x in section(md, claim) if x.startswith(f"| {scope} |"))


def report(tmp_path: Path, *summaries: tuple[str, str], extra: tuple[str, ...] = ()) -> tuple[str, str]:
    out = [tmp_path / "reproduction.md", tmp_path / "reproduction.html"]
    argv = [
        "report",
        "--paper",
        *map(str, sorted(PAPER.glob("table*.csv"))),
        "--notes",
        str(PAPER / "notes.yaml"),
    ]
    argv += ["--results", *(r for r, _ in summaries), "--configs", *(c for _, c in summaries), *extra]
    argv += ["--templates", *map(str, TEMPLATES), "--out", *map(str, out)]
    assert main(argv) == 0
    md, html = (p.read_text() for p in out)
    return md, html


def test_report_cli_writes_markdown_and_html(tmp_path: Path) -> None:
    md, html = report(tmp_path, write_summary(tmp_path, "table1", table1_rows(diverged=2)))
    assert "Table 1: generalization gaps: 20 of 100 published cells reproduced." in md
    assert "| FP32 | train_acc | Train Acc | percent | 97.61 | 97.00 | -0.61 |" in md
    se, se_int2 = 0.01 / math.sqrt(243), 0.01 / math.sqrt(241)  # the standard error over the runs
    trend = (
        f"| CIFAR-10 NiN | **PASS** | gap: FP32 0.300 ± {se:.1g} → Int8 0.200 ± {se:.1g} → Int4 0.100 ± "
        f"{se:.1g} → Int2 0.000 ± {se_int2:.1g}; overall FP32 - Int2 = 0.300 ± "
        f"{math.hypot(se, se_int2):.1g}, beyond 2u |"
    )
    assert trend in md
    # The paper's numbers are exact; our Digits row copies CIFAR-10's FP32 row, so it is not published.
    assert "| CIFAR-10 NiN | **PASS** | " in md and "| PASS | gap: FP32 0.302 → Int8 0.301" in md
    assert (
        "overall FP32 - Int2 = 0.078 |" in md and "| scope | ours | evidence (ours) | paper (exact) |" in md
    )
    assert "Our results without a published counterpart: Digits NiN." in md
    table4 = "Table 4: generalization gap under corruptions (ImageNet-C): 0 of 900 published cells reproduced"
    assert f"{table4} (not run)." in md
    assert (
        "- Table 5: generalization gap under corruptions (CIFAR-100-C): not run (no published numbers)." in md
    )
    assert "VVTQ" in md and "243 is 972" in md and "1.474" in md
    assert '<td class="NOT-RUN"><b>NOT RUN</b></td>' in html and "<html" in html and "&lt;" not in md
    assert "- Table 1, CIFAR-10 NiN Int2: 2 of 243 runs diverged" in md
    assert "<li>Table 1, CIFAR-10 NiN Int2: 2 of 243 runs diverged</li>" in html
    assert "## How verdicts are decided" in md and "| Table 1: generalization gaps | the standard error" in md


def test_a_difference_within_the_noise_is_inconclusive_and_coverage_is_an_option(tmp_path: Path) -> None:
    """Gap steps of 0.1 with a standard error of 0.06 (std 1 over 243 runs): within 2u, beyond 1u."""
    md, _ = report(tmp_path, write_summary(tmp_path, "table1", table1_rows(gap_std=1.0)))
    assert "| **PASS** |" in scope_row(md, "int2_gap_below_fp32", "CIFAR-10 NiN")  # 0.3 against u = 0.09
    assert "| **PASS** |" in scope_row(md, "gap_shrinks", "CIFAR-10 NiN")
    md, _ = report(tmp_path, write_summary(tmp_path, "table1", table1_rows(gap_std=3.0)))
    trend = scope_row(md, "gap_shrinks", "CIFAR-10 NiN")
    assert "| **INCONCLUSIVE** |" in trend and "within 2u" in trend  # 0.3 against 2 x 0.27
    summaries = write_summary(tmp_path, "table1", table1_rows(gap_std=3.0))
    md, _ = report(tmp_path, summaries, extra=("--coverage", "1"))
    trend = scope_row(md, "gap_shrinks", "CIFAR-10 NiN")
    assert "| **PASS** |" in trend and "beyond 1u" in trend


def test_table5_claim_on_generated_data_without_uncertainty_is_inconclusive(tmp_path: Path) -> None:
    md, _ = report(tmp_path, write_summary(tmp_path, "table5", table5_rows()))
    rows = section(md, "cifar_corrupted_gap_all_smaller")
    assert [x.split(" | ")[0] for x in rows] == ["| Digits NiN (2x1)", "| all models"]
    for row in rows:
        assert (
            "| **INCONCLUSIVE** | 0 of 12 cells (0.0%) below FP32, 12 undecided; needs at least 100%" in row
        )
        assert "16 value(s) without an uncertainty, so undecided (taken as exact: PASS)" in row
    assert (
        "- Table 5: generalization gap under corruptions (CIFAR-100-C): built (no published numbers)." in md
    )
    assert "| Table 5: generalization gap under corruptions (CIFAR-100-C) | none: corruptions.csv" in md


def test_html_shows_no_literal_markdown(tmp_path: Path) -> None:
    _, html = report(tmp_path, write_summary(tmp_path, "table1", table1_rows()))
    assert (
        "<em>and</em>" in html
        and "<strong>PASS</strong>" in html
        and "<code>qgen report --coverage</code>" in html
    )
    text = re.sub(r"<[^>]+>", "", html)
    assert not re.search(r"\*\w[^*]*\*", text) and "`" not in text
    assert _html_inline("a <b> *c* `d`") == "a &lt;b&gt; <em>c</em> <code>d</code>"


def test_report_refuses_a_summary_of_another_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A table can never be rendered from a summary that is not exactly the configured one."""
    results, _ = write_summary(tmp_path, "table1", table1_rows())
    argv = ["report", "--paper", str(PAPER / "table1.csv"), "--notes", str(PAPER / "notes.yaml")]
    summary.write_config(tmp_path / "other.json", config("table1") | {"rows": [{"experiment": "x"}]})
    argv += ["--results", results, "--configs", f"table1={tmp_path / 'other.json'}"]
    argv += ["--templates", *map(str, TEMPLATES), "--out", str(tmp_path / "r.md"), str(tmp_path / "r.html")]
    assert main(argv) == 1
    assert (
        f"{tmp_path / 'table1.csv'} summarises other runs or settings than the config asks for" in caplog.text
    )
    assert not (tmp_path / "r.md").exists()
    assert main([arg.replace("table1=", "table9=") for arg in argv]) == 1
