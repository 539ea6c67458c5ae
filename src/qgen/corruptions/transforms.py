"""The 15 benchmark corruptions of Hendrycks & Dietterich (2019), and their registry.

Every corruption maps a ``uint8`` image of shape ``(H, W, 3)`` to a ``uint8`` image of the same shape:

    corrupt(image, "fog", severity=3, rng=np.random.default_rng(0), profile="cifar")

A corruption is one function ``(image, c, rng) -> float image on the 0..255 scale`` registered with
:func:`register`, which holds its group, its label as the paper prints it, whether it draws random
numbers, and its five severity constants ``c`` for each of two *profiles*:

* ``"cifar"``: those of ``make_cifar_c.py`` (hendrycks/robustness), which generated CIFAR-10-C and
  CIFAR-100-C from the 32x32 test images. They are milder than ImageNet-C's (e.g. Gaussian noise
  sigma .04-.10 instead of .08-.38), so the ``imagecorruptions`` packages, which carry the ImageNet
  constants, do not reproduce CIFAR-C.
* ``"imagenet"``: those of ``make_imagenet_c.py`` for 224x224 crops.

The algorithms follow the reference scripts (the same formulas and the same order of random draws per
image) with these differences, recorded in docs/decisions.md: randomness comes from the ``rng`` passed
in, so output is a pure function of ``(image, severity, rng state)``; motion blur (ImageMagick's
``MotionBlurImage`` in the reference) is a one-sided Gaussian-weighted sum of shifted copies, as in
``imagecorruptions``; resampling is scipy's or our own instead of OpenCV's. Frost blends the
reference's own frost photographs, shipped under ``frost/`` (see ``frost/NOTICE``). The result is
"-C style" data, not the official files, which used an unseeded RNG and ImageMagick and cannot be
reproduced bit for bit.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import numpy as np
import scipy.fft
from PIL import Image
from scipy import ndimage

from qgen.registry import Registry

Array = np.ndarray
CorruptionFunction = Callable[[Array, Any, np.random.Generator], Array]

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
PROFILES: tuple[str, ...] = ("cifar", "imagenet")
# The benchmark's four groups, in the order of its tables.
GROUP_ORDER: tuple[str, ...] = ("noise", "blur", "weather", "digital")
# Image side -> profile, for the sizes of the registered datasets (32x32 sets and 224x224 ImageNet crops).
PROFILE_OF_SIZE = {32: "cifar", 224: "imagenet"}


def profile_for_size(size: int) -> str:
    """The parameter profile of images of side ``size``; an unknown size is an error naming the choices."""
    try:
        return PROFILE_OF_SIZE[size]
    except KeyError:
        raise ValueError(
            f"no corruption parameters for {size}x{size} images; known sizes {sorted(PROFILE_OF_SIZE)} "
            f"(pass a profile, one of {list(PROFILES)}, explicitly)"
        ) from None


# --------------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Corruption:
    """A registered corruption: its function and, per profile, its constants (index ``severity - 1``)."""

    name: str
    group: str
    label: str  # as the paper's tables print it
    deterministic: bool  # output independent of the rng
    constants: Mapping[str, tuple[Any, ...]]
    function: CorruptionFunction

    def __call__(self, image: Array, severity: int, rng: np.random.Generator, profile: str) -> Array:
        """The float result (0..255 scale) of the function with ``profile``'s constants at ``severity``."""
        return self.function(image, self.constants[profile][severity - 1], rng)


CORRUPTION_REGISTRY: Registry[Array] = Registry("corruption")


def register(
    name: str,
    *,
    group: str,
    label: str,
    cifar: tuple[Any, ...],
    imagenet: tuple[Any, ...],
    deterministic: bool = False,
) -> Callable[[CorruptionFunction], CorruptionFunction]:
    """Decorator filing a corruption function under ``name`` with five constants per profile."""
    constants = {"cifar": cifar, "imagenet": imagenet}
    if group not in GROUP_ORDER:
        raise ValueError(f"corruption {name!r}: group {group!r} is not one of {GROUP_ORDER}")
    for profile, values in constants.items():
        if len(values) != len(SEVERITIES):
            raise ValueError(
                f"corruption {name!r}: {len(values)} {profile} constants, expected one per severity "
                f"{SEVERITIES}"
            )

    def add(function: CorruptionFunction) -> CorruptionFunction:
        CORRUPTION_REGISTRY.register(name)(Corruption(name, group, label, deterministic, constants, function))
        return function

    return add


