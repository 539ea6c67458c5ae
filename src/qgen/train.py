"""Training one run: FP32 or LSQ-quantized, resumable, keeping the lowest-training-loss epoch (paper §4.2).

Outputs (``out_dir``, see :mod:`qgen.runs`): ``model.pt`` (the selected weights), ``init.pt`` (the weights
before the first step, needed by the flatness measures) and ``metrics.json`` (written last; its presence
marks a finished run), each recording the spec and its digest. Resume state lives in
``<ckpt_dir>/<short digest>/state.pt``: one directory per spec digest
(:attr:`qgen.experiments.RunSpec.digest`), so a changed spec starts afresh and never resumes, overwrites
or deletes another spec's state (remove a ``<short digest>`` directory, whose ``spec.json`` says which
spec it holds, to reclaim its space). ``<ckpt_dir>/lock`` is held while the run trains
(:func:`qgen.files.exclusive_lock`): a second trainer of the same run stops at once, naming the first.

The state is rewritten atomically after every epoch, every ``checkpoint_every_s`` seconds inside an epoch
(at a batch boundary, with the batch index and the epoch's running sums), and at once when SIGTERM,
SIGUSR1 (SLURM's preemption and time-limit warnings) or SIGINT (Ctrl-C) arrives, after which training
stops with :class:`Stopped`. A job killed at any point (SIGKILL, node loss) restarts from its last
checkpoint and ends with the same weights and metrics as an uninterrupted run: data order and
augmentation are a function of ``(seed, epoch)`` only, and the loaders skip the batches an interrupted
epoch had already trained on. The initial weights are rebuilt from the seed on every start and checked
against the digest the state recorded, so ``init.pt`` is always the W0 of this very spec.

Under ``torchrun`` the run is data-parallel (:mod:`qgen.distributed`): every process trains on its slice
of each global batch, only rank 0 writes (and locks), and the checkpoint holds the global state, so a run
may resume with another number of processes.
"""

from __future__ import annotations

import logging
import math
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from qgen import data, files, quant
from qgen.distributed import Replicas
from qgen.errors import ProvenanceError, QgenError
from qgen.experiments import RUN_SCHEMA_VERSION, RunSpec
from qgen.norms import weight_norm
from qgen.objective import Objective, build_objective
from qgen.runs import Evaluation, build_model, evaluate, resolve_device, tensors_digest

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "rmsprop")
SELECTION = ("epoch_loss", "train_loss")
PROGRESS_EVERY_S = 30.0
CHECKPOINT_EVERY_S = 300.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
EXIT_STOPPED = 75  # EX_TEMPFAIL: the job did not fail, it should be run again (Snakemake retries it)


class Stopped(Exception):
    """Training stopped on a signal after writing its checkpoint; the same command resumes it."""


def build_optimizer(model: nn.Module, spec: RunSpec) -> torch.optim.Optimizer:
    """SGD (momentum), Adam or RMSProp; LSQ steps get weight decay only if ``spec.step_weight_decay``."""
    steps = {id(p) for p in quant.step_parameters(model)}
    rest = [p for p in model.parameters() if id(p) not in steps]
    step_params = [p for p in model.parameters() if id(p) in steps]
    groups: list[dict[str, Any]] = [{"params": rest, "weight_decay": spec.weight_decay}]
    if step_params:
        groups.append(
            {"params": step_params, "weight_decay": spec.weight_decay if spec.step_weight_decay else 0.0}
        )
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum)
    if spec.optimizer == "adam":
        return torch.optim.Adam(groups, lr=spec.lr)
    if spec.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=spec.lr)
    raise QgenError(f"unknown optimizer {spec.optimizer!r}; expected one of {OPTIMIZERS}")


@dataclass
class EpochProgress:
    """How far an epoch got: batches trained, and the sums of loss, correct and images over them."""

    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0


