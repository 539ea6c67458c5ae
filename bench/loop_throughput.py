"""Training-loop throughput: images/s of ``qgen.train.train_epoch`` / images/s of a bare PyTorch loop.

Ours: ``train_epoch(model, loader, optimizer, epoch)`` over the Digits training split (offline, 1,437
images upsampled to 3x32x32) from ``qgen.data.build_loader("digits", "train", augment="crop_flip",
shuffle=True, drop_last=True)``, so it pays for shuffling, the batched random crop/flip and
normalization, the device-side loss/accuracy sums and the step clamp, every epoch.

Bare: the textbook loop (``zero_grad``, forward, cross-entropy, backward, ``step``; plus
``quant.clamp_steps_`` for a quantized model, which LSQ itself needs) over the same loader, so both loops
see the same data pipeline and the ratio isolates what our loop adds: the device-side loss/accuracy
sums, progress checks and bookkeeping.

Both loops train the *same* model with the *same* optimizer (``build_model``/``build_optimizer``; SGD,
momentum 0.9) on the same number of images per epoch (``len(loader) * batch_size``). After warm-up the
epochs alternate (ours, bare, ours, bare, ...); the script prints median images/s of each and the ratio,
for FP32 and for each ``--precisions`` entry. A third interleaved variant only draws one epoch of
batches from our loader (no training), to show how much of any gap the data work explains.

Target: ours / bare >= 0.95 for every precision. Exit status 1 if any fails it.

    python bench/loop_throughput.py                      # defaults, ~1 min on 2 cores
    python bench/loop_throughput.py --repeats 2 --warmup 1 --precisions fp32   # quick check
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from qgen import data, quant
from qgen.experiments import RunSpec
from qgen.runs import build_model
from qgen.train import build_optimizer, train_epoch

from _timing import Target, interleave, median, set_threads, spread, verdict

TARGET = Target(0.95, at_least=True)
DATASET = "digits"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", nargs="+", choices=list(quant.PRECISIONS), default=["fp32", "int4"])
    parser.add_argument("--depth", type=int, default=2, help="NiN depth (default 2)")
    parser.add_argument("--width", type=int, default=2, help="NiN width multiplier (default 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=12, help="timed epochs per loop")
    parser.add_argument("--warmup", type=int, default=2, help="untimed epochs per loop first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--data-root", type=Path, default=Path("data/digits"), help="unused by digits")
    return parser.parse_args()


def bare_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: data.BatchLoader, epoch: int
) -> None:
    """The textbook training loop."""
    model.train()
    loader.set_epoch(epoch)
    steps = quant.step_parameters(model)
    for images, labels in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        quant.clamp_steps_(steps)


def draw_epoch(loader: data.BatchLoader, epoch: int) -> None:
    """Only the data work of one epoch: every batch our loader yields, unused."""
    loader.set_epoch(epoch)
    for _ in loader:
        pass


def measure(precision: str, args: argparse.Namespace, loader: data.BatchLoader) -> dict[str, list[float]]:
    """Interleaved epoch times of our loop, the bare loop and the data alone, for one fresh model."""
    spec = RunSpec(
        experiment="bench",
        point="bench",
        precision=precision,
        dataset=DATASET,
        model="nin",
        model_args={"depth": args.depth, "width": args.width},
        optimizer="sgd",
        lr=0.01,
        weight_decay=1e-4,
        epochs=1,
        batch_size=args.batch_size,
        milestones=[],
    )
    torch.manual_seed(0)
    model = build_model(spec)
    optimizer = build_optimizer(model, spec)
    epochs = itertools.count(1)
    return interleave(
        {
            "ours": lambda: train_epoch(model, loader, optimizer, next(epochs)),
            "bare": lambda: bare_epoch(model, optimizer, loader, next(epochs)),
            "data": lambda: draw_epoch(loader, next(epochs)),
        },
        repeats=args.repeats,
        warmup=args.warmup,
    )


def main() -> int:
    args = parse_args()
    threads = set_threads(args.threads)
    loader = data.build_loader(
        DATASET,
        "train",
        root=args.data_root,
        batch_size=args.batch_size,
        augment="crop_flip",
        shuffle=True,
        seed=0,
        drop_last=True,
    )
    images = len(loader) * args.batch_size
    print(
        f"train_epoch vs bare loop, NiN depth {args.depth} width {args.width}, {DATASET} train, "
        f"{len(loader)} batches of {args.batch_size} = {images} images/epoch, {threads} threads, "
        f"{args.warmup} warm-up + {args.repeats} interleaved epochs, images/s"
    )
    passed = True
    for precision in args.precisions:
        times = measure(precision, args, loader)
        print(precision)
        for loop in ("ours", "bare"):
            throughput = [images / s for s in times[loop]]
            print(f"  {loop:4s} {spread(throughput, unit=' img/s')}")
        data_s = median(times["data"])
        share = data_s / median(times["bare"])
        print(f"  data alone (loader, no training): {1e3 * data_s:.1f} ms/epoch = {share:.1%} of bare")
        ratio = median(times["bare"]) / median(times["ours"])  # = median img/s ours / median img/s bare
        passed &= verdict("ours/bare", ratio, TARGET)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
