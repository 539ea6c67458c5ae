"""Training a group of runs in lockstep in one process: one vmapped forward and backward for all of them.

The NiN sweep's runs of one network (dataset, depth, width, precision) differ only in how they step:
optimizer, learning rate, weight decay. With one seed they also share their data order, augmentation and
initial weights, so every batch serves every member (:func:`qgen.packing.lockstep_key` says which spec
fields must agree). The members' parameters and buffers are stacked along a new first dimension
(:class:`Stack`) and their forward and backward passes run as one: ``torch.func.vmap`` over
``torch.func.functional_call`` of one template module, in which a convolution over stacked weights is one
grouped convolution. Each member stays a :class:`qgen.train.Trainee` of its own: a module whose parameters
and buffers are views of its slice of the stack, its own ``torch.optim`` optimizer and schedule (so one
group holds SGD, Adam and RMSProp members side by side: the optimizer acts after the shared backward, on
the member's own slice), its own resume state in ``<ckpt_dir>/<short digest>/state.pt``, its own lock, and
its own ``model.pt``, ``init.pt`` and ``metrics.json`` written by the same code as a single run's. A
member's state is a single run's state, so either trainer resumes it.

The losses of the members are added for the backward pass; since no member's loss depends on another's
parameters, each member's gradient is the gradient of its own loss, as in a run of its own. The values
equal those of separate runs up to float rounding (a grouped convolution adds in another order): tested
against separate runs in ``tests/test_group.py``.

**Lockstep and resume.** The group checkpoints every member at the same batch boundary (one file each, so
a kill can land between two of them). On a restart the group starts at the earliest saved position and a
member joins as soon as the group reaches its own position (:class:`Lockstep`), so every member resumes
exactly where its state says. A member that diverges (non-finite epoch loss) is recorded as a single run
would be and leaves the stack; the others go on.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from qgen import data, files, quant
from qgen.distributed import Replicas
from qgen.errors import QgenError
from qgen.experiments import RunSpec
from qgen.objective import training_loss
from qgen.packing import require_lockstep
from qgen.runs import resolve_device
from qgen.train import (
    CHECKPOINT_EVERY_S,
    Checkpointer,
    EpochProgress,
    Execution,
    Loaders,
    Trainee,
    _finish,
    state_dir,
)
from qgen.vocab import ACTIVATION_BITS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupRun:
    """One member of a group: its spec, its checkpoint directory (lock, state) and its output directory."""

    spec: RunSpec
    ckpt_dir: Path
    out_dir: Path


def _stacked(tensors: Sequence[Tensor], channels_last: bool) -> Tensor:
    """``torch.stack(tensors)``, laid out so that each slice of a 4-d tensor is channels-last if asked."""
    if channels_last and tensors[0].ndim == 4:
        return torch.stack([t.permute(0, 2, 3, 1) for t in tensors]).permute(0, 1, 4, 2, 3)
    return torch.stack(list(tensors))


class Stack:
    """The parameters and buffers of same-shaped modules, stacked along a new first dimension.

    Every module's parameters and buffers become views of its slice (the ``Parameter`` objects stay, so
    optimizers keep their state): its optimizer steps, its ``state_dict()`` and its evaluation read and
    write the stack. :meth:`release` gives the modules copies of their own again.
    """

    def __init__(self, modules: Sequence[nn.Module], channels_last: bool) -> None:
        self.modules = list(modules)
        named = [dict(m.named_parameters()) for m in self.modules]
        self.params = {
            name: _stacked([n[name].detach() for n in named], channels_last).requires_grad_()
            for name in named[0]
        }
        buffers = [dict(m.named_buffers()) for m in self.modules]
        self.buffers = {name: _stacked([b[name] for b in buffers], channels_last) for name in buffers[0]}
        self.member_params = [list(n.items()) for n in named]
        for k, module in enumerate(self.modules):
            for name, param in self.member_params[k]:
                param.data = self.params[name].detach()[k]
            for name in self.buffers:
                _set_buffer(module, name, self.buffers[name][k])

    def set_grads(self) -> None:
        """Give every member's parameters their slice of the stack's gradients."""
        for k in range(len(self.modules)):
            for name, param in self.member_params[k]:
                grad = self.params[name].grad
                param.grad = None if grad is None else grad[k]

    def release(self) -> None:
        """Give every module copies of its own slices: it no longer shares storage with the stack."""
        for module in self.modules:
            for _, param in module.named_parameters():
                param.data = param.data.clone()
                param.grad = None
            for name, buffer in list(module.named_buffers()):
                _set_buffer(module, name, buffer.clone())


def _set_buffer(module: nn.Module, name: str, value: Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module.get_submodule(owner)._buffers[attr] = value


@dataclass
class _Running:
    """A member's sums over the epoch it is in, from the batch it (re)joined at."""

    loss_sum: Tensor
    correct: Tensor
    seen: int
    resumed_seen: int
    start: float

    @classmethod
    def of(cls, progress: EpochProgress, dev: torch.device) -> _Running:
        """The sums of a member (re)joining at ``progress``, its clock starting now."""
        return cls(
            torch.tensor(progress.loss_sum, device=dev),
            torch.tensor(progress.correct, device=dev, dtype=torch.int64),
            progress.seen,
            progress.seen,
            time.perf_counter(),
        )


