"""Neural networks, below the stages (which drive them; nothing here imports a stage):

* :mod:`etemseg.nn.architectures` — architecture names and configs (torch-free);
* :mod:`etemseg.nn.models` — the networks, BatchNorm folding, receptive fields;
* :mod:`etemseg.nn.checkpoint` — model files (format, load, save) and input normalisation;
* :mod:`etemseg.nn.device` — picking the device;
* :mod:`etemseg.nn.training` — training data and split, the :class:`~etemseg.nn.training.Trainer`
  loop with its hooks, checkpoints and resuming;
* :mod:`etemseg.nn.inference` — inference settings, model preparation, tiling and the streaming
  engine (raw frames in, quantised probabilities and histograms out).

Depends on :mod:`etemseg.io` and :mod:`etemseg.errors` only."""
