# Per-chunk inference with each trained model: probability and mask stores per movie and model.


rule infer_init:
    input:
        frames="results/{movie}/frames.zarr/zarr.json",
        model="models/{model}/model.pt",
    output:
        prob="results/{movie}/{model}/prob.zarr/zarr.json",
        mask="results/{movie}/{model}/mask.zarr/zarr.json",
    log:
        "logs/{movie}/{model}/infer_init.log",
    params:
        options=infer_options,
    conda:
        "../../envs/cpu.yaml"
    shell:
        "etemseg --quiet infer results/{wildcards.movie}/frames.zarr {input.model:q}"
        " results/{wildcards.movie}/{wildcards.model} --init --expect {wildcards.model}"
        " {params.options} > {log:q} 2>&1"


rule infer_chunk:
    input:
        prob="results/{movie}/{model}/prob.zarr/zarr.json",
        mask="results/{movie}/{model}/mask.zarr/zarr.json",
        frames="results/{movie}/receipts/ingest/chunk-{k}.json",
        model="models/{model}/model.pt",
    output:
        "results/{movie}/{model}/receipts/infer/chunk-{k}.json",
    log:
        "logs/{movie}/{model}/infer/chunk-{k}.log",
    params:
        options=infer_options,
    conda:
        "../../envs/gpu.yaml" if INFER["gpus"] else "../../envs/cpu.yaml"
    threads: int(INFER["threads"])
    resources:
        gpu=int(INFER["gpus"]),
        mem_mb=infer_mem_mb,
    shell:
        "etemseg --quiet infer results/{wildcards.movie}/frames.zarr {input.model:q}"
        " results/{wildcards.movie}/{wildcards.model} --chunk {wildcards.k} --expect"
        " {wildcards.model} --threads {threads} --receipt {output:q} {params.options}"
        " > {log:q} 2>&1"
