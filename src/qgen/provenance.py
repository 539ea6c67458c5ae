"""What a result file was made from, checked against what the configuration now asks for.

Every file made from a training run records the run's spec and :attr:`~qgen.experiments.RunSpec.digest`
(``metrics.json``, ``model.pt``, ``init.pt``, ``measures.json``, ``corruptions.csv``, landscape ``.npz``);
files made with settings (measures, surfaces, corrupted data) record those settings too; summaries record
the digest of the table configuration they summarise. A consumer is given what the config expects and
calls :func:`require_same` before it uses a file: a mismatch is a
:class:`~qgen.errors.ProvenanceError` naming the file, the keys that differ (recorded and configured
value) and the command that rebuilds it. Nothing is ever resumed, reused or rendered from a file that
is not exactly what the config asks for. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qgen.errors import ProvenanceError

_ABSENT = object()


def differences(recorded: Any, expected: Any, prefix: str = "") -> list[str]:
    """``key: recorded -> configured`` for every leaf where two JSON-like values differ (dotted keys)."""
    if isinstance(recorded, Mapping) and isinstance(expected, Mapping):
        out = []
        for key in sorted(set(recorded) | set(expected), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            out += differences(recorded.get(key, _ABSENT), expected.get(key, _ABSENT), name)
        return out
    if (recorded == expected and type(recorded) is type(expected)) or _same_number(recorded, expected):
        return []
    shown = {id(_ABSENT): "(absent)"}
    return [
        f"{prefix or 'value'}: {shown.get(id(recorded), repr(recorded))} in the file, "
        f"{shown.get(id(expected), repr(expected))} in the config"
    ]


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ) and a == b


def rebuild_hint(path: Path | str) -> str:
    return f"rebuild it with `snakemake --force {path}` (and your usual --profile)"


def require_same(
    path: Path | str, what: str, recorded: Any, expected: Any, rebuild: str | None = None
) -> None:
    """Raise :class:`~qgen.errors.ProvenanceError` unless ``recorded`` (read from ``path``) equals
    ``expected`` (from the config); ``what`` names the thing compared, e.g. "run spec"."""
    diffs = differences(recorded, expected)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ProvenanceError(
            f"{path} was made from another {what} than the config asks for ({shown}); "
            f"{rebuild or rebuild_hint(path)}"
        )


def require_digest(path: Path | str, what: str, recorded: str | None, expected: str) -> None:
    """Like :func:`require_same` for a recorded digest, when only digests are at hand."""
    if recorded != expected:
        raise ProvenanceError(
            f"{path} was made from another {what} than the config asks for (digest {recorded or '(none)'} "
            f"in the file, {expected} for the config); {rebuild_hint(path)}"
        )
