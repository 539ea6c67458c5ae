rule download:
    output:
        marker="results/data/{dataset}.ready.json",
    log:
        "logs/download/{dataset}.log",
    conda:
        "../../envs/qgen.yaml"
    params:
        root=download_root,
    shell:
        "qgen download {wildcards.dataset} --root {params.root:q} --marker {output.marker:q} > {log:q} 2>&1"
