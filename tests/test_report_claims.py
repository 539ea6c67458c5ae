"""Claim checks on hand-made values: each passes, fails, and is NOT RUN without its results."""

from __future__ import annotations

import pytest

from qgen.corruptions import CORRUPTIONS
from qgen.report import claims
from qgen.report.claims import FAIL, NOT_RUN, PASS, Verdict
from qgen.report.values import Value, corruption_detail
from qgen.vocab import PRECISIONS


def values(source: str, quantity: str, by_precision: dict[str, float], detail: str = "", model: str = "M"):
    return [Value(source, "D", model, p, quantity, detail, v) for p, v in by_precision.items()]


def table4(below: int, model: str = "M", precisions=("int8", "int4", "int2")) -> list[Value]:
    """Five corruptions; the quantized gap is below FP32's in the first ``below`` of them."""
    out = []
    for i, corruption in enumerate(CORRUPTIONS[:5]):
        detail = corruption_detail(corruption, 3)
        out += values("table4", "gap", {"fp32": 1.0}, detail, model)
        out += values("table4", "gap", dict.fromkeys(precisions, 0.5 if i < below else 1.5), detail, model)
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
        for v in values("table3", name, {p: (1.0 if p == lowest else 2.0) for p in PRECISIONS})
    ]


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
    "bin_width_grows": (figure1(True), figure1(False)),
    "landscape_quantized_flatter": (
        values("figure2", "mean_rise", {"fp32": 3.0, "int8": 1.0, "int4": 2.0, "int2": 2.5}),
        values("figure2", "mean_rise", {"fp32": 3.0, "int8": 1.0, "int4": 2.0, "int2": 3.5}),
    ),
    "landscape_int8_flattest": (
        values("figure2", "mean_rise", {"fp32": 3.0, "int8": 1.0, "int4": 2.0, "int2": 3.5}),
        values("figure2", "mean_rise", {"fp32": 3.0, "int8": 1.0, "int4": 2.0, "int2": 1.5}),
    ),
}
CLAIMS = {claim.name: claim for claim in claims.CLAIMS}


def test_every_claim_has_cases() -> None:
    assert set(CASES) == set(CLAIMS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_claim_passes_fails_and_is_not_run_without_its_results(name: str) -> None:
    claim = CLAIMS[name]
    good, bad = CASES[name]
    assert {v.status for v in claims.evaluate(claim, {claim.source: good}).values()} == {PASS}
    assert claims.evaluate(claim, {claim.source: bad})["D M"].status == FAIL
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
