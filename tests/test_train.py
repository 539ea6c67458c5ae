"""Training: resume after SIGKILL equals an uninterrupted run, epoch selection, divergence, outputs."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn import functional as F

from qgen import data, files, quant
from qgen.distributed import Replicas
from qgen.errors import LockedError, ProvenanceError, QgenError
from qgen.experiments import RunSpec
from qgen.runs import build_model, load_model, tensors_digest
from qgen.stopping import EXIT_STOPPED, STOP_SIGNALS
from qgen.train import (
    PLAIN,
    Checkpointer,
    Execution,
    Stopped,
    build_optimizer,
    build_scheduler,
    state_dir,
    train,
    train_epoch,
)

from helpers import tiny_spec

SPEC = tiny_spec(
    point="depth2-width2_sgd-lr0.05_wd0.0001",
    precision="int4",
    model_args={"depth": 2, "width": 2},
    optimizer="sgd",
    lr=0.05,
    weight_decay=1e-4,
    epochs=5,
    milestones=[3],
    n_train=640,
    n_test=200,
)


def cli_train(spec: RunSpec, tmp: Path, name: str, *options: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "qgen.cli",
        "train",
        "--spec",
        spec.to_json(),
        "--data-root",
        str(tmp / "data"),
        "--out",
        str(tmp / name / "out"),
        "--ckpt-dir",
        str(tmp / name / "ckpt"),
        "--threads",
        "1",
        *options,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def state_file(tmp: Path, name: str, spec: RunSpec) -> Path:
    """Where ``cli_train(spec, tmp, name)`` keeps its resume state."""
    return state_dir(tmp / name / "ckpt", spec) / "state.pt"


def saved_epoch(state: Path) -> int:
    try:
        return torch.load(state, map_location="cpu", weights_only=True)["epoch"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    reference = cli_train(SPEC, tmp_path, "reference")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    victim = cli_train(SPEC, tmp_path, "victim")
    state = state_file(tmp_path, "victim", SPEC)
    deadline = time.monotonic() + 240
    while saved_epoch(state) < 2 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    killed_at = saved_epoch(state)
    assert 2 <= killed_at < SPEC.epochs, "the run must be killed part-way"
    assert not (tmp_path / "victim" / "out" / "metrics.json").exists()

    resumed = cli_train(SPEC, tmp_path, "victim")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert f"resuming after epoch {killed_at} of {SPEC.epochs}" in log

    ref = torch.load(tmp_path / "reference" / "out" / "model.pt", weights_only=True)["state_dict"]
    got = torch.load(tmp_path / "victim" / "out" / "model.pt", weights_only=True)["state_dict"]
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    ref_metrics = json.loads((tmp_path / "reference" / "out" / "metrics.json").read_text())
    got_metrics = json.loads((tmp_path / "victim" / "out" / "metrics.json").read_text())
    assert got_metrics["history"] == [
        {**h, "images_per_s": g["images_per_s"]}
        for h, g in zip(ref_metrics["history"], got_metrics["history"], strict=True)
    ]
    assert got_metrics["train"] == ref_metrics["train"] and got_metrics["test"] == ref_metrics["test"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    metrics = train(SPEC, data_root=tmp / "data", out_dir=tmp / "out", ckpt_dir=tmp / "ckpt", device="cpu")
    return tmp, metrics


def test_metrics_record_the_selected_epoch_and_the_run(finished: tuple[Path, dict]) -> None:
    tmp, metrics = finished
    on_disk = json.loads((tmp / "out" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    losses = [h["loss"] for h in metrics["history"]]
    assert metrics["status"] == "ok" and len(losses) == SPEC.epochs
    assert metrics["selected_epoch"] == 1 + losses.index(min(losses))
    assert metrics["spec"] == SPEC.to_dict()
    assert metrics["generalization_gap"] == pytest.approx(metrics["test"]["loss"] - metrics["train"]["loss"])
    assert {"torch", "torchvision", "qgen", "python"} <= set(metrics["versions"])
    assert metrics["device"] == "cpu" and metrics["wall_time_s"] > 0
    assert set(metrics["step_sizes"]) == set(quant.step_sizes(build_model(SPEC)))


def test_saved_model_reproduces_the_reported_train_and_test_metrics(finished: tuple[Path, dict]) -> None:
    """Independent re-evaluation of model.pt with a plain loop over the raw split."""
    tmp, metrics = finished
    model = load_model(tmp / "out" / "model.pt", SPEC)
    for split, n in (("train", SPEC.n_train), ("test", SPEC.n_test)):
        loader = data.build_loader(
            "digits",
            split,
            root=tmp / "data",
            batch_size=1000,
            augment="none",
            shuffle=False,
            seed=SPEC.seed,
            subset=n,
        )
        images, labels = map(torch.cat, zip(*loader, strict=True))
        with torch.no_grad():
            logits = model(images)
        assert len(labels) == n
        assert F.cross_entropy(logits, labels).item() == pytest.approx(metrics[split]["loss"], rel=1e-5)
        assert (logits.argmax(1) == labels).float().mean().item() == pytest.approx(metrics[split]["accuracy"])


def test_init_weights_are_the_weights_before_training(finished: tuple[Path, dict]) -> None:
    tmp, _ = finished
    torch.manual_seed(SPEC.seed)
    fresh = build_model(SPEC).state_dict()
    init = torch.load(tmp / "out" / "init.pt", weights_only=True)["state_dict"]
    trained = torch.load(tmp / "out" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(fresh[k], init[k]) for k in fresh)
    assert not torch.equal(
        init["blocks.1.conv1.parametrizations.weight.original"],
        trained["blocks.1.conv1.parametrizations.weight.original"],
    )


def test_finished_run_is_not_retrained(finished: tuple[Path, dict]) -> None:
    tmp, metrics = finished
    again = train(SPEC, data_root=tmp / "data", out_dir=tmp / "out2", ckpt_dir=tmp / "ckpt", device="cpu")
    assert again["history"] == metrics["history"] and again["train"] == metrics["train"]


def test_every_output_records_the_spec_and_loads_without_code(finished: tuple[Path, dict]) -> None:
    tmp, metrics = finished
    assert metrics["run_digest"] == SPEC.digest
    for name in ("model.pt", "init.pt"):
        saved = torch.load(tmp / "out" / name, map_location="cpu", weights_only=True)
        assert saved["run_digest"] == SPEC.digest and json.loads(saved["spec"]) == SPEC.to_dict()
    state = torch.load(state_dir(tmp / "ckpt", SPEC) / "state.pt", map_location="cpu", weights_only=True)
    assert state["spec"] == SPEC.to_json() and state["epoch"] == SPEC.epochs
    assert json.loads((state_dir(tmp / "ckpt", SPEC) / "spec.json").read_text())["digest"] == SPEC.digest


@pytest.mark.parametrize("change", [{"epochs": 2}, {"code_version": 2}, {"seed": 1}, {"momentum": 0.5}])
def test_a_changed_setting_trains_afresh_and_leaves_the_old_state_intact(
    finished: tuple[Path, dict], tmp_path: Path, change: dict
) -> None:
    """Issue 10, cases 1, 2 and 7: a bumped code_version used to resume the old run's finished state; a
    seed changed after a kill kept the old seed's init.pt; any other change failed every job."""
    tmp, _ = finished
    old_state = state_dir(tmp / "ckpt", SPEC) / "state.pt"
    before = old_state.read_bytes()
    other = RunSpec.from_dict(SPEC.to_dict() | change | {"epochs": 2})
    metrics = train(
        other, data_root=tmp / "data", out_dir=tmp_path / "out", ckpt_dir=tmp / "ckpt", device="cpu"
    )
    assert metrics["run_digest"] == other.digest != SPEC.digest
    assert len(metrics["history"]) == 2 and state_dir(tmp / "ckpt", other) != state_dir(tmp / "ckpt", SPEC)
    assert old_state.read_bytes() == before
    torch.manual_seed(other.seed)
    fresh = build_model(other).state_dict()
    init = load_model(tmp_path / "out" / "init.pt", other).state_dict()
    assert all(torch.equal(fresh[k], init[k]) for k in fresh)


