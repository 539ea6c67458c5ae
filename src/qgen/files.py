"""Writing and reading files safely: atomic writes, named failures, checkpoints, and run locks.

* A reader never sees a half-written result, checkpoint or table: every write goes to a temporary file
  beside the target, is flushed to disk and renamed onto it. The file gets the permissions any new file
  of this process would (``0666`` less the umask), so collaborators on a shared filesystem can read it.
* A failed write (a full disk, a read-only directory) is a :class:`~qgen.errors.QgenError` naming the
  file, and leaves nothing behind.
* Checkpoints are read with ``torch.load(weights_only=True)``: no code runs when a file is loaded, and
  a truncated or foreign file is a :class:`~qgen.errors.CorruptFileError` naming it and the remedy.
* :func:`exclusive_lock` lets one process at a time own a directory (``fcntl.flock``), and says who holds
  it when another tries.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from qgen.errors import CorruptFileError, LockedError, QgenError


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (``os.replace``).

    The file ends with mode ``0666 & ~umask`` (``mkstemp`` would leave it ``0600``). An ``OSError`` while
    writing or renaming becomes a :class:`~qgen.errors.QgenError` naming ``path``; the temporary file is
    removed either way.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as error:
        raise QgenError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except OSError as error:
        hint = "; free some space and rerun" if error.errno == errno.ENOSPC else ""
        raise QgenError(f"cannot write {path}: {error.strerror or error}{hint}") from error
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
    """The JSON document in ``path``; a truncated or non-JSON file is a named error."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as error:
        raise CorruptFileError(
            f"{path} is not valid JSON ({error}); delete it and rebuild it (snakemake --force {path})"
        ) from error


def write_csv(path: Path | str, records: Sequence[Mapping[str, Any]]) -> None:
    """Write ``records`` as CSV with the :mod:`csv` module (``None`` as an empty cell, floats by ``repr``,
    so they read back exactly); the header is the first record's keys. No rows is an error."""
    if not records:
        raise QgenError(f"{path}: no rows to write; do the summary's runs exist in the config?")
    header = list(records[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for record in records:
        writer.writerow([_csv_cell(record[key]) for key in header])
    write_text(path, buffer.getvalue())


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def read_csv(path: Path | str) -> list[dict[str, Any]]:
    """Read a CSV of :func:`write_csv` back: numeric cells as numbers, ``True``/``False`` as booleans and
    empty cells as ``None``; every other cell stays a string."""
    with open(path, newline="") as fh:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _parse(text: str) -> Any:
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def copy_file(source: Path | str, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def save_torch(path: Path | str, obj: Any) -> None:
    import torch

    _write(path, "wb", lambda fh: torch.save(obj, fh))


def load_torch(path: Path | str, remedy: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; an unreadable file is a named error.

    ``remedy`` says what to do about a truncated or foreign file (e.g. "delete it and rerun the
    training"); it ends the message of the :class:`~qgen.errors.CorruptFileError`.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {remedy}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a bad file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CorruptFileError(f"{path} cannot be read as a checkpoint ({reason}); {remedy}") from error


def save_npz(path: Path | str, **arrays: Any) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` archive (the name of ``path`` is kept as given)."""
    import numpy as np

    _write(path, "wb", lambda fh: np.savez(fh, **arrays))


@contextlib.contextmanager
def exclusive_lock(directory: Path, what: str) -> Iterator[None]:
    """Hold ``directory/lock`` exclusively (``fcntl.flock``) for the duration of the block.

    Another holder makes this raise :class:`~qgen.errors.LockedError` at once, naming the holder's pid,
    host and start time (written into the lock file) and ``what`` is locked. The lock is released when the
    block ends or the process dies, so a killed holder never leaves a stale lock. ``flock`` locks are not
    reliable on every network filesystem (NFS before v4 emulates them per host).
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "an unknown process"
            raise LockedError(
                f"{what} is locked by {holder} ({path}); another process is working on it: wait for it "
                "to finish or stop it"
            ) from None
        fh.seek(0)
        fh.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
