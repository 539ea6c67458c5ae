"""The workflow through real SLURM: every job an `sbatch` submission, a cancelled training resumed.

Needs the one-node cluster of tests/slurm/start_cluster.sh; `make test-slurm` (part of `make test`)
starts it, runs `pytest -m slurm` and stops it. The SLURM run uses profiles/slurm with the CPU layer
tests/slurm/profile and the small experiment set tests/slurm/experiments.yaml; the same workflow run
locally is the reference its results must equal exactly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_train import assert_same_run
from test_workflow import BIN, ROOT, snakemake

pytestmark = pytest.mark.slurm

EXPERIMENTS = ROOT / "tests" / "slurm" / "experiments.yaml"
VICTIM = "resnet18_digits/fp32/sgd-lr0.05_wd0.0001"  # trained alone; cancelled after its first epoch
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+)")


def squeue(*job_ids: str) -> dict[str, tuple[str, str]]:
    """SLURM job id -> (state, comment) for these jobs, finished ones included (MinJobAge=600)."""
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%T|%k", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {i: (state, comment) for i, state, comment in (line.split("|") for line in out.splitlines())}


def workdir(tmp: Path) -> Path:
    (tmp / "config.yaml").write_text(EXPERIMENTS.read_text())
    return tmp


@pytest.fixture(scope="module")
def cluster() -> None:
    if shutil.which("sbatch") is None or subprocess.run(["scontrol", "ping"], capture_output=True).returncode:
        pytest.fail("no SLURM controller answers; `make test-slurm` starts tests/slurm/start_cluster.sh")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = workdir(tmp_path_factory.mktemp("local"))
    args = ("--snakefile", str(ROOT / "Snakefile"), "--directory", str(root), "--cores", "2")
    proc = snakemake(*args, "--config", "allow_training=True", cwd=root)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return root


def cancel_victim_after_first_epoch(root: Path, main: subprocess.Popen[str]) -> str:
    """Wait until the victim's training has checkpointed an epoch, then `scancel` its job; its id."""
    run_checkpoints = root / "results" / "checkpoints" / VICTIM  # one <digest>/state.pt per run spec
    deadline = time.monotonic() + 300
    while main.poll() is None and time.monotonic() < deadline:
        try:
            epochs = [torch.load(s, weights_only=False)["epoch"] for s in run_checkpoints.glob("*/state.pt")]
            epoch = max(epochs, default=0)
        except (FileNotFoundError, EOFError, RuntimeError):
            epoch = 0
        if epoch >= 1:
            running = subprocess.run(
                ["squeue", "-h", "-t", "running", "-o", "%i|%k"], capture_output=True, text=True, check=True
            ).stdout
            job = next(line.split("|")[0] for line in running.splitlines() if "resnet18_digits" in line)
            subprocess.run(["scancel", job], check=True)
            return job
        time.sleep(0.1)
    main.kill()
    raise AssertionError(f"the victim never checkpointed an epoch:\n{main.communicate()[1][-5000:]}")


@pytest.fixture(scope="module")
def slurm_run(
    cluster: None, local_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, str]:
    """The SLURM run's directory, its snakemake output, and the id of the cancelled job."""
    root = workdir(tmp_path_factory.mktemp("slurm"))
    main = subprocess.Popen(
        [
            str(BIN / "snakemake"),
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--profile",
            str(ROOT / "profiles" / "slurm"),
            "--workflow-profile",
            str(ROOT / "tests" / "slurm" / "profile"),
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    )
    cancelled = cancel_victim_after_first_epoch(root, main)
    out, err = main.communicate(timeout=600)
    assert main.returncode == 0, err[-5000:]
    return root, out + err, cancelled


def test_every_job_but_the_local_table_rules_ran_as_a_slurm_job(slurm_run: tuple[Path, str, str]) -> None:
    root, output, cancelled = slurm_run
    job_ids = SUBMITTED.findall(output)
    jobs = squeue(*job_ids)
    assert sorted(jobs) == sorted(job_ids)
    rules = sorted(re.sub(r"_wildcards_.*", "", comment) for _, comment in jobs.values())
    # download, the NiN pack, the ResNet-18 training twice (cancelled, then resubmitted)
    assert rules == ["rule_download", "rule_train", "rule_train", "rule_train_pack"]
    assert jobs.pop(cancelled)[0] == "CANCELLED"
    assert {state for state, _ in jobs.values()} == {"COMPLETED"}
    for job_id in job_ids:
        assert list((root / "logs" / "slurm").glob(f"*/*/{job_id}.log")), f"no SLURM log of job {job_id}"


def test_cancelled_training_resumed_from_its_checkpoint(slurm_run: tuple[Path, str, str]) -> None:
    root, output, cancelled = slurm_run
    assert f"SLURM jobid {cancelled}" in output
    log = (root / "logs" / "train" / f"{VICTIM}.log").read_text()
    assert re.search(r"resuming after epoch [1-5] of 6", log), log


def test_slurm_results_equal_the_local_run(slurm_run: tuple[Path, str, str], local_run: Path) -> None:
    root, _, _ = slurm_run
    runs = sorted(p.parent.relative_to(root) for p in root.glob("results/runs/*/*/*/metrics.json"))
    assert len(runs) == 3
    for run in runs:
        assert_same_run(local_run / run, root / run)
    table = "paper_tables/table1.tex"
    assert (root / table).read_text() == (local_run / table).read_text()
