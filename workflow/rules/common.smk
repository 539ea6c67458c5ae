# Helpers shared by all rules: config validation, the run table, wildcard constraints, input functions.
# Only the standard library and torch-free qgen modules are imported here, so building the DAG never
# imports torch.
import json
import os
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from qgen.config import check_config, configured_summaries
from qgen.errors import QgenError
from qgen.experiments import (
    digest_of,
    expand_runs,
    experiments_by_name,
    pack_runs,
    summary_config,
    summary_rows,
)
from qgen.packing import lockstep_packs
from qgen.summary import config_path, summary_path, write_config
from qgen.vocab import (
    FIGURE_NAMES,
    REPORTED,
    SUMMARIES,
    TABLE_NAMES,
    execution_options,
)

SCHEMA = "../schemas/config.schema.yaml"


def shown_path(path):
    """``path`` relative to the working directory when it lies below it, else absolute."""
    relative = os.path.relpath(path)
    return os.path.abspath(path) if relative.startswith("..") else relative


# Everything is checked before any job runs, and reported in a few lines naming the keys at fault.
try:
    check_config(
        config,
        os.path.join(workflow.current_basedir, SCHEMA),
        [shown_path(f) for f in workflow.configfiles],
    )
except QgenError as error:
    raise WorkflowError(str(error)) from None
# Fills in every default the schema gives (its `default:` values are their only home in the workflow).
validate(config, schema=SCHEMA, set_default=True)

RUNS = {run.run_id: run for run in expand_runs(config)}
EXPERIMENTS = experiments_by_name(config)
# The tables and figures to produce: those configured (a table with no rows is switched off, e.g. in the
# demo's experiment set, which is merged over config.yaml key by key).
SUMMARIZED = configured_summaries(config)
TABLES = [name for name in SUMMARIZED if name in TABLE_NAMES]
FIGURES = [name for name in SUMMARIZED if name in FIGURE_NAMES]
# The figures drawn from their summary alone (rule figure); Figure 2 also reads its surfaces.
PLOTTED = [name for name in FIGURES if SUMMARIES[name].result != "landscape"]
# Each summary is defined by a slice of the config, kept in results/summary/<name>.config.json and
# rewritten here whenever it changes: the summary and what is rendered from it then have a newer input,
# so Snakemake rebuilds them even without its metadata (a copied results/), and each job checks that its
# files were made from exactly that slice.
# A dry run writes only the files still missing (the summary rules need them as inputs) and leaves the
# others to the `digest` params, which Snakemake's metadata compares; remote jobs write nothing.
SLICES = {name: summary_config(config, name) for name in SUMMARIZED}
DIGESTS = {name: digest_of(sliced) for name, sliced in SLICES.items()}
if workflow.is_main_process:
    for name, sliced in SLICES.items():
        if not workflow.dryrun or not os.path.exists(config_path(name)):
            write_config(config_path(name), sliced)


wildcard_constraints:
    experiment="[A-Za-z0-9_]+",
    precision="|".join(dict.fromkeys(run.precision for run in RUNS.values())),
    point="[^/]+",
    dataset="[a-z0-9_]+",
    table="|".join(TABLES) or "(?!)",
    figure="|".join(PLOTTED) or "(?!)",
    summary="|".join(SUMMARIZED) or "(?!)",
    digest="[0-9a-f]{16}",
    pack="pack[0-9]+-[0-9]{4}",


def dataset_root(dataset):
    """Where a dataset lives: an explicit `data_roots` entry, else data/<dataset>."""
    return config["data_roots"].get(dataset, f"data/{dataset}")


def download_root(wildcards):
    return dataset_root(wildcards.dataset)


def run_dir(wildcards, output):
    return os.path.dirname(output.metrics)


def run_of(wildcards):
    return RUNS[f"{wildcards.experiment}/{wildcards.precision}/{wildcards.point}"]


def measure_run_dir(wildcards, input):
    return os.path.dirname(input.metrics)


def train_data_marker(wildcards):
    run = run_of(wildcards)
    require_results([run], "metrics.json", f"results/runs/{run.run_id}/metrics.json")
    return expand(
        "results/data/{dataset}.ready.json", dataset=run_of(wildcards).dataset
    )


def run_spec(wildcards):
    """The run as the config defines it: every job that makes or uses its files checks them against it."""
    return run_of(wildcards).to_json()


def train_data_root(wildcards):
    return dataset_root(run_of(wildcards).dataset)


def summary_runs(name):
    """The runs a table or figure shows (its rows' experiments or grid points, qgen.experiments)."""
    return [run for row in summary_rows(SLICES[name]) for run in row.runs]


