rule step_sizes:
    input:
        unpack(figure1_inputs),
    output:
        "paper_tables/figure1.csv",
    log:
        "logs/figures/figure1.step_sizes.log",
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    params:
        rows=figure1_rows,
    shell:
        "qgen step-sizes --rows {params.rows:q} --out {output:q} {input.metrics:q} > {log:q} 2>&1"


rule figure1:
    input:
        "paper_tables/figure1.csv",
    output:
        pdf="paper_tables/figure1.pdf",
        png="paper_tables/figure1.png",
    log:
        "logs/figures/figure1.log",
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    shell:
        "qgen figure1 --csv {input:q} --out {output.pdf:q} {output.png:q} > {log:q} 2>&1"


rule landscape:
    input:
        data=train_data_marker,
        model="results/runs/{experiment}/{precision}/{point}/model.pt",
        metrics="results/runs/{experiment}/{precision}/{point}/metrics.json",
    output:
        "results/landscape/{experiment}/{precision}/{point}.npz",
    log:
        "logs/landscape/{experiment}/{precision}/{point}.log",
    conda:
        "../../envs/qgen.yaml"
    threads: 1
    params:
        run_dir=measure_run_dir,
        data_root=train_data_root,
        settings=landscape_settings,
    shell:
        "qgen landscape --run-dir {params.run_dir:q} --data-root {params.data_root:q}"
        " --settings {params.settings:q} --out {output:q} --threads {threads} >> {log:q} 2>&1"


rule figure2:
    input:
        figure2_surfaces,
    output:
        pdf="paper_tables/figure2.pdf",
        png="paper_tables/figure2.png",
        csv="paper_tables/figure2.csv",
    log:
        "logs/figures/figure2.log",
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    params:
        label=figure2_label,
        options=figure2_options,
    shell:
        "qgen figure2 --label {params.label:q} {params.options} --csv {output.csv:q}"
        " --surfaces {input:q} --out {output.pdf:q} {output.png:q} > {log:q} 2>&1"
