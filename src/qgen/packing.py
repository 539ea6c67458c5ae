"""Training several small runs at once in one allocation (one GPU): as processes, or as one batched group.

The paper's NiN sweep is ~2,000 trainings that each leave most of a modern GPU idle; training a pack of
them at once on one device costs one GPU for about the time of the slowest member instead of one GPU
per run (``bench/packing.py`` sums the requested GPU-hours, ``bench/gpu.sh`` measures throughput). A
pack is trained one of two ways (:data:`qgen.vocab.PACK_MODES`):

* ``processes``: every member is an ordinary ``qgen train`` subprocess on the same device; it
  checkpoints and resumes on its own. The stop signals (:data:`qgen.stopping.STOP_SIGNALS`) are passed on
  to the members.
* ``batched``: the members train in lockstep in this process (:func:`qgen.group.train_group`), one
  vmapped forward and backward for all; they must agree in every field of :func:`lockstep_key`
  (:func:`lockstep_packs` forms such packs).

Either way each member writes its outputs to its ``<ckpt_dir>/<short digest>/final`` directory, from
which ``qgen unpack`` copies them into the run's result directory. This module does not import torch, so
that the Snakefile can form packs.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qgen import files
from qgen.errors import QgenError
from qgen.experiments import RUN_OUTPUTS, RunSpec, digest_of, pack_runs
from qgen.provenance import require_digest
from qgen.stopping import EXIT_STOPPED, STOP_SIGNALS

if TYPE_CHECKING:
    from qgen.train import Execution

log = logging.getLogger(__name__)

PACK_SCHEMA_VERSION = 2
STEPPING_FIELDS = (
    "experiment",
    "point",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "gamma",
    "milestones",
    "schedule",
    "step_weight_decay",
)
"""Run-spec fields in which the members of a batched group may differ: how each one steps (and its name).

Every other field (dataset and subsets, model and its arguments, precision, augmentation, batch size,
seed, epochs, selection rule, code version) fixes the network, the batches and the number of steps,
which the members share."""


def lockstep_key(spec: RunSpec) -> dict[str, Any]:
    """The fields of ``spec`` that runs trained in lockstep share (all but :data:`STEPPING_FIELDS`)."""
    return {k: v for k, v in spec.to_dict().items() if k not in STEPPING_FIELDS}


def require_lockstep(specs: Sequence[RunSpec]) -> None:
    """Refuse runs that cannot be trained in lockstep, naming the first pair and the fields that differ."""
    if not specs:
        raise QgenError("a batched group needs at least one run")
    first = lockstep_key(specs[0])
    for spec in specs[1:]:
        key = lockstep_key(spec)
        differ = sorted(k for k in first if key[k] != first[k])
        if differ:
            raise QgenError(
                f"runs {specs[0].run_id} and {spec.run_id} differ in {differ}: a batched group's runs may "
                f"differ only in {list(STEPPING_FIELDS)}; train them in separate groups"
            )


def lockstep_packs(runs: Iterable[RunSpec], size: int, models: Iterable[str]) -> dict[str, list[RunSpec]]:
    """Packs of at most ``size`` runs of one experiment that can train in lockstep, for the ``models``.

    :func:`qgen.experiments.pack_runs` with runs grouped by experiment and :func:`lockstep_key`: the NiN
    sweep's 27 optimizer x learning rate x weight decay points of one depth, width and precision form one
    group, cut into packs of ``size`` in run order.
    """
    return pack_runs(runs, size, models, group_by=lambda run: digest_of([run.experiment, lockstep_key(run)]))


@dataclass(frozen=True)
class Member:
    """One run of a pack: its spec and where its resume state and finished outputs live."""

    spec: RunSpec
    ckpt_dir: Path

    @property
    def final_dir(self) -> Path:
        """Where the member's ``qgen train`` writes its outputs: inside its spec's state directory."""
        return self.ckpt_dir / self.spec.short_digest / "final"

    @property
    def finished(self) -> bool:
        """Whether the member has trained to the end (its ``final/metrics.json`` exists)."""
        return (self.final_dir / "metrics.json").exists()


def members(specs: Sequence[RunSpec], ckpt_root: Path) -> list[Member]:
    """The pack's members, each with its checkpoint directory ``<ckpt_root>/<run_id>``."""
    return [Member(spec, ckpt_root / spec.run_id) for spec in specs]