class Checkpointer:
    """Decides at batch boundaries when to write the resume state, and writes it through ``save``.

    A checkpoint is due every ``every_s`` seconds and as soon as one of :data:`STOP_SIGNALS` arrived;
    after a signal's checkpoint training stops with :class:`Stopped`. Data-parallel processes agree on
    both decisions, so all of them reach the same batch.
    """

    def __init__(self, every_s: float, replicas: Replicas, device: torch.device) -> None:
        if every_s <= 0:
            raise QgenError(f"checkpoint interval must be > 0 seconds, got {every_s}")
        self.every_s, self.replicas, self.device = every_s, replicas, device
        self.last = time.monotonic()
        self.received: int | None = None

    @contextmanager
    def catching_signals(self) -> Iterator[None]:
        """Record :data:`STOP_SIGNALS` instead of dying of them, for the duration of the block."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._receive) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _receive(self, signum: int, frame: object) -> None:
        self.received = signum

    def due(self) -> bool:
        local = self.received is not None or time.monotonic() - self.last >= self.every_s
        return self.replicas.any(local, self.device)

    def written(self) -> None:
        """Note a checkpoint just written; raise :class:`Stopped` if a stop signal asked for it."""
        self.last = time.monotonic()
        if self.replicas.any(self.received is not None, self.device):
            name = signal.Signals(self.received).name if self.received is not None else "a peer's signal"
            raise Stopped(f"stopped on {name} after checkpointing; rerun the same command to resume")


def train_epoch(
    model: nn.Module,
    loader: data.BatchLoader,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    *,
    progress: EpochProgress | None = None,
    checkpoint: tuple[Checkpointer, Callable[[EpochProgress], None]] | None = None,
    replicas: Replicas | None = None,
    objective: Objective | None = None,
) -> tuple[Evaluation, float]:
    """One pass of mini-batch training; returns the running loss/accuracy and images per second.

    The loss is ``objective(logits, images, labels, epoch)`` (:mod:`qgen.objective`), by default the
    cross-entropy with the labels; the running loss is that objective's.

    The loss is accumulated on the device and checked once per epoch, so no step waits on the host.
    ``progress`` resumes an epoch after its first ``progress.batch`` batches; ``checkpoint`` is a
    :class:`Checkpointer` and the function writing the state with the epoch's progress when it is due.
    With ``replicas``, sums and progress are over all data-parallel processes.
    """
    replicas = replicas or Replicas()
    progress = progress or EpochProgress()
    model.train()
    loader.set_epoch(epoch, start=progress.batch)
    device = next(model.parameters()).device
    steps = quant.step_parameters(model)
    # The resumed sums enter once, on rank 0, so that adding over processes counts them once.
    resumed = progress if replicas.writer else EpochProgress()
    total_loss = torch.tensor(resumed.loss_sum, device=device)
    correct = torch.tensor(resumed.correct, device=device, dtype=torch.int64)
    seen = resumed.seen
    start = last_report = time.perf_counter()
    for i, (images, labels) in enumerate(loader, progress.batch + 1):
        logits = model(images)
        loss = (
            F.cross_entropy(logits, labels) if objective is None else objective(logits, images, labels, epoch)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        quant.clamp_steps_(steps)
        total_loss += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        if time.perf_counter() - last_report > PROGRESS_EVERY_S:
            last_report = time.perf_counter()
            log.info("epoch %d: batch %d/%d, %.0f img/s", epoch, i, len(loader), seen / (last_report - start))
        if checkpoint is not None and checkpoint[0].due():
            checkpoint[1](_progress(i, total_loss, correct, seen, replicas))
    images_per_s = (seen - resumed.seen) / max(time.perf_counter() - start, 1e-9)
    done = _progress(len(loader), total_loss, correct, seen, replicas)
    return Evaluation(done.loss_sum / max(done.seen, 1), done.correct / max(done.seen, 1)), images_per_s


def _progress(
    batch: int, total_loss: Tensor, correct: Tensor, seen: int, replicas: Replicas
) -> EpochProgress:
    """The epoch's progress with its sums added over data-parallel processes (one host sync)."""
    if not replicas.parallel:
        return EpochProgress(batch, float(total_loss), int(correct), seen)
    sums = replicas.sum(
        torch.stack([total_loss.double(), correct.double(), total_loss.new_tensor(seen).double()])
    )
    return EpochProgress(batch, float(sums[0]), int(sums[1]), int(sums[2]))


@dataclass
class TrainState:
    """What a resumed job needs: progress, optimizer state and the best epoch so far."""

    epoch: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    best_epoch: int
    best_loss: float
    best_model: dict[str, Tensor]
    history: list[dict[str, float]]
    elapsed_s: float
    diverged_at: int | None
    spec: str
    init_digest: str
    progress: dict[str, Any] = field(default_factory=lambda: asdict(EpochProgress()))

    @classmethod
    def fresh(cls, model: nn.Module, spec: RunSpec, init_digest: str) -> TrainState:
        """The state before the first epoch; the initial weights stand in as the best so far."""
        return cls(
            epoch=0,
            model={},
            optimizer={},
            scheduler={},
            best_epoch=0,
            best_loss=math.inf,
            best_model=_clone(model.state_dict()),
            history=[],
            elapsed_s=0.0,
            diverged_at=None,
            spec=spec.to_json(),
            init_digest=init_digest,
        )


def _clone(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state_dict.items()}


