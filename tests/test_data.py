"""Tests for qgen.data: readers on tiny files in the real on-disk formats, and the loaders' contracts."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import struct
import tarfile
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100

from qgen.data import (
    BatchLoader,
    build_loader,
    crop_flip,
    dataset_info,
    dataset_names,
    draw_crop_flip,
    load_arrays,
    mix_seed,
    normalize,
    prepare_dataset,
    subset_indices,
    zero_padded_stats,
)
from qgen.errors import QgenError

CIFAR_SOURCES: dict[str, tuple[type[CIFAR10], bytes]] = {
    "cifar10": (CIFAR10, b"labels"),
    "cifar100": (CIFAR100, b"fine_labels"),
}


def batches(loader: BatchLoader) -> list[tuple[Tensor, Tensor]]:
    return list(loader)


def concat(loader: BatchLoader) -> tuple[Tensor, Tensor]:
    images, labels = zip(*batches(loader), strict=True)
    return torch.cat(images), torch.cat(labels)


def pixels(name: str, images: Tensor) -> Tensor:
    """Undo the loader's normalization: uint8 pixels (exact up to float rounding)."""
    info = dataset_info(name)
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).round().to(torch.uint8)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --- registry


def test_registry_names_and_info() -> None:
    assert dataset_names() == ["cifar10", "cifar100", "digits", "fashion_mnist", "imagenet"]
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("imagenet").image_size == 224
    with pytest.raises(KeyError, match=r"svhn.*cifar10, cifar100"):
        dataset_info("svhn")


def test_unknown_split_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'val'.*train, test"):
        build_loader("digits", "val", root=tmp_path, batch_size=8, augment="none", shuffle=False, seed=0)


# --- CIFAR


def write_cifar(root: Path, name: str, sizes: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the official python batch files of ``name`` with ``sizes[file]`` random images each."""
    source, label_key = CIFAR_SOURCES[name]
    folder = root / source.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for file, size in sizes.items():
        data = rng.integers(0, 256, (size, 3072), dtype=np.uint8)
        labels = rng.integers(0, dataset_info(name).num_classes, size).tolist()
        (folder / file).write_bytes(pickle.dumps({b"data": data, label_key: labels}))
        written[file] = (data.reshape(-1, 3, 32, 32), np.asarray(labels))
    (folder / source.meta["filename"]).write_bytes(pickle.dumps({source.meta["key"].encode(): []}))
    return written


def cifar_sizes(name: str) -> dict[str, int]:
    source, _ = CIFAR_SOURCES[name]
    return {file: 4 for file, _ in source.train_list} | {file: 6 for file, _ in source.test_list}


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_reader_round_trips_pixels_and_labels(tmp_path: Path, name: str, split: str) -> None:
    written = write_cifar(tmp_path, name, cifar_sizes(name))
    source, _ = CIFAR_SOURCES[name]
    files = [file for file, _ in (source.train_list if split == "train" else source.test_list)]
    expected_images = np.concatenate([written[file][0] for file in files])
    expected_labels = np.concatenate([written[file][1] for file in files])

    loader = build_loader(name, split, root=tmp_path, batch_size=5, augment="none", shuffle=False, seed=0)
    images, labels = concat(loader)

    assert loader.num_samples == len(expected_labels)
    assert images.shape == (len(expected_labels), 3, 32, 32) and images.dtype == torch.float32
    assert torch.equal(pixels(name, images), torch.from_numpy(expected_images))
    assert torch.equal(labels, torch.from_numpy(expected_labels))


def test_cifar_missing_batch_names_file_and_command(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10", cifar_sizes("cifar10"))
    (tmp_path / CIFAR10.base_folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3 is missing; `qgen download cifar10`"):
        build_loader("cifar10", "train", root=tmp_path, batch_size=4, augment="none", shuffle=False, seed=0)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over loopback HTTP, and its URL."""
    folder = tmp_path / "served"
    folder.mkdir()
    with ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder))) as server:
        Thread(target=partial(server.serve_forever, poll_interval=0.05), daemon=True).start()
        yield folder, f"http://127.0.0.1:{server.server_port}/"
        server.shutdown()