def registered() -> list[Corruption]:
    """Every registered corruption, grouped in :data:`GROUP_ORDER`, in registration order within a group."""
    entries = cast(list[Corruption], CORRUPTION_REGISTRY.entries())
    return [entry for group in GROUP_ORDER for entry in entries if entry.group == group]


def corruption(name: str) -> Corruption:
    """The registration of ``name``; an unknown name is an error listing the known ones."""
    if name not in CORRUPTION_REGISTRY:
        known = ", ".join(entry.name for entry in registered())
        raise ValueError(f"unknown corruption {name!r}; expected one of {known}")
    return cast(Corruption, CORRUPTION_REGISTRY.get(name))


def corrupt(
    image: Array, name: str, severity: int, rng: np.random.Generator, profile: str = "cifar"
) -> Array:
    """``image`` (uint8, HxWx3) corrupted by ``name`` at ``severity`` (1..5) with ``profile``'s constants.

    Random draws come from ``rng`` only. Float results are truncated to uint8, as the reference's
    ``np.uint8(...)`` does.
    """
    entry = corruption(name)
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if profile not in PROFILES:
        raise ValueError(f"unknown corruption profile {profile!r}; expected one of {list(PROFILES)}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    return np.clip(entry(image, severity, rng, profile), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------
# Helpers


def _unit(image: Array) -> Array:
    """uint8 pixels as float32 in [0, 1]."""
    x = image.astype(np.float32)
    x /= np.float32(255)
    return x


def _scaled(x: Array) -> Array:
    """[0, 1] values clipped and scaled back to [0, 255] in place (still float; :func:`corrupt` truncates).

    ``x`` is a temporary of the caller: every corruption passes an array it made.
    """
    np.clip(x, 0, 1, out=x)
    x *= 255
    return x


def _gaussian_kernel(size: int, sigma: float) -> Array:
    """OpenCV's ``getGaussianKernel(size, sigma)``: sampled, normalized ``exp(-i^2 / (2 sigma^2))``."""
    i = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(i**2) / (2 * sigma**2))
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=64)
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


@functools.lru_cache(maxsize=64)
def _disk_spectrum(radius: float, alias_blur: float, shape: tuple[int, int]) -> Array:
    """The real 2-D FFT, at ``shape``, of the flipped disk kernel (correlation as a convolution)."""
    return scipy.fft.rfft2(_disk(radius, alias_blur)[::-1, ::-1], s=shape)


def _defocus(x: Array, radius: float, alias_blur: float) -> Array:
    """Correlate every channel with :func:`_disk` (cv2.filter2D: borders mirrored without the edge).

    By FFT on the mirror-padded image: the circular wrap-around stays within the padding, which is cut.
    """
    h, w = x.shape[:2]
    half = len(_disk(radius, alias_blur)) // 2
    padded = np.pad(x, ((half, half), (half, half), (0, 0)), mode="reflect")
    shape = tuple(scipy.fft.next_fast_len(n, real=True) for n in padded.shape[:2])
    spectrum = scipy.fft.rfft2(padded, s=shape, axes=(0, 1))
    spectrum *= _disk_spectrum(radius, alias_blur, shape)[..., None]
    full = scipy.fft.irfft2(spectrum, s=shape, axes=(0, 1))
    return full[2 * half : 2 * half + h, 2 * half : 2 * half + w]


def _blur(x: Array, sigma: float) -> Array:
    """skimage's ``gaussian(x, sigma, channel_axis=-1)``: edge-replicating, truncated at 4 sigma."""
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)


