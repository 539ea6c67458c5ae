"""The project's vocabulary: the names a config, a rule or a table uses, with their facts, torch-free.

Snakemake builds the DAG from this module (through :mod:`qgen.experiments`), so it imports only the
standard library: a config can be checked completely, model arguments included, before any job runs
and without importing torch.

Models: each registry model (``qgen.models``) is described here by the keyword arguments its
constructor takes, with their types and defaults. ``qgen.models`` refuses to register a constructor
whose signature differs from its description, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qgen.errors import QgenError, UnknownNameError

Scalar = bool | int | float | str


@dataclass(frozen=True)
class Precision:
    """A precision: the bit widths of the LSQ quantizers it attaches (``None``: none of that kind).

    ``int*`` quantize weights only (the paper's columns); ``w*a*`` quantize the weights and the inputs of
    the quantized layers (weights *and* activations, as VVTQ and most QAT studies; docs/decisions.md).
    """

    name: str
    label: str
    weight_bits: int | None
    activation_bits: int | None = None


PRECISION_FACTS: tuple[Precision, ...] = (
    Precision("fp32", "FP32", None),
    Precision("int8", "Int8", 8),
    Precision("int4", "Int4", 4),
    Precision("int2", "Int2", 2),
    Precision("w8a8", "W8A8", 8, 8),
    Precision("w4a4", "W4A4", 4, 4),
    Precision("w2a2", "W2A2", 2, 2),
)
"""Every precision, in the order tables and figures show them: the paper's columns, then the W/A pairs."""
PRECISIONS: Mapping[str, int | None] = {p.name: p.weight_bits for p in PRECISION_FACTS}
"""Precision name -> weight bit width (``None``: no quantizer), in :data:`PRECISION_FACTS` order."""
ACTIVATION_BITS: Mapping[str, int | None] = {p.name: p.activation_bits for p in PRECISION_FACTS}
"""Precision name -> bit width of the quantized layers' inputs (``None``: activations stay float)."""
PRECISION_LABELS: Mapping[str, str] = {p.name: p.label for p in PRECISION_FACTS}
"""How tables, figures and the report print each precision."""
PAPER_PRECISIONS: tuple[str, ...] = tuple(p.name for p in PRECISION_FACTS if p.activation_bits is None)
"""The paper's columns: FP32 and the weight-only precisions, from full precision down."""

QUANT_POLICIES: Mapping[str, str] = {
    "lsq": "every conv/linear layer but the first and last (unless quantize_first_last), weights at the "
    "precision's bits and, for a W/A precision, the layer's input too (LSQ, Esser et al. 2020)",
    "vvtq": "VVTQ's module-dependent policy for the vision transformers: q, k, v split with a step each, "
    "the attention's q, k, v, softmax and output quantized, patch embedding and head at 8 bits "
    "(Huang et al. 2023; qgen.vvtq)",
}
"""Which layers and tensors a run quantizes, and at which bits (``RunSpec.quant_policy``)."""
VVTQ_MODELS: tuple[str, ...] = ("deit_tiny_patch16_224", "swin_tiny_patch4_window7_224")
"""The models the ``vvtq`` policy knows (:mod:`qgen.vvtq`)."""

MIXED_PRECISION: tuple[str, ...] = ("auto", "bf16", "off")
"""Mixed precision of training (:class:`qgen.train.Execution`): bf16 autocast on CUDA only, always, never."""
COMPILE_MODES: tuple[str, ...] = ("off", "default", "reduce-overhead", "max-autotune")
"""``torch.compile`` modes of the training step (:class:`qgen.train.Execution`); ``off`` is eager."""
PACK_MODES: tuple[str, ...] = ("processes", "batched")
"""How a pack of runs trains (:mod:`qgen.packing`): ``qgen train`` processes, or one batched group."""


def execution_options(mixed_precision: str, channels_last: bool, compile_mode: str) -> list[str]:
    """A training execution (:class:`qgen.train.Execution`) as ``qgen train`` options, to pass on."""
    layout = "--channels-last" if channels_last else "--no-channels-last"
    return ["--mixed-precision", mixed_precision, layout, "--compile", compile_mode]


AUGMENTATIONS: Mapping[str, str] = {
    "none": "none",
    "crop": "a random crop of the image zero-padded by 4 pixels on each side",
    "crop_flip": "a random crop of the image zero-padded by 4 pixels, then a horizontal flip with p = 0.5",
    "resized_crop_flip": "RandomResizedCrop to the image size, then a horizontal flip with p = 0.5",
}
"""Training augmentation name -> what it does (evaluation is never augmented)."""


@dataclass(frozen=True)
class DatasetFacts:
    """What the config, tables and models need to know of a dataset; its loader lives in ``qgen.data``.

    ``augmentations`` are the training augmentations it supports, its default first.
    """

    name: str
    label: str
    num_classes: int
    image_size: int
    augmentations: tuple[str, ...]


DATASETS: Mapping[str, DatasetFacts] = {
    d.name: d
    for d in (
        DatasetFacts("cifar10", "CIFAR-10", 10, 32, ("crop_flip", "crop", "none")),
        DatasetFacts("cifar100", "CIFAR-100", 100, 32, ("crop_flip", "crop", "none")),
        DatasetFacts("fashion_mnist", "Fashion-MNIST", 10, 32, ("crop_flip", "crop", "none")),
        # A mirrored digit is often another digit (or none), so digits are cropped, never flipped.
        DatasetFacts("digits", "Digits", 10, 32, ("crop", "crop_flip", "none")),
        DatasetFacts("imagenet", "ImageNet-1K", 1000, 224, ("resized_crop_flip", "none")),
    )
}
"""Dataset name -> its facts."""


def dataset_facts(name: str) -> DatasetFacts:
    """The facts of dataset ``name``; a :class:`~qgen.errors.UnknownNameError` lists the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownNameError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def resolve_augmentation(dataset: str, augment: str | None, where: str) -> str:
    """``augment``, or the dataset's default when it is ``None``; one the dataset does not support is an
    error naming ``where`` and the supported ones."""
    facts = dataset_facts(dataset)
    if augment is None:
        return facts.augmentations[0]
    if augment not in facts.augmentations:
        raise QgenError(
            f"{where}: augment={augment!r} is not one of {dataset}'s augmentations: "
            f"{', '.join(facts.augmentations)}"
        )
    return augment


@dataclass(frozen=True)
class ModelArgument:
    """One keyword argument of a model constructor (besides ``num_classes``)."""

    name: str
    kind: type[bool] | type[int] | type[float] | type[str]
    default: Scalar

    def check(self, value: Any, where: str) -> Scalar:
        """``value`` in canonical form (an int given for a float argument becomes a float), or a
        :class:`~qgen.errors.QgenError` naming ``where`` and the expected type."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if type(value) is not self.kind:
            raise QgenError(
                f"{where}: {self.name}={value!r} is a {type(value).__name__}, expected a {self.kind.__name__}"
            )
        return value


def _args(
    *arguments: tuple[str, type[bool] | type[int] | type[float] | type[str], Scalar],
) -> tuple[ModelArgument, ...]:
    return tuple(ModelArgument(name, kind, default) for name, kind, default in arguments)


_PRETRAINED = _args(("pretrained", bool, False))

MODEL_ARGUMENTS: Mapping[str, tuple[ModelArgument, ...]] = {
    "nin": _args(("depth", int, 2), ("width", int, 8), ("base_width", int, 25)),
    "resnet18_cifar": _args(("base_width", int, 16)),
    "resnet50_cifar": _args(("base_width", int, 16)),
    "mobilenet_v1_cifar": _args(("width_mult", float, 1.0)),
    "vgg19_cifar": (),
    "resnet18": _PRETRAINED,
    "resnet50": _PRETRAINED,
    "mobilenet_v2": _PRETRAINED,
    "deit_tiny_patch16_224": _PRETRAINED,
    "swin_tiny_patch4_window7_224": _PRETRAINED,
}
"""Model name -> the keyword arguments of its constructor, in signature order."""


def model_arguments(model: str) -> tuple[ModelArgument, ...]:
    """The described arguments of ``model``; a :class:`~qgen.errors.QgenError` for an unknown model."""
    try:
        return MODEL_ARGUMENTS[model]
    except KeyError:
        raise QgenError(f"unknown model {model!r}; known: {', '.join(sorted(MODEL_ARGUMENTS))}") from None


def resolve_model_args(model: str, given: Mapping[str, Any], where: str) -> dict[str, Scalar]:
    """Every constructor argument of ``model``: the ``given`` ones checked and canonical, the rest at their
    defaults. An unknown or mistyped argument is a :class:`~qgen.errors.QgenError` naming ``where``."""
    arguments = {a.name: a for a in model_arguments(model)}
    unknown = sorted(set(given) - set(arguments))
    if unknown:
        accepted = ", ".join(arguments) or "no arguments"
        raise QgenError(
            f"{where}: {', '.join(map(repr, unknown))} is not an argument of model {model!r}; "
            f"it takes {accepted}"
        )
    return {
        name: a.check(given[name], where) if name in given else a.default for name, a in arguments.items()
    }


@dataclass(frozen=True)
class Measure:
    """One of the paper's eight flatness measures (App. A, eqs. 15-22), described by what it is.

    ``family`` is the PAC-Bayes bound (Gaussian noise, searched scale sigma) or the sharpness bound
    (worst-case noise, alpha); ``magnitude_aware`` bounds the noise relative to each weight (sigma',
    alpha'); ``reference`` is the point the norm is taken from: ``init`` for ``||W - W0||``, ``orig`` for
    ``||W||``. Everything else (its search, column label, equation) follows from these.
    """

    family: str
    magnitude_aware: bool
    reference: str

    @property
    def name(self) -> str:
        """``pacbayes.mag.init`` etc.: the key in ``measures.json`` and the summary's column."""
        return ".".join((self.family, *(["mag"] if self.magnitude_aware else []), self.reference))

    @property
    def search(self) -> str:
        """The scale search it uses: ``sigma``, ``sigma_mag``, ``alpha`` or ``alpha_mag``."""
        scale = "sigma" if self.family == "pacbayes" else "alpha"
        return f"{scale}_mag" if self.magnitude_aware else scale

    @property
    def label(self) -> str:
        """The column header of the paper's Table 3, e.g. ``Mag-Init``."""
        return ("Mag-" if self.magnitude_aware else "") + self.reference.capitalize()

    @property
    def equation(self) -> int:
        """Its equation in the paper's App. A (15-22)."""
        base = {
            ("pacbayes", False): 15,
            ("sharpness", False): 17,
            ("pacbayes", True): 19,
            ("sharpness", True): 21,
        }
        return base[(self.family, self.magnitude_aware)] + (self.reference == "orig")


MEASURE_FAMILIES: Mapping[str, str] = {"pacbayes": "PAC-Bayesian", "sharpness": "Sharpness"}
"""Measure family -> the heading of its column group in Table 3."""
MEASURES: tuple[Measure, ...] = tuple(
    Measure(family, magnitude_aware, reference)
    for family in MEASURE_FAMILIES
    for magnitude_aware in (False, True)
    for reference in ("init", "orig")
)
"""The eight measures in the paper's column order (Table 3)."""
SEARCHES: tuple[str, ...] = tuple(dict.fromkeys(m.search for m in MEASURES))
"""The four scale searches, in the order they run."""


def measure(name: str) -> Measure:
    """The measure called ``name`` (e.g. ``sharpness.mag.orig``)."""
    for m in MEASURES:
        if m.name == name:
            return m
    raise QgenError(f"unknown measure {name!r}; known: {', '.join(m.name for m in MEASURES)}")


@dataclass(frozen=True)
class Summary:
    """A table or figure the workflow summarises from runs: what each run contributes and what it needs.

    ``result`` is the file each run contributes (in its run directory), ``one_point`` whether each row
    shows one grid point (one run per precision) rather than a whole experiment, and ``settings`` the
    config section, besides the runs, that its results were made with (checked by ``qgen summarize``);
    ``quantized_only`` leaves FP32 runs out (they have no learned step to show). ``rows`` is the config
    section that lists its rows: table rows, a figure's rows or its one row, or (``population``) the
    experiments of the rank-correlation analysis, every run of which (or a seeded sample of grid points)
    is one model. ``rendered`` is what the workflow renders it to: a LaTeX ``table`` or a ``figure``.
    """

    name: str
    result: str
    one_point: bool
    rows: tuple[str, ...]
    rendered: str
    settings: tuple[str, ...] = ()
    quantized_only: bool = False
    population: bool = False


def _table(name: str, result: str = "metrics.json", **facts: Any) -> Summary:
    return Summary(name, result, rows=("tables", name), rendered="table", **facts)


def _figure(name: str, result: str, **facts: Any) -> Summary:
    return Summary(name, result, rows=("figures", name), rendered="figure", **facts)


_CORRUPTED = {"one_point": True, "settings": ("corruptions", "data")}
_POPULATION = {"one_point": False, "rows": ("correlation",), "settings": ("measures",), "population": True}
SUMMARIES: Mapping[str, Summary] = {
    s.name: s
    for s in (
        _table("table1", one_point=False),
        _table("table2", one_point=True),
        _table("table3", "measures.json", one_point=True, settings=("measures",)),
        _table("table4", "corruptions.csv", **_CORRUPTED),
        _table("table5", "corruptions.csv", **_CORRUPTED),
        _table("table6", "corruptions.csv", **_CORRUPTED),
        _table("regularizer", "measures.json", one_point=True, settings=("measures",)),
        Summary("correlation", "measures.json", rendered="table", **_POPULATION),
        _figure("figure1", "model.pt", one_point=True, quantized_only=True),
        _figure("figure2", "landscape", one_point=True, settings=("figures", "figure2", "surface")),
        Summary("figure3", "measures.json", rendered="figure", **_POPULATION),
    )
}
"""Every summary the workflow can build: the paper's Tables 1-6 and Figures 1-2, and beyond the paper the
regularizer of eq. 7 (per model), the rank correlation of the measures with the gap over a population of
models, and its scatter plots (Figure 3)."""
TABLE_NAMES = tuple(name for name, s in SUMMARIES.items() if s.rendered == "table")
REPORTED = (
    "table1",
    "table2",
    "table3",
    "table4",
    "table5",
    "figure1",
    "figure2",
    "regularizer",
    "correlation",
)
"""The summaries the reproduction report reads (:mod:`qgen.report`): the published Tables 1-5 and Figures 1-2,
and the regularizer and correlation tables whose claims are the paper's reasoning (eqs. 6-7, §4.1)."""
FIGURE_NAMES = tuple(name for name, s in SUMMARIES.items() if s.rendered == "figure")

POPULATION_MEASURES: Mapping[str, str] = {
    **{m.name: f"{MEASURE_FAMILIES[m.family]} {m.label}" for m in MEASURES},
    "hessian.top_eigenvalue": "Hessian top eigenvalue",
    "hessian.trace": "Hessian trace",
    "norm.w": "||W||",
    "norm.w_minus_w0": "||W - W0||",
    "regularizer": "R (eq. 7)",
}
"""Measure -> label of every quantity the rank correlation tests as a predictor of the gap, each oriented as
a complexity (larger: predicts a larger gap)."""