def test_state_of_another_spec_or_other_initial_weights_is_refused(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    tmp, _ = finished
    state = torch.load(state_dir(tmp / "ckpt", SPEC) / "state.pt", map_location="cpu", weights_only=True)
    other = dataclasses.replace(SPEC, lr=0.01)
    forged = state_dir(tmp_path / "ckpt", other)
    files.save_torch(forged / "state.pt", state)
    with pytest.raises(ProvenanceError, match=f"{forged}/state.pt holds the state of another run spec"):
        train(other, data_root=tmp / "data", out_dir=tmp_path / "x", ckpt_dir=tmp_path / "ckpt", device="cpu")
    files.save_torch(forged / "state.pt", state | {"spec": other.to_json(), "init_digest": "0" * 64})
    with pytest.raises(ProvenanceError, match=f"initial weights rebuilt from seed 0 differ.*delete {forged}"):
        train(other, data_root=tmp / "data", out_dir=tmp_path / "x", ckpt_dir=tmp_path / "ckpt", device="cpu")
    assert not (tmp_path / "x").exists()


def test_initial_weights_digest_is_that_of_the_rebuilt_model() -> None:
    torch.manual_seed(SPEC.seed)
    one = build_model(SPEC).state_dict()
    torch.manual_seed(SPEC.seed)
    assert tensors_digest(one) == tensors_digest(build_model(SPEC).state_dict())
    changed = {k: v.clone() for k, v in one.items()}
    next(iter(changed.values())).view(-1)[0] += 1e-6
    assert tensors_digest(changed) != tensors_digest(one)


def test_truncated_state_is_refused_naming_it_and_the_remedy(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    """Issue 10, case 3: a truncated checkpoint failed with 'PytorchStreamReader failed ...' naming
    neither the file nor the fix, or (init.pt) was copied on."""
    tmp, _ = finished
    broken = state_dir(tmp_path / "ckpt", SPEC) / "state.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes((state_dir(tmp / "ckpt", SPEC) / "state.pt").read_bytes()[:5000])
    proc = cli_train(SPEC, tmp_path, "", "--data-root", str(tmp / "data"))
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, log
    assert f"{broken} cannot be read as a checkpoint" in log
    assert f"delete {broken.parent} to restart this run from scratch" in log and "Traceback" not in log
    assert not (tmp_path / "out").exists()


def test_a_second_trainer_of_the_same_run_stops_at_once(finished: tuple[Path, dict], tmp_path: Path) -> None:
    tmp, _ = finished
    with files.exclusive_lock(tmp_path / "ckpt", "run under test"):
        started = time.monotonic()
        proc = cli_train(SPEC, tmp_path, "", "--data-root", str(tmp / "data"))
        log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, log
    assert f"run {SPEC.run_id} is locked by pid {os.getpid()} on" in log and "Traceback" not in log
    assert time.monotonic() - started < 60 and not (tmp_path / "out").exists()
    with (
        pytest.raises(LockedError, match="other is locked by pid"),
        files.exclusive_lock(tmp_path / "a", "one"),
        files.exclusive_lock(tmp_path / "a", "other"),
    ):
        pass


def test_diverged_run_is_recorded_not_raised(tmp_path: Path) -> None:
    spec = dataclasses.replace(SPEC, lr=1e12, momentum=0.9, epochs=3, precision="fp32")
    metrics = train(
        spec, data_root=tmp_path / "data", out_dir=tmp_path / "out", ckpt_dir=tmp_path / "ckpt", device="cpu"
    )
    assert metrics["status"] == "diverged" and metrics["diverged_at_epoch"] >= 1
    assert "train" not in metrics and (tmp_path / "out" / "model.pt").exists()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("step_weight_decay", [False, True])
def test_step_sizes_get_weight_decay_only_when_asked(step_weight_decay: bool) -> None:
    spec = dataclasses.replace(SPEC, step_weight_decay=step_weight_decay)
    model = build_model(spec)
    optimizer = build_optimizer(model, spec)
    steps = {id(p) for p in quant.step_parameters(model)}
    for group in optimizer.param_groups:
        is_steps = all(id(p) in steps for p in group["params"])
        expected = spec.weight_decay if (not is_steps or step_weight_decay) else 0.0
        assert group["weight_decay"] == expected
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_adamw_decays_only_parameters_of_two_or_more_dimensions() -> None:
    """timm's create_optimizer rule, as VVTQ trains: biases, BatchNorm and LSQ steps get no decay."""
    spec = dataclasses.replace(SPEC, optimizer="adamw", lr=5e-4)
    model = build_model(spec)
    optimizer = build_optimizer(model, spec)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["eps"] == 1e-8
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert len(decay) == len(list(model.parameters()))
    steps = {id(p) for p in quant.step_parameters(model)}
    assert steps
    for name, p in model.named_parameters():
        assert decay[id(p)] == (spec.weight_decay if p.ndim >= 2 and id(p) not in steps else 0.0), name
    assert {decay[id(p)] for p in model.parameters() if p.ndim == 1} == {0.0}


def test_a_cosine_schedule_is_its_closed_form_and_resumes() -> None:
    spec = dataclasses.replace(SPEC, schedule="cosine", milestones=[], epochs=7)

    def schedule() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        optimizer = build_optimizer(build_model(spec), spec)
        return optimizer, build_scheduler(optimizer, spec)

    def epochs(optimizer, scheduler, n: int) -> list[float]:
        lrs = []
        for _ in range(n):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()  # no gradients: only the order PyTorch expects
            scheduler.step()
        return lrs

    optimizer, scheduler = schedule()
    first = epochs(optimizer, scheduler, 3)
    fresh, resumed = schedule()  # as Trainee.start resumes: both states loaded
    fresh.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(scheduler.state_dict())
    rest = epochs(optimizer, scheduler, 4)
    assert epochs(fresh, resumed, 4) == rest
    expected = [spec.lr * (1 + math.cos(math.pi * e / 7)) / 2 for e in range(7)]
    assert first + rest == pytest.approx(expected, rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(QgenError, match=r"a cosine schedule has no milestones \(got \[3\]\); set milestones"):
        dataclasses.replace(SPEC, schedule="cosine")
    assert "schedule" not in SPEC.to_dict() and spec.to_dict()["schedule"] == "cosine"


def test_cli_reports_bad_spec_without_traceback(tmp_path: Path) -> None:
    spec = json.loads(SPEC.to_json()) | {"optimizer": "lbfgs"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qgen.cli",
            "train",
            "--spec",
            json.dumps(spec),
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--ckpt-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 1
    assert "lbfgs" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "metrics.json").exists()


# --- timer checkpoints inside an epoch, stop signals

SHORT = dataclasses.replace(SPEC, epochs=3, milestones=[2], n_train=384)  # 6 batches per epoch


def saved_progress(state: Path) -> tuple[int, int]:
    """``(epoch, batch)`` of the last checkpoint: epochs completed and batches into the next one."""
    try:
        saved = torch.load(state, map_location="cpu", weights_only=True)
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0, 0
    return saved["epoch"], saved["progress"]["batch"]


def assert_same_run(reference: Path, got: Path) -> None:
    """Equal weights and metrics (up to throughput and wall time) in two run output directories."""
    ref = torch.load(reference / "model.pt", weights_only=True)["state_dict"]
    new = torch.load(got / "model.pt", weights_only=True)["state_dict"]
    assert ref.keys() == new.keys()
    for key in ref:
        assert torch.equal(ref[key], new[key]), key
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    got_metrics = json.loads((got / "metrics.json").read_text())
    for metrics in (ref_metrics, got_metrics):
        metrics.pop("wall_time_s"), metrics.pop("command")
        for row in metrics["history"]:
            row.pop("images_per_s")
    assert got_metrics == ref_metrics


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("reference")
    proc = cli_train(SHORT, tmp, "reference")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    return tmp / "reference" / "out"


def start_and_wait_mid_epoch(tmp: Path, spec: RunSpec = SHORT) -> tuple[subprocess.Popen, Path]:
    """A training subprocess checkpointing after every batch, once it is a few batches into epoch 2+."""
    proc = cli_train(spec, tmp, "victim", "--checkpoint-minutes", "0.00001")
    state = state_file(tmp, "victim", spec)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        epoch, batch = saved_progress(state)
        if epoch >= 1 and 2 <= batch <= 3:
            return proc, state
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"never saw a mid-epoch checkpoint: {proc.communicate()[0]}")


def test_run_killed_inside_an_epoch_resumes_to_the_same_result(tmp_path: Path, reference_run: Path) -> None:
    victim, state = start_and_wait_mid_epoch(tmp_path)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    epoch, batch = saved_progress(state)
    assert batch > 0, "the kill must land inside an epoch"

    resumed = cli_train(SHORT, tmp_path, "victim")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert f"resuming after epoch {epoch} of {SHORT.epochs}, batch {batch}" in log
    assert_same_run(reference_run, tmp_path / "victim" / "out")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_checkpoints_then_exits_for_a_retry(
    tmp_path: Path, reference_run: Path, sig: signal.Signals
) -> None:
    """SIGTERM (scancel, preemption) and SIGINT (Ctrl-C) both checkpoint; the resumed run is bit-identical."""
    victim, state = start_and_wait_mid_epoch(tmp_path)
    victim.send_signal(sig)
    log = victim.communicate(timeout=60)[0]
    assert victim.returncode == EXIT_STOPPED, log
    assert f"stopped on {sig.name} after checkpointing" in log and "Traceback" not in log
    assert not (tmp_path / "victim" / "out" / "metrics.json").exists()
    epoch, batch = saved_progress(state)

    resumed = cli_train(SHORT, tmp_path, "victim")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert f"resuming after epoch {epoch} of {SHORT.epochs}, batch {batch}" in log
    assert_same_run(reference_run, tmp_path / "victim" / "out")


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=[s.name for s in STOP_SIGNALS])
def test_checkpointer_turns_a_stop_signal_into_a_checkpoint_and_stopped(sig: signal.Signals) -> None:
    checkpointer = Checkpointer(3600.0, Replicas(), torch.device("cpu"))
    assert not checkpointer.due()
    with checkpointer.catching_signals():
        os.kill(os.getpid(), sig)
        assert checkpointer.due()
        with pytest.raises(Stopped, match=f"stopped on {sig.name}"):
            checkpointer.written()
    assert signal.getsignal(sig) is not checkpointer._receive


def test_checkpointer_is_due_on_its_timer() -> None:
    checkpointer = Checkpointer(0.05, Replicas(), torch.device("cpu"))
    assert not checkpointer.due()
    time.sleep(0.06)
    assert checkpointer.due()
    checkpointer.written()
    assert not checkpointer.due()


@pytest.mark.slow  # two runs and a kill: about a minute on one loaded CPU core
def test_a_wa_run_calibrates_on_a_fresh_start_only_and_resumes_to_the_same_result(tmp_path: Path) -> None:
    """A w4a4 run sets its activation steps from the first batch when it starts afresh (init.pt keeps the
    steps as built); killed inside an epoch, it resumes them from its state, to the same result."""
    spec = dataclasses.replace(SHORT, precision="w4a4")
    reference = cli_train(spec, tmp_path, "reference")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    victim, state = start_and_wait_mid_epoch(tmp_path, spec)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert saved_progress(state)[1] > 0, "the kill must land inside an epoch"
    resumed = cli_train(spec, tmp_path, "victim")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0 and "resuming after epoch" in log, log
    assert_same_run(tmp_path / "reference" / "out", tmp_path / "victim" / "out")
    init = torch.load(tmp_path / "reference" / "out" / "init.pt", weights_only=True)["state_dict"]
    trained = torch.load(tmp_path / "reference" / "out" / "model.pt", weights_only=True)["state_dict"]
    inputs = [k for k in init if k.endswith("input_quantizer.step")]
    assert len(inputs) == len(quant.step_sizes_of_state(init)) > 0
    assert all(init[k].item() == 1.0 != trained[k].item() for k in inputs)


def test_a_model_with_dropout_resumes_its_random_draws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """MobileNet-V2's dropout draws from torch's global generator: a run that dies after an epoch resumes
    that generator from its state, so its weights equal an uninterrupted run's (dropout would otherwise
    draw epoch 2's masks from the state the model's initialisation left)."""
    spec = tiny_spec(model="mobilenet_v2", model_args={}, epochs=2, milestones=[], n_train=128, n_test=64)
    torch.set_num_threads(1)

    def run(name: str) -> None:
        train(
            spec,
            data_root=tmp_path / "data",
            out_dir=tmp_path / name / "out",
            ckpt_dir=tmp_path / name / "ckpt",
            device="cpu",
        )

    run("reference")
    epochs = train_epoch

    def dies_in_epoch_2(*args: object, **kwargs: object) -> object:
        if args[3] == 2:
            raise RuntimeError("killed")
        return epochs(*args, **kwargs)

    monkeypatch.setattr("qgen.train.train_epoch", dies_in_epoch_2)
    with pytest.raises(RuntimeError, match="killed"):
        run("victim")
    monkeypatch.setattr("qgen.train.train_epoch", epochs)
    state_path = state_dir(tmp_path / "victim" / "ckpt", spec) / "state.pt"
    older = torch.load(state_path, weights_only=True)
    assert set(older.pop("rng")) == {"cpu"}
    torch.save(older, tmp_path / "older.pt")
    run("victim")
    assert_same_run(tmp_path / "reference" / "out", tmp_path / "victim" / "out")

    # A state an older qgen wrote has no random-number state: it resumes, and says what that means.
    (tmp_path / "victim" / "out" / "metrics.json").unlink()
    state_path.write_bytes((tmp_path / "older.pt").read_bytes())
    with caplog.at_level(logging.WARNING, logger="qgen.train"):
        run("victim")
    assert f"{state_path} holds no random-number state (an older qgen wrote it)" in caplog.text


# --- how the arithmetic is done (qgen.train.Execution): fast paths against the plain one


def test_execution_resolves_mixed_precision_by_device_and_names_bad_values() -> None:
    assert Execution().resolved(torch.device("cpu")).mixed_precision == "off"
    assert Execution().resolved(torch.device("cuda", 0)).mixed_precision == "bf16"
    assert Execution("off").resolved(torch.device("cuda", 0)).mixed_precision == "off"
    with pytest.raises(QgenError, match="compile must be one of off, default, reduce-overhead, max-autotune"):
        Execution(compile="fast")
    with pytest.raises(QgenError, match="mixed_precision must be one of auto, bf16, off; got 'fp16'"):
        Execution(mixed_precision="fp16")


def one_epoch(execution: Execution, spec: RunSpec = SHORT) -> tuple[float, dict[str, torch.Tensor]]:
    """The running loss and the weights after one epoch of ``spec`` from its W0 under ``execution``."""
    torch.set_num_threads(1)
    loader = data.build_loader(
        "digits", "train", root=Path("unused"), batch_size=spec.batch_size, augment="crop",
        shuffle=True, seed=0, subset=spec.n_train, drop_last=True,
    )  # fmt: skip
    torch.manual_seed(spec.seed)
    model = build_model(spec).to(memory_format=execution.memory_format)
    optimizer = build_optimizer(model, spec)
    running, _ = train_epoch(execution.compiled(model), loader, optimizer, 1, execution=execution)
    return running.loss, {k: v.detach().clone() for k, v in model.state_dict().items()}


def relative_gap(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], w0: dict[str, torch.Tensor]
) -> float:
    """``||a - b|| / ||a - w0||`` over the floating-point tensors: the disagreement per unit of training."""
    keys = [k for k in a if a[k].is_floating_point()]
    gap = sum(float((a[k] - b[k]).square().sum()) for k in keys)
    moved = sum(float((a[k] - w0[k]).square().sum()) for k in keys)
    return (gap / moved) ** 0.5


