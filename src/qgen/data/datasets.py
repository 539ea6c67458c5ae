"""The registered datasets: their facts, how each is downloaded or checked on disk, and how a split is read.

Facts shared with the DAG (label, classes, image size, augmentations) come from :data:`qgen.vocab.DATASETS`;
normalization statistics and the on-disk formats live here. The public entry points are
:func:`prepare_dataset` (``qgen download``), :func:`build_loader`, :func:`load_arrays` and
:func:`image_files`.
"""

from __future__ import annotations

import math
import pickle
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Subset
from torchvision import transforms
from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from torchvision.datasets.utils import calculate_md5, download_and_extract_archive

from qgen.data.loaders import ArrayLoader, Batching, BatchLoader, FolderLoader, subset_indices
from qgen.errors import QgenError
from qgen.registry import Registry
from qgen.vocab import DATASETS, resolve_augmentation

SPLITS: tuple[str, ...] = ("train", "test")

_IMAGENET_RESIZE = 256  # eval resize before the 224 center crop (224 / 0.875)
_IMAGENET_DIRS = {"train": "train", "test": "val"}
_DIGITS_TEST_SIZE = 360  # 1797 images: 1437 train, 360 test


@dataclass(frozen=True)
class DatasetInfo:
    """What models, training and tables need to know about a dataset."""

    name: str
    label: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def zero_padded_stats(mean: float, std: float, kept: float) -> tuple[float, float]:
    """Pixel mean and std after zero padding, given them before and the fraction ``kept`` of original pixels.

    The padded set's moments are ``kept`` times the original ones: ``E'[x] = kept * mean`` and
    ``E'[x^2] = kept * (std^2 + mean^2)``, so ``std' = sqrt(E'[x^2] - E'[x]^2)``.
    """
    padded_mean = kept * mean
    padded_square = kept * (std**2 + mean**2)
    return padded_mean, math.sqrt(padded_square - padded_mean**2)


def _require_file(path: Path, dataset: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; `qgen download {dataset}` (qgen.data.prepare_dataset) fetches it"
        )


def _gray_to_rgb(gray: Tensor) -> Tensor:
    """``(N, H, W)`` gray images as ``(N, 3, H, W)`` with the channel replicated."""
    return gray.unsqueeze(1).expand(-1, 3, -1, -1)


@dataclass(frozen=True)
class _Dataset(ABC):
    """One registered dataset: its facts, how to make it usable on disk, and how to load a split."""

    info: DatasetInfo

    @abstractmethod
    def prepare(self, root: Path, *, download: bool) -> None: ...

    @abstractmethod
    def loader(
        self, root: Path, split: str, *, augment: str, subset: int | None, batching: Batching, workers: int
    ) -> BatchLoader: ...


class _ArrayDataset(_Dataset):
    """A dataset small enough to hold as uint8 arrays; ``workers`` is unused since nothing is decoded."""

    @abstractmethod
    def arrays(self, root: Path, split: str) -> tuple[Tensor, Tensor]:
        """uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)`` of ``split``."""

    def loader(
        self, root: Path, split: str, *, augment: str, subset: int | None, batching: Batching, workers: int
    ) -> BatchLoader:
        images, labels = self.arrays(root, split)
        keep = subset_indices(len(labels), subset, batching.seed, where=f"{self.info.name}/{split}")
        if keep is not None:
            images, labels = images[keep], labels[keep]
        return ArrayLoader(
            images, labels, mean=self.info.mean, std=self.info.std, augment=augment, batching=batching
        )


