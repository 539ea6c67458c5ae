"""Claim checks on hand-made values: each passes, fails, and is NOT RUN without its results."""

from __future__ import annotations

import dataclasses

import pytest

from qgen.corruptions import CORRUPTIONS
from qgen.report import claims
from qgen.report.claims import FAIL, INCONCLUSIVE, NOT_RUN, PASS, Verdict
from qgen.report.values import Value, corruption_detail
from qgen.vocab import MEASURES, PAPER_PRECISIONS


def values(
    source: str,
    quantity: str,
    by_precision: dict[str, float],
    detail: str = "",
    model: str = "M",
    u: float | None = 0.0,
) -> list[Value]:
    """Values of one model, all with standard uncertainty ``u`` (0: exact, as the paper's)."""
    return [Value(source, "D", model, p, quantity, detail, v, u) for p, v in by_precision.items()]


def table4(
    below: int,
    model: str = "M",
    precisions=("int8", "int4", "int2"),
    source: str = "table4",
    u: float | None = 0.0,
    above: float = 1.5,
) -> list[Value]:
    """Five corruptions; the quantized gap is below FP32's (1.0) in the first ``below`` of them (0.5),
    ``above`` in the others."""
    out = []
    for i, corruption in enumerate(CORRUPTIONS[:5]):
        detail = corruption_detail(corruption, 3)
        out += values(source, "gap", {"fp32": 1.0}, detail, model, u)
        out += values(source, "gap", dict.fromkeys(precisions, 0.5 if i < below else above), detail, model, u)
    return out


def figure1(ordered: bool) -> list[Value]:
    out = []
    for layer, base in (("a", 0.01), ("b", 0.02)):
        steps = {"int8": base, "int4": 4 * base, "int2": (16 if ordered else 2) * base}
        out += values("figure1", "step_size", steps, detail=layer)
    return out


INT8_INT4 = ("int8", "int4")


def mags(lowest: str) -> list[Value]:
    return [
        v
        for name in claims.MAGNITUDE_AWARE
        for v in values("table3", name, {p: (1.0 if p == lowest else 2.0) for p in PAPER_PRECISIONS})
    ]


def population(statistic: str, by_measure: dict[str, float], u: float | None = 0.05) -> list[Value]:
    """Values of the correlation table: one statistic (e.g. ``"tau all"``) per measure."""
    return [Value("correlation", "population", "", "", m, statistic, v, u) for m, v in by_measure.items()]


MAGNITUDE_AWARE = [m.name for m in MEASURES if m.magnitude_aware]
PLAIN = [m.name for m in MEASURES if not m.magnitude_aware]


def taus(mag: float, plain: float) -> list[Value]:
    return population("tau all", dict.fromkeys(MAGNITUDE_AWARE, mag) | dict.fromkeys(PLAIN, plain))


def one_worse(statistic: str, value: float) -> list[Value]:
    """Every magnitude-aware measure at 0.4, the last at ``value``."""
    return population(statistic, dict.fromkeys(MAGNITUDE_AWARE, 0.4) | {MAGNITUDE_AWARE[-1]: value})


