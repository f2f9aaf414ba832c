"""Bootstrap speed: 2,000 resamples of AUROC and of mean per-image Dice over 10,000 images,
vectorised (evaluation.bootstrap) against a plain Python loop calling scikit-learn / numpy on
the same resample indices, in one run; also checks they agree (to 1e-9).

Run: ``.venv/bin/python -m benchmarks.evaluation``.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.common import median_time, write_results
from evaluation.bootstrap import resample_indices
from evaluation.metrics import auroc, mean_of


def run(n: int = 10_000, resamples: int = 2000, reps: int = 3) -> dict:
    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.3).astype(int)
    score = y * 0.8 + rng.normal(0, 0.7, n)
    dice = rng.beta(5, 2, n)
    idx = resample_indices(n, resamples, 0)
    out = {}
    vec_auc = auroc(y, score, idx)
    loop_auc = np.array([roc_auc_score(y[r], score[r]) for r in idx])
    vec_dice = mean_of(dice, idx)
    loop_dice = np.array([float(np.mean(dice[r])) for r in idx])
    out["max_abs_diff_auroc"] = float(np.max(np.abs(vec_auc - loop_auc)))
    out["max_abs_diff_dice"] = float(np.max(np.abs(vec_dice - loop_dice)))
    for name, fn in {
        "auroc_vectorised": lambda: auroc(y, score, idx),
        "auroc_sklearn_loop": lambda: [roc_auc_score(y[r], score[r]) for r in idx],
        "dice_vectorised": lambda: mean_of(dice, idx),
        "dice_numpy_loop": lambda: [float(np.mean(dice[r])) for r in idx],
    }.items():
        out[name] = median_time(fn, reps)
    out["speedup_auroc"] = out["auroc_sklearn_loop"][0] / out["auroc_vectorised"][0]
    out["speedup_dice"] = out["dice_numpy_loop"][0] / out["dice_vectorised"][0]
    return {"n": n, "resamples": resamples, "reps": reps, "results": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    res = run(a.n, a.resamples)
    for k, v in res["results"].items():
        print(f"{k:22s} {v if not isinstance(v, tuple) else f'{v[0]:.3f} s ({v[1]:.3f}-{v[2]:.3f})'}")
    print(f"wrote {write_results('evaluation', res, a.out)}")


if __name__ == "__main__":
    main()
