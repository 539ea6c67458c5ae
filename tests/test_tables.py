"""Tables: summaries against hand computation, CSV round trip, rendering, and pdflatex compilation."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from qgen import files, tables
from qgen.experiments import expand_runs

from helpers import compile_latex, requires_pdflatex

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "workflow" / "templates"

CONFIG = {
    "precisions": ["fp32", "int8", "int4", "int2"],
    "experiments": [
        {
            "name": "nin_toy",
            "label": "NiN",
            "dataset": "digits",
            "model": "nin",
            "grid": {"model": {"width": [1, 2]}, "optimizer": {"sgd": [0.1]}, "weight_decay": [0, 1e-4]},
            "epochs": 1,
            "batch_size": 4,
            "milestones": [1],
        }
    ],
}


def fake_metrics(seed: int = 0, diverged: set[str] | None = None) -> list[dict]:
    """Metrics for every run of CONFIG with distinct, known numbers."""
    out = []
    for i, spec in enumerate(expand_runs(CONFIG)):
        train_loss, test_loss = 0.1 + 0.01 * i + seed, 0.5 + 0.03 * i * i
        m = {
            "spec": json.loads(spec.to_json()),
            "status": "ok",
            "run_id": spec.run_id,
            "train": {"loss": train_loss, "accuracy": 0.9 - 0.001 * i},
            "test": {"loss": test_loss, "accuracy": 0.8 - 0.002 * i},
            "generalization_gap": test_loss - train_loss,
            "weight_norm": 10.0 + i,
        }
        if diverged and spec.run_id in diverged:
            m = {"spec": m["spec"], "status": "diverged", "run_id": spec.run_id}
        out.append(m)
    return out


def test_gap_summary_matches_hand_computation() -> None:
    metrics = fake_metrics(diverged={"nin_toy/int2/width2_sgd-lr0.1_wd0"})
    rows = tables.summarize_gaps(metrics, [{"experiment": "nin_toy", "model": "NiN"}])
    assert [r["precision"] for r in rows] == ["fp32", "int8", "int4", "int2"]
    fp32 = [m for m in metrics if m["spec"]["precision"] == "fp32"]
    gaps = [m["test"]["loss"] - m["train"]["loss"] for m in fp32]
    assert rows[0]["n_runs"] == 4 and rows[0]["n_diverged"] == 0 and rows[0]["dataset"] == "Digits"
    assert rows[0]["gap_mean"] == pytest.approx(statistics.mean(gaps))
    assert rows[0]["gap_std"] == pytest.approx(statistics.stdev(gaps))
    assert rows[0]["test_acc_mean"] == pytest.approx(
        100 * statistics.mean(m["test"]["accuracy"] for m in fp32)
    )
    int2 = rows[3]
    assert int2["n_runs"] == 4 and int2["n_diverged"] == 1
    ok = [m for m in metrics if m["spec"]["precision"] == "int2" and m["status"] == "ok"]
    assert int2["train_loss_mean"] == pytest.approx(statistics.mean(m["train"]["loss"] for m in ok))


def test_norm_summary_picks_one_point_per_row() -> None:
    metrics = fake_metrics()
    rows = [{"experiment": "nin_toy", "model": "NiN (x1)", "where": {"width": 1, "weight_decay": 0.0}}]
    summary = tables.summarize_norms(metrics, rows)
    expected = {
        m["spec"]["precision"]: m["weight_norm"]
        for m in metrics
        if m["spec"]["model_args"]["width"] == 1 and m["spec"]["weight_decay"] == 0.0
    }
    assert {r["precision"]: r["weight_norm"] for r in summary} == expected
    with pytest.raises(ValueError, match=r"matches 2 grid points .*narrow its 'where' to one"):
        tables.summarize_norms(metrics, [{"experiment": "nin_toy", "model": "NiN", "where": {"width": 1}}])


def test_csv_round_trip_keeps_numbers_and_missing_values(tmp_path: Path) -> None:
    records = [{"model": "NiN, 4x10", "n": 3, "x": 0.1 + 0.2, "y": None, "saturated": False}]
    files.write_csv(tmp_path / "t.csv", records)
    assert files.read_csv(tmp_path / "t.csv") == records
    with pytest.raises(ValueError, match="no rows"):
        files.write_csv(tmp_path / "empty.csv", [])


def test_latex_escape_and_formatting() -> None:
    assert tables.latex_escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"
    assert tables.fmt(None, 3) == "--" and tables.fmt(1.23456, 2) == "1.23"
    assert tables.fmt_mean_std(1.0, None, 2) == "1.00"
    assert tables.fmt_mean_std(1.0, 0.25, 2) == r"1.00 $\pm$ 0.25"


def rendered(tmp_path: Path, name: str, metrics: list[dict], rows: list[dict]) -> str:
    table = tables.table(name)
    files.write_csv(tmp_path / f"{name}.csv", table.summarize(metrics, rows))
    return tables.render(
        TEMPLATES / f"{name}.tex.j2", table.context(files.read_csv(tmp_path / f"{name}.csv"))
    )


def test_table1_renders_the_summary_values(tmp_path: Path) -> None:
    metrics = fake_metrics(diverged={"nin_toy/int2/width2_sgd-lr0.1_wd0"})
    tex = rendered(tmp_path, "table1", metrics, [{"experiment": "nin_toy", "model": "NiN"}])
    summary = files.read_csv(tmp_path / "table1.csv")
    int2_line = next(line for line in tex.splitlines() if "& Int2 &" in line)
    cells = [c.strip() for c in int2_line.rstrip("\\ ").split("&")]
    assert cells[3:5] == ["4", "1"]
    assert cells[-1] == tables.fmt_mean_std(summary[3]["gap_mean"], summary[3]["gap_std"], 3)
    assert tex.count(r"\midrule") == 1 and "Digits & NiN & FP32" in tex


def test_table2_pivots_precisions_into_columns(tmp_path: Path) -> None:
    metrics = fake_metrics(diverged={"nin_toy/int4/width1_sgd-lr0.1_wd0"})
    rows = [{"experiment": "nin_toy", "model": "NiN (2x1)", "where": {"width": 1, "weight_decay": 0.0}}]
    tex = rendered(tmp_path, "table2", metrics, rows)
    norms = {
        m["spec"]["precision"]: m.get("weight_norm")
        for m in metrics
        if m["spec"]["model_args"]["width"] == 1 and m["spec"]["weight_decay"] == 0.0
    }
    expected_row = (
        f"Digits & NiN (2x1) & {norms['int2']:.3f} & -- & {norms['int8']:.3f} & {norms['fp32']:.3f} \\\\"
    )
    assert expected_row in tex
    assert "Int2 & Int4 & Int8 & FP32" in tex


@requires_pdflatex
@pytest.mark.parametrize("name", ["table1", "table2"])
def test_rendered_tables_compile_with_pdflatex(tmp_path: Path, name: str) -> None:
    rows = [{"experiment": "nin_toy", "model": "NiN_(2x1) & co", "where": {"width": 1, "weight_decay": 0.0}}]
    tex = rendered(tmp_path, name, fake_metrics(), rows)
    pdf = compile_latex(tex, tmp_path)
    assert pdf.read_bytes().startswith(b"%PDF")


def fake_corruption_results() -> tuple[list[dict], list[dict]]:
    """Per-run corruptions.csv contents for one grid point of CONFIG at every precision, with known gaps."""
    from qgen.corruptions import CORRUPTIONS, SEVERITIES

    results = []
    for spec in expand_runs(CONFIG):
        if spec.model_args["width"] != 1 or spec.weight_decay != 0.0:
            continue
        shift = {"fp32": 0.0, "int8": -0.01, "int4": -0.02, "int2": 0.05}[spec.precision]
        rows = [
            {
                "corruption": c,
                "severity": s,
                "n": 10,
                "loss": 1.0 + 0.1 * s + 0.01 * k + shift,
                "accuracy": 0.9 - 0.1 * s,
                "train_loss": 0.5,
                "gap": 0.5 + 0.1 * s + 0.01 * k + shift,
            }
            for k, c in enumerate(CORRUPTIONS)
            for s in SEVERITIES
        ]
        results.append({"spec": json.loads(spec.to_json()), "status": "ok", "rows": rows})
    return results, [{"experiment": "nin_toy", "model": "NiN", "where": {"width": 1, "weight_decay": 0.0}}]


def test_corruption_summary_has_one_row_per_model_precision_corruption_and_severity() -> None:
    results, rows = fake_corruption_results()
    summary = tables.summarize_corruptions(results, rows)
    assert len(summary) == 4 * 15 * 5
    first = summary[0]
    assert {
        k: first[k] for k in ("experiment", "dataset", "model", "precision", "corruption", "severity")
    } == {
        "experiment": "nin_toy",
        "dataset": "Digits",
        "model": "NiN",
        "precision": "fp32",
        "corruption": "gaussian_noise",
        "severity": 1,
    }
    assert first["gap"] == pytest.approx(first["test_loss"] - first["train_loss"])


@pytest.mark.parametrize("name", ["table4", "table5"])
def test_gap_tables_mark_cells_against_fp32(tmp_path: Path, name: str) -> None:
    results, rows = fake_corruption_results()
    tex = rendered(tmp_path, name, results, rows)
    line = next(x for x in tex.splitlines() if "& Fog &" in x)
    cells = [c.strip() for c in line.rstrip("\\ ").split("&")][2:]
    fp32, int8, int4, int2 = cells[:4]  # severity 1: gaps 0.69, 0.68, 0.67 and 0.74
    assert (fp32, int8, int4, int2) == (
        "0.690",
        r"\qgenbetter{0.680}",
        r"\qgenbetter{0.670}",
        r"\qgenworse{0.740}",
    )
    assert len(cells) == 20 and line.startswith(" & Fog")
    assert "Severity 5" in tex and r"\begin{longtable}" in tex


def test_table6_lists_gap_and_accuracy_per_precision(tmp_path: Path) -> None:
    results, rows = fake_corruption_results()
    tex = rendered(tmp_path, "table6", results, rows)
    lines = tex.splitlines()
    fog = next(i for i, x in enumerate(lines) if "& Fog & FP32 &" in x)
    assert [x.split("&")[2].strip() for x in lines[fog : fog + 4]] == ["FP32", "Int8", "Int4", "Int2"]
    cells = [c.strip() for c in lines[fog + 3].rstrip("\\ ").split("&")][3:]
    assert cells[:2] == [r"\qgenworse{0.740}", "80.00"] and len(cells) == 10


@requires_pdflatex
@pytest.mark.parametrize("name", ["table4", "table5", "table6"])
def test_long_corruption_tables_compile(tmp_path: Path, name: str) -> None:
    results, rows = fake_corruption_results()
    tex = rendered(tmp_path, name, results, rows)
    pdf = compile_latex(tex, tmp_path, packages=("longtable", "pdflscape"))
    assert pdf.read_bytes().startswith(b"%PDF")
