"""Where an LSQ step's extra time goes: per-operator self CPU time of an int4 step minus an FP32 step.

The steps are ``bench/lsq_overhead.py``'s (same models, optimizer, batch and layout). Each is profiled
with ``torch.profiler`` over ``--steps`` steps after warm-up, the two alternating step by step (one
profile per step), and the script prints, per operator, the mean
self CPU time per step of each and their difference, sorted by the difference; then the totals. Run it
at one thread on a quiet machine: a profile is a sum, not a median, so load shows up in it.

    python bench/lsq_profile.py --models resnet18_cifar         # ~2 min
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch
from lsq_overhead import MODELS, NUM_CLASSES, spec, training_step
from torch.profiler import ProfilerActivity, profile

from _timing import set_threads


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["resnet18_cifar"])
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--steps", type=int, default=20, help="profiled steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=25, help="operators shown")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    return parser.parse_args()


def self_times(prof: profile) -> dict[str, float]:
    """Operator name -> self CPU microseconds in the profiled block."""
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[event.key] += event.self_cpu_time_total
    return totals


def main() -> int:
    args = parse_args()
    threads = set_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(128, 3, 32, 32, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (128,), generator=generator)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    for name in args.models:
        model_args = {"depth": 4, "width": 10} if name == "nin" else {}
        steps = {
            "fp32": training_step(spec(name, model_args, "fp32"), images, labels, layout),
            args.precision: training_step(spec(name, model_args, args.precision), images, labels, layout),
        }
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        times: dict[str, dict[str, float]] = {key: defaultdict(float) for key in steps}
        for _ in range(args.steps):
            for key, step in steps.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    step()
                for op, us in self_times(prof).items():
                    times[key][op] += us / args.steps
        print(f"{name}: mean self CPU us per step over {args.steps} profiled steps, {threads} thread(s)")
        keys = set().union(*times.values())
        diffs = sorted(
            keys, key=lambda k: times[args.precision].get(k, 0) - times["fp32"].get(k, 0), reverse=True
        )
        print(f"  {'operator':48s} {'fp32':>10s} {args.precision:>10s} {'diff':>10s}")
        for key in diffs[: args.top]:
            a, b = times["fp32"].get(key, 0.0), times[args.precision].get(key, 0.0)
            print(f"  {key[:48]:48s} {a:10.0f} {b:10.0f} {b - a:10.0f}")
        total = {k: sum(v.values()) for k, v in times.items()}
        print(f"  {'total':48s} {total['fp32']:10.0f} {total[args.precision]:10.0f}"
              f" {total[args.precision] - total['fp32']:10.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
