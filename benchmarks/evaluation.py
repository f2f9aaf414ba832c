"""2,000-resample bootstraps over 10,000 images against scikit-learn loops.

On the same resample indices (``evaluation.bootstrap.resample_indices``), rounds interleaved:

- AUROC: ``evaluation.metrics.auroc`` on the whole [2000, 10000] index matrix against a Python
  loop calling ``sklearn.metrics.roc_auc_score`` once per resample;
- mean per-image Dice of 10,000 predicted 64x64 masks: ``per_image_overlap`` (Dice of every
  image, vectorised) then ``mean_of`` over the resamples, against a loop calling
  ``sklearn.metrics.f1_score`` once per image (Dice of binary masks is their F1 score;
  scikit-learn has no Dice, and calling it once per image *per resample* would take hours,
  so the loop computes the per-image values once) and then ``np.mean`` per resample.

Agreement with the loops is checked to 1e-9 on every resample.

Run alone: ``.venv/bin/python -m benchmarks.evaluation``.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from benchmarks.common import Row, compare, finish, speedups, time_row, with_ratio
from evaluation.bootstrap import resample_indices
from evaluation.metrics import auroc, mean_of, per_image_overlap

STAGE = "4 bootstrap"


def data(n: int, mask: int = 64, seed: int = 0):
    """Binary labels with informative scores, and true and predicted disc masks ``[n, mask, mask]``
    that overlap imperfectly; the same for a given seed, so every round scores identical data."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    score = y * 0.8 + rng.normal(0, 0.7, n)
    # Masks: a disc per image, predicted with a shifted, resized disc and some noise.
    yy, xx = np.mgrid[:mask, :mask]
    c = rng.uniform(16, 48, (n, 2))
    r = rng.uniform(4, 16, n)
    truth = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2 < r[:, None, None] ** 2
    c2 = c + rng.normal(0, 3, (n, 2))
    r2 = r * rng.uniform(0.7, 1.3, n)
    pred = (yy[None] - c2[:, 0, None, None]) ** 2 + (xx[None] - c2[:, 1, None, None]) ** 2 < r2[:, None, None] ** 2
    pred ^= rng.random(pred.shape) < 0.002
    return y, score, truth, pred


def run(n: int = 10_000, resamples: int = 2000, reps: int = 3) -> dict:
    """Time the vectorised AUROC and mean Dice against the scikit-learn loops on the same resample
    indices; each row's target is met only if the outputs also agree to 1e-9."""
    y, score, truth, pred = data(n)
    idx = resample_indices(n, resamples, 0)

    def dice_vectorised():
        dice, _ = per_image_overlap(truth, pred)
        return mean_of(dice, idx)

    def dice_sklearn_loop():
        flat_t, flat_p = truth.reshape(n, -1), pred.reshape(n, -1)
        dice = np.array([f1_score(flat_t[i], flat_p[i], zero_division=1.0) for i in range(n)])
        return np.array([np.mean(dice[r]) for r in idx])

    last: dict[str, np.ndarray] = {}  # each case's output, for the agreement check

    def keep(name, fn):
        def go():
            last[name] = np.asarray(fn())

        return go

    t = compare(
        {
            "auroc sklearn loop": keep("auroc sklearn loop", lambda: [roc_auc_score(y[r], score[r]) for r in idx]),
            "auroc vectorised": keep("auroc vectorised", lambda: auroc(y, score, idx)),
            "dice sklearn loop": keep("dice sklearn loop", dice_sklearn_loop),
            "dice vectorised": keep("dice vectorised", dice_vectorised),
        },
        reps,
    )
    out = {
        "max_abs_diff_auroc": float(np.max(np.abs(last["auroc vectorised"] - last["auroc sklearn loop"]))),
        "max_abs_diff_dice": float(np.max(np.abs(last["dice vectorised"] - last["dice sklearn loop"]))),
    }
    out["seconds"] = t
    agree_a, agree_d = out["max_abs_diff_auroc"] <= 1e-9, out["max_abs_diff_dice"] <= 1e-9
    sa, sd = speedups(t["auroc sklearn loop"], t["auroc vectorised"]), speedups(t["dice sklearn loop"], t["dice vectorised"])
    size = f"{resamples}x{n}"
    rows: list[Row] = [
        time_row(STAGE, "AUROC: loop of sklearn roc_auc_score", size, t["auroc sklearn loop"]),
        with_ratio(
            time_row(STAGE, f"AUROC: evaluation.metrics.auroc [max diff {out['max_abs_diff_auroc']:.1e}]", size, t["auroc vectorised"]),
            sa,
            "sklearn loop",
            ">= 50x, agree 1e-9",
            sa[0] >= 50 and agree_a,
        ),
        time_row(STAGE, "mean Dice: sklearn f1_score per image + np.mean per resample", size, t["dice sklearn loop"]),
        with_ratio(
            time_row(
                STAGE, f"mean Dice: per_image_overlap + mean_of [max diff {out['max_abs_diff_dice']:.1e}]", size, t["dice vectorised"]
            ),
            sd,
            "sklearn loop",
            ">= 50x, agree 1e-9",
            sd[0] >= 50 and agree_d,
        ),
    ]
    return {"stage": STAGE, "n": n, "resamples": resamples, "reps": reps, "rows": rows, "details": out}


def main(argv: list[str] | None = None) -> int:
    """Run this stage alone from the command line; prints its table, writes its results file, exits 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    res = run(a.n, a.resamples, a.reps)
    return finish("evaluation", res, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
