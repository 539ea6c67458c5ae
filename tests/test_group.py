"""Batched groups (qgen.group): the same runs as separate trainings, resumable, robust to a diverging member.

Tolerances. One group step computes every member's gradient to float rounding (checked to 1e-5 of the
largest gradient entry). Over several steps the trajectories drift apart by more than that, as two
separate runs do under any change of summation order (threads, memory layout): an LSQ weight whose
latent value sits within rounding of a bin edge lands in the other bin, and Adam and RMSProp turn
gradients that are float noise (conv biases feeding a BatchNorm, ~1e-9) into steps of +-lr or +-10 lr.
End to end (18 steps on digits), losses agree to 1e-2 and SGD weights to 10 % of the distance they
moved from W0 (3 % measured); members trained with different hyperparameters differ by more than
3e-2 in loss (checked), so a member stepped with another's optimizer, rate or data would fail.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import saved_progress
from torch.nn import functional as F

from qgen.errors import QgenError
from qgen.experiments import RunSpec, expand_runs
from qgen.group import GroupRun, Stack, train_group
from qgen.packing import lockstep_key, lockstep_packs, require_lockstep
from qgen.runs import build_model
from qgen.train import state_dir, train

from helpers import tiny_spec

BASE = tiny_spec(precision="int4", model_args={"depth": 2, "width": 2}, epochs=3, milestones=[2], n_train=384)
SPECS = [
    dataclasses.replace(BASE, point="sgd", optimizer="sgd", lr=0.05, weight_decay=1e-4),
    dataclasses.replace(BASE, point="adam", optimizer="adam", lr=3e-3, weight_decay=0.0),
    dataclasses.replace(BASE, point="rmsprop", optimizer="rmsprop", lr=1e-3, weight_decay=2e-4),
]
LOSS_TOL = 1e-2


def group_runs(specs: list[RunSpec], root: Path) -> list[GroupRun]:
    return [GroupRun(s, root / "ckpt" / s.point, root / "out" / s.point) for s in specs]


def weights(out: Path, name: str = "model.pt") -> dict[str, torch.Tensor]:
    return torch.load(out / name, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_training(reference: dict, got: dict, tol: float = LOSS_TOL) -> None:
    """Same record but for the execution and timings; losses and accuracies within ``tol``."""
    for key in ("spec", "run_digest", "status", "epochs_completed", "diverged_at_epoch", "schema_version"):
        assert got[key] == reference[key], key
    assert set(got) == set(reference)
    assert [h["lr"] for h in got["history"]] == [h["lr"] for h in reference["history"]]
    for mine, theirs in zip(got["history"], reference["history"], strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=tol)
    for split in ("train", "test"):
        assert got[split]["loss"] == pytest.approx(reference[split]["loss"], abs=tol)
        assert got[split]["accuracy"] == pytest.approx(reference[split]["accuracy"], abs=0.02)


@pytest.fixture(scope="module")
def separate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("separate")
    torch.set_num_threads(1)
    metrics = [
        train(s, data_root=tmp / "data", out_dir=tmp / "out" / s.point, ckpt_dir=tmp / "ckpt" / s.point)
        for s in SPECS
    ]
    return tmp, metrics


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("group")
    torch.set_num_threads(1)
    return tmp, train_group(group_runs(SPECS, tmp), data_root=tmp / "data")


def test_one_group_step_computes_each_members_gradient_and_statistics() -> None:
    torch.manual_seed(0)
    models = [build_model(s).train() for s in SPECS]
    for k, model in enumerate(models):  # members with different weights, as after some training
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 0.1 * k)
    # In the standard layout: channels-last moves some gradients of this small random problem by up to
    # 2 % (activations at a ReLU's kink land on its other side), alone as in a group.
    alone = copy.deepcopy(models)
    images = torch.randn(32, 3, 32, 32)
    labels = torch.randint(0, 10, (32,))
    for model in alone:
        F.cross_entropy(model(images), labels).backward()

    stack = Stack(models, channels_last=False)
    template = build_model(SPECS[0]).train()

    def loss(params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(template, {**params, **buffers}, (x,)), y)

    losses = torch.func.vmap(loss, in_dims=(0, 0, None, None))(stack.params, stack.buffers, images, labels)
    losses.sum().backward()
    stack.set_grads()
    for model, reference in zip(models, alone, strict=True):
        expected = dict(reference.named_parameters())
        for name, p in model.named_parameters():
            if name.endswith("bias") and ".conv" in name:  # feeds a BatchNorm: its gradient is float noise
                assert float(p.grad.abs().max()) < 1e-6
                continue
            scale = float(expected[name].grad.abs().max())
            assert float((p.grad - expected[name].grad).abs().max()) <= 1e-4 * scale, name
        expected_buffers = dict(reference.named_buffers())
        for name, b in model.named_buffers():  # the module's own buffers are views of the stack
            assert torch.allclose(b, expected_buffers[name], rtol=1e-5, atol=1e-6), name
    stack.release()
    assert all(p.data_ptr() != stack.params[n].data_ptr() for n, p in models[0].named_parameters())


def test_a_group_trains_each_run_as_its_separate_run(
    separate: tuple[Path, list[dict]], grouped: tuple[Path, list[dict]]
) -> None:
    (sep_dir, sep_metrics), (grp_dir, grp_metrics) = separate, grouped
    for spec, reference, got in zip(SPECS, sep_metrics, grp_metrics, strict=True):
        assert_same_training(reference, got)
        assert got["execution"] == reference["execution"] | {"group_size": 3}
        on_disk = json.loads((grp_dir / "out" / spec.point / "metrics.json").read_text())
        assert on_disk == json.loads(json.dumps(got))
        init_ref, init_got = (
            weights(sep_dir / "out" / spec.point, "init.pt"),
            weights(grp_dir / "out" / spec.point, "init.pt"),
        )
        assert all(torch.equal(init_ref[k], init_got[k]) for k in init_ref)
        state = torch.load(state_dir(grp_dir / "ckpt" / spec.point, spec) / "state.pt", weights_only=True)
        assert state["spec"] == spec.to_json() and state["epoch"] == spec.epochs
    ref, got = weights(sep_dir / "out" / "sgd"), weights(grp_dir / "out" / "sgd")
    w0 = weights(sep_dir / "out" / "sgd", "init.pt")
    keys = [k for k in ref if ref[k].is_floating_point()]
    gap = sum(float((ref[k] - got[k]).square().sum()) for k in keys) ** 0.5
    moved = sum(float((ref[k] - w0[k]).square().sum()) for k in keys) ** 0.5
    assert gap <= 0.1 * moved, (gap, moved)


def test_members_that_trained_differently_are_told_apart(separate: tuple[Path, list[dict]]) -> None:
    """The tolerance is tight enough to catch a member trained with another member's hyperparameters."""
    _, metrics = separate
    losses = [[h["loss"] for h in m["history"]] for m in metrics]
    for one, other in ((0, 1), (0, 2), (1, 2)):
        assert max(abs(a - b) for a, b in zip(losses[one], losses[other], strict=True)) > 3 * LOSS_TOL


