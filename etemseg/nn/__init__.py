"""Neural networks: architecture names (torch-free :mod:`etemseg.nn.architectures`), the models,
and (as the stages are cut) checkpoints, normalisation, the training loop and the inference
engine. Depends on :mod:`etemseg.io` only."""
