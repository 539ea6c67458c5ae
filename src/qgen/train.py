"""Training one run: FP32 or LSQ-quantized, resumable, keeping the lowest-training-loss epoch (paper §4.2).

Outputs (``out_dir``): ``model.pt`` (the selected weights), ``init.pt`` (the weights before the first
step, needed by the flatness measures) and ``metrics.json`` (written last; its presence marks a finished
run). Resume state lives in ``ckpt_dir`` and is rewritten atomically after every epoch, so a job killed at
any point restarts from its last completed epoch and ends with the same weights as an uninterrupted run
(data order and augmentation are a function of ``(seed, epoch)`` only).
"""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from qgen import data, files, models, quant
from qgen.experiments import RUN_SCHEMA_VERSION, RunSpec
from qgen.norms import weight_norm

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "rmsprop")
SELECTION = ("epoch_loss", "train_loss")
PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True)
class Evaluation:
    """Mean per-sample cross-entropy and accuracy (a fraction) over a whole split."""

    loss: float
    accuracy: float


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available; anything else is passed to :class:`torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(spec: RunSpec) -> nn.Module:
    """The run's model with quantizers attached (the step init reads the freshly built weights)."""
    info = data.dataset_info(spec.dataset)
    model = models.create_model(spec.model, info.num_classes, **spec.model_args)
    return quant.quantize_model(
        model, quant.bits_of(spec.precision), quantize_first_last=spec.quantize_first_last
    )


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
    raise ValueError(f"unknown optimizer {spec.optimizer!r}; expected one of {OPTIMIZERS}")


@torch.no_grad()
def evaluate(model: nn.Module, loader: data.BatchLoader) -> Evaluation:
    """Eval-mode loss and accuracy with summed per-sample losses (not a mean of batch means).

    Sums stay on the model's device until the end, so no batch waits on the host.
    """
    model.eval()
    device = next(model.parameters()).device
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for images, labels in loader:
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
    return Evaluation(float(total_loss) / loader.num_samples, int(correct) / loader.num_samples)


def train_epoch(
    model: nn.Module, loader: data.BatchLoader, optimizer: torch.optim.Optimizer, epoch: int
) -> tuple[Evaluation, float]:
    """One pass of mini-batch training; returns the running loss/accuracy and images per second.

    The loss is accumulated on the device and checked once per epoch, so no step waits on the host.
    """
    model.train()
    loader.set_epoch(epoch)
    device = next(model.parameters()).device
    steps = quant.step_parameters(model)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    start = last_report = time.perf_counter()
    for i, (images, labels) in enumerate(loader, 1):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
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
    images_per_s = seen / max(time.perf_counter() - start, 1e-9)
    return Evaluation(float(total_loss) / max(seen, 1), int(correct) / max(seen, 1)), images_per_s


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

    @classmethod
    def fresh(cls, model: nn.Module, spec: RunSpec) -> TrainState:
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
        )


def _clone(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state_dict.items()}


def _load_state(path: Path, spec: RunSpec) -> TrainState | None:
    if not path.exists():
        return None
    state = TrainState(**torch.load(path, map_location="cpu", weights_only=False))
    if state.spec != spec.to_json():
        raise ValueError(
            f"checkpoint {path} belongs to a different run configuration; "
            f"delete {path.parent} to start this run afresh"
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
) -> dict[str, Any]:
    """Train ``spec`` to completion (resuming from ``ckpt_dir`` if possible) and write the outputs."""
    if spec.select_by not in SELECTION:
        raise ValueError(f"select_by must be one of {SELECTION}, got {spec.select_by!r}")
    dev = resolve_device(device)
    loader_args = dict(
        root=data_root, batch_size=spec.batch_size, seed=spec.seed, device=dev, workers=workers
    )
    train_loader = data.build_loader(
        spec.dataset, "train", augment=True, shuffle=True, drop_last=True, subset=spec.n_train, **loader_args
    )
    train_eval_loader = data.build_loader(
        spec.dataset, "train", augment=False, shuffle=False, subset=spec.n_train, **loader_args
    )
    test_loader = data.build_loader(
        spec.dataset, "test", augment=False, shuffle=False, subset=spec.n_test, **loader_args
    )

    torch.manual_seed(spec.seed)
    model = build_model(spec).to(dev)
    optimizer = build_optimizer(model, spec)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=spec.milestones, gamma=spec.gamma)

    init_path, state_path = ckpt_dir / "init.pt", ckpt_dir / "state.pt"
    if not init_path.exists():
        files.save_torch(init_path, {"spec": spec.to_json(), "state_dict": model.state_dict()})
    state = _load_state(state_path, spec)
    if state is None:
        state = TrainState.fresh(model, spec)
    else:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        log.info("%s: resuming after epoch %d of %d", spec.run_id, state.epoch, spec.epochs)

    log.info(
        "%s: training on %s, %d train / %d test images",
        spec.run_id,
        dev,
        train_eval_loader.num_samples,
        test_loader.num_samples,
    )
    while state.epoch < spec.epochs and state.diverged_at is None:
        epoch = state.epoch + 1
        started = time.perf_counter()
        running, images_per_s = train_epoch(model, train_loader, optimizer, epoch)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if not math.isfinite(running.loss):
            state.diverged_at = epoch
            log.warning(
                "%s: loss became non-finite in epoch %d; stopping (status: diverged)", spec.run_id, epoch
            )
        else:
            loss = running.loss if spec.select_by == "epoch_loss" else evaluate(model, train_eval_loader).loss
            if loss < state.best_loss:
                state.best_epoch, state.best_loss, state.best_model = epoch, loss, _clone(model.state_dict())
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
        state.elapsed_s += time.perf_counter() - started
        state.model, state.optimizer, state.scheduler = (
            model.state_dict(),
            optimizer.state_dict(),
            scheduler.state_dict(),
        )
        # vars(), not asdict(): asdict deep-copies every tensor and rebuilds the scheduler's Counter wrongly.
        files.save_torch(state_path, vars(state))

    return _finish(spec, state, model, init_path, train_eval_loader, test_loader, out_dir, dev)


def _finish(
    spec: RunSpec,
    state: TrainState,
    model: nn.Module,
    init_path: Path,
    train_eval_loader: data.BatchLoader,
    test_loader: data.BatchLoader,
    out_dir: Path,
    dev: torch.device,
) -> dict[str, Any]:
    """Evaluate the selected epoch and write ``model.pt``, ``init.pt`` and finally ``metrics.json``."""
    model.load_state_dict(state.best_model)
    metrics: dict[str, Any] = {
        "schema_version": RUN_SCHEMA_VERSION,
        "run_id": spec.run_id,
        "spec": asdict(spec),
        "status": "diverged" if state.diverged_at is not None else "ok",
        "diverged_at_epoch": state.diverged_at,
        "selected_epoch": state.best_epoch or None,
        "epochs_completed": state.epoch,
        "history": state.history,
        "wall_time_s": state.elapsed_s,
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "versions": versions(),
        "command": " ".join(sys.argv),
    }
    if state.diverged_at is None:
        train_eval, test_eval = evaluate(model, train_eval_loader), evaluate(model, test_loader)
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
    files.save_torch(
        out_dir / "model.pt",
        {"spec": spec.to_json(), "epoch": state.best_epoch, "state_dict": model.state_dict()},
    )
    files.copy_file(init_path, out_dir / "init.pt")
    files.write_json(out_dir / "metrics.json", metrics)
    return metrics
