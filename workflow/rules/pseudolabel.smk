# Classical pseudo-labels per time chunk, QA overlays and accuracy against ground truth.


rule pseudolabel_init:
    input:
        frames=layout.store_meta(layout.frames_store("{movie}")),
    output:
        layout.store_meta(layout.pseudo_store("{movie}")),
    log:
        layout.log("{movie}", "pseudolabel_init"),
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
        frames=lambda w: layout.frames_store(w.movie),
        store=lambda w: layout.pseudo_store(w.movie),
        options=pseudolabel_options,
    shell:
        "etemseg --quiet pseudolabel {params.frames:q} {params.store:q} --init {params.options}"
        " > {log:q} 2>&1"


rule pseudolabel_chunk:
    input:
        store=layout.store_meta(layout.pseudo_store("{movie}")),
        frames=layout.receipt("ingest", "{movie}", "{k}"),
    output:
        layout.receipt("pseudolabel", "{movie}", "{k}"),
    log:
        layout.log("{movie}", "pseudolabel", "chunk-{k}"),
    group:
        "chunks"
    conda:
        "../../envs/cpu.yaml"
    threads: PSEUDOLABEL["threads"]
    resources:
        group_slots=1,
        mem_mb=2000,
        runtime=rule_runtime(10),
    params:
        frames=lambda w: layout.frames_store(w.movie),
        store=lambda w: layout.pseudo_store(w.movie),
        options=pseudolabel_options,
    shell:
        "etemseg --quiet pseudolabel {params.frames:q} {params.store:q} --chunk {wildcards.k}"
        " --threads {threads} --receipt {output:q} {params.options} > {log:q} 2>&1"


rule pseudolabel_qa:
    input:
        pseudolabel_qa_input,
    output:
        report(
            layout.qa_png("{movie}", "{t}"),
            caption="../report/pseudo_qa.rst",
            category="Pseudo-labels",
            subcategory="{movie}",
            labels={"movie": "{movie}", "frame": "{t}"},
        ),
    log:
        layout.log("{movie}", "qa", "pseudo-frame-{t}"),
    group:
        "qa"
    conda:
        "../../envs/cpu.yaml"
    resources:
        group_slots=1,
        mem_mb=2000,
        runtime=rule_runtime(30),
    params:
        frames=lambda w: layout.frames_store(w.movie),
        pseudo=lambda w: layout.pseudo_store(w.movie),
        truth=lambda w: (
            f"--truth {layout.truth_dir(w.movie)}/labels.zarr"
            if "synthetic" in movie_cfg(w.movie)
            else ""
        ),
    shell:
        "etemseg --quiet overlay {params.frames:q} {output:q} --frame {wildcards.t}"
        " --mask pseudo-label={params.pseudo:q} {params.truth} > {log:q} 2>&1"


rule pseudolabel_score:
    input:
        receipts=lambda w: chunk_receipts("pseudolabel", w.movie),
        truth=layout.synth_marker("{movie}"),
    output:
        report(
            layout.pseudo_scores("{movie}"),
            caption="../report/pseudo_scores.rst",
            category="Pseudo-labels",
            subcategory="{movie}",
        ),
    log:
        layout.log("{movie}", "pseudolabel_score"),
    group:
        "qa"
    conda:
        "../../envs/cpu.yaml"
    resources:
        group_slots=1,
        mem_mb=2000,
        runtime=rule_runtime(30),
    params:
        pseudo=lambda w: layout.pseudo_store(w.movie),
        labels=lambda w: f"{layout.truth_dir(w.movie)}/labels.zarr",
    shell:
        "etemseg --quiet score {params.pseudo:q} {params.labels:q} --out {output:q} > {log:q} 2>&1"
