"""The ``qgen`` command: one subcommand per pipeline step; each Snakemake rule calls one of them."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from qgen import __version__
from qgen.errors import MissingColumnError, QgenError
from qgen.vocab import (
    COMPILE_MODES,
    MIXED_PRECISION,
    REPORTED,
    SUMMARIES,
    TABLE_NAMES,
    execution_options,
)

if TYPE_CHECKING:
    from qgen.experiments import RunSpec
    from qgen.train import Execution

log = logging.getLogger("qgen")


def _download(args: argparse.Namespace) -> None:
    from qgen import data, files

    data.prepare_dataset(args.dataset, args.root, download=not args.verify_only)
    if args.marker:
        files.write_json(args.marker, {"dataset": args.dataset, "root": str(args.root)})
    log.info("%s is ready under %s", args.dataset, args.root)


def _train(args: argparse.Namespace) -> None:
    import torch

    from qgen.stopping import EXIT_STOPPED
    from qgen.train import Stopped, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if int(os.environ.get("RANK", "0")) > 0:  # data-parallel peers: rank 0 reports the progress
        logging.getLogger().setLevel(logging.WARNING)
    try:
        train(
            _spec(args),
            data_root=args.data_root,
            out_dir=args.out,
            ckpt_dir=args.ckpt_dir,
            device=args.device,
            workers=args.workers,
            checkpoint_every_s=60 * args.checkpoint_minutes,
            execution=_execution(args),
        )
    except Stopped as exc:
        log.warning("%s", exc)
        sys.exit(EXIT_STOPPED)


def _execution(args: argparse.Namespace) -> Execution:
    """The :class:`qgen.train.Execution` of --mixed-precision, --channels-last and --compile."""
    from qgen.train import Execution

    return Execution(args.mixed_precision, args.channels_last, args.compile)


def _train_many(args: argparse.Namespace) -> None:
    from qgen.experiments import RunSpec
    from qgen.packing import train_batched, train_many

    specs = [RunSpec.from_dict(spec) for spec in json.loads(args.specs)]
    where = dict(
        data_root=args.data_root,
        ckpt_root=args.ckpt_root,
        manifest=args.manifest,
        device=args.device,
        checkpoint_minutes=args.checkpoint_minutes,
    )
    if args.batched:
        import torch

        torch.set_num_threads(args.threads)
        status = train_batched(specs, **where, execution=_execution(args))
    else:
        status = train_many(
            specs,
            **where,
            threads=args.threads,
            execution_options=execution_options(args.mixed_precision, args.channels_last, args.compile),
        )
    if status:
        sys.exit(status)


def _unpack(args: argparse.Namespace) -> None:
    from qgen.packing import unpack

    unpack(args.manifest, _spec(args), args.out)


def _spec(args: argparse.Namespace) -> RunSpec:
    """The run spec of ``--spec`` (JSON of a :class:`qgen.experiments.RunSpec`)."""
    from qgen.experiments import RunSpec

    try:
        return RunSpec.from_dict(json.loads(args.spec))
    except (json.JSONDecodeError, TypeError) as error:
        raise QgenError(f"--spec is not the JSON of a run spec: {error}") from None


def _measure(args: argparse.Namespace) -> None:
    import torch

    from qgen import files
    from qgen.measures.run import measure_run

    if args.threads:
        torch.set_num_threads(args.threads)
    record = measure_run(
        args.run_dir, _spec(args), args.data_root, json.loads(args.settings), device=args.device
    )
    files.write_json(args.out, record)
    log.info("wrote %s", args.out)


def _summarize(args: argparse.Namespace) -> None:
    from qgen import files, summary

    sliced = summary.read_config(args.config, args.name)
    records = summary.summarize(sliced, args.runs_root, args.landscape_root)
    files.write_csv(args.out, records)
    log.info("wrote %s (%d rows)", args.out, len(records))


def _render(args: argparse.Namespace) -> None:
    from qgen import files, summary, tables

    records = summary.read_summary(args.csv, args.config, args.table)
    try:
        context = tables.context(args.table)(records)
    except KeyError as exc:
        raise MissingColumnError(str(args.csv), exc.args[0]) from None
    source = f"{args.csv} (config digest {records[0][summary.PROVENANCE]})"
    files.write_text(args.out, tables.render(args.template, context, source))
    log.info("wrote %s", args.out)


def _landscape(args: argparse.Namespace) -> None:
    import torch

    from qgen.landscape import surface_of_run

    if args.threads:
        torch.set_num_threads(args.threads)
    surface_of_run(
        args.run_dir, _spec(args), args.data_root, json.loads(args.settings), args.out, device=args.device
    )


def _figure1(args: argparse.Namespace) -> None:
    from qgen import figures, files, summary

    records = summary.read_summary(args.csv, args.config, "figure1")
    figures.plot_step_sizes(records, args.out)
    files.write_csv(args.data, records)


def _figure3(args: argparse.Namespace) -> None:
    from qgen import figures, files, summary

    records = summary.read_summary(args.csv, args.config, "figure3")
    figures.plot_population(records, args.out)
    files.write_csv(args.data, records)


def _figure2(args: argparse.Namespace) -> None:
    from qgen import figures, files, summary
    from qgen.landscape import Surface
    from qgen.provenance import require_digest

    records = summary.read_summary(args.csv, args.config, "figure2")
    by_run = {r["run_id"]: r for r in records}
    surfaces = []
    for path in args.surfaces:
        surface = Surface.load(path)
        if surface.run_id not in by_run:
            raise QgenError(f"{path}: run {surface.run_id} is not one of {args.csv}'s {sorted(by_run)}")
        require_digest(
            path, f"run of {surface.run_id}", surface.run_digest, by_run[surface.run_id]["run_digest"]
        )
        surfaces.append(surface)
    for r in records:
        log.info("%s: centre loss %.4f, mean rise %.4f", r["run_id"], r["centre_loss"], r["mean_rise"])
    figures.plot_surfaces(surfaces, [by_run[s.run_id] for s in surfaces], args.out, zmax=args.zmax)
    files.write_csv(args.data, records)


def _named(items: Sequence[str], option: str, names: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` items as a dict, every NAME one of ``names``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise QgenError(f"{option} {item!r}: expected NAME=VALUE with NAME one of {list(names)}")
        out[name] = value
    return out


def _report(args: argparse.Namespace) -> None:
    from qgen import files, summary
    from qgen.report.claims import COVERAGE
    from qgen.report.paper import read_notes, read_paper_table
    from qgen.report.render import build_context, render
    from qgen.report.values import SOURCES, Value, diverged, values_of

    sources: dict[str, list[Value] | None] = dict.fromkeys(SOURCES)
    paths = _named(args.results, "--results", SOURCES)
    configs = _named(args.configs, "--configs", SOURCES)
    diverged_cells: list[str] = []
    for name, path in paths.items():
        if name not in configs:
            raise QgenError(f"--results {name}={path} has no --configs {name}=<config slice file>")
        rows = summary.read_summary(path, configs[name], name)
        sources[name] = values_of(name, rows)
        diverged_cells += diverged(name, rows)
    cells = [cell for path in args.paper for cell in read_paper_table(path)]
    coverage = COVERAGE if args.coverage is None else args.coverage
    context = build_context(cells, sources, read_notes(args.notes), diverged_cells, coverage)
    for template, out in zip(args.templates, args.out, strict=True):
        files.write_text(out, render(template, context))
        log.info("wrote %s", out)
    log.info("claims on our results: %s", context["counts"])


def _listing(what: str) -> list[str]:
    """The lines `qgen list <what>` prints: one name a line, with what a user picks it by."""
    from qgen import vocab

    if what == "models":
        return [
            f"{name}  " + " ".join(f"{a.name}={a.default!r}" for a in arguments)
            for name, arguments in sorted(vocab.MODEL_ARGUMENTS.items())
        ]
    if what == "datasets":
        return [
            f"{d.name}  {d.label}, {d.num_classes} classes, {d.image_size}x{d.image_size}, "
            f"augment: {', '.join(d.augmentations)}"
            for d in vocab.DATASETS.values()
        ]
    if what == "precisions":
        return [f"{name}  {vocab.PRECISION_LABELS[name]}" for name in vocab.PRECISIONS]
    if what == "measures":
        return [f"{m.name}  paper eq. {m.equation}, search {m.search}" for m in vocab.MEASURES]
    if what == "summaries":
        return [f"{s.name}  from each run's {s.result}" for s in vocab.SUMMARIES.values()]
    if what == "augmentations":
        return [f"{name}  {text}" for name, text in vocab.AUGMENTATIONS.items()]
    from qgen.corruptions import GROUPS, LABELS

    return [f"{name}  {LABELS[name]} ({group})" for group, names in GROUPS.items() for name in names]


LISTABLE = ("models", "datasets", "precisions", "measures", "summaries", "augmentations", "corruptions")


def _list(args: argparse.Namespace) -> None:
    print("\n".join(_listing(args.what)))


def _download_corruptions(args: argparse.Namespace) -> None:
    from qgen import data, files
    from qgen.corruptions.official import prepare_official

    info = data.dataset_info(args.dataset)
    prepare_official(args.dataset, args.root, num_classes=info.num_classes, download=not args.verify_only)
    if args.marker:
        files.write_json(args.marker, {"dataset": args.dataset, "source": "official", "root": str(args.root)})
    log.info("official corrupted %s is ready under %s", args.dataset, args.root)


def _corrupt(args: argparse.Namespace) -> None:
    from qgen import data, files
    from qgen.corruptions import generate
    from qgen.corruptions.layout import layout_for_size
    from qgen.corruptions.transforms import profile_for_size

    info = data.dataset_info(args.dataset)
    profile = args.profile or profile_for_size(info.image_size)
    options = dict(dataset=args.dataset, seed=args.seed, profile=profile, workers=args.workers)
    where = f"{args.dataset}/{args.split}"
    if layout_for_size(info.image_size) == "npy":
        images, labels = data.load_arrays(args.dataset, args.split, root=args.data_root)
        keep = data.subset_indices(len(labels), args.subset, args.seed, where=where)
        if keep is not None:
            images, labels = images[keep], labels[keep]
        pixels = images.permute(0, 2, 3, 1).contiguous().numpy()
        record = generate.generate_npy(pixels, labels.numpy(), args.out, **options)
    else:
        samples = data.image_files(args.dataset, args.split, root=args.data_root)
        keep = data.subset_indices(len(samples), args.subset, args.seed, where=where)
        if keep is not None:
            samples = [samples[i] for i in keep.tolist()]
        record = generate.generate_folder(samples, args.out, crop=info.image_size, **options)
    if args.marker:
        files.write_json(args.marker, record | {"root": str(args.out)})
    log.info("wrote -C style %s (%s profile, seed %d) under %s", args.dataset, profile, args.seed, args.out)


def _evaluate_corruptions(args: argparse.Namespace) -> None:
    import torch

    from qgen.corruptions.evaluate import evaluate_corruptions, partial_path, write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    spec, data_setting = _spec(args), json.loads(args.data_setting)
    rows = evaluate_corruptions(
        args.run_dir,
        spec,
        args.root,
        data_setting,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
    )
    write_results(args.out, rows, partial_path(args.run_dir, spec, data_setting, args.root))
    log.info("wrote %s (%d rows)", args.out, len(rows))


TORCH_THREADS = (0, "CPU threads for torch (default: torch's choice)")


def _add_run(p: argparse.ArgumentParser) -> None:
    """--run-dir and --spec: a trained run, and the spec its files must have been made from."""
    p.add_argument(
        "--run-dir", type=Path, required=True, help="directory holding model.pt, init.pt, metrics.json"
    )
    p.add_argument("--spec", required=True, help="the run as the config defines it (JSON of a RunSpec)")


def _add_device_options(p: argparse.ArgumentParser, *, threads: tuple[int, str] = TORCH_THREADS) -> None:
    """--device and --threads; ``threads`` is the default and help of --threads."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--threads", type=int, default=threads[0], help=threads[1])


