"""Data-parallel training: shards of a global batch, torchrun with gloo on CPU, resuming in another world."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import SHORT, cli_train, saved_progress

from qgen import data
from qgen.experiments import RunSpec

LOSS_RTOL = 0.02  # per-process BatchNorm statistics and summation order; measured: 0.3 %


def digits(tmp: Path, **batching: int) -> data.BatchLoader:
    return data.build_loader(
        "digits",
        "train",
        root=tmp,
        batch_size=64,
        augment="crop_flip",
        shuffle=True,
        seed=5,
        subset=300,
        **batching,
    )


def test_shards_of_every_batch_make_up_the_single_process_batch(tmp_path: Path) -> None:
    whole = digits(tmp_path)
    shards = [digits(tmp_path, rank=rank, world=2) for rank in range(2)]
    for loader in (whole, *shards):
        loader.set_epoch(3)
    together = [tuple(map(torch.cat, zip(*pair, strict=True))) for pair in zip(*shards, strict=True)]
    batches = list(whole)
    assert len(together) == len(batches) == len(whole)
    for (images, labels), (images0, labels0) in zip(together, batches, strict=True):
        assert torch.equal(images, images0) and torch.equal(labels, labels0)


def test_a_loader_started_at_batch_k_yields_the_rest_of_the_epoch(tmp_path: Path) -> None:
    loader = digits(tmp_path)
    loader.set_epoch(2)
    batches = list(loader)
    loader.set_epoch(2, start=3)
    rest = list(loader)
    assert len(rest) == len(batches) - 3
    for (images, labels), (images0, labels0) in zip(rest, batches[3:], strict=True):
        assert torch.equal(images, images0) and torch.equal(labels, labels0)


def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size 64 is not divisible by the 3 data-parallel processes"):
        digits(tmp_path, rank=0, world=3)


def torchrun(spec: RunSpec, tmp: Path, name: str, *options: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "qgen.cli", "train",
        "--spec", spec.to_json(),
        "--data-root", str(tmp / "data"),
        "--out", str(tmp / name / "out"),
        "--ckpt-dir", str(tmp / name / "ckpt"),
        "--threads", "1",
        "--device", "cpu",
        *options,
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses(run: Path) -> list[float]:
    return [h["loss"] for h in json.loads((run / "out" / "metrics.json").read_text())["history"]]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("single")
    proc = cli_train(SHORT, tmp, "one")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    return tmp / "one"


def test_two_processes_follow_the_single_process_loss_curve(tmp_path: Path, single: Path) -> None:
    proc = torchrun(SHORT, tmp_path, "two")
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log
    assert "(2 data-parallel processes)" in log
    metrics = json.loads((tmp_path / "two" / "out" / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert losses(tmp_path / "two") == pytest.approx(losses(single), rel=LOSS_RTOL)
    reference = json.loads((single / "out" / "metrics.json").read_text())
    assert metrics["test"]["loss"] == pytest.approx(reference["test"]["loss"], rel=LOSS_RTOL)


@pytest.mark.slow
def test_a_stopped_two_process_run_resumes_in_one_process(tmp_path: Path, single: Path) -> None:
    proc = torchrun(SHORT, tmp_path, "two", "--checkpoint-minutes", "0.00001")
    state = tmp_path / "two" / "ckpt" / "state.pt"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and saved_progress(state) < (1, 2):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "after checkpointing" in log, log
    epoch, batch = saved_progress(state)
    assert (epoch, batch) < (SHORT.epochs, 0)

    resumed = cli_train(SHORT, tmp_path, "two")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert f"resuming after epoch {epoch} of {SHORT.epochs}, batch {batch}" in log
    assert losses(tmp_path / "two") == pytest.approx(losses(single), rel=LOSS_RTOL)
