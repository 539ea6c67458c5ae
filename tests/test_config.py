"""qgen.config and the schema: one-line problems, and the schema's defaults equal to the library's."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from qgen.config import check_config, key_path, schema_problems
from qgen.correlation import correlate
from qgen.corruptions.evaluate import evaluate_corruptions
from qgen.errors import QgenError
from qgen.experiments import RunSpec, population_confidence
from qgen.landscape import LandscapeSettings
from qgen.measures import MeasureSettings
from qgen.measures.run import RunOptions
from qgen.train import OPTIMIZERS, SCHEDULES, SELECTION
from qgen.vocab import (
    COMPILE_MODES,
    DATASETS,
    MIXED_PRECISION,
    MODEL_ARGUMENTS,
    PACK_MODES,
    PRECISIONS,
    SUMMARIES,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
PAPER = yaml.safe_load((ROOT / "config.yaml").read_text())


def defaults(properties: dict) -> dict:
    return {name: spec["default"] for name, spec in properties.items() if "default" in spec}


def field_defaults(cls: type) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def test_the_schema_defaults_are_the_librarys() -> None:
    """The schema's `default:` values fill the config (their only home in the workflow); the library's
    dataclasses, used outside the workflow, must agree with them."""
    measures = defaults(SCHEMA["properties"]["measures"]["properties"])
    assert measures == field_defaults(MeasureSettings) | field_defaults(RunOptions)
    surface = SCHEMA["properties"]["figures"]["properties"]["figure2"]["properties"]["surface"]["properties"]
    assert defaults(surface) == field_defaults(LandscapeSettings) | {"span": [-1.0, 1.0]}
    assert tuple(defaults(surface)["span"]) == LandscapeSettings().span
    experiment = defaults(SCHEMA["$defs"]["experiment"]["properties"])
    assert experiment == {k: v for k, v in field_defaults(RunSpec).items() if k in experiment}
    assert set(experiment) == {"gamma", "momentum", "seed", "select_by", "schedule"}
    correlation = defaults(SCHEMA["properties"]["correlation"]["properties"])
    assert correlation["confidence"] == inspect.signature(correlate).parameters["confidence"].default
    assert correlation["confidence"] == population_confidence({})
    batch = SCHEMA["properties"]["corruptions"]["properties"]["batch_size"]["default"]
    assert batch == inspect.signature(evaluate_corruptions).parameters["batch_size"].default


def test_the_schema_enums_are_the_vocabulary() -> None:
    defs = SCHEMA["$defs"]
    assert defs["model"]["enum"] == sorted(MODEL_ARGUMENTS)
    assert sorted(defs["dataset"]["enum"]) == sorted(DATASETS)
    assert defs["precision"]["enum"] == list(PRECISIONS)
    tables = [name for name, s in SUMMARIES.items() if s.rows == ("tables", name)]
    assert list(SCHEMA["properties"]["tables"]["properties"]) == tables
    experiment = defs["experiment"]["properties"]
    assert experiment["grid"]["properties"]["optimizer"]["propertyNames"]["enum"] == list(OPTIMIZERS)
    assert experiment["select_by"]["enum"] == list(SELECTION)
    assert experiment["schedule"]["enum"] == list(SCHEDULES)
    top = SCHEMA["properties"]
    assert top["train_mixed_precision"]["enum"] == list(MIXED_PRECISION)
    assert top["train_compile"]["enum"] == list(COMPILE_MODES)
    assert top["train_pack_mode"]["enum"] == list(PACK_MODES)


def test_problems_are_one_line_each_naming_the_key() -> None:
    bad = PAPER | {"epochz": 3}
    bad["experiments"] = [PAPER["experiments"][0] | {"epochs": 0, "grid": {"optimizer": {"lbfgs": [1]}}}]
    problems = schema_problems(bad, SCHEMA)
    assert all("\n" not in p and len(p) < 300 for p in problems)
    assert "(top level): Additional properties are not allowed ('epochz' was unexpected)" in problems
    assert "experiments[0].epochs: 0 is less than the minimum of 1" in problems
    assert any(p.startswith("experiments[0].grid.optimizer: 'lbfgs' is not one of") for p in problems)
    assert key_path(["experiments", 3, "grid", "model"]) == "experiments[3].grid.model"


def test_check_config_names_the_config_files() -> None:
    bad = PAPER | {"precisions": ["fp32", "int3"]}
    with pytest.raises(
        QgenError, match=r"^the config \(config.yaml \+ extra.yaml\) is invalid:\n  precisions\[1\]"
    ):
        check_config(bad, SCHEMA_PATH, ["config.yaml", "extra.yaml"])
    check_config(PAPER, SCHEMA_PATH, ["config.yaml"])
