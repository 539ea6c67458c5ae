"""Paper figures: Figure 1 (learned LSQ bin width per layer) and Figure 2 (loss surfaces).

As with the tables, each figure is drawn from files only: Figure 1 from the CSV that
:func:`step_size_records` produces from the trained checkpoints, Figure 2 from the ``.npz`` surfaces of
:mod:`qgen.landscape` (its CSV of per-surface numbers is written beside it). Plots use matplotlib's
object API (no pyplot, so no global figure state) with seaborn styles applied as context managers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import cm
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from qgen import files, quant
from qgen.errors import QgenError
from qgen.experiments import RunSpec
from qgen.landscape import Surface
from qgen.tables import one_run_per_precision
from qgen.vocab import PRECISION_LABELS, PRECISIONS, dataset_facts

log = logging.getLogger(__name__)

DPI = 200
PALETTE = "colorblind"


def step_size_records(
    results: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Figure 1 data: the learned step (bin width) of every quantized layer of each row's runs.

    ``results`` hold each run's ``spec``, ``status`` and ``step_sizes`` (read from its ``model.pt`` by
    :func:`qgen.summary.load_results`, :func:`qgen.quant.step_sizes_of_state`). ``rows`` are
    ``{"experiment", "model", "where"}`` as for tables. Diverged runs are left out, with a warning.
    """
    records = []
    for row, precision, result in one_run_per_precision(results, rows):
        bits = quant.bits_of(precision)
        run_id = RunSpec.from_dict(result["spec"]).run_id
        if result["status"] != "ok":
            log.warning("%s: status %r; left out of Figure 1", run_id, result["status"])
            continue
        steps = result["step_sizes"]
        if not steps:
            raise QgenError(f"{run_id}: no LSQ steps in the model.pt of a {precision} run")
        for index, (layer, step) in enumerate(steps.items(), 1):
            records.append(
                {
                    "experiment": row["experiment"],
                    "dataset": dataset_facts(result["spec"]["dataset"]).label,
                    "model": row["model"],
                    "precision": precision,
                    "bits": bits,
                    "layer_index": index,
                    "layer": layer,
                    "step_size": step,
                }
            )
    return records


MIN_PANEL_IN, INCH_PER_LAYER, LEGEND_IN = 3.6, 0.16, 0.9
"""Figure 1's panel widths (inches): at least ``MIN_PANEL_IN``, else ``INCH_PER_LAYER`` per layer."""
LAYER_FONT_PT = 6


