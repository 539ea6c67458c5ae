"""The run table expanded from a config: sizes, ids, selection, round trips."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from qgen.experiments import (
    RunSpec,
    digest_of,
    expand_runs,
    grid_points,
    select_runs,
    summary_config,
    summary_rows,
)

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
    cnns = [r for r in imagenet if r.quant_policy == "lsq"]
    assert {r.model for r in cnns} == {"resnet18", "resnet50", "mobilenet_v2"}
    assert all(
        r.model_args == {"pretrained": True}
        and r.lr == 0.01
        and r.milestones == [30, 60, 90]
        and r.epochs == 120
        and not r.distill
        and r.obr_weight == 0
        for r in cnns
    )
    # The vision transformers with VVTQ's recipe, at the W/A bit widths of its runs.
    vits = [r for r in imagenet if r.quant_policy == "vvtq"]
    assert {r.model for r in vits} == {"deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"}
    assert all(
        r.model_args == {"pretrained": True}
        and r.distill
        and r.obr_weight == 0.01
        and (r.optimizer, r.lr, r.weight_decay, r.epochs, r.batch_size) == ("adamw", 5e-4, 1e-4, 150, 1024)
        and (r.schedule, r.milestones) == ("cosine", [])
        for r in vits
    )
    assert sorted(r.precision for r in vits) == sorted(["fp32", "w8a8", "w4a4", "w2a2"] * 2)
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


def small_config(**changes: object) -> dict:
    config = {
        "code_version": 1,
        "precisions": ["fp32", "int4"],
        "experiments": [
            {
                "name": "nin_digits",
                "label": "NiN",
                "dataset": "digits",
                "model": "nin",
                "grid": {
                    "model": {"depth": [2], "width": [1, 2]},
                    "optimizer": {"sgd": [0.05]},
                    "weight_decay": [0.0001],
                },
                "epochs": 12,
                "batch_size": 64,
                "milestones": [8],
            },
            {
                "name": "resnet18_digits",
                "label": "ResNet-18",
                "dataset": "digits",
                "model": "resnet18_cifar",
                "grid": {"optimizer": {"sgd": [0.05]}, "weight_decay": [0.0001]},
                "epochs": 6,
                "batch_size": 64,
                "milestones": [4],
            },
        ],
        "tables": {
            "table1": [{"experiment": "nin_digits"}, {"experiment": "resnet18_digits"}],
            "table2": [{"experiment": "nin_digits", "where": {"width": 2}}],
        },
    }
    return config | changes


def test_duplicate_experiment_names_are_refused_naming_them() -> None:
    """Issue 10, case 4: two experiments named resnet18_digits (a ResNet-18 and a NiN) used to train and
    to merge into one Table 1 row."""
    config = small_config()
    config["experiments"][0]["name"] = "resnet18_digits"
    with pytest.raises(
        ValueError, match=r"2 experiments are named 'resnet18_digits' \(models nin, resnet18_cifar\)"
    ):
        expand_runs(config)


def test_model_argument_typo_is_refused_before_any_job() -> None:
    """Issue 10, case 6: `grid: {model: {widht: [1]}}` used to validate and fail inside every job."""
    config = small_config()
    config["experiments"][0]["grid"]["model"] = {"widht": [1]}
    with pytest.raises(
        ValueError,
        match=r"experiments\[0\] \(nin_digits\).*'widht' is not an argument of model 'nin'; "
        "it takes depth, width, base_width",
    ):
        expand_runs(config)
    config["experiments"][0]["grid"]["model"] = {"width": ["1"]}
    with pytest.raises(ValueError, match=r"width='1' is a str, expected a int"):
        expand_runs(config)


def test_specs_are_resolved_so_equal_runs_have_equal_digests() -> None:
    (run,) = [
        r
        for r in expand_runs(small_config())
        if r.run_id == "nin_digits/fp32/depth2-width1_sgd-lr0.05_wd0.0001"
    ]
    assert run.model_args == {"depth": 2, "width": 1, "base_width": 25}  # the default filled in
    spelled_out = RunSpec.from_dict(
        {**run.to_dict(), "model_args": {"width": 1}, "lr": 0.05, "milestones": [8.0]}
    )
    assert spelled_out == run and spelled_out.digest == run.digest
    assert len(run.digest) == 64 and run.short_digest == run.digest[:16]
    # The digest is that of the canonical JSON, recomputed here independently.
    canonical = json.dumps(json.loads(run.to_json()), sort_keys=True, separators=(",", ":"))
    assert run.digest == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize(
    "change",
    [
        {"epochs": 13},
        {"seed": 1},
        {"milestones": [9]},
        {"momentum": 0.8},
        {"n_train": 100},
        {"code_version": 2},
        {"model_args": {"depth": 2, "width": 1, "base_width": 24}},
        {"quantize_first_last": True},
    ],
)
def test_every_setting_that_can_change_the_weights_changes_the_digest(change: dict) -> None:
    run = expand_runs(small_config())[0]
    changed = RunSpec.from_dict(run.to_dict() | change)
    assert changed.run_id == run.run_id and changed.digest != run.digest


def test_specs_at_the_defaults_of_later_fields_keep_their_dict_and_digest() -> None:
    """quant_policy, obr_weight, distill and schedule came after runs were made: at their defaults they are
    not in the spec's dict, so its digest is that of the dict without them (recomputed here)."""
    run = expand_runs(small_config())[0]
    later = {"quant_policy", "obr_weight", "distill", "schedule"}
    assert not later & set(run.to_dict())
    older = {k: v for k, v in dataclasses.asdict(run).items() if k not in later}
    assert run.to_dict() == older and run.digest == digest_of(older)
    assert RunSpec.from_dict(older) == run
    for change in ({"quant_policy": "lsq"}, {"obr_weight": 0}, {"distill": False}, {"schedule": "step"}):
        assert RunSpec.from_dict(older | change).digest == run.digest


