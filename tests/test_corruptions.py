"""Corruptions: the registry, the 15 transforms, seeding, the -C layouts and their reader, and generation."""

from __future__ import annotations

import colorsys
import hashlib
import itertools
import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from qgen import data
from qgen.corruptions import CORRUPTIONS, GROUPS, LABELS, SEVERITIES, generate, transforms
from qgen.corruptions.evaluate import check_corrupted_root, split_loader
from qgen.corruptions.generate import generate_folder, generate_npy
from qgen.corruptions.layout import folder_problems, read_npy_split

PROFILE_SIZES = {"cifar": 32, "imagenet": 64}


def patterned_image(size: int, seed: int = 0) -> np.ndarray:
    """Coloured blocks on a gradient: edges, flat areas and no saturated channel everywhere."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.integers(30, 220, size=(8, 8, 3)), np.ones((size // 8, size // 8, 1)))
    ramp = np.linspace(-20, 20, size)[:, None, None]
    return np.clip(blocks + ramp, 0, 255).astype(np.uint8)


def distortion(name: str, severity: int, profile: str, images: list[np.ndarray]) -> float:
    """Mean absolute pixel change over ``images``, every severity with the same random draws."""
    changes = [
        np.abs(
            transforms.corrupt(image, name, severity, np.random.default_rng(i), profile).astype(float) - image
        ).mean()
        for i, image in enumerate(images)
    ]
    return float(np.mean(changes))


@pytest.mark.parametrize("profile", sorted(PROFILE_SIZES))
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_severity_returns_a_changed_uint8_image_of_the_same_shape(name: str, profile: str) -> None:
    image = patterned_image(PROFILE_SIZES[profile])
    for severity in SEVERITIES:
        out = transforms.corrupt(image, name, severity, np.random.default_rng(severity), profile)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert not np.array_equal(out, image), f"{name} severity {severity} left the image unchanged"


MONOTONE = (*GROUPS["noise"], "defocus_blur", "motion_blur", "zoom_blur", "contrast")


@pytest.mark.parametrize("profile", sorted(PROFILE_SIZES))
@pytest.mark.parametrize("name", MONOTONE)
def test_distortion_grows_with_severity(name: str, profile: str) -> None:
    images = [patterned_image(PROFILE_SIZES[profile], seed) for seed in range(3)]
    sizes = [distortion(name, s, profile, images) for s in SEVERITIES]
    # Non-decreasing: CIFAR-C's motion blur at severities 3 and 4 differs only in a radius beyond 3 sigma.
    assert all(a <= b for a, b in itertools.pairwise(sizes)) and sizes[0] < sizes[-1], sizes


def test_glass_blur_distortion_grows_with_the_shuffling_passes() -> None:
    """CIFAR-C's glass blur is not monotone in severity by construction: severities 4 and 5 repeat the
    sigmas of 2 and 3 with two shuffling passes instead of one, so each must distort more than its twin."""
    images = [patterned_image(32, seed) for seed in range(3)]
    sizes = {s: distortion("glass_blur", s, "cifar", images) for s in SEVERITIES}
    assert sizes[4] > sizes[2] and sizes[5] > sizes[3]


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_same_output_and_another_seed_another_for_random_corruptions(name: str) -> None:
    image = patterned_image(32)
    first, again, other = (
        transforms.corrupt(image, name, 3, np.random.default_rng(seed), "cifar") for seed in (7, 7, 8)
    )
    assert np.array_equal(first, again)
    assert np.array_equal(first, other) == transforms.corruption(name).deterministic


def test_contrast_and_brightness_match_their_closed_forms() -> None:
    image = patterned_image(32)
    x = image / 255.0
    means = x.mean(axis=(0, 1))
    expected = np.clip((x - means) * 0.4 + means, 0, 1) * 255
    out = transforms.corrupt(image, "contrast", 3, np.random.default_rng(0), "cifar")
    assert np.abs(out.astype(float) - np.floor(expected)).max() <= 1
    out = transforms.corrupt(image, "brightness", 5, np.random.default_rng(0), "cifar")
    for y, x_ in [(0, 0), (5, 17), (31, 31), (16, 3)]:
        h, s, v = colorsys.rgb_to_hsv(*(image[y, x_] / 255.0))
        reference = np.array(colorsys.hsv_to_rgb(h, s, min(v + 0.3, 1.0))) * 255
        assert np.abs(out[y, x_] - np.floor(reference)).max() <= 1


@pytest.mark.parametrize("factor", [1.01, 1.11, 1.26, 2.25])
def test_clipped_zoom_matches_scipy_zoom_of_the_centre(factor: float) -> None:
    """Independent recomputation of the reference's clipped_zoom with scipy.ndimage.zoom(order=1)."""
    x = patterned_image(32).astype(np.float64) / 255
    h = x.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    zoomed = ndimage.zoom(x[top : top + ch, top : top + ch], (factor, factor, 1), order=1)
    trim = (zoomed.shape[0] - h) // 2
    reference = zoomed[trim : trim + h, trim : trim + h]
    assert np.allclose(transforms._clipped_zoom(x, factor), reference, atol=1e-6)


