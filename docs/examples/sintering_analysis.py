"""Sintering analysis from masks: detections -> trajectories and events -> LSW ripening rate.

    python docs/examples/sintering_analysis.py [FRAMES]

Runs on a simulated movie whose truth is known, using the true masks as the "segmentation", so
the rate measured through the whole chain (measurement, drift-corrected linking, the LSW fit) can
be checked against the simulator's. The same calls work on the masks of ``etemseg infer``
(``results/{movie}/{model}/mask.zarr``) and on the Parquet tables the workflow writes.
"""

import sys

import numpy as np
import pandas as pd

import etemseg
from etemseg.synth import simulate_tracks

frames = int(sys.argv[1]) if len(sys.argv) > 1 else 40
p = etemseg.SynthParams(frames=frames, height=256, width=256, seed=2)
masks, raw = [], []
for image, labels in etemseg.simulate(p):
    raw.append(image)
    masks.append(labels > 0)
masks, raw = np.stack(masks), np.stack(raw)
time_s = np.arange(p.frames) / p.fps

detections = etemseg.measure_stack(masks, raw, frame0=0, time_s=time_s,
                                   pixel_size_nm=p.pixel_size_nm, movie="example")


def label_source(t):  # label images for overlap linking, as the track stage streams them
    from scipy import ndimage

    return ndimage.label(masks[t], structure=np.ones((3, 3)))[0]


trajectories, events, per_frame = etemseg.link_movie(
    detections, label_source, pixel_size_nm=p.pixel_size_nm, frame_shape=masks.shape[1:],
    all_frames=np.arange(p.frames), time_s=time_s)
print(events["kind"].value_counts().to_string())

area_um2 = p.height * p.width * p.pixel_size_nm ** 2 / 1e6
summary, series, psd = etemseg.analyse(trajectories, per_frame, events, area_um2=area_um2)
truth, _ = simulate_tracks(p)
truth = truth[truth["in_frame"].astype(bool)]
truth_fit = etemseg.fit_lsw_rate(etemseg.radius_series(
    truth.assign(eq_diameter_nm=2 * truth["radius_nm"])))
print(pd.DataFrame({"measured": summary["lsw_fit"], "truth": truth_fit}).loc[
    ["K_nm3_per_s", "ci_low", "ci_high", "r2"]].to_string())
