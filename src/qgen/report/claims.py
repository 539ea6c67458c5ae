"""The paper's qualitative claims as checks: each maps a table's values to one verdict per
(dataset, model), run unchanged on the paper's numbers and on ours (:data:`CLAIMS`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qgen.errors import QgenError
from qgen.report.values import Value
from qgen.vocab import MEASURES, PRECISION_LABELS

Status = Literal["PASS", "FAIL", "NOT RUN"]
PASS: Status = "PASS"
FAIL: Status = "FAIL"
NOT_RUN: Status = "NOT RUN"

ORDER = ("fp32", "int8", "int4", "int2")  # decreasing precision, as in the paper's tables
QUANTIZED = ORDER[1:]
# Test-accuracy points within which Int8 counts as "on par" with FP32 (our reading; docs/decisions.md).
INT8_TOLERANCE = 1.0
MOST, ALMOST_ALL = 0.5, 0.9  # fractions of cells: "most" is more than half, "almost all" at least 90%


@dataclass(frozen=True)
class Verdict:
    status: Status
    evidence: str


def _label(precision: str) -> str:
    return PRECISION_LABELS[precision]


Check = Callable[[Sequence[Value]], dict[str, Verdict]]


def _scope(value: Value) -> str:
    return f"{value.dataset} {value.model}"


def _grouped(values: Sequence[Value], quantity: str) -> dict[str, dict[tuple[str, str], float]]:
    """scope -> {(precision, detail): value} for one quantity, scopes in order of appearance."""
    groups: dict[str, dict[tuple[str, str], float]] = {}
    for v in values:
        if v.quantity == quantity:
            groups.setdefault(_scope(v), {})[(v.precision, v.detail)] = v.value
    return groups


def _missing(cells: Mapping[tuple[str, str], float], precisions: Sequence[str]) -> Verdict | None:
    """NOT RUN naming the precisions without a value, if any."""
    absent = [_label(p) for p in precisions if (p, "") not in cells]
    return Verdict(NOT_RUN, f"no {', '.join(absent)} result") if absent else None


Judge = Callable[[Mapping[str, float]], Verdict]


def _per_scope(quantity: str, precisions: Sequence[str], judge: Judge) -> Check:
    """A check of one value per precision: NOT RUN where one is missing, else ``judge({precision: v})``."""

    def check(values: Sequence[Value]) -> dict[str, Verdict]:
        return {
            scope: _missing(cells, precisions) or judge({p: cells[(p, "")] for p in precisions})
            for scope, cells in _grouped(values, quantity).items()
        }

    return check


def _trail(series: Mapping[str, float], separator: str = ", ") -> str:
    return separator.join(f"{_label(p)} {v:.3f}" for p, v in series.items())


def _trend(name: str, decreasing: bool) -> Judge:
    """The value moves one way from FP32 to Int2: monotone step by step and strictly overall."""

    def judge(series: Mapping[str, float]) -> Verdict:
        ordered = [series[p] for p in ORDER]
        steps = [b <= a if decreasing else b >= a for a, b in itertools.pairwise(ordered)]
        overall = ordered[-1] < ordered[0] if decreasing else ordered[-1] > ordered[0]
        return Verdict(PASS if all(steps) and overall else FAIL, f"{name}: {_trail(series, ' → ')}")

    return judge


def _int2_gap_below_fp32(gap: Mapping[str, float]) -> Verdict:
    verdict = PASS if gap["int2"] < gap["fp32"] else FAIL
    return Verdict(verdict, f"gap: Int2 {gap['int2']:.3f} vs FP32 {gap['fp32']:.3f}")


def _int8_on_par(acc: Mapping[str, float]) -> Verdict:
    apart = abs(acc["int8"] - acc["fp32"])
    return Verdict(
        PASS if apart <= INT8_TOLERANCE else FAIL,
        f"test accuracy: Int8 {acc['int8']:.2f}% vs FP32 {acc['fp32']:.2f}%, {apart:.2f} points apart "
        f"(on par: at most {INT8_TOLERANCE:g})",
    )


def _fp32_largest_norm(norm: Mapping[str, float]) -> Verdict:
    larger = [_label(p) for p in QUANTIZED if norm[p] >= norm["fp32"]]
    evidence = _trail(norm) + (f"; not below FP32: {', '.join(larger)}" if larger else "")
    return Verdict(FAIL if larger else PASS, evidence)


MAGNITUDE_AWARE = tuple(m.name for m in MEASURES if m.magnitude_aware)


def magnitude_aware_lowest_quantized(values: Sequence[Value]) -> dict[str, Verdict]:
    """For each magnitude-aware measure, the lowest value of a model's precisions is a quantized one."""
    per_measure = {name: _grouped(values, name) for name in MAGNITUDE_AWARE}
    scopes = list(dict.fromkeys(s for groups in per_measure.values() for s in groups))
    out = {}
    for scope in scopes:
        lowest = {}
        for name in MAGNITUDE_AWARE:
            cells = per_measure[name].get(scope, {})
            missing = _missing(cells, ORDER)
            if missing:
                out[scope] = Verdict(NOT_RUN, f"{name}: {missing.evidence}")
                break
            lowest[name] = min(ORDER, key=lambda p, c=cells: c[(p, "")])
        else:
            at_fp32 = [name for name, p in lowest.items() if p == "fp32"]
            evidence = ", ".join(f"{name} lowest at {_label(p)}" for name, p in lowest.items())
            out[scope] = Verdict(FAIL if at_fp32 else PASS, evidence)
    return out