def _load_state(path: Path, spec: RunSpec, init_digest: str) -> TrainState | None:
    """The resume state in ``path``, checked to continue exactly this spec from these initial weights."""
    if not path.exists():
        return None
    restart = f"delete {path.parent} to restart this run from scratch"
    loaded = files.load_torch(path, restart)
    try:
        state = TrainState(**loaded)
    except TypeError as error:
        raise ProvenanceError(
            f"{path} is not a qgen training state of this version ({error}); {restart}"
        ) from None
    if state.spec != spec.to_json():
        raise ProvenanceError(f"{path} holds the state of another run spec than {spec.run_id}'s; {restart}")
    if state.init_digest != init_digest:
        raise ProvenanceError(
            f"{path}: the initial weights rebuilt from seed {spec.seed} differ from those this run started "
            f"from (did torch, timm or the pretrained weights change?); {restart}"
        )
    return state


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that determine a run's numbers (read without importing them)."""
    packages = ("qgen", "torch", "torchvision", "timm", "numpy", "scikit-learn")
    return {"python": platform.python_version()} | {name: metadata.version(name) for name in packages}


def train(
    spec: RunSpec,
    *,
    data_root: Path,
    out_dir: Path,
    ckpt_dir: Path,
    device: str = "auto",
    workers: int = 0,
    checkpoint_every_s: float = CHECKPOINT_EVERY_S,
) -> dict[str, Any]:
    """Train ``spec`` to completion (resuming from ``ckpt_dir/<short digest>``) and write its outputs.

    ``ckpt_dir`` is the run's checkpoint directory (e.g. ``results/checkpoints/<run id>``); it holds the
    lock and one state directory per spec digest. Data-parallel when started by ``torchrun``
    (:class:`qgen.distributed.Replicas`). Raises :class:`Stopped` after checkpointing when one of
    :data:`STOP_SIGNALS` arrives, and :class:`~qgen.errors.LockedError` if another process trains the run.
    """
    if spec.select_by not in SELECTION:
        raise QgenError(f"select_by must be one of {SELECTION}, got {spec.select_by!r}")
    replicas = Replicas.from_env()
    dev = replicas.device(resolve_device(device))
    lock = files.exclusive_lock(ckpt_dir, f"run {spec.run_id}") if replicas.writer else nullcontext()
    with lock:
        replicas.start(dev)
        try:
            checkpointer = Checkpointer(checkpoint_every_s, replicas, dev)
            return _train(spec, data_root, out_dir, state_dir(ckpt_dir, spec), dev, workers, checkpointer)
        finally:
            replicas.stop()


def state_dir(ckpt_dir: Path, spec: RunSpec) -> Path:
    """Where the resume state of ``spec`` lives inside the run's checkpoint directory."""
    return ckpt_dir / spec.short_digest


