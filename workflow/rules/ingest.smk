# Frame dump -> results/{movie}/frames.zarr, one job per time chunk.


def ingest_options(wildcards):
    """Store options of `etemseg ingest --init` from the config."""
    m = movie_cfg(wildcards.movie)
    opts = [
        f"--fps {movie_fps(wildcards.movie)}",
        f"--chunk-frames {movie_chunk_frames(wildcards.movie)}",
        f"--codec {INGEST['codec']}",
        f"--clevel {INGEST['clevel']}",
    ]
    if INGEST["zarr_chunk_frames"]:
        opts.append(f"--zarr-chunk-frames {INGEST['zarr_chunk_frames']}")
    if m.get("pixel_size_nm"):
        opts.append(f"--pixel-size-nm {m['pixel_size_nm']}")
    return " ".join(opts)


rule ingest_init:
    input:
        ingest_source_input,
    output:
        layout.store_meta(layout.frames_store("{movie}")),
    log:
        layout.log("{movie}", "ingest_init"),
    group:
        "prep"
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        group_slots=1,
        mem_mb=2000,
        runtime=rule_runtime(30),
    params:
        src=lambda w: movie_source(w.movie),
        store=lambda w: layout.frames_store(w.movie),
        options=ingest_options,
    shell:
        "etemseg --quiet ingest {params.src:q} {params.store:q} --init {params.options}"
        " > {log:q} 2>&1"


rule ingest_chunk:
    input:
        layout.store_meta(layout.frames_store("{movie}")),
    output:
        layout.receipt("ingest", "{movie}", "{k}"),
    log:
        layout.log("{movie}", "ingest", "chunk-{k}"),
    group:
        "chunks"
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        group_slots=1,
        mem_mb=1000,
        runtime=rule_runtime(5),
    params:
        src=lambda w: movie_source(w.movie),
        store=lambda w: layout.frames_store(w.movie),
    shell:
        "etemseg --quiet ingest {params.src:q} {params.store:q} --chunk {wildcards.k}"
        " --receipt {output:q} > {log:q} 2>&1"
