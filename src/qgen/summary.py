"""Summaries: the verified results of a table's or figure's runs, written as one tidy CSV.

A summary is defined by a slice of the config (:func:`qgen.experiments.summary_config`: its rows, the
experiments they draw on, the global keys that enter run specs, and its settings section). The workflow
keeps that slice in ``results/summary/<name>.config.json`` (:func:`write_config`), rewritten whenever it
changes, so that Snakemake sees a newer input and rebuilds the summary and everything rendered from it
even without its own metadata (for instance in a copied ``results/``).

``qgen summarize <name> --config results/summary/<name>.config.json`` works out from the slice alone which
runs the summary shows, reads each run's result file and checks it was made from exactly that run spec
and those settings (:mod:`qgen.provenance`), then writes ``results/summary/<name>.csv``, one row per cell
with a ``provenance`` column holding the slice's digest. Everything rendered from a summary (LaTeX tables,
figures, the report) checks that digest against the config file (:func:`read_summary`), so a summary of
other runs or settings is never shown.

Torch-free except for Figure 1 and 2, whose results (checkpoints, surfaces) are read with torch/numpy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qgen import files
from qgen.errors import ProvenanceError, QgenError
from qgen.experiments import RunSpec, digest_of, summary_rows
from qgen.provenance import rebuild_hint, require_digest, require_same
from qgen.vocab import SUMMARIES

SUMMARY_DIR = "results/summary"
PROVENANCE = "provenance"
"""The column of every summary row that holds the digest of the config slice it summarises."""


def summary_path(name: str) -> str:
    """``results/summary/<name>.csv``."""
    return f"{SUMMARY_DIR}/{name}.csv"


def config_path(name: str) -> str:
    """``results/summary/<name>.config.json``: the config slice that defines summary ``name``."""
    return f"{SUMMARY_DIR}/{name}.config.json"


def write_config(path: Path | str, sliced: Mapping[str, Any]) -> None:
    """Write the config slice to ``path`` unless the file already holds exactly it (its time then stays,
    so Snakemake rebuilds only the summaries whose slice changed)."""
    text = json.dumps(sliced, indent=2, sort_keys=True) + "\n"
    path = Path(path)
    if not path.is_file() or path.read_text() != text:
        files.write_text(path, text)


def read_config(path: Path | str, name: str) -> dict[str, Any]:
    """The config slice of summary ``name`` from ``path`` (:func:`write_config`)."""
    sliced = files.read_json(path)
    if not isinstance(sliced, dict) or sliced.get("summary") != name:
        raise QgenError(f"{path} is not the config of summary {name!r}; rerun snakemake to rewrite it")
    return sliced


# --------------------------------------------------------------------------------------------------------
# Reading each run's result, verified against the slice


def _metrics(path: Path, run: RunSpec, settings: Any) -> dict[str, Any]:
    metrics = files.read_json(path)
    require_same(path, "run spec", metrics.get("spec"), run.to_dict())
    return metrics


def _measures(path: Path, run: RunSpec, settings: Any) -> dict[str, Any]:
    record = _metrics(path, run, settings)
    require_same(path, "measure settings", record.get("measure_settings"), settings)
    return record


def _corruptions(path: Path, run: RunSpec, settings: Any) -> dict[str, Any]:
    rows = files.read_csv(path)
    if not rows:
        raise QgenError(f"{path} has no rows; {rebuild_hint(path)}")
    expected = settings.get(run.dataset)
    for row in rows:
        require_digest(path, f"run of {run.run_id}", row.get("run_digest"), run.digest)
        require_same(path, f"corrupted {run.dataset} data", json.loads(row.get("data") or "null"), expected)
    return {"spec": run.to_dict(), "status": rows[0]["status"], "rows": rows}


def _checkpoint(path: Path, run: RunSpec, settings: Any) -> dict[str, Any]:
    from qgen.quant import step_sizes_of_state
    from qgen.runs import load_checkpoint

    metrics = _metrics(path.with_name("metrics.json"), run, settings)
    if metrics["status"] != "ok":
        return {"spec": metrics["spec"], "status": metrics["status"]}
    state = load_checkpoint(path, run)["state_dict"]
    return {"spec": metrics["spec"], "status": "ok", "step_sizes": step_sizes_of_state(state)}


def _surface(path: Path, run: RunSpec, settings: Any) -> dict[str, Any]:
    from qgen.landscape import Surface

    surface = Surface.load(path)
    require_digest(path, f"run of {run.run_id}", surface.run_digest, run.digest)
    require_same(path, "surface settings", json.loads(surface.config), settings)
    return {"spec": run.to_dict(), "status": "ok", "surface": surface}


Loader = Callable[[Path, RunSpec, Any], dict[str, Any]]
_LOADERS: dict[str, Loader] = {
    "metrics.json": _metrics,
    "measures.json": _measures,
    "corruptions.csv": _corruptions,
    "model.pt": _checkpoint,
    "landscape": _surface,
}


def result_path(result: str, run: RunSpec, runs_root: Path, landscape_root: Path) -> Path:
    """Where a run's ``result`` lives: in its run directory, or its surface under ``landscape_root``."""
    if result == "landscape":
        return landscape_root / f"{run.run_id}.npz"
    return runs_root / run.run_id / result


