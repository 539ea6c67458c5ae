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
augmentation are a function of ``(seed, epoch)`` only, the loaders skip the batches an interrupted
epoch had already trained on, and torch's global random-number state, which dropout and drop path draw
from, is saved with the state and restored (under data parallelism every process restores the writer's).
The initial weights are rebuilt from the seed on every start and checked against the digest the state
recorded, so ``init.pt`` is always the W0 of this very spec.

How the arithmetic is carried out is an :class:`Execution`, not part of the run spec: bf16 autocast
(on by default on CUDA, off on a CPU), channels-last tensors (on by default) and ``torch.compile`` (off
by default; ``reduce-overhead`` adds CUDA graphs). Each changes the numbers only by float rounding (bf16
autocast by bf16 rounding of the activations and of the matrix products' inputs), so the digest stays
the experiment's; ``metrics.json`` records the execution, and a run never resumes under another mixed
precision than it started with. The loss is the run's :class:`qgen.objective.Objective` (cross-entropy,
or distillation, plus VVTQ's bin regularizer), :func:`qgen.objective.training_loss` where it is plain.

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
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from qgen import data, files, quant
from qgen.distributed import Replicas
from qgen.errors import ProvenanceError, QgenError
from qgen.experiments import RUN_SCHEMA_VERSION, RunSpec
from qgen.norms import weight_norm
from qgen.objective import Objective, build_objective, training_loss
from qgen.runs import Evaluation, build_model, evaluate, resolve_device, tensors_digest
from qgen.stopping import STOP_SIGNALS
from qgen.vocab import COMPILE_MODES, MIXED_PRECISION

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "rmsprop", "adamw")
SCHEDULES = ("step", "cosine")
SELECTION = ("epoch_loss", "train_loss")
PROGRESS_EVERY_S = 30.0
CHECKPOINT_EVERY_S = 300.0


class Stopped(Exception):
    """Training stopped on a signal after writing its checkpoint; the same command resumes it."""


Compilable = TypeVar("Compilable", bound=Callable[..., Any])


@dataclass(frozen=True)
class Execution:
    """How a run's arithmetic is carried out on its device; none of it is part of the run spec.

    ``mixed_precision``: ``"bf16"`` runs forward and loss under ``torch.autocast(dtype=torch.bfloat16)``
    (the backward follows the forward's dtypes; parameters, gradients and optimizer state stay float32,
    and the quantizers keep their grid as :mod:`qgen.quant` provides), ``"off"`` runs in float32,
    ``"auto"`` means bf16 on CUDA and off elsewhere. ``channels_last``: the model's 4-d tensors and every
    batch in ``torch.channels_last`` layout (faster convolutions on CPUs and tensor cores alike).
    ``compile``: ``torch.compile`` mode of the training forward (``"off"``: eager; ``"reduce-overhead"``
    also captures CUDA graphs). An eager step quantizes the model's weights in one node
    (:meth:`weights_quantized`), which changes no number.
    """

    mixed_precision: str = "auto"
    channels_last: bool = True
    compile: str = "off"

    def __post_init__(self) -> None:
        for key, choices in (("mixed_precision", MIXED_PRECISION), ("compile", COMPILE_MODES)):
            if getattr(self, key) not in choices:
                raise QgenError(f"{key} must be one of {', '.join(choices)}; got {getattr(self, key)!r}")

    def resolved(self, device: torch.device) -> Execution:
        """These options with ``"auto"`` replaced by the choice for ``device``."""
        if self.mixed_precision != "auto":
            return self
        return replace(self, mixed_precision="bf16" if device.type == "cuda" else "off")

    def prepare(self, device: torch.device) -> None:
        """Process-wide settings for training on ``device``: on CUDA, cuDNN picks the fastest convolution
        algorithm for each shape once (the shapes of a run never change; the choice is float rounding)."""
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def autocast(self, device: torch.device) -> AbstractContextManager[object]:
        """The autocast context of a training forward (a resolved execution)."""
        if self.mixed_precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def batch(self, images: Tensor) -> Tensor:
        """A batch of images in this execution's memory layout."""
        return images.contiguous(memory_format=self.memory_format)

    def weights_quantized(self, model: nn.Module) -> Callable[[], AbstractContextManager[object]]:
        """The context of a training forward of ``model``: its weights quantized in one node in eager mode
        (:class:`qgen.quant.WeightsInOneNode`); a compiled step fuses the layers' quantizers itself."""
        if self.compile != "off":
            return nullcontext
        return quant.WeightsInOneNode(model).quantized

    def compiled(self, step: Compilable) -> Compilable:
        """``step`` (a module or a function) under ``torch.compile`` in this execution's mode, or ``step``
        itself when off."""
        if self.compile == "off":
            return step
        return cast(Compilable, torch.compile(step, mode=self.compile))


PLAIN = Execution(mixed_precision="off", channels_last=False)
"""Eager float32 in the standard layout: the path every fast one is tested against."""


def build_optimizer(model: nn.Module, spec: RunSpec) -> torch.optim.Optimizer:
    """SGD (momentum), Adam, RMSProp or AdamW; LSQ steps get weight decay only if
    ``spec.step_weight_decay``.

    AdamW is timm's ``create_optimizer`` recipe as VVTQ trains with it: no weight decay on parameters of
    fewer than two dimensions (biases, norms' scales and shifts, activation offsets), PyTorch's betas and
    ``eps = 1e-8``. The other optimizers decay every parameter but the steps.
    """
    steps = {id(p) for p in quant.step_parameters(model)}
    exempt = {id(p) for p in model.parameters() if spec.optimizer == "adamw" and p.ndim < 2} - steps
    rest = [p for p in model.parameters() if id(p) not in steps | exempt]
    step_params = [p for p in model.parameters() if id(p) in steps]
    groups: list[dict[str, Any]] = [{"params": rest, "weight_decay": spec.weight_decay}]
    if step_params:
        groups.append(
            {"params": step_params, "weight_decay": spec.weight_decay if spec.step_weight_decay else 0.0}
        )
    if exempt:
        groups.append({"params": [p for p in model.parameters() if id(p) in exempt], "weight_decay": 0.0})
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum)
    if spec.optimizer == "adam":
        return torch.optim.Adam(groups, lr=spec.lr)
    if spec.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=spec.lr)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, eps=1e-8)
    raise QgenError(f"unknown optimizer {spec.optimizer!r}; expected one of {OPTIMIZERS}")


