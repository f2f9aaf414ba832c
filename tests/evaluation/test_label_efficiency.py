"""Label-efficiency tables (evaluation.label_efficiency) against independent computations
(scikit-learn per seed, numpy over seeds, the documented resamples), planted differences between
encoders, the null rejection rate, and one end-to-end curve from probes trained on subsets."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import mean_absolute_error, roc_auc_score

from evaluation.bootstrap import resample_indices
from evaluation.compute import RunData
from evaluation.config import EvalConfig
from evaluation.label_efficiency import label_efficiency_rows
from featurestore.layout.schemas import LABEL_EFFICIENCY_TABLES

NOW = datetime(2025, 1, 1, tzinfo=UTC)
CFG = EvalConfig(resamples=200, seed=5)
FRACTIONS = (0.1, 0.5)
SEEDS = (0, 1, 2)


def make_run(encoder: str, ids: np.ndarray, y: np.ndarray, pred: np.ndarray, *, fraction: float | None = None, shots: int | None = None,
             seed: int = 0, task: str = "cardiomegaly-cls", kind: str = "classification", train: int = 100,
             positives: int | None = 30, created: str = "2025-01-01T00:00:00+00:00", order: np.ndarray | None = None) -> RunData:  # fmt: skip
    """A run's RunData as evaluation.artifacts.load_run gives it: meta with the recorded config and
    splits, test predictions (in ``order``, to exercise the alignment by image id)."""
    config = {"task": task, "head": "linear", "fold": None, "seed": 0}
    if fraction is not None:
        config["train_fraction"] = fraction
    if shots is not None:
        config["shots"] = shots
    if seed:
        config["subset_seed"] = seed
    splits = {"train": train, "val": 20, "test": len(ids)}
    if positives is not None:
        splits["train_positives"] = positives
    if fraction is not None or shots is not None:
        splits["train_pool"] = 200
    meta = {"task": task, "task_kind": kind, "head": "linear", "fold": None, "encoder": encoder, "feature_set_id": f"fs-{encoder}",
            "run_id": f"{encoder}-{fraction}-{shots}-{seed}-{created}", "config": config, "splits": splits, "created_at": created}  # fmt: skip
    o = np.arange(len(ids)) if order is None else order
    return RunData(meta, ids[o], {"y": y[o], "prediction": pred[o]}, sha256="0")


def cohort(n: int = 120, prevalence: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(np.float64)
    return np.array([f"img{k:04d}" for k in range(n)], dtype=object), y


def curves(shift: dict[str, float], *, n: int = 120, seed: int = 0, whole: bool = True) -> tuple[list[RunData], dict, np.ndarray]:
    """Runs of each encoder at FRACTIONS x SEEDS (and the whole split): scores ``y * shift * size + noise``,
    so each encoder's AUROC grows with the fraction. Returns (runs, scores by (encoder, fraction, seed), y)."""
    ids, y = cohort(n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    runs, scores = [], {}
    points = [(f, s) for f in FRACTIONS for s in SEEDS] + ([(None, 0)] if whole else [])
    for enc, d in shift.items():
        for f, s in points:
            score = y * d * (f or 1.0) ** 0.5 + rng.standard_normal(n)
            scores[(enc, f or 1.0, s)] = score
            runs.append(make_run(enc, ids, y, score, fraction=f, seed=s, train=int(200 * (f or 1.0)) + s,
                                 order=rng.permutation(n)))  # fmt: skip
    return runs, scores, y


def _rows(out: dict, table: str, **where) -> list[dict]:
    return [r for r in out[table] if all(r[k] == v for k, v in where.items())]


def test_rows_match_scikit_learn_per_seed_and_numpy_over_seeds():
    runs, scores, y = curves({"A": 2.0, "B": 1.0})
    out = label_efficiency_rows(runs, CFG, "ev", NOW)
    for enc in "AB":
        for f in (*FRACTIONS, 1.0):
            seeds = SEEDS if f < 1 else (0,)
            want = [roc_auc_score(y, scores[(enc, f, s)]) for s in seeds]
            got = sorted(_rows(out, "label_efficiency_seeds", encoder=enc, size=f, metric="auroc"), key=lambda r: r["subset_seed"])
            assert [r["subset_seed"] for r in got] == list(seeds)
            assert [r["value"] for r in got] == pytest.approx(want, abs=1e-12)
            assert all(r["ci_low"] <= r["value"] <= r["ci_high"] and r["method"] == "delong-logit" for r in got)
            assert [r["train_images"] for r in got] == [int(200 * f) + s for s in seeds]
            (summary,) = _rows(out, "label_efficiency", encoder=enc, size=f, metric="auroc")
            assert summary["regime"] == "fraction" and summary["seeds"] == len(seeds) and summary["primary"]
            assert summary["value"] == pytest.approx(np.mean(want), abs=1e-12)
            assert summary["seed_min"] == pytest.approx(min(want)) and summary["seed_max"] == pytest.approx(max(want))
            if len(seeds) > 1:
                assert summary["seed_sd"] == pytest.approx(np.std(want, ddof=1), abs=1e-12)
            else:
                assert np.isnan(summary["seed_sd"])  # one run: no spread to report
            assert summary["train_images"] == pytest.approx(np.mean([int(200 * f) + s for s in seeds]))
            assert summary["train_positives"] == 30 and summary["n_pos"] == int(y.sum())
    for f in (*FRACTIONS, 1.0):
        (c,) = _rows(out, "label_efficiency_comparisons", size=f, metric="auroc")
        a, b = (_rows(out, "label_efficiency", encoder=e, size=f, metric="auroc")[0]["value"] for e in "AB")
        assert (c["encoder_a"], c["encoder_b"]) == ("A", "B") and c["diff"] == pytest.approx(a - b, abs=1e-12)
        assert c["seeds"] == (len(SEEDS) if f < 1 else 1) and c["family_size"] == 1 and c["p_holm"] == c["p"]


def test_the_seed_mean_interval_uses_the_groups_stratified_resamples():
    """The interval of a seed mean, rebuilt from the documented resamples (resample_indices with the
    evaluation's seed, stratified by the test labels, shared by every run of the group) and
    scikit-learn's AUROC on each resample."""
    runs, scores, y = curves({"A": 2.0, "B": 1.0})
    out = label_efficiency_rows(runs, CFG, "ev", NOW)
    idx = resample_indices(len(y), CFG.resamples, CFG.seed, strata=y)
    for enc in "AB":
        boot = np.mean([[roc_auc_score(y[i], scores[(enc, 0.1, s)][i]) for i in idx] for s in SEEDS], axis=0)
        (summary,) = _rows(out, "label_efficiency", encoder=enc, size=0.1, metric="auroc")
        low, high = np.quantile(boot, [0.025, 0.975])
        assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((low, high), abs=1e-12)


def test_a_planted_better_encoder_wins_at_every_size_after_holm():
    runs, _, _ = curves({"A": 3.0, "B": 0.3, "C": 0.3})
    out = label_efficiency_rows(runs, CFG, "ev", NOW)
    for f in (*FRACTIONS, 1.0):
        comps = _rows(out, "label_efficiency_comparisons", size=f, metric="auroc")
        assert len(comps) == 3 and all(c["family_size"] == 3 for c in comps)  # Holm within one size
        for c in comps:
            if c["encoder_a"] == "A":
                assert c["diff"] > 0 and c["p_holm"] < 0.05 and c["ci_low"] > 0
                assert c["wins_a"] == c["seeds"] and c["wins_b"] == 0
    means = [_rows(out, "label_efficiency", encoder="A", size=f, metric="auroc")[0]["value"] for f in (*FRACTIONS, 1.0)]
    assert means == sorted(means)  # the planted curve grows with the labels


def test_identical_encoders_differ_at_about_the_nominal_rate():
    """Exchangeable encoders (same signal, independent noise): the paired test of seed means
    rejects at about 5% (the paired bootstrap's calibration, README *Intervals that cover*)."""
    rejected, reps = 0, 200
    rng = np.random.default_rng(11)
    ids, _ = cohort(100)
    for rep in range(reps):
        y = (rng.random(100) < 0.3).astype(np.float64)
        runs = [make_run(e, ids, y, y + rng.standard_normal(100), fraction=0.1, seed=s) for e in "AB" for s in (0, 1)]
        out = label_efficiency_rows(runs, EvalConfig(resamples=200, seed=rep), "ev", NOW)
        (c,) = _rows(out, "label_efficiency_comparisons", metric="auroc")
        rejected += c["p_holm"] < 0.05
    assert rejected / reps <= 0.09
    same = [make_run(e, ids, y, y + np.arange(100) % 7, fraction=0.1) for e in "AB"]  # the very same predictions
    (c,) = _rows(label_efficiency_rows(same, CFG, "ev", NOW), "label_efficiency_comparisons", metric="auroc")
    assert c["diff"] == 0 and c["p"] == 1.0 and c["wins_a"] == c["wins_b"] == 0


def test_shots_regression_and_what_gives_no_rows():
    ids, y = cohort(120)
    rng = np.random.default_rng(3)
    runs = [make_run(e, ids, y, y * d + rng.standard_normal(120), shots=k, seed=s) for e, d in (("A", 2.0), ("B", 0.5))
            for k in (8, 16) for s in (0, 1)]  # fmt: skip
    whole_only = [make_run("A", ids, y, y + rng.standard_normal(120), task="pneumothorax-cls")]
    value = rng.random(120)
    regression = [make_run(e, ids, value, value + rng.normal(0, sd, 120), fraction=f, task="ctr-reg", kind="regression", positives=None)
                  for e, sd in (("A", 0.05), ("B", 0.5)) for f in (0.5, None)]  # fmt: skip
    out = label_efficiency_rows(runs + whole_only + regression, CFG, "ev", NOW)
    assert {r["task"] for r in out["label_efficiency"]} == {"cardiomegaly-cls", "ctr-reg"}  # no subset run: no curve
    shots = _rows(out, "label_efficiency", task="cardiomegaly-cls", metric="auroc")
    assert sorted((r["regime"], r["size"], r["encoder"]) for r in shots) == [("shots", k, e) for k in (8.0, 16.0) for e in "AB"]
    (mae,) = _rows(out, "label_efficiency_comparisons", task="ctr-reg", size=0.5, metric="mae")
    want = mean_absolute_error(value, regression[0].arrays["prediction"]) - mean_absolute_error(value, regression[2].arrays["prediction"])
    assert mae["diff"] == pytest.approx(want, abs=1e-12) and mae["diff"] < 0
    assert mae["wins_a"] == 1 and mae["p"] < 0.05  # lower MAE is better
    r2 = _rows(out, "label_efficiency", task="ctr-reg", metric="r2")
    assert {r["size"] for r in r2} == {0.5, 1.0} and all(r["n_pos"] is None and r["train_positives"] is None for r in r2)


def test_too_few_of_a_class_is_insufficient_and_not_compared():
    ids, y = cohort(120, prevalence=0.04)
    rng = np.random.default_rng(4)
    runs = [make_run(e, ids, y, y + rng.standard_normal(120), fraction=0.5, seed=s) for e in "AB" for s in (0, 1)]
    out = label_efficiency_rows(runs, EvalConfig(resamples=200, min_class_count=10), "ev", NOW)
    auroc = _rows(out, "label_efficiency", metric="auroc")
    assert auroc and all(r["status"] == "insufficient" and np.isnan(r["value"]) for r in auroc)
    assert not _rows(out, "label_efficiency_comparisons", metric="auroc")


def test_the_latest_run_of_a_point_counts_and_rows_fit_their_schemas():
    ids, y = cohort(120)
    rng = np.random.default_rng(5)
    old = make_run("A", ids, y, rng.standard_normal(120), fraction=0.5, created="2025-01-01T00:00:00+00:00")
    new = make_run("A", ids, y, y * 3 + rng.standard_normal(120), fraction=0.5, created="2025-02-01T00:00:00+00:00")
    out = label_efficiency_rows([new, old], CFG, "ev", NOW)
    (seed_row,) = _rows(out, "label_efficiency_seeds", metric="auroc")
    assert seed_row["run_id"] == new.meta["run_id"] and seed_row["train_pool"] == 200
    runs, _, _ = curves({"A": 2.0, "B": 1.0})
    out = label_efficiency_rows(runs, CFG, "ev", NOW)
    for name, schema in LABEL_EFFICIENCY_TABLES.items():
        assert out[name] and all(set(r) == set(schema.names) for r in out[name]), name
        assert pa.Table.from_pylist(out[name], schema=schema).num_rows == len(out[name])
    np.testing.assert_equal(label_efficiency_rows(runs, CFG, "ev", NOW), out)  # the same inputs give the same rows


# -- end to end: probes trained on subsets of a planted feature set --------------------------------


def planted_store(root, n_patients: int = 500, dims: int = 64, auroc: float = 0.85):
    """A store with no image files: a manifest (image_id, patient_id, split, pneumothorax) of 1-2
    images per patient, and a feature set whose first global dimension carries the label with a
    best AUROC of ``auroc`` (tests/planted.py's shift), every other dimension noise."""
    import pyarrow.parquet as pq

    from featurestore.featureset import FeatureSetSpec
    from featurestore.store import Store
    from tests.planted import class_shift

    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_patients):
        split = ("train", "val", "test")[int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
        for _ in range(int(rng.integers(1, 3))):
            rows.append({"image_id": f"img{len(rows):04d}", "patient_id": f"P{p:04d}", "split": split,
                         "pneumothorax": bool(rng.random() < 0.3)})  # fmt: skip
    manifest = root / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    store = Store.open(str(root / "store"), create=True)
    g = rng.standard_normal((len(rows), dims))
    g[:, 0] += class_shift(auroc) * np.array([r["pneumothorax"] for r in rows])
    fs = store.create_feature_set(FeatureSetSpec("synthetic", "label-efficiency", (2, 2, 2), dims, dtype="float32", shard_images=64))
    ids = [r["image_id"] for r in rows]
    with fs.writer() as w:
        for k in range(0, len(ids), 64):
            w.write(ids[k : k + 64], g[k : k + 64].astype(np.float32), np.zeros((len(ids[k : k + 64]), 2, 2, 2), np.float32))
    return store, fs.id, str(manifest)


def test_probes_on_nested_subsets_draw_a_curve_that_grows_with_the_labels(tmp_path):
    """L-BFGS probes on 5% and 25% of the training split (two seeds each) and on all of it: each
    run trains on exactly its subset's images (its lineage), and with 63 noise dimensions beside
    the planted one a few labels overfit, so the AUROC grows with the labels."""
    from evaluation.artifacts import load_run
    from featurestore.layout.records import read_lineage
    from featurestore.tasks import get_task
    from heads.config import TrainConfig
    from heads.data import load_labels, split_indices
    from heads.train import train

    store, fsid, manifest = planted_store(tmp_path)
    base = dict(task="pneumothorax-cls", solver="lbfgs", progress=False, device="cpu")
    cfgs = [TrainConfig(**base)] + [TrainConfig(**base, train_fraction=f, subset_seed=s) for f in (0.05, 0.25) for s in (0, 1)]
    ids = [train(store, fsid, c, manifest).run_id for c in cfgs]
    labels = load_labels(get_task("pneumothorax-cls"), store.feature_set(fsid), manifest, store)
    for c, rid in zip(cfgs, ids):  # the run trained on, and recorded, exactly the subset's images
        lineage = read_lineage(store, rid).to_pylist()
        want = split_indices(labels, None, 5, 0, c.subset)
        assert sorted(r["image_id"] for r in lineage if r["split"] == "train") == sorted(labels.image_ids[i] for i in want["train"])
    cfg = EvalConfig(resamples=200)
    out = label_efficiency_rows([load_run(store, rid, cfg) for rid in ids], cfg, "ev", NOW)
    auroc = {r["size"]: r for r in _rows(out, "label_efficiency", metric="auroc")}
    assert sorted(auroc) == [0.05, 0.25, 1.0]
    assert auroc[0.05]["value"] < auroc[0.25]["value"] < auroc[1.0]["value"]
    assert auroc[0.05]["train_images"] < auroc[0.25]["train_images"] < auroc[1.0]["train_images"]
    assert auroc[1.0]["value"] > 0.75  # the planted signal (0.85) is recovered from the whole split
    # through the evaluation: the subset runs are curve points, not rows of the main table
    from evaluation.artifacts import evaluate, read_evaluation
    from evaluation.query import query

    ev = evaluate(store, None, cfg)  # every point's latest run is selected, not one per feature set
    _, tables = read_evaluation(store, ev.eval_id)
    assert {r["run_id"] for r in tables["metrics"].to_pylist()} == {ids[0]}
    assert {r["run_id"] for r in tables["label_efficiency_seeds"].to_pylist()} == set(ids)
    got = {r["size"]: r["value"] for r in tables["label_efficiency"].to_pylist() if r["metric"] == "auroc"}
    assert got == {k: r["value"] for k, r in auroc.items()}
    sql = query(store, "SELECT size, value FROM label_efficiency WHERE metric = 'auroc' ORDER BY size").to_pylist()
    assert [r["size"] for r in sql] == [0.05, 0.25, 1.0]
