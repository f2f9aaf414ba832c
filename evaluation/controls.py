"""The positive control's expected values, and the check that every evaluation makes against them.

The ``planted`` encoder (:mod:`featurestore.encoders.planted`) writes a known signal plus noise
drawn from a known model. For each of its runs this module computes what a head *should*
score on that run's own test images: the same metric code (:mod:`evaluation.metrics`) applied
to the best head of the model, averaged over fresh draws of the noise:

* global tasks: the population-best linear read-out of the planted vector (logistic or least
  squares, fitted on many noise draws of the test images' own signal, so label correlations
  such as cardiomegaly = CTR > 0.5 count as they do for the trained probe), scored against the
  labels the signal was made from (read back from the store, not from the run), so a run
  whose labels were joined to the wrong images misses;
* segmentation: the planted mask fraction itself, upsampled bilinearly to the target masks as
  the heads upsample, cut at 0.5: the Dice ceiling of the grid plus the noise.

The expected values describe a linear read-out, so they hold the runs of heads registered as
one (``linear_readout``, recorded in each run: the probes). A metric of such a head whose interval lies more than
:data:`TOLERANCE` from its expected value is *missed*: below, the machinery loses signal it was
given (a label join, a split, a threshold, a metric); above, something leaks. Other heads'
rows are reported beside the same value as a *reference*, never counted as a miss: their
capacity and training budget, not the machinery, decide how close they come. Only scores where higher is better are checked (AUROC, AP, R^2, Dice,
IoU), at the run's operating point; the others (MAE, false-positive rate, Dice at a fixed 0.5)
have no expectation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from evaluation import metrics as M
from evaluation.compute import RunData
from evaluation.config import EvalConfig
from featurestore.encoders.registry import control_of
from featurestore.layout.records import open_masks
from featurestore.store import Store
from featurestore.tasks import TASKS, get_kind

#: How far a head may trail (or beat) the model's best read-out before the control is missed:
#: a head fitted on a finite training split trails it by a few points.
TOLERANCE = 0.05
#: Noise draws the expected values average over (and, for global tasks, fit the read-out on).
DRAWS = 40
SEED = 0


@dataclass(frozen=True)
class ControlCheck:
    """One metric of one positive-control run against its expected value."""

    run_id: str
    encoder: str
    task: str
    head: str
    fold: int | None
    metric: str
    value: float
    ci_low: float
    ci_high: float
    expected: float
    tolerance: float
    status: str  # "met", "missed", "insufficient" (too few of a class) or "reference" (not a linear read-out)

    def line(self) -> str:
        """One line for logs and the CLI."""
        where = f"{self.task}/{self.head}" + ("" if self.fold is None else f"/fold {self.fold}")
        if self.status == "insufficient":
            return f"positive control {where} {self.metric}: insufficient data (expected {self.expected:.3f})"
        if self.status == "reference":
            return (
                f"positive control {where} {self.metric}: {self.value:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]; "
                f"a linear read-out reaches {self.expected:.3f} (reference: this head is not one)"
            )
        return (
            f"positive control {where} {self.metric}: {self.value:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}], "
            f"expected {self.expected:.3f} ± {self.tolerance:.2f}: {self.status.upper()}"
        )

    def to_json(self) -> dict[str, Any]:
        """As stored in eval.json (``controls``)."""
        return asdict(self)


#: Reported, never checked: Dice at a fixed 0.5 measures the loss weighting's threshold shift
#: (README, operating points), not the head at its operating point.
UNCHECKED = ("dice_05",)


def checked_metrics(kind: str) -> tuple[str, ...]:
    """The metrics of a task kind that the control checks: the scores where higher is better, at
    the run's operating point."""
    return tuple(m for m in get_kind(kind).metrics if M.get_metric(m).higher_is_better and m not in UNCHECKED)


