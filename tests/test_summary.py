"""qgen.summary: results verified against their config slice, the provenance column, and its checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qgen import files, summary
from qgen.cli import main
from qgen.errors import ProvenanceError, QgenError
from qgen.experiments import RunSpec, digest_of, summary_config, summary_rows

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {
    "code_version": 1,
    "precisions": ["fp32", "int4"],
    "measures": {"depth": 4, "samples": 2},
    "corruptions": {"data": {"digits": {"source": "generated", "seed": 0, "images": 60}}},
    "experiments": [
        {
            "name": "nin_digits",
            "label": "NiN",
            "dataset": "digits",
            "model": "nin",
            "grid": {"model": {"width": [1, 2]}, "optimizer": {"sgd": [0.05]}, "weight_decay": [0.0001]},
            "epochs": 12,
            "batch_size": 64,
            "milestones": [8],
        }
    ],
    "tables": {
        "table1": [{"experiment": "nin_digits"}],
        "table2": [{"experiment": "nin_digits", "label": "NiN (2x2)", "where": {"width": 2}}],
        "table3": [{"experiment": "nin_digits", "where": {"width": 2}}],
        "table5": [{"experiment": "nin_digits", "where": {"width": 2}}],
    },
}


def write_metrics(root: Path, spec: RunSpec, norm: float) -> Path:
    path = root / spec.run_id / "metrics.json"
    metrics = {"spec": spec.to_dict(), "run_digest": spec.digest, "status": "ok", "weight_norm": norm}
    metrics |= {"train": {"loss": 0.1, "accuracy": 0.9}, "test": {"loss": 0.3, "accuracy": 0.8}}
    files.write_json(path, metrics | {"generalization_gap": 0.2})
    return path


def runs_of(name: str, config: dict = CONFIG) -> list[RunSpec]:
    return [run for row in summary_rows(summary_config(config, name)) for run in row.runs]


def test_a_summary_holds_its_runs_numbers_and_the_slice_digest(tmp_path: Path) -> None:
    for k, spec in enumerate(runs_of("table2")):
        write_metrics(tmp_path, spec, 10.0 + k)
    sliced = summary_config(CONFIG, "table2")
    records = summary.summarize(sliced, tmp_path, tmp_path)
    assert [(r["model"], r["precision"], r["weight_norm"]) for r in records] == [
        ("NiN (2x2)", "fp32", 10.0),
        ("NiN (2x2)", "int4", 11.0),
    ]
    assert {r["provenance"] for r in records} == {digest_of(sliced)}
    path = tmp_path / summary.summary_path("table2")
    files.write_csv(path, records)
    config = tmp_path / summary.config_path("table2")
    summary.write_config(config, sliced)
    assert summary.read_config(config, "table2") == sliced
    assert summary.read_summary(path, config, "table2") == records
    relabelled = json.loads(json.dumps(CONFIG))
    relabelled["tables"]["table2"][0]["label"] = "NiN (2x2), again"
    summary.write_config(config, summary_config(relabelled, "table2"))
    with pytest.raises(ProvenanceError, match="summarises other runs or settings than the config asks for"):
        summary.read_summary(path, config, "table2")
    with pytest.raises(QgenError, match="is not the config of summary 'table3'"):
        summary.read_summary(path, config, "table3")


def test_the_config_file_is_rewritten_only_when_the_slice_changes(tmp_path: Path) -> None:
    """Its time is what makes Snakemake rebuild a summary without its metadata (a copied results/)."""
    config = tmp_path / "table2.config.json"
    summary.write_config(config, summary_config(CONFIG, "table2"))
    os.utime(config, (1, 1))
    summary.write_config(config, summary_config(CONFIG, "table2"))
    assert config.stat().st_mtime == 1
    longer = json.loads(json.dumps(CONFIG))
    longer["experiments"][0]["epochs"] = 30
    summary.write_config(config, summary_config(longer, "table2"))
    assert config.stat().st_mtime > 1 and json.loads(config.read_text())["experiments"][0]["epochs"] == 30


def test_stale_runs_are_all_listed_with_one_command_that_rebuilds_them(tmp_path: Path) -> None:
    """Issue 10, case 7 without Snakemake's metadata: results of an older spec are refused, all at once."""
    for spec in runs_of("table1"):
        write_metrics(tmp_path, spec, 1.0)
    longer = json.loads(json.dumps(CONFIG))
    longer["experiments"][0]["epochs"] = 30
    with pytest.raises(ProvenanceError) as error:
        summary.summarize(summary_config(longer, "table1"), tmp_path, tmp_path)
    message = str(error.value)
    assert message.startswith("4 of the 4 results table1 needs were made from other specs or settings")
    assert "epochs: 12 in the file, 30 in the config" in message
    assert "snakemake --forcerun train <target>" in message


