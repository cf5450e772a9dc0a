"""Accuracy of a segmentation against ground truth: pixels, particles, sizes.

Used for pseudo-labels and CNN masks alike. Particles are matched one-to-one by overlap: a truth
particle and a predicted connected component match when their intersection-over-union is at least
``iou_min`` (0.5 makes the match unique).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from skimage.measure import label as cc_label

#: Time within which a reported event matches a true one, s (``etemseg score-tracks``): 25 ms,
#: 10 frames at 400 frames/s, the events' own persistence window (``track.persist_ms``).
EVENT_TOLERANCE_S = 0.025


def pixel_counts(pred: np.ndarray, truth: np.ndarray) -> dict:
    """True/false positive and false negative pixel counts of boolean masks of equal shape."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    tp = int(np.count_nonzero(pred & truth))
    return {"tp": tp, "fp": int(np.count_nonzero(pred)) - tp,
            "fn": int(np.count_nonzero(truth)) - tp}


def rates(tp: int, fp: int, fn: int) -> dict:
    """Precision, recall, F1 and IoU from counts (1.0 where there is nothing to find or miss)."""
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    return {"precision": precision, "recall": recall, "f1": f1, "iou": iou}


def match_particles(pred_mask: np.ndarray, truth_labels: np.ndarray, *,
                    iou_min: float = 0.5) -> tuple[pd.DataFrame, int, int]:
    """Match predicted connected components to truth particles by IoU.

    Parameters
    ----------
    pred_mask : (H, W) bool or 0/1
        Predicted particle mask; components are 8-connected.
    truth_labels : (H, W) int
        Truth particle id per pixel, 0 = background.
    iou_min : float
        Minimum IoU for a match.

    Returns
    -------
    matches : DataFrame
        One row per matched pair: ``truth``, ``pred``, ``iou``, ``truth_area_px``, ``pred_area_px``.
    n_truth, n_pred : int
        Number of truth particles and predicted components in the frame.
    """
    pred_labels = cc_label(np.asarray(pred_mask, dtype=bool), connectivity=2)
    truth_labels = np.asarray(truth_labels)
    truth_ids, truth_inv = np.unique(truth_labels.ravel(), return_inverse=True)
    n_pred = int(pred_labels.max())
    t_area = np.bincount(truth_inv)
    p_area = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    both = (truth_labels.ravel() > 0) & (pred_labels.ravel() > 0)
    pair = truth_inv[both].astype(np.int64) * (n_pred + 1) + pred_labels.ravel()[both]
    keys, inter = np.unique(pair, return_counts=True)
    t_idx, p_idx = np.divmod(keys, n_pred + 1)
    iou = inter / (t_area[t_idx] + p_area[p_idx] - inter)
    keep = iou >= iou_min
    matches = pd.DataFrame({
        "truth": truth_ids[t_idx[keep]], "pred": p_idx[keep], "iou": iou[keep],
        "truth_area_px": t_area[t_idx[keep]], "pred_area_px": p_area[p_idx[keep]],
    })
    n_truth = int(np.count_nonzero(truth_ids))
    return matches, n_truth, n_pred


def equivalent_diameter_px(area_px) -> np.ndarray:
    """Diameter of the circle with the same area, px."""
    return 2.0 * np.sqrt(np.asarray(area_px, dtype=float) / np.pi)


