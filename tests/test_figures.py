"""Figures: Figure 1's steps read from checkpoints, Figure 2's numbers, and valid PDF/PNG files."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from pypdf import PdfReader

from qgen import figures, files, quant, summary
from qgen.errors import ProvenanceError
from qgen.experiments import RunSpec, digest_of, summary_config, summary_rows
from qgen.landscape import Surface
from qgen.runs import build_model

from helpers import tiny_spec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def assert_valid_figure(pdf: Path, png: Path, min_width: int) -> None:
    assert pdf.read_bytes().startswith(b"%PDF")
    assert len(PdfReader(pdf).pages) == 1
    width, height = png_size(png)
    assert width >= min_width and height > 100


CONFIG = {
    "code_version": 1,
    "precisions": ["fp32", "int8", "int4", "int2"],
    "experiments": [
        {
            "name": "nin_digits",
            "label": "NiN",
            "dataset": "digits",
            "model": "nin",
            "grid": {
                "model": {"depth": [2], "width": [2]},
                "optimizer": {"adam": [0.003]},
                "weight_decay": [0],
            },
            "epochs": 6,
            "batch_size": 64,
            "milestones": [5],
        }
    ],
    "figures": {"figure1": [{"experiment": "nin_digits", "label": "NiN (2x2)"}]},
}


def fake_run(runs_root: Path, spec: RunSpec, seed: int) -> Path:
    """A run directory with an untrained model (its steps are the initial ones) and its metrics.json."""
    torch.manual_seed(seed)
    model = build_model(spec)
    run = runs_root / spec.run_id
    provenance = {"spec": spec.to_json(), "run_digest": spec.digest}
    files.save_torch(run / "model.pt", provenance | {"epoch": 1, "state_dict": model.state_dict()})
    files.write_json(run / "metrics.json", {"spec": spec.to_dict(), "status": "ok"})
    return run


def test_figure1_rows_are_the_checkpoints_steps_in_layer_order(tmp_path: Path) -> None:
    sliced = summary_config(CONFIG, "figure1")
    (row,) = summary_rows(sliced)
    assert [r.precision for r in row.runs] == ["int8", "int4", "int2"]  # FP32 has no steps
    runs = [fake_run(tmp_path, spec, seed) for seed, spec in enumerate(row.runs)]
    records = summary.summarize(sliced, tmp_path, tmp_path / "landscape")
    assert {r["precision"] for r in records} == {"int8", "int4", "int2"}
    assert {r["provenance"] for r in records} == {digest_of(sliced)}
    for run, spec in zip(runs, row.runs, strict=True):
        model = build_model(spec)
        model.load_state_dict(torch.load(run / "model.pt", weights_only=True)["state_dict"])
        mine = [
            (r["layer_index"], r["layer"], r["step_size"])
            for r in records
            if r["precision"] == spec.precision
        ]
        expected = list(quant.step_sizes(model).items())
        assert [(i, layer, step) for i, (layer, step) in enumerate(expected, 1)] == mine
        assert all(
            r["bits"] == quant.bits_of(spec.precision) for r in records if r["precision"] == spec.precision
        )
    # A model.pt of another run (here: another seed's spec) is refused, naming it.
    other = RunSpec.from_dict(row.runs[0].to_dict() | {"seed": 5})
    fake_run(tmp_path / "foreign", other, 0)
    (tmp_path / row.runs[0].run_id / "model.pt").write_bytes(
        (tmp_path / "foreign" / other.run_id / "model.pt").read_bytes()
    )
    with pytest.raises(
        ProvenanceError, match=f"{row.runs[0].run_id}/model.pt was made from another run spec"
    ):
        summary.summarize(sliced, tmp_path, tmp_path / "landscape")

    fig = figures.plot_step_sizes(records, [tmp_path / "f1.pdf", tmp_path / "f1.png"])
    assert_valid_figure(tmp_path / "f1.pdf", tmp_path / "f1.png", min_width=500)
    (ax,) = fig.axes
    layers = [r["layer"] for r in records if r["precision"] == "int8"]
    assert [t.get_text() for t in ax.get_xticklabels()] == layers  # each layer by its name
    assert_legend_covers_no_axes(fig)


def assert_legend_covers_no_axes(fig) -> None:
    """One legend, the figure's, drawn outside every panel (so over none of their points)."""
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    legend = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        assert not legend.overlaps(ax.get_window_extent()), "the legend overlaps a panel"


