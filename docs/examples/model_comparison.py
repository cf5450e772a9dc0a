"""Model comparison, the paper's question in small: which architecture learns the pseudo-labels?

    python docs/examples/model_comparison.py [EPOCHS]

Pseudo-labels a simulated movie with the classical recipe, trains several architectures on them
in memory (CPU is fine at this size) and scores each model's masks against the simulator's truth,
which the paper could not do. The workflow runs the full study with `models:` in the config and
writes `results/model_comparison.csv`.
"""

import sys

import numpy as np
import pandas as pd
import torch

import etemseg
from etemseg.morphology import remove_small_components
from etemseg.nn.checkpoint import normalise_frames
from etemseg.nn.models import build_model
from etemseg.nn.training import TrainingData, split_frames
from etemseg.stages.pseudolabel import PRESETS

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 4
p = etemseg.SynthParams(frames=12, height=256, width=256, seed=3)
raw, truth = map(np.stack, zip(*etemseg.simulate(p)))
recipe = PRESETS["default"].resolved(p.pixel_size_nm)     # lengths in nm -> px of this movie
pseudo = np.stack([etemseg.pseudolabel_fast(f, recipe) for f in raw]).astype(np.uint8)
images = normalise_frames(raw)

rows = []
for name in ("single-filter", "shallow-wide", "unet3-norm"):
    cfg = etemseg.TrainConfig(model=name, epochs=epochs, batch_size=4, crop_px=64,
                              samples_per_epoch=64, lr=1e-2, device="cpu", seed=0)
    data = TrainingData(images.astype(np.float16), pseudo, *split_frames(len(images), cfg))
    run = etemseg.train(data, cfg)
    model = build_model(name)
    model.load_state_dict(run.best["state"])          # the best validation epoch's weights
    with torch.inference_mode():
        prob = torch.softmax(model.eval()(torch.from_numpy(images[:, None])), 1)[:, 1].numpy()
    masks = [remove_small_components(q > 0.5, 20) for q in prob]   # as `etemseg infer` does
    scores = etemseg.score_frames(zip(masks, truth))
    rows.append({"model": name, "parameters": sum(t.numel() for t in model.parameters()),
                 "val_f1_vs_pseudo": round(run.final["val_f1"], 3),
                 "pixel_f1_vs_truth": round(scores["pixel"]["f1"], 3),
                 "detection_f1_vs_truth": round(scores["detection"]["f1"], 3)})
pseudo_scores = etemseg.score_frames(zip(pseudo > 0, truth))
rows.append({"model": "pseudo-labels", "pixel_f1_vs_truth": round(pseudo_scores["pixel"]["f1"], 3),
             "detection_f1_vs_truth": round(pseudo_scores["detection"]["f1"], 3)})
print(pd.DataFrame(rows).to_string(index=False))
