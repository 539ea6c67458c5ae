"""The official CIFAR-10-C, CIFAR-100-C and ImageNet-C files: download, verify, extract safely, check.

Records and checksums: the Zenodo records of hendrycks/robustness's README; SHA-256 of the CIFAR tars
from tensorflow-datasets' url_checksums, MD5 of the ImageNet-C tars from the same README's mirrors.

:func:`prepare_official` is idempotent: a root whose layout is already complete (a user's own copy) is
only checked, nothing is downloaded. Otherwise each missing archive is streamed to ``<file>.part``
(resumed with an HTTP range request when a ``.part`` exists, restarted when the server ignores the
range), checksummed (a mismatch deletes the file and names the expected checksum), renamed, extracted
with every member checked (no absolute paths, no ``..``, no links out: tarfile's ``data`` filter) and
deleted once the extracted layout checks out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from qgen.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, GROUPS
from qgen.corruptions.layout import LABELS_FILE, folder_problems, npy_problems

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_S = 30.0
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Archive:
    """One official tar: where it is, its checksum, and the benchmark corruptions it holds."""

    url: str
    algorithm: str  # "sha256" or "md5"
    checksum: str
    corruptions: tuple[str, ...]

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url).name


def _zenodo(record: int, filename: str) -> str:
    return f"https://zenodo.org/record/{record}/files/{filename}"


ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "cifar10": (
        Archive(
            _zenodo(2535967, "CIFAR-10-C.tar"),
            "sha256",
            "c72763e101c723b7c507b96205f7e938912a5d587376173b825850cf3cb876a7",
            CORRUPTIONS,
        ),
    ),
    "cifar100": (
        Archive(
            _zenodo(3555552, "CIFAR-100-C.tar"),
            "sha256",
            "30ee6543a1bfd049fa33834b7c1ada301e7064b7fbe8fc38340eb8b62ced4b33",
            CORRUPTIONS,
        ),
    ),
    "imagenet": tuple(
        Archive(_zenodo(2235448, f"{group}.tar"), "md5", md5, GROUPS[group])
        for group, md5 in (
            ("noise", "e80562d7f6c3f8834afb1ecf27252745"),
            ("blur", "2d8e81fdd8e07fef67b9334fa635e45c"),
            ("weather", "33ffea4db4d93fe4a428c40a6ce0c25d"),
            ("digital", "89157860d7b10d5797849337ca2e5c03"),
        )
    ),
}
# What may appear at the top of the extracted layout (a member's first known component onwards).
_KNOWN = frozenset((*CORRUPTIONS, *EXTRA_CORRUPTIONS, PurePosixPath(LABELS_FILE).stem))


def file_checksum(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _stream(url: str, part: Path) -> None:
    """Append the rest of ``url`` to ``part`` (resuming after its current size), or restart it."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the range starts at the end: the partial file is complete
            return
        raise RuntimeError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise RuntimeError(f"downloading {url} failed: {exc.reason}") from None
    with response:
        resumed = offset > 0 and getattr(response, "status", None) == 206
        if offset and not resumed:
            log.info("%s: the server ignored the range request; restarting the download", url)
        length = response.headers.get("Content-Length")
        total = (offset if resumed else 0) + int(length) if length else None
        with part.open("ab" if resumed else "wb") as fh:
            written, last = fh.tell(), time.perf_counter()
            while block := response.read(CHUNK_BYTES):
                fh.write(block)
                written += len(block)
                if time.perf_counter() - last > PROGRESS_EVERY_S:
                    last = time.perf_counter()
                    log.info(
                        "%s: %.1f / %s MB", part.name, written / 1e6, f"{total / 1e6:.1f}" if total else "?"
                    )


def fetch(archive: Archive, dest: Path) -> Path:
    """Download ``archive`` to ``dest`` through ``dest.part`` and verify it; returns ``dest``.

    A checksum mismatch deletes the downloaded file and raises ``ValueError`` naming the expected checksum,
    so the next attempt starts afresh.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if not dest.exists():
        log.info("downloading %s to %s", archive.url, dest)
        _stream(archive.url, part)
        os.replace(part, dest)
    actual = file_checksum(dest, archive.algorithm)
    if actual != archive.checksum:
        dest.unlink()
        raise ValueError(
            f"{dest} (from {archive.url}) failed verification: expected {archive.algorithm} "
            f"{archive.checksum}, got {actual}; the file was deleted, rerun to download it again"
        )
    return dest


def _layout_member(member: tarfile.TarInfo, archive: Path) -> str | None:
    """The member's path inside the layout root, or ``None`` for members outside the layout.

    Leading folders such as ``CIFAR-100-C/`` or an ImageNet-C group folder are dropped, so members land
    as ``<name>.npy`` or ``<name>/<severity>/...``. Absolute names and ``..`` are refused.
    """
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts:
        raise ValueError(f"{archive}: refusing to extract member {name!r} (absolute path or '..')")
    parts = path.parts
    for i, part in enumerate(parts):
        if PurePosixPath(part).stem in _KNOWN:
            return str(PurePosixPath(*parts[i:]))
    return None


def safe_extract(archive: Path, root: Path) -> None:
    """Extract the layout members of tar ``archive`` under ``root`` (see :func:`_layout_member`)."""
    root.mkdir(parents=True, exist_ok=True)

    def keep(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        target = _layout_member(member, archive)
        if target is None:
            if member.isfile():
                log.warning("%s: skipping %s (not part of the -C layout)", archive, member.name)
            return None
        try:
            return tarfile.data_filter(member.replace(name=target, deep=False), dest)
        except tarfile.FilterError as exc:
            raise ValueError(f"{archive}: refusing to extract member {member.name!r}: {exc}") from None

    log.info("extracting %s into %s", archive, root)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            _layout_member(member, archive)  # refuse a bad archive before writing anything
        tar.extractall(root, filter=keep)


def official_problems(dataset: str, root: Path, corruptions: tuple[str, ...], num_classes: int) -> list[str]:
    """Why ``root`` does not hold the official layout of ``dataset`` for ``corruptions``."""
    if dataset == "imagenet":
        return folder_problems(root, num_classes, corruptions)
    return npy_problems(root, corruptions)


def prepare_official(dataset: str, root: Path, *, num_classes: int, download: bool = True) -> None:
    """Make the official -C files of ``dataset`` ready under ``root``: check, else download and extract."""
    if dataset not in ARCHIVES:
        raise ValueError(
            f"no official corrupted version of {dataset!r}; known: {sorted(ARCHIVES)} (generate one)"
        )
    for archive in ARCHIVES[dataset]:
        problems = official_problems(dataset, root, archive.corruptions, num_classes)
        if not problems:
            log.info("%s: %s already complete under %s", dataset, archive.filename, root)
            continue
        if not download:
            raise FileNotFoundError(f"{root} is incomplete ({problems[0]}) and downloading is disabled")
        path = fetch(archive, root / "archives" / archive.filename)
        safe_extract(path, root)
        problems = official_problems(dataset, root, archive.corruptions, num_classes)
        if problems:
            raise ValueError(f"{path} extracted, but {root} is still incomplete: {'; '.join(problems[:3])}")
        path.unlink()
    shutil.rmtree(root / "archives", ignore_errors=True)