def expected_values(store: Store, run: RunData, cfg: EvalConfig) -> dict[str, float]:
    """The expected value of each checked metric of a ``planted`` run on its test images."""
    from featurestore.encoders import planted

    fs = store.feature_set(run.meta["feature_set_id"])
    ids = [str(i) for i in run.image_ids]
    kind = get_kind(run.meta["task_kind"])
    rng = np.random.default_rng(SEED)
    n = len(ids)
    values: dict[str, list[float]] = {m: [] for m in checked_metrics(kind.name)}

    def score(arrays: dict[str, np.ndarray]) -> None:
        for metric in values:
            values[metric].append(float(M.get_metric(metric)(arrays)[0]))

    if kind.dense:
        import torch
        import torch.nn.functional as F

        ch = planted.MASK_COLUMNS.index(TASKS[run.meta["task"]].column)
        signal = fs.patches(ids)[:, ch].astype(np.float64) - np.stack([planted.noise(i)[1][ch] for i in ids])
        truth = open_masks(store, run.meta["run_id"])[1][:][run.arrays["mask_row"]]
        for _ in range(DRAWS):
            _, p = planted.fresh_noise(rng, n)
            grid = torch.from_numpy(signal + p[:, ch])[:, None].float()
            prob = F.interpolate(grid, size=truth.shape[-2:], mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()
            score(M.mask_arrays(truth, prob, 0.5, cfg.empty_both))
    else:
        from sklearn.linear_model import LinearRegression, LogisticRegression

        order = {i: k for k, i in enumerate(fs.cls(columns=["image_id"]).column("image_id").to_pylist())}
        vectors = np.asarray(fs.cls(columns=["cls"]).column("cls").to_pylist(), np.float64)[[order[i] for i in ids]]
        signal = vectors - np.stack([planted.noise(i)[0] for i in ids])
        # The labels the features were made from, read back from the signal itself: a pipeline
        # that joins labels to the wrong images scores against other labels and misses.
        y = planted.label_of(run.meta["task"], signal[:, planted.GLOBAL_TASKS.index(run.meta["task"])])
        if kind.labels == "binary" and len(np.unique(y)) < 2:
            return {m: float("nan") for m in values}  # one class: nothing to expect
        draws = [signal + planted.fresh_noise(rng, n)[0] for _ in range(DRAWS)]
        fit_x, fit_y = np.concatenate(draws[: DRAWS // 2]), np.tile(y, DRAWS // 2)
        if kind.labels == "binary":
            model = LogisticRegression(C=1e3, max_iter=2000).fit(fit_x, fit_y.astype(int))
            predict = model.decision_function
        else:
            predict = LinearRegression().fit(fit_x, fit_y).predict
        for x in draws[DRAWS // 2 :]:  # fresh draws: the fit's own noise is not scored
            score({"y": y, "prediction": predict(x)})
    return {m: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for m, v in ((k, np.asarray(v)) for k, v in values.items())}


def check_controls(store: Store, runs: list[RunData], metric_rows: list[dict], cfg: EvalConfig) -> list[ControlCheck]:
    """Every checked metric of every positive-control run in ``runs`` against its expected value."""
    rows = {(r["run_id"], r["metric"]): r for r in metric_rows}
    out = []
    for run in runs:
        if control_of(run.meta["encoder"]) != "positive":
            continue
        for metric, expected in expected_values(store, run, cfg).items():
            r = rows[(run.meta["run_id"], metric)]
            lo, hi = float(r["ci_low"]), float(r["ci_high"])
            if r.get("status") == "insufficient" or not np.isfinite(r["value"]) or not np.isfinite(expected):
                status = "insufficient"
            elif not run.meta.get("linear_readout"):
                status = "reference"
            elif hi < expected - TOLERANCE or lo > expected + TOLERANCE or not (np.isfinite(lo) and np.isfinite(hi)):
                status = "missed"
            else:
                status = "met"
            out.append(
                ControlCheck(
                    run_id=run.meta["run_id"],
                    encoder=run.meta["encoder"],
                    task=run.meta["task"],
                    head=run.meta["head"],
                    fold=run.meta.get("fold"),
                    metric=metric,
                    value=float(r["value"]),
                    ci_low=lo,
                    ci_high=hi,
                    expected=round(expected, 6),
                    tolerance=TOLERANCE,
                    status=status,
                )
            )
    return out


def missed(checks: list[dict] | list[ControlCheck]) -> list[dict]:
    """The checks (as dicts) that missed their expected value."""
    rows = [c.to_json() if isinstance(c, ControlCheck) else c for c in checks]
    return [c for c in rows if c["status"] == "missed"]


def markdown(checks: list[dict]) -> str:
    """The positive control's table, for the Prefect artifact and the report."""
    head = "| task | head | fold | metric | value | 95% CI | expected | status |\n|---|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {c['task']} | {c['head']} | {'' if c['fold'] is None else c['fold']} | {c['metric']} | {c['value']:.3f} | "
        f"[{c['ci_low']:.3f}, {c['ci_high']:.3f}] | {c['expected']:.3f} ± {c['tolerance']:.2f} | {c['status']} |\n"
        for c in checks
    )
    verdict = "**MISSED: the pipeline lost (or leaked) signal it was given.**" if missed(checks) else "All met."
    return f"# Positive control (`planted`)\n\n{verdict}\n\n{head}{body}"
