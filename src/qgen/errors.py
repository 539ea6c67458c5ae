"""The errors qgen expects: bad input, stale or foreign results, unreadable files.

Each is a :class:`QgenError`, whose message names the file, key or value at fault and the remedy; the
``qgen`` command prints it as one line and exits with status 1. Any other exception is a bug and keeps
its traceback. ``QgenError`` derives from ``ValueError``, so callers that catch bad values catch it too.
This module imports nothing, so the DAG can raise these errors without importing torch.
"""

from __future__ import annotations


class QgenError(ValueError):
    """An expected failure whose message says what is wrong and how to put it right."""


class ProvenanceError(QgenError):
    """A result file was made from something other than what the configuration now asks for."""


class CorruptFileError(QgenError):
    """A checkpoint or result file cannot be read (truncated, not the expected format)."""


class MissingColumnError(QgenError):
    """A summary lacks a column this qgen reads: it was written by an older qgen and is rebuilt."""

    def __init__(self, source: str, column: str) -> None:
        super().__init__(
            f"{source}: missing column {column!r} (written by an older qgen?); rebuild it with "
            "`snakemake --forcerun summarize <target>`"
        )


class LockedError(QgenError):
    """Another process holds the lock of a run's checkpoint directory."""


class UnknownNameError(QgenError, KeyError):
    """A name (model, dataset, table, ...) that is not registered; also a ``KeyError`` for lookups."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
