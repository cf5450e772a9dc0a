# Simulated sintering movie with ground truth (the demo movie).
import json


rule synth:
    output:
        "results/{movie}/synth/synth.json",
    log:
        "logs/{movie}/synth.log",
    params:
        out=lambda w: f"results/{w.movie}/synth",
        synthetic=lambda w: json.dumps(
            {"fps": movie_fps(w.movie), **movie_cfg(w.movie)["synthetic"]}
        ),
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    shell:
        "etemseg --quiet synth {params.out:q} --params-json {params.synthetic:q} > {log:q} 2>&1"
