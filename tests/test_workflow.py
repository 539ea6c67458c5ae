"""The Snakemake workflow: lint, the planned DAG of the paper config, config validation, an end-to-end run."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qgen import files, tables

from helpers import compile_latex, requires_pdflatex

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run this environment's snakemake; its jobs find this environment's `qgen` first on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    stats = output.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE) if m[1] != "total"}


def expected_train_jobs(config: dict) -> int:
    """Training jobs of a config, counted from its grids independently of qgen.experiments."""
    total = 0
    for exp in config["experiments"]:
        grid = exp["grid"]
        points = math.prod(len(v) for v in grid.get("model", {}).values())
        points *= sum(len(lrs) for lrs in grid["optimizer"].values()) * len(grid["weight_decay"])
        total += points * len(exp.get("precisions", config["precisions"]))
    return total


def test_lint_is_clean() -> None:
    proc = snakemake("--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_is_clean() -> None:
    proc = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_dry_run_of_the_paper_config_plans_every_training_job() -> None:
    proc = snakemake("-n", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr
    jobs = planned_jobs(proc.stdout + proc.stderr)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert jobs["train"] + jobs["train_distributed"] == expected_train_jobs(config) == 1944 + 11 * 4
    assert jobs["train_distributed"] == 5 * 4  # the ImageNet runs
    assert jobs["download"] == 3 and jobs["render_table"] == 6
    assert jobs["download_corruptions"] == 2  # CIFAR-100-C and ImageNet-C
    assert jobs["evaluate_corruptions"] == 6 * 4  # Tables 4 and 6 share their ImageNet runs
    assert jobs["measure"] == len(config["tables"]["table3"]) * 4 == 44


def test_dry_run_of_the_demo_profile_plans_the_readme_outputs() -> None:
    """`make demo`'s DAG: config.yaml's tables that the demo switches off (Tables 4, 6) are not planned."""
    proc = snakemake("--profile", "profiles/demo", "-n", "--forceall", "--quiet", "rules")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout + proc.stderr)
    demo = yaml.safe_load((ROOT / "profiles" / "demo" / "experiments.yaml").read_text())
    assert jobs["train"] == expected_train_jobs(demo)
    assert jobs["render_table"] == 4  # Tables 1, 2, 3 and 5
    assert jobs["summarize"] == 4 + 2  # and Figures 1 and 2
    assert jobs["figure1"] == jobs["figure2"] == jobs["report"] == 1 and jobs["landscape"] == 4


def test_table2_target_plans_only_its_own_runs() -> None:
    proc = snakemake("paper_tables/table2.tex", "-n", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert (
        jobs["train"] + jobs["train_distributed"] == 10 * 4
        and jobs["render_table"] == 1
        and jobs["summarize"] == 1
    )


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c | {"epochz": 3}, "'epochz' was unexpected"),
        (lambda c: c | {"experiments": [c["experiments"][0] | {"lr": 0.1}]}, "'lr' was unexpected"),
        (lambda c: c | {"precisions": ["fp32", "int3"]}, "'int3' is not one of"),
        (
            lambda c: c | {"experiments": [c["experiments"][0] | {"epochs": 0}]},
            "0 is less than the minimum of 1",
        ),
        (lambda c: c | {"figures": {"figure2": {"experiment": "x", "grid": 3}}}, "'grid' was unexpected"),
        (
            lambda c: c | {"figures": {"figure2": {"experiment": "x", "surface": {"points": 1}}}},
            "1 is less than the minimum of 2",
        ),
    ],
    ids=["top-level-key", "experiment-key", "precision-value", "epochs-value", "figure-key", "grid-points"],
)
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path: Path, edit, named: str) -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(edit(config)))
    proc = snakemake("-n", "--configfile", str(bad))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"the config ({bad} + config.yaml) is invalid:" in output and named in output
    assert "rule train" not in output
    assert len(output.splitlines()) < 15, output  # one line per problem, not the schema dump


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (
            lambda c: c["experiments"][0]["grid"]["model"].update(widht=[1]),
            "experiments[0] (nin_cifar10): model_args / grid.model: 'widht' is not an argument of model "
            "'nin'; it takes depth, width, base_width",
        ),
        (
            lambda c: c["experiments"][3].update(name="resnet18_cifar10"),
            "2 experiments are named 'resnet18_cifar10' (models resnet18_cifar, resnet50_cifar)",
        ),
        (
            lambda c: c["tables"]["table2"][0]["where"].pop("width"),
            "tables.table2: row {experiment: nin_cifar10, where: {'depth': 4, 'lr': 0.1, 'optimizer': 'sgd', "
            "'weight_decay': 0.0001}} matches 3 grid points",
        ),
        (
            lambda c: c["tables"]["table3"][0]["where"].update(depth=7),
            "tables.table3: no run of experiment 'nin_cifar10' matches",
        ),
    ],
    ids=["model-argument-typo", "duplicate-experiment-name", "row-of-several-points", "row-of-no-point"],
)
def test_what_the_schema_cannot_say_fails_before_any_job(tmp_path: Path, edit, named: str) -> None:
    """Issue 10, cases 4 and 6: a duplicated experiment name and a model-argument typo used to validate,
    then merge two models into one table row, or fail inside every job with a traceback."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    edit(config)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "--configfile", str(bad))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and named in output, output[-3000:]
    assert "rule train" not in output and len(output.splitlines()) < 15, output