class Lockstep:
    """Trains :class:`~qgen.train.Trainee` s on one stream of batches, each from its own saved position.

    A member's position is ``(epochs completed, batches into the next)``; the group starts at the
    earliest one and a member joins the stack when the group reaches its position.
    """

    def __init__(self, members: Sequence[Trainee], execution: Execution, dev: torch.device) -> None:
        self.members = list(members)
        self.execution, self.dev = execution, dev
        self.template = copy.deepcopy(self.members[0].model).train()
        self.step_names = _step_names(self.template)
        self.active: list[Trainee] = []
        self.running: dict[int, _Running] = {}
        self.stack: Stack | None = None
        self.loss_sum = self.correct = torch.zeros(0)

        def member_loss(
            params: dict[str, Tensor], buffers: dict[str, Tensor], images: Tensor, labels: Tensor
        ) -> tuple[Tensor, Tensor]:
            """One member's training loss and correct predictions on a batch (vmapped over members)."""
            logits = functional_call(self.template, {**params, **buffers}, (images,))
            return training_loss(logits, labels), (logits.argmax(-1) == labels).sum()

        self.losses = execution.compiled(vmap(member_loss, in_dims=(0, 0, None, None)))

    # --- membership

    def _restack(self, active: list[Trainee]) -> None:
        """Make ``active`` the stacked members, keeping every member's running sums."""
        for k, run in enumerate(self.active):
            self.running[id(run)].loss_sum = self.loss_sum[k].clone()
            self.running[id(run)].correct = self.correct[k].clone()
        if self.stack is not None:
            self.stack.release()
        self.active, self.stack = active, None
        if active:
            self.stack = Stack([run.model for run in active], self.execution.channels_last)
            self.loss_sum = torch.stack([self.running[id(run)].loss_sum for run in active])
            self.correct = torch.stack([self.running[id(run)].correct for run in active])

    def join(self, epoch: int, batch: int) -> None:
        """Stack the waiting members whose position is batch ``batch`` of ``epoch``."""
        joining = [
            run
            for run in self.members
            if not run.done
            and run not in self.active
            and (run.state.epoch + 1, run.state.progress["batch"]) == (epoch, batch)
        ]
        if not joining:
            return
        for run in joining:
            self.running[id(run)] = _Running.of(EpochProgress(**run.state.progress), self.dev)
            run.resume_segment()
        log.info("group: %d run(s) join at epoch %d, batch %d", len(joining), epoch, batch)
        self._restack(self.active + joining)

    def _earliest(self) -> tuple[int, int] | None:
        """The earliest position of a member still training, as ``(epoch, batch)``; ``None`` when done."""
        waiting = [(r.state.epoch + 1, r.state.progress["batch"]) for r in self.members if not r.done]
        return min(waiting) if waiting else None

    # --- training

    def step(self, images: Tensor, labels: Tensor) -> None:
        """One training step of every stacked member on one batch (a loader's ``(images, labels)``)."""
        stack = self.stack
        assert stack is not None
        for param in stack.params.values():
            param.grad = None
        with self.execution.autocast(self.dev):
            losses, correct = self.losses(stack.params, stack.buffers, self.execution.batch(images), labels)
        losses.sum().backward()
        stack.set_grads()
        for run in self.active:
            run.optimizer.step()
        quant.clamp_steps_([stack.params[name] for name in self.step_names])
        self.loss_sum += losses.detach().float() * len(labels)
        self.correct += correct
        for run in self.active:
            self.running[id(run)].seen += len(labels)

    def _progress(self, k: int, batch: int) -> EpochProgress:
        run = self.active[k]
        return EpochProgress(batch, float(self.loss_sum[k]), int(self.correct[k]), self.running[id(run)].seen)

    def _save(self, batch: int) -> None:
        for k, run in enumerate(self.active):
            run.save(self._progress(k, batch))

    def _end_epoch(self, epoch: int, batch: int, train_eval: data.BatchLoader) -> None:
        """Close ``epoch`` for every stacked member; the diverged ones leave the stack. ``train_eval`` is
        the unaugmented training set (for ``select_by: train_loss``)."""
        now = time.perf_counter()
        for k, run in enumerate(self.active):
            done = self._progress(k, batch)
            sums = self.running[id(run)]
            images_per_s = (done.seen - sums.resumed_seen) / max(now - sums.start, 1e-9)
            run.end_epoch(epoch, done.running(), images_per_s, train_eval, Replicas())
            run.save(EpochProgress())
            self.running[id(run)] = _Running.of(EpochProgress(), self.dev)
        self.loss_sum.zero_()
        self.correct.zero_()
        staying = [run for run in self.active if not run.done]
        if len(staying) < len(self.active):
            self._restack(staying)

    def train(self, loaders: Loaders, checkpointer: Checkpointer) -> None:
        """Train every member to its last epoch (or divergence) on ``loaders``, checkpointing through
        ``checkpointer``."""
        loader = loaders.train
        while (position := self._earliest()) is not None:
            epoch, batch = position
            self.join(epoch, batch)
            loader.set_epoch(epoch, start=batch)
            for images, labels in loader:
                self.step(images, labels)
                batch += 1
                if checkpointer.due():
                    self._save(batch)
                    checkpointer.written()
                self.join(epoch, batch)
            self._end_epoch(epoch, batch, loaders.train_eval)
            checkpointer.written()
        self._restack([])