def build_scheduler(optimizer: torch.optim.Optimizer, spec: RunSpec) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule, stepped after every epoch ``e = 0 .. epochs - 1``.

    ``step``: ``lr_e = lr * gamma^k``, ``k`` the milestones ``<= e`` (``MultiStepLR``; the paper's CIFAR
    and ImageNet recipes). ``cosine``: ``lr_e = lr * (1 + cos(pi e / epochs)) / 2``, the closed form of
    timm's per-epoch cosine schedule without warm-up and with ``min_lr = 0`` (VVTQ's).
    """
    if spec.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=spec.milestones, gamma=spec.gamma)
    if spec.schedule == "cosine":
        epochs = spec.epochs
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: (1 + math.cos(math.pi * e / epochs)) / 2
        )
    raise QgenError(f"unknown schedule {spec.schedule!r}; expected one of {SCHEDULES}")


@dataclass
class EpochProgress:
    """How far an epoch got: batches trained, and the sums of loss, correct and images over them."""

    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    def running(self) -> Evaluation:
        """The mean loss and the accuracy over the images trained so far."""
        return Evaluation(self.loss_sum / max(self.seen, 1), self.correct / max(self.seen, 1))


class Checkpointer:
    """Decides at batch boundaries when to write the resume state, and writes it through ``save``.

    A checkpoint is due every ``every_s`` seconds and as soon as one of
    :data:`~qgen.stopping.STOP_SIGNALS` arrived; after a signal's checkpoint training stops with
    :class:`Stopped`. Data-parallel processes agree on both decisions, so all of them reach the same batch.
    """

    def __init__(self, every_s: float, replicas: Replicas, device: torch.device) -> None:
        if every_s <= 0:
            raise QgenError(f"checkpoint interval must be > 0 seconds, got {every_s}")
        self.every_s, self.replicas, self.device = every_s, replicas, device
        self.last = time.monotonic()
        self.received: int | None = None

    @contextmanager
    def catching_signals(self) -> Iterator[None]:
        """Record the stop signals instead of dying of them, for the duration of the block."""
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
    execution: Execution | None = None,
    objective: Objective | None = None,
) -> tuple[Evaluation, float]:
    """One pass of mini-batch training; returns the running loss/accuracy and images per second.

    The loss is accumulated on the device and checked once per epoch, so no step waits on the host.
    ``progress`` resumes an epoch after its first ``progress.batch`` batches; ``checkpoint`` is a
    :class:`Checkpointer` and the function writing the state with the epoch's progress when it is due.
    With ``replicas``, sums and progress are over all data-parallel processes. ``execution`` (a resolved
    :class:`Execution`; default the plain path: float32, batches as they come) sets autocast and the
    batches' layout. The loss is ``objective(logits, images, labels, epoch)`` (:mod:`qgen.objective`), by
    default :func:`~qgen.objective.training_loss`; the running loss is that objective's.
    """
    replicas = replicas or Replicas()
    execution = execution or PLAIN
    progress = progress or EpochProgress()
    model.train()
    loader.set_epoch(epoch, start=progress.batch)
    device = next(model.parameters()).device
    steps = quant.step_parameters(model)
    weights_quantized = execution.weights_quantized(model)
    # The resumed sums enter once, on rank 0, so that adding over processes counts them once.
    resumed = progress if replicas.writer else EpochProgress()
    total_loss = torch.tensor(resumed.loss_sum, device=device)
    correct = torch.tensor(resumed.correct, device=device, dtype=torch.int64)
    seen = resumed.seen
    start = last_report = time.perf_counter()
    for i, (images, labels) in enumerate(loader, progress.batch + 1):
        with execution.autocast(device), weights_quantized():
            logits = model(execution.batch(images))
            loss = (
                training_loss(logits, labels)
                if objective is None
                else objective(logits, images, labels, epoch)
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
    return _progress(len(loader), total_loss, correct, seen, replicas).running(), images_per_s


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
    mixed_precision: str = "off"
    rng: dict[str, Tensor] = field(default_factory=dict)
    """torch's global random-number state when the state was saved (:func:`rng_state`); empty in a state
    written before qgen recorded it."""

    @classmethod
    def fresh(cls, model: nn.Module, spec: RunSpec, init_digest: str, mixed_precision: str) -> TrainState:
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
            mixed_precision=mixed_precision,
        )


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """torch's global random-number state on the CPU and on a CUDA ``device``: what dropout and drop path
    draw from (data order and augmentation have generators of their own, :mod:`qgen.data`)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    """Restore what :func:`rng_state` recorded (the CUDA part on a CUDA ``device`` only)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _clone(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached contiguous copies (a channels-last model's weights are saved in the standard layout)."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in state_dict.items()}


def _load_state(path: Path, spec: RunSpec, init_digest: str, mixed_precision: str) -> TrainState | None:
    """The resume state in ``path``, checked to continue exactly this spec from these initial weights
    under the mixed precision it was started with."""
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
    if state.mixed_precision != mixed_precision:
        raise ProvenanceError(
            f"{path}: this run started with mixed precision {state.mixed_precision!r} and would continue "
            f"with {mixed_precision!r}; pass --mixed-precision {state.mixed_precision} to continue it as it "
            f"started, or {restart}"
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
    execution: Execution | None = None,
) -> dict[str, Any]:
    """Train ``spec`` to completion (resuming from ``ckpt_dir/<short digest>``) and write its outputs.

    ``ckpt_dir`` is the run's checkpoint directory (e.g. ``results/checkpoints/<run id>``); it holds the
    lock and one state directory per spec digest. Data-parallel when started by ``torchrun``
    (:class:`qgen.distributed.Replicas`). ``execution`` (default :class:`Execution`'s defaults) says how
    the arithmetic is done. Raises :class:`Stopped` after checkpointing when one of
    :data:`~qgen.stopping.STOP_SIGNALS` arrives, and :class:`~qgen.errors.LockedError` if another process
    trains the run.
    """
    if spec.select_by not in SELECTION:
        raise QgenError(f"select_by must be one of {SELECTION}, got {spec.select_by!r}")
    replicas = Replicas.from_env()
    dev = replicas.device(resolve_device(device))
    execution = (execution or Execution()).resolved(dev)
    execution.prepare(dev)
    lock = files.exclusive_lock(ckpt_dir, f"run {spec.run_id}") if replicas.writer else nullcontext()
    with lock:
        replicas.start(dev)
        try:
            checkpointer = Checkpointer(checkpoint_every_s, replicas, dev)
            return _train(
                spec, data_root, out_dir, state_dir(ckpt_dir, spec), dev, workers, checkpointer, execution
            )
        finally:
            replicas.stop()


def state_dir(ckpt_dir: Path, spec: RunSpec) -> Path:
    """Where the resume state of ``spec`` lives inside the run's checkpoint directory."""
    return ckpt_dir / spec.short_digest


@dataclass(frozen=True)
class Loaders:
    """A run's three loaders: augmented shuffled training batches, and unaugmented training and test sets."""

    train: data.BatchLoader
    train_eval: data.BatchLoader
    test: data.BatchLoader

    @classmethod
    def of(
        cls, spec: RunSpec, data_root: Path, dev: torch.device, workers: int, replicas: Replicas
    ) -> Loaders:
        args = dict(
            root=data_root,
            batch_size=spec.batch_size,
            seed=spec.seed,
            device=dev,
            workers=workers,
            rank=replicas.rank,
            world=replicas.world,
        )
        return cls(
            train=data.build_loader(
                spec.dataset,
                "train",
                augment=spec.augment,
                shuffle=True,
                drop_last=True,
                subset=spec.n_train,
                **args,
            ),
            train_eval=data.build_loader(
                spec.dataset, "train", augment="none", shuffle=False, subset=spec.n_train, **args
            ),
            test=data.build_loader(
                spec.dataset, "test", augment="none", shuffle=False, subset=spec.n_test, **args
            ),
        )


@dataclass(eq=False)
class Trainee:
    """One run being trained: its model, optimizer, schedule and resume state, and what it writes.

    :func:`train` trains one; :mod:`qgen.group` trains several in lockstep. Both start it with
    :meth:`start`, write its state with :meth:`save` and close each epoch with :meth:`end_epoch`, so a
    run's state and history mean the same whichever trained it.
    """

    spec: RunSpec
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    init_state: dict[str, Tensor]
    state: TrainState
    state_path: Path
    writer: bool
    objective: Objective
    segment_start: float = field(default_factory=time.perf_counter)
    elapsed_before: float = 0.0

    @classmethod
    def start(
        cls,
        spec: RunSpec,
        state_dir: Path,
        dev: torch.device,
        execution: Execution,
        writer: bool = True,
        calibrate: Callable[[nn.Module], None] | None = None,
    ) -> Trainee:
        """The run of ``spec`` on ``dev``: W0 rebuilt from the seed, resumed from ``state_dir/state.pt``
        when it exists (checked to be this spec's, from this W0, under this mixed precision). On a fresh
        start of a model with activation quantizers, ``calibrate(model)`` sets their steps (LSQ: from the
        first training batch); a resumed state holds them."""
        torch.manual_seed(spec.seed)
        model = build_model(spec)
        init_state = _clone(model.state_dict())  # W0, rebuilt identically from the seed on every start
        init_digest = tensors_digest(init_state)
        model = model.to(dev, memory_format=execution.memory_format)
        objective = build_objective(spec, model, dev)
        optimizer = build_optimizer(model, spec)
        scheduler = build_scheduler(optimizer, spec)
        state_path = state_dir / "state.pt"
        if writer and not (state_dir / "spec.json").exists():
            files.write_json(
                state_dir / "spec.json",
                {"run_id": spec.run_id, "digest": spec.digest, "spec": spec.to_dict()},
            )
        state = _load_state(state_path, spec, init_digest, execution.mixed_precision)
        if state is None:
            if quant.activation_quantizers(model):
                if calibrate is None:
                    raise QgenError(
                        f"{spec.run_id}: a {spec.precision} run needs its activation steps calibrated"
                    )
                calibrate(model)
            state = TrainState.fresh(model, spec, init_digest, execution.mixed_precision)
        else:
            model.load_state_dict(state.model)
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            if state.rng:
                set_rng_state(state.rng, dev)
            else:
                log.warning(
                    "%s: %s holds no random-number state (an older qgen wrote it): dropout and drop-path "
                    "draws after this resume differ from an uninterrupted run's",
                    spec.run_id,
                    state_path,
                )
            log.info(
                "%s: resuming after epoch %d of %d, batch %d",
                spec.run_id,
                state.epoch,
                spec.epochs,
                state.progress["batch"],
            )
        return cls(spec, model, optimizer, scheduler, init_state, state, state_path, writer, objective)

    @property
    def done(self) -> bool:
        """Whether training is over: every epoch trained, or the run diverged."""
        return self.state.epoch >= self.spec.epochs or self.state.diverged_at is not None

    def resume_segment(self) -> None:
        """Count the wall time from now on (the run starts or rejoins training)."""
        self.segment_start, self.elapsed_before = time.perf_counter(), self.state.elapsed_s

    def save(self, progress: EpochProgress) -> None:
        """Record ``progress`` and the current weights, optimizer and schedule; the writer saves them."""
        state = self.state
        state.progress = asdict(progress)
        state.elapsed_s = self.elapsed_before + time.perf_counter() - self.segment_start
        state.model = _clone(self.model.state_dict())  # a copy: the weights may be views of a group's stack
        state.optimizer = self.optimizer.state_dict()
        state.scheduler = self.scheduler.state_dict()
        state.rng = rng_state(next(self.model.parameters()).device)
        if self.writer:
            # vars(), not asdict(): asdict deep-copies tensors and rebuilds the scheduler's Counter wrongly.
            files.save_torch(self.state_path, vars(state))

    def end_epoch(
        self,
        epoch: int,
        running: Evaluation,
        images_per_s: float,
        train_eval: data.BatchLoader,
        replicas: Replicas,
    ) -> None:
        """Close ``epoch``: step the schedule, stop on a non-finite loss (``diverged``), else keep the
        weights if the selection loss (:data:`SELECTION`) is the lowest so far and append the history."""
        spec, state = self.spec, self.state
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        if not math.isfinite(running.loss):
            state.diverged_at = epoch
            log.warning(
                "%s: loss became non-finite in epoch %d; stopping (status: diverged)", spec.run_id, epoch
            )
        else:
            loss = (
                running.loss
                if spec.select_by == "epoch_loss"
                else evaluate(self.model, train_eval, replicas).loss
            )
            if loss < state.best_loss:
                state.best_epoch, state.best_loss, state.best_model = (
                    epoch,
                    loss,
                    _clone(self.model.state_dict()),
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
                "%s: epoch %d/%d  loss %.4f  acc %.2f%%  lr %.3g  %.0f img/s",
                spec.run_id,
                epoch,
                spec.epochs,
                running.loss,
                100 * running.accuracy,
                lr,
                images_per_s,
            )
        state.epoch = epoch


def _train(
    spec: RunSpec,
    data_root: Path,
    out_dir: Path,
    ckpt_dir: Path,
    dev: torch.device,
    workers: int,
    checkpointer: Checkpointer,
    execution: Execution,
) -> dict[str, Any]:
    replicas = checkpointer.replicas
    loaders = Loaders.of(spec, data_root, dev, workers, replicas)

    def calibrate(model: nn.Module) -> None:  # LSQ: activation steps from the first training batch
        loaders.train.set_epoch(1)
        images, _ = next(iter(loaders.train))
        quant.calibrate_activations(model, images, lambda t: replicas.sum(t) / replicas.world)

    run = Trainee.start(spec, ckpt_dir, dev, execution, writer=replicas.writer, calibrate=calibrate)
    stepped: nn.Module = run.model
    if replicas.parallel:
        stepped = DistributedDataParallel(run.model, device_ids=[dev.index] if dev.type == "cuda" else None)
    stepped = execution.compiled(stepped)
    log.info(
        "%s: training on %s%s, %d train / %d test images",
        spec.run_id,
        dev,
        f" ({replicas.world} data-parallel processes)" if replicas.parallel else "",
        loaders.train_eval.num_samples,
        loaders.test.num_samples,
    )
    run.resume_segment()

    def save(progress: EpochProgress) -> None:
        run.save(progress)
        checkpointer.written()

    with checkpointer.catching_signals():
        while not run.done:
            epoch = run.state.epoch + 1
            running, images_per_s = train_epoch(
                stepped,
                loaders.train,
                run.optimizer,
                epoch,
                progress=EpochProgress(**run.state.progress),
                checkpoint=(checkpointer, save),
                replicas=replicas,
                execution=execution,
                objective=run.objective,
            )
            run.end_epoch(epoch, running, images_per_s, loaders.train_eval, replicas)
            save(EpochProgress())

    return _finish(run, loaders, out_dir, dev, replicas, execution)


def _finish(
    run: Trainee,
    loaders: Loaders,
    out_dir: Path,
    dev: torch.device,
    replicas: Replicas,
    execution: Execution,
    group_size: int = 1,
) -> dict[str, Any]:
    """Evaluate the selected epoch in float32; rank 0 writes ``model.pt``, ``init.pt`` and finally
    ``metrics.json``. ``group_size`` is the number of runs trained in lockstep with this one
    (:mod:`qgen.group`), recorded with the execution."""
    spec, state, model = run.spec, run.state, run.model
    train_eval_loader, test_loader = loaders.train_eval, loaders.test
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
        "execution": asdict(execution) | {"group_size": group_size},
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
    weights = _clone(model.state_dict())
    files.save_torch(out_dir / "model.pt", provenance | {"epoch": state.best_epoch, "state_dict": weights})
    files.save_torch(out_dir / "init.pt", provenance | {"state_dict": run.init_state})
    files.write_json(out_dir / "metrics.json", metrics)
    return metrics
