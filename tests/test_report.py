"""The reproduction report: the transcribed paper tables, claim checks, cell matching and rendering."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

from qgen import files, report, summary, tables
from qgen.cli import main
from qgen.experiments import digest_of
from qgen.report import FAIL, NOT_RUN, PASS, Value

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "workflow" / "resources" / "paper"
TEMPLATES = [ROOT / "workflow" / "templates" / f"reproduction.{ext}.j2" for ext in ("md", "html")]
CORRUPTIONS = (
    *("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur"),
    *("zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate"),
    "jpeg_compression",
)
PRECISIONS = ("fp32", "int8", "int4", "int2")


def paper(table: str) -> list[report.PaperCell]:
    return report.read_paper_table(PAPER / f"{table}.csv")


def all_paper_cells() -> list[report.PaperCell]:
    return [c for t in ("table1", "table2", "table3", "table4") for c in paper(t)]


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
        ("table3", "ImageNet-1K", "DeiT-T", "w2a2", "sharpness.mag.orig", "", "33.763"),
        ("table4", "ImageNet-1K", "MobileNet-V2", "int8", "gap", "brightness, severity 1", "0.05"),
        ("table4", "ImageNet-1K", "ResNet-50", "int2", "gap", "jpeg_compression, severity 5", "2.228"),
    ],
)
def test_spot_checked_cells_match_the_paper(table, dataset, model, precision, quantity, detail, text) -> None:
    by_key = {c.value.key: c for c in paper(table)}
    assert by_key[(table, dataset, model, precision, quantity, detail)].text == text


def test_table1_arithmetic_finds_the_two_inconsistent_gaps() -> None:
    problems = report.table1_arithmetic(paper("table1"))
    assert len(problems) == 2
    assert "CIFAR-100 NiN Int8" in problems[0] and "1.474" in problems[0]
    assert "CIFAR-100 NiN Int2" in problems[1]


# --------------------------------------------------------------------------------------------------------
# Claim checks on hand-made tables


def values(source: str, quantity: str, by_precision: dict[str, float], detail: str = "", model: str = "M"):
    return [Value(source, "D", model, p, quantity, detail, v) for p, v in by_precision.items()]


def table4(below: int, model: str = "M", precisions=("int8", "int4", "int2")) -> list[Value]:
    """Five corruptions; the quantized gap is below FP32's in the first ``below`` of them."""
    out = []
    for i, corruption in enumerate(CORRUPTIONS[:5]):
        detail = report.corruption_detail(corruption, 3)
        out += values("table4", "gap", {"fp32": 1.0}, detail, model)
        out += values("table4", "gap", dict.fromkeys(precisions, 0.5 if i < below else 1.5), detail, model)
    return out


def figure1(ordered: bool) -> list[Value]:
    out = []
    for layer, base in (("a", 0.01), ("b", 0.02)):
        steps = {"int8": base, "int4": 4 * base, "int2": (16 if ordered else 2) * base}
        out += values("figure1", "step_size", steps, detail=layer)
    return out


INT8_INT4 = ("int8", "int4")


def mags(lowest: str) -> list[Value]:
    return [
        v
        for name in report.MAGNITUDE_AWARE
        for v in values("table3", name, {p: (1.0 if p == lowest else 2.0) for p in PRECISIONS})
    ]


