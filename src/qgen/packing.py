"""Training several small runs at once in one allocation (one GPU), each in its own ``qgen train`` process.

The paper's NiN sweep is ~2,000 trainings that each leave most of a modern GPU idle; training a pack of
them concurrently on one device costs one GPU for about the time of the slowest member instead of one
GPU per run (``bench/packing.py`` measures the requested GPU-hours). Every member is an ordinary
``qgen train`` subprocess: it checkpoints and resumes on its own, and writes its outputs to its
``<ckpt_dir>/<short digest>/final`` directory, from which ``qgen unpack`` copies them into the run's
result directory. SIGTERM/SIGUSR1 are passed on to the members, which checkpoint and stop.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qgen import files
from qgen.errors import QgenError
from qgen.experiments import RUN_OUTPUTS, RunSpec
from qgen.provenance import require_digest

log = logging.getLogger(__name__)

PACK_SCHEMA_VERSION = 2
EXIT_STOPPED = 75  # as qgen.train.EXIT_STOPPED; repeated so that this module does not import torch


@dataclass(frozen=True)
class Member:
    """One run of a pack: its spec and where its resume state and finished outputs live."""

    spec: RunSpec
    ckpt_dir: Path

    @property
    def final_dir(self) -> Path:
        """Where the member's ``qgen train`` writes its outputs: inside its spec's state directory."""
        return self.ckpt_dir / self.spec.short_digest / "final"


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
) -> int:
    """Train ``specs`` concurrently on ``device``; write ``manifest`` once every member has finished.

    Returns 0 on success, :data:`EXIT_STOPPED` if a member stopped on a signal (rerun to resume), 1 if a
    member failed (its log says why). Members already finished (a ``final/metrics.json``) are not rerun.
    """
    pack = members(specs, ckpt_root)
    threads_each = max(1, threads // max(1, len(pack)))
    running: dict[str, subprocess.Popen[bytes]] = {}
    for member in pack:
        if (member.final_dir / "metrics.json").exists():
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
        ]  # fmt: skip
        with open(member.ckpt_dir / "train.log", "ab") as out:
            running[member.spec.run_id] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    log.info("training %d of %d runs concurrently on %s", len(running), len(pack), device)

    def forward(signum: int, frame: object) -> None:
        for proc in running.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
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
    files.write_json(
        manifest,
        {
            "schema_version": PACK_SCHEMA_VERSION,
            "runs": {m.spec.run_id: {"dir": str(m.final_dir), "digest": m.spec.digest} for m in pack},
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        },
    )
    return 0


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