def _fraction_below_fp32(precisions: Sequence[str], threshold: float, strict: bool) -> Check:
    """Share of (corruption, severity, precision) cells whose gap is below FP32's for the same corruption,
    per model and over all models; PASS when the share exceeds (``strict``) or reaches ``threshold``."""

    def check(values: Sequence[Value]) -> dict[str, Verdict]:
        counts: dict[str, list[bool]] = {}
        for scope, cells in _grouped(values, "gap").items():
            details = list(dict.fromkeys(d for _, d in cells))
            for detail in details:
                if ("fp32", detail) in cells:
                    counts.setdefault(scope, []).extend(
                        cells[(p, detail)] < cells[("fp32", detail)]
                        for p in precisions
                        if (p, detail) in cells
                    )
        if counts:
            counts["all models"] = [x for scope_counts in list(counts.values()) for x in scope_counts]
        out = {}
        for scope, below in counts.items():
            if not below:
                out[scope] = Verdict(
                    NOT_RUN, f"no {'/'.join(map(_label, precisions))} cell beside an FP32 one"
                )
                continue
            share = sum(below) / len(below)
            ok = share > threshold if strict else share >= threshold
            out[scope] = Verdict(
                PASS if ok else FAIL,
                f"{sum(below)} of {len(below)} cells ({100 * share:.1f}%) below FP32; "
                f"needs {'more than' if strict else 'at least'} {100 * threshold:g}%",
            )
        return out

    return check


def bin_width_grows(values: Sequence[Value]) -> dict[str, Verdict]:
    """Figure 1: for every layer, step(Int2) > step(Int4) > step(Int8)."""
    out = {}
    for scope, cells in _grouped(values, "step_size").items():
        layers = list(dict.fromkeys(d for _, d in cells))
        absent = [_label(p) for p in QUANTIZED if not any((p, layer) in cells for layer in layers)]
        if absent:
            out[scope] = Verdict(NOT_RUN, f"no {', '.join(absent)} run")
            continue
        incomplete = [layer for layer in layers if any((p, layer) not in cells for p in QUANTIZED)]
        if incomplete:
            raise QgenError(f"Figure 1 {scope}: layers {incomplete[:3]} lack a step at some precision")
        broken = [
            layer
            for layer in layers
            if not cells[("int2", layer)] > cells[("int4", layer)] > cells[("int8", layer)]
        ]
        evidence = f"{len(layers) - len(broken)} of {len(layers)} layers have Int2 > Int4 > Int8"
        evidence += f"; not: {', '.join(broken[:5])}{' ...' if len(broken) > 5 else ''}" if broken else ""
        out[scope] = Verdict(PASS if not broken else FAIL, evidence)
    return out


def _quantized_flatter(rise: Mapping[str, float]) -> Verdict:
    """Figure 2 / §4.1.1: every quantized surface rises less around its centre than the FP32 one."""
    ok = all(rise[p] < rise["fp32"] for p in QUANTIZED)
    return Verdict(PASS if ok else FAIL, f"mean loss rise over the grid: {_trail(rise)}")


