"""The paper's qualitative claims as checks that respect the uncertainty of the numbers they compare.

Each claim of :data:`CLAIMS` maps a table's values to one verdict per (dataset, model), run unchanged on
the paper's numbers and on ours. A claim is made of comparisons of two cells, ``a < b``; with ``d = b - a``
and ``u = sqrt(u_a^2 + u_b^2)`` the combined standard uncertainty of the two values
(:attr:`~qgen.report.values.Value.uncertainty`), a comparison is

- PASS if ``d > k u`` and FAIL if ``d < -k u`` (``k``: the coverage factor, :data:`COVERAGE`),
- INCONCLUSIVE if ``|d| <= k u``, or if either value has no known uncertainty;
- decided by the relation itself where both values are exact (``u = 0``, the paper's numbers): PASS if
  ``a < b``, FAIL otherwise.

A claim is FAIL if any of its comparisons fails, PASS if all pass, and INCONCLUSIVE otherwise; claims
about shares of cells, trends and tolerances refine this below. A result that does not exist is NOT RUN.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from qgen.errors import QgenError
from qgen.report.values import POPULATION, Value
from qgen.tables import REFERENCE_PRECISION
from qgen.vocab import (
    MEASURES,
    PAPER_PRECISIONS,
    POPULATION_MEASURES,
    PRECISION_FACTS,
    PRECISION_LABELS,
    PRECISIONS,
    Measure,
)

Status = Literal["PASS", "FAIL", "INCONCLUSIVE", "NOT RUN"]
PASS: Status = "PASS"
FAIL: Status = "FAIL"
INCONCLUSIVE: Status = "INCONCLUSIVE"
NOT_RUN: Status = "NOT RUN"
STATUSES: tuple[Status, ...] = (PASS, FAIL, INCONCLUSIVE, NOT_RUN)

COVERAGE = 2.0
"""Default coverage factor ``k``: a difference counts when it exceeds ``k`` standard uncertainties (about a
95% interval for a normal error; ``qgen report --coverage``)."""

ORDER = tuple(sorted(PAPER_PRECISIONS, key=lambda p: -(PRECISIONS[p] or math.inf)))
"""The paper's precisions from full precision down to the fewest bits: the direction of the paper's trends.
A scope at W/A precisions (the ViT rows, ``w8a8``...) is judged on the same ladder (:data:`RUNGS`)."""
FULL = REFERENCE_PRECISION
QUANTIZED = tuple(p for p in ORDER if PRECISIONS[p] is not None)
RUNGS: dict[str, str] = {
    wa.name: w.name
    for wa in PRECISION_FACTS
    for w in PRECISION_FACTS
    if wa.activation_bits is not None and w.name in QUANTIZED and w.weight_bits == wa.weight_bits
}
"""W/A precision -> the weight-only precision of its rung (``w4a4`` -> ``int4``): a claim about Int8 > Int4 >
Int2 reads W8A8 > W4A4 > W2A2 in a scope of W/A runs."""
WA_SCOPE = " (W/A)"
"""Appended to a scope's name for its W/A runs where the scope also has weight-only ones."""
# Test-accuracy points within which Int8 counts as "on par" with FP32 (our reading; docs/decisions.md).
INT8_TOLERANCE = 1.0
MOST, ALMOST_ALL, ALL = 0.5, 0.9, 1.0  # fractions of cells: "most" is more than half, "almost all" >= 90%
# Relative error of eq. 6's first-order output change up to which the expansion counts as close (our
# reading; docs/decisions.md).
TAYLOR_TOLERANCE = 0.1


@dataclass(frozen=True)
class Verdict:
    status: Status
    evidence: str


def _label(precision: str) -> str:
    return PRECISION_LABELS[precision]


