# QGen reproduction pipeline: data -> training (FP32 and LSQ int8/int4/int2) -> flatness measures -> paper tables.
# The experiment set lives in config.yaml (schema: workflow/schemas/config.schema.yaml); machines live in profiles/.
from snakemake.utils import min_version

min_version("9.14.1")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/measures.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/corruptions.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        paper_tables(),
        all_run_metrics(),
        paper_figures(),
        "paper_tables/reproduction.md",
