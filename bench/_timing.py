"""Shared helpers of the bench/ scripts: interleaved timing, medians, targets and the PASS/FAIL line.

Machines running these scripts are noisy, so every comparison is measured side by side in one process:
after warm-up the variants run interleaved (A, B, A, B, ...) and each is summarised by its median.
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

    Each round calls every variant once, in the mapping's order.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        for run in variants.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
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
