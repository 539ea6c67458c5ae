"""qgen.files: atomic writes with the umask's permissions, named write failures, safe checkpoint loading,
CSV round trips and the run lock."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from qgen import files
from qgen.errors import CorruptFileError, LockedError, QgenError

WRITERS = {
    "text": lambda p: files.write_text(p, "x"),
    "json": lambda p: files.write_json(p, {"a": 1}),
    "csv": lambda p: files.write_csv(p, [{"a": 1}]),
    "torch": lambda p: files.save_torch(p, {"t": torch.zeros(2)}),
    "npz": lambda p: files.save_npz(p, a=np.zeros(2)),
}


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.parametrize("kind", WRITERS)
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_permissions_of_the_umask(
    tmp_path: Path, umask: None, kind: str, mask: int, mode: int
) -> None:
    """Issue 10: tempfile.mkstemp made every result, summary and table mode 600 (unreadable to others)."""
    os.umask(mask)
    path = tmp_path / f"out.{kind}"
    WRITERS[kind](path)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_failed_write_names_the_file_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    target = tmp_path / "results" / "model.pt"
    with pytest.raises(QgenError, match=f"cannot write {target}: No space left on device; free some space"):
        files.save_torch(target, {})
    assert list(target.parent.iterdir()) == []


def test_an_unwritable_directory_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(QgenError, match=f"cannot write {blocker}/x.json"):
        files.write_json(blocker / "x.json", {})


class Opaque:
    """An object torch.load would have to import and run code for."""


def test_checkpoints_load_without_running_code(tmp_path: Path) -> None:
    good, evil = tmp_path / "good.pt", tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 3, "history": [{"loss": 0.5}]}, good)
    assert files.load_torch(good, "remedy")["epoch"] == 3
    torch.save({"state_dict": {}, "payload": Opaque()}, evil)
    with pytest.raises(CorruptFileError, match=f"{evil} cannot be read as a checkpoint .*; delete it"):
        files.load_torch(evil, "delete it")


@pytest.mark.parametrize("size", [0, 100, 5000])
def test_a_truncated_checkpoint_is_named_with_its_remedy(tmp_path: Path, size: int) -> None:
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.randn(1000)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:size])
    with pytest.raises(CorruptFileError, match=f"{cut} cannot be read as a checkpoint.*; retrain it"):
        files.load_torch(cut, "retrain it")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'none.pt'} does not exist; retrain it"):
        files.load_torch(tmp_path / "none.pt", "retrain it")


def test_truncated_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text('{"spec": {"a": ')
    with pytest.raises(CorruptFileError, match=f"{path} is not valid JSON"):
        files.read_json(path)


def test_csv_round_trips_awkward_strings(tmp_path: Path) -> None:
    records = [
        {"label": 'NiN "4x10", wide', "value": 0.1 + 0.2, "n": 3, "flag": True, "none": None},
        {"label": "line\nbreak; and a,comma", "value": -1e-300, "n": -7, "flag": False, "none": None},
    ]
    files.write_csv(tmp_path / "t.csv", records)
    assert files.read_csv(tmp_path / "t.csv") == records
    with pytest.raises(QgenError, match="no rows to write"):
        files.write_csv(tmp_path / "empty.csv", [])


def test_the_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    with files.exclusive_lock(tmp_path, "run a"):
        assert f"pid {os.getpid()} on" in (tmp_path / "lock").read_text()
        holder = f"run a is locked by pid {os.getpid()} on .* since"
        with pytest.raises(LockedError, match=holder), files.exclusive_lock(tmp_path, "run a"):
            pass
    with files.exclusive_lock(tmp_path, "run a"):
        pass