def _num(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals, or one significant digit where those would show 0."""
    return f"{x:.{digits}f}" if x == 0 or abs(x) >= 10**-digits else f"{x:.1g}"


def shown(v: Value, digits: int = 3) -> str:
    """``0.302`` or, with a standard uncertainty, ``0.302 ± 0.004``."""
    return _num(v.value, digits) + (f" ± {_num(v.uncertainty, digits)}" if v.uncertainty else "")


def rule(k: float) -> list[str]:
    """The rule of the verdicts as the report states it: paragraphs of inline Markdown."""
    return [
        "A claim is checked by comparing cells, *a* < *b*. With *d* = *b* - *a* and *u* = sqrt(*u_a*² + "
        "*u_b*²) the combined standard uncertainty of the two numbers (shown as ± after each of ours), a "
        f"comparison is **PASS** if *d* > {k:g}*u*, **FAIL** if *d* < -{k:g}*u*, and **INCONCLUSIVE** if "
        f"|*d*| ≤ {k:g}*u* or if a number has no known uncertainty (coverage factor *k* = {k:g}, about a 95% "
        "interval; `qgen report --coverage`).",
        "The paper prints no uncertainty, so its numbers are taken as exact: a check on them is an exact "
        "comparison (PASS if *a* < *b*, FAIL otherwise), in the column *paper (exact)*.",
        "A claim is FAIL if one of its comparisons fails, PASS if all pass, and INCONCLUSIVE otherwise. A "
        'trend ("shrinks from FP32 to Int2, never grows") needs its overall change to pass and no step to go '
        'the other way beyond the rule; a share of cells ("most corruptions") is PASS when the cells below '
        "FP32 already reach it and FAIL when it cannot be reached even if every undecided cell were below; "
        f'"on par within {INT8_TOLERANCE:g} point" is PASS when |*d*| + {k:g}*u* ≤ {INT8_TOLERANCE:g} and '
        f"FAIL when |*d*| - {k:g}*u* > {INT8_TOLERANCE:g}.",
        "An undecided check whose numbers lack an uncertainty also says what it would be with them taken as "
        "exact, so the direction of the numbers is never hidden. A result that was not configured or not "
        "built is **NOT RUN**, never a failure.",
    ]


# --------------------------------------------------------------------------------------------------------
# Comparing two cells


@dataclass(frozen=True)
class Comparison:
    """Whether ``a < b``, judged with their uncertainty (the module's rule)."""

    a: Value
    b: Value
    status: Status

    @property
    def difference(self) -> float:
        return self.b.value - self.a.value

    @property
    def uncertainty(self) -> float | None:
        return combined(self.a, self.b)


def combined(*values: Value) -> float | None:
    """The standard uncertainty of a sum or difference of independent values; ``None`` if one is unknown."""
    us = [v.uncertainty for v in values]
    known = [u for u in us if u is not None]
    return math.sqrt(sum(u * u for u in known)) if len(known) == len(us) else None


def sign(d: float, u: float | None, k: float) -> Status:
    """PASS where ``d > 0`` beyond ``k u``, FAIL where ``d < 0`` beyond it, INCONCLUSIVE in between or
    without ``u``; an exact ``d`` (``u = 0``) is PASS exactly when positive."""
    if u is None:
        return INCONCLUSIVE
    if u == 0:
        return PASS if d > 0 else FAIL
    return PASS if d > k * u else FAIL if d < -k * u else INCONCLUSIVE


def less(a: Value, b: Value, k: float) -> Comparison:
    """The comparison ``a < b``."""
    return Comparison(a, b, sign(b.value - a.value, combined(a, b), k))


def both(statuses: Iterable[Status]) -> Status:
    """FAIL if any is FAIL, PASS if all are PASS, else INCONCLUSIVE."""
    found = set(statuses)
    return FAIL if FAIL in found else PASS if found <= {PASS} else INCONCLUSIVE


def _describe(c: Comparison, k: float, digits: int = 3) -> str:
    """``FP32 - Int2 = 0.078 ± 0.004, beyond 2u``: the difference ``b - a``, and how it was judged."""
    where = f"{_label(c.b.precision)} - {_label(c.a.precision)}" + (f" ({c.a.detail})" if c.a.detail else "")
    d, u = c.difference, c.uncertainty
    if not u:  # exact, or unknown (evaluate() says how many values lack an uncertainty)
        return f"{where} = {_num(d, digits)}"
    judged = f"beyond {k:g}u" if abs(d) > k * u else f"within {k:g}u"
    return f"{where} = {_num(d, digits)} ± {_num(u, digits)}, {judged}"


def _series(values: Mapping[str, Value], separator: str = ", ", digits: int = 3) -> str:
    return separator.join(f"{_label(p)} {shown(v, digits)}" for p, v in values.items())


# --------------------------------------------------------------------------------------------------------
# Claim checks: each maps values to one verdict per scope ("<dataset> <model>").

Check = Callable[[Sequence[Value], float], dict[str, Verdict]]


def _scope(value: Value) -> str:
    return f"{value.dataset} {value.model}".strip()


def _grouped(values: Sequence[Value], quantity: str | None = None) -> dict[str, dict[tuple[str, str], Value]]:
    """scope -> {(precision, detail): value} of one quantity (``None``: the values are of one quantity),
    scopes in order of appearance."""
    groups: dict[str, dict[tuple[str, str], Value]] = {}
    for v in values:
        if quantity in (None, v.quantity):
            groups.setdefault(_scope(v), {})[(v.precision, v.detail)] = v
    return groups


def _missing(cells: Mapping[tuple[str, str], Value], precisions: Sequence[str]) -> Verdict | None:
    """NOT RUN naming the precisions without a value, if any."""
    absent = [_label(p) for p in precisions if (p, "") not in cells]
    return Verdict(NOT_RUN, f"no {', '.join(absent)} result") if absent else None


Judge = Callable[[Mapping[str, Value], float], Verdict]


def _per_scope(precisions: Sequence[str], judge: Judge) -> Check:
    """A check of one value per precision: NOT RUN where one is missing, else ``judge({precision: v}, k)``."""

    def check(values: Sequence[Value], k: float) -> dict[str, Verdict]:
        return {
            scope: _missing(cells, precisions) or judge({p: cells[(p, "")] for p in precisions}, k)
            for scope, cells in _grouped(values).items()
        }

    return check


def _all_less(name: str, pairs: Sequence[tuple[str, str]]) -> Judge:
    """Every ``(a, b)`` of ``pairs`` (precisions) is ``a < b`` (:func:`both`); the evidence lists the values
    and each comparison that did not pass."""

    def judge(series: Mapping[str, Value], k: float) -> Verdict:
        comparisons = [less(series[a], series[b], k) for a, b in pairs]
        status = both(c.status for c in comparisons)
        open_ = [_describe(c, k) for c in comparisons if c.status != PASS]
        return Verdict(status, f"{name}: {_series(series)}" + (f"; {'; '.join(open_)}" if open_ else ""))

    return judge


def _trend(name: str, decreasing: bool, order: Sequence[str] = ORDER) -> Judge:
    """The value moves one way along ``order`` (FP32 to Int2): the overall change is a comparison of the
    rule, and no step may go significantly the other way (a step within its uncertainty is consistent with
    "never grows"). FAIL if the overall change or a step goes the other way, PASS if the overall change
    passes and no step fails, else INCONCLUSIVE."""

    def judge(series: Mapping[str, Value], k: float) -> Verdict:
        ordered = [series[p] for p in order]
        first, last = ordered[0], ordered[-1]
        overall = less(last, first, k) if decreasing else less(first, last, k)
        backwards = [
            c
            for a, b in itertools.pairwise(ordered)
            if (c := less(a, b, k) if decreasing else less(b, a, k)).status == PASS
        ]
        status = FAIL if overall.status == FAIL or backwards else overall.status
        evidence = f"{name}: {_series(series, ' → ')}; overall {_describe(overall, k)}"
        if backwards:
            evidence += "; the other way: " + ", ".join(_describe(c, k) for c in backwards)
        return Verdict(status, evidence)

    return judge


def _int8_on_par(acc: Mapping[str, Value], k: float) -> Verdict:
    """``|Int8 - FP32| <= tolerance``: PASS if it holds with the whole ``k u`` margin, FAIL if it fails by
    more than ``k u``, else INCONCLUSIVE (exact values: the inequality itself)."""
    apart = abs(acc["int8"].value - acc[FULL].value)
    u = combined(acc["int8"], acc[FULL])
    margin = sign(INT8_TOLERANCE - apart, u, k)
    status = PASS if u == 0 and apart <= INT8_TOLERANCE else margin
    spread = "" if not u else f" ± {_num(u, 2)}"
    return Verdict(
        status,
        f"test accuracy: Int8 {shown(acc['int8'], 2)}% vs FP32 {shown(acc[FULL], 2)}%, {apart:.2f}{spread} "
        f"points apart (on par: at most {INT8_TOLERANCE:g})",
    )


MAGNITUDE_AWARE = tuple(m.name for m in MEASURES if m.magnitude_aware)


def magnitude_aware_lowest_quantized(values: Sequence[Value], k: float) -> dict[str, Verdict]:
    """For each magnitude-aware measure, the lowest value of a model's precisions is a quantized one: PASS
    if some quantized value is below FP32's, FAIL if FP32's is below every quantized one, else
    INCONCLUSIVE; the claim needs every magnitude-aware measure (:func:`both`)."""
    per_measure = {name: _grouped(values, name) for name in MAGNITUDE_AWARE}
    scopes = list(dict.fromkeys(s for groups in per_measure.values() for s in groups))
    out = {}
    for scope in scopes:
        statuses, notes = [], []
        for name in MAGNITUDE_AWARE:
            cells = per_measure[name].get(scope, {})
            missing = _missing(cells, ORDER)
            if missing:
                out[scope] = Verdict(NOT_RUN, f"{name}: {missing.evidence}")
                break
            comparisons = [less(cells[(q, "")], cells[(FULL, "")], k) for q in QUANTIZED]
            found = {c.status for c in comparisons}
            status = PASS if PASS in found else FAIL if found == {FAIL} else INCONCLUSIVE
            lowest = min(ORDER, key=lambda p, c=cells: c[(p, "")].value)
            statuses.append(status)
            note = f"{name} lowest at {_label(lowest)}"
            if status != PASS:
                best = min(comparisons, key=lambda c: c.a.value)
                note += f" ({_describe(best, k)})"
            notes.append(note)
        else:
            out[scope] = Verdict(both(statuses), ", ".join(notes))
    return out


def _share_below_full(precisions: Sequence[str], threshold: float, strict: bool) -> Check:
    """Share of (corruption, severity, precision) cells whose gap is below FP32's for the same cell, per
    model and over all models. Each cell is a comparison of the rule: PASS when the share of cells below
    already meets the threshold (more than it if ``strict``), FAIL when it cannot even if every undecided
    cell were below, else INCONCLUSIVE."""

    def meets(share: float) -> bool:
        return share > threshold if strict else share >= threshold

    def check(values: Sequence[Value], k: float) -> dict[str, Verdict]:
        counts: dict[str, list[Status]] = {}
        for scope, cells in _grouped(values).items():
            for detail in dict.fromkeys(d for _, d in cells):
                if (FULL, detail) in cells:
                    counts.setdefault(scope, []).extend(
                        less(cells[(p, detail)], cells[(FULL, detail)], k).status
                        for p in precisions
                        if (p, detail) in cells
                    )
        if counts:
            counts["all models"] = [s for statuses in list(counts.values()) for s in statuses]
        out = {}
        for scope, statuses in counts.items():
            if not statuses:
                out[scope] = Verdict(
                    NOT_RUN, f"no {'/'.join(map(_label, precisions))} cell beside an FP32 one"
                )
                continue
            n, below, undecided = len(statuses), statuses.count(PASS), statuses.count(INCONCLUSIVE)
            status = (
                PASS if meets(below / n) else FAIL if not meets((below + undecided) / n) else INCONCLUSIVE
            )
            evidence = f"{below} of {n} cells ({100 * below / n:.1f}%) below FP32"
            if undecided:
                evidence += f", {undecided} undecided"
            out[scope] = Verdict(
                status, evidence + f"; needs {'more than' if strict else 'at least'} {100 * threshold:g}%"
            )
        return out

    return check


def bin_width_grows(values: Sequence[Value], k: float) -> dict[str, Verdict]:
    """Figure 1: for every layer, step(Int2) > step(Int4) > step(Int8)."""
    out = {}
    for scope, cells in _grouped(values).items():
        layers = list(dict.fromkeys(d for _, d in cells))
        absent = [_label(p) for p in QUANTIZED if not any((p, layer) in cells for layer in layers)]
        if absent:
            out[scope] = Verdict(NOT_RUN, f"no {', '.join(absent)} run")
            continue
        incomplete = [layer for layer in layers if any((p, layer) not in cells for p in QUANTIZED)]
        if incomplete:
            raise QgenError(f"Figure 1 {scope}: layers {incomplete[:3]} lack a step at some precision")
        per_layer = {
            layer: both(
                less(cells[(a, layer)], cells[(b, layer)], k).status for a, b in itertools.pairwise(QUANTIZED)
            )
            for layer in layers
        }
        ordered = [
            layer
            for layer in layers
            if all(
                cells[(a, layer)].value < cells[(b, layer)].value for a, b in itertools.pairwise(QUANTIZED)
            )
        ]
        passed = [layer for layer, s in per_layer.items() if s == PASS]
        failed = [layer for layer, s in per_layer.items() if s == FAIL]
        chain = " > ".join(_label(p) for p in reversed(QUANTIZED))
        evidence = f"{len(ordered)} of {len(layers)} layers have {chain}, {len(passed)} beyond the noise"
        if failed:
            evidence += f"; not: {', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}"
        out[scope] = Verdict(both(per_layer.values()), evidence)
    return out


def _at_most(name: str, bound: float) -> Judge:
    """Every value is at most ``bound`` (each a comparison of the rule: exact values decide by the
    inequality itself)."""

    def within(v: Value, k: float) -> Status:
        if v.uncertainty == 0:
            return PASS if v.value <= bound else FAIL
        return sign(bound - v.value, v.uncertainty, k)

    def judge(series: Mapping[str, Value], k: float) -> Verdict:
        statuses = [within(v, k) for v in series.values()]
        return Verdict(both(statuses), f"{name}: {_series(series)} (close: at most {bound:g})")

    return judge


def _population(values: Sequence[Value]) -> dict[tuple[str, str], Value]:
    """(measure, ``"<statistic> <group>"``) -> value of the correlation table's population."""
    return {(v.quantity, v.detail): v for v in values if v.dataset == POPULATION}


def _short(measure: str) -> str:
    return POPULATION_MEASURES[measure]


def _population_check(statistic: str, pairs: Sequence[tuple[str | None, str]], name: str) -> Check:
    """Each ``(a, b)`` of ``pairs`` (measures) has ``statistic`` of ``a`` below that of ``b``; ``a = None``
    stands for zero (the measure ranks the models as their gaps do). One verdict for the population: NOT
    RUN where a statistic is missing (undefined, or the correlation table not built)."""

    def check(values: Sequence[Value], k: float) -> dict[str, Verdict]:
        cells = _population(values)
        if not cells:
            return {}
        missing = [b for a, b in pairs for m in (a, b) if m and (m, statistic) not in cells]
        if missing:
            shown_missing = ", ".join(dict.fromkeys(map(_short, missing)))
            return {POPULATION: Verdict(NOT_RUN, f"{statistic} undefined for {shown_missing}")}
        statuses, notes = [], []
        for a, b in pairs:
            high = cells[(b, statistic)]
            if a is None:
                status = sign(high.value, high.uncertainty, k)
                notes.append(f"{_short(b)} {shown(high, 2)}")
            else:
                comparison = less(cells[(a, statistic)], high, k)
                status = comparison.status
                notes.append(f"{_short(b)} {shown(high, 2)} vs {_short(a)} {shown(comparison.a, 2)}")
            statuses.append(status)
        return {POPULATION: Verdict(both(statuses), f"{name}: " + "; ".join(notes))}

    return check


def _plain(m: Measure) -> str:
    """The measure that differs from magnitude-aware ``m`` only in bounding the noise absolutely."""
    return Measure(m.family, False, m.reference).name


@dataclass(frozen=True)
class Claim:
    """A qualitative statement of the paper, where it is made, the quantities it reads of its source (and,
    with ``cells``, only those of their cells whose detail is listed), and the check that decides it
    (given only those values)."""

    name: str
    source: str
    where: str
    statement: str
    reads: tuple[str, ...]
    check: Check
    cells: tuple[str, ...] | None = None


TO_FULL = tuple((q, FULL) for q in QUANTIZED)
"""Each quantized precision below full precision."""

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "gap_shrinks",
        "table1",
        "§4.2, Table 1",
        "The generalization gap shrinks from FP32 to Int2 (never grows as precision drops).",
        ("gap",),
        _per_scope(ORDER, _trend("gap", decreasing=True)),
    ),
    Claim(
        "int2_gap_below_fp32",
        "table1",
        "Abstract, §4.2, Table 1",
        "Int2 models have a smaller generalization gap than FP32 ones.",
        ("gap",),
        _per_scope((FULL, "int2"), _all_less("gap", [("int2", FULL)])),
    ),
    Claim(
        "train_loss_grows",
        "table1",
        "§3 (eq. 7), §4.2, Table 1",
        "Lower precision gives a higher training loss (quantization regularizes).",
        ("train_loss",),
        _per_scope(ORDER, _trend("train loss", decreasing=False)),
    ),
    Claim(
        "int8_on_par",
        "table1",
        "§4.2, Table 1",
        f"Int8 is on par with FP32 (test accuracy within {INT8_TOLERANCE:g} point).",
        ("test_acc",),
        _per_scope((FULL, "int8"), _int8_on_par),
    ),
    Claim(
        "fp32_largest_norm",
        "table2",
        "§4.1, Table 2",
        "The FP32 model has a larger weight norm than each quantized one.",
        ("weight_norm",),
        _per_scope(ORDER, _all_less("weight norm", TO_FULL)),
    ),
    Claim(
        "magnitude_aware_lowest_quantized",
        "table3",
        "§4.1, Table 3",
        "Magnitude-aware PAC-Bayes and sharpness measures are lowest for a quantized model.",
        MAGNITUDE_AWARE,
        magnitude_aware_lowest_quantized,
    ),
    Claim(
        "corrupted_gap_mostly_smaller",
        "table4",
        "§4.3, Table 4",
        "Quantized models have a smaller gap than FP32 under most corruptions.",
        ("gap",),
        _share_below_full(QUANTIZED, MOST, strict=True),
    ),
    Claim(
        "corrupted_gap_int8_int4",
        "table4",
        "App. C.5",
        "Int8 and Int4 have a smaller gap than FP32 for almost all corruptions and severities.",
        ("gap",),
        _share_below_full(("int8", "int4"), ALMOST_ALL, strict=False),
    ),
    Claim(
        "cifar_corrupted_gap_all_smaller",
        "table5",
        "App. C.4, Table 5",
        "Compared to full-precision models, quantized models show smaller generalization gaps in all cases.",
        ("gap",),
        _share_below_full(QUANTIZED, ALL, strict=False),
    ),
    Claim(
        "bin_width_grows",
        "figure1",
        "§3, Figure 1",
        "Lower bit width gives a larger bin width (learned step) for every layer.",
        ("step_size",),
        bin_width_grows,
    ),
    Claim(
        "landscape_quantized_flatter",
        "figure2",
        "§4.1.1, Figure 2",
        "The loss landscape of every quantized model is flatter than the FP32 one.",
        ("mean_rise",),
        _per_scope(ORDER, _all_less("mean loss rise over the grid", TO_FULL)),
    ),
    Claim(
        "landscape_int8_flattest",
        "figure2",
        "Figure 2 caption",
        "Int8 has the flattest landscape and flatness diminishes as precision decreases.",
        ("mean_rise",),
        _per_scope(
            ORDER,
            _all_less("mean loss rise over the grid", [("int8", FULL), ("int8", "int4"), ("int4", "int2")]),
        ),
    ),
    Claim(
        "regularizer_grows",
        "regularizer",
        "§3 (eq. 7), Figure 1",
        "The regularizer R of eq. 7 grows as the bit width falls (wider bins, more noise).",
        ("r_expected",),
        _per_scope(QUANTIZED, _trend("E R", decreasing=False, order=QUANTIZED)),
    ),
    Claim(
        "first_order_close",
        "regularizer",
        "§3 (eqs. 5-7)",
        "The first-order expansion of eq. 6 describes the quantized network's output (relative error at "
        f"most {TAYLOR_TOLERANCE:g}).",
        ("taylor_output_error",),
        _per_scope(QUANTIZED, _at_most("relative error of the first-order output change", TAYLOR_TOLERANCE)),
    ),
    Claim(
        "magnitude_aware_predict_gap",
        "correlation",
        "§4.1 (after Jiang et al., 2019)",
        "Magnitude-aware flatness measures rank models by their generalization gap (Kendall's tau > 0).",
        MAGNITUDE_AWARE,
        _population_check("tau all", [(None, name) for name in MAGNITUDE_AWARE], "tau"),
        cells=("tau all",),
    ),
    Claim(
        "magnitude_aware_better_indicators",
        "correlation",
        "§4.1",
        "Magnitude-aware measures are better indicators of generalization than their plain counterparts "
        "(a larger tau).",
        tuple(m.name for m in MEASURES),
        _population_check("tau all", [(_plain(m), m.name) for m in MEASURES if m.magnitude_aware], "tau"),
        cells=("tau all",),
    ),
    Claim(
        "flatness_explains_precision",
        "correlation",
        "§4.1, Table 3",
        "Among models that differ only in precision, the flatter one (magnitude-aware) generalizes better "
        "(psi over the precision axis > 0).",
        MAGNITUDE_AWARE,
        _population_check("psi precision", [(None, name) for name in MAGNITUDE_AWARE], "psi (precision)"),
        cells=("psi precision",),
    ),
)


