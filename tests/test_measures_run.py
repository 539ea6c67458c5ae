"""Measuring a trained run end to end: the measured network, the record, the CLI and Table 3."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qgen import files, tables
from qgen.errors import ProvenanceError
from qgen.measures.run import measure_run, measured_network
from qgen.norms import weight_vector
from qgen.runs import load_run

from helpers import tiny_spec, train_tiny

ROOT = Path(__file__).resolve().parents[1]
SPEC = tiny_spec(precision="int4", epochs=3, milestones=[2], n_train=300)
SETTINGS = {"depth": 4, "samples": 2, "ascent_steps": 2, "ascent_batch": 16}
OPTIONS = {"eval_subset": 200, "curvature_iters": 3, "curvature_samples": 2, "regularizer_samples": 3}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(SPEC, tmp_path_factory.mktemp("run"))


def test_quantized_choice_measures_the_folded_quantized_function(run_dir: Path) -> None:
    model, _ = load_run(run_dir, SPEC)
    network = measured_network(model, "quantized")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(network(x), model(x), atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    latent = measured_network(model, "latent")
    assert weight_vector(latent).numel() == weight_vector(network).numel()
    assert not torch.equal(weight_vector(latent), weight_vector(network))


def test_measure_record(run_dir: Path, tmp_path: Path) -> None:
    record = measure_run(run_dir, SPEC, run_dir.parent / "data", SETTINGS | OPTIONS, device="cpu")
    assert record["status"] == "ok" and record["run_id"] == SPEC.run_id and record["weights"] == "quantized"
    assert record["run_digest"] == SPEC.digest and record["measure_settings"] == SETTINGS | OPTIONS
    assert record["m"] == SPEC.n_train and record["evaluated_images"] == 200 and record["eval_subset"] == 200
    assert record["folded_batchnorm"] == 7
    assert set(record["normalized"]) == set(tables.MEASURE_NAMES)
    assert (
        record["curvature"]["trace"]["samples"] == 2
        and record["curvature"]["top_eigenvalue"]["iterations"] <= 3
    )
    realized = record["regularizer"]["realized"]
    assert (
        realized["value"] > 0
        and realized["expected"]["samples"] == 3
        and realized["direction"] == "w_hat - w"
    )
    assert realized["samples"] == 200  # the evaluation subset
    files.write_json(tmp_path / "measures.json", record)
    assert files.read_json(tmp_path / "measures.json")["normalized"] == record["normalized"]


def test_an_fp32_run_has_no_realized_noise_and_the_regularizer_each_width_would_add(tmp_path: Path) -> None:
    fp32 = dataclasses.replace(SPEC, precision="fp32")
    run_dir = train_tiny(fp32, tmp_path)
    record = measure_run(
        run_dir, fp32, run_dir.parent / "data", SETTINGS | OPTIONS | {"curvature": False}, device="cpu"
    )
    regularizer = record["regularizer"]
    assert regularizer["realized"] == {"value": 0.0}
    widths = regularizer["initial_step"]
    assert list(widths) == ["8", "4", "2"]
    # LSQ's initial step is 2 mean|w| / sqrt(Q_P) in every layer, and one seed draws the same noise shape:
    # the expected R scales as 1 / Q_P (127, 7, 1).
    assert widths["4"]["expected"]["value"] / widths["8"]["expected"]["value"] == pytest.approx(
        127 / 7, rel=1e-6
    )
    assert widths["2"]["expected"]["value"] / widths["4"]["expected"]["value"] == pytest.approx(7, rel=1e-6)


def test_diverged_run_is_recorded_without_values(run_dir: Path, tmp_path: Path) -> None:
    diverged = tmp_path / "diverged"
    shutil.copytree(run_dir, diverged)
    metrics = files.read_json(diverged / "metrics.json") | {"status": "diverged"}
    files.write_json(diverged / "metrics.json", metrics)
    record = measure_run(diverged, SPEC, run_dir.parent / "data", SETTINGS, device="cpu")
    assert record["status"] == "diverged" and "normalized" not in record


def test_cli_writes_measures_json_and_rejects_unknown_settings(run_dir: Path, tmp_path: Path) -> None:
    base = [
        sys.executable,
        "-m",
        "qgen.cli",
        "measure",
        "--run-dir",
        str(run_dir),
        "--spec",
        SPEC.to_json(),
        "--data-root",
        str(run_dir.parent / "data"),
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    settings = json.dumps(SETTINGS | OPTIONS | {"curvature": False})
    proc = subprocess.run(
        [*base, "--settings", settings, "--out", str(tmp_path / "m.json")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "curvature" not in files.read_json(tmp_path / "m.json")
    bad = json.dumps({"sampels": 3})
    proc = subprocess.run(
        [*base, "--settings", bad, "--out", str(tmp_path / "bad.json")], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "sampels" in proc.stderr and not (tmp_path / "bad.json").exists()


def test_a_run_of_another_spec_is_refused_naming_the_file_and_keys(run_dir: Path, tmp_path: Path) -> None:
    other = dataclasses.replace(SPEC, seed=3)
    with pytest.raises(
        ProvenanceError, match=r"metrics.json was made from another run spec .*seed: 0 in the file, 3"
    ):
        measure_run(run_dir, other, run_dir.parent / "data", SETTINGS, device="cpu")
    # A model.pt copied in from another run is refused even when metrics.json matches.
    copied = tmp_path / "copied"
    shutil.copytree(run_dir, copied)
    other_metrics = files.read_json(copied / "metrics.json") | {"spec": other.to_dict()}
    files.write_json(copied / "metrics.json", other_metrics)
    with pytest.raises(ProvenanceError, match=r"model.pt was made from another run spec .*digest"):
        measure_run(copied, other, run_dir.parent / "data", SETTINGS, device="cpu")
