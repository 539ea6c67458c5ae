"""Closed forms of the paper's flatness bounds (QGen App. A, eqs. 15-22; Jiang et al. 2019).

Symbols follow the paper: ``W`` the conv/linear weights flattened (after BN folding), ``W0`` the same
weights at initialization, ``omega`` their number, ``m`` the training-set size, ``sigma``/``alpha`` the
largest Gaussian / worst-case perturbation scale that moves training accuracy by 0.1, primed (``_mag``)
for the magnitude-aware searches, ``epsilon = 1e-3`` and ``delta`` the bound's confidence parameter.

The constant term is ``log(m / scale) + 10`` with the measure's own search scale, as the reference code
of Dziugaite et al. (2020) does for the PAC-Bayes bounds; the paper writes ``log(m/sigma)`` in some
equations and ``log(m/delta)`` in others (docs/decisions.md). Reported values are ``sqrt(x/m)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qgen.vocab import Measure

EPSILON = 1e-3
"""``epsilon`` of eqs. 19-22 (paper App. A)."""

DELTA = 0.05
"""Default ``delta`` of eqs. 21-22; the paper gives no value (docs/decisions.md)."""


def constant(m: int, scale: float) -> float:
    """The ``log(m / scale) + 10`` term every bound ends with."""
    return math.log(m / scale) + 10


def pacbayes(norm_sq: float, sigma: float, m: int) -> float:
    """Eq. 15 (``norm_sq = ||W - W0||^2``, *init*) or eq. 16 (``norm_sq = ||W||^2``, *orig*)."""
    return norm_sq / (4 * sigma**2) + constant(m, sigma)


def sharpness(norm_sq: float, omega: int, alpha: float, m: int) -> float:
    """Eq. 17 (*init*) or eq. 18 (*orig*): ``norm_sq * log(2 omega) / (4 alpha^2) + log(m/alpha) + 10``."""
    return norm_sq * math.log(2 * omega) / (4 * alpha**2) + constant(m, alpha)


def magnitude_aware(
    norm_sq: float, dist: Tensor, scale: float, slack: float, m: int, epsilon: float
) -> float:
    """The common form of eqs. 19-22.

    ``1/4 * sum_i log((eps^2 + (scale^2 + slack) * norm_sq / omega) / (eps^2 + scale^2 * dist_i^2))
    + log(m / scale) + 10`` with ``dist = W - W0`` (so ``omega = dist.numel()``); ``slack`` is 1 for
    PAC-Bayes and ``4 log(2 omega / delta)`` for sharpness.
    """
    omega = dist.numel()
    numerator = epsilon**2 + (scale**2 + slack) * norm_sq / omega
    denominators = epsilon**2 + scale**2 * dist.double().square()
    return 0.25 * float(torch.log(numerator / denominators).sum()) + constant(m, scale)


def pacbayes_mag(norm_sq: float, dist: Tensor, sigma_mag: float, m: int, epsilon: float = EPSILON) -> float:
    """Eq. 19 (``norm_sq = ||W - W0||^2``) or eq. 20 (``norm_sq = ||W||^2``)."""
    return magnitude_aware(norm_sq, dist, sigma_mag, 1.0, m, epsilon)


def sharpness_mag(
    norm_sq: float, dist: Tensor, alpha_mag: float, m: int, delta: float = DELTA, epsilon: float = EPSILON
) -> float:
    """Eq. 21 (``norm_sq = ||W - W0||^2``) or eq. 22 (``norm_sq = ||W||^2``)."""
    return magnitude_aware(norm_sq, dist, alpha_mag, 4 * math.log(2 * dist.numel() / delta), m, epsilon)


def normalized(value: float, m: int) -> float:
    """The paper's reported form ``sqrt(x / m)`` (Table 3 caption)."""
    return math.sqrt(value / m)


def measure_value(
    measure: Measure, norm_sq: float, dist: Tensor, scale: float, m: int, epsilon: float, delta: float
) -> float:
    """The raw value of ``measure`` (paper eq. ``measure.equation``) at its searched ``scale``.

    ``norm_sq`` is ``||W - W0||^2`` or ``||W||^2`` as ``measure.reference`` says, ``dist = W - W0``.
    """
    if measure.family == "pacbayes":
        if measure.magnitude_aware:
            return pacbayes_mag(norm_sq, dist, scale, m, epsilon)
        return pacbayes(norm_sq, scale, m)
    if measure.magnitude_aware:
        return sharpness_mag(norm_sq, dist, scale, m, delta, epsilon)
    return sharpness(norm_sq, dist.numel(), scale, m)
