rule summarize_table:
    input:
        table_results,
    output:
        "results/summary/{table}.csv",
    log:
        "logs/tables/{table}.summarize.log",
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    params:
        rows=table_rows,
    shell:
        "qgen summarize {wildcards.table} --rows {params.rows:q} --out {output:q} {input:q} > {log:q} 2>&1"


rule render_table:
    input:
        csv="results/summary/{table}.csv",
        template=table_template,
    output:
        "paper_tables/{table}.tex",
    log:
        "logs/tables/{table}.render.log",
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    shell:
        "qgen render {wildcards.table} --csv {input.csv:q} --template {input.template:q} --out {output:q} > {log:q} 2>&1"
