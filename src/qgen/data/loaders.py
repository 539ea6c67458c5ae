"""Batch loaders whose batch order and augmentation are a pure function of ``(seed, epoch)``.

:class:`ArrayLoader` holds a whole split on the device as uint8 and augments whole batches;
:class:`FolderLoader` reads an image folder through a ``DataLoader`` with per-sample seeded transforms.
Both skip the first ``start`` batches of an epoch without computing them, so a run resumes bit-identically
from inside an epoch, and both cut every global batch into the slices of data-parallel processes
(:class:`Batching`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from qgen.data.augment import CROP_PADDING, crop_flip, draw_crop_flip, normalize
from qgen.errors import QgenError

ARRAY_AUGMENTATIONS = ("none", "crop", "crop_flip")
"""The training augmentations of :data:`qgen.vocab.AUGMENTATIONS` an :class:`ArrayLoader` implements."""


class BatchLoader(Protocol):
    """An epoch-seeded iterable of ``(images, labels)`` batches on one device."""

    num_samples: int

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch whose order and augmentation the next ``iter()`` reproduces, from ``start``."""
        ...

    def __len__(self) -> int:
        """Batches per epoch."""
        ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalized float32 NCHW images and int64 labels, both on the loader's device."""
        ...


def mix_seed(*values: int) -> int:
    """A well-mixed 64-bit seed from non-negative integers, e.g. ``(seed, epoch)``."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, dtype=np.uint64)[0])


def subset_indices(total: int, subset: int | None, seed: int, *, where: str) -> Tensor | None:
    """Sorted indices of a fixed ``subset``-sized sample of ``total`` items drawn with ``seed``.

    ``None`` when ``subset`` is ``None`` (use everything). ``where`` names the split in error messages.
    """
    if subset is None:
        return None
    if not 0 < subset <= total:
        raise QgenError(f"subset={subset} for {where}, which has {total} samples; expected 1..{total}")
    chosen = np.random.default_rng(seed).permutation(total)[:subset]
    return torch.from_numpy(np.sort(chosen))


@dataclass(frozen=True)
class Batching:
    """How a split is cut into batches, and where they go.

    ``batch_size`` is the global batch; process ``rank`` of ``world`` receives its ``rank``-th contiguous
    slice (``batch_size / world`` items of a full batch).
    """

    batch_size: int
    shuffle: bool
    seed: int
    drop_last: bool
    device: torch.device
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise QgenError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise QgenError(f"seed must be >= 0, got {self.seed}")
        if not 0 <= self.rank < self.world:
            raise QgenError(f"rank must be in 0..world-1, got rank {self.rank} of world {self.world}")
        if self.batch_size % self.world:
            raise QgenError(
                f"batch_size {self.batch_size} is not divisible by the {self.world} data-parallel processes"
            )

    def shard(self, items: Tensor) -> Tensor:
        """This process's slice of a global batch's ``items`` (first dimension); all of it when alone."""
        return items if self.world == 1 else items.tensor_split(self.world)[self.rank]


class _EpochLoader(ABC):
    """What both loaders share: the epoch that seeds the next iteration, and the batch count."""

    def __init__(self, num_samples: int, batching: Batching) -> None:
        self.num_samples = num_samples
        self.batching = batching
        self._epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if epoch < 0:
            raise QgenError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start <= len(self):
            raise QgenError(f"start batch must be in 0..{len(self)}, got {start}")
        self._epoch, self._start = epoch, start

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batching.batch_size)
        return full + int(rest > 0 and not self.batching.drop_last)

    def _epoch_seed(self) -> int:
        return mix_seed(self.batching.seed, self._epoch)

    def _order(self, generator: torch.Generator) -> Tensor:
        """The epoch's sample order: a permutation drawn from ``generator`` when shuffling."""
        if self.batching.shuffle:
            return torch.randperm(self.num_samples, generator=generator)
        return torch.arange(self.num_samples)

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...


class ArrayLoader(_EpochLoader):
    """Batches from a split held whole on the device as uint8 ``(N, 3, H, W)``; no per-sample Python."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str,
        batching: Batching,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise QgenError(
                f"expected uint8 images (N, C, H, W) and N labels, got {images.dtype} images of shape "
                f"{tuple(images.shape)} and {len(labels)} labels"
            )
        super().__init__(len(labels), batching)
        device = batching.device
        if augment not in ARRAY_AUGMENTATIONS:
            raise QgenError(f"augment={augment!r} is not one of {ARRAY_AUGMENTATIONS} for an array dataset")
        self.images = images.to(device)
        self.labels = labels.to(device, torch.int64)
        self.augment = augment
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self._epoch_seed())
        batching = self.batching
        order = self._order(generator).to(batching.device)
        size = batching.batch_size
        for i, start in enumerate(range(0, len(self) * size, size)):
            index = batching.shard(order[start : start + size])
            # Skipped batches still draw their augmentation, so the generator reaches later batches intact.
            draws = (
                draw_crop_flip(
                    min(size, self.num_samples - start), generator, flip=self.augment == "crop_flip"
                )
                if self.augment != "none"
                else None
            )
            if i < self._start or len(index) == 0:
                continue
            images = self.images[index]
            if draws is not None:
                draws = batching.shard(draws.T).T.to(batching.device)
                images = crop_flip(images, draws[0], draws[1], draws[2].bool(), CROP_PADDING)
            yield normalize(images, self._mean, self._std), self.labels[index]


class _Samples(Protocol):
    """A map-style dataset of ``(image, label)`` pairs with a length, as ``ImageFolder`` and ``Subset``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, int]: ...


class _SeededSamples(Dataset[tuple[Tensor, int]]):
    """A dataset view whose sample ``i`` is transformed under the CPU RNG seeded from ``(epoch_seed, i)``.

    torchvision's random transforms draw from the global torch RNG; seeding it per sample (and restoring it
    afterwards) makes augmentation independent of worker count and of any other use of that RNG.
    """

    def __init__(self, samples: _Samples, epoch_seed: int) -> None:
        self.samples = samples
        self.epoch_seed = epoch_seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mix_seed(self.epoch_seed, index))
            return self.samples[index]


class FolderLoader(_EpochLoader):
    """Batches from a map-style dataset of transformed images through a ``DataLoader``."""

    def __init__(self, samples: _Samples, *, batching: Batching, workers: int) -> None:
        super().__init__(len(samples), batching)
        self.samples = samples
        self.workers = workers

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch_seed = self._epoch_seed()
        batching = self.batching
        order = self._order(torch.Generator().manual_seed(epoch_seed))
        size = batching.batch_size
        batches = [
            batching.shard(order[start : start + size]).tolist() for start in range(0, len(self) * size, size)
        ]
        loader = DataLoader(
            _SeededSamples(self.samples, epoch_seed),
            batch_sampler=[batch for batch in batches[self._start :] if batch],
            num_workers=self.workers,
            pin_memory=batching.device.type == "cuda",
        )
        device = batching.device
        for images, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