def step_records(model: str, layers: list[str]) -> list[dict]:
    return [
        {"dataset": "Digits", "model": model, "precision": p, "layer_index": i, "layer": name, "step_size": s}
        for p, s in (("int8", 0.01), ("int4", 0.04), ("int2", 0.2))
        for i, name in enumerate(layers, 1)
    ]


def test_figure1_panels_widen_with_their_layers_and_name_shortcuts(tmp_path: Path) -> None:
    """A ResNet-50-like panel of 49 layers against NiN's 2: its panel is wider, every layer named."""
    resnet = [f"stages.{s}.{b}.residual.{c}.conv" for s in range(4) for b in range(4) for c in range(3)]
    resnet.insert(6, "stages.1.0.shortcut.conv")
    records = step_records("NiN", ["blocks.0.conv2", "blocks.1.conv1"]) + step_records("ResNet-18", resnet)
    fig = figures.plot_step_sizes(records, [tmp_path / "f1.png"])
    nin, res = fig.axes
    assert [t.get_text() for t in res.get_xticklabels()][6] == "stages.1.0.shortcut.conv"
    assert res.get_window_extent().width > 1.5 * nin.get_window_extent().width
    assert_legend_covers_no_axes(fig)


def synthetic_surface(precision: str, curvature: float) -> Surface:
    x = np.linspace(-1, 1, 5)
    alpha, beta = np.meshgrid(x, x)
    loss = 0.1 + curvature * (alpha**2 + beta**2)
    spec = tiny_spec(precision=precision)
    return Surface(
        x=x,
        y=x,
        loss=loss,
        accuracy=np.ones_like(loss),
        centre_loss=0.1,
        centre_accuracy=1.0,
        seed=1,
        subset=np.arange(10),
        train_size=400,
        cosine=0.01,
        run_id=spec.run_id,
        run_digest=spec.digest,
        spec=spec.to_json(),
        settings=json.dumps({}),
        config=json.dumps({}),
    )


def test_figure2_numbers_and_files(tmp_path: Path) -> None:
    surfaces = [
        synthetic_surface(p, c) for p, c in [("fp32", 3.0), ("int8", 1.0), ("int4", 2.0), ("int2", 4.0)]
    ]
    record = figures.surface_record(surfaces[1], "NiN")
    # The mean of alpha^2 + beta^2 over a square grid is twice the mean of x^2 over one axis.
    grid = np.linspace(-1, 1, 5) ** 2
    assert record["mean_rise"] == pytest.approx(2 * grid.mean())
    assert record | {"mean_rise": 0} == record | {
        "experiment": "nin_digits",
        "dataset": "Digits",
        "model": "NiN",
        "precision": "int8",
        "points": 5,
        "span_min": -1.0,
        "span_max": 1.0,
        "images": 10,
        "centre_loss": 0.1,
        "max_loss": pytest.approx(2.1),
        "mean_rise": 0,
    }
    outputs = [tmp_path / "f2.pdf", tmp_path / "f2.png"]
    records = [figures.surface_record(s, "NiN (2x1)") for s in surfaces]
    fig = figures.plot_surfaces(surfaces, records, outputs, zmax=5.0)
    assert_valid_figure(*outputs, min_width=1500)
    assert (
        fig.get_suptitle()
        == "NiN (2x1) on Digits: training loss over 10 of the 400 training images (a fixed subset)"
    )
    panels, contours, colorbar = fig.axes[0::2][:4], fig.axes[1::2][:4], fig.axes[-1]
    assert [ax.get_title() for ax in panels][1] == "Int8\ncentre loss 0.100 (10 images)"
    assert {ax.get_zlabel() for ax in panels} == {"training loss"}
    ticks = colorbar.get_yticks()
    assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)  # round: 1, 2, 3, 4, 5 on [0.1, 5]
    assert colorbar.get_ylabel() == "training loss" and len(contours) == 4
    with pytest.raises(ValueError, match="empty z-range"):
        figures.plot_surfaces(surfaces, records, outputs, zmax=0.05)


def test_figure2_on_the_whole_training_set_says_so() -> None:
    surface = synthetic_surface("fp32", 1.0)
    whole = dataclasses.replace(surface, subset=np.arange(400))
    assert figures.evaluation_set(whole) == "all 400 training images"
    assert figures.evaluation_set(surface) == "10 of the 400 training images (a fixed subset)"