FP32_SHORT = dataclasses.replace(SHORT, precision="fp32")


def test_channels_last_trains_as_the_standard_layout() -> None:
    """Six SGD steps of an FP32 NiN: channels-last convolutions add in another order, and in this small
    problem activations at a ReLU's kink then land on its other side: the epoch loss agrees to 1e-3 (2e-4
    measured), the weights to 5 % of the distance they moved (1.5 % measured)."""
    torch.manual_seed(FP32_SHORT.seed)
    w0 = build_model(FP32_SHORT).state_dict()
    plain_loss, plain = one_epoch(PLAIN, FP32_SHORT)
    fast_loss, fast = one_epoch(dataclasses.replace(PLAIN, channels_last=True), FP32_SHORT)
    assert fast_loss == pytest.approx(plain_loss, rel=1e-3)
    assert relative_gap(plain, fast, w0) < 0.05
    assert next(
        p for p in build_model(FP32_SHORT).to(memory_format=torch.channels_last).parameters() if p.ndim == 4
    ).is_contiguous(memory_format=torch.channels_last)


def test_bf16_autocast_trains_as_float32_to_bf16_rounding() -> None:
    """bf16 keeps 8 significant bits: the epoch loss agrees to 1e-2 (3e-4 measured) and the weights to 10 %
    of the distance they moved (3 % measured); the weights themselves stay float32."""
    torch.manual_seed(FP32_SHORT.seed)
    w0 = build_model(FP32_SHORT).state_dict()
    plain_loss, plain = one_epoch(PLAIN, FP32_SHORT)
    bf16_loss, bf16 = one_epoch(dataclasses.replace(PLAIN, mixed_precision="bf16"), FP32_SHORT)
    assert bf16_loss == pytest.approx(plain_loss, rel=1e-2) and bf16_loss != plain_loss
    assert relative_gap(plain, bf16, w0) < 0.1
    assert all(v.dtype in (torch.float32, torch.int64) for v in bf16.values())


