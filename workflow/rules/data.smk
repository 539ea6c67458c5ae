rule download:
    output:
        marker="results/data/{dataset}.ready.json",
    log:
        "logs/download/{dataset}.log",
    params:
        root=download_root,
    conda:
        "../../envs/qgen.yaml"
    shell:
        "qgen download {wildcards.dataset} --root {params.root:q} --marker {output.marker:q} > {log:q} 2>&1"