@pytest.mark.parametrize("change", [{"precision": "w4a4"}, {"obr_weight": 0.01}])
def test_activation_bits_and_the_regularizer_change_the_digest(change: dict) -> None:
    run = expand_runs(small_config())[0]
    changed = RunSpec.from_dict(run.to_dict() | change)
    assert changed.digest != run.digest and set(change) <= set(changed.to_dict())


def test_an_experiments_quantization_overrides_the_configs_key_by_key() -> None:
    config = small_config(quantization={"quantize_first_last": True, "step_weight_decay": True})
    config["experiments"][0]["quantization"] = {"quantize_first_last": False, "obr_weight": 0.01}
    runs = expand_runs(config)
    nin = {(r.quantize_first_last, r.step_weight_decay, r.obr_weight) for r in runs if r.model == "nin"}
    resnet = {(r.quantize_first_last, r.step_weight_decay, r.obr_weight) for r in runs if r.model != "nin"}
    assert nin == {(False, True, 0.01)} and resnet == {(True, True, 0.0)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"precision": "w5a5"}, r"unknown precision 'w5a5'; expected one of \['fp32', 'int8'"),
        (
            {"quant_policy": "vvtq"},
            r"the vvtq policy knows the vision transformers .* not 'nin'; use policy lsq",
        ),
        ({"quant_policy": "brevitas"}, r"quantization policy 'brevitas' is not one of \['lsq', 'vvtq'\]"),
        (
            {"distill": True},
            r"distill needs a teacher with published ImageNet-1k weights .* not 'nin' on 'digits'",
        ),
        ({"obr_weight": -0.1}, "obr_weight must be >= 0"),
    ],
)
def test_impossible_quantization_settings_are_refused_naming_the_run(change: dict, message: str) -> None:
    run = expand_runs(small_config())[0]
    run_id = re.escape(f"{run.experiment}/{change.get('precision', run.precision)}/{run.point}")
    with pytest.raises(ValueError, match=rf"run {run_id}: {message}"):
        RunSpec.from_dict(run.to_dict() | change)


def test_code_version_enters_every_spec() -> None:
    runs = expand_runs(small_config(code_version=7))
    assert {r.code_version for r in runs} == {7}


def test_a_one_point_row_matching_several_points_is_an_error() -> None:
    config = small_config()
    config["tables"]["table2"] = [{"experiment": "nin_digits", "where": {"depth": 2}}]
    with pytest.raises(ValueError, match=r"matches 2 grid points \(depth2-width1_sgd.*, depth2-width2_sgd"):
        summary_rows(summary_config(config, "table2"))
    config["tables"]["table2"] = [{"experiment": "nin_digits", "where": {"width": 3}}]
    with pytest.raises(ValueError, match=r"no run of experiment 'nin_digits' matches \{'width': 3\}"):
        summary_rows(summary_config(config, "table2"))


def test_a_summary_slice_holds_exactly_what_defines_the_summary() -> None:
    config = small_config()
    table2 = summary_config(config, "table2")
    assert [e["name"] for e in table2["experiments"]] == ["nin_digits"]
    (row,) = summary_rows(table2)
    assert [r.run_id for r in row.runs] == [
        "nin_digits/fp32/depth2-width2_sgd-lr0.05_wd0.0001",
        "nin_digits/int4/depth2-width2_sgd-lr0.05_wd0.0001",
    ]
    # The slice expands to the very specs of the whole config.
    whole = {r.run_id: r for r in expand_runs(config)}
    assert all(whole[r.run_id] == r for r in row.runs)
    # An experiment the table does not show changes nothing; one it shows changes its digest.
    other = small_config()
    other["experiments"][1]["epochs"] = 99
    assert digest_of(summary_config(other, "table2")) == digest_of(table2)
    assert digest_of(summary_config(other, "table1")) != digest_of(summary_config(config, "table1"))
    relabelled = small_config()
    relabelled["tables"]["table2"][0]["label"] = "NiN (2x2)"
    assert digest_of(summary_config(relabelled, "table2")) != digest_of(table2)


def test_augmentation_defaults_to_the_datasets_and_enters_the_digest() -> None:
    runs = expand_runs(small_config())
    assert {r.augment for r in runs} == {"crop"}  # digits: cropped, never mirrored
    cifar = RunSpec.from_dict(runs[0].to_dict() | {"dataset": "cifar10", "augment": None})
    assert cifar.augment == "crop_flip"
    flipped = RunSpec.from_dict(runs[0].to_dict() | {"augment": "crop_flip"})
    assert flipped.digest != runs[0].digest
    config = small_config()
    config["experiments"][0]["augment"] = "resized_crop_flip"
    with pytest.raises(ValueError, match="augment='resized_crop_flip' is not one of digits's augmentations"):
        expand_runs(config)
