"""``qgen evaluate-corruptions``: loss, accuracy and generalization gap of one run on every -C split.

The gap of a cell is QGen's (§4.3, App. C.2): the corrupted test loss minus the *clean training* loss,
where the training loss is the run's ``metrics.json`` train loss (the full unaugmented training set,
summed per-sample losses). Test losses are summed per-sample losses over the split divided by its size
(:func:`qgen.train.evaluate`), not a mean of batch means.

Results go to a tidy CSV (one row per corruption and severity). Finished splits are kept in a hidden
``.corruptions.<key>.partial.json`` beside the run (:func:`partial_path`), so a killed job resumes with
the next split.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision import transforms
from torchvision.datasets import ImageFolder

from qgen import data, files
from qgen.corruptions import CORRUPTIONS, SEVERITIES
from qgen.corruptions.layout import folder_problems, layout_for_size, npy_problems, read_npy_split
from qgen.experiments import RunSpec, digest_of
from qgen.runs import evaluate, load_run, resolve_device

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class CorruptionResult:
    """One row of ``corruptions.csv``."""

    schema_version: int
    run_id: str
    run_digest: str
    data: str
    experiment: str
    precision: str
    point: str
    status: str
    corruption: str
    severity: int
    n: int | None
    loss: float | None
    accuracy: float | None
    train_loss: float | None
    gap: float | None


def split_loader(
    dataset: str,
    root: Path,
    corruption: str,
    severity: int,
    *,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
) -> data.BatchLoader:
    """Unaugmented batches of one corruption at one severity, normalized as the clean dataset."""
    info = data.dataset_info(dataset)
    batching = data.Batching(batch_size, shuffle=False, seed=0, drop_last=False, device=device)
    if layout_for_size(info.image_size) == "npy":
        images, labels = read_npy_split(root, corruption, severity)
        # NHWC memory viewed as NCHW is channels_last, which CPU convolutions run about 25% faster on.
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
        targets = torch.from_numpy(labels)
        return data.ArrayLoader(
            pixels, targets, mean=info.mean, std=info.std, augment="none", batching=batching
        )
    # ImageNet-C images are stored at the crop size: no Resize(256) again (ImageNet-C/test.py).
    transform = transforms.Compose(
        [
            transforms.CenterCrop(info.image_size),
            transforms.ToTensor(),
            transforms.Normalize(info.mean, info.std),
        ]
    )
    folder = ImageFolder(str(root / corruption / str(severity)), transform=transform)
    if len(folder.classes) != info.num_classes:
        raise ValueError(
            f"{folder.root} holds {len(folder.classes)} class folders, expected {info.num_classes}"
        )
    return data.FolderLoader(folder, batching=batching, workers=workers)


def check_corrupted_root(dataset: str, root: Path) -> None:
    """Fail early, naming the file at fault, if ``root`` lacks a split of the benchmark."""
    info = data.dataset_info(dataset)
    if layout_for_size(info.image_size) == "npy":
        problems = npy_problems(root)
    else:
        problems = folder_problems(root, info.num_classes)
    if problems:
        raise FileNotFoundError(f"corrupted {dataset} under {root} is incomplete: {'; '.join(problems[:5])}")


def partial_path(run_dir: Path, spec: RunSpec, data_setting: dict[str, Any], root: Path) -> Path:
    """The resume file of one run on one corrupted set: keyed by both, so neither a retrained run nor
    other corrupted data ever resumes from it."""
    key = digest_of([spec.digest, data_setting, str(root)])[:16]
    return run_dir / f".corruptions.{key}.partial.json"


def evaluate_corruptions(
    run_dir: Path,
    spec: RunSpec,
    root: Path,
    data_setting: dict[str, Any],
    *,
    batch_size: int = 500,
    device: str = "auto",
    workers: int = 0,
) -> list[CorruptionResult]:
    """Every corruption x severity of the run of ``spec`` in ``run_dir`` on the corrupted set under ``root``.

    ``data_setting`` is the config's ``corruptions.data.<dataset>`` entry; every row records it (as JSON)
    and the run's digest, which the corruption tables check against their config.
    """
    model, metrics = load_run(run_dir, spec)
    resume = partial_path(run_dir, spec, data_setting, root)
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if resume.exists():
        done = {(r["corruption"], r["severity"]): r for r in files.read_json(resume)["rows"]}
        log.info("%s: resuming after %d finished splits", spec.run_id, len(done))
    base = {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "run_digest": spec.digest,
        "data": json.dumps(data_setting, sort_keys=True),
        "experiment": spec.experiment,
        "precision": spec.precision,
        "point": spec.point,
        "status": metrics["status"],
    }
    if metrics["status"] != "ok":
        empty = dict.fromkeys(("n", "loss", "accuracy", "train_loss", "gap"))
        return [
            CorruptionResult(**base, corruption=c, severity=s, **empty)
            for c in CORRUPTIONS
            for s in SEVERITIES
        ]
    check_corrupted_root(spec.dataset, root)
    dev = resolve_device(device)
    model = model.to(dev)
    train_loss = metrics["train"]["loss"]
    rows = []
    for corruption in CORRUPTIONS:
        for severity in SEVERITIES:
            if (corruption, severity) not in done:
                loader = split_loader(
                    spec.dataset,
                    root,
                    corruption,
                    severity,
                    batch_size=batch_size,
                    device=dev,
                    workers=workers,
                )
                result = evaluate(model, loader)
                done[(corruption, severity)] = {
                    "corruption": corruption,
                    "severity": severity,
                    "n": loader.num_samples,
                    "loss": result.loss,
                    "accuracy": result.accuracy,
                }
                files.write_json(resume, {"root": str(root), "rows": list(done.values())})
                log.info(
                    "%s: %s severity %d: loss %.4f, accuracy %.2f%% (%d images)",
                    spec.run_id,
                    corruption,
                    severity,
                    result.loss,
                    100 * result.accuracy,
                    loader.num_samples,
                )
            row = done[(corruption, severity)]
            rows.append(CorruptionResult(**base, **row, train_loss=train_loss, gap=row["loss"] - train_loss))
    return rows


def write_results(path: Path, rows: list[CorruptionResult], resume: Path) -> None:
    """Write ``corruptions.csv`` and drop the resume file."""
    files.write_csv(path, [asdict(r) for r in rows])
    resume.unlink(missing_ok=True)