def _smooth_reflect(field: Array, sigma: float, truncate: float) -> Array:
    """``ndimage.gaussian_filter(field, sigma, mode="reflect", truncate=truncate)`` of a 2-D field.

    Half-sample reflection (d c b a | a b c d) extends each line to the ``2n``-periodic symmetric signal
    that the type-II DCT diagonalizes, so convolving with the truncated kernel folded onto one period is
    a multiplication of DCT coefficient ``k`` by the kernel's real DFT at frequency ``k / 2n``. Same
    result for any kernel radius, in a time independent of ``sigma`` (ImageNet-C's elastic sigma of
    171 px has a 1025-tap kernel). ``sigma = 0`` leaves the field as it is, as ndimage does.
    """
    if sigma == 0:
        return field
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        n = field.shape[axis]
        folded = np.zeros(2 * n)
        np.add.at(folded, offsets % (2 * n), kernel)
        shape = [1, 1]
        shape[axis] = n
        gain = scipy.fft.rfft(folded)[:n].real.reshape(shape)
        field = scipy.fft.idct(scipy.fft.dct(field, type=2, axis=axis) * gain, type=2, axis=axis)
    return field


def _remap(x: Array, ys: Array, xs: Array, mode: str) -> Array:
    """Bilinear samples of every channel of HxWxC ``x`` at ``(ys, xs)``, borders extended by ``mode``.

    ``scipy.ndimage.map_coordinates(order=1)``, the reference's own resampler for the elastic field
    (``"reflect"``: d c b a | a b c d); ``"mirror"`` (d c b | a b c d) is cv2's BORDER_REFLECT_101.
    """
    coords = np.stack([ys, xs])
    return np.stack(
        [ndimage.map_coordinates(x[..., k], coords, order=1, mode=mode) for k in range(x.shape[2])], axis=-1
    )


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


def shuffle_sources(height: int, width: int, delta: int, shifts: Array) -> Array:
    """Where each pixel's value comes from after the reference's local pixel shuffle (raster indices).

    The reference visits ``h`` in ``range(height - delta, delta, -1)`` and, for each, ``w`` in
    ``range(width - delta, delta, -1)`` and executes ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` with
    ``(h', w') = (h + dy, w + dx)``, ``dx, dy`` from ``shifts[pass, row, column]`` in ``{-delta..delta-1}``.
    On an HxWx3 array the right-hand side holds views, so this is a *copy*, ``x[h, w] <- x[h', w']``, and
    ``x[h', w']`` keeps its value (hendrycks/robustness, numpy/numpy#14428). Sequentially, a pixel reads
    its source's *new* value if the source was visited before it in the pass (a larger raster index
    inside the visited rectangle), so copies cascade; these chains are followed by pointer doubling. For
    ``delta = 1`` every source has a smaller index and nothing cascades.

    ``shifts`` has shape ``(passes, height - 2 delta, width - 2 delta, 2)``; returns ``source`` with
    ``shuffled.reshape(-1, C) == x.reshape(-1, C)[source]``.
    """
    n = height * width
    rows = np.arange(height - delta, delta, -1)
    cols = np.arange(width - delta, delta, -1)
    here = (rows[:, None] * width + cols[None, :]).ravel()
    visited = np.zeros(n, dtype=bool)
    visited[here] = True
    offsets = (shifts[..., 1] * width + shifts[..., 0]).reshape(len(shifts), -1)
    source = np.arange(n)
    for offset in offsets:
        there = here + offset
        pass_source = np.arange(n)  # the pass as if every source were read before the pass changed it
        pass_source[here] = there
        cascades = (there > here) & visited[there]
        if cascades.any():
            end = np.arange(n)  # end[p]: the last pixel of p's cascade, whose source is read unchanged
            cascading = np.flatnonzero(cascades)
            active = here[cascading]
            end[active] = there[cascading]
            while active.size:  # pointer doubling on the pixels whose end still moves
                jumped = end[end[active]]
                moved = jumped != end[active]
                end[active] = jumped
                active = active[moved]
            pass_source = pass_source[end]
        source = source[pass_source]
    return source


def _resize_linear(photo: Array, scale: float) -> Array:
    """``cv2.resize(photo, (0, 0), fx=scale, fy=scale)`` (INTER_LINEAR) of a uint8 HxWxC image.

    OpenCV's geometry: output side ``round(n * scale)``, output pixel ``d`` sampled at
    ``(d + 0.5) / scale - 0.5`` (clamped to the image) with two-tap linear weights, no anti-aliasing.
    For ``scale = 0.2`` every sample point is the integer ``5 d + 2``, so the result is exactly OpenCV's;
    otherwise it is float-weighted and rounded where OpenCV uses 11-bit fixed-point weights.
    """
    if scale == 1.0:
        return photo
    out = photo.astype(np.float64)
    for axis in (0, 1):
        n = photo.shape[axis]
        position = (np.arange(round(n * scale)) + 0.5) * (1.0 / scale) - 0.5
        low = np.clip(np.floor(position), 0, n - 1).astype(int)
        frac = np.where((position < 0) | (low >= n - 1), 0.0, position - np.floor(position))
        high = np.minimum(low + 1, n - 1)
        shape = [1, 1, 1]
        shape[axis] = len(low)
        frac = frac.reshape(shape)
        out = np.take(out, low, axis=axis) * (1 - frac) + np.take(out, high, axis=axis) * frac
    return np.round(out).astype(np.uint8)


