"""The 15 benchmark corruptions of Hendrycks & Dietterich (2019), written for this project.

Every corruption maps a ``uint8`` image of shape ``(H, W, 3)`` to a ``uint8`` image of the same shape:

    corrupt(image, "fog", severity=3, rng=np.random.default_rng(0), profile="cifar")

Two parameter *profiles* hold the severity constants:

* ``"cifar"``: those of ``make_cifar_c.py`` (hendrycks/robustness), which generated CIFAR-10-C and
  CIFAR-100-C from the 32x32 test images. They are milder than ImageNet-C's (e.g. Gaussian noise
  sigma .04-.10 instead of .08-.38), so the ``imagecorruptions`` packages, which carry the ImageNet
  constants, do not reproduce CIFAR-C.
* ``"imagenet"``: those of ``make_imagenet_c.py`` for 224x224 crops.

The algorithms follow the reference scripts (the same formulas and the same order of random draws per
image) with these differences, recorded in docs/decisions.md: randomness comes from the ``rng`` passed
in, so output is a pure function of ``(image, severity, rng state)``; motion blur (ImageMagick's
``MotionBlurImage`` in the reference) is a one-sided Gaussian-weighted sum of shifted copies, as in
``imagecorruptions``; frost blends procedurally generated ice textures (:func:`frost_texture`), since
the reference's frost photographs are not part of this project; all arithmetic is float32 or float64
numpy/scipy. The result is "-C style" data, not the official files, which used an unseeded RNG and
ImageMagick and cannot be reproduced bit for bit.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage, signal

from qgen.corruptions import CORRUPTIONS, SEVERITIES

Array = np.ndarray


@dataclass(frozen=True)
class Profile:
    """Severity constants (index ``severity - 1``) of every corruption, for one image scale."""

    name: str
    gaussian_noise: tuple[float, ...]  # noise std on [0, 1] pixels
    shot_noise: tuple[float, ...]  # Poisson rate per unit intensity
    impulse_noise: tuple[float, ...]  # fraction of salt-and-pepper values
    defocus_blur: tuple[tuple[float, float], ...]  # (disk radius, anti-alias sigma)
    glass_blur: tuple[tuple[float, int, int], ...]  # (sigma, max shift, iterations)
    motion_blur: tuple[tuple[int, float], ...]  # (radius, sigma)
    zoom_blur: tuple[tuple[float, float, float], ...]  # zoom factors np.arange(start, stop, step)
    snow: tuple[tuple[float, float, float, float, int, float, float], ...]
    frost: tuple[tuple[float, float], ...]  # (image weight, frost weight)
    frost_scale: float  # frost texture pixels per generated texture pixel
    fog: tuple[tuple[float, float], ...]  # (fog amount, fractal wibble decay)
    brightness: tuple[float, ...]  # added to HSV value
    contrast: tuple[float, ...]  # factor towards the per-channel mean
    elastic_transform: tuple[tuple[float, float, float], ...]  # (alpha, sigma, affine shift) in pixels
    pixelate: tuple[float, ...]  # BOX down-scale factor
    jpeg_compression: tuple[int, ...]  # JPEG quality


def _times(scale: float, rows: tuple[tuple[float, float, float], ...]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(scale * v for v in row) for row in rows)


PROFILES: dict[str, Profile] = {
    "cifar": Profile(
        name="cifar",
        gaussian_noise=(0.04, 0.06, 0.08, 0.09, 0.10),
        shot_noise=(500, 250, 100, 75, 50),
        impulse_noise=(0.01, 0.02, 0.03, 0.05, 0.07),
        defocus_blur=((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        glass_blur=((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        motion_blur=((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        zoom_blur=((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
        snow=(
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
        frost=((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        frost_scale=0.2,  # the reference shrinks its frost photographs to a fifth for 32x32 images
        fog=((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        brightness=(0.05, 0.1, 0.15, 0.2, 0.3),
        contrast=(0.75, 0.5, 0.4, 0.3, 0.15),
        elastic_transform=_times(
            32, ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
        ),
        pixelate=(0.95, 0.9, 0.85, 0.75, 0.65),
        jpeg_compression=(80, 65, 58, 50, 40),
    ),
    "imagenet": Profile(
        name="imagenet",
        gaussian_noise=(0.08, 0.12, 0.18, 0.26, 0.38),
        shot_noise=(60, 25, 12, 5, 3),
        impulse_noise=(0.03, 0.06, 0.09, 0.17, 0.27),
        defocus_blur=((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        glass_blur=((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        motion_blur=((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        zoom_blur=((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
        snow=(
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ),
        frost=((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        frost_scale=1.0,
        fog=((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
        brightness=(0.1, 0.2, 0.3, 0.4, 0.5),
        contrast=(0.4, 0.3, 0.2, 0.1, 0.05),
        # The reference scales by 244 (a typo for 224, kept: these constants define ImageNet-C).
        elastic_transform=_times(
            244, ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02))
        ),
        pixelate=(0.6, 0.5, 0.4, 0.3, 0.25),
        jpeg_compression=(25, 18, 15, 10, 7),
    ),
}
# Image side -> profile, for the sizes of the registered datasets (32x32 sets and 224x224 ImageNet crops).
PROFILE_OF_SIZE = {32: "cifar", 224: "imagenet"}


def profile_for_size(size: int) -> str:
    """The parameter profile of images of side ``size``; an unknown size is an error naming the choices."""
    try:
        return PROFILE_OF_SIZE[size]
    except KeyError:
        raise ValueError(
            f"no corruption parameters for {size}x{size} images; known sizes {sorted(PROFILE_OF_SIZE)} "
            f"(pass a profile, one of {sorted(PROFILES)}, explicitly)"
        ) from None


# --------------------------------------------------------------------------------------------------------
# Helpers


def _unit(image: Array) -> Array:
    """uint8 pixels as float32 in [0, 1]."""
    return image.astype(np.float32) / np.float32(255)


def _scaled(x: Array) -> Array:
    """[0, 1] values clipped and scaled back to [0, 255] (still float; :func:`corrupt` truncates)."""
    return np.clip(x, 0, 1) * 255


def _gaussian_kernel(size: int, sigma: float) -> Array:
    """OpenCV's ``getGaussianKernel(size, sigma)``: sampled, normalized ``exp(-i^2 / (2 sigma^2))``."""
    i = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(i**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _disk(radius: float, alias_blur: float) -> Array:
    """An anti-aliased disk kernel: the reference's ``disk`` (a 17x17 grid up to radius 8, wider beyond)."""
    half = 8 if radius <= 8 else math.ceil(radius)
    grid = np.arange(-half, half + 1)
    disk = (grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2).astype(np.float32)
    disk /= disk.sum()
    smooth = _gaussian_kernel(3 if radius <= 8 else 5, alias_blur)
    for axis in (0, 1):
        disk = ndimage.correlate1d(disk, smooth, axis=axis, mode="mirror")
    return disk


def _filter2d(x: Array, kernel: Array) -> Array:
    """Correlate every channel with ``kernel`` (borders mirrored without repeating the edge, as cv2)."""
    kh, kw = kernel.shape
    padded = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="reflect")
    return signal.fftconvolve(padded, kernel[::-1, ::-1, None], mode="valid", axes=(0, 1))


