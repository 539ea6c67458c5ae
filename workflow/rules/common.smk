# Helpers shared by all rules: config validation, the run table, wildcard constraints, input functions.
# Only the standard library and qgen.experiments are imported here, so building the DAG never imports torch.
import json
import os
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from qgen.experiments import expand_runs, experiments_by_name, pack_runs, select_runs

validate(config, schema="../schemas/config.schema.yaml")

RUNS = {run.run_id: run for run in expand_runs(config)}
EXPERIMENTS = experiments_by_name(config)
# The tables to produce: those with rows. An empty list switches off a table of config.yaml, e.g. in the
# demo's experiment set, which is merged over config.yaml key by key.
TABLES = {name: rows for name, rows in config["tables"].items() if rows}


wildcard_constraints:
    experiment="[A-Za-z0-9_]+",
    precision="|".join(config["precisions"]),
    point="[^/]+",
    dataset="[a-z0-9_]+",
    table="|".join(TABLES),


def dataset_root(dataset):
    """Where a dataset lives: an explicit `data_roots` entry, else data/<dataset>."""
    return config.get("data_roots", {}).get(dataset, f"data/{dataset}")


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


def train_spec(wildcards):
    return run_of(wildcards).to_json()


def train_data_root(wildcards):
    return dataset_root(run_of(wildcards).dataset)


def table_runs(name):
    """The runs a table summarises: whole experiments (Table 1) or one grid point per row (Table 2)."""
    chosen = []
    for row in TABLES[name]:
        chosen += select_runs(RUNS.values(), row["experiment"], row.get("where"))
    return chosen


# The result file each table summarises: training metrics, or the flatness measures (Table 3).
TABLE_INPUT = {
    "table1": "metrics.json",
    "table2": "metrics.json",
    "table3": "measures.json",
    "table4": "corruptions.csv",
    "table5": "corruptions.csv",
    "table6": "corruptions.csv",
}


def table_results(wildcards):
    require_results(
        table_runs(wildcards.table),
        "metrics.json",
        f"paper_tables/{wildcards.table}.tex",
    )
    return expand(
        "results/runs/{run_id}/{file}",
        run_id=[r.run_id for r in table_runs(wildcards.table)],
        file=TABLE_INPUT[wildcards.table],
    )


def measure_settings(wildcards):
    return json.dumps(config.get("measures", {}))


def table_rows(wildcards):
    """The table's rows as JSON, each labelled with the experiment's model label unless it has its own."""
    return labelled_rows(TABLES[wildcards.table])


def labelled_rows(config_rows):
    """Rows of a table or figure as JSON: experiment, model label (the experiment's unless given), where."""
    rows = []
    for row in config_rows:
        label = row.get("label", EXPERIMENTS[row["experiment"]]["label"])
        rows.append(
            {
                "experiment": row["experiment"],
                "model": label,
                "where": row.get("where", {}),
            }
        )
    return json.dumps(rows)


def repo_path(*parts):
    """A file shipped with the workflow, found beside the Snakefile whatever the working directory."""
    return os.path.join(workflow.basedir, *parts)


def table_template(wildcards):
    """The jinja2 template of a table, found beside the Snakefile whatever the working directory."""
    return repo_path("workflow", "templates", f"{wildcards.table}.tex.j2")


def paper_tables():
    return expand("paper_tables/{table}.tex", table=list(TABLES))


def all_run_metrics():
    return expand("results/runs/{run_id}/metrics.json", run_id=list(RUNS))


# Corruption robustness (Tables 4-6): where each dataset's corrupted test set lives and how it is made.
CORRUPTION_DATA = config.get("corruptions", {}).get("data", {})


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


def corruption_seed(wildcards):
    return corruption_setting(wildcards.dataset).get("seed", 0)


def corruption_subset(wildcards):
    """`--subset N` when a generated set corrupts only N test images, else nothing."""
    images = corruption_setting(wildcards.dataset).get("images")
    return f"--subset {images}" if images else ""


def corruption_batch_size(wildcards):
    return config.get("corruptions", {}).get("batch_size", 500)


# Figures (paper Figures 1-2) and the reproduction report.
FIGURES = config.get("figures", {})
# The paper tables the report compares with our summaries (those configured in `tables`).
REPORT_TABLES = ("table1", "table2", "table3", "table4")


def figure1_runs():
    """The quantized runs of Figure 1's rows (FP32 has no learned step)."""
    chosen = []
    for row in FIGURES["figure1"]:
        runs = select_runs(RUNS.values(), row["experiment"], row.get("where"))
        chosen += [run for run in runs if run.precision != "fp32"]
    return chosen


