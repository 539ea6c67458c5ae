"""Published cells beside ours: per table, its (dataset, model) groups with each paper cell, our value
where we have one and the difference, plus our groups the paper lacks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from qgen.report.paper import Note, PaperCell
from qgen.report.values import Value, title
from qgen.vocab import PRECISION_LABELS


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
                "precision": PRECISION_LABELS[v.precision],
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
        "title": title(source),
        "ran": ours is not None,
        "cells": sum(len(g.rows) for g in groups.values()),
        "reproduced": sum(g.reproduced for g in groups.values()),
        "compared": [g for g in groups.values() if g.reproduced],
        "not_run": [g for g in groups.values() if not g.reproduced],
        "extra": extra,
        "notes": [n.text for n in notes if n.on_table(source)],
    }