@pytest.fixture
def tiny_cifar10_archive(tmp_path: Path, served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny cifar-10-python.tar.gz in the real layout, served where CIFAR10.url points, md5s patched."""
    folder, url = served
    staging = tmp_path / "staging"
    write_cifar(staging, "cifar10", cifar_sizes("cifar10"))
    files = staging / CIFAR10.base_folder
    archive: Path = folder / CIFAR10.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(files, arcname=CIFAR10.base_folder)
    monkeypatch.setattr(CIFAR10, "url", url + CIFAR10.filename)
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5(archive))
    monkeypatch.setattr(CIFAR10, "train_list", [[f, md5(files / f)] for f, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[f, md5(files / f)] for f, _ in CIFAR10.test_list])
    meta = CIFAR10.meta | {"md5": md5(files / CIFAR10.meta["filename"])}
    monkeypatch.setattr(CIFAR10, "meta", meta)
    return archive


def test_prepare_cifar_downloads_verifies_and_then_skips(tmp_path: Path, tiny_cifar10_archive: Path) -> None:
    root = tmp_path / "data" / "cifar10"
    prepare_dataset("cifar10", root)
    assert (root / CIFAR10.base_folder / "test_batch").is_file()

    tiny_cifar10_archive.unlink()  # a second download would now fail
    (root / CIFAR10.filename).unlink()
    prepare_dataset("cifar10", root)
    loader = build_loader("cifar10", "test", root=root, batch_size=6, augment="none", shuffle=False, seed=0)
    assert loader.num_samples == 6


def test_prepare_cifar_rejects_wrong_archive_md5(
    tmp_path: Path, tiny_cifar10_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CIFAR10, "tgz_md5", "0" * 32)
    with pytest.raises(QgenError, match="0" * 32):
        prepare_dataset("cifar10", tmp_path / "cifar10")


def test_prepare_cifar_rejects_wrong_member_md5(
    tmp_path: Path, tiny_cifar10_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = [["data_batch_1", "f" * 32], *CIFAR10.train_list[1:]]
    monkeypatch.setattr(CIFAR10, "train_list", wrong)
    with pytest.raises(QgenError, match=r"data_batch_1 has md5 [0-9a-f]{32}, expected f{32}"):
        prepare_dataset("cifar10", tmp_path / "cifar10")


def test_prepare_cifar_without_download_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(QgenError, match=r"data_batch_1 is missing.*`qgen download cifar10`"):
        prepare_dataset("cifar10", tmp_path, download=False)


# --- Fashion-MNIST


def write_idx(path: Path, array: np.ndarray) -> None:
    """The big-endian idx format: magic (0, 0, type 0x08 = uint8, ndim), the dims, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fashion_mnist(tmp_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(2)
    written = {}
    for split, prefix, size in (("train", "train", 5), ("test", "t10k", 3)):
        images = rng.integers(1, 256, (size, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written[split] = (images, labels)
    return written


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_is_padded_and_replicated(
    tmp_path: Path, tiny_fashion_mnist: dict[str, tuple[np.ndarray, np.ndarray]], split: str
) -> None:
    gray, expected_labels = tiny_fashion_mnist[split]
    loader = build_loader(
        "fashion_mnist", split, root=tmp_path, batch_size=2, augment="none", shuffle=False, seed=0
    )
    images, labels = concat(loader)
    restored = pixels("fashion_mnist", images)

    assert restored.shape == (len(gray), 3, 32, 32)
    assert torch.equal(restored[:, :, 2:30, 2:30], torch.from_numpy(gray)[:, None].expand(-1, 3, -1, -1))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert restored[:, :, border].eq(0).all()
    assert torch.equal(labels, torch.from_numpy(expected_labels).long())


def test_fashion_mnist_missing_file_is_named(
    tmp_path: Path, tiny_fashion_mnist: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    (tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte is missing.*download fashion_mnist"):
        prepare_dataset("fashion_mnist", tmp_path, download=False)


def test_zero_padded_stats_match_direct_computation() -> None:
    unpadded = torch.rand(7, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) ** 2
    padded = torch.nn.functional.pad(unpadded, (2, 2, 2, 2))
    mean, std = zero_padded_stats(
        unpadded.mean().item(), unpadded.std(unbiased=False).item(), kept=(28 * 28) / (32 * 32)
    )
    assert mean == pytest.approx(padded.mean().item(), rel=1e-9)
    assert std == pytest.approx(padded.std(unbiased=False).item(), rel=1e-9)


def test_fashion_mnist_stats_are_the_padded_published_ones() -> None:
    info = dataset_info("fashion_mnist")
    assert info.mean == pytest.approx((0.2860 * 784 / 1024,) * 3)
    assert info.std[0] == pytest.approx(0.3318, abs=1e-4)


# --- Digits


def digits_loader(tmp_path: Path, split: str, **overrides: Any) -> BatchLoader:
    options: dict[str, Any] = {"batch_size": 128, "augment": "none", "shuffle": False, "seed": 0} | overrides
    return build_loader("digits", split, root=tmp_path, **options)


def test_digits_split_is_fixed_and_stratified(tmp_path: Path) -> None:
    train_images, train_labels = concat(digits_loader(tmp_path, "train"))
    test_images, test_labels = concat(digits_loader(tmp_path, "test"))

    assert (len(train_labels), len(test_labels)) == (1437, 360)
    counts = torch.bincount(test_labels, minlength=10)
    assert ((counts - 36).abs() <= 1).all(), counts
    train_rows = {row.numpy().tobytes() for row in pixels("digits", train_images)}
    assert not any(row.numpy().tobytes() in train_rows for row in pixels("digits", test_images[:50]))


def test_digits_pixels_span_uint8_and_channels_match(tmp_path: Path) -> None:
    images, _ = concat(digits_loader(tmp_path, "train"))
    restored = pixels("digits", images)
    assert restored.min() == 0 and restored.max() == 255
    assert torch.equal(restored[:, 0], restored[:, 1]) and torch.equal(restored[:, 0], restored[:, 2])


def test_digits_stats_recomputed_from_train_split(tmp_path: Path) -> None:
    images, _ = concat(digits_loader(tmp_path, "train"))
    values = pixels("digits", images).double() / 255
    info = dataset_info("digits")
    assert values.mean().item() == pytest.approx(info.mean[0], abs=1e-3)
    assert values.std(unbiased=False).item() == pytest.approx(info.std[0], abs=1e-3)


# --- loaders


def test_same_seed_and_epoch_give_identical_batches(tmp_path: Path) -> None:
    first = digits_loader(tmp_path, "train", augment="crop_flip", shuffle=True, seed=3)
    second = digits_loader(tmp_path, "train", augment="crop_flip", shuffle=True, seed=3)
    first.set_epoch(4)
    second.set_epoch(4)
    runs = [batches(first), batches(first), batches(second)]
    for run in runs[1:]:
        for (images, labels), (images0, labels0) in zip(run, runs[0], strict=True):
            assert torch.equal(images, images0) and torch.equal(labels, labels0)


def test_epochs_and_seeds_change_the_order(tmp_path: Path) -> None:
    loader = digits_loader(tmp_path, "train", shuffle=True, seed=3)
    epoch0 = concat(loader)[1]
    loader.set_epoch(1)
    epoch1 = concat(loader)[1]
    other_seed = concat(digits_loader(tmp_path, "train", shuffle=True, seed=4))[1]
    assert not torch.equal(epoch0, epoch1) and not torch.equal(epoch0, other_seed)
    assert torch.equal(epoch0.sort().values, epoch1.sort().values)


def test_augmentation_keeps_shape_and_changes_images(tmp_path: Path) -> None:
    plain, _ = next(iter(digits_loader(tmp_path, "train")))
    augmented, _ = next(iter(digits_loader(tmp_path, "train", augment="crop_flip")))
    assert augmented.shape == plain.shape
    changed = (augmented != plain).flatten(1).any(1)
    assert changed.float().mean() > 0.5


def test_crop_augmentation_is_crop_flip_without_the_flips(tmp_path: Path) -> None:
    """Digits train with `crop` (a mirrored digit is often another digit): random crops, never mirrored."""
    loader = digits_loader(tmp_path, "train", augment="crop", seed=2)
    images, _ = next(iter(loader))
    raw, _ = load_arrays("digits", "train", root=tmp_path)
    draws = draw_crop_flip(128, torch.Generator().manual_seed(mix_seed(2, 0)), flip=False)
    assert not draws[2].any()
    info = dataset_info("digits")
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    expected = normalize(crop_flip(raw[:128], draws[0], draws[1], draws[2].bool(), padding=4), mean, std)
    assert torch.equal(images, expected)
    with pytest.raises(QgenError, match="augment='resized_crop_flip' is not one of digits's augmentations"):
        digits_loader(tmp_path, "train", augment="resized_crop_flip")


def test_crop_flip_identity_shift_and_flip() -> None:
    images = torch.randint(1, 256, (2, 3, 32, 32), dtype=torch.uint8)
    four, zero = torch.full((2,), 4), torch.zeros(2, dtype=torch.long)
    no, yes = torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)

    assert torch.equal(crop_flip(images, four, four, no, padding=4), images)
    assert torch.equal(crop_flip(images, four, four, yes, padding=4), images.flip(-1))
    shifted = crop_flip(images, zero, zero, no, padding=4)
    assert torch.equal(shifted[..., 4:, 4:], images[..., :28, :28])
    assert shifted[..., :4, :].eq(0).all() and shifted[..., :, :4].eq(0).all()


def test_crop_flip_matches_torchvision_pad_crop_flip() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=generator)
    top, left = torch.randint(0, 9, (2, 16), generator=generator)
    flip = torch.rand(16, generator=generator) < 0.5
    result = crop_flip(images, top, left, flip, padding=4)
    for i in range(16):
        expected = TF.crop(TF.pad(images[i], [4]), int(top[i]), int(left[i]), 32, 32)
        assert torch.equal(result[i], TF.hflip(expected) if flip[i] else expected)


def test_normalize_maps_the_mean_image_to_zero() -> None:
    info = dataset_info("cifar10")
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    image = (mean * 255).round().to(torch.uint8).expand(1, 3, 32, 32)
    normalized = normalize(image, mean, std)
    assert normalized.dtype == torch.float32
    assert normalized.abs().max() <= 0.5 / 255 / std.min()
    white = normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), mean, std)
    assert torch.allclose(white, (1 - mean) / std)


def test_subset_is_the_documented_seeded_sample() -> None:
    chosen = subset_indices(100, 10, seed=5, where="x/train")
    other_seed = subset_indices(100, 10, seed=6, where="x/train")
    assert chosen is not None and other_seed is not None
    expected = np.sort(np.random.default_rng(5).permutation(100)[:10])
    assert chosen.tolist() == expected.tolist() and len(set(expected)) == 10
    assert not torch.equal(chosen, other_seed)
    assert subset_indices(100, None, seed=5, where="x/train") is None


def test_subset_is_stable_across_epochs(tmp_path: Path) -> None:
    loader = digits_loader(tmp_path, "train", subset=50, shuffle=True, batch_size=16, seed=1)
    assert loader.num_samples == 50

    def rows() -> list[bytes]:
        return sorted(row.numpy().tobytes() for row in concat(loader)[0])

    epoch0 = rows()
    loader.set_epoch(7)
    assert len(epoch0) == 50 and rows() == epoch0


def test_subset_larger_than_split_names_both_numbers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="subset=2000 for digits/test, which has 360"):
        digits_loader(tmp_path, "test", subset=2000)


@pytest.mark.parametrize(("drop_last", "sizes"), [(True, [100, 100, 100]), (False, [100, 100, 100, 60])])
def test_len_matches_batches_and_drop_last(tmp_path: Path, drop_last: bool, sizes: list[int]) -> None:
    loader = digits_loader(tmp_path, "test", batch_size=100, drop_last=drop_last)
    assert len(loader) == len(sizes)
    assert [len(labels) for _, labels in loader] == sizes


# --- ImageNet


def write_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """root/{train,val}/<wnid>/*.JPEG with two classes: 3 train and 2 val images each."""
    root = tmp_path / "imagenet"
    paths = [
        root / split / wnid / f"{wnid}_{i}.JPEG"
        for split, count in (("train", 3), ("val", 2))
        for wnid in ("n01440764", "n01443537")
        for i in range(count)
    ]
    for seed, path in enumerate(paths):
        write_jpeg(path, seed)
    return root


def test_image_folder_eval_batches(image_tree: Path) -> None:
    prepare_dataset("imagenet", image_tree, download=False)
    loader = build_loader(
        "imagenet", "test", root=image_tree, batch_size=3, augment="none", shuffle=False, seed=0
    )
    shapes = [(tuple(images.shape), labels.tolist()) for images, labels in loader]
    assert loader.num_samples == 4 and len(loader) == 2
    assert shapes == [((3, 3, 224, 224), [0, 0, 1]), ((1, 3, 224, 224), [1])]


def test_image_folder_augmentation_is_seeded_and_worker_independent(image_tree: Path) -> None:
    def run(workers: int, epoch: int) -> list[tuple[Tensor, Tensor]]:
        loader = build_loader(
            "imagenet",
            "train",
            root=image_tree,
            batch_size=4,
            augment="resized_crop_flip",
            shuffle=True,
            seed=2,
            workers=workers,
            subset=5,
        )
        loader.set_epoch(epoch)
        return batches(loader)

    reference = run(workers=0, epoch=1)
    assert [len(labels) for _, labels in reference] == [4, 1]
    for other in (run(workers=0, epoch=1), run(workers=1, epoch=1)):
        for (images, labels), (images0, labels0) in zip(other, reference, strict=True):
            assert torch.equal(images, images0) and torch.equal(labels, labels0)
    assert not torch.equal(run(workers=0, epoch=2)[0][0], reference[0][0])


def remove_val(root: Path) -> None:
    shutil.rmtree(root / "val")


def remove_train(root: Path) -> None:
    shutil.rmtree(root / "train")


def empty_a_class(root: Path) -> None:
    for image in (root / "train" / "n01443537").iterdir():
        image.unlink()


def add_val_only_class(root: Path) -> None:
    write_jpeg(root / "val" / "n09999999" / "extra.JPEG", seed=0)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (shutil.rmtree, "imagenet does not exist; ImageNet cannot be downloaded"),
        (remove_val, "imagenet/val does not exist"),
        (remove_train, "imagenet/train does not exist"),
        (empty_a_class, "imagenet/train/n01443537 holds no images"),
        (add_val_only_class, "imagenet/val/n09999999 has no counterpart in .*imagenet/train"),
    ],
)
def test_image_folder_layout_errors_name_the_path(
    image_tree: Path, damage: Callable[[Path], None], message: str
) -> None:
    damage(image_tree)
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        prepare_dataset("imagenet", image_tree)


def test_image_folder_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    write_jpeg(tmp_path / "train" / "loose.JPEG", 0)
    with pytest.raises(FileNotFoundError, match="train has no class folders"):
        prepare_dataset("imagenet", tmp_path)