def figure1_inputs(wildcards):
    run_ids = [run.run_id for run in figure1_runs()]
    return {
        "metrics": expand("results/runs/{run_id}/metrics.json", run_id=run_ids),
        "models": expand("results/runs/{run_id}/model.pt", run_id=run_ids),
    }


def figure1_rows(wildcards):
    return labelled_rows(FIGURES["figure1"])


def figure2_runs():
    """One run per precision: the grid point of Figure 2's experiment that its `where` picks."""
    spec = FIGURES["figure2"]
    runs = select_runs(RUNS.values(), spec["experiment"], spec.get("where"))
    points = sorted({run.point for run in runs})
    if len(points) != 1:
        raise ValueError(
            f"figures.figure2 matches {len(points)} grid points of {spec['experiment']!r}: {points}; "
            "narrow its 'where' to one"
        )
    return runs


def figure2_surfaces(wildcards):
    return expand(
        "results/landscape/{run_id}.npz", run_id=[r.run_id for r in figure2_runs()]
    )


def figure2_label(wildcards):
    spec = FIGURES["figure2"]
    return spec.get("label", EXPERIMENTS[spec["experiment"]]["label"])


def figure2_options(wildcards):
    zmax = FIGURES["figure2"].get("zmax")
    return "" if zmax is None else f"--zmax {zmax}"


def landscape_settings(wildcards):
    return json.dumps(FIGURES["figure2"].get("surface", {}))


def paper_figures():
    return expand(
        "paper_tables/{figure}.{ext}", figure=list(FIGURES), ext=["pdf", "png"]
    )


def report_inputs(wildcards):
    """The report's inputs: the transcribed paper, its templates, and our configured results."""
    inputs = {
        "paper": [
            repo_path("workflow", "resources", "paper", f"{t}.csv")
            for t in REPORT_TABLES
        ],
        "notes": repo_path("workflow", "resources", "paper", "notes.yaml"),
        "templates": [
            repo_path("workflow", "templates", f"reproduction.{ext}.j2")
            for ext in ("md", "html")
        ],
    }
    for table in REPORT_TABLES:
        if table in TABLES:
            inputs[table] = f"results/summary/{table}.csv"
    for figure in FIGURES:
        inputs[figure] = f"paper_tables/{figure}.csv"
    return inputs


def report_results(wildcards, input):
    """Our results as NAME=PATH arguments of `qgen report`."""
    names = [*REPORT_TABLES, *FIGURES]
    return " ".join(
        shlex.quote(f"{name}={input[name]}") for name in names if name in input.keys()
    )


# --- Cluster scale: which rule trains a run, packs of small runs, and the guard against local training.
# Runs on these datasets train data-parallel under torchrun (rule train_distributed), one process per GPU.
DATA_PARALLEL_DATASETS = ("imagenet",)
# A profile may pack small runs: `train_pack_size: N`, `train_pack_models: [nin]` trains N runs
# concurrently in one job (rule train_pack); each run's outputs are then copied out by rule unpack_run.
PACKS = (
    pack_runs(
        RUNS.values(), config["train_pack_size"], config.get("train_pack_models", [])
    )
    if config.get("train_pack_size", 1) > 1
    else {}
)
PACK_OF = {run.run_id: name for name, members in PACKS.items() for run in members}


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


def pack_members(wildcards):
    return PACKS[f"{wildcards.experiment}/{wildcards.pack}"]


def pack_specs(wildcards):
    return json.dumps([json.loads(run.to_json()) for run in pack_members(wildcards)])


def pack_data_marker(wildcards):
    return f"results/data/{pack_members(wildcards)[0].dataset}.ready.json"


def pack_data_root(wildcards):
    return dataset_root(pack_members(wildcards)[0].dataset)


def pack_manifest(wildcards):
    run = run_of(wildcards)
    require_results([run], "metrics.json", f"results/runs/{run.run_id}/metrics.json")
    return f"results/packs/{PACK_OF[run_of(wildcards).run_id]}.json"


def run_id(wildcards):
    return run_of(wildcards).run_id


def require_results(runs, file, target):
    """Fail the DAG build, naming the missing runs, if a local run would have to train them.

    Training is meant for a cluster (`--profile profiles/slurm`) or a workstation profile; a plain local
    `snakemake paper_tables/table1.tex` only renders results that exist, unless `allow_training` is set.
    Dry runs and cluster submissions are never refused.
    """
    if workflow.non_local_exec_or_dryrun or config.get("allow_training", False):
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
