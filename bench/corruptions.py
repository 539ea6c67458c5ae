"""Corruption speed: our generator vs ``imagecorruptions-imaug``, and -C evaluation vs a plain loop.

1. Generation, images/s on the same 224x224 RGB images (seeded plasma-fractal "photographs"): our
   ``qgen.corruptions.transforms.corrupt(image, name, severity, rng, "imagenet")`` against the maintained
   package's ``imagecorruptions.corrupt(image, severity, name)`` (ImageNet-C constants too), one process
   each, every corruption at every severity, interleaved after a warm-up (numba compiles the package's
   glass blur on first use; both decode the frost photographs once per process, ours keep them). Per
   corruption and in total (the sum of the 15 median times). Target: ours / package >= 1.5 in total;
   the per-corruption ratios are printed, not judged (JPEG runs the same PIL codec on both sides, and
   the package enlarges pixelate with NEAREST where the reference, and we, use BOX). Install the
   package with ``pip install -e '.[bench]'`` (``make bench`` does).

2. Evaluation, images/s of one -C split: ``qgen.train.evaluate`` over ``split_loader`` (what
   ``qgen evaluate-corruptions`` runs per split: read the severity block of the ``.npy``, hold it on the
   device, normalize per batch, summed per-sample losses) against a plain loop that reads the same block
   and does forward + summed cross-entropy per batch. Both on the same model and device. Target >= 0.95.

    python bench/corruptions.py                  # ~2 min on 2 cores
    python bench/corruptions.py --images 1 --repeats 2 --skip-eval   # quick look at generation
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from qgen import data
from qgen.corruptions import CORRUPTIONS, SEVERITIES
from qgen.corruptions.evaluate import split_loader
from qgen.corruptions.generate import generate_npy
from qgen.corruptions.transforms import corrupt, plasma_fractal
from qgen.experiments import RunSpec
from qgen.train import build_model, evaluate, resolve_device

from _timing import Target, interleave, median, set_threads, verdict

GENERATION_TARGET = Target(1.5, at_least=True)
EVALUATION_TARGET = Target(0.95, at_least=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="224x224 images per corruption and severity")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-eval", action="store_true", help="only the generation comparison")
    parser.add_argument(
        "--corruptions", default=",".join(CORRUPTIONS), help="comma-separated subset (default: all 15)"
    )
    return parser.parse_args()


def photographs(count: int) -> list[np.ndarray]:
    """Seeded 224x224 RGB images with smooth regions and detail at every scale (one fractal per channel)."""
    rng = np.random.default_rng(0)
    return [
        (np.stack([plasma_fractal(256, 1.6, rng)[:224, :224] for _ in range(3)], axis=-1) * 255).astype(
            np.uint8
        )
        for _ in range(count)
    ]


def generation(args: argparse.Namespace) -> bool:
    try:
        from imagecorruptions import corrupt as package_corrupt
    except ImportError:
        print("imagecorruptions-imaug is not installed: pip install -e '.[bench]'")
        return False
    warnings.simplefilter("ignore")  # the package warns on every call under recent scikit-image
    images = photographs(args.images)
    per_call = len(images) * len(SEVERITIES)
    print(
        f"generation, 224x224, {len(images)} images x {len(SEVERITIES)} severities per corruption, "
        f"{args.warmup} warm-up + {args.repeats} interleaved rounds, one process each; images/s (median)"
    )
    print(f"  {'corruption':18s} {'ours':>9s} {'package':>9s} {'ratio':>7s}")
    totals = {"ours": 0.0, "package": 0.0}
    names = args.corruptions.split(",")
    for name in names:

        def ours(name: str = name) -> None:
            for severity in SEVERITIES:
                rng = np.random.default_rng(severity)
                for image in images:
                    corrupt(image, name, severity, rng, "imagenet")

        def package(name: str = name) -> None:
            for severity in SEVERITIES:
                for image in images:
                    package_corrupt(image, severity=severity, corruption_name=name)

        times = interleave({"ours": ours, "package": package}, repeats=args.repeats, warmup=args.warmup)
        medians = {k: median(v) for k, v in times.items()}
        for key in totals:
            totals[key] += medians[key]
        rates = {k: per_call / v for k, v in medians.items()}
        ratio = rates["ours"] / rates["package"]
        print(f"  {name:18s} {rates['ours']:9.1f} {rates['package']:9.1f} {ratio:6.2f}x")
    images_total = per_call * len(names)
    what = f"all {len(names)}"
    print(f"  {what:18s} {images_total / totals['ours']:9.1f} {images_total / totals['package']:9.1f}")
    return verdict(f"ours/package ({what})", totals["package"] / totals["ours"], GENERATION_TARGET)


def plain_split(model: torch.nn.Module, root: Path, name: str, severity: int, batch: int, device) -> float:
    """The textbook loop: read the block, normalize each batch, sum per-sample losses."""
    labels = np.load(root / "labels.npy")
    n = len(labels) // len(SEVERITIES)
    images = torch.from_numpy(np.load(root / f"{name}.npy")[(severity - 1) * n : severity * n])
    targets = torch.from_numpy(labels[(severity - 1) * n : severity * n].astype(np.int64))
    info = data.dataset_info("digits")
    mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, 3, 1, 1)
    total = torch.zeros((), dtype=torch.float64, device=device)
    model.eval()
    with torch.no_grad():
        for start in range(0, n, batch):
            x = images[start : start + batch].to(device).permute(0, 3, 1, 2).float() / 255
            y = targets[start : start + batch].to(device)
            total += F.cross_entropy(model((x - mean) / std), y, reduction="sum").double()
    return float(total) / n


def evaluation(args: argparse.Namespace) -> bool:
    device = resolve_device("auto")
    images, labels = data.load_arrays("digits", "test", root=Path("data/digits"))
    pixels = images.permute(0, 2, 3, 1).contiguous().numpy()
    spec = RunSpec(
        experiment="bench", point="bench", precision="int4", dataset="digits", model="resnet18_cifar",
        model_args={}, optimizer="sgd", lr=0.1, weight_decay=0.0, epochs=1, batch_size=500, milestones=[],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(spec).to(device).eval()
    batch = 500
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_npy(pixels, labels.numpy(), root, dataset="digits", seed=0, profile="cifar", workers=1,
                     corruptions=("fog",))  # fmt: skip

        def ours() -> None:
            for severity in SEVERITIES:
                evaluate(
                    model, split_loader("digits", root, "fog", severity, batch_size=batch, device=device)
                )

        def plain() -> None:
            for severity in SEVERITIES:
                plain_split(model, root, "fog", severity, batch, device)

        loss_ours = evaluate(
            model, split_loader("digits", root, "fog", 3, batch_size=batch, device=device)
        ).loss
        assert abs(loss_ours - plain_split(model, root, "fog", 3, batch, device)) < 1e-4 * max(1.0, loss_ours)
        times = interleave({"ours": ours, "plain": plain}, repeats=args.repeats, warmup=args.warmup)
    n = len(SEVERITIES) * len(labels)
    print(
        f"evaluation, ResNet-18 (CIFAR, int4) on digits-C fog, {n} images per round on {device}, "
        f"{args.warmup} warm-up + {args.repeats} interleaved rounds"
    )
    for key in ("ours", "plain"):
        print(f"  {key:5s} {n / median(times[key]):9.1f} img/s")
    return verdict("ours/plain", median(times["plain"]) / median(times["ours"]), EVALUATION_TARGET)


def main() -> int:
    args = parse_args()
    print(f"{set_threads(args.threads)} torch threads")
    passed = generation(args)
    if not args.skip_eval:
        passed &= evaluation(args)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
