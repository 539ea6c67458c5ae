"""The reproduction report: every published number beside ours, and the paper's claims as explicit checks.

Inputs are files only:

- the paper's Tables 1-4, transcribed into ``workflow/resources/paper/table{1,2,3,4}.csv`` (one row per
  published cell, with its unit and the paper's row/column labels; see :func:`read_paper_table`);
- the paper's known inconsistencies (``workflow/resources/paper/notes.yaml``);
- whichever of our summaries exist: ``results/summary/table*.csv`` (:mod:`qgen.tables`) and
  ``paper_tables/figure{1,2}.csv`` (:mod:`qgen.figures`).

Both sides are read into :class:`Value` records keyed by (source, dataset, model, precision, quantity,
detail), so a published cell and our cell meet by key, and each claim check of :data:`CLAIMS` runs
unchanged on the paper's numbers and on ours. A result that does not exist is NOT RUN, never a failure.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import yaml

from qgen.errors import QgenError
from qgen.vocab import MEASURES, PRECISION_LABELS, PRECISIONS

Status = Literal["PASS", "FAIL", "NOT RUN"]
PASS: Status = "PASS"
FAIL: Status = "FAIL"
NOT_RUN: Status = "NOT RUN"

ORDER = ("fp32", "int8", "int4", "int2")  # decreasing precision, as in the paper's tables
QUANTIZED = ORDER[1:]
SOURCES = ("table1", "table2", "table3", "table4", "figure1", "figure2")
TITLES = {
    "table1": "Table 1: generalization gaps",
    "table2": "Table 2: weight norms",
    "table3": "Table 3: sharpness-based measures",
    "table4": "Table 4: generalization gap under corruptions",
    "figure1": "Figure 1: learned bin width per layer",
    "figure2": "Figure 2: loss surfaces",
}
PAPER_COLUMNS = (
    "table",
    "dataset",
    "model",
    "precision",
    "quantity",
    "value",
    "unit",
    "paper_row",
    "paper_column",
)
# Test-accuracy points within which Int8 counts as "on par" with FP32 (our reading; docs/decisions.md).
INT8_TOLERANCE = 1.0
MOST, ALMOST_ALL = 0.5, 0.9  # fractions of cells: "most" is more than half, "almost all" at least 90%


@dataclass(frozen=True)
class Value:
    """One number of a table or figure: ``detail`` names the cell within a precision ("" for none),
    e.g. ``"gaussian_noise, severity 3"`` in Table 4 or a layer name in Figure 1."""

    source: str
    dataset: str
    model: str
    precision: str
    quantity: str
    detail: str
    value: float

    @property
    def key(self) -> tuple[str, str, str, str, str, str]:
        return (self.source, self.dataset, self.model, self.precision, self.quantity, self.detail)


@dataclass(frozen=True)
class PaperCell:
    """A published number: the value, its text as printed, its unit and where it stands in the paper."""

    value: Value
    text: str
    unit: str
    row: str
    column: str

    @property
    def decimals(self) -> int:
        return len(self.text.partition(".")[2])


@dataclass(frozen=True)
class Verdict:
    status: Status
    evidence: str


def corruption_detail(corruption: str, severity: int) -> str:
    return f"{corruption}, severity {severity}"


# --------------------------------------------------------------------------------------------------------
# Reading both sides


def read_paper_table(path: Path | str) -> list[PaperCell]:
    """A transcribed paper table; every row must carry the columns of :data:`PAPER_COLUMNS`."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = sorted(set(PAPER_COLUMNS) - set(reader.fieldnames or ()))
        if missing:
            raise QgenError(f"{path}: missing column(s) {missing}; expected at least {list(PAPER_COLUMNS)}")
        rows = list(reader)
    cells = []
    for line, row in enumerate(rows, 2):
        if row["precision"] not in PRECISIONS or row["table"] not in SOURCES:
            raise QgenError(
                f"{path}:{line}: unknown table {row['table']!r} or precision {row['precision']!r}"
            )
        detail = corruption_detail(row["corruption"], int(row["severity"])) if "corruption" in row else ""
        try:
            number = float(row["value"])
        except ValueError:
            raise QgenError(f"{path}:{line}: value {row['value']!r} is not a number") from None
        value = Value(
            row["table"], row["dataset"], row["model"], row["precision"], row["quantity"], detail, number
        )
        cells.append(PaperCell(value, row["value"], row["unit"], row["paper_row"], row["paper_column"]))
    return cells


