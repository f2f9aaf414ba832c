"""Known-answer tests of what an evaluation reports beside each number: class counts, the
"insufficient" guard, segmentation two ways, and the threshold each run chose on validation.

Runs are written straight through the store's records with predictions whose right answers
are known, so every figure below is computed by hand (or by scikit-learn) independently.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from evaluation.artifacts import EvalConfig, evaluate, read_evaluation, results_table
from featurestore.layout.records import RunRecord, predictions_table, write_run
from featurestore.store import Store
from featurestore.tasks import get_kind


def _run(store, run_id, task, kind, encoder, ids, pred, y, operating_points=None):
    rec = RunRecord(run_id=run_id, task=task, task_kind=kind, head="linear", feature_set_id=f"{encoder}-0", encoder=encoder,
                    config={"head": "linear"}, created_at=datetime.now(UTC).isoformat(), seed=0,
                    operating_points=operating_points or {})  # fmt: skip
    spec = get_kind(kind)
    masks = (pred.astype(np.float16), (y > 0.5).astype(np.uint8)) if spec.dense else None
    write_run(store, rec, b"", predictions_table(spec, ids, pred, y), masks)
    return run_id


@pytest.fixture
def store(tmp_path):
    return Store.open(str(tmp_path / "store"), create=True)


def test_auroc_with_few_positives_is_insufficient_and_not_compared(store):
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(40)]
    y = np.r_[np.ones(4), np.zeros(36)]  # 4 positives: below the default minimum of 10
    for enc in ("a", "b"):
        _run(store, f"few-{enc}", "cardiomegaly-cls", "classification", enc, ids, rng.random(40), y)
    ev = evaluate(store, None, EvalConfig(resamples=200))
    _, t = read_evaluation(store, ev.eval_id)
    rows = t["metrics"].to_pylist()
    assert {(r["metric"], r["status"]) for r in rows} == {("auroc", "insufficient"), ("auprc", "insufficient")}
    assert all(np.isnan(r["value"]) and np.isnan(r["ci_low"]) and (r["n_pos"], r["n_neg"]) == (4, 36) for r in rows)
    assert t["comparisons"].num_rows == 0  # nothing compared on 4 positives
    printed = {r["value [95% CI]"] for r in results_table(t["metrics"])}
    assert printed == {"insufficient (4 pos / 36 neg)"}


def test_auroc_with_enough_of_each_class_equals_sklearn_with_counts(store):
    rng = np.random.default_rng(1)
    n_pos, n_neg = 12, 30
    ids = [f"i{k}" for k in range(n_pos + n_neg)]
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    scores = {enc: y * 1.0 + rng.standard_normal(len(y)) for enc in ("a", "b")}
    for enc, s in scores.items():
        _run(store, f"ok-{enc}", "cardiomegaly-cls", "classification", enc, ids, s, y)
    ev = evaluate(store, None, EvalConfig(resamples=300))
    _, t = read_evaluation(store, ev.eval_id)
    for r in t["metrics"].to_pylist():
        assert (r["n_pos"], r["n_neg"], r["status"]) == (n_pos, n_neg, "ok")
        if r["metric"] == "auroc":
            assert r["value"] == pytest.approx(roc_auc_score(y, scores[r["encoder"]]), abs=1e-12)
            assert r["ci_low"] < r["value"] < r["ci_high"]
    tests = set(t["comparisons"].column("test").to_pylist())
    assert tests == {"paired-bootstrap", "delong"}


def test_segmentation_reported_two_ways_at_the_runs_own_threshold(store):
    # 4 images with a true mask, 4 empty; predictions are probabilities, the run chose 0.3.
    h = w = 8
    truth = np.zeros((8, h, w))
    truth[:4, 2:6, 2:6] = 1  # 16 pixels each
    prob = np.zeros((8, h, w), np.float32)
    prob[0, 2:6, 2:6] = 0.4  # above 0.3, below 0.5: perfect at 0.3, empty at 0.5
    prob[1, 2:6, 2:4] = 0.9  # half the mask: Dice 2*8/(16+8) = 2/3 at both thresholds
    prob[2] = 0.0  # missed: Dice 0
    prob[3, 2:6, 2:6] = 0.9  # perfect at both
    prob[4, 0, 0] = 0.35  # a stray pixel on an empty image at 0.3 (not at 0.5)
    ids = [f"m{k}" for k in range(8)]
    _run(store, "seg", "heart-seg", "segmentation", "a", ids, prob, truth, {"threshold": 0.3})
    ev = evaluate(store, None, EvalConfig(resamples=200))
    rows = {r["metric"]: r for r in read_evaluation(store, ev.eval_id)[1]["metrics"].to_pylist()}
    assert rows["dice_nonempty"]["value"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    assert rows["fp_empty"]["value"] == pytest.approx(1 / 4)
    assert rows["dice"]["value"] == pytest.approx((1 + 2 / 3 + 0 + 1 + 0 + 1 + 1 + 1) / 8)  # empty & empty = 1
    assert rows["dice_05"]["value"] == pytest.approx((0 + 2 / 3 + 0 + 1 + 1 + 1 + 1 + 1) / 8)
    assert rows["dice_nonempty"]["primary"] and not rows["dice"]["primary"]
    assert {r["threshold"] for r in rows.values()} == {0.3} and (rows["dice"]["n_pos"], rows["dice"]["n_neg"]) == (4, 4)
    # A threshold in the configuration overrides the run's; the primary metric is a config key.
    ev2 = evaluate(store, None, EvalConfig(resamples=200, threshold=0.5, primary={"segmentation": "dice"}))
    rows2 = {r["metric"]: r for r in read_evaluation(store, ev2.eval_id)[1]["metrics"].to_pylist()}
    assert rows2["dice"]["value"] == pytest.approx(rows["dice_05"]["value"]) and rows2["dice"]["primary"]
    assert rows2["fp_empty"]["value"] == 0.0


def test_config_errors_name_the_key():
    from featurestore.errors import RadstoreError

    with pytest.raises(RadstoreError, match="not a metric of task kind segmentation"):
        EvalConfig(primary={"segmentation": "auroc"})
    with pytest.raises(RadstoreError, match="threshold must be in"):
        EvalConfig(threshold=1.5)
