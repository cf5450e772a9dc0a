# Train each configured CNN on the pseudo-labels (GPU node when there is one, else the CPU).


rule train:
    input:
        train_input,
    output:
        model=layout.model_file("{model}"),
        metrics=f"{layout.model_dir('{model}')}/metrics.csv",
        curve=report(
            f"{layout.model_dir('{model}')}/curve.png",
            caption="../report/train_curve.rst",
            category="Training",
            labels={"model": "{model}"},
        ),
    log:
        layout.log("train", "{model}"),
    conda:
        "../../envs/gpu.yaml"
    threads: TRAIN_THREADS
    resources:
        gpu=TRAIN_GPUS,
        mem_mb=16000,
        runtime=rule_runtime(240),
    params:
        pairs=train_pairs,
        out=lambda w: layout.model_dir(w.model),
        options=train_options,
    shell:
        "etemseg --quiet train {params.pairs} --out {params.out:q} --model {wildcards.model}"
        " --threads {threads} {params.options} > {log:q} 2>&1"
