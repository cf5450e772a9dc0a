# Model evaluation (the paper's figures) and the model study table.


rule evaluate:
    input:
        infer=lambda w: [
            layout.receipt("infer", w.movie, k, model=w.model) for k in movie_chunks(w.movie)
        ],
        pseudo=lambda w: chunk_receipts("pseudolabel", w.movie),
        model=layout.model_file("{model}"),
    output:
        report(
            directory(layout.eval_dir("{movie}", "{model}")),
            patterns=["{name}.png"],
            caption="../report/evaluation.rst",
            category="Evaluation",
            subcategory="{model}",
            labels={"movie": "{movie}", "model": "{model}", "figure": "{name}"},
        ),
    log:
        layout.log("{movie}", "{model}", "evaluate"),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=2000,
        runtime=rule_runtime(30),
    params:
        movie_dir=lambda w: layout.movie_dir(w.movie),
    shell:
        "etemseg --quiet evaluate {params.movie_dir:q} {wildcards.model} {input.model:q}"
        " {output:q} > {log:q} 2>&1"


rule model_comparison:
    input:
        lambda w: [layout.eval_dir(movie, model) for movie in MOVIES for model in MODELS],
    output:
        table=report(
            layout.comparison("model_comparison.csv"),
            caption="../report/model_comparison.rst",
            category="Evaluation",
            labels={"figure": "model comparison table"},
        ),
        sweep=report(
            layout.comparison("model_threshold_sweep.png"),
            caption="../report/model_threshold_sweep.rst",
            category="Evaluation",
            labels={"figure": "precision, recall, F1 vs threshold"},
        ),
        contours=report(
            layout.comparison("model_contours.png"),
            caption="../report/model_contours.rst",
            category="Evaluation",
            labels={"figure": "contours of all models"},
        ),
    log:
        layout.log("model_comparison"),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=2000,
        runtime=rule_runtime(30),
    params:
        movie_dir=lambda w: layout.movie_dir(sorted(MOVIES)[0]),
    shell:
        "etemseg --quiet compare {output.table:q} {input:q}"
        " --contours {params.movie_dir:q} {output.contours:q}"
        " --sweep-png {output.sweep:q} > {log:q} 2>&1"