def test_measures_of_other_settings_are_refused(tmp_path: Path) -> None:
    for spec in runs_of("table3"):
        write_metrics(tmp_path, spec, 1.0)
        record = {"spec": spec.to_dict(), "status": "ok", "measure_settings": {"depth": 8, "samples": 2}}
        files.write_json(tmp_path / spec.run_id / "measures.json", record)
    with pytest.raises(
        ProvenanceError, match=r"measures.json was made from another measure settings .*depth: 8"
    ):
        summary.summarize(summary_config(CONFIG, "table3"), tmp_path, tmp_path)
    with pytest.raises(ProvenanceError, match="snakemake --forcerun measure"):
        summary.summarize(summary_config(CONFIG, "table3"), tmp_path, tmp_path)


def test_corruption_results_of_other_data_or_another_run_are_refused(tmp_path: Path) -> None:
    runs = runs_of("table5")
    data = {"source": "generated", "seed": 1, "images": 60}
    for spec in runs:
        row = {"run_id": spec.run_id, "run_digest": spec.digest, "data": json.dumps(data), "status": "ok"}
        files.write_csv(tmp_path / spec.run_id / "corruptions.csv", [row])
    with pytest.raises(
        ProvenanceError, match=r"corrupted digits data .*seed: 1 in the file, 0 in the config"
    ):
        summary.summarize(summary_config(CONFIG, "table5"), tmp_path, tmp_path)
    row = {
        "run_id": runs[0].run_id,
        "run_digest": "f" * 64,
        "data": json.dumps(CONFIG["corruptions"]["data"]),
    }
    files.write_csv(tmp_path / runs[0].run_id / "corruptions.csv", [row | {"status": "ok"}])
    with pytest.raises(ProvenanceError, match="was made from another run of"):
        summary.summarize(summary_config(CONFIG, "table5"), tmp_path, tmp_path)


def test_render_refuses_a_summary_of_another_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for spec in runs_of("table2"):
        write_metrics(tmp_path, spec, 3.0)
    sliced = summary_config(CONFIG, "table2")
    csv_path = tmp_path / "table2.csv"
    files.write_csv(csv_path, summary.summarize(sliced, tmp_path, tmp_path))
    other = json.loads(json.dumps(CONFIG))
    other["tables"]["table2"][0]["where"]["width"] = 1
    summary.write_config(tmp_path / "other.json", summary_config(other, "table2"))
    summary.write_config(tmp_path / "table2.config.json", sliced)
    template = str(ROOT / "workflow" / "templates" / "table2.tex.j2")
    out = tmp_path / "table2.tex"
    argv = ["render", "table2", "--csv", str(csv_path), "--template", template, "--out", str(out)]
    assert main([*argv, "--config", str(tmp_path / "other.json")]) == 1
    assert f"{csv_path} summarises other runs or settings than the config asks for" in caplog.text
    assert not out.exists()
    assert main([*argv, "--config", str(tmp_path / "table2.config.json")]) == 0
    assert f"config digest {digest_of(sliced)}" in out.read_text()
