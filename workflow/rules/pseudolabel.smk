# Classical pseudo-labels per time chunk, QA overlays and accuracy against ground truth.


rule pseudolabel_init:
    input:
        "results/{movie}/frames.zarr/zarr.json",
    output:
        "results/{movie}/pseudo.zarr/zarr.json",
    log:
        "logs/{movie}/pseudolabel_init.log",
    params:
        options=pseudolabel_options,
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    shell:
        "etemseg --quiet pseudolabel results/{wildcards.movie}/frames.zarr"
        " results/{wildcards.movie}/pseudo.zarr --init {params.options} > {log:q} 2>&1"


rule pseudolabel_chunk:
    input:
        store="results/{movie}/pseudo.zarr/zarr.json",
        frames="results/{movie}/receipts/ingest/chunk-{k}.json",
    output:
        "results/{movie}/receipts/pseudolabel/chunk-{k}.json",
    log:
        "logs/{movie}/pseudolabel/chunk-{k}.log",
    params:
        options=pseudolabel_options,
    conda:
        "../../envs/cpu.yaml"
    threads: PSEUDOLABEL["threads"]
    resources:
        mem_mb=2000,
    shell:
        "etemseg --quiet pseudolabel results/{wildcards.movie}/frames.zarr"
        " results/{wildcards.movie}/pseudo.zarr --chunk {wildcards.k} --threads {threads}"
        " --receipt {output:q} {params.options} > {log:q} 2>&1"


rule pseudolabel_qa:
    input:
        pseudolabel_qa_input,
    output:
        report(
            "results/{movie}/qa/pseudo-frame-{t}.png",
            caption="../report/pseudo_qa.rst",
            category="Pseudo-labels",
            subcategory="{movie}",
            labels={"movie": "{movie}", "frame": "{t}"},
        ),
    log:
        "logs/{movie}/qa/pseudo-frame-{t}.log",
    params:
        truth=lambda w: (
            f"--truth results/{w.movie}/synth/truth/labels.zarr"
            if "synthetic" in movie_cfg(w.movie)
            else ""
        ),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "etemseg --quiet overlay results/{wildcards.movie}/frames.zarr {output:q}"
        " --frame {wildcards.t} --mask pseudo-label=results/{wildcards.movie}/pseudo.zarr"
        " {params.truth} > {log:q} 2>&1"


rule pseudolabel_score:
    input:
        receipts=lambda w: chunk_receipts("pseudolabel", w.movie),
        truth="results/{movie}/synth/synth.json",
    output:
        report(
            "results/{movie}/pseudo_scores.json",
            caption="../report/pseudo_scores.rst",
            category="Pseudo-labels",
            subcategory="{movie}",
        ),
    log:
        "logs/{movie}/pseudolabel_score.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "etemseg --quiet score results/{wildcards.movie}/pseudo.zarr"
        " results/{wildcards.movie}/synth/truth/labels.zarr --out {output:q} > {log:q} 2>&1"
