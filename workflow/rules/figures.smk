rule figure1:
    input:
        csv="results/summary/figure1.csv",
        config="results/summary/figure1.config.json",
    output:
        pdf="paper_tables/figure1.pdf",
        png=report(
            "paper_tables/figure1.png",
            caption="../report/figure1.rst",
            category="Figures",
            labels={"figure": "figure1"},
        ),
        data="paper_tables/figure1.csv",
    log:
        "logs/figures/figure1.log",
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    params:
        digest=summary_digest("figure1"),
    shell:
        "qgen figure1 --csv {input.csv:q} --config {input.config:q}"
        " --out {output.pdf:q} {output.png:q} --data {output.data:q} > {log:q} 2>&1"


rule landscape:
    input:
        data=train_data_marker,
        model="results/runs/{experiment}/{precision}/{point}/model.pt",
        metrics="results/runs/{experiment}/{precision}/{point}/metrics.json",
    output:
        "results/landscape/{experiment}/{precision}/{point}.npz",
    log:
        "logs/landscape/{experiment}/{precision}/{point}.log",
    benchmark:
        "results/benchmarks/landscape/{experiment}/{precision}/{point}.tsv"
    conda:
        "../../envs/qgen.yaml"
    threads: 1
    params:
        run_dir=measure_run_dir,
        spec=run_spec,
        data_root=train_data_root,
        settings=landscape_settings,
    shell:
        "qgen landscape --run-dir {params.run_dir:q} --spec {params.spec:q} --data-root {params.data_root:q}"
        " --settings {params.settings:q} --out {output:q} --threads {threads} >> {log:q} 2>&1"


rule figure2:
    input:
        csv="results/summary/figure2.csv",
        config="results/summary/figure2.config.json",
        surfaces=figure2_surfaces,
    output:
        pdf="paper_tables/figure2.pdf",
        png=report(
            "paper_tables/figure2.png",
            caption="../report/figure2.rst",
            category="Figures",
            labels={"figure": "figure2"},
        ),
        data="paper_tables/figure2.csv",
    log:
        "logs/figures/figure2.log",
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    params:
        digest=summary_digest("figure2"),
        options=figure2_options,
    shell:
        "qgen figure2 --csv {input.csv:q} --config {input.config:q} --surfaces {input.surfaces:q}"
        " {params.options} --out {output.pdf:q} {output.png:q} --data {output.data:q} > {log:q} 2>&1"
