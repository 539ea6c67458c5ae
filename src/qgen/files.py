"""Atomic file writes: a reader never sees a half-written result, checkpoint or table."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write(path: Path | str, mode: str, writer: Callable[[IO[Any]], None]) -> None:
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        writer(fh)
        fh.flush()
        os.fsync(fh.fileno())


def write_text(path: Path | str, text: str) -> None:
    _write(path, "w", lambda fh: fh.write(text))


def write_json(path: Path | str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path | str) -> Any:
    with open(path) as fh:
        return json.load(fh)


def copy_file(source: Path | str, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def save_torch(path: Path | str, obj: Any) -> None:
    _write(path, "wb", lambda fh: torch.save(obj, fh))


def save_npz(path: Path | str, **arrays: Any) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` archive (the name of ``path`` is kept as given)."""
    _write(path, "wb", lambda fh: np.savez(fh, **arrays))