def score_frames(pairs: Iterable[tuple[np.ndarray, np.ndarray]], *,
                 pixel_size_nm: float | None = None, iou_min: float = 0.5) -> dict:
    """Pixel, particle-detection and size accuracy over frames.

    Parameters
    ----------
    pairs : iterable of (pred_mask (H, W), truth_labels (H, W))
        One pair per frame.
    pixel_size_nm : float, optional
        To report diameter errors in nm as well as px.

    Returns
    -------
    dict
        ``pixel`` (micro-averaged counts and precision/recall/F1/IoU, plus per-frame F1 mean and
        std), ``detection`` (matched/truth/predicted particle counts, precision, recall, F1) and
        ``diameter_error`` (predicted minus truth equivalent diameter of matched particles:
        median, IQR and mean absolute, in px and nm).
    """
    totals = {"tp": 0, "fp": 0, "fn": 0}
    frame_f1, errors = [], []
    n_truth = n_pred = n_match = n_frames = 0
    for pred, truth in pairs:
        counts = pixel_counts(pred, truth > 0)
        for key in totals:
            totals[key] += counts[key]
        frame_f1.append(rates(**counts)["f1"])
        matches, nt, npred = match_particles(pred, truth, iou_min=iou_min)
        n_truth, n_pred, n_match = n_truth + nt, n_pred + npred, n_match + len(matches)
        errors.append(equivalent_diameter_px(matches["pred_area_px"])
                      - equivalent_diameter_px(matches["truth_area_px"]))
        n_frames += 1
    err = np.concatenate(errors) if errors else np.zeros(0)
    pixel = {**totals, **rates(**totals),
             "f1_frame_mean": float(np.mean(frame_f1)) if frame_f1 else float("nan"),
             "f1_frame_std": float(np.std(frame_f1)) if frame_f1 else float("nan")}
    detection = {"matched": n_match, "truth": n_truth, "predicted": n_pred,
                 **{k: v for k, v in rates(n_match, n_pred - n_match, n_truth - n_match).items()
                    if k != "iou"}, "iou_min": iou_min}
    diameter = {"n": int(err.size)}
    if err.size:
        q1, med, q3 = np.percentile(err, [25, 50, 75])
        diameter.update({"median_px": float(med), "iqr_px": float(q3 - q1),
                         "mean_abs_px": float(np.mean(np.abs(err)))})
        if pixel_size_nm:
            diameter.update({f"{k[:-3]}_nm": v * pixel_size_nm for k, v in list(diameter.items())
                             if k.endswith("_px")})
    return {"frames": n_frames, "pixel": pixel, "detection": detection,
            "diameter_error": diameter, "pixel_size_nm": pixel_size_nm}


def score_stores(pred_path, truth_path, *, iou_min: float = 0.5) -> dict:
    """:func:`score_frames` of a mask store against a truth label array, block by block.

    Parameters
    ----------
    pred_path : path
        Movie store of masks (``pseudo.zarr``, ``mask.zarr``), uint8 0/1.
    truth_path : path
        Zarr array (t, y, x) of truth particle ids, e.g. the simulator's ``truth/labels.zarr``.
    """
    import zarr

    from etemseg.errors import InputFileError
    from etemseg.io.store import MovieStore

    pred = MovieStore.open(pred_path)
    try:
        truth = zarr.open_array(truth_path, mode="r")
    except Exception as exc:  # zarr raises several types for a missing/broken array
        raise InputFileError(truth_path, f"cannot open truth labels ({exc})") from exc
    if truth.shape != pred.array.shape:
        raise InputFileError(truth_path, f"truth shape {truth.shape} differs from "
                             f"{pred.path} {pred.array.shape}")

    def pairs():
        for k in range(pred.n_chunks):
            for t0, block in pred.read_chunk(k):
                labels = truth[t0:t0 + len(block)]
                yield from zip(block, labels)

    scores = score_frames(pairs(), pixel_size_nm=pred.pixel_size_nm, iou_min=iou_min)
    return {"pred": str(pred_path), "truth": str(truth_path), **scores}


def match_to_truth(measured: pd.DataFrame, truth: pd.DataFrame, *,
                   max_dist_factor: float = 1.0) -> pd.DataFrame:
    """Match measured particles to truth particles frame by frame by centroid distance.

    A measured particle matches the nearest truth particle of the same frame whose centre is
    within ``max_dist_factor`` times the truth radius; matches are one-to-one (mutual nearest).

    Parameters
    ----------
    measured : DataFrame
        ``frame``, ``particle`` (track id), ``x_nm``, ``y_nm``.
    truth : DataFrame
        ``frame``, ``particle`` (truth id), ``x_nm``, ``y_nm``, ``radius_nm``.

    Returns
    -------
    DataFrame
        ``frame``, ``truth``, ``track``, ``dist_nm``.
    """
    from scipy.spatial import cKDTree

    rows = []
    by_frame = dict(tuple(measured.groupby("frame")))
    for frame, tr in truth.groupby("frame"):
        me = by_frame.get(frame)
        if me is None or not len(me):
            continue
        tp = tr[["x_nm", "y_nm"]].to_numpy()
        mp = me[["x_nm", "y_nm"]].to_numpy()
        d_tm, i_tm = cKDTree(mp).query(tp)          # truth -> nearest measured
        _, i_mt = cKDTree(tp).query(mp)             # measured -> nearest truth
        mutual = i_mt[i_tm] == np.arange(len(tp))
        ok = mutual & (d_tm <= max_dist_factor * tr["radius_nm"].to_numpy())
        rows.append(pd.DataFrame({"frame": frame, "truth": tr["particle"].to_numpy()[ok],
                                  "track": me["particle"].to_numpy()[i_tm[ok]],
                                  "dist_nm": d_tm[ok]}))
    if not rows:
        return pd.DataFrame(columns=["frame", "truth", "track", "dist_nm"])
    return pd.concat(rows, ignore_index=True)


