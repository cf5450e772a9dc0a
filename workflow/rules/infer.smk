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
    params:
        frames=lambda w: layout.frames_store(w.movie),
        out=lambda w: layout.product_dir(w.movie, w.model),
        options=infer_options,
    shell:
        "etemseg --quiet infer {params.frames:q} {input.model:q} {params.out:q} --init"
        " --expect {wildcards.model} {params.options} > {log:q} 2>&1"


rule infer_chunk:
    input:
        prob=layout.store_meta(layout.prob_store("{movie}", "{model}")),
        mask=layout.store_meta(layout.mask_store("{movie}", "{model}")),
        frames=layout.receipt("ingest", "{movie}", "{k}"),
        model=layout.model_file("{model}"),
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
    params:
        frames=lambda w: layout.frames_store(w.movie),
        out=lambda w: layout.product_dir(w.movie, w.model),
        options=infer_options,
    shell:
        "etemseg --quiet infer {params.frames:q} {input.model:q} {params.out:q}"
        " --chunk {wildcards.k} --expect {wildcards.model} --threads {threads}"
        " --receipt {output:q} {params.options} > {log:q} 2>&1"