def _values(
    source: str,
    rows: Iterable[Mapping[str, Any]],
    quantities: Callable[[Mapping[str, Any]], Mapping[str, Any]],
) -> list[Value]:
    """Values of the summary ``rows`` of ``source``; ``quantities`` maps a row to its named numbers."""
    out = []
    for row in rows:
        detail = (
            corruption_detail(row["corruption"], int(row["severity"]))
            if source == "table4"
            else str(row.get("layer", ""))
        )
        for quantity, number in quantities(row).items():
            if number is not None:
                out.append(
                    Value(
                        source,
                        row["dataset"],
                        row["model"],
                        row["precision"],
                        quantity,
                        detail,
                        float(number),
                    )
                )
    return out


def _ok(row: Mapping[str, Any]) -> bool:
    return row.get("status", "ok") == "ok"


# How each of our summary files becomes values: source -> row -> {quantity: number}.
SUMMARY_QUANTITIES: dict[str, Callable[[Mapping[str, Any]], Mapping[str, Any]]] = {
    "table1": lambda r: {
        q: r[f"{q}_mean"] for q in ("train_acc", "test_acc", "train_loss", "test_loss", "gap")
    },
    "table2": lambda r: {"weight_norm": r["weight_norm"] if _ok(r) else None},
    "table3": lambda r: {m.name: r[m.name] if _ok(r) else None for m in MEASURES},
    "table4": lambda r: {q: r.get(q) for q in ("gap", "test_loss", "test_accuracy", "train_loss")},
    "figure1": lambda r: {"step_size": r["step_size"]},
    "figure2": lambda r: {q: r[q] for q in ("centre_loss", "centre_accuracy", "mean_rise", "max_loss")},
}


def values_of(source: str, rows: Sequence[Mapping[str, Any]]) -> list[Value]:
    """Our results of ``source`` (a name of :data:`SOURCES`) from the rows of its summary CSV
    (:func:`qgen.summary.read_summary`)."""
    if source not in SUMMARY_QUANTITIES:
        raise QgenError(f"unknown result source {source!r}; expected one of {list(SOURCES)}")
    try:
        return _values(source, rows, SUMMARY_QUANTITIES[source])
    except KeyError as exc:
        raise QgenError(f"{source} summary: missing column {exc.args[0]!r}") from None


