"""Datasets and batch loaders.

Every dataset registers a factory under its name (:mod:`qgen.data.datasets`); :func:`build_loader` turns a
name and a split into a :class:`~qgen.data.loaders.BatchLoader` that yields normalized float32 NCHW images
and int64 labels on the requested device.

Two loaders (:mod:`qgen.data.loaders`) share one contract, that batch order and augmentation are a pure
function of ``(seed, epoch)``, so a training run killed mid-way resumes bit-identically, even from inside
an epoch (``set_epoch(epoch, start=k)`` skips the first ``k`` batches without computing them):

* :class:`ArrayLoader` (CIFAR-10/100, Digits, Fashion-MNIST) keeps a whole split as one uint8 tensor on the
  device and crops, flips and normalizes whole batches with tensor ops (:mod:`qgen.data.augment`), in the
  manner of airbench;
* :class:`FolderLoader` (ImageNet) wraps a torchvision ``ImageFolder`` in a ``DataLoader`` whose shuffling
  comes from a seeded generator and whose per-sample transforms are seeded from the sample index, so the
  batches do not depend on the number of workers.

For data-parallel training each process of ``world`` takes the ``rank``-th of ``world`` contiguous
slices of every global batch (:class:`Batching`), with the augmentation drawn for the global batch: the
processes together see exactly the batches one process would, which is what ``DistributedSampler``
provides, but with a global batch size and an order that do not depend on the number of processes.

The splits are :data:`SPLITS`; ImageNet's ``test`` split is its ``val/`` folder, on which the paper reports
test accuracy.
"""

from qgen.data.augment import crop_flip, draw_crop_flip, normalize
from qgen.data.datasets import (
    SPLITS,
    DatasetInfo,
    build_loader,
    dataset_info,
    dataset_names,
    image_files,
    load_arrays,
    prepare_dataset,
    zero_padded_stats,
)
from qgen.data.loaders import ArrayLoader, Batching, BatchLoader, FolderLoader, mix_seed, subset_indices

__all__ = [
    "SPLITS",
    "ArrayLoader",
    "BatchLoader",
    "Batching",
    "DatasetInfo",
    "FolderLoader",
    "build_loader",
    "crop_flip",
    "dataset_info",
    "dataset_names",
    "draw_crop_flip",
    "image_files",
    "load_arrays",
    "mix_seed",
    "normalize",
    "prepare_dataset",
    "subset_indices",
    "zero_padded_stats",
]