def _blur(x: Array, sigma: float) -> Array:
    """skimage's ``gaussian(x, sigma, channel_axis=-1)``: edge-replicating, truncated at 4 sigma."""
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)


def _motion_blur(x: Array, radius: int, sigma: float, angle: float) -> Array:
    """A one-sided motion blur of ``x`` (2-D or HxWxC) along ``angle`` degrees.

    ``out[p] = sum_i w_i x[p + round(i * (sin, cos)(angle))]`` for ``i = 0 .. 2*radius`` with Gaussian
    weights ``w_i ~ exp(-i^2 / (2 sigma^2))`` summing to one, borders replicated: the kernel of
    ImageMagick's ``MotionBlurImage`` that the reference calls.
    """
    width = 2 * radius + 1
    weights = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    theta = math.radians(angle)
    steps = np.arange(width)
    dy = np.ceil(steps * math.sin(theta) - 0.5).astype(int)
    dx = np.ceil(steps * math.cos(theta) - 0.5).astype(int)
    h, w = x.shape[:2]
    inside = (np.abs(dy) < h) & (np.abs(dx) < w)
    pad = int(max(np.abs(dy[inside]).max(), np.abs(dx[inside]).max()))
    padding = ((pad, pad), (pad, pad)) + ((0, 0),) * (x.ndim - 2)
    padded = np.pad(x, padding, mode="edge")
    out = np.zeros_like(x, dtype=np.float32)
    for weight, sy, sx in zip(weights[inside], dy[inside], dx[inside], strict=True):
        out += np.float32(weight) * padded[pad + sy : pad + sy + h, pad + sx : pad + sx + w]
    return out