def _read_cifar_batch(path: Path, label_key: bytes, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file of the official CIFAR python format.

    A pickled dict whose ``b"data"`` is an ``(N, 3072)`` uint8 array of row-major CHW 32x32 images and whose
    ``label_key`` holds the N labels. The files are md5-verified by :func:`prepare_dataset`.
    """
    _require_file(path, dataset)
    with path.open("rb") as file:
        batch = pickle.load(file, encoding="bytes")
    missing = [key for key in (b"data", label_key) if key not in batch]
    if missing:
        raise QgenError(f"{path} lacks {missing}; expected a CIFAR batch dict with b'data' and {label_key!r}")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise QgenError(
            f"{path}: expected b'data' of shape (N, 3072) and N labels, got {data.shape} and {len(labels)}"
        )
    return data.reshape(-1, 3, 32, 32), labels


@dataclass(frozen=True)
class _Cifar(_ArrayDataset):
    """CIFAR-10/100 read from the official python batches; names and md5s come from torchvision's class."""

    source: type[CIFAR10]
    label_key: bytes

    def _batch_names(self, split: str) -> list[str]:
        """File names of ``split``'s batches, e.g. ``data_batch_1``..``data_batch_5`` for CIFAR-10 train."""
        return [name for name, _ in (self.source.train_list if split == "train" else self.source.test_list)]

    def _checksums(self) -> list[tuple[str, str]]:
        """``(file name, md5)`` of every file of the extracted archive."""
        meta = self.source.meta
        listed = [(name, md5) for name, md5 in (*self.source.train_list, *self.source.test_list)]
        return [*listed, (meta["filename"], meta["md5"])]

    def _problems(self, root: Path) -> list[str]:
        """Why the extracted files under ``root`` are not the official ones; empty when they all verify."""
        problems = []
        for name, md5 in self._checksums():
            path = root / self.source.base_folder / name
            if not path.is_file():
                problems.append(f"{path} is missing")
            elif (actual := calculate_md5(str(path))) != md5:
                problems.append(f"{path} has md5 {actual}, expected {md5}")
        return problems

    def prepare(self, root: Path, *, download: bool) -> None:
        problems = self._problems(root)
        if problems and download:
            url, md5 = self.source.url, self.source.tgz_md5
            try:
                download_and_extract_archive(
                    url, download_root=str(root), filename=self.source.filename, md5=md5
                )
            except RuntimeError as error:
                raise QgenError(f"fetching {url} into {root} (md5 {md5}) failed: {error}") from error
            problems = self._problems(root)
        if problems:
            hint = "" if download else f"; `qgen download {self.info.name}` fetches them"
            listed = "; ".join(problems)
            raise QgenError(f"{self.info.label} under {root} does not verify: {listed}{hint}")

    def arrays(self, root: Path, split: str) -> tuple[Tensor, Tensor]:
        folder = root / self.source.base_folder
        names = self._batch_names(split)
        batches = [_read_cifar_batch(folder / name, self.label_key, self.info.name) for name in names]
        images = np.concatenate([images for images, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        return torch.from_numpy(images), torch.from_numpy(labels)


@dataclass(frozen=True)
class _FashionMNIST(_ArrayDataset):
    """Fashion-MNIST through torchvision, its 28x28 gray images zero-padded to 32x32 and made 3-channel.

    Padding (2 px a side, as LeNet-5 did for MNIST) and channel replication let every registry model take
    3x32x32 input unchanged.
    """

    def _require_raw_files(self, root: Path) -> None:
        """Check for the unpacked idx files torchvision reads from ``root/FashionMNIST/raw``."""
        raw = root / FashionMNIST.__name__ / "raw"
        for archive, _ in FashionMNIST.resources:
            _require_file(raw / archive.removesuffix(".gz"), self.info.name)

    def prepare(self, root: Path, *, download: bool) -> None:
        if download:
            FashionMNIST(str(root), train=True, download=True)  # fetches and md5-checks all four archives
        self._require_raw_files(root)

    def arrays(self, root: Path, split: str) -> tuple[Tensor, Tensor]:
        self._require_raw_files(root)
        source = FashionMNIST(str(root), train=split == "train", download=False)
        return _gray_to_rgb(F.pad(source.data, (2, 2, 2, 2))), source.targets


@dataclass(frozen=True)
class _Digits(_ArrayDataset):
    """scikit-learn's bundled 8x8 digits (no download), upsampled to 3x32x32 with a fixed stratified split.

    Pixels 0..16 become ``round(v * 255 / 16)``, are upsampled bilinearly to 32x32 and rounded back to
    uint8; ``train_test_split(test_size=360, stratify=y, random_state=0)`` gives 1437 train / 360 test
    images. ``root`` is unused.
    """

    def prepare(self, root: Path, *, download: bool) -> None:
        load_digits()

    def arrays(self, root: Path, split: str) -> tuple[Tensor, Tensor]:
        digits = load_digits()
        pixels = torch.from_numpy(np.rint(digits.images * (255 / 16))).unsqueeze(1)
        upsampled = F.interpolate(pixels, size=(32, 32), mode="bilinear", align_corners=False)
        images = _gray_to_rgb(upsampled.round().squeeze(1).to(torch.uint8))
        indices = np.arange(len(digits.target))
        train, test = train_test_split(
            indices, test_size=_DIGITS_TEST_SIZE, stratify=digits.target, random_state=0
        )
        keep = torch.from_numpy(np.sort(train if split == "train" else test))
        return images[keep], torch.from_numpy(digits.target)[keep].to(torch.int64)


def _class_folders(split_dir: Path, expected: str) -> set[str]:
    """Names of the class folders of one ImageFolder split, each checked to hold at least one image."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} does not exist; {expected}")
    classes = sorted(entry for entry in split_dir.iterdir() if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"{split_dir} has no class folders; {expected}")
    for folder in classes:
        if not any(has_file_allowed_extension(file.name, IMG_EXTENSIONS) for file in folder.iterdir()):
            raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMG_EXTENSIONS)}); {expected}")
    return {folder.name for folder in classes}


@dataclass(frozen=True)
class _ImageNet(_Dataset):
    """ImageNet-1K as a user-supplied ImageFolder tree; it cannot be downloaded, only checked."""

    def prepare(self, root: Path, *, download: bool) -> None:
        train, val = _IMAGENET_DIRS["train"], _IMAGENET_DIRS["test"]
        expected = (
            f"expected {root}/{train}/<wnid>/*.JPEG and {root}/{val}/<wnid>/*.JPEG, the validation images "
            "sorted into the same class folders as the training images"
        )
        if not root.is_dir():
            raise FileNotFoundError(f"{root} does not exist; ImageNet cannot be downloaded, {expected}")
        classes = {name: _class_folders(root / name, expected) for name in (train, val)}
        for name, other in ((train, val), (val, train)):
            unmatched = sorted(classes[name] - classes[other])
            if unmatched:
                raise QgenError(
                    f"{root / name / unmatched[0]} has no counterpart in {root / other}; {expected}"
                )

    def _transform(self, augment: str) -> transforms.Compose:
        size = self.info.image_size
        crop = (
            [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
            if augment == "resized_crop_flip"
            else [transforms.Resize(_IMAGENET_RESIZE), transforms.CenterCrop(size)]
        )
        to_tensor = [transforms.ToTensor(), transforms.Normalize(self.info.mean, self.info.std)]
        return transforms.Compose([*crop, *to_tensor])

    def loader(
        self, root: Path, split: str, *, augment: str, subset: int | None, batching: Batching, workers: int
    ) -> BatchLoader:
        folder = ImageFolder(str(root / _IMAGENET_DIRS[split]), transform=self._transform(augment))
        keep = subset_indices(len(folder), subset, batching.seed, where=f"{self.info.name}/{split}")
        samples = folder if keep is None else Subset(folder, keep.tolist())
        return FolderLoader(samples, batching=batching, workers=workers)


_DATASETS: Registry[_Dataset] = Registry("dataset")

# Per-channel training-set statistics: CIFAR from the pixel data (the std of all pixels, not of per-image
# stds), ImageNet as in torchvision's reference scripts.
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_CIFAR100_MEAN, _CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Fashion-MNIST's training set has mean 0.2860 and std 0.3530 at 28x28; these are the padded 32x32 ones.
_FMNIST_MEAN, _FMNIST_STD = zero_padded_stats(0.2860, 0.3530, kept=(28 * 28) / (32 * 32))
# Computed on the Digits train split after the conversion in _Digits (tests/test_data.py recomputes them).
_DIGITS_MEAN, _DIGITS_STD = 0.3054, 0.3236


def _info(name: str, mean: tuple[float, float, float], std: tuple[float, float, float]) -> DatasetInfo:
    """The dataset's facts from :data:`qgen.vocab.DATASETS`, with its normalization statistics."""
    facts = DATASETS[name]
    return DatasetInfo(name, facts.label, facts.num_classes, facts.image_size, mean, std)


@_DATASETS.register("cifar10")
def _cifar10() -> _Dataset:
    info = _info("cifar10", _CIFAR10_MEAN, _CIFAR10_STD)
    return _Cifar(info, source=CIFAR10, label_key=b"labels")


@_DATASETS.register("cifar100")
def _cifar100() -> _Dataset:
    info = _info("cifar100", _CIFAR100_MEAN, _CIFAR100_STD)
    return _Cifar(info, source=CIFAR100, label_key=b"fine_labels")


@_DATASETS.register("fashion_mnist")
def _fashion_mnist() -> _Dataset:
    return _FashionMNIST(_info("fashion_mnist", (_FMNIST_MEAN,) * 3, (_FMNIST_STD,) * 3))


@_DATASETS.register("digits")
def _digits() -> _Dataset:
    return _Digits(_info("digits", (_DIGITS_MEAN,) * 3, (_DIGITS_STD,) * 3))


@_DATASETS.register("imagenet")
def _imagenet() -> _Dataset:
    return _ImageNet(_info("imagenet", _IMAGENET_MEAN, _IMAGENET_STD))


# --------------------------------------------------------------------------------------------------------
# Public entry points


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return _DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    """Facts about dataset ``name``; ``KeyError`` naming the known datasets if there is no such dataset."""
    return _DATASETS.get(name)().info


def prepare_dataset(name: str, root: Path, *, download: bool = True) -> None:
    """Make dataset ``name`` usable under ``root``: download and verify where possible, else check the layout.

    ``root`` is the dataset's own directory (e.g. ``data/cifar10``); for ImageNet it is the user's tree.
    """
    _DATASETS.get(name)().prepare(Path(root), download=download)


def build_loader(
    name: str,
    split: str,
    *,
    root: Path,
    batch_size: int,
    augment: str,
    shuffle: bool,
    seed: int,
    subset: int | None = None,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
    workers: int = 0,
    rank: int = 0,
    world: int = 1,
) -> BatchLoader:
    """A loader over ``split`` of dataset ``name`` stored under ``root``.

    ``subset`` keeps a fixed sample of that many items drawn with ``seed`` (the same for every epoch);
    ``workers`` is the number of decoding processes, used by folder datasets (ImageNet) only;
    ``rank`` of ``world`` selects this process's slice of every batch for data-parallel training.
    """
    dataset = _DATASETS.get(name)()
    resolve_augmentation(name, augment, f"{name}/{split} loader")
    if split not in SPLITS:
        raise QgenError(f"unknown split {split!r} for {name}; expected one of {', '.join(SPLITS)}")
    batching = Batching(batch_size, shuffle, seed, drop_last, torch.device(device), rank, world)
    return dataset.loader(
        Path(root), split, augment=augment, subset=subset, batching=batching, workers=workers
    )


def load_arrays(name: str, split: str, *, root: Path) -> tuple[Tensor, Tensor]:
    """uint8 images ``(N, 3, H, W)`` and int64 labels of a whole split of an array dataset (not ImageNet)."""
    dataset = _DATASETS.get(name)()
    if not isinstance(dataset, _ArrayDataset):
        raise QgenError(f"{name} is a folder dataset; use image_files() to list its images")
    return dataset.arrays(Path(root), split)


def image_files(name: str, split: str, *, root: Path) -> list[tuple[str, str]]:
    """``(image path, class folder)`` of every image of a split of a folder dataset (ImageNet)."""
    dataset = _DATASETS.get(name)()
    if not isinstance(dataset, _ImageNet):
        raise QgenError(f"{name} is an array dataset; use load_arrays() to read its images")
    folder = ImageFolder(str(Path(root) / _IMAGENET_DIRS[split]))
    return [(path, folder.classes[index]) for path, index in folder.samples]
