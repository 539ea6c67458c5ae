"""Common corruptions (Hendrycks & Dietterich, ICLR 2019) for QGen §4.3 and App. C (Tables 4-6).

The benchmark's 15 corruptions in its four groups, five severities each. Names are those of the official
files (``<name>.npy`` in CIFAR-10-C/100-C, ``<name>/<severity>/`` in ImageNet-C). Modules:

* :mod:`qgen.corruptions.transforms`: the corruptions themselves, CIFAR-C and ImageNet-C parameters;
* :mod:`qgen.corruptions.layout`: the two official on-disk layouts, their checks and their readers;
* :mod:`qgen.corruptions.official`: download, checksum, safe extraction of the official archives;
* :mod:`qgen.corruptions.generate`: ``qgen corrupt``, -C style data for any dataset;
* :mod:`qgen.corruptions.evaluate`: ``qgen evaluate-corruptions``, loss/accuracy/gap per split.
"""

from __future__ import annotations

GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
CORRUPTIONS: tuple[str, ...] = tuple(name for names in GROUPS.values() for name in names)
# The four held-out corruptions shipped in the official archives; extracted, never evaluated.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
# How the paper's tables print them (its "Defocus Noise" and "Glass Blue" are typos for these).
LABELS: dict[str, str] = {
    "gaussian_noise": "Gaussian Noise",
    "shot_noise": "Shot Noise",
    "impulse_noise": "Impulse Noise",
    "defocus_blur": "Defocus Blur",
    "glass_blur": "Glass Blur",
    "motion_blur": "Motion Blur",
    "zoom_blur": "Zoom Blur",
    "snow": "Snow",
    "frost": "Frost",
    "fog": "Fog",
    "brightness": "Brightness",
    "contrast": "Contrast",
    "elastic_transform": "Elastic",
    "pixelate": "Pixelate",
    "jpeg_compression": "JPEG",
}
