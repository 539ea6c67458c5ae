rule summarize:
    input:
        summary_inputs,
    output:
        "results/summary/{summary}-{digest}.csv",
    log:
        "logs/summary/{summary}-{digest}.log",
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    params:
        config=summary_slice,
    shell:
        "qgen summarize {wildcards.summary} --config {params.config:q} --out {output:q} > {log:q} 2>&1"


rule render_table:
    input:
        csv=table_summary,
        template=table_template,
    output:
        "paper_tables/{table}.tex",
    log:
        "logs/tables/{table}.render.log",
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    params:
        provenance=table_digest,
    shell:
        "qgen render {wildcards.table} --csv {input.csv:q} --provenance {params.provenance}"
        " --template {input.template:q} --out {output:q} > {log:q} 2>&1"