def _train(
    spec: RunSpec,
    data_root: Path,
    out_dir: Path,
    ckpt_dir: Path,
    dev: torch.device,
    workers: int,
    checkpointer: Checkpointer,
) -> dict[str, Any]:
    replicas = checkpointer.replicas
    loader_args = dict(
        root=data_root,
        batch_size=spec.batch_size,
        seed=spec.seed,
        device=dev,
        workers=workers,
        rank=replicas.rank,
        world=replicas.world,
    )
    train_loader = data.build_loader(
        spec.dataset,
        "train",
        augment=spec.augment,
        shuffle=True,
        drop_last=True,
        subset=spec.n_train,
        **loader_args,
    )
    train_eval_loader = data.build_loader(
        spec.dataset, "train", augment="none", shuffle=False, subset=spec.n_train, **loader_args
    )
    test_loader = data.build_loader(
        spec.dataset, "test", augment="none", shuffle=False, subset=spec.n_test, **loader_args
    )

    torch.manual_seed(spec.seed)
    model = build_model(spec)
    init_state = _clone(model.state_dict())  # W0, rebuilt identically from the seed on every start
    init_digest = tensors_digest(init_state)
    model = model.to(dev)
    objective = build_objective(spec, model, dev)
    optimizer = build_optimizer(model, spec)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=spec.milestones, gamma=spec.gamma)
    stepped: nn.Module = model
    if replicas.parallel:
        stepped = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    state_path = ckpt_dir / "state.pt"
    if replicas.writer and not (ckpt_dir / "spec.json").exists():
        files.write_json(
            ckpt_dir / "spec.json", {"run_id": spec.run_id, "digest": spec.digest, "spec": spec.to_dict()}
        )
    state = _load_state(state_path, spec, init_digest)
    if state is None:
        if quant.activation_quantizers(model):  # LSQ: activation steps from the first training batch
            train_loader.set_epoch(1)
            images, _ = next(iter(train_loader))
            quant.calibrate_activations(model, images, lambda t: replicas.sum(t) / replicas.world)
        state = TrainState.fresh(model, spec, init_digest)
    else:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        log.info(
            "%s: resuming after epoch %d of %d, batch %d",
            spec.run_id,
            state.epoch,
            spec.epochs,
            state.progress["batch"],
        )

    log.info(
        "%s: training on %s%s, %d train / %d test images",
        spec.run_id,
        dev,
        f" ({replicas.world} data-parallel processes)" if replicas.parallel else "",
        train_eval_loader.num_samples,
        test_loader.num_samples,
    )
    segment_start, elapsed_before = time.perf_counter(), state.elapsed_s

    def save(progress: EpochProgress) -> None:
        state.progress = asdict(progress)
        state.elapsed_s = elapsed_before + time.perf_counter() - segment_start
        state.model, state.optimizer, state.scheduler = (
            model.state_dict(),
            optimizer.state_dict(),
            scheduler.state_dict(),
        )
        if replicas.writer:
            # vars(), not asdict(): asdict deep-copies tensors and rebuilds the scheduler's Counter wrongly.
            files.save_torch(state_path, vars(state))
        checkpointer.written()

    with checkpointer.catching_signals():
        while state.epoch < spec.epochs and state.diverged_at is None:
            epoch = state.epoch + 1
            running, images_per_s = train_epoch(
                stepped,
                train_loader,
                optimizer,
                epoch,
                progress=EpochProgress(**state.progress),
                checkpoint=(checkpointer, save),
                replicas=replicas,
                objective=objective,
            )
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            if not math.isfinite(running.loss):
                state.diverged_at = epoch
                log.warning(
                    "%s: loss became non-finite in epoch %d; stopping (status: diverged)", spec.run_id, epoch
                )
            else:
                loss = (
                    running.loss
                    if spec.select_by == "epoch_loss"
                    else evaluate(model, train_eval_loader, replicas).loss
                )
                if loss < state.best_loss:
                    state.best_epoch, state.best_loss, state.best_model = (
                        epoch,
                        loss,
                        _clone(model.state_dict()),
                    )
                state.history.append(
                    {
                        "epoch": epoch,
                        "loss": running.loss,
                        "accuracy": running.accuracy,
                        "lr": lr,
                        "images_per_s": images_per_s,
                    }
                )
                log.info(
                    "epoch %d/%d  loss %.4f  acc %.2f%%  lr %.3g  %.0f img/s",
                    epoch,
                    spec.epochs,
                    running.loss,
                    100 * running.accuracy,
                    lr,
                    images_per_s,
                )
            state.epoch = epoch
            save(EpochProgress())

    return _finish(spec, state, model, init_state, train_eval_loader, test_loader, out_dir, dev, replicas)


def _finish(
    spec: RunSpec,
    state: TrainState,
    model: nn.Module,
    init_state: dict[str, Tensor],
    train_eval_loader: data.BatchLoader,
    test_loader: data.BatchLoader,
    out_dir: Path,
    dev: torch.device,
    replicas: Replicas,
) -> dict[str, Any]:
    """Evaluate the selected epoch; rank 0 writes ``model.pt``, ``init.pt`` and finally ``metrics.json``."""
    model.load_state_dict(state.best_model)
    metrics: dict[str, Any] = {
        "schema_version": RUN_SCHEMA_VERSION,
        "run_id": spec.run_id,
        "run_digest": spec.digest,
        "spec": spec.to_dict(),
        "status": "diverged" if state.diverged_at is not None else "ok",
        "diverged_at_epoch": state.diverged_at,
        "selected_epoch": state.best_epoch or None,
        "epochs_completed": state.epoch,
        "history": state.history,
        "wall_time_s": state.elapsed_s,
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "processes": replicas.world,
        "versions": versions(),
        "command": " ".join(sys.argv),
    }
    if state.diverged_at is None:
        train_eval = evaluate(model, train_eval_loader, replicas)
        test_eval = evaluate(model, test_loader, replicas)
        metrics |= {
            "train": asdict(train_eval),
            "test": asdict(test_eval),
            "generalization_gap": test_eval.loss - train_eval.loss,
            "weight_norm": weight_norm(model),
            "step_sizes": quant.step_sizes(model),
        }
        log.info(
            "%s: selected epoch %d; train loss %.4f acc %.2f%%; test loss %.4f acc %.2f%%",
            spec.run_id,
            state.best_epoch,
            train_eval.loss,
            100 * train_eval.accuracy,
            test_eval.loss,
            100 * test_eval.accuracy,
        )
    if not replicas.writer:
        return metrics
    provenance = {"spec": spec.to_json(), "run_digest": spec.digest}
    files.save_torch(
        out_dir / "model.pt", provenance | {"epoch": state.best_epoch, "state_dict": model.state_dict()}
    )
    files.save_torch(out_dir / "init.pt", provenance | {"state_dict": init_state})
    files.write_json(out_dir / "metrics.json", metrics)
    return metrics