MINI_CONFIG = {
    "code_version": 1,
    "precisions": ["fp32", "int8", "int4", "int2"],
    "measures": {
        "depth": 4,
        "samples": 2,
        "ascent_steps": 2,
        "ascent_batch": 16,
        "eval_subset": 128,
        "curvature_iters": 2,
        "curvature_samples": 2,
    },
    "experiments": [
        {
            "name": "nin_digits",
            "label": "NiN",
            "dataset": "digits",
            "model": "nin",
            "grid": {"model": {"width": [1]}, "optimizer": {"sgd": [0.05]}, "weight_decay": [0.0001]},
            "epochs": 2,
            "batch_size": 64,
            "milestones": [1],
            "n_train": 512,
            "n_test": 128,
        }
    ],
    "tables": {
        "table1": [{"experiment": "nin_digits"}],
        "table2": [{"experiment": "nin_digits", "label": "NiN (2x1)", "where": {"width": 1}}],
        "table3": [{"experiment": "nin_digits", "label": "NiN (2x1)", "where": {"width": 1}}],
        "table5": [{"experiment": "nin_digits", "label": "NiN (2x1)", "where": {"width": 1}}],
    },
    "corruptions": {"batch_size": 64, "data": {"digits": {"source": "generated", "seed": 1, "images": 20}}},
    # Figure 2 (four surface jobs) runs in the slow demo test only, to keep this suite fast.
    "figures": {"figure1": [{"experiment": "nin_digits", "label": "NiN (2x1)"}]},
}


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole DAG on digits with a one-point grid, run in a scratch working directory."""
    workdir = tmp_path_factory.mktemp("workdir")
    (workdir / "config.yaml").write_text(yaml.safe_dump(MINI_CONFIG))
    proc = snakemake(
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--set-threads",
        "train=1",
        "--config",
        "allow_training=True",
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return workdir


def test_end_to_end_tables_hold_the_runs_numbers(mini_run: Path) -> None:
    metrics = {
        p.parent.parent.name: json.loads(p.read_text())
        for p in mini_run.glob("results/runs/*/*/*/metrics.json")
    }
    assert sorted(metrics) == ["fp32", "int2", "int4", "int8"]
    assert all(m["status"] == "ok" and len(m["history"]) == 2 for m in metrics.values())

    table1 = (mini_run / "paper_tables" / "table1.tex").read_text()
    for precision, m in metrics.items():
        line = next(x for x in table1.splitlines() if x.startswith(f"{tables.PRECISION_LABELS[precision]} &"))
        cells = [c.strip() for c in line.rstrip("\\ ").split("&")][1:]
        assert cells == [
            "1",
            f"{100 * m['train']['accuracy']:.2f}",
            f"{100 * m['test']['accuracy']:.2f}",
            f"{m['train']['loss']:.3f}",
            f"{m['test']['loss']:.3f}",
            tables.fmt(m["test"]["loss"] - m["train"]["loss"], 3),
        ]

    table2 = (mini_run / "paper_tables" / "table2.tex").read_text()
    norms = " & ".join(f"{metrics[p]['weight_norm']:.3f}" for p in ("int2", "int4", "int8", "fp32"))
    assert f"Digits & NiN (2x1) & {norms} \\\\" in table2


def test_end_to_end_table3_holds_the_measures(mini_run: Path) -> None:
    table3 = (mini_run / "paper_tables" / "table3.tex").read_text()
    for path in mini_run.glob("results/runs/*/*/*/measures.json"):
        measures = json.loads(path.read_text())
        label = tables.PRECISION_LABELS[measures["spec"]["precision"]]
        line = next(x for x in table3.splitlines() if x.startswith(f"{label} &"))
        for name in tables.MEASURE_NAMES:
            assert f"{measures['normalized'][name]:.3f}" in line


def test_end_to_end_table5_holds_the_corruption_gaps(mini_run: Path) -> None:
    manifest = json.loads((mini_run / "data" / "digits-c" / "manifest.json").read_text())
    assert manifest["source"] == "generated" and manifest["images_per_severity"] == 20
    table5 = (mini_run / "paper_tables" / "table5.tex").read_text()
    for path in mini_run.glob("results/runs/*/*/*/corruptions.csv"):
        rows = files.read_csv(path)
        assert len(rows) == 75 and all(r["n"] == 20 for r in rows)
        if "/fp32/" in str(path):
            fog = [r["gap"] for r in rows if r["corruption"] == "fog"]
            line = next(x for x in table5.splitlines() if x.startswith("Fog & FP32 &"))
            assert all(tables.fmt(gap, 3) in line for gap in fog)


def test_end_to_end_figure1_and_report(mini_run: Path) -> None:
    metrics = {
        p.parent.parent.name: json.loads(p.read_text())
        for p in mini_run.glob("results/runs/*/*/*/metrics.json")
    }
    steps = files.read_csv(mini_run / "paper_tables" / "figure1.csv")
    assert {r["precision"] for r in steps} == {"int8", "int4", "int2"}
    for r in steps:
        assert r["step_size"] == pytest.approx(metrics[r["precision"]]["step_sizes"][r["layer"]])
    assert (mini_run / "paper_tables" / "figure1.pdf").read_bytes().startswith(b"%PDF")
    assert (mini_run / "paper_tables" / "figure1.png").stat().st_size > 10_000
    md = (mini_run / "paper_tables" / "reproduction.md").read_text()
    assert "| Digits NiN | **" in md and "Our results without a published counterpart: Digits NiN." in md
    assert "Figure 2: loss surfaces: not run" in md
    assert (mini_run / "paper_tables" / "reproduction.html").exists()


def test_figures_and_report_targets_plan_their_runs() -> None:
    targets = ("paper_tables/figure1.pdf", "paper_tables/figure2.pdf", "paper_tables/reproduction.md")
    proc = snakemake(*targets, "-n", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs["landscape"] == 4 and jobs["figure2"] == jobs["figure1"] == jobs["report"] == 1
    assert jobs["summarize"] == 5 + 2  # Tables 1-5 (those the report checks claims of), Figures 1-2


def test_the_snakemake_report_lists_every_table_figure_and_the_reproduction_report(mini_run: Path) -> None:
    proc = snakemake(
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(mini_run),
        "--report",
        "report.html",
        cwd=mini_run,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (mini_run / "report.html").read_text()
    for name in ("table1.tex", "table2.tex", "table3.tex", "table5.tex", "figure1.png", "reproduction.html"):
        assert name in html, name


def test_end_to_end_rerun_does_nothing_and_one_table_is_rebuilt_alone(mini_run: Path) -> None:
    args = ("--snakefile", str(ROOT / "Snakefile"), "--directory", str(mini_run), "--cores", "1")
    assert "Nothing to be done" in snakemake(*args, "-n", cwd=mini_run).stdout
    (mini_run / "paper_tables" / "table2.tex").unlink()
    proc = snakemake("paper_tables/table2.tex", *args, "-n", "--quiet", "rules", cwd=mini_run)
    assert planned_jobs(proc.stdout + proc.stderr) == {"render_table": 1}
    assert snakemake("paper_tables/table2.tex", *args, cwd=mini_run).returncode == 0
    assert (mini_run / "paper_tables" / "table2.tex").exists()


def run_here(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return snakemake("--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args, cwd=workdir)


def test_a_code_version_bump_retrains_every_run(mini_run: Path) -> None:
    """Issue 10, case 1: `code_version: 2` used to resume the finished runs in 0.1 s with the old weights."""
    proc = run_here(mini_run, "-n", "--quiet", "rules", "--config", "code_version=2", "allow_training=True")
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs["train"] == 4 and jobs["summarize"] == 5 and jobs["render_table"] == 4


def copied(mini_run: Path, tmp_path: Path, config: dict) -> Path:
    """Issue 10, case 5: results/ and paper_tables/ copied with `cp -a` into a fresh directory, without
    Snakemake's .snakemake/ metadata (as a user would copy them to build tables elsewhere)."""
    workdir = tmp_path / "copy"
    workdir.mkdir()
    for name in ("results", "paper_tables", "data"):
        subprocess.run(["cp", "-a", str(mini_run / name), str(workdir / name)], check=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def test_a_copied_results_dir_trains_a_new_experiment_of_a_table(mini_run: Path, tmp_path: Path) -> None:
    """Issue 10, case 5: the copy used to plan only render_table, rendering Table 1 from its stale summary."""
    config = json.loads(json.dumps(MINI_CONFIG))
    config["experiments"].append(
        config["experiments"][0] | {"name": "nin_digits_b", "label": "NiN-b", "epochs": 1}
    )
    config["tables"]["table1"].append({"experiment": "nin_digits_b"})
    workdir = copied(mini_run, tmp_path, config)
    proc = run_here(workdir, "paper_tables/table1.tex", "--cores", "1", "--config", "allow_training=True")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("rule train:") == 4 and "rule summarize:" in proc.stderr
    table1 = (workdir / "paper_tables" / "table1.tex").read_text()
    assert "NiN-b & FP32 & 1 & 0" in table1 and "NiN & FP32 & 1 & 0" in table1


def test_a_copied_results_dir_refuses_runs_of_a_changed_spec(mini_run: Path, tmp_path: Path) -> None:
    """Issue 10, case 7 without metadata: Snakemake cannot see the change, qgen refuses the stale runs by name
    and says how to rebuild them; the table is never rendered from them."""
    config = json.loads(json.dumps(MINI_CONFIG))
    config["experiments"][0]["epochs"] = 3
    workdir = copied(mini_run, tmp_path, config)
    before = (workdir / "paper_tables" / "table2.tex").read_text()
    proc = run_here(workdir, "paper_tables/table2.tex", "--cores", "1", "--config", "allow_training=True")
    assert proc.returncode != 0
    log = (workdir / "logs" / "summary" / "table2.log").read_text()
    assert "4 of the 4 results table2 needs were made from other specs" in log
    assert "epochs: 2 in the file, 3 in the config" in log and "snakemake --forcerun train" in log
    assert (workdir / "paper_tables" / "table2.tex").read_text() == before
    # The remedy the message gives: the four runs train afresh, then the table is rendered from them.
    proc = run_here(
        workdir,
        "paper_tables/table2.tex",
        "--cores",
        "1",
        "--forcerun",
        "train",
        "--config",
        "allow_training=True",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(p.read_text()) for p in workdir.glob("results/runs/*/*/*/metrics.json")]
    assert {len(m["history"]) for m in metrics} == {3}
    norms = " & ".join(
        f"{m['weight_norm']:.3f}"
        for p in ("int2", "int4", "int8", "fp32")
        for m in metrics
        if m["spec"]["precision"] == p
    )
    assert f"Digits & NiN (2x1) & {norms} \\\\" in (workdir / "paper_tables" / "table2.tex").read_text()


@requires_pdflatex
def test_end_to_end_tables_compile(mini_run: Path, tmp_path: Path) -> None:
    body = "\n".join(
        (mini_run / "paper_tables" / f"{t}.tex").read_text() for t in ("table1", "table2", "table3", "table5")
    )
    pdf = compile_latex(body, tmp_path, packages=("longtable", "pdflscape"))
    assert pdf.read_bytes().startswith(b"%PDF")


@pytest.mark.slow
def test_demo_profile_produces_both_tables(tmp_path: Path) -> None:
    """The README's demo command, in a copy of the repository."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    proc = snakemake("--profile", "profiles/demo", cwd=clone, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    for name in ("table1", "table2", "table3"):
        assert (clone / "paper_tables" / f"{name}.tex").read_text().count("Digits") == 1
    assert (clone / "paper_tables" / "table5.tex").read_text().count("Fog & FP32 &") == 2  # NiN, ResNet-18
    for name in (
        "figure1.pdf",
        "figure1.png",
        "figure2.pdf",
        "figure2.png",
        "reproduction.md",
        "reproduction.html",
    ):
        assert (clone / "paper_tables" / name).stat().st_size > 0


def test_the_conda_env_installs_this_checkout_of_qgen(tmp_path: Path) -> None:
    """envs/qgen.post-deploy.sh (Snakemake runs it in the new env) installs qgen itself, editable, from the
    working directory; elsewhere it stops naming the directory."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\necho "$@" > "$CALLED"\n')
    (fake / "python").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
        "CALLED": str(tmp_path / "called"),
    }
    script = str(ROOT / "envs" / "qgen.post-deploy.sh")
    subprocess.run(["bash", script], cwd=ROOT, env=env, check=True)
    assert (tmp_path / "called").read_text().split() == [
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--editable",
        str(ROOT),
    ]
    proc = subprocess.run(["bash", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and f"{tmp_path} is no qgen checkout" in proc.stderr


def test_readme_python_is_formatted() -> None:
    """The README's library example passes `ruff format --check`, like the package."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert blocks
    for block in blocks:
        proc = subprocess.run(
            [str(BIN / "ruff"), "format", "--check", "--stdin-filename", "readme.py", "-"],
            input=block,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lint_and_format_of_the_python_are_clean() -> None:
    for check in (["check"], ["format", "--check"]):
        proc = subprocess.run(
            [str(BIN / "ruff"), *check, "src", "tests", "bench"], capture_output=True, text=True, cwd=ROOT
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_conda_env_pins_equal_pyproject() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "envs" / "qgen.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(project["dependencies"])
    assert f"python={project['requires-python'].removeprefix('>=')}" in env["dependencies"]
