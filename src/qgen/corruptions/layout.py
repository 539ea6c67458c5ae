"""The two official on-disk layouts of corrupted test sets, their checks and the array reader.

* ``"npy"`` (CIFAR-10-C / CIFAR-100-C, and generated 32x32 sets): ``<root>/<name>.npy`` of shape
  ``(5 N, H, W, 3)`` uint8 holding severities 1..5 in consecutive blocks of ``N`` images, and
  ``<root>/labels.npy`` of shape ``(5 N,)`` (the test labels tiled five times).
* ``"folder"`` (ImageNet-C, and generated ImageNet-size sets): ``<root>/<name>/<severity>/<class>/*.JPEG``
  with the same class folders as the clean ``val/`` split.

Only the standard library and numpy are imported, so generation workers start fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qgen.corruptions import CORRUPTIONS, SEVERITIES

LAYOUTS = ("npy", "folder")
LABELS_FILE = "labels.npy"
MANIFEST = "manifest.json"  # written last by `qgen corrupt`; absent from the official files


def layout_for_size(image_size: int) -> str:
    """32x32 sets use the CIFAR-C array layout, larger images the ImageNet-C folder layout."""
    return "npy" if image_size == 32 else "folder"


def npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, checking that the file holds all the data it declares."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    with path.open("rb") as fh:
        try:
            major, _ = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fh)
        except ValueError as exc:
            raise ValueError(f"{path} is not a valid .npy file: {exc}") from None
        offset = fh.tell()
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected or fortran:
        raise ValueError(
            f"{path} is truncated or corrupt: its header declares {dtype} {shape} ({expected} bytes), "
            f"the file has {actual} bytes"
        )
    return shape, dtype


def npy_problems(root: Path, corruptions: tuple[str, ...] = CORRUPTIONS) -> list[str]:
    """Why ``root`` is not a complete ``npy`` layout for ``corruptions``; empty when it is."""
    try:
        (total,), _ = npy_shape(root / LABELS_FILE)
    except (FileNotFoundError, ValueError) as exc:
        return [str(exc)]
    problems = []
    if total % len(SEVERITIES):
        problems.append(f"{root / LABELS_FILE} holds {total} labels, not a multiple of {len(SEVERITIES)}")
    for name in corruptions:
        path = root / f"{name}.npy"
        try:
            shape, dtype = npy_shape(path)
        except (FileNotFoundError, ValueError) as exc:
            problems.append(str(exc))
            continue
        if dtype != np.uint8 or len(shape) != 4 or shape[0] != total or shape[3] != 3:
            problems.append(f"{path}: expected uint8 of shape ({total}, H, W, 3), got {dtype} {shape}")
    return problems


def folder_problems(root: Path, num_classes: int, corruptions: tuple[str, ...] = CORRUPTIONS) -> list[str]:
    """Why ``root`` is not a complete ``folder`` layout; each severity must hold ``num_classes`` folders."""
    problems = []
    for name in corruptions:
        for severity in SEVERITIES:
            split = root / name / str(severity)
            if not split.is_dir():
                problems.append(f"{split} is missing")
                continue
            classes = sum(1 for entry in split.iterdir() if entry.is_dir())
            if classes != num_classes:
                problems.append(f"{split} holds {classes} class folders, expected {num_classes}")
    return problems


def read_npy_split(root: Path, name: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, H, W, 3)`` uint8 and int64 labels of one corruption at one severity."""
    problems = npy_problems(root, (name,))
    if problems:
        raise ValueError("; ".join(problems))
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    labels = np.load(root / LABELS_FILE, mmap_mode="r")
    n = len(labels) // len(SEVERITIES)
    block = slice((severity - 1) * n, severity * n)
    images = np.load(root / f"{name}.npy", mmap_mode="r")[block]
    return np.array(images), np.asarray(labels[block], dtype=np.int64)
