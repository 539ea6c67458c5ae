"""Common corruptions (Hendrycks & Dietterich, ICLR 2019) for QGen §4.3 and App. C (Tables 4-6).

The benchmark's 15 corruptions in its four groups, five severities each. Names are those of the official
files (``<name>.npy`` in CIFAR-10-C/100-C, ``<name>/<severity>/`` in ImageNet-C). Modules:

* :mod:`qgen.corruptions.transforms`: the corruptions and their registry (one function and one
  registration each, holding group, label and the CIFAR-C and ImageNet-C constants);
* :mod:`qgen.corruptions.layout`: the two official on-disk layouts, their checks and their readers;
* :mod:`qgen.corruptions.official`: download, checksum, safe extraction of the official archives;
* :mod:`qgen.corruptions.generate`: ``qgen corrupt``, -C style data for any dataset;
* :mod:`qgen.corruptions.evaluate`: ``qgen evaluate-corruptions``, loss/accuracy/gap per split.

``GROUPS``, ``CORRUPTIONS`` and ``LABELS`` are views of the registry.
"""

from __future__ import annotations

from qgen.corruptions.transforms import GROUP_ORDER, SEVERITIES, registered

__all__ = ["CORRUPTIONS", "EXTRA_CORRUPTIONS", "GROUPS", "LABELS", "SEVERITIES"]

GROUPS: dict[str, tuple[str, ...]] = {
    group: tuple(entry.name for entry in registered() if entry.group == group) for group in GROUP_ORDER
}
CORRUPTIONS: tuple[str, ...] = tuple(entry.name for entry in registered())
# How the paper's tables print them (its "Defocus Noise" and "Glass Blue" are typos for these).
LABELS: dict[str, str] = {entry.name: entry.label for entry in registered()}
# The four held-out corruptions shipped in the official archives; extracted, never evaluated.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