def evaluate(
    claim: Claim, results: Mapping[str, Sequence[Value] | None], k: float = COVERAGE
) -> dict[str, Verdict]:
    """The claim's verdict per scope; a missing source gives a single NOT RUN verdict.

    Where a scope is INCONCLUSIVE and some of the values it reads have no uncertainty, the evidence adds
    what the check says with those taken as exact, so that the numbers' direction is never hidden.
    """
    found = results.get(claim.source)
    if found is None:
        return {"": Verdict(NOT_RUN, f"no {claim.source} results (not configured or not built)")}
    values, wa_scopes = on_paper_ladder(
        [v for v in found if v.quantity in claim.reads and (claim.cells is None or v.detail in claim.cells)]
    )
    verdicts = {
        scope: Verdict(v.status, _wa_labels(v.evidence)) if scope in wa_scopes else v
        for scope, v in claim.check(values, k).items()
    }
    if not verdicts:
        return {"": Verdict(NOT_RUN, f"{claim.source} holds no values this claim reads")}
    exact = claim.check([replace(v, uncertainty=0.0) if v.uncertainty is None else v for v in values], k)
    for scope, verdict in verdicts.items():
        lacking = sum(v.uncertainty is None for v in values if scope in ("all models", _scope(v)))
        if verdict.status == INCONCLUSIVE and lacking:
            verdicts[scope] = Verdict(
                INCONCLUSIVE,
                f"{verdict.evidence}; {lacking} value(s) without an uncertainty, so undecided "
                f"(taken as exact: {exact[scope].status})",
            )
    return verdicts


