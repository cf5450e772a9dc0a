# Reduce per movie and model: link particles into trajectories, events and per-frame tables;
# sintering analysis; scores against the simulator's truth.


rule track:
    input:
        lambda w: [
            f"results/{w.movie}/{w.model}/particles/chunk-{k}.parquet"
            for k in movie_chunks(w.movie)
        ],
    output:
        trajectories="results/{movie}/{model}/trajectories.parquet",
        events="results/{movie}/{model}/events.parquet",
        frames="results/{movie}/{model}/frames.parquet",
    log:
        "logs/{movie}/{model}/track.log",
    params:
        options=lambda w: " ".join(_cli_options(TRACK)),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=8000,
    shell:
        "etemseg --quiet track results/{wildcards.movie}/frames.zarr"
        " results/{wildcards.movie}/{wildcards.model}/mask.zarr"
        " results/{wildcards.movie}/{wildcards.model}/particles"
        " results/{wildcards.movie}/{wildcards.model} --movie {wildcards.movie}"
        " --model {wildcards.model} {params.options} > {log:q} 2>&1"


rule sintering:
    input:
        rules.track.output,
    output:
        figure=report(
            "results/{movie}/{model}/sintering/sintering.png",
            caption="../report/sintering.rst",
            category="Sintering",
            subcategory="{movie}",
            labels={"movie": "{movie}", "model": "{model}"},
        ),
        summary="results/{movie}/{model}/sintering/summary.json",
    log:
        "logs/{movie}/{model}/sintering.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "etemseg --quiet sintering results/{wildcards.movie}/frames.zarr"
        " results/{wildcards.movie}/{wildcards.model}"
        " results/{wildcards.movie}/{wildcards.model}/sintering > {log:q} 2>&1"


rule score_tracks:
    input:
        tracks=rules.track.output,
        truth="results/{movie}/synth/synth.json",
    output:
        report(
            "results/{movie}/{model}/track_scores.json",
            caption="../report/track_scores.rst",
            category="Sintering",
            subcategory="{movie}",
            labels={"movie": "{movie}", "model": "{model}", "table": "scores vs truth"},
        ),
    log:
        "logs/{movie}/{model}/score_tracks.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "etemseg --quiet score-tracks results/{wildcards.movie}/{wildcards.model}"
        " results/{wildcards.movie}/{wildcards.model}/mask.zarr"
        " results/{wildcards.movie}/synth/truth {output:q} > {log:q} 2>&1"
