"""Checking a workflow config before any job runs: the schema, then everything the schema cannot say.

:func:`check_config` validates against ``workflow/schemas/config.schema.yaml`` and reports each problem
in one line, as ``<key path>: <what is wrong>`` (``experiments[0].grid.model: 'widht' is not an
argument of model 'nin'; it takes depth, width, base_width``), naming the config files the workflow
merged, instead of jsonschema's dump of the whole schema and instance. Beyond the schema it expands
every run (unique experiment names, model arguments against :data:`qgen.vocab.MODEL_ARGUMENTS`) and
every configured table and figure (each row's ``where`` must match, and pick one grid point where the
summary shows one model). Torch-free, so that the Snakefile can call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from qgen.errors import QgenError
from qgen.experiments import expand_runs, summary_config, summary_rows, summary_rows_config
from qgen.vocab import SUMMARIES

MAX_SHOWN = 200
"""Characters of an offending value shown in a message."""


def key_path(parts: Iterable[Any]) -> str:
    """``experiments[0].grid.model`` from jsonschema's ``absolute_path`` (``["experiments", 0, ...]``)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _message(error: jsonschema.ValidationError) -> str:
    """The deepest, most specific message of ``error`` (for ``oneOf``/``anyOf``, the best sub-error's)."""
    if error.context:
        best = jsonschema.exceptions.best_match(error.context)
        if best is not None:
            error = best
    text = error.message
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + " ..."


def schema_problems(config: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """One ``<key path>: <message>`` line per schema violation, in key order."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{key_path(e.absolute_path)}: {_message(e)}" for e in errors]


def configured_summaries(config: Mapping[str, Any]) -> list[str]:
    """The tables and figures the config asks for (those with rows), in vocabulary order."""
    return [name for name in SUMMARIES if summary_rows_config(config, name)]


def check_config(config: Mapping[str, Any], schema_path: Path | str, sources: Sequence[str]) -> None:
    """Raise one :class:`~qgen.errors.QgenError` listing every problem of ``config``, or return.

    ``sources`` are the config files it was merged from, named in the message.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    where = f"the config ({' + '.join(map(str, sources)) or 'given on the command line'})"
    problems = schema_problems(config, schema)
    if not problems:
        try:
            expand_runs(config)
        except QgenError as error:
            problems.append(str(error))
    if not problems:
        for name in configured_summaries(config):
            try:
                summary_rows(summary_config(config, name))
            except QgenError as error:
                problems.append(f"{'.'.join(SUMMARIES[name].rows)}: {error}")
    if problems:
        shown = "\n  ".join(problems)
        raise QgenError(f"{where} is invalid:\n  {shown}")