@functools.lru_cache(maxsize=512)
def _zoom_plan(n: int, factor: float) -> tuple[Array, Array, Array]:
    """Linear interpolation indices/weights of the reference's ``clipped_zoom`` along one axis of length n.

    The central ``ceil(n / factor)`` pixels are zoomed by ``factor`` as ``scipy.ndimage.zoom(order=1)``
    does (output length ``round(ch * factor)``, corners aligned) and the central ``n`` outputs kept.
    """
    ch = math.ceil(n / factor)
    top = (n - ch) // 2
    out = round(ch * factor)
    trim = (out - n) // 2
    coords = top + np.arange(trim, trim + n) * ((ch - 1) / (out - 1) if out > 1 else 0.0)
    low = np.floor(coords).astype(int)
    high = np.minimum(low + 1, top + ch - 1)
    return low, high, (coords - low).astype(np.float32)


def _clipped_zoom(x: Array, factor: float) -> Array:
    """Zoom into the centre of ``x`` (HxW or HxWxC) by ``factor``, keeping the shape."""
    low, high, frac = _zoom_plan(x.shape[0], factor)
    f = frac.reshape((-1,) + (1,) * (x.ndim - 1))
    x = x[low] * (1 - f) + x[high] * f
    low, high, frac = _zoom_plan(x.shape[1], factor)
    f = frac.reshape((1, -1) + (1,) * (x.ndim - 2))
    return x[:, low] * (1 - f) + x[:, high] * f