def cli_group(specs: list[RunSpec], tmp: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable, "-m", "qgen.cli", "train-many", "--batched",
            "--specs", json.dumps([s.to_dict() for s in specs]),
            "--data-root", str(tmp / "data"), "--ckpt-root", str(tmp / "ckpt"),
            "--manifest", str(tmp / "pack.json"), *options,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def final(tmp: Path, spec: RunSpec) -> Path:
    return state_dir(tmp / "ckpt" / spec.run_id, spec) / "final"


def test_a_killed_group_resumes_to_the_uninterrupted_groups_result(tmp_path: Path) -> None:
    """SIGKILL inside an epoch; then one member's state is removed, as if the kill had landed before
    its file was written: it trains alone until it reaches the others, who join it."""
    specs = [dataclasses.replace(s, epochs=2, milestones=[1]) for s in SPECS]
    reference = cli_group(specs, tmp_path / "reference")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    victim = cli_group(specs, tmp_path / "victim", "--checkpoint-minutes", "0.00001")
    states = [state_dir(tmp_path / "victim" / "ckpt" / s.run_id, s) / "state.pt" for s in specs]
    deadline = time.monotonic() + 240
    while victim.poll() is None and time.monotonic() < deadline:
        positions = {saved_progress(state) for state in states}
        if len(positions) == 1 and (epoch_batch := positions.pop())[0] >= 1 and epoch_batch[1] >= 2:
            break
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert not (tmp_path / "victim" / "pack.json").exists()
    states[0].unlink()

    resumed = cli_group(specs, tmp_path / "victim")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert "group: 1 run(s) join at epoch 1, batch 0" in log and "group: 2 run(s) join at epoch" in log
    for k, spec in enumerate(specs):
        ref_metrics = json.loads((final(tmp_path / "reference", spec) / "metrics.json").read_text())
        got_metrics = json.loads((final(tmp_path / "victim", spec) / "metrics.json").read_text())
        if k == 0:  # trained alone for a while: a one-member stack adds in another order
            assert_same_training(ref_metrics, got_metrics)
            continue
        ref, got = weights(final(tmp_path / "reference", spec)), weights(final(tmp_path / "victim", spec))
        assert all(torch.equal(ref[key], got[key]) for key in ref), spec.run_id
        for metrics in (ref_metrics, got_metrics):
            for key in ("wall_time_s", "command"):
                metrics.pop(key)
            for row in metrics["history"]:
                row.pop("images_per_s")
        assert got_metrics == ref_metrics
    manifest = json.loads((tmp_path / "victim" / "pack.json").read_text())
    assert sorted(manifest["runs"]) == sorted(s.run_id for s in specs)


def test_a_diverging_member_is_recorded_and_the_others_train_on(
    separate: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    _, sep_metrics = separate
    wild = dataclasses.replace(SPECS[0], point="wild", precision="int4", lr=1e12)
    metrics = train_group(group_runs([wild, *SPECS[1:]], tmp_path), data_root=tmp_path / "data")
    assert metrics[0]["status"] == "diverged" and metrics[0]["diverged_at_epoch"] >= 1
    assert "train" not in metrics[0] and (tmp_path / "out" / "wild" / "model.pt").exists()
    for reference, got in zip(sep_metrics[1:], metrics[1:], strict=True):
        assert got["status"] == "ok"
        assert_same_training(reference, got)


def test_runs_that_differ_in_more_than_their_stepping_are_refused(tmp_path: Path) -> None:
    other = dataclasses.replace(SPECS[1], precision="fp32", seed=1)
    with pytest.raises(QgenError, match=r"differ in \['precision', 'seed'\]: a batched group's runs"):
        train_group(group_runs([SPECS[0], other], tmp_path), data_root=tmp_path / "data")
    require_lockstep(SPECS)
    assert not (tmp_path / "out").exists()


def test_lockstep_packs_of_the_paper_sweep_hold_one_network_each() -> None:
    """The NiN sweep: 27 stepping points per depth, width and precision, one group each."""
    config = {
        "precisions": ["fp32", "int8", "int4", "int2"],
        "experiments": [
            {
                "name": "nin_cifar10",
                "dataset": "cifar10",
                "model": "nin",
                "grid": {
                    "model": {"depth": [2, 3, 4], "width": [8, 10, 12]},
                    "optimizer": {"sgd": [0.1, 0.05, 0.01], "adam": [1e-3, 5e-4, 1e-4], "rmsprop": [1e-3]},
                    "weight_decay": [0.0, 0.0001, 0.0002],
                },
                "epochs": 300,
                "batch_size": 128,
                "milestones": [100, 200],
            }
        ],
    }
    runs = expand_runs(config)
    packs = lockstep_packs(runs, 27, ["nin"])
    assert len(runs) == 9 * 7 * 3 * 4 and len(packs) == 9 * 4 * 1  # 21 points per group fit one pack
    for members in packs.values():
        require_lockstep(members)
        assert len({(m.optimizer, m.lr, m.weight_decay) for m in members}) == len(members) == 21
    assert sorted(r.run_id for m in packs.values() for r in m) == sorted(r.run_id for r in runs)
    small = lockstep_packs(runs, 8, ["nin"])
    assert [len(m) for m in small.values()][:3] == [8, 8, 5]
    assert all(len({json.dumps(lockstep_key(r), sort_keys=True) for r in m}) == 1 for m in small.values())