def _add_training_options(p: argparse.ArgumentParser, *, threads: tuple[int, str]) -> None:
    """The options `train` and `train-many` share; ``threads`` is the default and help of --threads."""
    p.add_argument("--data-root", type=Path, required=True, help="the dataset's directory")
    _add_device_options(p, threads=threads)
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=5.0,
        help="also checkpoint inside an epoch this often (default: 5); always after every epoch",
    )
    p.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION,
        default="auto",
        help="bf16 autocast of the training forward; auto: on CUDA only (default)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train with channels-last tensors (default: yes)",
    )
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="off",
        help="torch.compile mode of the training step; reduce-overhead adds CUDA graphs (default: off)",
    )


def _add_summary_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        required=True,
        help="results/summary/<name>.config.json: the config slice that defines the summary",
    )


def _add_figure(
    sub: argparse._SubParsersAction,
    name: str,
    what: str,
    func: Callable[[argparse.Namespace], None],
    also: str = "",
) -> argparse.ArgumentParser:
    """The subcommand that draws figure ``name`` from its summary CSV (and, ``also``, other inputs)."""
    p = sub.add_parser(name, help=f"draw {what} from its summary CSV{also}")
    p.add_argument("--csv", type=Path, required=True, help=f"summary CSV from `qgen summarize {name}`")
    _add_summary_config(p)
    p.add_argument("--out", type=Path, nargs="+", required=True, help="files to write (.pdf, .png)")
    p.add_argument("--data", type=Path, required=True, help="the figure's numbers as CSV, for readers")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qgen",
        description="The steps of the QGen reproduction pipeline, one subcommand each; the Snakemake rules "
        "call them (see README.md).",
    )
    parser.add_argument("--version", action="version", version=f"qgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("download", help="download and verify a dataset (or check a local tree)")
    p.add_argument("dataset", help="dataset name (see `qgen list datasets`)")
    p.add_argument("--root", type=Path, required=True, help="directory holding this dataset")
    p.add_argument("--marker", type=Path, help="file written once the dataset is verified")
    p.add_argument("--verify-only", action="store_true", help="never download; only verify what is there")
    p.set_defaults(func=_download)

    p = sub.add_parser("train", help="train one run (resumes from --ckpt-dir)")
    p.add_argument("--spec", required=True, help="the run as JSON (a qgen.experiments.RunSpec)")
    p.add_argument("--out", type=Path, required=True, help="directory for model.pt, init.pt, metrics.json")
    p.add_argument(
        "--ckpt-dir",
        type=Path,
        required=True,
        help="the run's checkpoint directory: its lock, and resumable state in <dir>/<spec digest>/",
    )
    _add_training_options(p, threads=TORCH_THREADS)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (ImageNet)")
    p.set_defaults(func=_train)

    p = sub.add_parser("train-many", help="train a pack of runs at once on one device")
    p.add_argument("--specs", required=True, help="the runs as a JSON list of qgen.experiments.RunSpec")
    p.add_argument("--ckpt-root", type=Path, required=True, help="resume state goes to <ckpt-root>/<run id>")
    p.add_argument("--manifest", type=Path, required=True, help="JSON written once every run has finished")
    p.add_argument(
        "--batched",
        action="store_true",
        help="train the runs in lockstep in this process, one vmapped step for all (qgen.group); "
        "default: one `qgen train` process per run",
    )
    _add_training_options(p, threads=(1, "CPU threads shared by the runs (default: 1)"))
    p.set_defaults(func=_train_many)

    p = sub.add_parser("unpack", help="copy one run's outputs out of a trained pack")
    p.add_argument("--manifest", type=Path, required=True, help="the pack's manifest (qgen train-many)")
    p.add_argument("--spec", required=True, help="the run as the config defines it (JSON of a RunSpec)")
    p.add_argument("--out", type=Path, required=True, help="directory for model.pt, init.pt, metrics.json")
    p.set_defaults(func=_unpack)

    p = sub.add_parser("measure", help="flatness measures (PAC-Bayes, sharpness, curvature) of a trained run")
    _add_run(p)
    p.add_argument("--data-root", type=Path, required=True, help="the dataset's directory")
    p.add_argument("--settings", default="{}", help="measure settings as JSON (config.yaml `measures`)")
    p.add_argument("--out", type=Path, required=True, help="measures.json to write")
    _add_device_options(p)
    p.set_defaults(func=_measure)

    p = sub.add_parser("summarize", help="summarise a table's or figure's verified run results into a CSV")
    p.add_argument("name", help=", ".join(SUMMARIES))
    _add_summary_config(p)
    p.add_argument("--runs-root", type=Path, default=Path("results/runs"), help="default: results/runs")
    p.add_argument(
        "--landscape-root", type=Path, default=Path("results/landscape"), help="default: results/landscape"
    )
    p.add_argument("--out", type=Path, required=True, help="CSV to write")
    p.set_defaults(func=_summarize)

    p = sub.add_parser("render", help="render a table's summary CSV to LaTeX")
    p.add_argument("table", help=", ".join(TABLE_NAMES))
    p.add_argument("--csv", type=Path, required=True, help="summary CSV from `qgen summarize`")
    _add_summary_config(p)
    p.add_argument("--template", type=Path, required=True, help="jinja2 LaTeX template")
    p.add_argument("--out", type=Path, required=True, help=".tex file to write")
    p.set_defaults(func=_render)

    p = sub.add_parser("landscape", help="loss surface of a trained run (paper Figure 2), resumable by rows")
    _add_run(p)
    p.add_argument("--data-root", type=Path, required=True, help="the dataset's directory")
    p.add_argument(
        "--settings", default="{}", help="grid settings as JSON (config.yaml `figures.figure2.surface`)"
    )
    p.add_argument("--out", type=Path, required=True, help=".npz file to write")
    _add_device_options(p)
    p.set_defaults(func=_landscape)

    _add_figure(sub, "figure1", "Figure 1 (bin width per layer)", _figure1)

    p = _add_figure(sub, "figure2", "Figure 2 (loss surfaces)", _figure2, " and the surfaces")
    p.add_argument("--surfaces", type=Path, nargs="+", required=True, help=".npz files from `qgen landscape`")
    p.add_argument("--zmax", type=float, help="clip the plotted loss at this value (default: the highest)")

    _add_figure(sub, "figure3", "Figure 3 (each measure against the gap)", _figure3)

    p = sub.add_parser("report", help="the reproduction report: paper vs reproduced cells, claim checks")
    p.add_argument("--paper", type=Path, nargs="+", required=True, help="transcribed paper tables (CSV)")
    p.add_argument("--notes", type=Path, required=True, help="the paper's known inconsistencies (YAML)")
    p.add_argument(
        "--results",
        nargs="*",
        default=[],
        help=f"our summaries as NAME=CSV ({', '.join(REPORTED)})",
    )
    p.add_argument(
        "--configs", nargs="*", default=[], help="NAME=JSON: the config slice each summary must summarise"
    )
    p.add_argument(
        "--coverage",
        type=float,
        help="a difference decides a claim when it exceeds this many standard uncertainties "
        "(default: qgen.report.claims.COVERAGE, 2)",
    )
    p.add_argument(
        "--templates", type=Path, nargs="+", required=True, help="jinja2 templates (.md.j2, .html.j2)"
    )
    p.add_argument("--out", type=Path, nargs="+", required=True, help="one output per template")
    p.set_defaults(func=_report)

    p = sub.add_parser("list", help="list the names a config can use: models, datasets, precisions, ...")
    p.add_argument("what", choices=LISTABLE)
    p.set_defaults(func=_list)

    p = sub.add_parser(
        "download-corruptions", help="download and verify official -C data (or check a local copy)"
    )
    p.add_argument("dataset", help="cifar10, cifar100 or imagenet")
    p.add_argument(
        "--root", type=Path, required=True, help="directory holding <name>.npy or <name>/<severity>/"
    )
    p.add_argument("--marker", type=Path, help="file written once the data is verified")
    p.add_argument("--verify-only", action="store_true", help="never download; only verify what is there")
    p.set_defaults(func=_download_corruptions)

    p = sub.add_parser("corrupt", help="generate -C style data (15 corruptions x 5 severities) for a dataset")
    p.add_argument("dataset", help="dataset name (see `qgen list datasets`)")
    p.add_argument("--data-root", type=Path, required=True, help="the clean dataset's directory")
    p.add_argument("--out", type=Path, required=True, help="directory to write the corrupted set to")
    p.add_argument("--split", default="test", help="the clean split to corrupt (default: test)")
    p.add_argument("--seed", type=int, required=True, help="seed of every random draw (config: its `seed`)")
    p.add_argument(
        "--profile", choices=["cifar", "imagenet"], help="severity constants (default: by image size)"
    )
    p.add_argument(
        "--subset", type=int, help="corrupt a fixed seeded subset of this many images (default: all)"
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--marker", type=Path, help="file written once the set is complete")
    p.set_defaults(func=_corrupt)

    p = sub.add_parser(
        "evaluate-corruptions", help="loss, accuracy and gap of a trained run on every -C split"
    )
    _add_run(p)
    p.add_argument("--root", type=Path, required=True, help="the corrupted test set (official or generated)")
    p.add_argument(
        "--data-setting", default="{}", help="the config's corruptions.data.<dataset> entry (JSON; recorded)"
    )
    p.add_argument("--out", type=Path, required=True, help="corruptions.csv to write")
    p.add_argument(
        "--batch-size", type=int, required=True, help="evaluation batch size (config: corruptions.batch_size)"
    )
    _add_device_options(p)
    p.add_argument("--workers", type=int, default=0, help="JPEG-decoding worker processes (ImageNet-C)")
    p.set_defaults(func=_evaluate_corruptions)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; an expected failure (:class:`~qgen.errors.QgenError`, a missing file) is one
    line on stderr and exit status 1, anything else a bug with its traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except (QgenError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    except BrokenPipeError:  # the reader went away (`qgen list models | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
