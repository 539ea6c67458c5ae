rule download_corruptions:
    output:
        marker="results/data/{dataset}-c.official.json",
    log:
        "logs/corruptions/{dataset}-c.official.log",
    conda:
        "../../envs/qgen.yaml"
    params:
        root=corruption_root_of,
    shell:
        "qgen download-corruptions {wildcards.dataset} --root {params.root:q} --marker {output.marker:q} > {log:q} 2>&1"


rule corrupt:
    input:
        data="results/data/{dataset}.ready.json",
    output:
        marker="results/data/{dataset}-c.generated.json",
    log:
        "logs/corruptions/{dataset}-c.generated.log",
    benchmark:
        "results/benchmarks/corrupt/{dataset}.tsv"
    conda:
        "../../envs/qgen.yaml"
    threads: 2
    params:
        data_root=download_root,
        root=corruption_root_of,
        seed=corruption_seed,
        subset=corruption_subset,
    shell:
        "qgen corrupt {wildcards.dataset} --data-root {params.data_root:q} --out {params.root:q}"
        " --seed {params.seed} {params.subset} --workers {threads} --marker {output.marker:q} > {log:q} 2>&1"


rule evaluate_corruptions:
    input:
        data=corrupted_data_marker,
        model="results/runs/{experiment}/{precision}/{point}/model.pt",
        metrics="results/runs/{experiment}/{precision}/{point}/metrics.json",
    output:
        "results/runs/{experiment}/{precision}/{point}/corruptions.csv",
    log:
        "logs/corruptions/{experiment}/{precision}/{point}.log",
    benchmark:
        "results/benchmarks/evaluate_corruptions/{experiment}/{precision}/{point}.tsv"
    conda:
        "../../envs/qgen.yaml"
    threads: 1
    params:
        run_dir=measure_run_dir,
        spec=run_spec,
        root=run_corruption_root,
        data_setting=run_corruption_setting,
        batch_size=corruption_batch_size,
    shell:
        "qgen evaluate-corruptions --run-dir {params.run_dir:q} --spec {params.spec:q} --root {params.root:q}"
        " --data-setting {params.data_setting:q} --out {output:q}"
        " --batch-size {params.batch_size} --threads {threads} --workers {threads} > {log:q} 2>&1"
