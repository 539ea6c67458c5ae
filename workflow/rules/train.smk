rule train:
    input:
        data=train_data_marker,
    output:
        model="results/runs/{experiment}/{precision}/{point}/model.pt",
        init="results/runs/{experiment}/{precision}/{point}/init.pt",
        metrics="results/runs/{experiment}/{precision}/{point}/metrics.json",
    log:
        "logs/train/{experiment}/{precision}/{point}.log",
    conda:
        "../../envs/qgen.yaml"
    threads: 1
    params:
        spec=train_spec,
        data_root=train_data_root,
        out_dir=run_dir,
        ckpt_dir="results/checkpoints/{experiment}/{precision}/{point}",
        code_version=config["code_version"],
    shell:
        "qgen train --spec {params.spec:q} --data-root {params.data_root:q}"
        " --out {params.out_dir:q} --ckpt-dir {params.ckpt_dir:q}"
        " --threads {threads} >> {log:q} 2>&1"
