"""The table of training runs, expanded from a (schema-validated) config, and each run's identity.

A config lists *experiments*: a dataset, a model and a hyperparameter grid. Each experiment expands to
one :class:`RunSpec` per grid point and precision. Runs are addressed as
``<experiment>/<precision>/<point>``; ``point`` names the grid values, e.g.
``depth4-width10_sgd-lr0.1_wd0.0001``. That address is for people; a run's *identity* is
:attr:`RunSpec.digest`, a content hash of its fully resolved spec (every model argument with its
default filled in, and ``code_version``), recorded in every file made from the run and checked by every
consumer (:mod:`qgen.provenance`). This module imports only the standard library and
:mod:`qgen.vocab`, so that the Snakefile can build and check the DAG without importing torch.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from qgen.errors import QgenError
from qgen.vocab import (
    MODEL_ARGUMENTS,
    PRECISIONS,
    QUANT_POLICIES,
    SUMMARIES,
    VVTQ_MODELS,
    resolve_augmentation,
    resolve_model_args,
)

RUN_SCHEMA_VERSION = 2
DIGEST_DIRNAME_LENGTH = 16
"""Hex digits of a run's digest that name its checkpoint directory."""
RUN_OUTPUTS = ("model.pt", "init.pt", "metrics.json")
"""A finished run's files (:mod:`qgen.runs`) in the order they are written: ``metrics.json`` last."""