def summary_inputs(wildcards):
    """What a summary reads: its config slice, and each run's result (in its run directory, or its surface
    for Figure 2)."""
    name = wildcards.summary
    runs = summary_runs(name)
    target = f"paper_tables/{name}.{'tex' if name in TABLES else 'pdf'}"
    require_results(runs, "metrics.json", target)
    result = SUMMARIES[name].result
    if result == "landscape":
        results = [f"results/landscape/{run.run_id}.npz" for run in runs]
    else:
        results = [f"results/runs/{run.run_id}/{result}" for run in runs]
    if result == "model.pt":
        results += [f"results/runs/{run.run_id}/metrics.json" for run in runs]
    return {"config": config_path(name), "results": results}


def table_config(wildcards):
    return config_path(wildcards.table)


def summary_digest(name):
    """The digest of summary ``name``'s config slice, as a rule's params (Snakemake's metadata trigger)."""
    return lambda wildcards: DIGESTS[name]


def summary_digest_of(wildcards):
    """The digest of the config slice of the wildcards' summary, table or figure."""
    for key in ("summary", "table", "figure"):
        if key in wildcards.keys():
            return DIGESTS[getattr(wildcards, key)]


def table_summary(wildcards):
    return summary_path(wildcards.table)


def measure_settings(wildcards):
    return json.dumps(config["measures"])


def repo_path(*parts):
    """A file shipped with the workflow, found beside the Snakefile whatever the working directory."""
    return os.path.join(workflow.basedir, *parts)


def table_template(wildcards):
    """The jinja2 template of a table, found beside the Snakefile whatever the working directory."""
    return repo_path("workflow", "templates", f"{wildcards.table}.tex.j2")


def paper_tables():
    return expand("paper_tables/{table}.tex", table=TABLES)


def all_run_metrics():
    return expand("results/runs/{run_id}/metrics.json", run_id=list(RUNS))


# Corruption robustness (Tables 4-6): where each dataset's corrupted test set lives and how it is made.
CORRUPTION_DATA = config["corruptions"]["data"]


def corruption_setting(dataset):
    """The `corruptions.data` entry of a dataset; a table needing one that is not configured is an error."""
    try:
        return CORRUPTION_DATA[dataset]
    except KeyError:
        raise ValueError(
            f"config key corruptions.data.{dataset} is missing: say where the corrupted {dataset} test set "
            f"comes from ({{source: official}} or {{source: generated}})"
        ) from None


def corruption_root(dataset):
    """The corrupted test set's directory: an explicit `root`, else data/<dataset>-c."""
    return corruption_setting(dataset).get("root", f"data/{dataset}-c")


def corruption_root_of(wildcards):
    return corruption_root(wildcards.dataset)


def corrupted_data_marker(wildcards):
    """The marker of the run's corrupted test set: official files verified, or a generated set written."""
    dataset = run_of(wildcards).dataset
    source = corruption_setting(dataset)["source"]
    return f"results/data/{dataset}-c.{source}.json"


def run_corruption_root(wildcards):
    return corruption_root(run_of(wildcards).dataset)


def run_corruption_setting(wildcards):
    return json.dumps(corruption_setting(run_of(wildcards).dataset))


def corruption_seed(wildcards):
    return corruption_setting(wildcards.dataset)["seed"]


def corruption_subset(wildcards):
    """`--subset N` when a generated set corrupts only N test images, else nothing."""
    images = corruption_setting(wildcards.dataset).get("images")
    return f"--subset {images}" if images else ""


def corruption_batch_size(wildcards):
    return config["corruptions"]["batch_size"]


# Figures (paper Figures 1-2) and the reproduction report.
FIGURE_CONFIG = config["figures"]
# The summaries the report reads (qgen.vocab.REPORTED), of those configured.
REPORT_SOURCES = [name for name in REPORTED if name in SUMMARIZED]


def figure2_surfaces(wildcards):
    return [f"results/landscape/{run.run_id}.npz" for run in summary_runs("figure2")]


def figure2_options(wildcards):
    zmax = FIGURE_CONFIG["figure2"]["zmax"]
    return "" if zmax is None else f"--zmax {zmax}"


def landscape_settings(wildcards):
    return json.dumps(FIGURE_CONFIG["figure2"]["surface"])


def paper_figures():
    return expand("paper_tables/{figure}.{ext}", figure=FIGURES, ext=["pdf", "png"])


def report_inputs(wildcards):
    """The report's inputs: the transcribed paper, its templates, and our configured summaries."""
    inputs = {
        "paper": [
            repo_path("workflow", "resources", "paper", f"{t}.csv")
            for t in ("table1", "table2", "table3", "table4")
        ],
        "notes": repo_path("workflow", "resources", "paper", "notes.yaml"),
        "templates": [
            repo_path("workflow", "templates", f"reproduction.{ext}.j2")
            for ext in ("md", "html")
        ],
    }
    for name in REPORT_SOURCES:
        inputs[name] = summary_path(name)
        inputs[f"{name}_config"] = config_path(name)
    return inputs