# The rule that makes each kind of result, for the remedy of a stale one.
_RULES = {
    "metrics.json": "train",
    "measures.json": "measure",
    "corruptions.csv": "evaluate_corruptions",
    "model.pt": "train",
    "landscape": "landscape",
}
MAX_LISTED = 5


def load_results(sliced: Mapping[str, Any], runs_root: Path, landscape_root: Path) -> list[dict[str, Any]]:
    """The result of every run of the summary ``sliced`` defines, each checked against the slice.

    Every stale result is found before failing: one :class:`~qgen.errors.ProvenanceError` lists them (the
    first few in full) with one command that rebuilds them all.
    """
    entry = SUMMARIES[sliced["summary"]]
    loader = _LOADERS[entry.result]
    results, stale = [], []
    for run in (run for row in summary_rows(sliced) for run in row.runs):
        path = result_path(entry.result, run, runs_root, landscape_root)
        try:
            results.append(loader(path, run, sliced["settings"]))
        except ProvenanceError as error:
            stale.append(error)
    if stale:
        listed = "\n  ".join(map(str, stale[:MAX_LISTED]))
        more = f"\n  ... and {len(stale) - MAX_LISTED} more" if len(stale) > MAX_LISTED else ""
        raise ProvenanceError(
            f"{len(stale)} of the {len(results) + len(stale)} results {sliced['summary']} needs were made "
            f"from other specs or settings than the config asks for:\n  {listed}{more}\n"
            f"Rebuild them all with `snakemake --forcerun {_RULES[entry.result]} <target>` (and your usual "
            "--profile): runs whose checkpoints already match the config only repeat their final evaluation."
        )
    return results


# --------------------------------------------------------------------------------------------------------
# Building and reading summaries


Summarizer = Callable[[Sequence[Mapping[str, Any]], Mapping[str, Any]], list[dict[str, Any]]]


def summarizer(name: str) -> Summarizer:
    """The function that turns summary ``name``'s results and config slice into its records."""
    if name in ("correlation", "figure3"):
        from qgen import population

        return population.correlation_records if name == "correlation" else population.figure3_records
    if name in ("figure1", "figure2"):
        from qgen import figures

        by_rows = figures.step_size_records if name == "figure1" else figures.surface_records
    else:
        from qgen import tables

        by_rows = tables.table(name).summarize
    return lambda results, sliced: by_rows(results, sliced["rows"])


def summarize(sliced: Mapping[str, Any], runs_root: Path, landscape_root: Path) -> list[dict[str, Any]]:
    """Summary records of the slice ``sliced``, each with the slice's digest in :data:`PROVENANCE`."""
    results = load_results(sliced, runs_root, landscape_root)
    records = summarizer(sliced["summary"])(results, sliced)
    digest = digest_of(dict(sliced))
    return [record | {PROVENANCE: digest} for record in records]


def read_summary(path: Path | str, config: Path | str, name: str) -> list[dict[str, Any]]:
    """The rows of summary ``name``'s CSV, checked to summarise the config slice in ``config``."""
    digest = digest_of(read_config(config, name))
    rows = files.read_csv(path)
    found = {row.get(PROVENANCE) for row in rows}
    if found != {digest}:
        raise ProvenanceError(
            f"{path} summarises other runs or settings than the config asks for (its digest "
            f"{', '.join(sorted(map(str, found)))}, that of {config}: {digest}); {rebuild_hint(path)}"
        )
    return rows
