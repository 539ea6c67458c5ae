"""``qgen corrupt``: -C style test sets (15 corruptions x 5 severities) for any dataset, in parallel.

Output is in the official layouts (:mod:`qgen.corruptions.layout`) plus a ``manifest.json`` written last,
which marks a finished set and records that it is *generated* ("-C style"), not the official files.

Work is cut into tasks of :data:`CHUNK` consecutive images of one corruption; each (task, severity) draws
from its own generator seeded with ``(seed, corruption name, severity, first image)``, so the output is
byte-identical for a given seed whatever the number of worker processes, and registering another
corruption changes no other corruption's output. Workers write straight into
the output arrays (memory-mapped) or files; the parent only schedules and logs progress.

This module imports no torch: spawned workers start in about a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from qgen import __version__
from qgen.corruptions import CORRUPTIONS, SEVERITIES
from qgen.corruptions.layout import LABELS_FILE, MANIFEST
from qgen.corruptions.transforms import corrupt

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHUNK = 128  # images per task; part of the seeding, so changing it changes the output
JPEG_QUALITY = 85  # ImageNet-C's files: quality 85, optimized
PROGRESS_EVERY_S = 5.0


def name_key(corruption: str) -> int:
    """A corruption's seed word: the first 8 bytes (big-endian) of the SHA-256 of its UTF-8 name."""
    return int.from_bytes(hashlib.sha256(corruption.encode()).digest()[:8], "big")


def task_rng(seed: int, corruption: str, severity: int, start: int) -> np.random.Generator:
    """The generator of images ``start .. start + CHUNK - 1`` of ``corruption`` at ``severity``."""
    return np.random.default_rng([seed, name_key(corruption), severity, start])


@dataclass(frozen=True)
class _NpyTask:
    """Corrupt source images ``start:stop`` into every severity block of ``target``."""

    source: Path
    target: Path
    corruption: str
    start: int
    stop: int
    seed: int
    profile: str

    def __call__(self) -> int:
        images = np.load(self.source, mmap_mode="r")
        out = np.load(self.target, mmap_mode="r+")
        n = len(images)
        for severity in SEVERITIES:
            rng = task_rng(self.seed, self.corruption, severity, self.start)
            offset = (severity - 1) * n
            for i in range(self.start, self.stop):
                out[offset + i] = corrupt(images[i], self.corruption, severity, rng, self.profile)
        out.flush()
        return (self.stop - self.start) * len(SEVERITIES)


@dataclass(frozen=True)
class _FolderTask:
    """Corrupt the listed images (resized and centre-cropped) into ``<out>/<name>/<severity>/<class>/``."""

    files: tuple[tuple[str, str], ...]  # (source image path, class folder name)
    out: Path
    corruption: str
    start: int
    seed: int
    profile: str
    resize: int
    crop: int

    def __call__(self) -> int:
        images = [center_crop(path, self.resize, self.crop) for path, _ in self.files]
        for severity in SEVERITIES:
            rng = task_rng(self.seed, self.corruption, severity, self.start)
            for (path, label), image in zip(self.files, images, strict=True):
                target = self.out / self.corruption / str(severity) / label / f"{Path(path).stem}.JPEG"
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{target.name}.tmp")
                corrupted = corrupt(image, self.corruption, severity, rng, self.profile)
                Image.fromarray(corrupted).save(partial, "JPEG", quality=JPEG_QUALITY, optimize=True)
                os.replace(partial, target)
        return len(self.files) * len(SEVERITIES)


def center_crop(path: str, resize: int, crop: int) -> np.ndarray:
    """torchvision's ``Resize(resize)`` (shorter side, bilinear) then ``CenterCrop(crop)``, as uint8 RGB."""
    with Image.open(path) as source:
        image = source.convert("RGB")
    w, h = image.size
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.resize(size, Image.BILINEAR)
    w, h = image.size
    top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)
    return np.asarray(image.crop((left, top, left + crop, top + crop)))


