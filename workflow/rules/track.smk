# Reduce per movie and model: link particles into trajectories, events and per-frame tables;
# sintering analysis; scores against the simulator's truth.


rule track:
    input:
        particles=lambda w: [
            layout.particles_chunk(w.movie, w.model, k) for k in movie_chunks(w.movie)
        ],
        overlaps=lambda w: [
            layout.overlaps_chunk(w.movie, w.model, k) for k in movie_chunks(w.movie)
        ],
    output:
        **{t: layout.track_table("{movie}", "{model}", t) for t in layout.TRACK_TABLES},
    log:
        layout.log("{movie}", "{model}", "track"),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=8000,
        runtime=rule_runtime(30),
    params:
        frames=lambda w: layout.frames_store(w.movie),
        masks=lambda w: layout.mask_store(w.movie, w.model),
        particles=lambda w: layout.particles_dir(w.movie, w.model),
        out=lambda w: layout.product_dir(w.movie, w.model),
        options=lambda w: " ".join(_cli_options(TRACK)),
    shell:
        "etemseg --quiet track {params.frames:q} {params.masks:q} {params.particles:q}"
        " {params.out:q} --movie {wildcards.movie} --model {wildcards.model} {params.options}"
        " > {log:q} 2>&1"


rule sintering:
    input:
        rules.track.output,
    output:
        **{t: layout.kinetics_table("{movie}", "{model}", t) for t in layout.KINETICS_TABLES},
        figure=report(
            f"{layout.sintering_dir('{movie}', '{model}')}/sintering.png",
            caption="../report/sintering.rst",
            category="Sintering",
            subcategory="{movie}",
            labels={"movie": "{movie}", "model": "{model}"},
        ),
        summary=f"{layout.sintering_dir('{movie}', '{model}')}/summary.json",
        kinetics=report(
            layout.kinetics_png("{movie}", "{model}"),
            caption="../report/kinetics.rst",
            category="Sintering",
            subcategory="{movie}",
            labels={"movie": "{movie}", "model": "{model}", "figure": "kinetics"},
        ),
    log:
        layout.log("{movie}", "{model}", "sintering"),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=2000,
        runtime=rule_runtime(30),
    params:
        frames=lambda w: layout.frames_store(w.movie),
        tracks=lambda w: layout.product_dir(w.movie, w.model),
        out=lambda w: layout.sintering_dir(w.movie, w.model),
    shell:
        "etemseg --quiet sintering {params.frames:q} {params.tracks:q} {params.out:q}"
        " > {log:q} 2>&1"


rule score_tracks:
    input:
        tracks=rules.track.output,
        truth=layout.synth_marker("{movie}"),
    output:
        report(
            layout.track_scores("{movie}", "{model}"),
            caption="../report/track_scores.rst",
            category="Sintering",
            subcategory="{movie}",
            labels={"movie": "{movie}", "model": "{model}", "table": "scores vs truth"},
        ),
    log:
        layout.log("{movie}", "{model}", "score_tracks"),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=2000,
        runtime=rule_runtime(30),
    params:
        tracks=lambda w: layout.product_dir(w.movie, w.model),
        masks=lambda w: layout.mask_store(w.movie, w.model),
        truth=lambda w: layout.truth_dir(w.movie),
    shell:
        "etemseg --quiet score-tracks {params.tracks:q} {params.masks:q} {params.truth:q}"
        " {output:q} > {log:q} 2>&1"
