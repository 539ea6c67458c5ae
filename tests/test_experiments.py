"""The run table expanded from a config: sizes, ids, selection, round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from qgen.experiments import RunSpec, expand_runs, grid_points, select_runs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_paper_config_has_the_1944_run_nin_sweep(paper_config: dict) -> None:
    runs = expand_runs(paper_config)
    nin = [r for r in runs if r.model == "nin"]
    assert len(nin) == 2 * 3**5 * 4 == 1944
    for dataset, depths in (("cifar10", {2, 3, 4}), ("cifar100", {3, 4, 5})):
        mine = [r for r in nin if r.dataset == dataset]
        assert len(mine) == 972
        assert {r.model_args["depth"] for r in mine} == depths
        assert {r.model_args["width"] for r in mine} == {8, 10, 12}
        assert {(r.optimizer, r.lr) for r in mine} == {
            ("sgd", 0.1),
            ("sgd", 0.05),
            ("sgd", 0.01),
            ("adam", 1e-3),
            ("adam", 5e-4),
            ("adam", 1e-4),
            ("rmsprop", 1e-3),
            ("rmsprop", 5e-4),
            ("rmsprop", 1e-4),
        }
        assert {r.weight_decay for r in mine} == {0.0, 1e-4, 2e-4}
        assert {(r.epochs, r.batch_size, tuple(r.milestones), r.gamma) for r in mine} == {
            (300, 128, (100, 200), 0.1)
        }


def test_paper_config_other_models(paper_config: dict) -> None:
    others = [r for r in expand_runs(paper_config) if r.model != "nin"]
    assert len(others) == 11 * 4
    imagenet = [r for r in others if r.dataset == "imagenet"]
    assert {r.model for r in imagenet} == {
        "resnet18",
        "resnet50",
        "mobilenet_v2",
        "deit_tiny_patch16_224",
        "swin_tiny_patch4_window7_224",
    }
    assert all(
        r.model_args == {"pretrained": True}
        and r.lr == 0.01
        and r.milestones == [30, 60, 90]
        and r.epochs == 120
        for r in imagenet
    )
    cifar_resnets = [r for r in others if r.model.startswith("resnet") and r.dataset != "imagenet"]
    assert len(cifar_resnets) == 16
    assert all(r.lr == 0.1 and r.epochs == 200 and r.milestones == [80, 160] for r in cifar_resnets)


def test_run_ids_are_unique_readable_and_path_safe(paper_config: dict) -> None:
    runs = expand_runs(paper_config)
    ids = [r.run_id for r in runs]
    assert len(set(ids)) == len(ids)
    assert "nin_cifar10/int4/depth4-width10_sgd-lr0.1_wd0.0001" in ids
    assert "resnet18_imagenet/fp32/sgd-lr0.01_wd0.0001" in ids
    assert all(" " not in i and i.count("/") == 2 for i in ids)


def test_spec_json_round_trip() -> None:
    config = {
        "precisions": ["fp32", "int2"],
        "experiments": [
            {
                "name": "e",
                "label": "E",
                "dataset": "digits",
                "model": "nin",
                "grid": {"model": {"width": [1]}, "optimizer": {"adam": [0.001]}, "weight_decay": [0]},
                "epochs": 2,
                "batch_size": 8,
                "milestones": [1],
                "n_train": 20,
            }
        ],
    }
    runs = expand_runs(config)
    assert [r.precision for r in runs] == ["fp32", "int2"]
    again = RunSpec.from_dict(json.loads(runs[1].to_json()))
    assert again == runs[1] and again.n_train == 20 and again.weight_decay == 0.0
    with pytest.raises(ValueError, match="bogus"):
        RunSpec.from_dict({**json.loads(runs[0].to_json()), "bogus": 1})


def test_grid_size_is_the_product_of_its_axes() -> None:
    exp = {
        "name": "x",
        "grid": {
            "model": {"a": [1, 2], "b": [3, 4, 5]},
            "optimizer": {"sgd": [0.1, 0.2], "adam": [0.01]},
            "weight_decay": [0, 1],
        },
    }
    points = grid_points(exp)
    assert len(points) == math.prod([2, 3, 3, 2])
    assert len({p.name for p in points}) == len(points)


def test_model_args_given_twice_is_an_error() -> None:
    exp = {
        "name": "x",
        "model_args": {"a": 1},
        "grid": {"model": {"a": [1]}, "optimizer": {"sgd": [0.1]}, "weight_decay": [0]},
    }
    with pytest.raises(ValueError, match=r"\['a'\]"):
        grid_points(exp)


def test_select_runs(paper_config: dict) -> None:
    runs = expand_runs(paper_config)
    where = {"depth": 4, "width": 10, "optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0001}
    chosen = select_runs(runs, "nin_cifar10", where)
    assert sorted(r.precision for r in chosen) == ["fp32", "int2", "int4", "int8"]
    with pytest.raises(ValueError, match="colour"):
        select_runs(runs, "nin_cifar10", {"colour": "red"})
    with pytest.raises(ValueError, match="no run"):
        select_runs(runs, "nin_cifar10", {"depth": 7})
