"""Flatness bounds (QGen eqs. 15-22) against worked values and identities; the bisection's trajectories."""

from __future__ import annotations

import math

import pytest
import torch

from qgen.measures import bounds
from qgen.measures.search import bisect_scale
from qgen.vocab import MEASURES, SEARCHES, measure

# NiN 4x10 on CIFAR-10 with QGen's Table 2 norms (research notes, worked values).
M, OMEGA = 50_000, 2_196_750
NORM_W, DIST_W = 130.686, 134.488


def test_pacbayes_worked_values() -> None:
    sigma = 17 / 128
    orig = bounds.pacbayes(NORM_W**2, sigma, M)
    assert orig == pytest.approx(242_081.28, abs=0.01)
    assert bounds.normalized(orig, M) == pytest.approx(2.20037, abs=1e-4)
    assert bounds.normalized(bounds.pacbayes(DIST_W**2, sigma, M), M) == pytest.approx(2.26438, abs=1e-4)
    assert 1 / sigma**2 == pytest.approx(56.69204, abs=1e-4)


def test_sharpness_worked_values_at_a_saturated_alpha() -> None:
    alpha = 2 - 2**-14
    assert math.log(2 * OMEGA) == pytest.approx(15.295637, abs=1e-6)
    orig = bounds.sharpness(NORM_W**2, OMEGA, alpha, M)
    assert orig == pytest.approx(16_348.10, abs=0.01)
    assert bounds.normalized(orig, M) == pytest.approx(0.57181, abs=1e-4)
    assert bounds.normalized(bounds.sharpness(DIST_W**2, OMEGA, alpha, M), M) == pytest.approx(
        0.58842, abs=1e-4
    )


def test_init_minus_orig_identities() -> None:
    sigma, alpha = 0.3, 0.7
    assert bounds.pacbayes(DIST_W**2, sigma, M) - bounds.pacbayes(NORM_W**2, sigma, M) == pytest.approx(
        (DIST_W**2 - NORM_W**2) / (4 * sigma**2)
    )
    assert bounds.sharpness(DIST_W**2, OMEGA, alpha, M) - bounds.sharpness(NORM_W**2, OMEGA, alpha, M) == (
        pytest.approx((DIST_W**2 - NORM_W**2) * math.log(2 * OMEGA) / (4 * alpha**2))
    )


@pytest.mark.parametrize("kind", ["pacbayes", "sharpness"])
def test_magnitude_aware_against_an_elementwise_loop(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    w, w0 = torch.randn(300, generator=gen), torch.randn(300, generator=gen)
    dist = w - w0
    scale, m, eps, delta = 0.2, 1000, bounds.EPSILON, 0.1
    omega = dist.numel()
    slack = 1.0 if kind == "pacbayes" else 4 * math.log(2 * omega / delta)
    for norm_sq in (float(w.square().sum()), float(dist.square().sum())):
        expected = (
            0.25
            * sum(
                math.log(
                    (eps**2 + (scale**2 + slack) * norm_sq / omega) / (eps**2 + scale**2 * float(d) ** 2)
                )
                for d in dist
            )
            + math.log(m / scale)
            + 10
        )
        got = (
            bounds.pacbayes_mag(norm_sq, dist, scale, m)
            if kind == "pacbayes"
            else bounds.sharpness_mag(norm_sq, dist, scale, m, delta=delta)
        )
        assert got == pytest.approx(expected, rel=1e-10)


def test_magnitude_aware_init_minus_orig_identity() -> None:
    gen = torch.Generator().manual_seed(1)
    w, w0 = torch.randn(500, generator=gen), 0.5 * torch.randn(500, generator=gen)
    dist = w - w0
    norm_sq, dist_sq, omega, eps = float(w.square().sum()), float(dist.square().sum()), 500, bounds.EPSILON
    for scale in (0.05, 0.4):
        c = scale**2 + 1
        expected = omega / 4 * math.log((eps**2 + c * dist_sq / omega) / (eps**2 + c * norm_sq / omega))
        got = bounds.pacbayes_mag(dist_sq, dist, scale, 100) - bounds.pacbayes_mag(norm_sq, dist, scale, 100)
        assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("deviation", "value", "steps"),
    [(lambda s: 0.2 * s, 0.5, 2), (lambda s: s**2, 0.3125, 5), (lambda s: min(1.0, 50 * s), 0.001953125, 10)],
    ids=["0.2s", "s^2", "min(1,50s)"],
)
def test_bisection_golden_trajectories(deviation, value: float, steps: int) -> None:
    result = bisect_scale(deviation)
    assert (result.value, result.iterations, result.converged, result.saturated) == (value, steps, True, None)
    assert [s for s, _ in result.trajectory][:2] == [1.0, 0.5 if deviation(1.0) > 0.1 else 1.5]


def test_bisection_returns_dyadic_midpoints_and_reports_saturation() -> None:
    never = bisect_scale(lambda s: 0.0)
    assert never.value == 2 - 2**-14 and never.saturated == "upper" and not never.converged
    always = bisect_scale(lambda s: 1.0)
    assert always.value == 2**-14 and always.saturated == "lower" and always.iterations == 15
    mixed = bisect_scale(lambda s: 0.0 if s < 0.7 else 1.0)
    assert mixed.saturated is None and not mixed.converged
    for scale, _ in mixed.trajectory:
        assert (scale * 2**15).is_integer()
    with pytest.raises(ValueError, match="lo < hi"):
        bisect_scale(lambda s: 0.0, lo=1.0, hi=1.0)


def test_bisection_bracket_is_the_interval_its_value_halves() -> None:
    """s^2 steps 1 (above), .5 (above), .25 (below), .375 (above), .3125 (within): bracket [.25, .375]."""
    result = bisect_scale(lambda s: s**2)
    assert result.bracket == (0.25, 0.375) and result.value == (0.25 + 0.375) / 2
    assert bisect_scale(lambda s: 0.2 * s).bracket == (None, 1.0)  # 1 (above), .5 (within): lo never left
    assert bisect_scale(lambda s: 0.0).bracket == (2 - 2**-13, None)  # saturated: hi never evaluated
    assert bisect_scale(lambda s: 1.0).bracket == (None, 2**-13)


def test_the_vocabulary_names_each_measure_by_its_family_noise_and_reference() -> None:
    """qgen.vocab describes the eight measures as data; names, searches and equations follow from it."""
    assert [(m.name, m.search, m.label, m.equation) for m in MEASURES] == [
        ("pacbayes.init", "sigma", "Init", 15),
        ("pacbayes.orig", "sigma", "Orig", 16),
        ("pacbayes.mag.init", "sigma_mag", "Mag-Init", 19),
        ("pacbayes.mag.orig", "sigma_mag", "Mag-Orig", 20),
        ("sharpness.init", "alpha", "Init", 17),
        ("sharpness.orig", "alpha", "Orig", 18),
        ("sharpness.mag.init", "alpha_mag", "Mag-Init", 21),
        ("sharpness.mag.orig", "alpha_mag", "Mag-Orig", 22),
    ]
    assert SEARCHES == ("sigma", "sigma_mag", "alpha", "alpha_mag")
    dist = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    assert bounds.measure_value(measure("sharpness.mag.orig"), 2.0, dist, 0.5, 100, 1e-3, 0.05) == (
        bounds.sharpness_mag(2.0, dist, 0.5, 100, 0.05, 1e-3)
    )
    assert bounds.measure_value(measure("pacbayes.init"), 2.0, dist, 0.5, 100, 1e-3, 0.05) == bounds.pacbayes(
        2.0, 0.5, 100
    )