# Frost: the reference's photographs (package data, see frost/NOTICE). `randint(5)` in the reference
# never picks the sixth; it ships with them all the same.
FROST_DIR = resources.files(__package__) / "frost"
FROST_PHOTOS = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
FROST_CHOICES = 5


@functools.lru_cache(maxsize=2 * len(FROST_PHOTOS))
def frost_photo(index: int, scale: float) -> Array:
    """Frost photograph ``index`` (0-based) as RGB uint8, shrunk by ``scale`` as the reference does."""
    path = FROST_DIR / FROST_PHOTOS[index]
    try:
        with resources.as_file(path) as file, Image.open(file) as photo:
            rgb = np.asarray(photo.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"frost photograph {path} is missing; it is package data of qgen "
            f"(src/qgen/corruptions/frost/): restore it from git or reinstall qgen"
        ) from None
    return _resize_linear(rgb, scale)


def _box_upsample_index(small: int, large: int) -> Array:
    """Source pixel of each output pixel when PIL's BOX filter enlarges ``small`` pixels to ``large``.

    Enlarging, the box (support 1/2 input pixel) around output centre ``(i + 1/2) small / large`` covers
    exactly one input pixel, ``floor`` of that centre, with weight 1: a pure gather.
    """
    return np.minimum(np.floor((np.arange(large) + 0.5) * (small / large)).astype(int), small - 1)


# --------------------------------------------------------------------------------------------------------
# The corruptions: (image uint8 HxWx3, one severity's constants, rng) -> float image on the 0..255 scale.
# Registration order within a group is the order of the benchmark's tables.


@register(
    "gaussian_noise",
    group="noise",
    label="Gaussian Noise",
    cifar=(0.04, 0.06, 0.08, 0.09, 0.10),  # noise std on [0, 1] pixels
    imagenet=(0.08, 0.12, 0.18, 0.26, 0.38),
)
def gaussian_noise(image: Array, c: float, rng: np.random.Generator) -> Array:
    x = _unit(image)
    return _scaled(x + np.float32(c) * rng.standard_normal(x.shape, dtype=np.float32))


@register(
    "shot_noise",
    group="noise",
    label="Shot Noise",
    cifar=(500, 250, 100, 75, 50),  # Poisson rate per unit intensity
    imagenet=(60, 25, 12, 5, 3),
)
def shot_noise(image: Array, c: float, rng: np.random.Generator) -> Array:
    return _scaled(rng.poisson(image / 255.0 * c) / c)


@register(
    "impulse_noise",
    group="noise",
    label="Impulse Noise",
    cifar=(0.01, 0.02, 0.03, 0.05, 0.07),  # fraction of salt-and-pepper values
    imagenet=(0.03, 0.06, 0.09, 0.17, 0.27),
)
def impulse_noise(image: Array, c: float, rng: np.random.Generator) -> Array:
    """Salt and pepper on a fraction ``c`` of all values (pixels x channels), half each (skimage s&p)."""
    x = _unit(image)
    u = rng.random(x.shape, dtype=np.float32)
    x[u < c / 2] = 1
    x[(u >= c / 2) & (u < c)] = 0
    return _scaled(x)