def on_paper_ladder(values: Sequence[Value]) -> tuple[list[Value], set[str]]:
    """``values`` with each W/A precision on its weight-only rung (:data:`RUNGS`), so that every claim reads
    them, and the scopes so relabelled. A scope with weight-only runs too keeps them; its W/A runs, with a
    copy of its FP32 values, become the scope ``<scope> (W/A)``."""
    mixed = {_scope(v) for v in values if v.precision in QUANTIZED} & {
        _scope(v) for v in values if v.precision in RUNGS
    }
    out, relabelled = [], set()
    for v in values:
        if v.precision in RUNGS or (v.precision == FULL and _scope(v) in mixed):
            moved = replace(v, model=v.model + WA_SCOPE) if _scope(v) in mixed else v
            if v.precision in RUNGS:
                moved = replace(moved, precision=RUNGS[v.precision])
                relabelled.add(_scope(moved))
            out.append(moved)
        if v.precision not in RUNGS:
            out.append(v)
    return out, relabelled


def _wa_labels(evidence: str) -> str:
    """Evidence written on the weight-only rungs, in the W/A precisions' own labels."""
    for wa, w in RUNGS.items():
        evidence = re.sub(rf"\b{PRECISION_LABELS[w]}\b", PRECISION_LABELS[wa], evidence)
    return evidence


def claim_rows(
    paper: Mapping[str, Sequence[Value] | None],
    ours: Mapping[str, Sequence[Value] | None],
    k: float = COVERAGE,
) -> list[dict[str, Any]]:
    """Per claim, each scope with the verdict on the paper's numbers (None: not published) and on ours."""
    out = []
    for claim in CLAIMS:
        on_paper = evaluate(claim, paper, k) if paper.get(claim.source) is not None else {}
        on_ours = evaluate(claim, ours, k)
        scopes = list(dict.fromkeys([*on_paper, *(s for s in on_ours if s)])) or [""]
        rows = [
            {
                "scope": scope or "—",
                "paper": on_paper.get(scope),
                "ours": on_ours.get(scope) or on_ours.get("") or Verdict(NOT_RUN, "not in our results"),
            }
            for scope in scopes
        ]
        out.append({"claim": claim, "rows": rows})
    return out
