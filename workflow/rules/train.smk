rule train:
    input:
        data=train_data_marker,
    output:
        model="results/runs/{experiment}/{precision}/{point}/model.pt",
        init="results/runs/{experiment}/{precision}/{point}/init.pt",
        metrics="results/runs/{experiment}/{precision}/{point}/metrics.json",
    log:
        "logs/train/{experiment}/{precision}/{point}.log",
    benchmark:
        "results/benchmarks/train/{experiment}/{precision}/{point}.tsv"
    wildcard_constraints:
        experiment=SINGLE_EXPERIMENTS,
    conda:
        "../../envs/qgen.yaml"
    threads: 1
    params:
        spec=run_spec,
        data_root=train_data_root,
        out_dir=run_dir,
        ckpt_dir="results/checkpoints/{experiment}/{precision}/{point}",
        execution=train_execution,
    shell:
        "qgen train --spec {params.spec:q} --data-root {params.data_root:q}"
        " --out {params.out_dir:q} --ckpt-dir {params.ckpt_dir:q}"
        " --threads {threads} {params.execution} >> {log:q} 2>&1"


# ImageNet: one process per requested GPU (resources.gpu, set by the profile), DDP over them.
rule train_distributed:
    input:
        data=train_data_marker,
    output:
        model="results/runs/{experiment}/{precision}/{point}/model.pt",
        init="results/runs/{experiment}/{precision}/{point}/init.pt",
        metrics="results/runs/{experiment}/{precision}/{point}/metrics.json",
    log:
        "logs/train/{experiment}/{precision}/{point}.log",
    benchmark:
        "results/benchmarks/train/{experiment}/{precision}/{point}.tsv"
    wildcard_constraints:
        experiment=DISTRIBUTED_EXPERIMENTS,
    conda:
        "../../envs/qgen.yaml"
    threads: 8
    resources:
        gpu=1,
    params:
        spec=run_spec,
        data_root=train_data_root,
        out_dir=run_dir,
        ckpt_dir="results/checkpoints/{experiment}/{precision}/{point}",
        execution=train_execution,
    shell:
        "torchrun --standalone --nproc-per-node {resources.gpu} --no-python"
        " qgen train --spec {params.spec:q} --data-root {params.data_root:q}"
        " --out {params.out_dir:q} --ckpt-dir {params.ckpt_dir:q}"
        " --workers {threads} {params.execution} >> {log:q} 2>&1"


# Small runs packed N to a job (profile: `config: train_pack_size`), trained at once on one device: as
# N processes, or (`train_pack_mode: batched`) in lockstep in one process.
rule train_pack:
    input:
        data=pack_data_marker,
    output:
        "results/packs/{experiment}/{pack}-{digest}.json",
    log:
        "logs/train_pack/{experiment}/{pack}-{digest}.log",
    benchmark:
        "results/benchmarks/train_pack/{experiment}/{pack}-{digest}.tsv"
    conda:
        "../../envs/qgen.yaml"
    threads: 1
    params:
        specs=pack_specs,
        data_root=pack_data_root,
        options=pack_options,
    shell:
        "qgen train-many --specs {params.specs:q} --data-root {params.data_root:q}"
        " --ckpt-root results/checkpoints --manifest {output:q}"
        " --threads {threads} {params.options} >> {log:q} 2>&1"


rule unpack_run:
    input:
        pack_manifest,
    output:
        model="results/runs/{experiment}/{precision}/{point}/model.pt",
        init="results/runs/{experiment}/{precision}/{point}/init.pt",
        metrics="results/runs/{experiment}/{precision}/{point}/metrics.json",
    log:
        "logs/unpack/{experiment}/{precision}/{point}.log",
    wildcard_constraints:
        experiment=PACKED_EXPERIMENTS,
    localrule: True
    conda:
        "../../envs/qgen.yaml"
    params:
        spec=run_spec,
        out_dir=run_dir,
    shell:
        "qgen unpack --manifest {input:q} --spec {params.spec:q} --out {params.out_dir:q} > {log:q} 2>&1"