CASES = {
    "gap_shrinks": (
        values("table1", "gap", {"fp32": 0.3, "int8": 0.3, "int4": 0.28, "int2": 0.22}),
        values("table1", "gap", {"fp32": 0.3, "int8": 0.2, "int4": 0.25, "int2": 0.22}),
    ),
    "int2_gap_below_fp32": (
        values("table1", "gap", {"fp32": 0.3, "int2": 0.2}),
        values("table1", "gap", {"fp32": 0.3, "int2": 0.3}),
    ),
    "train_loss_grows": (
        values("table1", "train_loss", {"fp32": 0.1, "int8": 0.1, "int4": 0.2, "int2": 0.4}),
        values("table1", "train_loss", {"fp32": 0.1, "int8": 0.1, "int4": 0.1, "int2": 0.1}),
    ),
    "int8_on_par": (
        values("table1", "test_acc", {"fp32": 88.0, "int8": 87.2}),
        values("table1", "test_acc", {"fp32": 88.0, "int8": 86.9}),
    ),
    "fp32_largest_norm": (
        values("table2", "weight_norm", {"fp32": 9.0, "int8": 5.0, "int4": 5.0, "int2": 4.0}),
        values("table2", "weight_norm", {"fp32": 9.0, "int8": 5.0, "int4": 9.0, "int2": 4.0}),
    ),
    "magnitude_aware_lowest_quantized": (mags("int4"), mags("fp32")),
    "corrupted_gap_mostly_smaller": (table4(3), table4(2)),
    "corrupted_gap_int8_int4": (
        table4(5, precisions=("int8", "int4")),
        table4(4, precisions=("int8", "int4")),
    ),
    "cifar_corrupted_gap_all_smaller": (table4(5, source="table5"), table4(4, source="table5")),
    "bin_width_grows": (figure1(True), figure1(False)),
    "landscape_quantized_flatter": (
        values("figure2", "mean_rise", {"fp32": 3.0, "int8": 1.0, "int4": 2.0, "int2": 2.5}),
        values("figure2", "mean_rise", {"fp32": 3.0, "int8": 1.0, "int4": 2.0, "int2": 3.5}),
    ),
    "landscape_int8_flattest": (
        values("figure2", "mean_rise", {"fp32": 3.0, "int8": 1.0, "int4": 2.0, "int2": 3.5}),
        values("figure2", "mean_rise", {"fp32": 3.0, "int8": 1.0, "int4": 2.0, "int2": 1.5}),
    ),
    "regularizer_grows": (
        values("regularizer", "r_expected", {"int8": 1e-4, "int4": 1e-3, "int2": 1e-2}, u=1e-5),
        values("regularizer", "r_expected", {"int8": 1e-2, "int4": 1e-3, "int2": 1e-4}, u=1e-5),
    ),
    "first_order_close": (
        values("regularizer", "taylor_output_error", {"int8": 0.01, "int4": 0.05, "int2": 0.1}),
        values("regularizer", "taylor_output_error", {"int8": 0.01, "int4": 0.05, "int2": 0.3}),
    ),
    "magnitude_aware_predict_gap": (one_worse("tau all", 0.3), one_worse("tau all", -0.3)),
    "magnitude_aware_better_indicators": (taus(0.5, 0.1), taus(0.1, 0.5)),
    "flatness_explains_precision": (one_worse("psi precision", 0.3), one_worse("psi precision", -0.3)),
}
CLAIMS = {claim.name: claim for claim in claims.CLAIMS}