def test_a_compiled_step_trains_as_the_eager_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile's graph capture (Dynamo, AOTAutograd's joint forward-backward graph) of an int4 NiN,
    run by the aot_eager backend: bit for bit the eager weights and loss. Inductor's generated code takes
    a minute to build on this CPU: the slow test below runs it."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch.manual_seed(SHORT.seed)
    w0 = build_model(SHORT).state_dict()
    eager_loss, eager = one_epoch(PLAIN)
    compiled_loss, compiled = one_epoch(dataclasses.replace(PLAIN, compile="default"))
    assert compiled_loss == eager_loss
    assert relative_gap(eager, compiled, w0) == 0


@pytest.mark.slow
def test_an_inductor_compiled_step_trains_as_the_eager_one() -> None:
    """Inductor fuses and reorders the arithmetic: as channels-last, loss to 1e-3, weights to 5 %."""
    torch.manual_seed(FP32_SHORT.seed)
    w0 = build_model(FP32_SHORT).state_dict()
    eager_loss, eager = one_epoch(PLAIN, FP32_SHORT)
    compiled_loss, compiled = one_epoch(dataclasses.replace(PLAIN, compile="default"), FP32_SHORT)
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-3)
    assert relative_gap(eager, compiled, w0) < 0.05


def test_a_run_never_resumes_under_another_mixed_precision(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    tmp, metrics = finished
    assert metrics["execution"] == {
        "mixed_precision": "off",
        "channels_last": True,
        "compile": "off",
        "group_size": 1,
    }
    with pytest.raises(
        ProvenanceError,
        match="started with mixed precision 'off' and would continue with 'bf16'; pass --mixed-precision off",
    ):
        train(
            SPEC,
            data_root=tmp / "data",
            out_dir=tmp_path / "o",
            ckpt_dir=tmp / "ckpt",
            device="cpu",
            execution=Execution("bf16"),
        )
    assert not (tmp_path / "o").exists()


def test_the_profile_keys_default_to_the_trainers_defaults() -> None:
    """`train_mixed_precision`, `train_channels_last`, `train_compile` (schema defaults, what the workflow
    passes when a profile says nothing) are :class:`Execution`'s defaults; packs default to processes."""
    schema = yaml.safe_load(
        (Path(__file__).parent.parent / "workflow/schemas/config.schema.yaml").read_text()
    )
    props = schema["properties"]
    assert (
        Execution(
            props["train_mixed_precision"]["default"],
            props["train_channels_last"]["default"],
            props["train_compile"]["default"],
        )
        == Execution()
    )
    assert props["train_pack_mode"]["default"] == "processes"
