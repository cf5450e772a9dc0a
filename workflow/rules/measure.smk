# Per-chunk particle measurement into Parquet (one row per particle per frame), with the
# pixels the particles of consecutive frames share (read by the track rule).


rule measure_chunk:
    input:
        masks=layout.receipt("infer", "{movie}", "{k}", model="{model}"),
        frames=layout.receipt("ingest", "{movie}", "{k}"),
        previous_masks=previous_chunk_masks,
    output:
        particles=layout.particles_chunk("{movie}", "{model}", "{k}"),
        overlaps=layout.overlaps_chunk("{movie}", "{model}", "{k}"),
    log:
        layout.log("{movie}", "{model}", "measure", "chunk-{k}"),
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=rule_runtime(5),
    params:
        frames=lambda w: layout.frames_store(w.movie),
        masks=lambda w: layout.mask_store(w.movie, w.model),
        options=measure_options,
    shell:
        "etemseg --quiet measure {params.frames:q} {params.masks:q} {output.particles:q}"
        " --overlaps {output.overlaps:q}"
        " --chunk {wildcards.k} --movie {wildcards.movie} --model {wildcards.model}"
        " {params.options} > {log:q} 2>&1"