def test_every_claim_has_cases() -> None:
    assert set(CASES) == set(CLAIMS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_claim_passes_fails_and_is_not_run_without_its_results(name: str) -> None:
    claim = CLAIMS[name]
    good, bad = CASES[name]
    assert {v.status for v in claims.evaluate(claim, {claim.source: good}).values()} == {PASS}
    scope = "population" if claim.source == "correlation" else "D M"
    assert claims.evaluate(claim, {claim.source: bad})[scope].status == FAIL
    missing = claims.evaluate(claim, {claim.source: None})
    assert [v.status for v in missing.values()] == [NOT_RUN]
    assert [v.status for v in claims.evaluate(claim, {}).values()] == [NOT_RUN]


@pytest.mark.parametrize("name", ["gap_shrinks", "fp32_largest_norm", "landscape_int8_flattest"])
def test_a_missing_precision_is_not_run_naming_it(name: str) -> None:
    claim = CLAIMS[name]
    good, _ = CASES[name]
    verdict = claims.evaluate(claim, {claim.source: [v for v in good if v.precision != "int4"]})["D M"]
    assert verdict.status == NOT_RUN and "Int4" in verdict.evidence


def test_corruption_claim_gives_fractions_per_model_and_overall() -> None:
    claim = CLAIMS["corrupted_gap_mostly_smaller"]
    verdicts = claims.evaluate(claim, {"table4": table4(3, "A") + table4(1, "B")})
    assert verdicts["D A"] == Verdict(PASS, "9 of 15 cells (60.0%) below FP32; needs more than 50%")
    assert verdicts["D B"].status == FAIL and verdicts["all models"].evidence.startswith("12 of 30 cells")


# --------------------------------------------------------------------------------------------------------
# The rule: a difference decides a comparison only beyond k standard uncertainties


def one(precision: str, value: float, u: float | None) -> Value:
    return Value("table1", "D", "M", precision, "gap", "", value, u)


@pytest.mark.parametrize(
    ("d", "u", "expected"),
    [
        (0.1, 0.04, PASS),  # 0.1 > 2 x 0.04
        (0.07, 0.04, INCONCLUSIVE),
        (-0.07, 0.04, INCONCLUSIVE),
        (-0.09, 0.04, FAIL),
        (0.5, None, INCONCLUSIVE),  # no uncertainty: never decided
        (1e-9, 0.0, PASS),  # exact: the sign alone
        (0.0, 0.0, FAIL),  # exact equality fails a strict claim
    ],
)
def test_sign_decides_beyond_k_standard_uncertainties(d: float, u: float | None, expected: str) -> None:
    assert claims.sign(d, u, 2.0) == expected


def test_comparison_combines_the_uncertainties_in_quadrature() -> None:
    c = claims.less(one("int2", 0.2, 0.03), one("fp32", 0.3, 0.04), 2.0)
    assert c.difference == pytest.approx(0.1) and c.uncertainty == pytest.approx(0.05)
    assert c.status == INCONCLUSIVE  # 0.1 is exactly 2u: not beyond
    assert claims.less(one("int2", 0.2, 0.03), one("fp32", 0.3, 0.04), 1.9).status == PASS
    assert claims.combined(one("a", 0, 0.03), one("b", 0, None)) is None
    assert (
        claims.both([PASS, INCONCLUSIVE]) == INCONCLUSIVE and claims.both([PASS, INCONCLUSIVE, FAIL]) == FAIL
    )


def test_the_issues_gap_trend_within_the_noise_is_inconclusive() -> None:
    """gap FP32 0.009 -> Int8 0.009 -> Int4 0.011 -> Int2 0.007 with standard errors 0.0015-0.005 (std
    0.003-0.010 over 4 runs): the old check said FAIL."""
    gaps = {"fp32": (0.009, 0.002), "int8": (0.009, 0.0015), "int4": (0.011, 0.005), "int2": (0.007, 0.002)}
    trend = [one(p, v, u) for p, (v, u) in gaps.items()]
    verdict = claims.evaluate(CLAIMS["gap_shrinks"], {"table1": trend})["D M"]
    assert verdict.status == INCONCLUSIVE
    assert verdict.evidence == (
        "gap: FP32 0.009 ± 0.002 → Int8 0.009 ± 0.002 → Int4 0.011 ± 0.005 → Int2 0.007 ± 0.002; "
        "overall FP32 - Int2 = 0.002 ± 0.003, within 2u"
    )
    as_exact = claims.evaluate(
        CLAIMS["gap_shrinks"], {"table1": [one(p, v, 0.0) for p, (v, _) in gaps.items()]}
    )
    assert as_exact["D M"].status == FAIL  # Int4 above Int8, taken exactly


def test_a_trend_fails_only_on_a_step_beyond_the_noise() -> None:
    def trend(int4: float) -> str:
        series = values("table1", "gap", {"fp32": 0.30, "int8": 0.20, "int4": int4, "int2": 0.10}, u=0.01)
        return claims.evaluate(CLAIMS["gap_shrinks"], {"table1": series})["D M"].status

    assert trend(0.21) == PASS  # Int4 - Int8 = 0.01 against 2 x 0.014: no step the other way
    assert trend(0.25) == FAIL  # 0.05 beyond 2 x 0.014


@pytest.mark.parametrize(("int8", "expected"), [(87.5, PASS), (87.2, INCONCLUSIVE), (86.5, FAIL)])
def test_on_par_needs_the_whole_margin_inside_the_tolerance(int8: float, expected: str) -> None:
    """FP32 88.0, u = 0.1 per value (0.14 combined, 2u = 0.28): 0.5 apart is inside the 1-point tolerance
    with the margin, 0.8 apart is not (0.8 + 0.28 > 1 > 0.8 - 0.28), 1.5 apart is outside beyond it."""
    accuracy = values("table1", "test_acc", {"fp32": 88.0, "int8": int8}, u=0.1)
    assert claims.evaluate(CLAIMS["int8_on_par"], {"table1": accuracy})["D M"].status == expected


def test_shares_count_undecided_cells_both_ways() -> None:
    """u = 0.1 per value (2u = 0.28 for a difference): a gap of 0.5 against FP32's 1.0 is below, one of 1.2
    is undecided, one of 1.5 above."""
    claim, int8_int4 = CLAIMS["corrupted_gap_mostly_smaller"], ("int8", "int4")
    cells = table4(3, precisions=int8_int4, u=0.1, above=1.2)
    verdict = claims.evaluate(claim, {"table4": cells})["D M"]
    assert verdict.status == PASS and verdict.evidence.startswith(
        "6 of 10 cells (60.0%) below FP32, 4 undecided"
    )
    almost_all = claims.evaluate(CLAIMS["corrupted_gap_int8_int4"], {"table4": cells})["D M"]
    assert almost_all.status == INCONCLUSIVE  # 60% below, 100% if every undecided cell were: 90% is open
    few = claims.evaluate(claim, {"table4": table4(1, precisions=int8_int4, u=0.1, above=1.2)})["D M"]
    assert few.status == INCONCLUSIVE  # 20% below; 100% if the undecided were: "more than half" is open
    assert claims.evaluate(claim, {"table4": table4(1, precisions=int8_int4, u=0.1)})["D M"].status == FAIL


def test_values_without_uncertainty_are_inconclusive_and_say_what_exact_numbers_would_give() -> None:
    norms = values("table2", "weight_norm", {"fp32": 8.561, "int8": 8.542, "int4": 8.3, "int2": 7.9}, u=None)
    verdict = claims.evaluate(CLAIMS["fp32_largest_norm"], {"table2": norms})["D M"]
    assert verdict.status == INCONCLUSIVE
    assert verdict.evidence.endswith("4 value(s) without an uncertainty, so undecided (taken as exact: PASS)")
    assert "Int8 8.542," in verdict.evidence and "FP32 - Int8 = 0.019;" in verdict.evidence


def test_magnitude_aware_lowest_quantized_with_uncertainty() -> None:
    def verdict(int4: float, u: float) -> str:
        cells = [
            v
            for name in claims.MAGNITUDE_AWARE
            for v in values("table3", name, {"fp32": 2.0, "int8": 2.1, "int4": int4, "int2": 2.2}, u=u)
        ]
        return claims.evaluate(CLAIMS["magnitude_aware_lowest_quantized"], {"table3": cells})["D M"].status

    assert verdict(1.5, 0.1) == PASS  # Int4 below FP32 by 0.5 against 2 x 0.14
    assert verdict(1.9, 0.1) == INCONCLUSIVE
    assert verdict(2.5, 0.01) == FAIL  # FP32 below every quantized value beyond the noise


def test_a_tau_whose_interval_covers_zero_is_inconclusive_and_an_undefined_one_not_run() -> None:
    claim = CLAIMS["magnitude_aware_predict_gap"]
    verdict = claims.evaluate(claim, {"correlation": one_worse("tau all", 0.08)})["population"]
    assert verdict.status == INCONCLUSIVE and "Sharpness Mag-Orig 0.08 ± 0.05" in verdict.evidence
    undefined = [v for v in one_worse("tau all", 0.4) if v.quantity != MAGNITUDE_AWARE[0]]
    verdict = claims.evaluate(claim, {"correlation": undefined})["population"]
    assert verdict == Verdict(NOT_RUN, "tau all undefined for PAC-Bayesian Mag-Init")


def test_better_indicators_compares_each_magnitude_aware_measure_with_its_plain_twin() -> None:
    claim = CLAIMS["magnitude_aware_better_indicators"]
    cells = taus(0.5, 0.1)
    verdict = claims.evaluate(claim, {"correlation": cells})["population"]
    assert "PAC-Bayesian Mag-Init 0.50 ± 0.05 vs PAC-Bayesian Init 0.10 ± 0.05" in verdict.evidence
    assert verdict.evidence.count(" vs ") == len(MAGNITUDE_AWARE)


def test_the_regularizer_trend_reads_the_quantized_precisions_only() -> None:
    claim = CLAIMS["regularizer_grows"]
    rising = values("regularizer", "r_expected", {"int8": 1e-4, "int4": 1e-3, "int2": 1e-2}, u=1e-5)
    verdict = claims.evaluate(claim, {"regularizer": rising})["D M"]
    assert verdict.evidence.startswith("E R: Int8 ") and "FP32" not in verdict.evidence
    noisy = values("regularizer", "r_expected", {"int8": 1e-4, "int4": 1e-3, "int2": 1e-2}, u=1e-2)
    assert claims.evaluate(claim, {"regularizer": noisy})["D M"].status == INCONCLUSIVE


def test_a_correlation_claim_reads_only_its_statistic() -> None:
    """Psi has no standard error; an undecided tau beside it is not blamed on Psi's missing one."""
    claim = CLAIMS["magnitude_aware_predict_gap"]
    cells = one_worse("tau all", 0.08) + population("Psi all", dict.fromkeys(MAGNITUDE_AWARE, -0.9), u=None)
    verdict = claims.evaluate(claim, {"correlation": cells})["population"]
    assert verdict.status == INCONCLUSIVE and "without an uncertainty" not in verdict.evidence


def test_a_scope_of_wa_runs_is_judged_on_the_same_ladder_in_its_own_labels() -> None:
    claim = CLAIMS["gap_shrinks"]
    wa = values("table1", "gap", {"fp32": 0.3, "w8a8": 0.3, "w4a4": 0.28, "w2a2": 0.22})
    verdict = claims.evaluate(claim, {"table1": wa})["D M"]
    assert verdict.status == PASS and "W8A8 0.300 → W4A4 0.280 → W2A2 0.220" in verdict.evidence
    assert "Int" not in verdict.evidence


def test_wa_runs_beside_weight_only_ones_are_a_scope_of_their_own_with_its_fp32() -> None:
    claim = CLAIMS["int2_gap_below_fp32"]
    mixed = values("table1", "gap", {"fp32": 0.3, "int2": 0.2, "w2a2": 0.4})
    verdicts = claims.evaluate(claim, {"table1": mixed})
    assert verdicts["D M"].status == PASS and "W2A2" not in verdicts["D M"].evidence
    assert verdicts["D M (W/A)"].status == FAIL and "W2A2 0.400" in verdicts["D M (W/A)"].evidence


def test_bin_width_evidence_counts_layers_in_order_apart_from_those_beyond_the_noise() -> None:
    """Steps without an uncertainty: every layer is in order by value, none decided beyond the noise."""
    verdict = claims.evaluate(CLAIMS["bin_width_grows"], {"figure1": [*figure1(True)]})["D M"]
    assert verdict.evidence.startswith("2 of 2 layers have Int2 > Int4 > Int8, 2 beyond the noise")
    unknown = [dataclasses.replace(v, uncertainty=None) for v in figure1(True)]
    verdict = claims.evaluate(CLAIMS["bin_width_grows"], {"figure1": unknown})["D M"]
    assert verdict.status == INCONCLUSIVE
    assert verdict.evidence.startswith("2 of 2 layers have Int2 > Int4 > Int8, 0 beyond the noise")
