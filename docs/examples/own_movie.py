"""Your own movie, by hand: frame dump -> Zarr store -> pseudo-labels -> particle table.

    python docs/examples/own_movie.py [FRAME_FOLDER] [OUT_FOLDER]

Without a folder it makes a small simulated K2 dump to stand in for yours. The workflow does the
same per time chunk (``snakemake``); this is the notebook-sized version.
"""

import sys
import tempfile
from pathlib import Path

import pandas as pd

import etemseg

out = Path(sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="etemseg-example-"))
if len(sys.argv) > 1:
    dump = Path(sys.argv[1])
else:  # a stand-in: 6 frames of 256 x 256 px at 0.18 nm/px, K2-named TIFFs
    etemseg.write_synthetic_movie(out / "synth", etemseg.SynthParams(frames=6, height=256,
                                                                     width=256, seed=1),
                                  progress=False)
    dump = out / "synth" / "frames"

store = etemseg.ingest(dump, out / "frames.zarr", chunk_frames=6, progress=False)
print(f"{store.n_frames} frames of {store.frame_shape} px, {store.pixel_size_nm} nm/px")

tables = []
for t in range(store.n_frames):
    frame = store.take([t])[0]
    mask = etemseg.pseudolabel_fast(frame, etemseg.PseudoLabelParams(min_area_px=20,
                                                                     fill_holes=True))
    tables.append(etemseg.measure_frame(mask, frame, pixel_size_nm=store.pixel_size_nm,
                                        frame_index=t, time_s=store.time_s()[t]))
particles = pd.concat(tables, ignore_index=True)
summary = particles.groupby("frame").agg(n=("label", "size"),
                                         median_diameter_nm=("eq_diameter_nm", "median"))
print(summary.to_string())
particles.to_csv(out / "particles.csv", index=False)
