"""GPU-hours the SLURM profile requests for the paper DAG: NiN runs packed (``train_pack``) vs one job each.

Plans the full paper config with ``snakemake -n --profile profiles/slurm`` twice, side by side: as the
profile is (``train_pack_size`` runs of NiN per GPU job) and with ``--config train_pack_size=1`` (one
job per run), and sums ``gpu x runtime`` over the planned jobs, i.e. over the resources each ``sbatch``
would request on its first attempt. Reported for the NiN sweep (the runs packing changes) and for the
whole DAG. Environment variables the profile names are set to a placeholder when unset (nothing is
submitted).

Target: the NiN sweep requests >= 4x fewer GPU-hours packed. Exit status 1 if it does not.

    python bench/packing.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dag_dryrun import REPO, default_snakemake, profile_env

from _timing import Target, verdict

TARGET = Target(4.0, at_least=True)
PROFILE = Path("profiles/slurm")
JOB = re.compile(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", re.MULTILINE | re.DOTALL)
WILDCARDS = re.compile(r"^\s+wildcards: (.*)$", re.MULTILINE)
RESOURCES = re.compile(r"^\s+resources: (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Job:
    rule: str
    experiment: str
    gpus: int
    runtime_min: int

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.runtime_min / 60


def planned_jobs(*extra: str) -> list[Job]:
    """Every job of the dry-run's plan with the GPUs and minutes it would request."""
    argv = [str(default_snakemake()), "-n", "--profile", str(PROFILE), *extra]
    done = subprocess.run(argv, cwd=REPO, env=profile_env(PROFILE), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    jobs = []
    for rule, body in JOB.findall(done.stdout):
        resources = dict(item.split("=", 1) for item in RESOURCES.search(body)[1].split(", ") if "=" in item)
        wildcards = WILDCARDS.search(body)
        experiment = re.search(r"experiment=([^,]+)", wildcards[1]) if wildcards else None
        jobs.append(
            Job(
                rule,
                experiment[1] if experiment else "",
                int(resources.get("gpu", 0)),
                int(resources.get("runtime", 0)),
            )
        )
    return jobs


def summary(name: str, jobs: list[Job]) -> tuple[float, float]:
    nin = [j for j in jobs if j.experiment.startswith("nin_") and j.gpus]
    whole = sum(j.gpu_hours for j in jobs)
    nin_hours = sum(j.gpu_hours for j in nin)
    rules = sorted({j.rule for j in nin})
    print(f"{name}: {len(nin)} NiN GPU jobs ({', '.join(rules)}) request {nin_hours:,.0f} GPU-hours;")
    print(f"  the whole DAG ({len(jobs)} jobs) requests {whole:,.0f} GPU-hours")
    return nin_hours, whole


def main() -> int:
    print(f"snakemake -n --profile {PROFILE} on the paper config; GPU-hours = sum of gpu x runtime per job")
    packed_nin, packed_all = summary("packed (profile as is)", planned_jobs())
    single_nin, single_all = summary(
        "one job per run (--config train_pack_size=1)", planned_jobs("--config", "train_pack_size=1")
    )
    passed = verdict("NiN sweep: one job per run / packed", single_nin / packed_nin, TARGET)
    print(f"  whole DAG: one job per run / packed = {single_all / packed_all:.2f}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
