"""The table of training runs, expanded from a (schema-validated) config.

A config lists *experiments*: a dataset, a model and a hyperparameter grid. Each experiment expands to
one :class:`RunSpec` per grid point and precision. Runs are addressed as
``<experiment>/<precision>/<point>``; ``point`` names the grid values, e.g.
``depth4-width10_sgd-lr0.1_wd0.0001``. This module imports only the standard library so that the
Snakefile can build the DAG without importing torch.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

RUN_SCHEMA_VERSION = 1


def require_known_keys(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError`` naming the keys of ``data`` that are not fields of the dataclass ``cls``.

    ``what`` names the keys in the message, e.g. ``"run spec key(s)"``.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; expected some of {sorted(known)}")


@dataclass(frozen=True)
class RunSpec:
    """Everything one training run needs; serialised into its ``metrics.json``."""

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

    @property
    def run_id(self) -> str:
        return f"{self.experiment}/{self.precision}/{self.point}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

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
        raise ValueError(
            f"experiment {experiment['name']!r}: {clash} given in both model_args and grid.model"
        )
    optimizer_lrs = [(opt, lr) for opt, lrs in grid["optimizer"].items() for lr in lrs]
    points = []
    for values in itertools.product(*model_grid.values()):
        args = dict(zip(model_grid, values, strict=True))
        for (optimizer, lr), wd in itertools.product(optimizer_lrs, grid["weight_decay"]):
            parts = ["-".join(f"{k}{_fmt(v)}" for k, v in args.items())] if args else []
            parts.append(f"{optimizer}-lr{_fmt(float(lr))}_wd{_fmt(float(wd))}")
            points.append(GridPoint({**fixed_args, **args}, optimizer, float(lr), float(wd), "_".join(parts)))
    return points


def expand_runs(config: Mapping[str, Any]) -> list[RunSpec]:
    """All runs of ``config``: every experiment x grid point x precision."""
    quant = config.get("quantization", {})
    runs = []
    for exp in config["experiments"]:
        optional = {
            k: exp[k] for k in ("gamma", "momentum", "seed", "n_train", "n_test", "select_by") if k in exp
        }
        for point in grid_points(exp):
            for precision in exp.get("precisions", config["precisions"]):
                runs.append(
                    RunSpec(
                        experiment=exp["name"],
                        point=point.name,
                        precision=precision,
                        dataset=exp["dataset"],
                        model=exp["model"],
                        model_args=point.model_args,
                        optimizer=point.optimizer,
                        lr=point.lr,
                        weight_decay=point.weight_decay,
                        epochs=exp["epochs"],
                        batch_size=exp["batch_size"],
                        milestones=list(exp["milestones"]),
                        quantize_first_last=quant.get("quantize_first_last", False),
                        step_weight_decay=quant.get("step_weight_decay", False),
                        **optional,
                    )
                )
    ids = [r.run_id for r in runs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate run ids {duplicates[:3]}: experiment names must be unique")
    return runs


def experiments_by_name(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {exp["name"]: exp for exp in config["experiments"]}


def select_runs(
    runs: Iterable[RunSpec], experiment: str, where: Mapping[str, Any] | None = None
) -> list[RunSpec]:
    """Runs of ``experiment`` whose model arguments / optimizer / lr / weight decay match ``where``."""
    where = dict(where or {})
    chosen = []
    for run in runs:
        if run.experiment != experiment:
            continue
        values = {
            **run.model_args,
            "optimizer": run.optimizer,
            "lr": run.lr,
            "weight_decay": run.weight_decay,
        }
        unknown = sorted(set(where) - set(values))
        if unknown:
            raise ValueError(
                f"table row filter {unknown} is not a hyperparameter of experiment {experiment!r}"
            )
        if all(values[k] == v for k, v in where.items()):
            chosen.append(run)
    if not chosen:
        raise ValueError(f"no run of experiment {experiment!r} matches {where}")
    return chosen


def pack_runs(runs: Iterable[RunSpec], size: int, models: Iterable[str]) -> dict[str, list[RunSpec]]:
    """Packs of at most ``size`` runs of the same experiment, for experiments of the given ``models``.

    A pack is trained in one GPU allocation, its runs concurrently (``qgen train-many``). Packs are named
    ``<experiment>/pack<size>-<index>`` and filled in run order, so a pack's members depend only on the
    config and ``size``. Runs of other models are not packed.
    """
    if size < 1:
        raise ValueError(f"train_pack size must be >= 1, got {size}")
    packable = set(models)
    by_experiment: dict[str, list[RunSpec]] = {}
    for run in runs:
        if run.model in packable:
            by_experiment.setdefault(run.experiment, []).append(run)
    packs = {}
    for experiment, members in by_experiment.items():
        for index, start in enumerate(range(0, len(members), size)):
            packs[f"{experiment}/pack{size}-{index:04d}"] = members[start : start + size]
    return packs
