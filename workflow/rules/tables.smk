rule summarize:
    input:
        unpack(summary_inputs),
    output:
        "results/summary/{summary}.csv",
    log:
        "logs/summary/{summary}.log",
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    params:
        digest=summary_digest_of,
    shell:
        "qgen summarize {wildcards.summary} --config {input.config:q} --out {output:q} > {log:q} 2>&1"


rule render_table:
    input:
        csv=table_summary,
        config=table_config,
        template=table_template,
    output:
        report(
            "paper_tables/{table}.tex",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}"},
        ),
    log:
        "logs/tables/{table}.render.log",
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    params:
        digest=summary_digest_of,
    shell:
        "qgen render {wildcards.table} --csv {input.csv:q} --config {input.config:q}"
        " --template {input.template:q} --out {output:q} > {log:q} 2>&1"