def _run(tasks: Sequence[Callable[[], int]], total: int, workers: int, what: str) -> None:
    """Run ``tasks`` on ``workers`` processes (in-process for one), logging progress every few seconds."""
    done, started = 0, time.perf_counter()
    last = started

    def progress(count: int) -> None:
        nonlocal done, last
        done += count
        now = time.perf_counter()
        if now - last >= PROGRESS_EVERY_S or done == total:
            last = now
            rate = done / max(now - started, 1e-9)
            eta = (total - done) / max(rate, 1e-9)
            log.info(
                "%s: %d/%d images (%.0f%%), %.0f img/s, %.0f s left",
                what,
                done,
                total,
                100 * done / total,
                rate,
                eta,
            )

    if workers <= 1:
        for task in tasks:
            progress(task())
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for future in as_completed([pool.submit(task) for task in tasks]):
            progress(future.result())


def _chunks(n: int) -> Iterable[tuple[int, int]]:
    for start in range(0, n, CHUNK):
        yield start, min(start + CHUNK, n)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def manifest(
    dataset: str, layout: str, seed: int, profile: str, n: int, corruptions: Sequence[str]
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "source": "generated",
        "note": "-C style data generated by qgen, not the official Hendrycks & Dietterich files",
        "dataset": dataset,
        "layout": layout,
        "seed": seed,
        "profile": profile,
        "images_per_severity": n,
        "corruptions": list(corruptions),
        "severities": list(SEVERITIES),
        "chunk": CHUNK,
        "qgen": __version__,
    }


def generate_npy(
    images: np.ndarray,
    labels: np.ndarray,
    out: Path,
    *,
    dataset: str,
    seed: int,
    profile: str,
    workers: int = 2,
    corruptions: Sequence[str] = CORRUPTIONS,
) -> dict[str, Any]:
    """Write the CIFAR-C layout for uint8 ``images`` ``(N, H, W, 3)`` and their labels under ``out``."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or len(images) != len(labels):
        raise ValueError(
            f"expected uint8 images (N, H, W, 3) and as many labels, got {images.dtype} {images.shape} "
            f"and {len(labels)} labels"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    n = len(images)
    source = out / ".source.npy"
    np.save(source, images)
    partial = {name: out / f".{name}.partial.npy" for name in corruptions}
    for path in partial.values():
        np.lib.format.open_memmap(
            path, mode="w+", dtype=np.uint8, shape=(len(SEVERITIES) * n, *images.shape[1:])
        )
    tasks = [
        _NpyTask(source, partial[name], name, start, stop, seed, profile)
        for name in corruptions
        for start, stop in _chunks(n)
    ]
    _run(tasks, len(corruptions) * len(SEVERITIES) * n, workers, f"corrupt {dataset}")
    for name, path in partial.items():
        os.replace(path, out / f"{name}.npy")
    label_type = np.uint8 if labels.max(initial=0) < 256 else np.int64
    np.save(out / LABELS_FILE, np.tile(labels.astype(label_type), len(SEVERITIES)))
    source.unlink()
    record = manifest(dataset, "npy", seed, profile, n, corruptions)
    _write_json(out / MANIFEST, record)
    return record


def generate_folder(
    files: Sequence[tuple[str, str]],
    out: Path,
    *,
    dataset: str,
    seed: int,
    profile: str,
    crop: int,
    workers: int = 2,
    corruptions: Sequence[str] = CORRUPTIONS,
) -> dict[str, Any]:
    """Write the ImageNet-C layout for ``files`` (``(image path, class folder)``, e.g. ImageNet val).

    Each image is resized to ``crop / 0.875`` (256 for 224) and centre-cropped to ``crop``, as ImageNet-C
    was made, then corrupted and saved as JPEG quality 85.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    resize = math.floor(crop / 0.875)
    ordered = tuple(sorted(files))
    tasks = [
        _FolderTask(ordered[start:stop], out, name, start, seed, profile, resize, crop)
        for name in corruptions
        for start, stop in _chunks(len(ordered))
    ]
    _run(tasks, len(corruptions) * len(SEVERITIES) * len(ordered), workers, f"corrupt {dataset}")
    record = manifest(dataset, "folder", seed, profile, len(ordered), corruptions)
    _write_json(out / MANIFEST, record)
    return record
