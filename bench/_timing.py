"""Shared helpers of the bench/ scripts: interleaved timing, medians, targets and the PASS/FAIL line.

Machines running these scripts are noisy, so every comparison is measured side by side in one process:
after warm-up the variants run interleaved, in rotating order (A, B, C, then B, C, A, then C, A, B, ...),
and each is summarised by its median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Target:
    """A bound on a measured value: ``value <= limit`` or, with ``at_least``, ``value >= limit``."""

    limit: float
    at_least: bool = False

    def passes(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit

    def __str__(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.limit:g}"


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (``None``: keep torch's default); returns the number in use."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def interleave(
    variants: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Wall seconds of each variant over ``repeats`` interleaved rounds, after ``warmup`` untimed rounds.

    Each round calls every variant once; round ``r`` starts at the mapping's variant ``r mod n`` and
    goes on in the mapping's order, so over ``n`` rounds every variant runs once in every position and
    what a position does to a step (the variant before it, the allocator's state) does not favour one
    variant (with a fixed order, ``lsq_overhead.py`` timed its FP32 control, last in every round, 5-9%
    slower than the identical FP32 step that ran first).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        for run in variants.values():
            run()
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        start_at = round_ % len(names)
        for name in names[start_at:] + names[:start_at]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    """``median (min .. max)`` of ``values`` times ``scale``, e.g. seconds shown as milliseconds."""
    low, mid, high = (scale * v for v in (min(values), median(values), max(values)))
    return f"{mid:9.1f}{unit}  (min {low:.1f}, max {high:.1f})"


def verdict(label: str, value: float, target: Target) -> bool:
    """Print ``label = value  target ...  PASS|FAIL``; returns whether it passed."""
    passed = target.passes(value)
    print(f"  {label} = {value:.3f}   target {target}   {'PASS' if passed else 'FAIL'}")
    return passed
