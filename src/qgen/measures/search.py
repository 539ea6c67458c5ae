"""Bisection for the largest perturbation scale that moves training accuracy by a target amount.

This is the search of Dziugaite et al.'s reference code (``_pacbayes_sigma``): linear bisection on
``[lo, hi]``, at most ``depth`` midpoints, stopping as soon as the deviation is within ``tol`` of
``target``; it returns the last midpoint evaluated, so results are dyadic midpoints of the interval.
A search that never stops early and moved the same way at every step has *saturated* at that end,
which the result reports instead of hiding (the reference code does not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Move = Literal["within", "above", "below"]


def bisection_move(deviation: float, target: float, tol: float) -> Move:
    """What one bisection step does with a deviation: stop (``within`` ``tol`` of ``target``), or move the
    upper end down (``above``: too much deviation) or the lower end up (``below``).

    The three outcomes cover consecutive ranges of ``deviation`` (below < within < above), so all values
    of an interval lead to the same move exactly when its two ends do.
    """
    if abs(deviation - target) < tol:
        return "within"
    return "above" if deviation > target else "below"


@dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`bisect_scale`; ``trajectory`` holds ``(scale, deviation)`` per midpoint.

    ``bracket`` is the interval whose midpoint ``value`` is, the search's resolution: each end an evaluated
    midpoint, or ``None`` where it is still an end of ``[lo, hi]`` (never evaluated, so the search bounds
    nothing on that side).
    """

    value: float
    iterations: int
    converged: bool
    saturated: Literal["lower", "upper"] | None
    bracket: tuple[float | None, float | None]
    trajectory: list[tuple[float, float]] = field(default_factory=list)


def bisect_scale(
    deviation: Callable[[float], float],
    target: float = 0.1,
    tol: float = 0.01,
    lo: float = 0.0,
    hi: float = 2.0,
    depth: int = 15,
) -> SearchResult:
    """Largest ``scale`` in ``[lo, hi]`` with ``deviation(scale)`` about ``target`` (QGen App. A/B.2).

    Too much deviation moves the upper end down, too little moves the lower end up; ``|deviation -
    target| < tol`` stops the search at that midpoint.
    """
    if not lo < hi or depth < 1:
        raise ValueError(f"need lo < hi and depth >= 1, got lo={lo}, hi={hi}, depth={depth}")
    trajectory: list[tuple[float, float]] = []
    lower, upper = lo, hi
    for _ in range(depth):
        scale = (lower + upper) / 2
        bracket = (None if lower == lo else lower, None if upper == hi else upper)
        dev = deviation(scale)
        trajectory.append((scale, dev))
        move = bisection_move(dev, target, tol)
        if move == "within":
            return SearchResult(scale, len(trajectory), True, None, bracket, trajectory)
        if move == "above":
            upper = scale
        else:
            lower = scale
    saturated: Literal["lower", "upper"] | None = None
    if lower == lo:
        saturated = "lower"
    elif upper == hi:
        saturated = "upper"
    return SearchResult(trajectory[-1][0], len(trajectory), False, saturated, bracket, trajectory)