def test_motion_blur_kernel_preserves_a_constant_image() -> None:
    flat = np.full((32, 32, 3), 0.4, dtype=np.float32)
    assert np.allclose(transforms._motion_blur(flat, 9, 2.5, 30.0), 0.4, atol=1e-6)


def test_defocus_filter_matches_ndimage_correlate_with_mirrored_borders() -> None:
    """cv2.filter2D's default border (BORDER_REFLECT_101) is scipy's "mirror"; kernels up to 21x21."""
    x = patterned_image(32).astype(np.float32) / 255
    for radius, alias_blur in [(0.3, 0.4), (1.5, 0.1), (3, 0.1), (10, 0.5)]:
        kernel = transforms._disk(radius, alias_blur)
        expected = np.stack([ndimage.correlate(x[..., k], kernel, mode="mirror") for k in range(3)], axis=-1)
        assert np.allclose(transforms._defocus(x, radius, alias_blur), expected, atol=2e-6)


@pytest.mark.parametrize("sigma", [0.0, 0.96, 2.44, 19.52, 40.0])
def test_fft_smoothing_matches_ndimage_reflect_filter_for_any_kernel_radius(sigma: float) -> None:
    """At sigma 40 the 3-sigma kernel (241 taps) is wider than both sides' reflected period (96, 80)."""
    field = np.random.default_rng(0).uniform(-1, 1, size=(48, 40))
    expected = ndimage.gaussian_filter(field, sigma, mode="reflect", truncate=3)
    assert np.allclose(transforms._smooth_reflect(field, sigma, truncate=3), expected, atol=1e-12)


@pytest.mark.parametrize("side", [32, 64, 224])
def test_pixelate_enlargement_is_pil_box_resizing(side: int) -> None:
    image = patterned_image(side)
    for profile in transforms.PROFILES:
        for severity, c in enumerate(transforms.corruption("pixelate").constants[profile], start=1):
            small = Image.fromarray(image).resize((int(side * c), int(side * c)), Image.BOX)
            expected = np.asarray(small.resize((side, side), Image.BOX))
            out = transforms.corrupt(image, "pixelate", severity, None, profile)
            assert np.array_equal(out, expected), (profile, c)


# --------------------------------------------------------------------------------------------------------
# The registry and the seeds


