# etemseg: in-situ ETEM movie -> Zarr -> pseudo-labels -> CNN -> masks -> particle tables.
# Run:  snakemake --profile profiles/local        (demo movie from config/config.yaml)
#       snakemake --configfile my.yaml ...        (exactly the movies of my.yaml, not the demo)
#       snakemake --profile slurm                 (HPC cluster: any site SLURM profile; the
#                                                  workflow profile profiles/default comes along)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/pseudolabel.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/movie.smk"


rule all:
    default_target: True
    input:
        all_targets(),