def _int8_flattest(rise: Mapping[str, float]) -> Verdict:
    """Figure 2's caption: Int8 is the flattest, and flatness diminishes from Int8 to Int4 to Int2."""
    ok = rise["int8"] == min(rise.values()) and rise["int8"] <= rise["int4"] <= rise["int2"]
    return Verdict(PASS if ok else FAIL, f"mean loss rise over the grid: {_trail(rise)}")


@dataclass(frozen=True)
class Claim:
    """A qualitative statement of the paper, where it is made, and the check that decides it."""

    name: str
    source: str
    where: str
    statement: str
    check: Check


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "gap_shrinks",
        "table1",
        "§4.2, Table 1",
        "The generalization gap shrinks from FP32 to Int2 (never grows as precision drops).",
        _per_scope("gap", ORDER, _trend("gap", decreasing=True)),
    ),
    Claim(
        "int2_gap_below_fp32",
        "table1",
        "Abstract, §4.2, Table 1",
        "Int2 models have a smaller generalization gap than FP32 ones.",
        _per_scope("gap", ("fp32", "int2"), _int2_gap_below_fp32),
    ),
    Claim(
        "train_loss_grows",
        "table1",
        "§3 (eq. 7), §4.2, Table 1",
        "Lower precision gives a higher training loss (quantization regularizes).",
        _per_scope("train_loss", ORDER, _trend("train loss", decreasing=False)),
    ),
    Claim(
        "int8_on_par",
        "table1",
        "§4.2, Table 1",
        f"Int8 is on par with FP32 (test accuracy within {INT8_TOLERANCE:g} point).",
        _per_scope("test_acc", ("fp32", "int8"), _int8_on_par),
    ),
    Claim(
        "fp32_largest_norm",
        "table2",
        "§4.1, Table 2",
        "The FP32 model has a larger weight norm than each quantized one.",
        _per_scope("weight_norm", ORDER, _fp32_largest_norm),
    ),
    Claim(
        "magnitude_aware_lowest_quantized",
        "table3",
        "§4.1, Table 3",
        "Magnitude-aware PAC-Bayes and sharpness measures are lowest for a quantized model.",
        magnitude_aware_lowest_quantized,
    ),
    Claim(
        "corrupted_gap_mostly_smaller",
        "table4",
        "§4.3, Table 4",
        "Quantized models have a smaller gap than FP32 under most corruptions.",
        _fraction_below_fp32(QUANTIZED, MOST, strict=True),
    ),
    Claim(
        "corrupted_gap_int8_int4",
        "table4",
        "App. C.5",
        "Int8 and Int4 have a smaller gap than FP32 for almost all corruptions and severities.",
        _fraction_below_fp32(("int8", "int4"), ALMOST_ALL, strict=False),
    ),
    Claim(
        "bin_width_grows",
        "figure1",
        "§3, Figure 1",
        "Lower bit width gives a larger bin width (learned step) for every layer.",
        bin_width_grows,
    ),
    Claim(
        "landscape_quantized_flatter",
        "figure2",
        "§4.1.1, Figure 2",
        "The loss landscape of every quantized model is flatter than the FP32 one.",
        _per_scope("mean_rise", ORDER, _quantized_flatter),
    ),
    Claim(
        "landscape_int8_flattest",
        "figure2",
        "Figure 2 caption",
        "Int8 has the flattest landscape and flatness diminishes as precision decreases.",
        _per_scope("mean_rise", ORDER, _int8_flattest),
    ),
)


def evaluate(claim: Claim, results: Mapping[str, Sequence[Value] | None]) -> dict[str, Verdict]:
    """The claim's verdict per scope; a missing source gives a single NOT RUN verdict."""
    values = results.get(claim.source)
    if values is None:
        return {"": Verdict(NOT_RUN, f"no {claim.source} results (not configured or not built)")}
    verdicts = claim.check(values)
    return verdicts or {"": Verdict(NOT_RUN, f"{claim.source} holds no values this claim reads")}


def claim_rows(
    paper: Mapping[str, Sequence[Value] | None], ours: Mapping[str, Sequence[Value] | None]
) -> list[dict[str, Any]]:
    """Per claim, each scope with the verdict on the paper's numbers (None: not published) and on ours."""
    out = []
    for claim in CLAIMS:
        on_paper = evaluate(claim, paper) if paper.get(claim.source) is not None else {}
        on_ours = evaluate(claim, ours)
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
