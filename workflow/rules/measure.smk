# Per-chunk particle measurement into Parquet (one row per particle per frame).


rule measure_chunk:
    input:
        masks="results/{movie}/{model}/receipts/infer/chunk-{k}.json",
        frames="results/{movie}/receipts/ingest/chunk-{k}.json",
    output:
        "results/{movie}/{model}/particles/chunk-{k}.parquet",
    log:
        "logs/{movie}/{model}/measure/chunk-{k}.log",
    params:
        min_area=MEASURE["min_area_px"],
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "etemseg --quiet measure results/{wildcards.movie}/frames.zarr"
        " results/{wildcards.movie}/{wildcards.model}/mask.zarr {output:q} --chunk {wildcards.k}"
        " --movie {wildcards.movie} --model {wildcards.model} --min-area-px {params.min_area}"
        " > {log:q} 2>&1"
