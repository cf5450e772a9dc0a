# Frame dump -> results/{movie}/frames.zarr, one job per time chunk.


rule ingest_init:
    input:
        ingest_source_input,
    output:
        "results/{movie}/frames.zarr/zarr.json",
    log:
        "logs/{movie}/ingest_init.log",
    params:
        src=lambda w: movie_source(w.movie),
        store=lambda w: f"results/{w.movie}/frames.zarr",
        fps=lambda w: movie_fps(w.movie),
        chunk_frames=lambda w: movie_chunk_frames(w.movie),
        options=lambda w: " ".join(
            [f"--codec {INGEST['codec']} --clevel {INGEST['clevel']}"]
            + ([f"--zarr-chunk-frames {INGEST['zarr_chunk_frames']}"] if INGEST["zarr_chunk_frames"] else [])
            + ([f"--pixel-size-nm {movie_cfg(w.movie)['pixel_size_nm']}"] if movie_cfg(w.movie).get("pixel_size_nm") else [])
        ),
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    shell:
        "etemseg --quiet ingest {params.src:q} {params.store:q} --init --fps {params.fps}"
        " --chunk-frames {params.chunk_frames} {params.options} > {log:q} 2>&1"


rule ingest_chunk:
    input:
        "results/{movie}/frames.zarr/zarr.json",
    output:
        "results/{movie}/receipts/ingest/chunk-{k}.json",
    log:
        "logs/{movie}/ingest/chunk-{k}.log",
    params:
        src=lambda w: movie_source(w.movie),
        store=lambda w: f"results/{w.movie}/frames.zarr",
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "etemseg --quiet ingest {params.src:q} {params.store:q} --chunk {wildcards.k}"
        " --receipt {output:q} > {log:q} 2>&1"
