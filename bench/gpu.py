"""Training and search speed on one GPU: what ``bench/gpu.sh`` prints (bench/RESULTS.md says how to read it).

Everything runs qgen's own code on synthetic CIFAR-shaped data (uint8 3x32x32 images held on the device
and served by ``qgen.data.ArrayLoader`` with the CIFAR augmentation; nothing is downloaded):

1. images/s of one training step of NiN 4x10 and the CIFAR ResNet-18, FP32 and int4: eager in float32,
   eager with bf16 autocast, compiled (``torch.compile``) with bf16, and a batched group
   (:mod:`qgen.group`) of ``--group`` runs in lockstep (images/s counts every member's images). Steps
   are those of ``qgen.train.train_epoch`` (channels-last, ``training_loss``, optimizer step, step clamp).
2. The amortized time of one 300-epoch CIFAR-10 NiN 4x10 (50,000 images, batch 128) in a batched group,
   from the measured group; and the whole 1,944-run NiN sweep in GPU-hours from the measured
   group throughput of every (depth, width) of the sweep (int4; int8 and int2 run the same fused op,
   FP32 is measured for NiN 4x10 in part 1).
3. The sigma search of the exact protocol (``FlatnessSearch``, 15 steps x 10 samples, certain stop)
   against the straightforward loop (a deep copy per sample, perturbed, then an accuracy pass:
   ``bench/flatness_search.py``'s ``Protocol``) on the same GPU, same trained network and images.
4. Process packing against a batched group: ``--pack`` processes each training one run on the GPU at
   once (as ``qgen train-many`` does), against one group of ``--pack`` runs; aggregate images/s.

Variants of a part run interleaved (``_timing.interleave``); each timed call ends with a device
synchronization. ``--cpu-smoke`` shrinks every size so that the whole script runs in seconds on a CPU
(compiling through Dynamo's ``eager`` backend there, and one network of the sweep); its numbers mean
nothing.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from qgen import data, quant
from qgen.data import ArrayLoader, Batching
from qgen.experiments import RunSpec
from qgen.group import Lockstep
from qgen.measures.flatness import FlatnessSearch, MeasureSettings
from qgen.measures.perturb import EvalSet
from qgen.measures.run import measured_network
from qgen.runs import build_model
from qgen.train import Execution, Trainee, build_optimizer, training_loss

from _timing import interleave, median

EPOCHS, CIFAR_TRAIN, SWEEP_RUNS = 300, 50_000, 1_944
SWEEP = {"cifar10": (2, 3, 4), "cifar100": (3, 4, 5)}  # depths per dataset; widths 8, 10, 12
WIDTHS = (8, 10, 12)
STEPPING_POINTS, PRECISIONS = 27, 4  # optimizer x lr x weight decay, and precisions, per network


@dataclass(frozen=True)
class Sizes:
    """How large everything is: the real sizes on a GPU, tiny ones for ``--cpu-smoke``."""

    models: tuple[str, ...]
    nin: dict[str, int]
    resnet: dict[str, int]
    batch: int
    images: int
    steps: int
    warmup: int
    repeats: int
    group: int
    pack: int
    sweep: dict[str, tuple[int, ...]]
    sweep_widths: tuple[int, ...]
    search_images: int
    search_depth: int
    search_samples: int
    train_steps: int


GPU = Sizes(
    models=("nin", "resnet18_cifar"), nin={"depth": 4, "width": 10}, resnet={}, batch=128,
    images=CIFAR_TRAIN, steps=10, warmup=2, repeats=3, group=STEPPING_POINTS, pack=8, sweep=SWEEP,
    sweep_widths=WIDTHS, search_images=10_000, search_depth=15, search_samples=10, train_steps=400,
)  # fmt: skip
SMOKE = Sizes(
    models=("nin",), nin={"depth": 2, "width": 1}, resnet={"base_width": 2}, batch=16, images=256,
    steps=2, warmup=1, repeats=1, group=3, pack=2, sweep={"cifar10": (2,)}, sweep_widths=(1,),
    search_images=64, search_depth=2, search_samples=2, train_steps=4,
)  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (a dry run)")
    parser.add_argument("--group", type=int, help="runs per batched group (default 27, the sweep's)")
    parser.add_argument("--pack", type=int, help="runs per pack for part 4 (default 8, the profile's)")
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode (default: default; off: no compiled variants)",
    )
    parser.add_argument("--steps", type=int, help="training steps per timed call (default 10)")
    parser.add_argument("--repeats", type=int, help="timed calls per variant (default 3)")
    parser.add_argument("--device", default="cuda", help="device of the real sizes (default cuda; e.g. cpu)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "sweep", "search", "pack"])
    return parser.parse_args()


def spec(model: str, model_args: dict[str, int], precision: str, *, optimizer: str = "sgd", lr: float = 0.1):
    """A CIFAR-10 run of the sweep's recipe (batch 128, 300 epochs, milestones 100/200)."""
    return RunSpec(
        experiment="bench", point=f"{optimizer}-{lr}", precision=precision, dataset="cifar10", model=model,
        model_args=model_args, optimizer=optimizer, lr=lr, weight_decay=1e-4, epochs=EPOCHS, batch_size=128,
        milestones=[100, 200],
    )  # fmt: skip


