"""Helpers shared by several test modules: a tiny trained run and LaTeX compilation."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from qgen.experiments import RunSpec
from qgen.train import train

requires_pdflatex = pytest.mark.skipif(
    shutil.which("pdflatex") is None, reason="pdflatex missing; `make test` installs it"
)


def tiny_spec(**changes: object) -> RunSpec:
    """A NiN 2x1 on a 400-image digits subset that trains in seconds on one CPU thread."""
    spec = RunSpec(
        experiment="nin_digits",
        point="p",
        precision="fp32",
        dataset="digits",
        model="nin",
        model_args={"depth": 2, "width": 1},
        optimizer="adam",
        lr=0.003,
        weight_decay=0.0,
        epochs=6,
        batch_size=64,
        milestones=[5],
        n_train=400,
        n_test=100,
    )
    return RunSpec.from_dict({**spec.to_dict(), **changes})


def train_tiny(spec: RunSpec, tmp: Path) -> Path:
    """Train ``spec`` under ``tmp`` (data in ``tmp/data``) and return its run directory."""
    torch.set_num_threads(1)
    train(spec, data_root=tmp / "data", out_dir=tmp / "run", ckpt_dir=tmp / "ckpt", device="cpu")
    return tmp / "run"


def compile_latex(tex: str, workdir: Path, packages: tuple[str, ...] = ()) -> Path:
    """Compile ``tex`` (a table) inside a minimal booktabs document (plus ``packages``); fails the test on a
    LaTeX error."""
    doc = workdir / "doc.tex"
    preamble = "".join(f"\\usepackage{{{name}}}\n" for name in ("booktabs", *packages))
    doc.write_text(
        "\\documentclass{article}\n" + preamble + "\\begin{document}\n" + tex + "\n\\end{document}\n"
    )
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    return workdir / "doc.pdf"
