# Train each configured CNN on the pseudo-labels (GPU node when there is one, else the CPU).


rule train:
    input:
        train_input,
    output:
        model="models/{model}/model.pt",
        metrics="models/{model}/metrics.csv",
        curve=report(
            "models/{model}/curve.png",
            caption="../report/train_curve.rst",
            category="Training",
            labels={"model": "{model}"},
        ),
    log:
        "logs/train/{model}.log",
    params:
        pairs=train_pairs,
        options=train_options,
    conda:
        "../../envs/gpu.yaml"
    threads: TRAIN_THREADS
    resources:
        gpu=TRAIN_GPUS,
        mem_mb=16000,
        runtime=240,
    shell:
        "etemseg --quiet train {params.pairs} --out models/{wildcards.model}"
        " --model {wildcards.model} --threads {threads} {params.options} > {log:q} 2>&1"