def plasma_fractal(size: int, wibble_decay: float, rng: np.random.Generator) -> Array:
    """A ``size x size`` diamond-square height map in [0, 1] (``size`` a power of two), the fog layer.

    Starting from a zero corner, each level sets square centres and then diamond centres to the mean of
    their four neighbours (wrapping around) plus ``wibble * U(-wibble, wibble)``; ``wibble`` starts at 100
    and is divided by ``wibble_decay`` per level, as in the reference.
    """
    if size < 2 or size & (size - 1):
        raise ValueError(f"plasma_fractal size must be a power of two >= 2, got {size}")
    field = np.zeros((size, size))
    step, wibble = size, 100.0

    def noisy_mean(total: Array) -> Array:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = field[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square += np.roll(square, -1, axis=1)
        field[half:size:step, half:size:step] = noisy_mean(square)
        centres = field[half:size:step, half:size:step]
        corners = field[0:size:step, 0:size:step]
        field[0:size:step, half:size:step] = noisy_mean(
            centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        )
        field[half:size:step, 0:size:step] = noisy_mean(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        )
        step //= 2
        wibble /= wibble_decay
    field -= field.min()
    return field / field.max()


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


# Frost: five fixed textures stand in for the reference's five frost photographs (frost1..5; its
# `randint(5)` never picks the sixth). Their size, mean brightness and blue tint follow those photos.
FROST_TEXTURES = 5
_FROST_SHAPE = (432, 648)  # about the photographs' size
_FROST_SEED = 20190506
_FROST_LEVELS = (0.55, 0.8, 0.62, 0.45, 0.35)  # mean brightness of each texture
_FROST_TINT = np.array([0.82, 0.92, 1.0], dtype=np.float32)


@functools.lru_cache(maxsize=16)
def frost_texture(index: int, height: int, width: int) -> Array:
    """Procedural frost texture ``index`` (0..4), uint8 ``(height, width, 3)``, identical on every call.

    Cloudy plasma fractal (the frosted film) plus ice needles: straight streaks with side branches at
    +-60 degrees (hexagonal ice), drawn with a fixed seed per texture, slightly blurred, tinted blue.
    """
    if not 0 <= index < FROST_TEXTURES:
        raise ValueError(f"frost texture index {index} out of range 0..{FROST_TEXTURES - 1}")
    rng = np.random.default_rng([_FROST_SEED, index])
    side = _next_power_of_two(max(height, width))
    film = plasma_fractal(side, 1.8, rng)[:height, :width]
    count = int(height * width / 900)
    starts = rng.uniform((0, 0), (height, width), size=(count, 2))
    angles = rng.uniform(0, 2 * np.pi, count)
    lengths = rng.uniform(0.02, 0.12, count) * max(height, width)
    # Each crystal: a trunk and, at three points along it, a pair of branches 0.35x as long at +-60 degrees.
    at = rng.uniform(0.2, 0.9, (count, 3)) * lengths[:, None]
    trunk_dir = np.stack([np.sin(angles), np.cos(angles)], axis=1)
    branch_origins = starts[:, None, :] + at[..., None] * trunk_dir[:, None, :]
    origins = [starts]
    directions = [angles]
    spans = [lengths]
    for turn in (np.pi / 3, -np.pi / 3):
        origins.append(branch_origins.reshape(-1, 2))
        directions.append(np.repeat(angles + turn, 3))
        spans.append(np.repeat(0.35 * lengths, 3))
    origin, direction, span = (np.concatenate(parts) for parts in (origins, directions, spans))
    crystal = rng.uniform(0.3, 1.0, count)  # one brightness per crystal
    brightness = np.concatenate([crystal, np.repeat(crystal, 3), np.repeat(crystal, 3)])
    t = np.arange(0, span.max() + 0.5, 0.5)
    inside = t[None, :] <= span[:, None]
    ys = origin[:, :1] + t[None, :] * np.sin(direction)[:, None]
    xs = origin[:, 1:] + t[None, :] * np.cos(direction)[:, None]
    ys, xs = ys.round().astype(int), xs.round().astype(int)
    keep = inside & (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    weight = np.broadcast_to(brightness[:, None], keep.shape)
    needles = np.zeros((height, width))
    np.add.at(needles, (ys[keep], xs[keep]), weight[keep])
    needles = ndimage.gaussian_filter(np.minimum(needles, 1.5), 0.8)
    level = _FROST_LEVELS[index]
    grey = np.clip(level * (0.6 + 0.8 * film) + 0.9 * needles / max(needles.max(), 1e-9) - 0.25, 0, 1)
    return np.round(255 * grey[..., None] * _FROST_TINT).astype(np.uint8)


def _frost_source(index: int, scale: float, height: int, width: int) -> Array:
    """Frost texture ``index`` scaled by ``scale`` and at least 1.5x the image size on each side."""
    base_h = max(_FROST_SHAPE[0], math.ceil(1.5 * height / scale))
    base_w = max(_FROST_SHAPE[1], math.ceil(1.5 * width / scale))
    texture = frost_texture(index, base_h, base_w)
    if scale == 1.0:
        return texture
    size = (round(base_w * scale), round(base_h * scale))
    return np.asarray(Image.fromarray(texture).resize(size, Image.BILINEAR))


def _bilinear(x: Array, ys: Array, xs: Array, mode: str) -> Array:
    """Sample HxWxC ``x`` at float coordinates by bilinear interpolation.

    ``mode`` extends the image: ``"mirror"`` (d c b | a b c d, cv2's BORDER_REFLECT_101) or
    ``"reflect"`` (b a | a b c d, scipy's ``reflect``).
    """
    h, w = x.shape[:2]
    y0, x0 = np.floor(ys), np.floor(xs)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0, x0 = y0.astype(int), x0.astype(int)
    rows = [_extend(y0, h, mode), _extend(y0 + 1, h, mode)]
    cols = [_extend(x0, w, mode), _extend(x0 + 1, w, mode)]
    top = x[rows[0], cols[0]] * (1 - fx) + x[rows[0], cols[1]] * fx
    bottom = x[rows[1], cols[0]] * (1 - fx) + x[rows[1], cols[1]] * fx
    return top * (1 - fy) + bottom * fy


def _extend(index: Array, n: int, mode: str) -> Array:
    if n == 1:
        return np.zeros_like(index)
    if mode == "mirror":
        period = 2 * n - 2
        index = np.abs(index) % period
        return np.where(index >= n, period - index, index)
    period = 2 * n
    index = index % period
    return np.where(index >= n, period - 1 - index, index)


def _affine_from_points(src: Array, dst: Array) -> Array:
    """The 2x3 matrix ``A`` with ``A @ [x, y, 1] = dst`` for three point pairs (cv2.getAffineTransform)."""
    design = np.hstack([src, np.ones((3, 1))])
    return np.linalg.solve(design, dst).T


# --------------------------------------------------------------------------------------------------------
# The corruptions: (image uint8 HxWx3, severity constants, rng) -> float image on the 0..255 scale


def gaussian_noise(image: Array, c: float, rng: np.random.Generator) -> Array:
    x = _unit(image)
    return _scaled(x + np.float32(c) * rng.standard_normal(x.shape, dtype=np.float32))


def shot_noise(image: Array, c: float, rng: np.random.Generator) -> Array:
    return _scaled(rng.poisson(image / 255.0 * c) / c)


def impulse_noise(image: Array, c: float, rng: np.random.Generator) -> Array:
    """Salt and pepper on a fraction ``c`` of all values (pixels x channels), half each (skimage s&p)."""
    x = _unit(image)
    u = rng.random(x.shape, dtype=np.float32)
    x[u < c / 2] = 1
    x[(u >= c / 2) & (u < c)] = 0
    return _scaled(x)


def defocus_blur(image: Array, c: tuple[float, float], rng: np.random.Generator) -> Array:
    return _scaled(_filter2d(_unit(image), _disk(*c)))


def glass_blur(image: Array, c: tuple[float, int, int], rng: np.random.Generator) -> Array:
    """Blur, then swap every interior pixel with a random neighbour (in reverse raster order), blur again."""
    sigma, delta, iterations = c
    x = (_blur(_unit(image), sigma) * 255).astype(np.uint8)
    h, w = x.shape[:2]
    rows = np.arange(h - delta, delta, -1)
    cols = np.arange(w - delta, delta, -1)
    shifts = rng.integers(-delta, delta, size=(iterations, len(rows), len(cols), 2))
    here = np.broadcast_to(rows[:, None] * w + cols[None, :], shifts.shape[:3])
    there = here + shifts[..., 1] * w + shifts[..., 0]
    order = list(range(h * w))
    for p, q in zip(here.ravel().tolist(), there.ravel().tolist(), strict=True):
        order[p], order[q] = order[q], order[p]
    shuffled = x.reshape(h * w, -1)[order].reshape(x.shape)
    return _scaled(_blur(_unit(shuffled), sigma))


def motion_blur(image: Array, c: tuple[int, float], rng: np.random.Generator) -> Array:
    return _scaled(_motion_blur(_unit(image), c[0], c[1], rng.uniform(-45, 45)))


def zoom_blur(image: Array, c: tuple[float, float, float], rng: np.random.Generator) -> Array:
    """The mean of the image and its centre zoomed by each factor of ``np.arange(*c)``."""
    x = _unit(image)
    factors = np.arange(*c)
    total = x.copy()
    for factor in factors:
        total += _clipped_zoom(x, float(factor))
    return _scaled(total / (len(factors) + 1))


def snow(image: Array, c: tuple[float, ...], rng: np.random.Generator) -> Array:
    """Zoomed, thresholded Gaussian flakes, motion-blurred downwards, added twice (once rotated 180 deg)."""
    loc, scale, zoom, threshold, radius, sigma, keep = c
    x = _unit(image)
    flakes = _clipped_zoom(rng.normal(loc, scale, size=x.shape[:2]), zoom)
    flakes[flakes < threshold] = 0
    flakes = (np.clip(flakes, 0, 1) * 255).astype(np.uint8) / np.float32(255)
    flakes = _motion_blur(flakes.astype(np.float32), int(radius), sigma, rng.uniform(-135, -45))
    flakes = (np.round(flakes * 255) / 255)[..., None]
    grey = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    x = keep * x + (1 - keep) * np.maximum(x, grey * 1.5 + 0.5)
    return _scaled(x + flakes + np.rot90(flakes, k=2))


def make_frost(profile: Profile) -> Callable[[Array, tuple[float, float], np.random.Generator], Array]:
    def frost(image: Array, c: tuple[float, float], rng: np.random.Generator) -> Array:
        """A random crop of one of the frost textures, blended over the image."""
        h, w = image.shape[:2]
        texture = _frost_source(int(rng.integers(FROST_TEXTURES)), profile.frost_scale, h, w)
        top = rng.integers(0, texture.shape[0] - h)
        left = rng.integers(0, texture.shape[1] - w)
        crop = texture[top : top + h, left : left + w]
        return np.clip(c[0] * image.astype(np.float32) + c[1] * crop.astype(np.float32), 0, 255)

    return frost


def fog(image: Array, c: tuple[float, float], rng: np.random.Generator) -> Array:
    x = image / 255.0
    h, w = x.shape[:2]
    brightest = x.max()
    layer = plasma_fractal(_next_power_of_two(max(h, w)), c[1], rng)[:h, :w]
    x = x + c[0] * layer[..., None]
    return _scaled(x * brightest / (brightest + c[0]))


def brightness(image: Array, c: float, rng: np.random.Generator) -> Array:
    """Add ``c`` to the HSV value; hue and saturation kept, so RGB scales by ``V' / V`` (grey where V=0)."""
    x = _unit(image)
    value = x.max(axis=2, keepdims=True)
    brighter = np.minimum(value + np.float32(c), 1)
    scaled = x * (brighter / np.where(value > 0, value, 1))
    return _scaled(np.where(value > 0, scaled, brighter))


def contrast(image: Array, c: float, rng: np.random.Generator) -> Array:
    x = _unit(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _scaled((x - means) * np.float32(c) + means)


def elastic_transform(image: Array, c: tuple[float, float, float], rng: np.random.Generator) -> Array:
    """A random affine warp of the central triangle, then a smooth random displacement field."""
    alpha, sigma, shift = c
    x = _unit(image)
    h, w = x.shape[:2]
    centre = np.float32([h, w]) // 2
    third = min(h, w) // 3
    src = np.float32([centre + third, [centre[0] + third, centre[1] - third], centre - third])
    dst = src + rng.uniform(-shift, shift, size=src.shape).astype(np.float32)
    forward = np.vstack([_affine_from_points(src, dst), [0, 0, 1]])
    inverse = np.linalg.inv(forward)
    grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float32)
    src_x = inverse[0, 0] * grid_x + inverse[0, 1] * grid_y + inverse[0, 2]
    src_y = inverse[1, 0] * grid_x + inverse[1, 1] * grid_y + inverse[1, 2]
    x = _bilinear(x, src_y, src_x, "mirror")
    dx, dy = (
        ndimage.gaussian_filter(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha
        for _ in range(2)
    )
    return _scaled(_bilinear(x, grid_y + dy, grid_x + dx, "reflect"))


def pixelate(image: Array, c: float, rng: np.random.Generator) -> Array:
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((int(w * c), int(h * c)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX))


def jpeg_compression(image: Array, c: int, rng: np.random.Generator) -> Array:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=c)
    return np.asarray(Image.open(buffer))


_FIXED = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
# Corruptions whose output does not depend on the rng.
DETERMINISTIC = frozenset(
    {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
)


def _function(name: str, profile: Profile) -> Callable[[Array, Any, np.random.Generator], Array]:
    return make_frost(profile) if name == "frost" else _FIXED[name]


def corrupt(
    image: Array, name: str, severity: int, rng: np.random.Generator, profile: str = "cifar"
) -> Array:
    """``image`` (uint8, HxWx3) corrupted by ``name`` at ``severity`` (1..5) with ``profile``'s constants.

    Random draws come from ``rng`` only. Float results are truncated to uint8, as the reference's
    ``np.uint8(...)`` does.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if profile not in PROFILES:
        raise ValueError(f"unknown corruption profile {profile!r}; expected one of {sorted(PROFILES)}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    params = PROFILES[profile]
    c = getattr(params, name)[severity - 1]
    out = _function(name, params)(image, c, rng)
    return np.clip(out, 0, 255).astype(np.uint8)
