"""Tables: summaries against hand computation, CSV round trip, rendering, and pdflatex compilation."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from qgen import files, tables
from qgen.corruptions import CORRUPTIONS, SEVERITIES
from qgen.errors import QgenError
from qgen.experiments import expand_runs
from qgen.vocab import MEASURES, PAPER_PRECISIONS, POPULATION_MEASURES, PRECISIONS, Measure

from helpers import compile_latex, requires_pdflatex, tiny_spec

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
ONE_POINT = [{"experiment": "nin_toy", "model": "NiN (2x1)", "where": {"width": 1, "weight_decay": 0.0}}]


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
    summary = tables.summarize_norms(metrics, ONE_POINT)
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
    assert tables.fmt(-0.0304, 3) == "$-$0.030" and tables.fmt(-0.0004, 3) == "0.000"
    assert tables.fmt_mean_std(1.0, None, 2) == "1.00"
    assert tables.fmt_mean_std(-1.0, 0.25, 2) == r"$-$1.00\,{\scriptsize$\pm$\,0.25}"
    assert tables.fmt_count(50000) == r"50\,000" and tables.fmt_count(60) == "60"


def test_spans_are_consecutive_column_ranges() -> None:
    got = tables.spans([("a", 4), ("b", 1), ("c", 2)], first=3)
    assert [(s.label, s.first, s.last, s.width) for s in got] == [
        ("a", 3, 6, 4),
        ("b", 7, 7, 1),
        ("c", 8, 9, 2),
    ]


def rendered(tmp_path: Path, name: str, results: list[dict], rows: list[dict]) -> str:
    table = tables.table(name)
    files.write_csv(tmp_path / f"{name}.csv", table.summarize(results, rows))
    return tables.render(
        TEMPLATES / f"{name}.tex.j2", table.context(files.read_csv(tmp_path / f"{name}.csv"))
    )


def cells_of(line: str) -> list[str]:
    return [c.strip() for c in line.rstrip("\\ ").split("&")]


def caption_of(tex: str) -> str:
    return " ".join(tex[tex.index(r"\caption{") : tex.index(r"\label{")].split())


def test_table1_renders_the_summary_values(tmp_path: Path) -> None:
    metrics = fake_metrics(diverged={"nin_toy/int2/width2_sgd-lr0.1_wd0"})
    tex = rendered(tmp_path, "table1", metrics, [{"experiment": "nin_toy", "model": "NiN"}])
    summary = files.read_csv(tmp_path / "table1.csv")
    header = next(line for line in tex.splitlines() if line.startswith("Precision &"))
    assert cells_of(header) == ["Precision", "$n$", "div.", *(c.label for c in tables.TABLE1_COLUMNS)]
    assert r"\begin{tabular}{@{}lrr" + "r" * len(tables.TABLE1_COLUMNS) + "@{}}" in tex
    int2 = cells_of(next(line for line in tex.splitlines() if line.startswith("Int2 &")))
    assert int2[:3] == ["Int2", "3", "1"]  # 3 runs averaged, 1 diverged
    assert int2[-1] == tables.fmt_mean_std(summary[3]["gap_mean"], summary[3]["gap_std"], 3)
    assert r"\multicolumn{8}{@{}l}{\textit{Digits}, NiN} \\" in tex
    assert "div.: runs whose loss diverged" in caption_of(tex) and "--:" not in caption_of(tex)


def test_table1_without_divergence_has_no_div_column(tmp_path: Path) -> None:
    tex = rendered(tmp_path, "table1", fake_metrics(), [{"experiment": "nin_toy", "model": "NiN"}])
    fp32 = cells_of(next(line for line in tex.splitlines() if line.startswith("FP32 &")))
    assert fp32[1] == "4" and len(fp32) == 2 + len(tables.TABLE1_COLUMNS)
    assert "div." not in tex


def test_table2_pivots_precisions_into_columns_and_explains_the_dash(tmp_path: Path) -> None:
    metrics = fake_metrics(diverged={"nin_toy/int4/width1_sgd-lr0.1_wd0"})
    tex = rendered(tmp_path, "table2", metrics, ONE_POINT)
    norms = {
        m["spec"]["precision"]: m.get("weight_norm")
        for m in metrics
        if m["spec"]["model_args"]["width"] == 1 and m["spec"]["weight_decay"] == 0.0
    }
    expected_row = (
        f"Digits & NiN (2x1) & {norms['int2']:.3f} & -- & {norms['int8']:.3f} & {norms['fp32']:.3f} \\\\"
    )
    assert expected_row in tex
    assert "Dataset & Model & Int2 & Int4 & Int8 & FP32" in tex
    assert "--: no result (the run diverged or was not configured)" in caption_of(tex)


def fake_measures(precision: str, scale: float, saturated: bool, bracket: bool = True) -> dict:
    """A measures.json record: measure k is scale * (k + 1), its bracket ends 5% either side."""
    spec = tiny_spec(precision=precision)
    searches = {
        k: {"saturated": "upper" if saturated and k == "alpha" else None}
        for k in ("sigma", "sigma_mag", "alpha", "alpha_mag")
    }
    normalized = {name: scale * (i + 1) for i, name in enumerate(tables.MEASURE_NAMES)}
    record = {
        "spec": json.loads(spec.to_json()),
        "status": "ok",
        "normalized": normalized,
        "searches": searches,
    }
    if bracket:
        record["normalized_bracket"] = {
            m.name: [None, None] if saturated and m.search == "alpha" else [1.05 * v, 0.95 * v]
            for m, v in zip(MEASURES, normalized.values(), strict=True)
        }
    return record


MEASURE_ROWS = [{"experiment": "nin_digits", "model": "NiN (2x1)", "where": {}}]


def test_table3_summary_holds_the_range_of_each_measure_over_its_bracket() -> None:
    results = [fake_measures("fp32", 1.0, True), fake_measures("int8", 0.5, False, bracket=False)]
    fp32, int8 = tables.summarize_measures(results, MEASURE_ROWS)
    for k, m in enumerate(MEASURES):
        open_end = m.search == "alpha"  # saturated: that end bounds nothing
        expected = (
            (None, None) if open_end else (pytest.approx(0.95 * (k + 1)), pytest.approx(1.05 * (k + 1)))
        )
        assert (fp32[f"{m.name}.low"], fp32[f"{m.name}.high"]) == expected
        assert (int8[f"{m.name}.low"], int8[f"{m.name}.high"]) == (None, None)  # a record without brackets
        assert fp32[f"{m.name}.saturated"] is open_end


def test_table3_header_comes_from_the_vocabulary_and_marks_lowest_and_saturated(tmp_path: Path) -> None:
    results = [
        fake_measures("fp32", 1.0, True),
        fake_measures("int8", 0.5, False),
        fake_measures("int2", 2.0, False),
    ]
    tex = rendered(tmp_path, "table3", results, MEASURE_ROWS)
    assert r" & \multicolumn{4}{c}{PAC-Bayesian} & \multicolumn{4}{c}{Sharpness} \\" in tex
    assert r"\cmidrule(lr){2-5}\cmidrule(lr){6-9}" in tex
    assert " & Init & Orig & Mag-Init & Mag-Orig & Init & Orig & Mag-Init & Mag-Orig \\\\" in tex
    lines = {p: next(x for x in tex.splitlines() if x.startswith(f"{p} &")) for p in ("FP32", "Int8", "Int2")}
    assert lines["Int8"].count(r"\textbf{") == 8 and r"\textbf" not in lines["FP32"] + lines["Int2"]
    assert lines["FP32"].count(r"$^\dagger$") == 2
    assert "0.500" in lines["Int8"] and "16.000" in lines["Int2"]
    assert r"$^\dagger$: the scale search saturated" in caption_of(tex)


def test_a_measure_added_to_the_vocabulary_is_a_column_of_table3(tmp_path: Path, monkeypatch) -> None:
    """No column is counted by hand: a ninth measure (a new family) only needs its vocabulary entry."""
    extra = Measure("fisher", False, "init")
    record = fake_measures("fp32", 1.0, False)
    record["normalized"][extra.name] = 42.0
    record["searches"][extra.search] = {"saturated": None}
    monkeypatch.setattr(tables, "MEASURES", (*MEASURES, extra))
    monkeypatch.setattr(tables, "MEASURE_NAMES", (*tables.MEASURE_NAMES, extra.name))
    families = {"pacbayes": "PAC-Bayesian", "sharpness": "Sharpness", "fisher": "Fisher"}
    monkeypatch.setattr(tables, "MEASURE_FAMILIES", families)
    tex = rendered(tmp_path, "table3", [record], MEASURE_ROWS)
    assert r"\begin{tabular}{@{}l" + "r" * 9 + "@{}}" in tex
    assert r"\multicolumn{1}{c}{Fisher}" in tex and r"\cmidrule(lr){10-10}" in tex
    assert cells_of(next(x for x in tex.splitlines() if x.startswith("FP32 &")))[-1] == r"\textbf{42.000}"


@requires_pdflatex
@pytest.mark.parametrize("name", ["table1", "table2"])
def test_rendered_tables_compile_with_pdflatex(tmp_path: Path, name: str) -> None:
    rows = [{"experiment": "nin_toy", "model": "NiN_(2x1) & co", "where": {"width": 1, "weight_decay": 0.0}}]
    tex = rendered(tmp_path, name, fake_metrics(), rows)
    pdf = compile_latex(tex, tmp_path)
    assert pdf.read_bytes().startswith(b"%PDF")


def fake_corruption_results(source: str = "generated") -> tuple[list[dict], list[dict]]:
    """Per-run corruptions.csv contents for one grid point of CONFIG at every precision, with known gaps."""
    results = []
    data = json.dumps({"source": source, "seed": 1, "images": 10})
    for spec in expand_runs(CONFIG):
        if spec.model_args["width"] != 1 or spec.weight_decay != 0.0:
            continue
        shift = {"fp32": 0.0, "int8": -0.01, "int4": -0.02, "int2": 0.05}[spec.precision]
        rows = [
            {
                "corruption": c,
                "severity": s,
                "n": 10,
                "data": data,
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
    keys = ("experiment", "dataset", "model", "precision", "corruption", "severity", "n", "source")
    assert {k: first[k] for k in keys} == {
        "experiment": "nin_toy",
        "dataset": "Digits",
        "model": "NiN",
        "precision": "fp32",
        "corruption": "gaussian_noise",
        "severity": 1,
        "n": 10,
        "source": "generated",
    }
    assert first["gap"] == pytest.approx(first["test_loss"] - first["train_loss"])
    del results[1]["rows"][3]["data"]
    with pytest.raises(QgenError, match=r"corruptions.csv of nin_toy/int8/.* records no data source"):
        tables.summarize_corruptions(results, rows)


@pytest.mark.parametrize("name", ["table4", "table5"])
def test_gap_tables_mark_cells_against_fp32_and_name_the_data(tmp_path: Path, name: str) -> None:
    results, rows = fake_corruption_results()
    tex = rendered(tmp_path, name, results, rows)
    lines = tex.splitlines()
    fog = next(i for i, x in enumerate(lines) if x.startswith("Fog & FP32 &"))
    by_precision = [cells_of(x) for x in lines[fog : fog + 4]]
    assert [c[1] for c in by_precision] == ["FP32", "Int8", "Int4", "Int2"]
    assert [c[0] for c in by_precision] == ["Fog", "", "", ""]
    # Severity 1: gaps 0.69, 0.68, 0.67 and 0.74.
    assert [c[2] for c in by_precision] == [
        "0.690",
        r"\qgenbetter{0.680}",
        r"\qgenbetter{0.670}",
        r"\qgenworse{0.740}",
    ]
    assert all(len(c) == 2 + len(SEVERITIES) for c in by_precision)
    assert r"\multicolumn{7}{@{}l}{NiN ($n = 10$)} \\" in tex and r"\multicolumn{5}{c}{Severity}" in tex
    caption = caption_of(tex)
    assert "-C style corruptions of the Digits test images generated by qgen" in caption
    assert "official" not in caption.replace("not an official", "")
    assert r"\begin{longtable}" in tex and "landscape" not in tex


def test_official_corrupted_data_is_named_so(tmp_path: Path) -> None:
    results, rows = fake_corruption_results(source="official")
    caption = caption_of(rendered(tmp_path, "table5", results, rows))
    assert "the official corrupted Digits test set (Hendrycks \\& Dietterich, 2019)" in caption
    assert "generated" not in caption


def test_table6_lists_gap_and_accuracy_per_precision(tmp_path: Path) -> None:
    results, rows = fake_corruption_results()
    tex = rendered(tmp_path, "table6", results, rows)
    lines = tex.splitlines()
    fog = next(i for i, x in enumerate(lines) if x.startswith("Fog & FP32 &"))
    assert [cells_of(x)[1] for x in lines[fog : fog + 4]] == ["FP32", "Int8", "Int4", "Int2"]
    cells = cells_of(lines[fog + 3])[2:]
    assert cells[:2] == [r"\qgenworse{0.740}", "80.00"] and len(cells) == 10
    assert r"\multicolumn{2}{c}{Severity 5}" in tex and r"\cmidrule(lr){11-12}" in tex
    assert r"\begin{landscape}" in tex


# --------------------------------------------------------------------------------------------------------
# Every table fits its stated page, with the widest labels and numbers it can meet.


def fake_regularizer(precision: str, value: float) -> dict:
    """A measures.json record with a regularizer block: R = value, E R = 2 value (s.e. value / 10), output
    error value / 100; an FP32 record has R = 0 and, at b bits, E R = value * 2^(8 - b)."""

    def result(r: float) -> dict:
        taylor = {
            "output_relative_error": r / 100,
            "loss_change": -r,
            "loss_first_order": -2 * r,
            "loss_second_order": -1.5 * r,
        }
        return {"value": r, "expected": {"value": 2 * r, "std_error": r / 10}, "taylor": taylor}

    spec = tiny_spec(precision=precision)
    if precision == "fp32":
        block = {
            "realized": {"value": 0.0},
            "initial_step": {str(b): result(value * 2 ** (8 - b)) for b in (8, 4, 2)},
        }
    else:
        block = {"realized": result(value)}
    return {"spec": json.loads(spec.to_json()), "status": "ok", "regularizer": block}


def test_regularizer_summary_gives_each_model_and_fp32_at_each_bit_width() -> None:
    results = [fake_regularizer("fp32", 1e-4), fake_regularizer("int4", 3e-3), fake_regularizer("int2", 0.5)]
    rows = tables.summarize_regularizer(results, MEASURE_ROWS)
    got = {(r["precision"], r["bits"], r["at_initial_step"]): r for r in rows}
    assert list(got) == [
        ("fp32", None, False),
        ("fp32", 8, True),
        ("fp32", 4, True),
        ("fp32", 2, True),
        ("int4", 4, False),
        ("int2", 2, False),
    ]
    assert (
        got[("fp32", None, False)]["r_realized"] == 0.0 and got[("fp32", None, False)]["r_expected"] is None
    )
    assert got[("fp32", 2, True)]["r_expected"] == pytest.approx(2 * 1e-4 * 64)
    int2 = got[("int2", 2, False)]
    assert (int2["r_realized"], int2["r_expected"], int2["r_expected_se"]) == (0.5, 1.0, 0.05)
    assert (int2["taylor_output_error"], int2["loss_change"], int2["loss_second_order"]) == (
        0.005,
        -0.5,
        -0.75,
    )


def test_regularizer_table_prints_values_over_decades_in_scientific_notation(tmp_path: Path) -> None:
    assert tables.fmt_sci(1.2345e-5) == r"$1.23\cdot 10^{-5}$"
    assert tables.fmt_sci(-0.5, 1) == r"$-5.0\cdot 10^{-1}$"
    assert (tables.fmt_sci(0.0), tables.fmt_sci(None)) == ("0", tables.MISSING)
    results = [fake_regularizer("fp32", 1e-4), fake_regularizer("int2", 0.5)]
    tex = rendered(tmp_path, "regularizer", results, MEASURE_ROWS)
    line = next(x for x in tex.splitlines() if x.startswith("Int2 &"))
    assert cells_of(line)[:3] == [
        "Int2",
        r"$5.00\cdot 10^{-1}$",
        r"$1.00\cdot 10^{0}$\,{\scriptsize$\pm$\,$5.0\cdot 10^{-2}$}",
    ]
    assert next(x for x in tex.splitlines() if x.startswith("FP32 at 2 bits &"))
    fp32 = next(x for x in tex.splitlines() if x.startswith("FP32 &"))
    assert cells_of(fp32)[1:3] == ["0", "--"]
    assert "FP32 rows at $b$ bits" in caption_of(tex)


def correlation_rows(axes: int, precisions: int, value: float) -> list[dict]:
    """Rows of the correlation summary (qgen.population.correlation_records' columns) for every population
    measure, with ``axes`` psi axes and ``precisions`` within-precision taus, every statistic ``value``."""
    names = ["depth", "width", "optimizer", "lr_level", "weight_decay", "precision"][:axes]
    within = [f"precision={p}" for p in list(PRECISIONS)[:precisions]]
    stat = {"n": 243, "value": value, "std_error": 0.05, "ci_low": value - 0.1, "ci_high": value + 0.1}
    stat |= {"groups": 9, "confidence": 0.9}
    rows = []
    for measure, label in POPULATION_MEASURES.items():
        key = {"measure": measure, "label": label}
        rows.append(key | stat | {"statistic": "tau", "group": "all"})
        rows += [key | stat | {"statistic": "psi", "group": a} for a in names]
        rows.append(key | stat | {"statistic": "Psi", "group": "all", "ci_low": None, "ci_high": None})
        rows += [key | stat | {"statistic": "tau", "group": g} for g in within]
    return rows


def test_correlation_table_has_a_row_per_measure_and_a_column_per_axis_and_precision() -> None:
    records = correlation_rows(axes=5, precisions=4, value=0.25)
    records[1] = records[1] | {"value": None}  # psi of the first axis undefined for the first measure
    unvaried = {"statistic": "psi", "group": "seed", "value": None, "groups": 0}
    records += [r | unvaried for r in records if r["statistic"] == "psi" and r["group"] == "depth"]
    context = tables.correlation_context(records)
    assert [r["label"] for r in context["rows"]] == list(POPULATION_MEASURES.values())
    assert context["axes"] == ["depth", "width", "optimizer", "lr level", "weight decay"]
    assert context["within"] == ["FP32", "Int8", "Int4", "Int2"]
    assert (context["within_span"].first, context["within_span"].last) == (4, 7)
    assert (context["psi_span"].first, context["psi_span"].last) == (2, 6)
    assert context["models"] == 243 and context["missing"]
    tex = tables.render(TEMPLATES / "correlation.tex.j2", context)
    label = tables.latex_escape(context["rows"][0]["label"])
    top, bottom = [cells_of(x) for x in tex.splitlines() if x.startswith(label + " &")]
    assert len(top) == 1 + 2 + 4 and top[1].startswith("0.25 {\\tiny[0.15, 0.35]}")
    assert bottom == [label, tables.MISSING, "0.25", "0.25", "0.25", "0.25"]
    assert "its 90\\% jackknife interval" in tex and "$\\tau$ [90\\%]" in tex
    with pytest.raises(QgenError, match=r"intervals at several levels \[0.9, 0.95\]"):
        tables.correlation_context([*records, records[0] | {"confidence": 0.95}])


WIDE_MODELS = (("ImageNet-1K", "MobileNet-V2"), ("CIFAR-100", "NiN (12x12)"))


def wide_records(name: str) -> list[dict]:
    """Summary records of table ``name`` with the widest values its columns can meet: 3-digit losses with
    3-digit standard deviations, negative gaps, 3-digit measures all saturated, negative corruption gaps
    all marked, 5-digit image counts."""
    base = [
        {"experiment": "e", "dataset": d, "model": m, "precision": p, "status": "ok"}
        for d, m in WIDE_MODELS
        for p in PAPER_PRECISIONS
    ]
    if name == "table1":
        wide = {"n_runs": 243, "n_diverged": 12}
        for c in tables.TABLE1_COLUMNS:
            mean = 99.99 if c.digits == 2 else (-9.999 if c.key == "gap" else 9.999)
            wide |= {f"{c.key}_mean": mean, f"{c.key}_std": 10.99 if c.digits == 2 else 9.999}
        return [r | wide for r in base]
    if name == "table2":
        return [r | {"weight_norm": 1238.117} for r in base]
    if name == "regularizer":
        # R is a mean of squares (never negative); a loss change can be
        wide = {"r_realized": 1.234e-15, "r_expected": 1.234e-15, "r_expected_se": 9.9e-15}
        wide |= {"taylor_output_error": 0.999, "loss_change": -1.234e-15, "loss_first_order": -1.234e-15}
        initial = [r | {"bits": 8, "at_initial_step": True} for r in base if r["precision"] == "fp32"]
        return [
            r | {"bits": None, "at_initial_step": False, "loss_second_order": -1.234e-15} | wide
            for r in base + initial
        ]
    if name == "correlation":
        return correlation_rows(axes=6, precisions=4, value=-0.99)
    if name == "table3":
        return [
            r
            | {m.name: 888.888 if r["precision"] == "fp32" else 999.999 for m in MEASURES}
            | {f"{m.name}.saturated": True for m in MEASURES}
            for r in base
        ]
    return [
        r
        | {"corruption": c, "severity": s, "n": 50000, "source": "official", "test_accuracy": 0.9999}
        | {"gap": -8.888 if r["precision"] == "fp32" else -9.999}
        for r in base
        for c in CORRUPTIONS
        for s in SEVERITIES
    ]


@requires_pdflatex
@pytest.mark.parametrize("name", sorted(tables.CONTEXTS))
def test_every_table_fits_its_stated_page(tmp_path: Path, name: str) -> None:
    tex = tables.render(TEMPLATES / f"{name}.tex.j2", tables.context(name)(wide_records(name)))
    needs = re.search(r"% Needs \\usepackage\{([^}]*)\}", tex).group(1).split(",")
    compile_latex(tex, tmp_path, packages=tuple(p for p in needs if p != "booktabs"))
    log = (tmp_path / "doc.log").read_text()
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox.*", log)


@requires_pdflatex
def test_one_more_digit_would_overflow_table1(tmp_path: Path) -> None:
    """The check above can fail: ten times the widest means do not fit."""
    records = [
        r | {f"{c.key}_mean": 10 * r[f"{c.key}_mean"] for c in tables.TABLE1_COLUMNS}
        for r in wide_records("table1")
    ]
    tex = tables.render(TEMPLATES / "table1.tex.j2", tables.gaps_context(records))
    compile_latex(tex, tmp_path)
    assert "Overfull \\hbox" in (tmp_path / "doc.log").read_text()


@requires_pdflatex
@pytest.mark.parametrize("name", ["table4", "table5", "table6"])
def test_long_corruption_tables_compile(tmp_path: Path, name: str) -> None:
    results, rows = fake_corruption_results()
    tex = rendered(tmp_path, name, results, rows)
    pdf = compile_latex(tex, tmp_path, packages=("longtable", "pdflscape"))
    assert pdf.read_bytes().startswith(b"%PDF")
