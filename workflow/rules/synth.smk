# Simulated sintering movie with ground truth (the demo movie).
import json


rule synth:
    output:
        layout.synth_marker("{movie}"),
    log:
        layout.log("{movie}", "synth"),
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
        out=lambda w: layout.synth_dir(w.movie),
        synthetic=lambda w: json.dumps(
            {"fps": movie_fps(w.movie), **movie_cfg(w.movie)["synthetic"]}
        ),
    shell:
        "etemseg --quiet synth {params.out:q} --params-json {params.synthetic:q} > {log:q} 2>&1"
