"""The report itself: everything its templates show (:func:`build_context`), filled into Markdown and
HTML templates (:func:`render`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from qgen.report.claims import COVERAGE, NOT_RUN, STATUSES, claim_rows, rule
from qgen.report.compare import compare
from qgen.report.paper import Note, PaperCell, table1_arithmetic
from qgen.report.values import SOURCES, UNCERTAINTY, Value, title


def build_context(
    paper_cells: Sequence[PaperCell],
    ours: Mapping[str, Sequence[Value] | None],
    notes: Sequence[Note],
    diverged_cells: Sequence[str] = (),
    coverage: float = COVERAGE,
) -> dict[str, Any]:
    """Everything the report templates show; ``diverged_cells`` from :func:`qgen.report.values.diverged`,
    ``coverage`` the factor ``k`` of the claims' rule (:mod:`qgen.report.claims`)."""
    paper_by_source: dict[str, list[PaperCell]] = {}
    for cell in paper_cells:
        paper_by_source.setdefault(cell.value.source, []).append(cell)
    paper_values: dict[str, Sequence[Value] | None] = {s: None for s in SOURCES}
    paper_values |= {s: [c.value for c in cells] for s, cells in paper_by_source.items()}
    claims = claim_rows(paper_values, ours, coverage)
    verdicts = [row["ours"].status for claim in claims for row in claim["rows"]]
    return {
        "claims": claims,
        "counts": {status: verdicts.count(status) for status in STATUSES},
        "coverage": coverage,
        "rule": rule(coverage),
        "uncertainty": [
            {"title": title(s), "basis": UNCERTAINTY[s], "ran": ours.get(s) is not None} for s in SOURCES
        ],
        "tables": [
            compare(paper_by_source[s], ours.get(s), notes, s) for s in SOURCES if s in paper_by_source
        ],
        "unpublished": [
            {
                "source": s,
                "title": title(s),
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
        "not_run": NOT_RUN,
    }


def _md_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


_INLINE = (
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"\*([^*\s][^*]*)\*"), r"<em>\1</em>"),
)
"""The inline Markdown our own texts use (notes.yaml, the rule) and its HTML."""


def _html_inline(text: Any) -> markupsafe.Markup:
    """``text`` escaped, with its inline Markdown (:data:`_INLINE`) as HTML."""
    html = str(markupsafe.escape(text))
    for pattern, replacement in _INLINE:
        html = pattern.sub(replacement, html)
    return markupsafe.Markup(html)


def render(template: Path | str, context: Mapping[str, Any]) -> str:
    """Fill a report template (standard jinja2 delimiters; HTML templates are autoescaped and turn the
    texts' inline Markdown into HTML with the ``inline`` filter)."""
    path = Path(template)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(path.parent),
        autoescape=jinja2.select_autoescape(["html", "html.j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters |= {"md": _md_cell, "inline": _html_inline}
    return env.get_template(path.name).render(**context)
