# Per-chunk inference with each trained model: probability and mask stores per movie and model.


rule infer_init:
    input:
        frames=layout.store_meta(layout.frames_store("{movie}")),
        model=layout.model_file("{model}"),
    output:
        prob=layout.store_meta(layout.prob_store("{movie}", "{model}")),
        mask=layout.store_meta(layout.mask_store("{movie}", "{model}")),
    log:
        layout.log("{movie}", "{model}", "infer_init"),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=2000,
        runtime=rule_runtime(30),
    params:
        frames=lambda w: layout.frames_store(w.movie),
        out=lambda w: layout.product_dir(w.movie, w.model),
        options=infer_options,
    shell:
        "etemseg --quiet infer {params.frames:q} {input.model:q} {params.out:q} --init"
        " --expect {wildcards.model} {params.options} > {log:q} 2>&1"


# The model file is not an input of infer_chunk: it reaches every chunk through infer_init (a
# retrained model reruns infer_init, whose new stores rerun every chunk). As an input of all
# 600 chunks x N models it made Snakemake rescan `train`'s 1,200 inputs for each of them
# (benchmarks/dag.py: ~13 % of planning the paper's 16 models).
rule infer_chunk:
    input:
        prob=layout.store_meta(layout.prob_store("{movie}", "{model}")),
        mask=layout.store_meta(layout.mask_store("{movie}", "{model}")),
        frames=layout.receipt("ingest", "{movie}", "{k}"),
    output:
        layout.receipt("infer", "{movie}", "{k}", model="{model}"),
    log:
        layout.log("{movie}", "{model}", "infer", "chunk-{k}"),
    conda:
        "../../envs/gpu.yaml" if INFER["gpus"] else "../../envs/cpu.yaml"
    threads: int(INFER["threads"])
    resources:
        gpu=int(INFER["gpus"]),
        mem_mb=infer_mem_mb,
        runtime=rule_runtime(20),
    params:
        frames=lambda w: layout.frames_store(w.movie),
        model=lambda w: layout.model_file(w.model),
        out=lambda w: layout.product_dir(w.movie, w.model),
        options=infer_options,
    shell:
        "etemseg --quiet infer {params.frames:q} {params.model:q} {params.out:q}"
        " --chunk {wildcards.k} --expect {wildcards.model} --threads {threads}"
        " --receipt {output:q} {params.options} > {log:q} 2>&1"