TABLE_ORDER = (  # the benchmark's tables (Hendrycks & Dietterich 2019, Fig. 1 and Table 1 of its paper)
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip


def test_views_of_the_registry_keep_the_table_order_groups_and_labels() -> None:
    assert CORRUPTIONS == TABLE_ORDER
    assert tuple(GROUPS) == transforms.GROUP_ORDER
    assert tuple(itertools.chain(*GROUPS.values())) == TABLE_ORDER
    assert [len(names) for names in GROUPS.values()] == [3, 4, 4, 4]
    assert LABELS["elastic_transform"] == "Elastic" and LABELS["jpeg_compression"] == "JPEG"
    for name in CORRUPTIONS:
        entry = transforms.corruption(name)
        assert name in GROUPS[entry.group] and entry.label == LABELS[name]
        assert all(len(entry.constants[p]) == len(SEVERITIES) for p in transforms.PROFILES)


def test_registrations_are_checked_naming_the_corruption() -> None:
    five = (1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="corruption 'rain': group 'water' is not one of"):
        transforms.register("rain", group="water", label="Rain", cifar=five, imagenet=five)
    with pytest.raises(
        ValueError, match="corruption 'rain': 4 imagenet constants, expected one per severity"
    ):
        transforms.register("rain", group="weather", label="Rain", cifar=five, imagenet=five[:4])
    with pytest.raises(ValueError, match="corruption 'fog' is registered twice"):
        transforms.register("fog", group="weather", label="Fog", cifar=five, imagenet=five)(lambda x, c, r: x)
    assert "rain" not in transforms.CORRUPTION_REGISTRY and len(transforms.registered()) == 15


def test_task_seeds_derive_from_the_name_not_its_position() -> None:
    """``default_rng([seed, key(name), severity, start])``, key = the first 8 bytes of SHA-256(name)."""
    keys = {name: int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") for name in CORRUPTIONS}
    assert len(set(keys.values())) == len(CORRUPTIONS)
    for name in ("gaussian_noise", "fog", "jpeg_compression"):
        expected = np.random.default_rng([5, keys[name], 2, 128]).random(4)
        assert np.array_equal(generate.task_rng(5, name, 2, 128).random(4), expected)


# --------------------------------------------------------------------------------------------------------
# Glass blur: the reference's pixel "swap" is a copy


def reference_shuffle(x: np.ndarray, delta: int, shifts: np.ndarray) -> np.ndarray:
    """The reference's loop verbatim on an HxWx3 array (views on the right-hand side: a copy, not a swap)."""
    x = x.copy()
    h, w = x.shape[:2]
    for step in shifts:
        for i, row in enumerate(range(h - delta, delta, -1)):
            for j, col in enumerate(range(w - delta, delta, -1)):
                dx, dy = step[i, j]
                x[row, col], x[row + dy, col + dx] = x[row + dy, col + dx], x[row, col]
    return x


def test_glass_shuffle_copies_and_cascades_as_the_reference_loop_by_hand() -> None:
    """6x6, delta 2: the loop visits (4,4), (4,3), (3,4), (3,3), pixel (h, w) holding 10 h + w.

    (4,4) <- (3,3), not yet visited: 33. (4,3) <- (4,4) and (3,4) <- (4,4), visited before: its new 33.
    (3,3) <- (1,1): 11, and (1,1) keeps 11 (swaps would leave 44 there).
    """
    shifts = np.array([[[[-1, -1], [1, 0]], [[0, 1], [-2, -2]]]])  # (dx, dy) at (4,4) (4,3) / (3,4) (3,3)
    values = np.add.outer(10 * np.arange(6), np.arange(6))
    expected = values.copy()
    expected[4, 4] = expected[4, 3] = expected[3, 4] = 33
    expected[3, 3] = 11
    shuffled = values.ravel()[transforms.shuffle_sources(6, 6, 2, shifts)].reshape(6, 6)
    assert np.array_equal(shuffled, expected)
    image = np.repeat(values[..., None], 3, axis=2).astype(np.uint8)
    assert np.array_equal(reference_shuffle(image, 2, shifts)[..., 1], expected)


@pytest.mark.parametrize(("profile", "shape"), [("cifar", (32, 32)), ("imagenet", (40, 52))])
def test_glass_shuffle_equals_the_sequential_loop_at_every_severity(profile: str, shape: tuple) -> None:
    h, w = shape
    rng = np.random.default_rng(1)
    for _, delta, passes in transforms.corruption("glass_blur").constants[profile]:
        x = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        shifts = rng.integers(-delta, delta, size=(passes, h - 2 * delta, w - 2 * delta, 2))
        expected = reference_shuffle(x, delta, shifts)
        shuffled = x.reshape(h * w, 3)[transforms.shuffle_sources(h, w, delta, shifts)].reshape(x.shape)
        assert np.array_equal(shuffled, expected), (delta, passes)


# --------------------------------------------------------------------------------------------------------
# Frost: the reference's photographs, crop and blend

FIXTURES = Path(__file__).parent / "fixtures"
FROST_SIDES = {"cifar": 32, "imagenet": 224}  # those of fixtures/frost_reference.py


def frost_pattern(side: int) -> np.ndarray:
    """The image of ``fixtures/frost_reference.py`` (diagonal colour ramps)."""
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    ramp = (i * 200 // side)[..., None] + (j * 24 // side)[..., None] + np.array([0, 16, 8])
    return ramp.astype(np.uint8)


class Replay:
    """An rng stand-in whose ``integers`` returns recorded draws in turn (frost draws nothing else)."""

    def __init__(self, draws: Iterable[int]) -> None:
        self._draws = iter(draws)

    def integers(self, *args: object, **kwargs: object) -> int:
        return next(self._draws)


def test_shipped_frost_photographs_match_their_notice() -> None:
    notice = (transforms.FROST_DIR / "NOTICE").read_text()
    listed = dict(re.findall(r"^(frost\d\.(?:png|jpg))\s+\d+\s+([0-9a-f]{40})$", notice, flags=re.M))
    assert sorted(listed) == sorted(transforms.FROST_PHOTOS)
    for name, sha1 in listed.items():
        assert hashlib.sha1((transforms.FROST_DIR / name).read_bytes()).hexdigest() == sha1, name
    assert "Apache License" in (transforms.FROST_DIR / "LICENSE").read_text()


def test_cifar_frost_photographs_are_opencv_linear_shrinks_by_a_fifth() -> None:
    """At scale 0.2 OpenCV's INTER_LINEAR samples source pixel 5 d + 2 exactly: no interpolation."""
    for index, (height, width) in enumerate([(120, 180), (63, 112), (63, 112), (70, 105), (99, 132)]):
        full = transforms.frost_photo(index, 1.0)
        assert np.array_equal(transforms.frost_photo(index, 0.2), full[2::5, 2::5][:height, :width])


@pytest.mark.parametrize("profile", ["cifar", "imagenet"])
def test_frost_replays_the_reference_draws_exactly(profile: str) -> None:
    """The fixture holds the reference formula's output statistics per draw (OpenCV read and resize)."""
    reference = np.load(FIXTURES / "frost_reference.npz")
    image = frost_pattern(FROST_SIDES[profile])
    for severity in SEVERITIES:
        for draw, stats in zip(reference[f"{profile}_draws"][severity - 1],
                               reference[f"{profile}_stats"][severity - 1], strict=True):  # fmt: skip
            out = transforms.corrupt(image, "frost", severity, Replay(draw.tolist()), profile)
            change = np.abs(out.astype(np.float64) - image).mean()
            assert np.allclose([change, *out.reshape(-1, 3).mean(axis=0)], stats, rtol=0, atol=1e-9)


@pytest.mark.parametrize("profile", ["cifar", "imagenet"])
def test_frost_strength_and_tint_match_the_reference_in_distribution(profile: str) -> None:
    """Over 100 draws of our own rng per severity, the mean change and the channel means of the output lie
    within 4 standard errors of the reference's over its 100 draws (about +-10% of the change)."""
    reference = np.load(FIXTURES / "frost_reference.npz")[f"{profile}_stats"]
    image = frost_pattern(FROST_SIDES[profile])
    rng = np.random.default_rng(0)
    for severity in SEVERITIES:
        outs = [transforms.corrupt(image, "frost", severity, rng, profile) for _ in range(reference.shape[1])]
        ours = np.array(
            [[np.abs(o.astype(np.float64) - image).mean(), *o.reshape(-1, 3).mean(0)] for o in outs]
        )
        expected = reference[severity - 1]
        error = np.sqrt(ours.var(0) + expected.var(0)) / np.sqrt(len(ours))
        assert np.all(np.abs(ours.mean(0) - expected.mean(0)) < 4 * error), (
            severity,
            ours.mean(0),
            expected.mean(0),
        )
        assert expected[:, 3].mean() > expected[:, 1].mean() + 10  # the photographs are blue-cyan


def test_a_missing_frost_photograph_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transforms, "FROST_DIR", tmp_path)
    transforms.frost_photo.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match=r"frost photograph .*frost1\.png is missing"):
            transforms.frost_photo(0, 0.2)
    finally:
        transforms.frost_photo.cache_clear()


def test_frost_refuses_images_larger_than_its_photographs() -> None:
    with pytest.raises(ValueError, match=r"frost photograph frost2\.png is 63x112 at scale 0\.2, too small"):
        transforms.corrupt(patterned_image(64), "frost", 1, Replay([1]), "cifar")


def test_bad_inputs_are_rejected_naming_the_value() -> None:
    image = patterned_image(32)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        transforms.corrupt(image, "rain", 1, rng)
    with pytest.raises(ValueError, match="severity must be one of"):
        transforms.corrupt(image, "fog", 6, rng)
    with pytest.raises(ValueError, match=r"expected a uint8 image of shape \(H, W, 3\)"):
        transforms.corrupt(image[..., 0], "fog", 1, rng)
    with pytest.raises(ValueError, match="no corruption parameters for 64x64"):
        transforms.profile_for_size(64)


# --------------------------------------------------------------------------------------------------------
# Layouts, loader, generation


def write_npy_layout(root: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The CIFAR-C layout by hand: each corruption's file holds severity s as ``images + s`` (mod 256)."""
    root.mkdir(parents=True, exist_ok=True)
    stacks = {}
    for k, name in enumerate(CORRUPTIONS):
        stacks[name] = np.concatenate([(images + 10 * k + s).astype(np.uint8) for s in SEVERITIES])
        np.save(root / f"{name}.npy", stacks[name])
    np.save(root / "labels.npy", np.tile(labels.astype(np.uint8), len(SEVERITIES)))
    return stacks


def digits_test(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    images, labels = data.load_arrays("digits", "test", root=Path("unused"))
    images = images.permute(0, 2, 3, 1).contiguous().numpy()
    return images[:n], labels.numpy()[:n]


def test_loader_reads_the_official_cifar_layout_in_severity_blocks(tmp_path: Path) -> None:
    images, labels = digits_test(6)
    stacks = write_npy_layout(tmp_path, images, labels)
    split, split_labels = read_npy_split(tmp_path, "fog", 4)
    assert np.array_equal(split, stacks["fog"][18:24]) and np.array_equal(split_labels, labels)
    loader = split_loader("digits", tmp_path, "fog", 4, batch_size=4, device=torch.device("cpu"))
    batches = list(loader)
    info = data.dataset_info("digits")
    expected = (torch.from_numpy(stacks["fog"][18:24]).permute(0, 3, 1, 2) / 255 - info.mean[0]) / info.std[0]
    assert loader.num_samples == 6 and [len(b[1]) for b in batches] == [4, 2]
    assert torch.allclose(torch.cat([b[0] for b in batches]), expected.float(), atol=1e-6)


def test_truncated_or_missing_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    images, labels = digits_test(4)
    write_npy_layout(tmp_path, images, labels)
    check_corrupted_root("digits", tmp_path)
    raw = (tmp_path / "snow.npy").read_bytes()
    (tmp_path / "snow.npy").write_bytes(raw[:-100])
    with pytest.raises(ValueError, match=r"snow\.npy is truncated or corrupt"):
        read_npy_split(tmp_path, "snow", 1)
    (tmp_path / "frost.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"frost\.npy is missing"):
        check_corrupted_root("digits", tmp_path)


def test_loader_reads_the_official_imagenet_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ImageNet-C's <name>/<severity>/<wnid>/*.JPEG, with a 4-class ImageNet to keep the test small."""
    imagenet = data.dataset_info("imagenet")
    four_classes = data.DatasetInfo("imagenet", "ImageNet", 4, 224, imagenet.mean, imagenet.std)
    monkeypatch.setattr(data, "dataset_info", lambda name: four_classes)
    split = tmp_path / "snow" / "3"
    for i, wnid in enumerate(["n02", "n01", "n04", "n03"]):
        (split / wnid).mkdir(parents=True)
        Image.fromarray(np.full((224, 224, 3), 40 * i, np.uint8)).save(split / wnid / "x.JPEG", quality=95)
    assert folder_problems(tmp_path, 4, ("snow",)) == [
        f"{tmp_path / 'snow' / str(s)} is missing" for s in (1, 2, 4, 5)
    ]
    loader = split_loader("imagenet", tmp_path, "snow", 3, batch_size=8, device=torch.device("cpu"))
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 224, 224) and labels.tolist() == [0, 1, 2, 3]  # sorted wnids
    pixel = images[:, 0, 100, 100] * imagenet.std[0] + imagenet.mean[0]
    assert torch.allclose(pixel * 255, torch.tensor([40.0, 0.0, 120.0, 80.0]), atol=2)
    (split / "n05").mkdir()
    (split / "n05" / "y.JPEG").write_bytes((split / "n01" / "x.JPEG").read_bytes())
    with pytest.raises(ValueError, match="holds 5 class folders, expected 4"):
        split_loader("imagenet", tmp_path, "snow", 3, batch_size=8, device=torch.device("cpu"))


def test_generation_is_byte_identical_for_a_seed_whatever_the_workers(tmp_path: Path) -> None:
    images, labels = digits_test(140)  # two tasks per corruption (CHUNK = 128)
    names = ("shot_noise", "glass_blur", "pixelate")
    args = dict(dataset="digits", profile="cifar", corruptions=names)
    generate_npy(images, labels, tmp_path / "one", seed=3, workers=1, **args)
    record = generate_npy(images, labels, tmp_path / "two", seed=3, workers=2, **args)
    generate_npy(images, labels, tmp_path / "other", seed=4, workers=1, **args)
    for name in names:
        one, two, other = ((tmp_path / d / f"{name}.npy").read_bytes() for d in ("one", "two", "other"))
        assert one == two
        assert (one == other) == (name == "pixelate")
    stack = np.load(tmp_path / "one" / "pixelate.npy")
    assert stack.shape == (5 * 140, 32, 32, 3)
    for s in SEVERITIES:
        block = stack[(s - 1) * 140 : s * 140]
        assert np.array_equal(block[7], transforms.corrupt(images[7], "pixelate", s, None, "cifar"))
    assert np.array_equal(np.load(tmp_path / "one" / "labels.npy"), np.tile(labels, 5))
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest == record and manifest["source"] == "generated" and "-C style" in manifest["note"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        [f"{n}.npy" for n in names] + ["labels.npy", "manifest.json"]
    )


def test_folder_generation_writes_the_imagenet_layout(tmp_path: Path) -> None:
    files = []
    for label in ("n01", "n02"):
        (tmp_path / "val" / label).mkdir(parents=True)
        path = tmp_path / "val" / label / "a.JPEG"
        Image.fromarray(patterned_image(96)).resize((120, 96)).save(path)
        files.append((str(path), label))
    out = tmp_path / "c"
    generate_folder(
        files, out, dataset="toy", seed=0, profile="imagenet", crop=64, workers=1, corruptions=("fog",)
    )
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.JPEG"))
    assert written == [f"fog/{s}/{label}/a.JPEG" for s in SEVERITIES for label in ("n01", "n02")]
    assert Image.open(out / "fog" / "5" / "n02" / "a.JPEG").size == (64, 64)
    assert folder_problems(out, 2, ("fog",)) == []
