"""Loss surfaces: filter normalization, the surface against direct evaluation, untouched weights, resuming."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from qgen import landscape, quant
from qgen.errors import CorruptFileError, ProvenanceError
from qgen.landscape import LandscapeSettings, Surface
from qgen.measures.run import training_eval_set
from qgen.runs import build_model, load_run

from helpers import tiny_spec, train_tiny


def test_filter_normalize_gives_each_filter_the_norm_of_the_weight_filter() -> None:
    direction = torch.ones(2, 1, 2, 2)
    weight = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]).view(2, 1, 2, 2)
    normalized = landscape.filter_normalize(direction, weight)
    torch.testing.assert_close(normalized, torch.tensor([[2.5] * 4, [1.0] * 4]).view(2, 1, 2, 2))


def test_directions_are_filter_normalized_and_zero_on_biases_bn_and_steps() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec(precision="int4"))
    direction = landscape.random_direction(model, torch.Generator().manual_seed(5))
    params = dict(model.named_parameters())
    steps = {id(s) for s in quant.step_parameters(model)}
    moved = set(landscape.moved_parameters(model))
    assert moved and any(name.endswith("parametrizations.weight.original") for name in moved)
    for name, p in params.items():
        if p.dim() <= 1 or id(p) in steps:
            assert name not in moved and not direction[name].any(), name
        else:
            assert name in moved
            torch.testing.assert_close(
                direction[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1)
            )
    again = landscape.random_direction(model, torch.Generator().manual_seed(5))
    assert all(torch.equal(direction[k], again[k]) for k in direction)


SPEC = tiny_spec(precision="int4", epochs=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(SPEC, tmp_path_factory.mktemp("landscape"))


def _loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(images), labels, reduction="sum")) / len(labels)


def test_surface_matches_direct_evaluation_and_leaves_the_model_unchanged(run_dir: Path) -> None:
    model, _ = load_run(run_dir, SPEC)
    settings = LandscapeSettings(points=3, subset=96, seed=7)
    data, _ = training_eval_set(SPEC, run_dir.parent / "data", settings.subset, 32, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, accuracy, cosine = landscape.evaluate_grid(model, data, settings)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert abs(cosine) < 0.2 and loss.shape == accuracy.shape == (3, 3)

    images, labels = data.images, data.labels
    assert loss[1, 1] == pytest.approx(_loss(model.eval(), images, labels), rel=1e-5)
    # Corner (alpha, beta) = (1, -1), recomputed by moving a copy's latent weights by hand.
    generator = torch.Generator().manual_seed(7)
    delta = landscape.random_direction(model, generator)
    eta = landscape.random_direction(model, generator)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p += delta[name] - eta[name]
    assert loss[0, 2] == pytest.approx(_loss(moved.eval(), images, labels), rel=1e-5)
    correct = (moved(images).argmax(1) == labels).float().mean()
    assert accuracy[0, 2] == pytest.approx(float(correct))


def test_surface_file_holds_grid_seed_and_subset(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "surface.npz"
    config = {"points": 3, "subset": 40, "span": [-0.5, 0.5]}
    surface = landscape.surface_of_run(run_dir, SPEC, run_dir.parent / "data", config, out)
    loaded = Surface.load(out)
    assert loaded.run_digest == SPEC.digest and json.loads(loaded.config) == config
    np.testing.assert_array_equal(loaded.x, [-0.5, 0.0, 0.5])
    np.testing.assert_array_equal(loaded.loss, surface.loss)
    assert loaded.seed == 123 and len(loaded.subset) == 40 and loaded.train_size == 400
    assert loaded.centre_loss == pytest.approx(float(loaded.loss[1, 1]), rel=1e-5)
    assert list(tmp_path.iterdir()) == [out]  # the row checkpoint is gone
    with pytest.raises(
        ProvenanceError, match=r"metrics.json was made from another run spec .*seed: 0 in the file, 1"
    ):
        landscape.surface_of_run(
            run_dir, dataclasses.replace(SPEC, seed=1), run_dir.parent / "data", config, out
        )
    out.write_bytes(out.read_bytes()[:300])
    with pytest.raises(CorruptFileError, match=f"{out} cannot be read as a loss surface"):
        Surface.load(out)


def test_killed_grid_resumes_after_its_finished_rows(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = load_run(run_dir, SPEC)
    settings = LandscapeSettings(points=3, subset=32, copies_per_pass=1)
    data, _ = training_eval_set(SPEC, run_dir.parent / "data", settings.subset, 32, torch.device("cpu"))
    reference, _, _ = landscape.evaluate_grid(model, data, settings)

    original = landscape.PerturbedEvaluator.loss_and_accuracy
    calls = []
    die_at = [7]  # the first point of the third row

    def counted(self, deltas):
        calls.append(1)
        if len(calls) == die_at[0]:
            raise KeyboardInterrupt
        return original(self, deltas)

    fingerprint = landscape.grid_fingerprint("run", settings)
    checkpoint = landscape.checkpoint_path(tmp_path / "s.npz", fingerprint)
    monkeypatch.setattr(landscape.PerturbedEvaluator, "loss_and_accuracy", counted)
    with pytest.raises(KeyboardInterrupt):
        landscape.evaluate_grid(model, data, settings, checkpoint=checkpoint, fingerprint=fingerprint)
    with np.load(checkpoint) as saved:
        assert int(saved["rows_done"]) == 2 and np.isnan(saved["loss"][2]).all()

    calls.clear()
    die_at[0] = 0
    resumed, _, _ = landscape.evaluate_grid(
        model, data, settings, checkpoint=checkpoint, fingerprint=fingerprint
    )
    assert len(calls) == 3
    np.testing.assert_allclose(resumed, reference, rtol=1e-6)
    # Another model or grid has its own checkpoint file: it starts afresh and leaves this one alone.
    assert (
        landscape.checkpoint_path(tmp_path / "s.npz", landscape.grid_fingerprint("other", settings))
        != checkpoint
    )
    assert landscape.grid_fingerprint("run", LandscapeSettings(points=5)) != fingerprint
    assert landscape.grid_fingerprint("run", dataclasses.replace(settings, copies_per_pass=3)) == fingerprint


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"span": [1, -1]}, "min < max"),
        ({"points": 1}, "points must be >= 2"),
        ({"copies": 2}, "unknown landscape setting"),
    ],
)
def test_bad_settings_are_named(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LandscapeSettings.from_dict(values)


def test_batched_copies_give_the_same_surface(run_dir: Path) -> None:
    """A whole row per pass (vmapped copies, the GPU default) equals one point per pass."""
    model, _ = load_run(run_dir, SPEC)
    data, _ = training_eval_set(SPEC, run_dir.parent / "data", 32, 32, torch.device("cpu"))
    one, acc_one, _ = landscape.evaluate_grid(model, data, LandscapeSettings(points=3, copies_per_pass=1))
    row, acc_row, _ = landscape.evaluate_grid(model, data, LandscapeSettings(points=3, copies_per_pass=3))
    np.testing.assert_allclose(row, one, rtol=1e-4)
    np.testing.assert_array_equal(acc_row, acc_one)
