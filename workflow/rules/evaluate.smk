# Model evaluation (the paper's figures) and the model study table.


rule evaluate:
    input:
        infer=lambda w: [
            f"results/{w.movie}/{w.model}/receipts/infer/chunk-{k}.json"
            for k in movie_chunks(w.movie)
        ],
        pseudo=lambda w: chunk_receipts("pseudolabel", w.movie),
        model="models/{model}/model.pt",
    output:
        report(
            directory("results/{movie}/{model}/eval"),
            patterns=["{name}.png"],
            caption="../report/evaluation.rst",
            category="Evaluation",
            subcategory="{model}",
            labels={"movie": "{movie}", "model": "{model}", "figure": "{name}"},
        ),
    log:
        "logs/{movie}/{model}/evaluate.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "etemseg --quiet evaluate results/{wildcards.movie} {wildcards.model} {input.model:q}"
        " results/{wildcards.movie}/{wildcards.model}/eval > {log:q} 2>&1"


rule model_comparison:
    input:
        lambda w: [
            f"results/{movie}/{model}/eval" for movie in MOVIES for model in MODELS
        ],
    output:
        table=report(
            "results/model_comparison.csv",
            caption="../report/model_comparison.rst",
            category="Evaluation",
            labels={"figure": "model comparison table"},
        ),
        sweep=report(
            "results/model_threshold_sweep.png",
            caption="../report/model_threshold_sweep.rst",
            category="Evaluation",
            labels={"figure": "precision, recall, F1 vs threshold"},
        ),
        contours=report(
            "results/model_contours.png",
            caption="../report/model_contours.rst",
            category="Evaluation",
            labels={"figure": "contours of all models"},
        ),
    log:
        "logs/model_comparison.log",
    params:
        movie=lambda w: sorted(MOVIES)[0],
    conda:
        "../../envs/cpu.yaml"
    shell:
        "etemseg --quiet compare {output.table:q} {input:q}"
        " --contours results/{params.movie} {output.contours:q}"
        " --sweep-png {output.sweep:q} > {log:q} 2>&1"
