"""The ``qgen`` command: one subcommand per pipeline step; each Snakemake rule calls one of them."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("qgen")


def _download(args: argparse.Namespace) -> None:
    from qgen import data, files

    data.prepare_dataset(args.dataset, args.root, download=not args.verify_only)
    if args.marker:
        files.write_json(args.marker, {"dataset": args.dataset, "root": str(args.root)})
    log.info("%s is ready under %s", args.dataset, args.root)


def _train(args: argparse.Namespace) -> None:
    import torch

    from qgen.experiments import RunSpec
    from qgen.train import EXIT_STOPPED, Stopped, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if int(os.environ.get("RANK", "0")) > 0:  # data-parallel peers: rank 0 reports the progress
        logging.getLogger().setLevel(logging.WARNING)
    spec = RunSpec.from_dict(json.loads(args.spec))
    try:
        train(
            spec,
            data_root=args.data_root,
            out_dir=args.out,
            ckpt_dir=args.ckpt_dir,
            device=args.device,
            workers=args.workers,
            checkpoint_every_s=60 * args.checkpoint_minutes,
        )
    except Stopped as exc:
        log.warning("%s", exc)
        sys.exit(EXIT_STOPPED)


def _train_many(args: argparse.Namespace) -> None:
    from qgen.experiments import RunSpec
    from qgen.packing import train_many

    specs = [RunSpec.from_dict(spec) for spec in json.loads(args.specs)]
    status = train_many(
        specs,
        data_root=args.data_root,
        ckpt_root=args.ckpt_root,
        manifest=args.manifest,
        device=args.device,
        threads=args.threads,
        checkpoint_minutes=args.checkpoint_minutes,
    )
    if status:
        sys.exit(status)


def _unpack(args: argparse.Namespace) -> None:
    from qgen.packing import unpack

    unpack(args.manifest, args.run, args.out)


RUN_OPTIONS = ("weights", "eval_subset", "batch_size", "curvature", "curvature_iters", "curvature_samples")


def _measure(args: argparse.Namespace) -> None:
    import torch

    from qgen import files
    from qgen.experiments import require_known_keys
    from qgen.measures import MeasureSettings
    from qgen.measures.run import measure_run

    if args.threads:
        torch.set_num_threads(args.threads)
    options = json.loads(args.settings)
    run_options = {k: options.pop(k) for k in RUN_OPTIONS if k in options}
    require_known_keys(MeasureSettings, options, "measure setting(s)")
    record = measure_run(
        args.run_dir, args.data_root, MeasureSettings(**options), device=args.device, **run_options
    )
    files.write_json(args.out, record)
    log.info("wrote %s", args.out)


def _summarize(args: argparse.Namespace) -> None:
    from qgen import tables

    rows = json.loads(args.rows)
    records = tables.table(args.table).summarize(tables.load_results(args.results), rows)
    tables.write_csv(args.out, records)
    log.info("wrote %s (%d rows)", args.out, len(records))


def _render(args: argparse.Namespace) -> None:
    from qgen import files, tables

    context = tables.table(args.table).context(tables.read_csv(args.csv))
    files.write_text(args.out, tables.render(args.template, context))
    log.info("wrote %s", args.out)


def _landscape(args: argparse.Namespace) -> None:
    import torch

    from qgen.landscape import LandscapeSettings, surface_of_run

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = LandscapeSettings.from_dict(json.loads(args.settings))
    surface_of_run(args.run_dir, args.data_root, settings, args.out, device=args.device)


def _step_sizes(args: argparse.Namespace) -> None:
    from qgen import figures, tables

    records = figures.step_size_records(args.metrics, json.loads(args.rows))
    tables.write_csv(args.out, records)
    log.info("wrote %s (%d layers)", args.out, len(records))


def _figure1(args: argparse.Namespace) -> None:
    from qgen import figures, tables

    figures.plot_step_sizes(tables.read_csv(args.csv), args.out)


def _figure2(args: argparse.Namespace) -> None:
    from qgen import figures, tables
    from qgen.landscape import Surface

    surfaces = [Surface.load(path) for path in args.surfaces]
    records = [figures.surface_record(s, args.label) for s in surfaces]
    for r in records:
        log.info("%s: centre loss %.4f, mean rise %.4f", r["run_id"], r["centre_loss"], r["mean_rise"])
    tables.write_csv(args.csv, records)
    labels = [tables.PRECISION_LABELS[r["precision"]] for r in records]
    figures.plot_surfaces(surfaces, labels, args.out, zmax=args.zmax)


def _report(args: argparse.Namespace) -> None:
    from qgen import files, report

    sources: dict[str, list[report.Value] | None] = dict.fromkeys(report.SOURCES)
    for item in args.results:
        name, sep, path = item.partition("=")
        if not sep or name not in sources:
            raise ValueError(
                f"--results {item!r}: expected NAME=PATH with NAME one of {list(report.SOURCES)}"
            )
        sources[name] = report.read_summary(name, path)
    cells = [cell for path in args.paper for cell in report.read_paper_table(path)]
    context = report.build_context(cells, sources, report.read_notes(args.notes))
    for template, out in zip(args.templates, args.out, strict=True):
        files.write_text(out, report.render(template, context))
        log.info("wrote %s", out)
    log.info("claims on our results: %s", context["counts"])


def _list(args: argparse.Namespace) -> None:
    from qgen import data, models

    names = models.model_names() if args.what == "models" else data.dataset_names()
    print("\n".join(names))


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

    from qgen.corruptions.evaluate import evaluate_corruptions, write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = evaluate_corruptions(
        args.run_dir,
        args.root,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
    )
    write_results(args.out, rows, args.run_dir)
    log.info("wrote %s (%d rows)", args.out, len(rows))


TORCH_THREADS = (0, "CPU threads for torch (default: torch's choice)")


def _add_run_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-dir", type=Path, required=True, help="directory holding model.pt, init.pt, metrics.json"
    )


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qgen", description=__doc__)
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
    p.add_argument("--ckpt-dir", type=Path, required=True, help="directory for resumable state")
    _add_training_options(p, threads=TORCH_THREADS)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (ImageNet)")
    p.set_defaults(func=_train)

    p = sub.add_parser("train-many", help="train a pack of runs concurrently on one device")
    p.add_argument("--specs", required=True, help="the runs as a JSON list of qgen.experiments.RunSpec")
    p.add_argument("--ckpt-root", type=Path, required=True, help="resume state goes to <ckpt-root>/<run id>")
    p.add_argument("--manifest", type=Path, required=True, help="JSON written once every run has finished")
    _add_training_options(p, threads=(1, "CPU threads shared by the runs (default: 1)"))
    p.set_defaults(func=_train_many)

    p = sub.add_parser("unpack", help="copy one run's outputs out of a trained pack")
    p.add_argument("--manifest", type=Path, required=True, help="the pack's manifest (qgen train-many)")
    p.add_argument("--run", required=True, help="run id <experiment>/<precision>/<point>")
    p.add_argument("--out", type=Path, required=True, help="directory for model.pt, init.pt, metrics.json")
    p.set_defaults(func=_unpack)

    p = sub.add_parser("measure", help="flatness measures (PAC-Bayes, sharpness, curvature) of a trained run")
    _add_run_dir(p)
    p.add_argument("--data-root", type=Path, required=True, help="the dataset's directory")
    p.add_argument("--settings", default="{}", help="measure settings as JSON (config.yaml `measures`)")
    p.add_argument("--out", type=Path, required=True, help="measures.json to write")
    _add_device_options(p)
    p.set_defaults(func=_measure)

    p = sub.add_parser("summarize", help="summarise metrics.json / measures.json files into a table's CSV")
    p.add_argument("table", help="table name, e.g. table1")
    p.add_argument("--rows", required=True, help="the table's rows as JSON (from config.yaml `tables`)")
    p.add_argument("--out", type=Path, required=True, help="CSV to write")
    p.add_argument("results", nargs="+", type=Path, help="metrics.json or measures.json files")
    p.set_defaults(func=_summarize)

    p = sub.add_parser("render", help="render a table's CSV to LaTeX")
    p.add_argument("table", help="table name, e.g. table1")
    p.add_argument("--csv", type=Path, required=True, help="summary CSV from `qgen summarize`")
    p.add_argument("--template", type=Path, required=True, help="jinja2 LaTeX template")
    p.add_argument("--out", type=Path, required=True, help=".tex file to write")
    p.set_defaults(func=_render)

    p = sub.add_parser("landscape", help="loss surface of a trained run (paper Figure 2), resumable by rows")
    _add_run_dir(p)
    p.add_argument("--data-root", type=Path, required=True, help="the dataset's directory")
    p.add_argument(
        "--settings", default="{}", help="grid settings as JSON (config.yaml `figures.figure2.surface`)"
    )
    p.add_argument("--out", type=Path, required=True, help=".npz file to write")
    _add_device_options(p)
    p.set_defaults(func=_landscape)

    p = sub.add_parser("step-sizes", help="learned LSQ steps per layer of trained runs (Figure 1's CSV)")
    p.add_argument("--rows", required=True, help="the figure's rows as JSON (config.yaml `figures.figure1`)")
    p.add_argument("--out", type=Path, required=True, help="CSV to write")
    p.add_argument("metrics", nargs="+", type=Path, help="metrics.json files (model.pt is read beside each)")
    p.set_defaults(func=_step_sizes)

    p = sub.add_parser("figure1", help="draw Figure 1 (bin width per layer) from its CSV")
    p.add_argument("--csv", type=Path, required=True, help="CSV from `qgen step-sizes`")
    p.add_argument("--out", type=Path, nargs="+", required=True, help="files to write (.pdf, .png)")
    p.set_defaults(func=_figure1)

    p = sub.add_parser("figure2", help="draw Figure 2 (loss surfaces) from .npz surfaces, with its CSV")
    p.add_argument("--label", required=True, help="model label for the CSV")
    p.add_argument("--zmax", type=float, help="clip the plotted loss at this value (default: the highest)")
    p.add_argument("--csv", type=Path, required=True, help="CSV of centre loss and flatness per surface")
    p.add_argument("--out", type=Path, nargs="+", required=True, help="files to write (.pdf, .png)")
    p.add_argument("--surfaces", type=Path, nargs="+", required=True, help=".npz files from `qgen landscape`")
    p.set_defaults(func=_figure2)

    p = sub.add_parser("report", help="the reproduction report: paper vs reproduced cells, claim checks")
    p.add_argument("--paper", type=Path, nargs="+", required=True, help="transcribed paper tables (CSV)")
    p.add_argument("--notes", type=Path, required=True, help="the paper's known inconsistencies (YAML)")
    p.add_argument(
        "--results", nargs="*", default=[], help="our results as NAME=CSV (table1..table4, figure1, figure2)"
    )
    p.add_argument(
        "--templates", type=Path, nargs="+", required=True, help="jinja2 templates (.md.j2, .html.j2)"
    )
    p.add_argument("--out", type=Path, nargs="+", required=True, help="one output per template")
    p.set_defaults(func=_report)

    p = sub.add_parser("list", help="list registered models or datasets")
    p.add_argument("what", choices=["models", "datasets"])
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
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
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
    _add_run_dir(p)
    p.add_argument("--root", type=Path, required=True, help="the corrupted test set (official or generated)")
    p.add_argument("--out", type=Path, required=True, help="corruptions.csv to write")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size (default 500)")
    _add_device_options(p)
    p.add_argument("--workers", type=int, default=0, help="JPEG-decoding worker processes (ImageNet-C)")
    p.set_defaults(func=_evaluate_corruptions)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        log.error("%s", exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