def diverged(source: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cells of a summary with diverged runs, e.g. ``"Table 1, Digits NiN Int2: 2 of 2 runs diverged"``,
    so that a model whose every run diverged is listed rather than silently absent."""
    title = TITLES[source].split(":")[0]
    out = []
    for row in rows:
        where = f"{title}, {row['dataset']} {row['model']} {_label(row['precision'])}"
        if row.get("n_diverged"):
            out.append(f"{where}: {row['n_diverged']} of {row['n_runs']} runs diverged")
        elif row.get("status") not in (None, "ok"):
            out.append(f"{where}: the run's status is {row['status']}")
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------------------------------------
# Claim checks: each maps values to one verdict per scope ("<dataset> <model>").

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


def _label(precision: str) -> str:
    return PRECISION_LABELS[precision]


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


# --------------------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class Note:
    """A known problem of the paper (notes.yaml), attached to tables and optionally one dataset/model."""

    text: str
    tables: tuple[str, ...] = ()
    dataset: str | None = None
    model: str | None = None

    @property
    def scoped(self) -> bool:
        """Whether the note is about one dataset and/or model rather than a whole table."""
        return self.dataset is not None or self.model is not None

    def on_table(self, source: str) -> bool:
        return source in self.tables and not self.scoped

    def on_group(self, source: str, dataset: str, model: str) -> bool:
        return (
            source in self.tables
            and self.scoped
            and self.dataset in (None, dataset)
            and self.model in (None, model)
        )


def read_notes(path: Path | str) -> list[Note]:
    entries = yaml.safe_load(Path(path).read_text())
    notes = []
    for i, entry in enumerate(entries):
        unknown = sorted(set(entry) - {"text", "tables", "dataset", "model"})
        if unknown or "text" not in entry:
            raise QgenError(f"{path}: entry {i} has unknown keys {unknown} or no 'text'")
        notes.append(
            Note(entry["text"], tuple(entry.get("tables", ())), entry.get("dataset"), entry.get("model"))
        )
    return notes


def table1_arithmetic(cells: Sequence[PaperCell]) -> list[str]:
    """Rows of the paper's Table 1 whose gap is not test loss - train loss up to the printed rounding."""
    by_row: dict[tuple[str, str, str], dict[str, PaperCell]] = {}
    for c in cells:
        if c.value.source == "table1":
            by_row.setdefault((c.value.dataset, c.value.model, c.value.precision), {})[c.value.quantity] = c
    problems = []
    for (dataset, model, precision), row in by_row.items():
        parts = [row[q] for q in ("gap", "test_loss", "train_loss")]
        tolerance = sum(0.5 * 10**-c.decimals for c in parts)
        test, train = row["test_loss"], row["train_loss"]
        computed = test.value.value - train.value.value
        if abs(computed - row["gap"].value.value) > tolerance + 1e-12:
            problems.append(
                f"Table 1, {dataset} {model} {_label(precision)}: Generalization {row['gap'].text} but "
                f"Test Loss - Train Loss = {test.text} - {train.text} = {computed:.3f}"
            )
    return problems


@dataclass
class Group:
    """The published cells of one (dataset, model) of a table, each beside ours where we have it."""

    dataset: str
    model: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> int:
        return sum(r["ours"] is not None for r in self.rows)


def _fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if math.isfinite(value) else str(value)


def compare(
    paper: Sequence[PaperCell], ours: Sequence[Value] | None, notes: Sequence[Note], source: str
) -> dict[str, Any]:
    """One table's section: groups with their compared cells, and our groups the paper lacks."""
    mine = {v.key: v for v in ours or ()}
    groups: dict[tuple[str, str], Group] = {}
    for cell in paper:
        v = cell.value
        group = groups.get((v.dataset, v.model))
        if group is None:
            group = groups[(v.dataset, v.model)] = Group(
                v.dataset, v.model, notes=[n.text for n in notes if n.on_group(source, v.dataset, v.model)]
            )
        match = mine.get(v.key)
        decimals = cell.decimals
        group.rows.append(
            {
                "precision": _label(v.precision),
                "detail": v.detail,
                "quantity": v.quantity,
                "column": cell.column,
                "unit": cell.unit,
                "paper": cell.text,
                "ours": None if match is None else _fmt(match.value, decimals),
                "difference": None if match is None else f"{match.value - v.value:+.{decimals}f}",
            }
        )
    published = {(c.value.dataset, c.value.model) for c in paper}
    extra = list(
        dict.fromkeys(f"{v.dataset} {v.model}" for v in ours or () if (v.dataset, v.model) not in published)
    )
    return {
        "source": source,
        "title": TITLES[source],
        "ran": ours is not None,
        "cells": sum(len(g.rows) for g in groups.values()),
        "reproduced": sum(g.reproduced for g in groups.values()),
        "compared": [g for g in groups.values() if g.reproduced],
        "not_run": [g for g in groups.values() if not g.reproduced],
        "extra": extra,
        "notes": [n.text for n in notes if n.on_table(source)],
    }


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


def build_context(
    paper_cells: Sequence[PaperCell],
    ours: Mapping[str, Sequence[Value] | None],
    notes: Sequence[Note],
    diverged_cells: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything the report templates show; ``diverged_cells`` from :func:`diverged`."""
    paper_by_source: dict[str, list[PaperCell]] = {}
    for cell in paper_cells:
        paper_by_source.setdefault(cell.value.source, []).append(cell)
    paper_values: dict[str, Sequence[Value] | None] = {s: None for s in SOURCES}
    paper_values |= {s: [c.value for c in cells] for s, cells in paper_by_source.items()}
    claims = claim_rows(paper_values, ours)
    verdicts = [row["ours"].status for claim in claims for row in claim["rows"]]
    counts = {status: verdicts.count(status) for status in (PASS, FAIL, NOT_RUN)}
    return {
        "claims": claims,
        "counts": counts,
        "tables": [
            compare(paper_by_source[s], ours.get(s), notes, s) for s in SOURCES if s in paper_by_source
        ],
        "figures": [
            {
                "source": s,
                "title": TITLES[s],
                "ran": ours.get(s) is not None,
                "notes": [n.text for n in notes if n.on_table(s)],
            }
            for s in SOURCES
            if s not in paper_by_source
        ],
        "inputs": {s: ours.get(s) is not None for s in SOURCES},
        "arithmetic": table1_arithmetic(paper_cells),
        "diverged": list(diverged_cells),
        "general_notes": [n.text for n in notes if not n.tables],
    }


def _md_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(template: Path | str, context: Mapping[str, Any]) -> str:
    """Fill a report template (standard jinja2 delimiters; HTML templates are autoescaped)."""
    path = Path(template)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(path.parent),
        autoescape=jinja2.select_autoescape(["html", "html.j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = _md_cell
    return env.get_template(path.name).render(**context)