def report_results(wildcards, input):
    """Our summaries and their config slices as NAME=PATH arguments of `qgen report`."""
    results = [shlex.quote(f"{name}={input[name]}") for name in REPORT_SOURCES]
    configs = [
        shlex.quote(f"{name}={input[name + '_config']}") for name in REPORT_SOURCES
    ]
    return f"--results {' '.join(results)} --configs {' '.join(configs)}"


def report_digests(wildcards):
    """The digests of the report's summaries (params, for Snakemake's metadata trigger)."""
    return [DIGESTS[name] for name in REPORT_SOURCES]


# --- Cluster scale: which rule trains a run, packs of small runs, and the guard against local training.
# Runs on these datasets train data-parallel under torchrun (rule train_distributed), one process per GPU.
DATA_PARALLEL_DATASETS = ("imagenet",)
# A profile may pack small runs: `train_pack_size: N`, `train_pack_models: [nin]` trains N runs
# at once in one job (rule train_pack); each run's outputs are then copied out by rule unpack_run.
# `train_pack_mode: batched` trains a pack in lockstep in one process, so its runs must share their
# network and data (qgen.packing.lockstep_packs); `processes` (default) runs one process per run.
PACK_MODE = config["train_pack_mode"]
PACKS = (
    (lockstep_packs if PACK_MODE == "batched" else pack_runs)(
        RUNS.values(), config["train_pack_size"], config["train_pack_models"]
    )
    if config["train_pack_size"] > 1
    else {}
)
PACK_OF = {run.run_id: name for name, members in PACKS.items() for run in members}
# A pack's manifest is named by the digest of its members' specs, so a changed member is a new pack.
PACK_DIGESTS = {
    name: digest_of([run.digest for run in members]) for name, members in PACKS.items()
}


def experiments_regex(names):
    """A wildcard constraint matching exactly these experiment names (nothing when there are none)."""
    return "|".join(sorted(names)) or "(?!)"


DISTRIBUTED_EXPERIMENTS = experiments_regex(
    name
    for name, exp in EXPERIMENTS.items()
    if exp["dataset"] in DATA_PARALLEL_DATASETS
)
PACKED_EXPERIMENTS = experiments_regex({name.split("/")[0] for name in PACKS})
SINGLE_EXPERIMENTS = experiments_regex(
    set(EXPERIMENTS)
    - {name.split("/")[0] for name in PACKS}
    - {n for n, e in EXPERIMENTS.items() if e["dataset"] in DATA_PARALLEL_DATASETS}
)


def train_execution(wildcards):
    """How training does its arithmetic (profile keys `train_mixed_precision`, `train_channels_last`,
    `train_compile`), as `qgen train` options."""
    options = execution_options(
        config["train_mixed_precision"],
        config["train_channels_last"],
        config["train_compile"],
    )
    return " ".join(options)


def pack_options(wildcards):
    """`qgen train-many` options: --batched in the batched pack mode, and the training execution."""
    batched = "--batched" if PACK_MODE == "batched" else ""
    return f"{batched} {train_execution(wildcards)}"


def pack_name(wildcards):
    name = f"{wildcards.experiment}/{wildcards.pack}"
    if wildcards.digest != PACK_DIGESTS[name][:16]:
        raise WorkflowError(
            f"pack {name} of this config has digest {PACK_DIGESTS[name][:16]}"
        )
    return name


def pack_members(wildcards):
    return PACKS[pack_name(wildcards)]


def pack_specs(wildcards):
    return json.dumps([run.to_dict() for run in pack_members(wildcards)])


def pack_data_marker(wildcards):
    return f"results/data/{pack_members(wildcards)[0].dataset}.ready.json"


def pack_data_root(wildcards):
    return dataset_root(pack_members(wildcards)[0].dataset)


def pack_manifest(wildcards):
    run = run_of(wildcards)
    require_results([run], "metrics.json", f"results/runs/{run.run_id}/metrics.json")
    name = PACK_OF[run.run_id]
    return f"results/packs/{name}-{PACK_DIGESTS[name][:16]}.json"


def require_results(runs, file, target):
    """Fail the DAG build, naming the missing runs, if a local run would have to train them.

    Training is meant for a cluster (`--profile profiles/slurm`) or a workstation profile; a plain local
    `snakemake paper_tables/table1.tex` only renders results that exist, unless `allow_training` is set.
    Dry runs and cluster submissions are never refused.
    """
    if workflow.non_local_exec_or_dryrun or config["allow_training"]:
        return
    missing = [
        r.run_id for r in runs if not os.path.exists(f"results/runs/{r.run_id}/{file}")
    ]
    if missing:
        shown = "\n  ".join(missing[:10]) + (
            f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise WorkflowError(
            f"{target} needs {len(missing)} run(s) without results/runs/<run>/{file}:\n  {shown}\n"
            f"Training is not allowed in a plain local run. Train them on a cluster with\n"
            f"  snakemake --profile profiles/slurm {target}\n"
            f"or on this machine with `--profile profiles/local` or `--config allow_training=True`."
        )