def require_known_keys(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError`` naming the keys of ``data`` that are not fields of the dataclass ``cls``.

    ``what`` names the keys in the message, e.g. ``"run spec key(s)"``.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise QgenError(f"unknown {what} {unknown}; expected some of {sorted(known)}")


def digest_of(data: Any) -> str:
    """SHA-256 of ``data`` as canonical JSON (sorted keys, no whitespace): equal data, equal digest."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


OMITTED_AT_DEFAULT = ("quant_policy", "obr_weight", "distill", "schedule")
"""Spec fields added after runs were made: left out of a spec's dict (and digest) at their default."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines one training run; serialised into every file made from it.

    ``model_args`` are resolved on construction: every argument of the model's constructor, with the
    defaults of :data:`qgen.vocab.MODEL_ARGUMENTS` for those not given, so the spec (and its digest)
    says exactly which network is trained; ``augment`` likewise becomes the dataset's default
    (:data:`qgen.vocab.DATASETS`) when not given. ``code_version`` is bumped by the user to retrain on
    purpose.

    ``quant_policy``, ``obr_weight`` and ``distill`` (VVTQ's module policy, oscillation regularizer and
    distillation from the full-precision teacher; :mod:`qgen.vvtq`, :mod:`qgen.objective`) and
    ``schedule`` (the learning-rate schedule, :func:`qgen.train.build_scheduler`) came later: at their
    defaults they are left out of :meth:`to_dict`, so the specs, files and digests of runs made before
    them are unchanged.
    """

    experiment: str
    point: str
    precision: str
    dataset: str
    model: str
    model_args: dict[str, Any]
    optimizer: str
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    milestones: list[int]
    gamma: float = 0.1
    momentum: float = 0.9
    seed: int = 0
    n_train: int | None = None
    n_test: int | None = None
    quantize_first_last: bool = False
    step_weight_decay: bool = False
    select_by: str = "epoch_loss"
    augment: str | None = None
    code_version: int = 1
    quant_policy: str = "lsq"
    obr_weight: float = 0.0
    distill: bool = False
    schedule: str = "step"

    def __post_init__(self) -> None:
        where = f"run {self.run_id}"
        canonical = {
            "model_args": resolve_model_args(self.model, self.model_args, where),
            "augment": resolve_augmentation(self.dataset, self.augment, where),
            "lr": float(self.lr),
            "weight_decay": float(self.weight_decay),
            "gamma": float(self.gamma),
            "momentum": float(self.momentum),
            "milestones": [int(m) for m in self.milestones],
            "obr_weight": float(self.obr_weight),
        }
        for name, value in canonical.items():
            object.__setattr__(self, name, value)
        self._check_quantization(where)
        if self.schedule == "cosine" and self.milestones:
            raise QgenError(
                f"{where}: a cosine schedule has no milestones (got {self.milestones}); set milestones: []"
            )

    def _check_quantization(self, where: str) -> None:
        """Refuse a precision, quantization policy or teacher the run cannot have, naming the remedy."""
        if self.precision not in PRECISIONS:
            raise QgenError(
                f"{where}: unknown precision {self.precision!r}; expected one of {list(PRECISIONS)}"
            )
        if self.quant_policy not in QUANT_POLICIES:
            raise QgenError(
                f"{where}: quantization policy {self.quant_policy!r} is not one of {list(QUANT_POLICIES)}"
            )
        if self.quant_policy == "vvtq" and self.model not in VVTQ_MODELS:
            raise QgenError(
                f"{where}: the vvtq policy knows the vision transformers {list(VVTQ_MODELS)}, not "
                f"{self.model!r}; use policy lsq for it"
            )
        if self.obr_weight < 0:
            raise QgenError(f"{where}: obr_weight must be >= 0, got {self.obr_weight}")
        takes_weights = any(a.name == "pretrained" for a in MODEL_ARGUMENTS[self.model])
        if self.distill and not (takes_weights and self.dataset == "imagenet"):
            raise QgenError(
                f"{where}: distill needs a teacher with published ImageNet-1k weights (a model with a "
                f"'pretrained' argument, trained on imagenet), not {self.model!r} on {self.dataset!r}"
            )

    @property
    def run_id(self) -> str:
        return f"{self.experiment}/{self.precision}/{self.point}"

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the spec: the run's identity (:func:`digest_of`)."""
        return digest_of(self.to_dict())

    @property
    def short_digest(self) -> str:
        """The first :data:`DIGEST_DIRNAME_LENGTH` hex digits of :attr:`digest`, as used in file names."""
        return self.digest[:DIGEST_DIRNAME_LENGTH]

    def to_dict(self) -> dict[str, Any]:
        """Every field, except those of :data:`OMITTED_AT_DEFAULT` that hold their default."""
        data = asdict(self)
        for f in fields(self):
            if f.name in OMITTED_AT_DEFAULT and data[f.name] == f.default:
                del data[f.name]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        require_known_keys(cls, data, "run spec key(s)")
        return cls(**data)


@dataclass(frozen=True)
class GridPoint:
    """One hyperparameter point of an experiment, before precisions are applied."""

    model_args: dict[str, Any]
    optimizer: str
    lr: float
    weight_decay: float
    name: str


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_points(experiment: Mapping[str, Any]) -> list[GridPoint]:
    """The cartesian product of an experiment's model-argument, optimizer/lr and weight-decay grids."""
    grid = experiment["grid"]
    model_grid: Mapping[str, list[Any]] = grid.get("model", {})
    fixed_args: Mapping[str, Any] = experiment.get("model_args", {})
    clash = sorted(set(model_grid) & set(fixed_args))
    if clash:
        raise QgenError(f"experiment {experiment['name']!r}: {clash} given in both model_args and grid.model")
    optimizer_lrs = [(opt, lr) for opt, lrs in grid["optimizer"].items() for lr in lrs]
    points = []
    for values in itertools.product(*model_grid.values()):
        args = dict(zip(model_grid, values, strict=True))
        for (optimizer, lr), wd in itertools.product(optimizer_lrs, grid["weight_decay"]):
            parts = ["-".join(f"{k}{_fmt(v)}" for k, v in args.items())] if args else []
            parts.append(f"{optimizer}-lr{_fmt(float(lr))}_wd{_fmt(float(wd))}")
            points.append(GridPoint({**fixed_args, **args}, optimizer, float(lr), float(wd), "_".join(parts)))
    return points


OPTIONAL_EXPERIMENT_KEYS = (
    "gamma",
    "momentum",
    "seed",
    "n_train",
    "n_test",
    "select_by",
    "augment",
    "schedule",
)


def require_unique_names(config: Mapping[str, Any]) -> None:
    """Refuse two experiments of one name: their runs would share directories and table rows."""
    names = Counter(exp["name"] for exp in config["experiments"])
    for name, count in names.items():
        if count > 1:
            models = [exp["model"] for exp in config["experiments"] if exp["name"] == name]
            raise QgenError(
                f"experiments: {count} experiments are named {name!r} (models {', '.join(models)}); "
                "experiment names must be unique"
            )


def expand_runs(config: Mapping[str, Any]) -> list[RunSpec]:
    """All runs of ``config``: every experiment x grid point x precision, each spec fully resolved.

    Refuses duplicate experiment names and model arguments the model does not take (naming the
    experiment, the argument and what the model accepts). An experiment's ``quantization`` block
    overrides the config's key by key.
    """
    require_unique_names(config)
    common = {"code_version": config["code_version"]} if "code_version" in config else {}
    runs = []
    for index, exp in enumerate(config["experiments"]):
        quant = {**config.get("quantization", {}), **exp.get("quantization", {})}
        optional = {k: exp[k] for k in OPTIONAL_EXPERIMENT_KEYS if k in exp}
        where = f"experiments[{index}] ({exp['name']}): model_args / grid.model"
        for point in grid_points(exp):
            model_args = resolve_model_args(exp["model"], point.model_args, where)
            for precision in exp.get("precisions", config["precisions"]):
                runs.append(
                    RunSpec(
                        experiment=exp["name"],
                        point=point.name,
                        precision=precision,
                        dataset=exp["dataset"],
                        model=exp["model"],
                        model_args=model_args,
                        optimizer=point.optimizer,
                        lr=point.lr,
                        weight_decay=point.weight_decay,
                        epochs=exp["epochs"],
                        batch_size=exp["batch_size"],
                        milestones=list(exp["milestones"]),
                        quantize_first_last=quant.get("quantize_first_last", False),
                        step_weight_decay=quant.get("step_weight_decay", False),
                        quant_policy=quant.get("policy", "lsq"),
                        obr_weight=quant.get("obr_weight", 0.0),
                        distill=quant.get("distill", False),
                        **optional,
                        **common,
                    )
                )
    return runs


def experiments_by_name(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    require_unique_names(config)
    return {exp["name"]: exp for exp in config["experiments"]}


def hyperparameters(run: RunSpec) -> dict[str, Any]:
    """The values a table row's ``where`` can select on: model arguments, optimizer, lr, weight decay."""
    return {**run.model_args, "optimizer": run.optimizer, "lr": run.lr, "weight_decay": run.weight_decay}


def select_runs(
    runs: Iterable[RunSpec], experiment: str, where: Mapping[str, Any] | None = None
) -> list[RunSpec]:
    """Runs of ``experiment`` whose model arguments / optimizer / lr / weight decay match ``where``."""
    where = dict(where or {})
    mine = [run for run in runs if run.experiment == experiment]
    if not mine:
        raise QgenError(f"no run of experiment {experiment!r}: is it in the config's experiments?")
    unknown = sorted(set(where) - set(hyperparameters(mine[0])))
    if unknown:
        raise QgenError(
            f"row filter {unknown} is not a hyperparameter of experiment {experiment!r}; "
            f"it has {sorted(hyperparameters(mine[0]))}"
        )
    chosen = [run for run in mine if all(hyperparameters(run)[k] == v for k, v in where.items())]
    if not chosen:
        raise QgenError(f"no run of experiment {experiment!r} matches {where}")
    return chosen


def select_point(runs: Iterable[RunSpec], experiment: str, where: Mapping[str, Any] | None) -> list[RunSpec]:
    """The runs (one per precision) of the single grid point of ``experiment`` that ``where`` picks.

    Several matching points are an error naming them, so that a table row or figure meant to show one
    model never silently mixes several.
    """
    chosen = select_runs(runs, experiment, where)
    points = sorted({run.point for run in chosen})
    if len(points) > 1:
        raise QgenError(
            f"row {{experiment: {experiment}, where: {dict(where or {})}}} matches {len(points)} grid points "
            f"({', '.join(points[:4])}{', ...' if len(points) > 4 else ''}); narrow its 'where' to one"
        )
    return chosen


def pack_runs(
    runs: Iterable[RunSpec],
    size: int,
    models: Iterable[str],
    group_by: Callable[[RunSpec], Hashable] = lambda run: run.experiment,
) -> dict[str, list[RunSpec]]:
    """Packs of at most ``size`` runs of the same experiment, for experiments of the given ``models``.

    A pack is trained in one GPU allocation, its runs concurrently (``qgen train-many``). Runs are grouped
    by ``group_by`` (which must separate experiments; groups in the order they first appear), and each
    group is cut into packs in run order, named ``<experiment>/pack<size>-<index>`` with the index counted
    per experiment, so a pack's members depend only on the config and ``size``. Runs of other models are
    not packed.
    """
    if size < 1:
        raise QgenError(f"train_pack size must be >= 1, got {size}")
    packable = set(models)
    groups: dict[Hashable, list[RunSpec]] = {}
    for run in runs:
        if run.model in packable:
            groups.setdefault(group_by(run), []).append(run)
    packs: dict[str, list[RunSpec]] = {}
    counts: dict[str, int] = {}
    for members in groups.values():
        experiment = members[0].experiment
        for start in range(0, len(members), size):
            index = counts.get(experiment, 0)
            counts[experiment] = index + 1
            packs[f"{experiment}/pack{size}-{index:04d}"] = members[start : start + size]
    return packs


# --------------------------------------------------------------------------------------------------------
# Summaries (tables and figures): the slice of the config that defines one, and its rows of runs


@dataclass(frozen=True)
class Row:
    """One row of a table or figure: an experiment (or one grid point of it), its label, its runs."""

    experiment: str
    label: str
    where: dict[str, Any]
    runs: list[RunSpec]


def _settings_of(config: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = config
    for key in path:
        value = value.get(key, {}) if isinstance(value, Mapping) else {}
    return value


def summary_rows_config(config: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    """The configured rows of summary ``name``, from its section (:attr:`qgen.vocab.Summary.rows`): table or
    figure rows, Figure 2's one row, or one row per experiment of a population (``correlation``)."""
    entry = SUMMARIES[name]
    value = _settings_of(config, entry.rows)
    if entry.population:
        return [{"experiment": experiment} for experiment in value.get("experiments", [])]
    if isinstance(value, Mapping):
        return [value] if value else []
    return list(value)


def summary_config(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Everything in ``config`` that defines summary ``name`` (a table or figure), and nothing else.

    Its rows (each labelled with its experiment's label unless it has its own), the experiments they draw
    on, the global keys that enter every run spec, and the settings section its results were made with
    (:data:`qgen.vocab.SUMMARIES`). The slice is config-shaped, so :func:`summary_rows` expands it with the
    same code as the whole config; its :func:`digest_of` names the summary file, so a change of anything
    it holds is a new file for Snakemake, and nothing else is.
    """
    entry = SUMMARIES[name]
    experiments = experiments_by_name(config)
    rows = []
    for row in summary_rows_config(config, name):
        if row["experiment"] not in experiments:
            raise QgenError(f"experiment {row['experiment']!r} is not in the config's experiments")
        label = row.get("label", experiments[row["experiment"]]["label"])
        rows.append({"experiment": row["experiment"], "model": label, "where": dict(row.get("where", {}))})
    used = {row["experiment"] for row in rows}
    sliced: dict[str, Any] = {
        "summary": name,
        "rows": rows,
        **(
            {"sample": population_sample(config), "confidence": population_confidence(config)}
            if entry.population
            else {}
        ),
        "experiments": [exp for exp in config["experiments"] if exp["name"] in used],
        "precisions": list(config["precisions"]),
        "quantization": dict(config.get("quantization", {})),
        "settings": _settings_of(config, entry.settings) if entry.settings else {},
    }
    if "code_version" in config:
        sliced["code_version"] = config["code_version"]
    return sliced


def summary_rows(sliced: Mapping[str, Any]) -> list[Row]:
    """The rows of a :func:`summary_config` slice with their runs; a row of a one-point summary must pick
    exactly one grid point (:func:`select_point`)."""
    entry = SUMMARIES[sliced["summary"]]
    runs = expand_runs(sliced)
    if entry.quantized_only:
        runs = [run for run in runs if run.precision != "fp32"]
    out = []
    for row in sliced["rows"]:
        select = select_point if entry.one_point else select_runs
        chosen = select(runs, row["experiment"], row["where"])
        if entry.population:
            chosen = sampled_points(chosen, **sliced["sample"])
        out.append(Row(row["experiment"], row["model"], dict(row["where"]), chosen))
    return out


def population_sample(config: Mapping[str, Any]) -> dict[str, Any]:
    """How many grid points of each experiment the rank correlation measures (``None``: all), and the seed
    of their choice (the config's ``correlation`` section)."""
    section = config.get("correlation", {})
    return {"points": section.get("points"), "seed": section.get("seed", 0)}


def population_confidence(config: Mapping[str, Any]) -> float:
    """The level of the rank correlation's intervals (the config's ``correlation.confidence``)."""
    return float(config.get("correlation", {}).get("confidence", 0.95))


def sampled_points(runs: list[RunSpec], points: int | None, seed: int) -> list[RunSpec]:
    """The runs of a fixed seeded sample of ``points`` grid points (``None``: all), at every precision.

    The same points at every precision keep Psi's precision axis complete: each chosen point is one group
    of models that differ only in their precision. The choice depends only on the sorted point names and
    ``seed``.
    """
    names = sorted({run.point for run in runs})
    if points is None or points >= len(names):
        return runs
    order = sorted(names, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    chosen = set(order[:points])
    return [run for run in runs if run.point in chosen]
