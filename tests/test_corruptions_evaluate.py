"""qgen.corruptions.evaluate: loss, accuracy and gap per -C split vs a plain loop; resuming; provenance."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_corruptions import digits_test, write_npy_layout
from torch.nn import functional as F

from qgen import data
from qgen.corruptions import CORRUPTIONS, SEVERITIES
from qgen.corruptions.evaluate import evaluate_corruptions, partial_path
from qgen.errors import ProvenanceError
from qgen.runs import load_model

from helpers import tiny_spec, train_tiny

SPEC = tiny_spec(epochs=2)
DATA = {"source": "generated", "seed": 0, "images": 30}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(SPEC, tmp_path_factory.mktemp("tiny"))


def independent_loss(run_dir: Path, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean per-sample cross-entropy and accuracy by a plain loop, sharing no code with qgen's evaluation."""
    model = load_model(run_dir / "model.pt", SPEC)
    mean, std = data.dataset_info("digits").mean[0], data.dataset_info("digits").std[0]
    x = (torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 255 - mean) / std
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 7]) for i in range(0, len(x), 7)])
    y = torch.tensor(labels, dtype=torch.int64)
    losses = F.cross_entropy(logits.double(), y, reduction="none")
    return float(losses.mean()), float((logits.argmax(1) == y).double().mean())


def test_gap_is_corrupted_test_loss_minus_clean_train_loss(tiny_run: Path, tmp_path: Path) -> None:
    images, labels = digits_test(30)
    stacks = write_npy_layout(tmp_path / "c", images, labels)
    rows = evaluate_corruptions(tiny_run, SPEC, tmp_path / "c", DATA, batch_size=8, device="cpu")
    assert [(r.corruption, r.severity) for r in rows] == [(c, s) for c in CORRUPTIONS for s in SEVERITIES]
    train_loss = json.loads((tiny_run / "metrics.json").read_text())["train"]["loss"]
    for row in rows[::7]:
        k = SEVERITIES.index(row.severity)
        block = stacks[row.corruption][30 * k : 30 * (k + 1)]
        loss, accuracy = independent_loss(tiny_run, block, labels)
        assert row.n == 30 and row.train_loss == train_loss
        assert row.loss == pytest.approx(loss, rel=1e-5) and row.accuracy == pytest.approx(accuracy)
        assert row.gap == pytest.approx(loss - train_loss, rel=1e-5, abs=1e-6)
        assert row.run_digest == SPEC.digest and json.loads(row.data) == DATA


def test_evaluation_resumes_from_finished_splits_of_the_same_run_and_data(
    tiny_run: Path, tmp_path: Path
) -> None:
    images, labels = digits_test(10)
    write_npy_layout(tmp_path / "c", images, labels)
    done = {"corruption": "fog", "severity": 2, "n": 10, "loss": 123.0, "accuracy": 0.5}
    resume = partial_path(tiny_run, SPEC, DATA, tmp_path / "c")
    resume.write_text(json.dumps({"root": str(tmp_path / "c"), "rows": [done]}))
    rows = evaluate_corruptions(tiny_run, SPEC, tmp_path / "c", DATA, batch_size=8, device="cpu")
    fog2 = next(r for r in rows if (r.corruption, r.severity) == ("fog", 2))
    assert fog2.loss == 123.0 and fog2.gap == 123.0 - fog2.train_loss
    # Other corrupted data (another seed) never resumes from it.
    other = DATA | {"seed": 1}
    assert partial_path(tiny_run, SPEC, other, tmp_path / "c") != resume
    rows = evaluate_corruptions(tiny_run, SPEC, tmp_path / "c", other, batch_size=8, device="cpu")
    assert next(r for r in rows if (r.corruption, r.severity) == ("fog", 2)).loss != 123.0
    resume.unlink()


def test_a_run_of_another_spec_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    images, labels = digits_test(10)
    write_npy_layout(tmp_path / "c", images, labels)
    other = dataclasses.replace(SPEC, epochs=3)
    with pytest.raises(
        ProvenanceError, match=r"metrics.json was made from another run spec .*epochs: 2 in the file, 3"
    ):
        evaluate_corruptions(tiny_run, other, tmp_path / "c", DATA, batch_size=8, device="cpu")
