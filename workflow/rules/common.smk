# Helpers shared by all rules: config validation, the run table, wildcard constraints, input functions.
# Only the standard library and qgen.experiments are imported here, so building the DAG never imports torch.
import json
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from qgen.experiments import expand_runs, experiments_by_name, pack_runs, select_runs

validate(config, schema="../schemas/config.schema.yaml")

RUNS = {run.run_id: run for run in expand_runs(config)}
EXPERIMENTS = experiments_by_name(config)


wildcard_constraints:
    experiment="[A-Za-z0-9_]+",
    precision="|".join(config["precisions"]),
    point="[^/]+",
    dataset="[a-z0-9_]+",
    table="|".join(config["tables"]),


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
    for row in config["tables"][name]:
        chosen += select_runs(RUNS.values(), row["experiment"], row.get("where"))
    return chosen


# The result file each table summarises: training metrics, or the flatness measures (Table 3).
TABLE_INPUT = {
    "table1": "metrics.json",
    "table2": "metrics.json",
    "table3": "measures.json",
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
    rows = []
    for row in config["tables"][wildcards.table]:
        label = row.get("label", EXPERIMENTS[row["experiment"]]["label"])
        rows.append(
            {
                "experiment": row["experiment"],
                "model": label,
                "where": row.get("where", {}),
            }
        )
    return json.dumps(rows)


def table_template(wildcards):
    """The jinja2 template of a table, found beside the Snakefile whatever the working directory."""
    return os.path.join(
        workflow.basedir, "workflow", "templates", f"{wildcards.table}.tex.j2"
    )


def paper_tables():
    return expand("paper_tables/{table}.tex", table=list(config["tables"]))


def all_run_metrics():
    return expand("results/runs/{run_id}/metrics.json", run_id=list(RUNS))


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