CASES = {
    "gap_shrinks": (
        values("table1", "gap", {"fp32": 0.3, "int8": 0.3, "int4": 0.28, "int2": 0.22}),
        values("table1", "gap", {"fp32": 0.3, "int8": 0.2, "int4": 0.25, "int2": 0.22}),
    ),
    "int2_gap_below_fp32": (
        values("table1", "gap", {"fp32": 0.3, "int2": 0.2}),
        values("table1", "gap", {"fp32": 0.3, "int2": 0.3}),
    ),
    "train_loss_grows": (
        values("table1", "train_loss", {"fp32": 0.1, "int8": 0.1, "int4": 0.2, "int2": 0.4}),
        values("table1", "train_loss", {"fp32": 0.1, "int8": 0.1, "int4": 0.1, "int2": 0.1}),
    ),
    "int8_on_par": (
        values("table1", "test_acc", {"fp32": 88.0, "int8": 87.2}),
        values("table1", "test_acc", {"fp32": 88.0, "int8": 86.9}),
    ),
    "fp32_largest_norm": (
        values("table2", "weight_norm", {"fp32": 9.0, "int8": 5.0, "int4": 5.0, "int2": 4.0}),
        values("table2", "weight_norm", {"fp32": 9.0, "int8": 5.0, "int4": 9.0, "int2": 4.0}),
    ),
    "magnitude_aware_lowest_quantized": (mags("int4"), mags("fp32")),
    "corrupted_gap_mostly_smaller": (table4(3), table4(2)),
    "corrupted_gap_int8_int4": (
        table4(5, precisions=("int8", "int4")),
        table4(4, precisions=("int8", "int4")),
    ),
    "bin_width_grows": (figure1(True), figure1(False)),
    "landscape_quantized_flatter": (
        values("figure2", "mean_rise", {"fp32": 3.0, "int8": 1.0, "int4": 2.0, "int2": 2.5}),
        values("figure2", "mean_rise", {"fp32": 3.0, "int8": 1.0, "int4": 2.0, "int2": 3.5}),
    ),
    "landscape_int8_flattest": (
        values("figure2", "mean_rise", {"fp32": 3.0, "int8": 1.0, "int4": 2.0, "int2": 3.5}),
        values("figure2", "mean_rise", {"fp32": 3.0, "int8": 1.0, "int4": 2.0, "int2": 1.5}),
    ),
}
CLAIMS = {claim.name: claim for claim in report.CLAIMS}


def test_every_claim_has_cases() -> None:
    assert set(CASES) == set(CLAIMS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_claim_passes_fails_and_is_not_run_without_its_results(name: str) -> None:
    claim = CLAIMS[name]
    good, bad = CASES[name]
    assert {v.status for v in report.evaluate(claim, {claim.source: good}).values()} == {PASS}
    assert report.evaluate(claim, {claim.source: bad})["D M"].status == FAIL
    missing = report.evaluate(claim, {claim.source: None})
    assert [v.status for v in missing.values()] == [NOT_RUN]
    assert [v.status for v in report.evaluate(claim, {}).values()] == [NOT_RUN]


@pytest.mark.parametrize("name", ["gap_shrinks", "fp32_largest_norm", "landscape_int8_flattest"])
def test_a_missing_precision_is_not_run_naming_it(name: str) -> None:
    claim = CLAIMS[name]
    good, _ = CASES[name]
    verdict = report.evaluate(claim, {claim.source: [v for v in good if v.precision != "int4"]})["D M"]
    assert verdict.status == NOT_RUN and "Int4" in verdict.evidence


def test_corruption_claim_gives_fractions_per_model_and_overall() -> None:
    claim = CLAIMS["corrupted_gap_mostly_smaller"]
    verdicts = report.evaluate(claim, {"table4": table4(3, "A") + table4(1, "B")})
    assert verdicts["D A"] == report.Verdict(PASS, "9 of 15 cells (60.0%) below FP32; needs more than 50%")
    assert verdicts["D B"].status == FAIL and verdicts["all models"].evidence.startswith("12 of 30 cells")


# --------------------------------------------------------------------------------------------------------
# Our summaries against the paper's cells


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
    ours = report.values_of("table4", files.read_csv(table4_summary(tmp_path)))
    section = report.compare(paper("table4"), ours, [], "table4")
    assert section["reproduced"] == 8 and section["cells"] == 900
    [group] = section["compared"]
    row = next(
        r for r in group.rows if r["detail"] == "gaussian_noise, severity 1" and r["precision"] == "FP32"
    )
    assert (row["paper"], row["ours"], row["difference"]) == ("1.067", "1.200", "+0.133")
    verdict = report.evaluate(CLAIMS["corrupted_gap_mostly_smaller"], {"table4": ours})[
        "ImageNet-1K ResNet-18"
    ]
    assert verdict == report.Verdict(PASS, "4 of 6 cells (66.7%) below FP32; needs more than 50%")


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