def stepping_points(base: RunSpec, count: int) -> list[RunSpec]:
    """``count`` points of the sweep's optimizer x learning-rate grid on ``base``'s network."""
    grid = [("sgd", lr) for lr in (0.1, 0.05, 0.01)] + [
        (opt, lr) for opt in ("adam", "rmsprop") for lr in (1e-3, 5e-4, 1e-4)
    ]
    return [replace(base, point=f"p{k}", optimizer=grid[k % 9][0], lr=grid[k % 9][1]) for k in range(count)]


class Synthetic:
    """CIFAR-shaped uint8 images with learnable labels (the class of a fixed random projection), on the
    device, batched by ``qgen.data.ArrayLoader`` with the CIFAR augmentation (crop and flip)."""

    def __init__(self, n: int, batch: int, dev: torch.device) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
        projection = torch.randn(3 * 32 * 32, 10, generator=gen)
        self.labels = (self.images.flatten(1).float() @ projection).argmax(1)
        info = data.dataset_info("cifar10")
        batching = Batching(batch, shuffle=True, seed=0, drop_last=True, device=dev)
        self.loader = ArrayLoader(
            self.images, self.labels, mean=info.mean, std=info.std, augment="crop_flip", batching=batching
        )
        self.epoch = 0

    def batches(self, count: int) -> list[tuple[Tensor, Tensor]]:
        """``count`` augmented batches, cycling through epochs."""
        out: list[tuple[Tensor, Tensor]] = []
        while len(out) < count:
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            out += list(self.loader)
        return out[:count]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def single_steps(
    run: RunSpec, execution: Execution, dev: torch.device
) -> tuple[Callable[[Tensor, Tensor], None], nn.Module]:
    """One training step of ``run`` as ``qgen.train.train_epoch`` takes it, under ``execution``; and the
    model it trains."""
    torch.manual_seed(run.seed)
    model = build_model(run).to(dev, memory_format=execution.memory_format).train()
    optimizer = build_optimizer(model, run)
    steps = quant.step_parameters(model)
    forward = execution.compiled(model)
    weights_quantized = execution.weights_quantized(model)

    def step(images: Tensor, labels: Tensor) -> None:
        with execution.autocast(dev), weights_quantized():
            loss = training_loss(forward(execution.batch(images)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        quant.clamp_steps_(steps)

    return step, model


def group_steps(
    runs: list[RunSpec], execution: Execution, dev: torch.device, tmp: Path
) -> Callable[[Tensor, Tensor], None]:
    """One lockstep training step of ``runs`` (:class:`qgen.group.Lockstep`), under ``execution``."""
    members = [Trainee.start(r, tmp / f"{r.short_digest}-{k}", dev, execution) for k, r in enumerate(runs)]
    lockstep = Lockstep(members, execution, dev)
    lockstep.join(1, 0)
    return lockstep.step


def timed(step: Callable[[Tensor, Tensor], None], batches: list, dev: torch.device) -> Callable[[], None]:
    """All ``batches`` through ``step``, then a device synchronization."""

    def run() -> None:
        for images, labels in batches:
            step(images, labels)
        sync(dev)

    return run


def variant(
    base: RunSpec, execution: Execution, members: int, batches: list, dev: torch.device, tmp: Path
) -> Callable[[], None]:
    """The timed call of one run of ``base`` (``members == 1``) or of a group of ``members`` runs."""
    if members == 1:
        return timed(single_steps(base, execution, dev)[0], batches, dev)
    return timed(group_steps(stepping_points(base, members), execution, dev, tmp), batches, dev)


def usable(make: Callable[[], Callable[[], None]], name: str) -> Callable[[], None] | None:
    """``make()``'s timed call after one trial call, or ``None`` (printed) if building or running it fails."""
    try:
        call = make()
        call()
        return call
    except Exception as error:  # a variant that does not run on this machine is reported, not fatal
        print(f"   {name}: not measured ({type(error).__name__}: {str(error).splitlines()[0][:160]})")
        return None


def throughput(sizes: Sizes, data_: Synthetic, dev: torch.device, mode: str, tmp: Path) -> dict[str, float]:
    """Part 1: images/s of every variant, interleaved per model and precision; returns the NiN int4 rates
    by variant."""
    batches = data_.batches(sizes.steps)
    bf16 = Execution("bf16" if dev.type == "cuda" else "off")
    compiled = replace(bf16, compile=mode)
    variants = {  # name: (execution, members, compiled variants only at int4: compiling takes minutes)
        "eager fp32": (Execution("off"), 1),
        "eager bf16": (bf16, 1),
        "compiled bf16": (compiled, 1),
        f"group{sizes.group} eager bf16": (bf16, sizes.group),
        f"group{sizes.group} compiled bf16": (compiled, sizes.group),
    }
    print(f"\n1. training throughput, batch {sizes.batch}, images/s; a group counts all its runs' images;")
    print(f"   compiled: torch.compile mode {mode!r}, int4 only (each compile takes a minute)")
    if dev.type != "cuda":
        print("   (not on CUDA: the bf16 columns run in float32, as training does there by default)")
    print(f"   {'model':24s} {'prec':5s}" + "".join(f"{name:>24s}" for name in variants))
    single: dict[tuple[str, str], float] = {}
    nin_int4: dict[str, float] = {}
    for model in sizes.models:
        args = sizes.nin if model == "nin" else sizes.resnet
        for precision in ("fp32", "int4"):
            base = spec(model, args, precision)
            calls: dict[str, Callable[[], None]] = {}
            for name, (execution, members) in variants.items():
                if "compiled" in name and (mode == "off" or precision != "int4"):
                    continue
                make = functools.partial(variant, base, execution, members, batches, dev, tmp / name)
                if (call := usable(make, f"{model} {precision} {name}")) is not None:
                    calls[name] = call
            times = interleave(calls, repeats=sizes.repeats, warmup=sizes.warmup - 1)
            rates = {k: variants[k][1] * sizes.steps * sizes.batch / median(v) for k, v in times.items()}
            single[(model, precision)] = rates.get("eager bf16", 0.0)
            if (model, precision) == ("nin", "int4"):
                nin_int4 = rates
            label = f"{model}({', '.join(f'{k}={v}' for k, v in args.items())})"
            cells = "".join(f"{rates[k]:24,.0f}" if k in rates else f"{'-':>24s}" for k in variants)
            print(f"   {label:24s} {precision:5s}{cells}")
    for model in sizes.models:
        if single.get((model, "int4")):
            ratio = single[(model, "fp32")] / single[(model, "int4")]
            print(f"   {model}: int4 step / fp32 step (eager bf16) = {ratio:.3f}   target <= 1.05")
    return nin_int4


def sweep(sizes: Sizes, data_: Synthetic, dev: torch.device, tmp: Path, part1: dict[str, float]) -> None:
    """Part 2: a 300-epoch NiN amortized over a group, and the sweep's GPU-hours, from measured groups;
    ``part1`` has part 1's NiN int4 rates (images/s by variant), when it ran."""
    batches = data_.batches(sizes.steps)
    per_epoch = (CIFAR_TRAIN // sizes.batch) * sizes.batch
    execution = Execution("bf16" if dev.type == "cuda" else "off")
    print(f"\n2. the NiN sweep in batched groups of {sizes.group} (eager bf16, int4), measured per network;")
    print(f"   a 300-epoch run on {per_epoch:,} images per epoch, amortized over its group")
    for name, rate in part1.items():
        if name.startswith("group"):
            minutes = EPOCHS * per_epoch / rate / 60
            print(f"   from part 1, NiN({sizes.nin}) int4 {name}: {minutes:.2f} min per run")
    hours, runs = 0.0, 0
    for dataset, depths in sizes.sweep.items():
        for depth in depths:
            for width in sizes.sweep_widths:
                networks = stepping_points(spec("nin", {"depth": depth, "width": width}, "int4"), sizes.group)
                call = timed(
                    group_steps(networks, execution, dev, tmp / f"sweep{depth}x{width}"), batches, dev
                )
                times = interleave({"group": call}, repeats=sizes.repeats, warmup=sizes.warmup)
                rate = sizes.group * sizes.steps * sizes.batch / median(times["group"])
                minutes = EPOCHS * per_epoch / rate / 60  # the group's time / its runs = time per run
                network_runs = STEPPING_POINTS * PRECISIONS
                hours += network_runs * minutes / 60
                runs += network_runs
                target = "   target <= 3 min" if (dataset, depth, width) == ("cifar10", 4, 10) else ""
                print(f"   {dataset:8s} NiN {depth}x{width:<3d} {rate:12,.0f} img/s"
                      f"   {minutes:7.2f} min per 300-epoch run{target}")  # fmt: skip
    print(f"   the sweep's {runs:,} runs: {hours:,.1f} GPU-hours on this GPU from measured throughput"
          f" (training steps; int8/int2 taken as int4; the final evaluations not counted)")  # fmt: skip
    print(
        f"   paper: 35 min per NiN on an A100, {SWEEP_RUNS:,} runs ~ {SWEEP_RUNS * 35 / 60:,.0f} A100-hours"
    )


def sigma_search(sizes: Sizes, data_: Synthetic, dev: torch.device) -> None:
    """Part 3: the exact protocol's sigma search against the straightforward loop on this device."""
    from flatness_search import Protocol

    step, model = single_steps(spec("nin", sizes.nin, "int4"), Execution("off"), dev)
    for images, labels in data_.batches(sizes.train_steps):
        step(images, labels)
    network = measured_network(model, "quantized")
    info = data.dataset_info("cifar10")
    mean = torch.tensor(info.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(info.std, device=dev).view(1, 3, 1, 1)
    n = sizes.search_images
    images = data.normalize(data_.images[:n].to(dev), mean, std).contiguous(memory_format=torch.channels_last)
    evalset = EvalSet(images, data_.labels[:n].to(dev), 5000)
    settings = MeasureSettings(depth=sizes.search_depth, samples=sizes.search_samples)  # as flatness_search
    found: dict[str, float] = {}

    def exact() -> None:
        found["exact"] = FlatnessSearch(network, evalset, settings).gaussian(False).value
        sync(dev)

    def loop() -> None:
        protocol = Protocol(
            network, evalset.batches, lambda gen: (images[:1], evalset.labels[:1]), n, settings
        )
        found["loop"] = protocol.search("sigma").value
        sync(dev)

    times = interleave({"exact": exact, "loop": loop}, repeats=1, warmup=0)
    print(f"\n3. sigma search, {sizes.search_depth} steps x {sizes.search_samples} samples on {n:,} images,"
          f" NiN({sizes.nin}) int4 trained {sizes.train_steps} steps, BN folded")  # fmt: skip
    for name in ("loop", "exact"):
        print(f"   {name:6s} {median(times[name]):8.2f} s   sigma {found[name]:.4f}")
    speed_up = median(times["loop"]) / median(times["exact"])
    print(f"   exact protocol / straightforward loop speed-up = {speed_up:.2f}x   target >= 10")


def _pack_member(args: tuple[Sizes, int, object, str]) -> tuple[float, float]:
    """One process of a pack: build a run, warm up, wait for the others, time ``steps`` steps."""
    sizes, index, barrier, device = args
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    data_ = Synthetic(sizes.images, sizes.batch, dev)
    run = stepping_points(spec("nin", sizes.nin, "int4"), sizes.pack)[index]
    step, _ = single_steps(run, Execution("bf16" if dev.type == "cuda" else "off"), dev)
    call = timed(step, data_.batches(sizes.steps), dev)
    call()
    barrier.wait()  # type: ignore[attr-defined]
    start = time.monotonic()
    call()
    return start, time.monotonic()


def packing(sizes: Sizes, data_: Synthetic, dev: torch.device, tmp: Path) -> None:
    """Part 4: ``pack`` processes training at once on the device against one batched group of ``pack``."""
    context = mp.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(sizes.pack)
        with context.Pool(sizes.pack) as pool:
            spans = pool.map(_pack_member, [(sizes, k, barrier, dev.type) for k in range(sizes.pack)])
    processes = sizes.pack * sizes.steps * sizes.batch / (max(e for _, e in spans) - min(s for s, _ in spans))
    runs = stepping_points(spec("nin", sizes.nin, "int4"), sizes.pack)
    execution = Execution("bf16" if dev.type == "cuda" else "off")
    call = timed(group_steps(runs, execution, dev, tmp / "pack"), data_.batches(sizes.steps), dev)
    times = interleave({"group": call}, repeats=sizes.repeats, warmup=sizes.warmup)
    group = sizes.pack * sizes.steps * sizes.batch / median(times["group"])
    print(f"\n4. {sizes.pack} NiN({sizes.nin}) int4 runs at once, eager bf16, images/s of all runs together")
    print(f"   process packing ({sizes.pack} processes, one step loop each): {processes:12,.0f}")
    print(f"   batched group of {sizes.pack} (one process):               {group:12,.0f}")
    print(f"   batched / processes = {group / processes:.2f}")


def main() -> int:
    args = parse_args()
    sizes = SMOKE if args.cpu_smoke else GPU
    given = {k: getattr(args, k) for k in ("group", "pack", "steps", "repeats") if getattr(args, k)}
    sizes = replace(sizes, **given)
    dev = torch.device("cpu" if args.cpu_smoke else args.device)
    if args.threads or args.cpu_smoke:
        torch.set_num_threads(args.threads or 1)
    if args.cpu_smoke:
        torch.compile = functools.partial(torch.compile, backend="eager")  # graph capture only: seconds
    elif dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run bench/gpu.sh on a GPU machine, or --cpu-smoke for a dry run")
        return 2
    name = "CPU (smoke: sizes and numbers mean nothing)" if args.cpu_smoke else str(dev)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    print(f"qgen bench/gpu.py on {name}; torch {torch.__version__}")
    Execution().prepare(dev)  # as qgen's trainers: cuDNN benchmark mode on CUDA
    started = time.perf_counter()
    data_ = Synthetic(sizes.images, sizes.batch, dev)
    with tempfile.TemporaryDirectory() as tmp:
        part1: dict[str, float] = {}
        parts = {
            "throughput": lambda: part1.update(throughput(sizes, data_, dev, args.compile_mode, Path(tmp))),
            "sweep": lambda: sweep(sizes, data_, dev, Path(tmp), part1),
            "search": lambda: sigma_search(sizes, data_, dev),
            "pack": lambda: packing(sizes, data_, dev, Path(tmp)),
        }
        for name, part in parts.items():
            if name not in args.skip:
                began = time.perf_counter()
                part()
                print(f"   ({name}: {time.perf_counter() - began:.0f} s)")
    print(f"\ndone in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