def train_many(
    specs: Sequence[RunSpec],
    *,
    data_root: Path,
    ckpt_root: Path,
    manifest: Path,
    device: str = "auto",
    threads: int = 1,
    checkpoint_minutes: float = 5.0,
    execution_options: Sequence[str] = (),
) -> int:
    """Train ``specs`` concurrently on ``device`` as ``qgen train`` processes (given ``execution_options``,
    e.g. ``--compile default``); write ``manifest`` once every member has finished.

    Returns 0 on success, :data:`EXIT_STOPPED` if a member stopped on a signal (rerun to resume), 1 if a
    member failed (its log says why). Members already finished (a ``final/metrics.json``) are not rerun.
    """
    pack = members(specs, ckpt_root)
    threads_each = max(1, threads // max(1, len(pack)))
    running: dict[str, subprocess.Popen[bytes]] = {}
    for member in pack:
        if member.finished:
            log.info("%s: already trained", member.spec.run_id)
            continue
        member.ckpt_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "qgen.cli", "train",
            "--spec", member.spec.to_json(),
            "--data-root", str(data_root),
            "--out", str(member.final_dir),
            "--ckpt-dir", str(member.ckpt_dir),
            "--device", device,
            "--threads", str(threads_each),
            "--checkpoint-minutes", str(checkpoint_minutes),
            *execution_options,
        ]  # fmt: skip
        with open(member.ckpt_dir / "train.log", "ab") as out:
            running[member.spec.run_id] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    log.info("training %d of %d runs concurrently on %s", len(running), len(pack), device)

    def forward(signum: int, frame: object) -> None:
        for proc in running.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        codes = {run_id: proc.wait() for run_id, proc in running.items()}
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for run_id, code in codes.items():
        level = logging.INFO if code == 0 else logging.ERROR
        log.log(level, "%s: exit status %d (log: %s)", run_id, code, ckpt_root / run_id / "train.log")
    if any(code not in (0, EXIT_STOPPED) for code in codes.values()):
        return 1
    if any(code == EXIT_STOPPED for code in codes.values()):
        return EXIT_STOPPED
    write_manifest(manifest, pack)
    return 0


def train_batched(
    specs: Sequence[RunSpec],
    *,
    data_root: Path,
    ckpt_root: Path,
    manifest: Path,
    device: str = "auto",
    checkpoint_minutes: float = 5.0,
    execution: Execution | None = None,
) -> int:
    """Train ``specs`` as one batched group in this process (:func:`qgen.group.train_group`, with
    ``execution``, a :class:`qgen.train.Execution`); write ``manifest`` once every member has finished.

    Returns 0 on success and :data:`EXIT_STOPPED` if a stop signal arrived (every member checkpointed;
    rerun to resume). Members already finished (a ``final/metrics.json``) are not rerun.
    """
    from qgen.group import GroupRun, train_group
    from qgen.train import Stopped

    pack = members(specs, ckpt_root)
    pending = [m for m in pack if not m.finished]
    log.info("training %d of %d runs as one batched group on %s", len(pending), len(pack), device)
    if pending:
        try:
            train_group(
                [GroupRun(m.spec, m.ckpt_dir, m.final_dir) for m in pending],
                data_root=data_root,
                device=device,
                checkpoint_every_s=60 * checkpoint_minutes,
                execution=execution,
            )
        except Stopped as exc:
            log.warning("%s", exc)
            return EXIT_STOPPED
    write_manifest(manifest, pack)
    return 0


def write_manifest(manifest: Path, pack: Sequence[Member]) -> None:
    """The pack's manifest: where each finished member's outputs are, and its spec digest."""
    files.write_json(
        manifest,
        {
            "schema_version": PACK_SCHEMA_VERSION,
            "runs": {m.spec.run_id: {"dir": str(m.final_dir), "digest": m.spec.digest} for m in pack},
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        },
    )


def unpack(manifest: Path, spec: RunSpec, out_dir: Path) -> None:
    """Copy the finished outputs of the run of ``spec``, listed in a pack's ``manifest``, into ``out_dir``.

    The manifest must list this very spec (its digest); ``metrics.json`` is copied last.
    """
    runs = files.read_json(manifest)["runs"]
    if spec.run_id not in runs:
        raise QgenError(f"{manifest} does not list run {spec.run_id!r}; it holds {sorted(runs)}")
    entry = runs[spec.run_id]
    require_digest(manifest, f"run spec of {spec.run_id}", entry.get("digest"), spec.digest)
    for name in RUN_OUTPUTS:
        files.copy_file(Path(entry["dir"]) / name, out_dir / name)
