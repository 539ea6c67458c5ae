"""Cluster-scale workflow: the SLURM profile's packed DAG, and the guard against training by accident."""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from test_workflow import ROOT, planned_jobs, snakemake


def test_slurm_profile_packs_the_nin_sweep_and_trains_imagenet_data_parallel() -> None:
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    size = profile["config"]["train_pack_size"]
    proc = snakemake("-n", "--quiet", "rules", "--profile", "profiles/slurm")
    assert proc.returncode == 0, proc.stderr
    jobs = planned_jobs(proc.stdout + proc.stderr)
    nin_runs = 243 * 4  # per dataset
    assert jobs["train_pack"] == 2 * math.ceil(nin_runs / size)
    assert jobs["unpack_run"] == 2 * nin_runs
    assert jobs["train_distributed"] == 5 * 4
    assert jobs["train"] == 6 * 4  # CIFAR ResNets, MobileNet, VGG: one job each


def test_a_local_table_target_without_results_names_the_missing_runs_instead_of_training(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.yaml").write_text((ROOT / "tests" / "slurm" / "experiments.yaml").read_text())
    args = ("--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "1")
    proc = snakemake("paper_tables/table1.tex", *args, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "paper_tables/table1.tex needs 3 run(s) without results/runs/<run>/metrics.json" in output
    assert "resnet18_digits/fp32/sgd-lr0.05_wd0.0001" in output and "nin_digits/int4/" in output
    assert "snakemake --profile profiles/slurm paper_tables/table1.tex" in output
    assert "allow_training=True" in output
    assert not (tmp_path / "results" / "runs").exists() and not (tmp_path / "logs" / "train").exists()