def _step_names(model: nn.Module) -> list[str]:
    """Names of the LSQ steps among ``model``'s parameters (kept positive after every step)."""
    steps = {id(p) for p in quant.step_parameters(model)}
    return [name for name, p in model.named_parameters() if id(p) in steps]


def require_plain_objective(specs: Sequence[RunSpec]) -> None:
    """A group trains with the cross-entropy of :func:`qgen.objective.training_loss` and weight-only
    quantizers; runs that distil, regularize their bins or quantize activations (which calibrate from a
    batch of their own) train one per process."""
    special = [
        s.run_id for s in specs if s.distill or s.obr_weight or ACTIVATION_BITS[s.precision] is not None
    ]
    if special:
        raise QgenError(
            f"runs {', '.join(special)} distil, regularize their bins or quantize activations, which a "
            "batched group does not do; train them one per process (train_pack_mode: processes)"
        )


def train_group(
    runs: Sequence[GroupRun],
    *,
    data_root: Path,
    device: str = "auto",
    checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    execution: Execution | None = None,
) -> list[dict[str, Any]]:
    """Train ``runs`` in lockstep to completion and write each one's outputs; their metrics, in order.

    The specs must agree in every field of :func:`qgen.packing.lockstep_key`. Each run is locked through
    its ``ckpt_dir`` and resumes from its own state there, as :func:`qgen.train.train` would. Raises
    :class:`~qgen.train.Stopped` after checkpointing every member when a stop signal arrives.
    """
    require_lockstep([run.spec for run in runs])
    require_plain_objective([run.spec for run in runs])
    dev = resolve_device(device)
    execution = (execution or Execution()).resolved(dev)
    execution.prepare(dev)
    with ExitStack() as locks:
        for run in runs:
            locks.enter_context(files.exclusive_lock(run.ckpt_dir, f"run {run.spec.run_id}"))
        loaders = Loaders.of(runs[0].spec, data_root, dev, 0, Replicas())
        members = [Trainee.start(run.spec, state_dir(run.ckpt_dir, run.spec), dev, execution) for run in runs]
        log.info(
            "group of %d runs on %s, %d train / %d test images",
            len(runs),
            dev,
            loaders.train_eval.num_samples,
            loaders.test.num_samples,
        )
        checkpointer = Checkpointer(checkpoint_every_s, Replicas(), dev)
        with checkpointer.catching_signals():
            Lockstep(members, execution, dev).train(loaders, checkpointer)
        return [
            _finish(member, loaders, run.out_dir, dev, Replicas(), execution, group_size=len(runs))
            for member, run in zip(members, runs, strict=True)
        ]
