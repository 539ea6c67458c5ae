"""Packs of small runs: membership, concurrent training equal to one run per job, unpacking."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import SHORT, assert_same_run, cli_train, saved_progress

from qgen.errors import ProvenanceError, QgenError
from qgen.experiments import expand_runs, pack_runs
from qgen.packing import unpack
from qgen.stopping import EXIT_STOPPED

CONFIG = {
    "precisions": ["fp32", "int8", "int4", "int2"],
    "experiments": [
        {
            "name": name,
            "dataset": "digits",
            "model": model,
            "grid": {"optimizer": {"sgd": [0.1, 0.05, 0.01]}, "weight_decay": [0.0]},
            "epochs": 1,
            "batch_size": 64,
            "milestones": [1],
        }
        for name, model in (("a", "nin"), ("b", "nin"), ("c", "resnet18_cifar"))
    ],
}


def test_packs_hold_each_run_of_the_packed_models_once_and_never_mix_experiments() -> None:
    runs = expand_runs(CONFIG)
    packs = pack_runs(runs, 5, ["nin"])
    assert sorted(packs) == [f"{e}/pack5-{i:04d}" for e in "ab" for i in range(3)]
    assert [len(members) for members in packs.values()] == [5, 5, 2] * 2
    packed = [run.run_id for members in packs.values() for run in members]
    assert sorted(packed) == sorted(r.run_id for r in runs if r.experiment in "ab")
    assert all(len({run.experiment for run in members}) == 1 for members in packs.values())
    with pytest.raises(ValueError, match="train_pack size must be >= 1, got 0"):
        pack_runs(runs, 0, ["nin"])


def train_many(specs: list, tmp: Path, *options: str) -> subprocess.Popen:
    """`qgen train-many` of ``specs`` in ``tmp`` (resume state in ckpt/, manifest pack.json), output piped."""
    return subprocess.Popen(
        [
            sys.executable, "-m", "qgen.cli", "train-many",
            "--specs", json.dumps([json.loads(spec.to_json()) for spec in specs]),
            "--data-root", str(tmp / "data"),
            "--ckpt-root", str(tmp / "ckpt"),
            "--manifest", str(tmp / "pack.json"),
            "--threads", "2",
            *options,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_a_pack_trains_its_runs_to_the_results_of_separate_jobs(tmp_path: Path) -> None:
    tiny = dataclasses.replace(SHORT, epochs=2, milestones=[1], n_train=256, n_test=100)
    specs = [tiny, dataclasses.replace(tiny, precision="fp32")]
    alone = cli_train(specs[0], tmp_path, "alone")
    pack = train_many(specs, tmp_path)
    log = pack.communicate(timeout=300)[0]
    assert pack.returncode == 0, log
    assert alone.wait(timeout=300) == 0, alone.stdout.read()
    for spec in specs:
        unpack(tmp_path / "pack.json", spec, tmp_path / "unpacked" / spec.run_id)
        metrics = json.loads((tmp_path / "unpacked" / spec.run_id / "metrics.json").read_text())
        assert metrics["run_id"] == spec.run_id and metrics["status"] == "ok"
    assert_same_run(tmp_path / "alone" / "out", tmp_path / "unpacked" / specs[0].run_id)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_to_the_pack_checkpoints_every_member_then_exits_for_a_retry(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """The pack passes every stop signal of `qgen train` on (SIGINT used to kill the pack with a traceback
    and leave its members training)."""
    long = dataclasses.replace(SHORT, epochs=20, milestones=[10])  # still training when the signal comes
    specs = [long, dataclasses.replace(long, precision="fp32")]
    pack = train_many(specs, tmp_path, "--checkpoint-minutes", "0.00001")
    states = [tmp_path / "ckpt" / s.run_id / s.short_digest / "state.pt" for s in specs]
    deadline = time.monotonic() + 240
    while pack.poll() is None and time.monotonic() < deadline:
        if all(saved_progress(state) != (0, 0) for state in states):  # every member is training
            break
        time.sleep(0.005)
    pack.send_signal(sig)
    log = pack.communicate(timeout=60)[0]
    assert pack.returncode == EXIT_STOPPED, log
    assert "Traceback" not in log and not (tmp_path / "pack.json").exists()
    for spec in specs:
        member = (tmp_path / "ckpt" / spec.run_id / "train.log").read_text()
        assert f"stopped on {sig.name} after checkpointing" in member, member
    resumed = train_many(specs, tmp_path)
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    for spec in specs:
        assert "resuming after epoch" in (tmp_path / "ckpt" / spec.run_id / "train.log").read_text()
    assert json.loads((tmp_path / "pack.json").read_text())


def test_unpacking_a_run_the_manifest_lacks_or_of_another_spec_is_refused(tmp_path: Path) -> None:
    spec = dataclasses.replace(SHORT, epochs=2)
    manifest = tmp_path / "pack.json"
    entry = {"dir": str(tmp_path), "digest": spec.digest}
    manifest.write_text(json.dumps({"schema_version": 2, "runs": {"a/fp32/p": entry}}))
    with pytest.raises(
        QgenError, match=rf"pack.json does not list run '{spec.run_id}'; it holds \['a/fp32/p'\]"
    ):
        unpack(manifest, spec, tmp_path / "out")
    stale = {"dir": str(tmp_path), "digest": dataclasses.replace(spec, epochs=3).digest}
    manifest.write_text(json.dumps({"schema_version": 2, "runs": {spec.run_id: stale}}))
    with pytest.raises(ProvenanceError, match=r"pack\.json was made from another run spec"):
        unpack(manifest, spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()
