"""Tracking-benchmark scores pooled over movies and trainings (``tracking_accuracy.py``).

A movie holds 3-6 coalescences and 15-21 vanishes, and the CNN that segments it is one training
(one draw of its masks): one movie's precision or recall moves by 0.2-0.6 between trainings.
Pooled, the events of every movie and training are counted together, each proportion with its
95 % Wilson interval.
"""

from __future__ import annotations

import numpy as np


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``k / n`` (NaN when ``n`` is 0): with 3-20
    events per movie, one movie's precision or recall is a coarse draw."""
    if n <= 0:
        return float("nan"), float("nan")
    p, z2 = k / n, z * z
    mid, half = (p + z2 / (2 * n)), z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo, hi = (mid - half) / (1 + z2 / n), (mid + half) / (1 + z2 / n)
    return float(max(lo, 0.0)), float(min(hi, 1.0))


def pooled(rows: list[dict]) -> list[dict]:
    """Per mask source and linker: events of every movie and training counted together
    (precision = matched / reported, recall = matched / truth, each with its Wilson interval),
    identity switches per 100 truth trajectories, and how many K intervals cover the truth."""
    out = []
    keys = sorted({(r["masks"], r["linker"]) for r in rows if "coal_matched" in r})
    for masks, linker in keys:
        rs = [r for r in rows if (r["masks"], r["linker"]) == (masks, linker)]
        row = {"masks": masks, "linker": linker, "runs": len(rs),
               "movies": len({r["seed"] for r in rs}),
               "trainings": len({(r.get("train_seed", 0), r.get("train_threads", 2))
                                 for r in rs})}
        for ev in ("coal", "van"):
            k = sum(r[f"{ev}_matched"] for r in rs)
            n_m, n_t = sum(r[f"{ev}_measured"] for r in rs), sum(r[f"{ev}_truth"] for r in rs)
            row.update({f"{ev}_matched": k, f"{ev}_measured": n_m, f"{ev}_truth": n_t,
                        f"{ev}_P": k / n_m if n_m else float("nan"),
                        f"{ev}_P_ci": wilson(k, n_m),
                        f"{ev}_R": k / n_t if n_t else float("nan"),
                        f"{ev}_R_ci": wilson(k, n_t)})
        tr = sum(r["truth_trajectories"] for r in rs)
        row["switches_per_100"] = 100 * sum(r["switches"] for r in rs) / max(tr, 1)
        row["K_covered"] = sum(bool(r["K_covered"]) for r in rs)
        errs = np.abs([r["K_err"] for r in rs if np.isfinite(r["K_err"])])
        row["K_abs_err_median"] = float(np.median(errs)) if errs.size else float("nan")
        row["K_within_15pct"] = int((errs <= 0.15).sum())
        out.append(row)
    return out


def print_pooled(summary: list[dict]) -> None:
    """The pooled table (Markdown), one line per mask source and linker."""
    if not summary:
        return
    print("\n| masks | linker | runs (movies x trainings) | coalescence P / R [95 %] | "
          "vanish P / R [95 %] | switches / 100 | K within 15 % / covered |")
    print("|---|---|---|---|---|---|---|")
    for r in summary:
        ev = {e: " / ".join(f"{r[f'{e}_{m}']:.2f} [{r[f'{e}_{m}_ci'][0]:.2f}, "
                            f"{r[f'{e}_{m}_ci'][1]:.2f}]" for m in ("P", "R"))
              + f" ({r[f'{e}_matched']} of {r[f'{e}_measured']} / {r[f'{e}_truth']})"
              for e in ("coal", "van")}
        print(f"| {r['masks']} | {r['linker']} | {r['runs']} ({r['movies']} x {r['trainings']}) "
              f"| {ev['coal']} | {ev['van']} | {r['switches_per_100']:.1f} | "
              f"{r['K_within_15pct']} / {r['K_covered']} of {r['runs']} |")