def raster_relabel(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Truth particle ids -> labels 1..n in raster order (as a labelling of the mask would number
    them); returns the relabelled image and the truth id of each label (``ids[label - 1]``)."""
    u, first = np.unique(truth.ravel(), return_index=True)
    u, first = u[u != 0], first[u != 0]
    u = u[np.argsort(first)]
    lut = np.zeros(int(truth.max()) + 1, np.int32)
    lut[u] = np.arange(1, u.size + 1)
    return lut[truth], u.astype(np.int64)


def match_events(measured: pd.DataFrame, truth: pd.DataFrame, *, kind: str,
                 frame_tol: int = 2, dist_nm: float = 3.0, tol_s: float | None = None,
                 return_pairs: bool = False) -> dict:
    """Precision and recall of measured events of one ``kind`` against truth events.

    Events match one-to-one when their frames differ by at most ``frame_tol`` (or, with
    ``tol_s``, their ``time_s`` by at most ``tol_s`` seconds) and their positions by at most
    ``dist_nm``; each truth event takes the closest unused measured event in time.  With
    ``return_pairs`` the result also holds ``pairs``: ``(truth index, measured index)`` of every
    match, positions in the rows of ``truth`` / ``measured`` of that ``kind``.
    """
    from scipy.spatial import cKDTree

    m = measured[measured["kind"] == kind].reset_index(drop=True) if len(measured) else measured
    t = truth[truth["kind"] == kind].reset_index(drop=True) if len(truth) else truth
    used, found, pairs = set(), 0, []
    if len(m) and len(t):
        tree = cKDTree(m[["x_nm", "y_nm"]].to_numpy())
        key, tol = ("frame", frame_tol) if tol_s is None else ("time_s", tol_s)
        mk = m[key].to_numpy(float)
        for i, (_, ev) in enumerate(t.iterrows()):
            near = [j for j in tree.query_ball_point([ev["x_nm"], ev["y_nm"]], dist_nm)
                    if j not in used and abs(mk[j] - float(ev[key])) <= tol + 1e-9]
            if near:
                j = min(near, key=lambda j: (abs(mk[j] - float(ev[key])), j))
                used.add(j)
                pairs.append((i, j))
                found += 1
    n_m, n_t = len(m), len(t)
    out = {"kind": kind, "truth": n_t, "measured": n_m, "matched": found,
           "recall": found / n_t if n_t else float("nan"),
           "precision": found / n_m if n_m else float("nan")}
    if return_pairs:
        out["pairs"] = pairs
    return out


def observed_events(truth_events: pd.DataFrame, matches: pd.DataFrame) -> pd.DataFrame:
    """The truth events a detector could have seen: a vanish whose particle, a coalescence two of
    whose parents and whose child, were matched to a detection at least once (``matches``:
    :func:`match_to_truth`).  Other kinds are kept as they are."""
    seen = set(matches["truth"].astype(np.int64).tolist()) if len(matches) else set()
    if not len(truth_events):
        return truth_events

    def ok(ev) -> bool:
        parents = [int(q) for q in ev["parents"]] if "parents" in ev else []
        if ev["kind"] == "vanish":
            return any(q in seen for q in parents)
        if ev["kind"] == "coalescence":
            return sum(q in seen for q in parents) >= 2 and int(ev["child"]) in seen
        return True

    return truth_events[[ok(ev) for _, ev in truth_events.iterrows()]]


def score_tracking(trajectories: pd.DataFrame, events: pd.DataFrame,
                   truth_particles: pd.DataFrame, truth_events: pd.DataFrame, *,
                   follow_fraction: float = 0.9, frame_tol: int = 2,
                   tol_s: float | None = None, observed_only: bool = True) -> dict:
    """Tracking quality against the simulator's truth.

    Returns identity switches (a truth particle's matched track id changing while it lives),
    the fraction of truth trajectories followed by one track for at least ``follow_fraction`` of
    their life in view, and precision/recall of coalescence and vanish events (matched within
    ``frame_tol`` frames, or ``tol_s`` seconds when given; see :func:`match_events`). Only truth
    particles and events inside the field of view (``in_frame``) count, and with
    ``observed_only`` only events of particles the masks showed (:func:`observed_events`).
    """
    truth = truth_particles
    if "in_frame" in truth:
        truth = truth[truth["in_frame"].astype(bool)]
    tev = truth_events
    if "in_frame" in tev:
        tev = tev[tev["in_frame"].astype(bool)]
    matches = match_to_truth(trajectories, truth).sort_values(["truth", "frame"])
    if observed_only:
        tev = observed_events(tev, matches)
    switches = int((matches.groupby("truth")["track"].diff().fillna(0) != 0).sum())
    life = truth.groupby("particle").size()
    dominant = matches.groupby(["truth", "track"]).size().groupby("truth").max()
    followed = (dominant.reindex(life.index, fill_value=0) / life) >= follow_fraction
    return {
        "truth_trajectories": int(len(life)),
        "followed_fraction": float(followed.mean()) if len(life) else float("nan"),
        "follow_threshold": follow_fraction,
        "identity_switches": switches,
        "matched_detections": int(len(matches)),
        "truth_detections": int(len(truth)),
        "coalescence": match_events(events, tev, kind="coalescence", frame_tol=frame_tol,
                                    tol_s=tol_s),
        "vanish": match_events(events, tev, kind="vanish", frame_tol=frame_tol, tol_s=tol_s),
    }


def score_tracks_against_truth(trajectories: pd.DataFrame, events: pd.DataFrame,
                               truth_particles: pd.DataFrame, truth_events: pd.DataFrame, *,
                               tol_s: float | None = None,
                               frame_shape: tuple[int, int] | None = None) -> dict:
    """Tracking, events and the LSW ripening rate of a track set against the simulator's truth.

    The measured rate is :func:`etemseg.analysis.sintering.fit_lsw_tracked` of the trajectories
    and events (tracked particles away from the border, gaps and fade-outs bridged); ``naive``
    the per-frame mean radius of every detection not touching the border (the fit before
    tracking).  The true rate is :func:`etemseg.analysis.sintering.fit_lsw_rate` of the truth
    radii of the same population: with ``frame_shape`` ``(H, W)`` px the truth particles whose
    disc does not reach the edge pixels (a particle cut by the frame edge cannot be sized, so no
    method measures it); ``truth_in_frame`` every particle with a pixel in view.  ``tol_s``: event
    time tolerance, s (None: 2 frames).  Returns ``{"tracking": ..., "lsw": {"measured",
    "naive", "truth", "truth_in_frame"}}`` (see :func:`score_tracking`).
    """
    from etemseg.analysis.sintering import fit_lsw_rate, fit_lsw_tracked, radius_series

    truth_in = (truth_particles[truth_particles["in_frame"].astype(bool)]
                if "in_frame" in truth_particles else truth_particles)

    def truth_fit(t: pd.DataFrame) -> dict:
        return fit_lsw_rate(radius_series(t.assign(eq_diameter_nm=2 * t["radius_nm"])))

    lsw = {"truth_in_frame": truth_fit(truth_in)}
    if frame_shape is not None:
        h, w = frame_shape
        x, y, r = (truth_in[c].to_numpy(float) for c in ("x_px", "y_px", "radius_px"))
        inner = (x - r > 0.5) & (y - r > 0.5) & (x + r < w - 1.5) & (y + r < h - 1.5)
        lsw["truth"] = truth_fit(truth_in[inner])
    else:
        lsw["truth"] = lsw["truth_in_frame"]
    measured = (trajectories[~trajectories["touches_border"].astype(bool)]
                if "touches_border" in trajectories else trajectories)
    lsw.update(measured=fit_lsw_tracked(trajectories, events),
               naive=fit_lsw_rate(radius_series(measured)))
    return {"tracking": score_tracking(trajectories, events, truth_particles, truth_events,
                                       tol_s=tol_s), "lsw": lsw}