@register(
    "defocus_blur",
    group="blur",
    label="Defocus Blur",
    cifar=((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # (disk radius, anti-alias sigma)
    imagenet=((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    deterministic=True,
)
def defocus_blur(image: Array, c: tuple[float, float], rng: np.random.Generator) -> Array:
    return _scaled(_defocus(_unit(image), *c))


@register(
    "glass_blur",
    group="blur",
    label="Glass Blur",
    cifar=((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # (sigma, delta, passes)
    imagenet=((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
)
def glass_blur(image: Array, c: tuple[float, int, int], rng: np.random.Generator) -> Array:
    """Blur, truncate to uint8, the reference's local pixel copy (:func:`shuffle_sources`), blur again."""
    sigma, delta, passes = c
    x = (_blur(image / 255.0, sigma) * 255).astype(np.uint8)
    h, w = x.shape[:2]
    shifts = rng.integers(-delta, delta, size=(passes, h - 2 * delta, w - 2 * delta, 2))
    shuffled = x.reshape(h * w, -1)[shuffle_sources(h, w, delta, shifts)].reshape(x.shape)
    return _scaled(_blur(shuffled / 255.0, sigma))


@register(
    "motion_blur",
    group="blur",
    label="Motion Blur",
    cifar=((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),  # (radius, sigma)
    imagenet=((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
)
def motion_blur(image: Array, c: tuple[int, float], rng: np.random.Generator) -> Array:
    """Rounded to whole levels: the reference reads ImageMagick's 8-bit result back (no truncation)."""
    return np.round(_scaled(_motion_blur(_unit(image), c[0], c[1], rng.uniform(-45, 45))))


@register(
    "zoom_blur",
    group="blur",
    label="Zoom Blur",
    # zoom factors np.arange(start, stop, step)
    cifar=((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
    imagenet=((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
    deterministic=True,
)
def zoom_blur(image: Array, c: tuple[float, float, float], rng: np.random.Generator) -> Array:
    """The mean of the image and its centre zoomed by each factor of ``np.arange(*c)``."""
    x = _unit(image)
    factors = np.arange(*c)
    total = x.copy()
    for factor in factors:
        total += _clipped_zoom(x, float(factor))
    return _scaled(total / (len(factors) + 1))


@register(
    "snow",
    group="weather",
    label="Snow",
    # (flake mean, flake std, zoom, threshold, blur radius, blur sigma, image weight)
    cifar=(
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    imagenet=(
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
)
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


@register(
    "frost",
    group="weather",
    label="Frost",
    # (image weight, frost weight, photograph scale): CIFAR-C shrinks the photographs to a fifth
    cifar=((1, 0.2, 0.2), (1, 0.3, 0.2), (0.9, 0.4, 0.2), (0.85, 0.4, 0.2), (0.75, 0.45, 0.2)),
    imagenet=((1, 0.4, 1.0), (0.8, 0.6, 1.0), (0.7, 0.7, 1.0), (0.65, 0.7, 1.0), (0.6, 0.75, 1.0)),
)
def frost(image: Array, c: tuple[float, float, float], rng: np.random.Generator) -> Array:
    """A random crop of one of the first five frost photographs blended over the image, in float64.

    As the reference: ``randint(5)`` picks the photograph, ``randint(0, H_f - H)`` and
    ``randint(0, W_f - W)`` the crop's corner, then ``clip(c0 x + c1 crop, 0, 255)``.
    """
    image_weight, frost_weight, scale = c
    h, w = image.shape[:2]
    index = int(rng.integers(FROST_CHOICES))
    photo = frost_photo(index, scale)
    if photo.shape[0] <= h or photo.shape[1] <= w:
        raise ValueError(
            f"frost photograph {FROST_PHOTOS[index]} is {photo.shape[0]}x{photo.shape[1]} at scale {scale}, "
            f"too small to crop a {h}x{w} image; use the profile made for this image size"
        )
    top = rng.integers(0, photo.shape[0] - h)
    left = rng.integers(0, photo.shape[1] - w)
    crop = photo[top : top + h, left : left + w]
    return np.clip(image_weight * image.astype(np.float64) + frost_weight * crop, 0, 255)


@register(
    "fog",
    group="weather",
    label="Fog",
    cifar=((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # (fog amount, fractal wibble decay)
    imagenet=((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
)
def fog(image: Array, c: tuple[float, float], rng: np.random.Generator) -> Array:
    x = image / 255.0
    h, w = x.shape[:2]
    brightest = x.max()
    layer = plasma_fractal(_next_power_of_two(max(h, w)), c[1], rng)[:h, :w]
    x += c[0] * layer[..., None]
    x *= brightest  # the reference's x * max / (max + c0), in place
    x /= brightest + c[0]
    return _scaled(x)


@register(
    "brightness",
    group="weather",
    label="Brightness",
    cifar=(0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    imagenet=(0.1, 0.2, 0.3, 0.4, 0.5),
    deterministic=True,
)
def brightness(image: Array, c: float, rng: np.random.Generator) -> Array:
    """Add ``c`` to the HSV value; hue and saturation kept, so RGB scales by ``V' / V`` (grey where V=0)."""
    x = _unit(image)
    value = x.max(axis=2, keepdims=True)
    brighter = np.minimum(value + np.float32(c), 1)
    scaled = x * (brighter / np.where(value > 0, value, 1))
    return _scaled(np.where(value > 0, scaled, brighter))


@register(
    "contrast",
    group="digital",
    label="Contrast",
    cifar=(0.75, 0.5, 0.4, 0.3, 0.15),  # factor towards the per-channel mean
    imagenet=(0.4, 0.3, 0.2, 0.1, 0.05),
    deterministic=True,
)
def contrast(image: Array, c: float, rng: np.random.Generator) -> Array:
    x = _unit(image)
    means = x.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
    x -= means
    x *= np.float32(c)
    x += means
    return _scaled(x)


def _times(scale: float, rows: tuple[tuple[float, float, float], ...]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(scale * v for v in row) for row in rows)


@register(
    "elastic_transform",
    group="digital",
    label="Elastic",
    # (alpha, sigma, affine shift) in pixels, as fractions of the image side
    cifar=_times(
        32, ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
    ),
    # The reference scales by 244 (a typo for 224, kept: these constants define ImageNet-C).
    imagenet=_times(
        244, ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02))
    ),
)
def elastic_transform(image: Array, c: tuple[float, float, float], rng: np.random.Generator) -> Array:
    """A random affine warp of the central triangle, then a smooth random displacement field."""
    alpha, sigma, shift = c
    x = _unit(image)
    h, w = x.shape[:2]
    centre = np.float32([h, w]) // 2
    third = min(h, w) // 3
    src = np.float32([centre + third, [centre[0] + third, centre[1] - third], centre - third])
    dst = src + rng.uniform(-shift, shift, size=src.shape).astype(np.float32)
    # cv2.getAffineTransform(src, dst) maps (x, y, 1) to dst; warpAffine samples at its inverse.
    forward = np.vstack([np.linalg.solve(np.hstack([src, np.ones((3, 1))]), dst).T, [0, 0, 1]])
    inverse = np.linalg.inv(forward)
    grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float64)  # the reference samples at float64 points
    src_x = inverse[0, 0] * grid_x + inverse[0, 1] * grid_y + inverse[0, 2]
    src_y = inverse[1, 0] * grid_x + inverse[1, 1] * grid_y + inverse[1, 2]
    x = _remap(x, src_y, src_x, "mirror")
    dx, dy = (
        (_smooth_reflect(rng.uniform(-1, 1, size=(h, w)), sigma, truncate=3) * alpha).astype(np.float32)
        for _ in range(2)
    )
    return _scaled(_remap(x, grid_y + dy, grid_x + dx, "reflect"))


@register(
    "pixelate",
    group="digital",
    label="Pixelate",
    cifar=(0.95, 0.9, 0.85, 0.75, 0.65),  # BOX down-scale factor
    imagenet=(0.6, 0.5, 0.4, 0.3, 0.25),
    deterministic=True,
)
def pixelate(image: Array, c: float, rng: np.random.Generator) -> Array:
    """PIL BOX down to ``int(side * c)`` and BOX back up (the enlargement done as a gather)."""
    h, w = image.shape[:2]
    small = np.asarray(Image.fromarray(image).resize((int(w * c), int(h * c)), Image.BOX))
    rows = _box_upsample_index(small.shape[0], h)
    cols = _box_upsample_index(small.shape[1], w)
    return small.take(rows, axis=0).take(cols, axis=1)


@register(
    "jpeg_compression",
    group="digital",
    label="JPEG",
    cifar=(80, 65, 58, 50, 40),  # JPEG quality
    imagenet=(25, 18, 15, 10, 7),
    deterministic=True,
)
def jpeg_compression(image: Array, c: int, rng: np.random.Generator) -> Array:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=c)
    return np.asarray(Image.open(buffer))