def plot_step_sizes(records: Sequence[Mapping[str, Any]], outputs: Sequence[Path]) -> Figure:
    """Figure 1: one panel per (dataset, model), bin width against layer, one line per precision; the
    figure written to ``outputs`` is returned.

    Each layer is labelled by its name (rotated under its panel) and the panels widen with their layer
    count; one legend for all panels stands outside them, so it never covers a point.
    """
    frame = pd.DataFrame(records)
    frame["Precision"] = frame["precision"].map(PRECISION_LABELS)
    panels = list(dict.fromkeys(zip(frame["dataset"], frame["model"], strict=True)))
    order = [PRECISION_LABELS[p] for p in PRECISIONS if p in set(frame["precision"])]
    layers = {panel: _layers(frame, *panel) for panel in panels}
    widths = [max(MIN_PANEL_IN, INCH_PER_LAYER * len(names)) for names in layers.values()]
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig = Figure(figsize=(sum(widths) + LEGEND_IN, 4.2), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
        for ax, (dataset, model) in zip(axes, panels, strict=True):
            panel = frame[(frame["dataset"] == dataset) & (frame["model"] == model)]
            sns.lineplot(
                data=panel,
                x="layer_index",
                y="step_size",
                hue="Precision",
                hue_order=order,
                palette=PALETTE,
                marker="o",
                markersize=4,
                legend="auto" if ax is axes[0] else False,
                ax=ax,
            )
            ax.set_yscale("log")
            names = layers[(dataset, model)]
            ax.set_xticks(list(names), list(names.values()), rotation=90, fontsize=LAYER_FONT_PT)
            ax.set_title(f"{model} ({dataset})")
            ax.set_xlabel("quantized layer")
            ax.set_ylabel("bin width (learned step $s$)")
        handles, labels = axes[0].get_legend_handles_labels()
        axes[0].get_legend().remove()
        fig.legend(handles, labels, title="Precision", loc="outside right upper")
        _save(fig, outputs)
    return fig


def _layers(frame: pd.DataFrame, dataset: str, model: str) -> dict[int, str]:
    """Layer index -> layer name of one panel of Figure 1, in layer order."""
    rows = frame[(frame["dataset"] == dataset) & (frame["model"] == model)]
    return dict(sorted(zip(rows["layer_index"], rows["layer"], strict=True)))


def surface_record(surface: Surface, label: str) -> dict[str, Any]:
    """Figure 2's numbers of one surface: centre loss, the mean rise of the loss over the grid, etc.

    ``mean_rise`` (mean of ``L(alpha, beta) - L(0, 0)`` over the grid) is our one-number flatness
    summary of a surface: lower is flatter (docs/decisions.md).
    """
    spec = RunSpec.from_dict(json.loads(surface.spec))
    return {
        "experiment": spec.experiment,
        "dataset": dataset_facts(spec.dataset).label,
        "model": label,
        "precision": spec.precision,
        "run_id": surface.run_id,
        "run_digest": surface.run_digest,
        "points": len(surface.x),
        "span_min": float(surface.x[0]),
        "span_max": float(surface.x[-1]),
        "seed": surface.seed,
        "images": len(surface.subset),
        "train_size": surface.train_size,
        "centre_loss": surface.centre_loss,
        "centre_accuracy": surface.centre_accuracy,
        "mean_rise": float(np.mean(surface.loss - surface.centre_loss)),
        "max_loss": float(np.max(surface.loss)),
        "cosine": surface.cosine,
    }


def surface_records(
    results: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Figure 2 data: :func:`surface_record` of each row's surfaces (``result["surface"]``), by precision."""
    return [
        surface_record(result["surface"], row["model"])
        for row, _, result in one_run_per_precision(results, rows)
    ]


def evaluation_set(surface: Surface) -> str:
    """Which training images a surface's losses are over, e.g. ``"64 of the 1,437 training images (a
    fixed subset)"`` or ``"all 50,000 training images"``."""
    n = len(surface.subset)
    if n == surface.train_size:
        return f"all {n:,} training images"
    return f"{n:,} of the {surface.train_size:,} training images (a fixed subset)"


def plot_surfaces(
    surfaces: Sequence[Surface],
    records: Sequence[Mapping[str, Any]],
    outputs: Sequence[Path],
    zmax: float | None = None,
) -> Figure:
    """Figure 2: per surface a 3-D plot (top) and a filled contour plot (bottom); the figure written to
    ``outputs`` is returned.

    ``records`` are the surfaces' rows of the Figure 2 summary (:func:`surface_record`), in the same order:
    the title names their model, dataset and the training images the losses are over. All panels share one
    colour scale and one z-range, from the lowest loss to the highest (or to ``zmax``, above which the
    surface is clipped for display); each panel gives its centre loss, on how many images where they are a
    subset.
    """
    if not surfaces:
        raise QgenError("Figure 2 needs at least one surface")
    if len(records) != len(surfaces):
        raise QgenError(f"Figure 2: {len(surfaces)} surfaces but {len(records)} summary rows")
    low = min(float(s.loss.min()) for s in surfaces)
    high = max(float(s.loss.max()) for s in surfaces)
    if zmax is not None:
        high = min(high, zmax)
    if not high > low:
        raise QgenError(f"Figure 2: empty z-range [{low}, {high}]; is zmax below every loss?")
    norm = Normalize(low, high)
    levels = np.linspace(low, high, 21)
    cmap = cm.viridis
    ticks = [t for t in MaxNLocator(nbins=6).tick_values(low, high) if low <= t <= high]
    with sns.axes_style("white"), sns.plotting_context("paper"):
        fig = Figure(figsize=(3.4 * len(surfaces), 6.8), layout="constrained")
        fig.suptitle(_figure2_title(surfaces, records))
        for k, (surface, record) in enumerate(zip(surfaces, records, strict=True)):
            alpha, beta = np.meshgrid(surface.x, surface.y)
            z = np.minimum(surface.loss, high)
            subset = "" if len(surface.subset) == surface.train_size else f" ({len(surface.subset):,} images)"
            title = f"{PRECISION_LABELS[record['precision']]}\ncentre loss {surface.centre_loss:.3f}{subset}"
            ax3d = fig.add_subplot(2, len(surfaces), k + 1, projection="3d")
            ax3d.plot_surface(alpha, beta, z, cmap=cmap, norm=norm, linewidth=0, antialiased=True)
            ax3d.set_zlim(low, high)
            ax3d.set_zticks(ticks)
            ax3d.set_title(title)
            ax3d.set_xlabel(r"$\alpha$")
            ax3d.set_ylabel(r"$\beta$")
            ax3d.set_zlabel("training loss")
            ax = fig.add_subplot(2, len(surfaces), len(surfaces) + k + 1)
            filled = ax.contourf(alpha, beta, z, levels=levels, cmap=cmap, norm=norm)
            ax.contour(alpha, beta, z, levels=levels, colors="k", linewidths=0.3)
            ax.plot([0], [0], marker="+", color="w")
            ax.set_aspect("equal")
            ax.set_xlabel(r"$\alpha$")
            ax.set_ylabel(r"$\beta$")
        fig.colorbar(filled, ax=fig.axes, shrink=0.6, label="training loss", ticks=ticks)
        _save(fig, outputs)
    return fig


def _figure2_title(surfaces: Sequence[Surface], records: Sequence[Mapping[str, Any]]) -> str:
    """``ResNet-18 on CIFAR-10: training loss over 64 of the 50,000 training images (a fixed subset)``;
    models, datasets or evaluation sets that differ between panels are all named."""
    models = " / ".join(dict.fromkeys(f"{r['model']} on {r['dataset']}" for r in records))
    sets = " / ".join(dict.fromkeys(evaluation_set(s) for s in surfaces))
    return f"{models}: training loss over {sets}"


def _save(fig: Figure, outputs: Sequence[Path]) -> None:
    """Write ``fig`` to each path, the format following the suffix (``.pdf``, ``.png``), atomically."""
    for path in outputs:
        fmt = Path(path).suffix.lstrip(".")
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)
        log.info("wrote %s", path)
