"""bench/gpu.sh: the GPU benchmark's dry run on the CPU goes through every part and prints every number."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu.sh"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT / "tests"
    )


def test_cpu_smoke_runs_every_part_and_prints_every_number() -> None:
    proc = run_script("--cpu-smoke")
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not measured" not in out, out
    header = next(line for line in out.splitlines() if "eager fp32" in line)
    assert " ".join(header.split()[2:]) == (
        "eager fp32 eager bf16 compiled bf16 group3 eager bf16 group3 compiled bf16"
    )
    rows = [line for line in out.splitlines() if line.strip().startswith("nin(depth=2, width=1)")]
    assert [row.split()[2] for row in rows] == ["fp32", "int4"]
    fp32, int4 = (row.split()[3:] for row in rows)  # compiled columns at int4 only
    assert [cell == "-" for cell in fp32] == [False, False, True, False, True]
    assert len(int4) == 5 and all(re.fullmatch(r"[\d,]+", cell) for cell in int4 + fp32[:2])
    assert re.search(r"nin: int4 step / fp32 step \(eager bf16\) = \d\.\d{3}   target <= 1\.05", out)
    assert re.search(r"cifar10  NiN 2x1 +[\d,]+ img/s +[\d.]+ min per 300-epoch run", out)
    assert re.search(r"the sweep's 108 runs: [\d,.]+ GPU-hours on this GPU from measured throughput", out)
    assert re.search(r"exact protocol / straightforward loop speed-up = [\d.]+x   target >= 10", out)
    assert re.search(r"process packing \(2 processes, one step loop each\): +[\d,]+", out)
    assert re.search(r"batched / processes = [\d.]+", out)


def test_without_a_gpu_the_script_says_what_to_do() -> None:
    proc = run_script("--skip", "throughput", "sweep", "search", "pack")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device: run bench/gpu.sh on a GPU machine, or --cpu-smoke for a dry run" in proc.stdout
