"""DAG planning time: wall seconds of ``snakemake -n --quiet rules`` on the full paper DAG.

Runs the venv's ``snakemake`` as a subprocess from the repository root with the default ``config.yaml``
(every experiment of the paper, about 1,990 ``train`` jobs), after warm-up, and prints the median wall
time and the job counts of the planned DAG (parsed from snakemake's "Job stats" table) so the reader sees
that the whole DAG was planned. Each ``--profile`` adds a variant that also passes ``--profile PATH``;
all variants run interleaved. Environment variables a profile names (``$NAME``) are set to a placeholder
when unset (a dry run submits nothing, so e.g. a SLURM partition is never used).

Target: median <= 15 s for every variant. Exit status 1 if any fails it.

    python bench/dag_dryrun.py                               # ~30 s
    python bench/dag_dryrun.py --profile profiles/slurm      # also through the SLURM profile
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from _timing import Target, interleave, median, spread, verdict

TARGET = Target(15.0)
REPO = Path(__file__).resolve().parent.parent
COMMAND = ("-n", "--quiet", "rules")
STATS_ROW = re.compile(r"^(\w+)\s+(\d+)$")


def default_snakemake() -> Path:
    venv = REPO / ".venv" / "bin" / "snakemake"
    return venv if venv.exists() else Path(sys.executable).with_name("snakemake")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snakemake", type=Path, default=default_snakemake())
    parser.add_argument(
        "--profile", type=Path, action="append", default=[], help="also time with this profile"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    return parser.parse_args()


def profile_env(profile: Path) -> dict[str, str]:
    """The environment with every ``$NAME`` used by ``profile``'s config.yaml set (to ``bench``) if unset."""
    text = (REPO / profile / "config.yaml").read_text()
    return {name: "bench" for name in re.findall(r"\$\{?([A-Za-z_]\w*)", text)} | dict(os.environ)


def job_counts(stdout: str) -> dict[str, int]:
    """``rule -> planned jobs`` from the first "Job stats:" table of snakemake's output."""
    lines = stdout.split("Job stats:", 1)[-1].splitlines()
    counts: dict[str, int] = {}
    for line in lines[3:]:  # after the header and the dashes
        match = STATS_ROW.match(line.strip())
        if match is None:
            break
        counts[match[1]] = int(match[2])
    return counts


class DryRun:
    """One ``snakemake`` dry-run command; calling it runs it and keeps the output of the last run."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv, self.env, self.stdout = argv, env, ""

    def __call__(self) -> None:
        done = subprocess.run(self.argv, cwd=REPO, env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(self.argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        self.stdout = done.stdout


def main() -> int:
    args = parse_args()
    base = [str(args.snakemake), *COMMAND]
    runs = {"default": DryRun(base)}
    for profile in args.profile:
        runs[f"--profile {profile}"] = DryRun([*base, "--profile", str(profile)], profile_env(profile))
    print(f"{' '.join(base)} in {REPO}, {args.warmup} warm-up + {args.repeats} interleaved runs, seconds")
    times = interleave(runs, repeats=args.repeats, warmup=args.warmup)
    passed = True
    for name, seconds in times.items():
        counts = job_counts(runs[name].stdout)
        print(f"{name}: {counts.get('train', 0)} train jobs, {counts.get('total', 0)} jobs in all")
        print(f"  wall {spread(seconds, unit=' s')}")
        passed &= verdict("median s", median(seconds), TARGET)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
