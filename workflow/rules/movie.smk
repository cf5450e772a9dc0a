# Overlay movie per movie and model: frames with contours coloured by track id, coalescence and
# vanish markers, time stamp and scale bar (H.264 MP4), in the report next to the sintering
# figures. Settings: the `overlay_movie` block of the config (defaults in the schema).

OVERLAY_MOVIE = config["overlay_movie"]


rule overlay_movie:
    input:
        rules.track.output,
    output:
        report(
            layout.overlay_movie("{movie}", "{model}"),
            caption="../report/overlay_movie.rst",
            category="Sintering",
            subcategory="{movie}",
            labels={"movie": "{movie}", "model": "{model}", "figure": "overlay movie"},
        ),
    log:
        layout.log("{movie}", "{model}", "overlay_movie"),
    conda:
        "../../envs/cpu.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=rule_runtime(30),
    params:
        frames=lambda w: layout.frames_store(w.movie),
        masks=lambda w: layout.mask_store(w.movie, w.model),
        tracks=lambda w: layout.product_dir(w.movie, w.model),
        title=lambda w: f"{w.movie} / {w.model}",
        options=lambda w: " ".join(_cli_options(OVERLAY_MOVIE)),
    shell:
        "etemseg --quiet overlay-movie {params.frames:q} {params.masks:q} {params.tracks:q}"
        " {output:q} --title {params.title:q} --threads {threads} {params.options}"
        " > {log:q} 2>&1"
