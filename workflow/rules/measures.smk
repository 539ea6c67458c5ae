rule measure:
    input:
        data=train_data_marker,
        model="results/runs/{experiment}/{precision}/{point}/model.pt",
        init="results/runs/{experiment}/{precision}/{point}/init.pt",
        metrics="results/runs/{experiment}/{precision}/{point}/metrics.json",
    output:
        "results/runs/{experiment}/{precision}/{point}/measures.json",
    log:
        "logs/measure/{experiment}/{precision}/{point}.log",
    benchmark:
        "results/benchmarks/measure/{experiment}/{precision}/{point}.tsv"
    conda:
        "../../envs/qgen.yaml"
    threads: 1
    params:
        run_dir=measure_run_dir,
        spec=run_spec,
        data_root=train_data_root,
        settings=measure_settings,
    shell:
        "qgen measure --run-dir {params.run_dir:q} --spec {params.spec:q} --data-root {params.data_root:q}"
        " --settings {params.settings:q} --out {output:q} --threads {threads} > {log:q} 2>&1"
