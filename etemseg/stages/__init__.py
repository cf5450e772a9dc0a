"""The workflow's stages, one module each: ingest, pseudolabel, train, infer, measure, track,
evaluate. A stage drives the per-chunk protocol (create outputs, run chunk k, return a receipt)
over the layers below (:mod:`etemseg.io`, :mod:`etemseg.nn`, :mod:`etemseg.analysis`, ...);
a stage never imports another stage."""
