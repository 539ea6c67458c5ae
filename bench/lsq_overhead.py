"""LSQ overhead: wall time of one LSQ-QAT training step / one FP32 training step, on the CPU.

For each model (NiN depth 4 width 10, the paper's CIFAR-10 model, and the CIFAR ResNet-18), two copies
are built from the same seed with ``qgen.train.build_model`` (one FP32, one with LSQ weight quantizers
at ``--precision``) and given SGD with momentum by ``qgen.train.build_optimizer``. A step is what
``qgen.train.train_epoch`` does per batch in eager mode: forward with the weights quantized in one node
(``quant.WeightsInOneNode``), cross-entropy, ``zero_grad``, backward, optimizer step and
``quant.clamp_steps_`` (nothing to quantize or clamp for the FP32 model), on one fixed random batch of
``--batch-size`` 32x32 images. A second, identical FP32 copy (``fp32'``) is the control. After warm-up
the three steps alternate in rotating order (``_timing.interleave``); the script prints their medians,
the ratio LSQ / FP32, and the control's ratio FP32' / FP32, whose distance from 1 is the noise of the
run (several percent on a shared 2-core machine). One thread by default, as one training job of a CPU
sweep runs.

Target: ratio <= 1.05 for every model (issue 13). Exit status 1 if any model fails it. What remains of
the overhead is the quantizer's elementwise passes over the weights (``quant.LSQFakeQuantMany``, the
per-tensor code of ``quant.LSQFakeQuant``) and the cost of a separate quantized weight to the layers
around it; ``bench/RESULTS.md`` has the breakdown.

    python bench/lsq_overhead.py                        # defaults, ~100 s
    python bench/lsq_overhead.py --depth 2 --width 2 --repeats 3 --models nin   # quick check
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from qgen import quant
from qgen.experiments import RunSpec
from qgen.runs import build_model
from qgen.train import PLAIN, build_optimizer

from _timing import Target, interleave, median, set_threads, spread, verdict

TARGET = Target(1.05)
MODELS = ("nin", "resnet18_cifar")
NUM_CLASSES = 10  # the spec's dataset (cifar10) sets the classifier size; the batch is random
CONTROL = "fp32'"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--depth", type=int, default=4, help="NiN depth (default 4)")
    parser.add_argument("--width", type=int, default=10, help="NiN width multiplier (default 10)")
    quantized = [name for name, bits in quant.PRECISIONS.items() if bits is not None]
    parser.add_argument("--precision", choices=quantized, default="int4")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="models and batch channels-last, as qgen.train trains by default (default: yes)",
    )
    return parser.parse_args()


def spec(model: str, model_args: dict[str, Any], precision: str) -> RunSpec:
    """A training-run spec for ``model`` with SGD momentum 0.9, lr 0.01, weight decay 1e-4."""
    return RunSpec(
        experiment="bench",
        point="bench",
        precision=precision,
        dataset="cifar10",
        model=model,
        model_args=model_args,
        optimizer="sgd",
        lr=0.01,
        weight_decay=1e-4,
        epochs=1,
        batch_size=128,
        milestones=[],
    )


def training_step(
    spec_: RunSpec, images: Tensor, labels: Tensor, memory_format: torch.memory_format
) -> Callable[[], None]:
    """One training step of a fresh model built from ``spec_`` (seed 0), as ``train_epoch`` runs it."""
    torch.manual_seed(0)
    model: nn.Module = build_model(spec_).to(memory_format=memory_format).train()
    images = images.contiguous(memory_format=memory_format)
    optimizer = build_optimizer(model, spec_)
    steps = quant.step_parameters(model)
    weights_quantized = PLAIN.weights_quantized(model)  # as train_epoch's eager step quantizes them

    def step() -> None:
        with weights_quantized():
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        quant.clamp_steps_(steps)

    return step


def main() -> int:
    args = parse_args()
    threads = set_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=generator)
    size = args.image_size
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    print(
        f"LSQ step / FP32 step, {args.precision}, batch {args.batch_size}x3x{size}x{size}, {threads} threads,"
        f" {'channels-last' if args.channels_last else 'contiguous'},"
        f" {args.warmup} warm-up + {args.repeats} interleaved repeats, ms per step"
    )
    passed = True
    for name in args.models:
        model_args = {"depth": args.depth, "width": args.width} if name == "nin" else {}
        steps = {
            "fp32": training_step(spec(name, model_args, "fp32"), images, labels, layout),
            args.precision: training_step(spec(name, model_args, args.precision), images, labels, layout),
            CONTROL: training_step(spec(name, model_args, "fp32"), images, labels, layout),
        }
        times = interleave(steps, repeats=args.repeats, warmup=args.warmup)
        shown = ", ".join(f"{k}={v}" for k, v in model_args.items())
        print(f"{name}({shown})")
        for variant, seconds in times.items():
            print(f"  {variant:5s} {spread(seconds, 1e3, ' ms')}")
        control = median(times[CONTROL]) / median(times["fp32"])
        print(f"  {CONTROL}/fp32 = {control:.3f}   (the same step twice: its distance from 1 is noise)")
        ratio = median(times[args.precision]) / median(times["fp32"])
        passed &= verdict(f"{args.precision}/fp32", ratio, TARGET)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
