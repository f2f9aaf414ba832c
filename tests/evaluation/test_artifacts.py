"""Versioned metric artifacts: numbers equal their oracles, versions are immutable and coexist."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import zarr
from sklearn.metrics import average_precision_score, mean_absolute_error, r2_score, roc_auc_score

from evaluation.artifacts import EvalConfig, evaluate, list_evaluations, read_evaluation, select_runs
from featurestore.errors import RadstoreError
from featurestore.layout import METRICS_DIR, RUNS_DIR
from featurestore.layout.records import read_predictions, read_run
from featurestore.store import Store


def test_calibration_and_operating_points_equal_their_oracles(evaluated_store):
    from sklearn.metrics import brier_score_loss, roc_curve

    from evaluation.calibration import reliability

    url, eval_id, _ = evaluated_store
    store = Store.open(url)
    _, t = read_evaluation(store, eval_id)
    cal, ops = t["calibration"].to_pylist(), t["operating_points"].to_pylist()
    cls_runs = {r["run_id"] for r in t["metrics"].to_pylist() if r["task_kind"] == "classification"}
    assert cls_runs and {r["run_id"] for r in cal} == cls_runs == {r["run_id"] for r in ops}
    for rid in cls_runs:
        p = read_predictions(store, rid).to_pandas()
        test, val = p[p.split == "test"], p[p.split == "val"]
        (b,) = [r for r in cal if r["run_id"] == rid and r["scaling"] == "none" and r["metric"] == "brier"]
        assert b["value"] == pytest.approx(brier_score_loss(test.label, test.score), abs=1e-12) and b["n"] == len(test)
        rel = [r for r in t["reliability"].to_pylist() if r["run_id"] == rid and r["scaling"] == "none"]
        assert [r["count"] for r in rel] == list(reliability(test.label.to_numpy(), test.score.to_numpy(), 10).count)
        youden = [r for r in ops if r["run_id"] == rid and r["rule"] == "youden"]
        if min(val.label.sum(), (1 - val.label).sum()) < 1:
            assert {r["status"] for r in youden} == {"insufficient"}
            continue
        fpr, tpr, thr = roc_curve(val.label, val.score)
        best = thr[1:][np.argmax((tpr - fpr)[1:])]
        sens = [r for r in youden if r["metric"] == "sensitivity"][0]
        assert sens["threshold"] == pytest.approx(best)
        called = test.score >= best
        assert sens["value"] == pytest.approx((called & (test.label == 1)).sum() / (test.label == 1).sum())


def test_every_metric_equals_its_oracle(evaluated_store):
    url, eval_id, _ = evaluated_store
    store = Store.open(url)
    meta, t = read_evaluation(store, eval_id)
    rows = t["metrics"].to_pylist()
    assert {r["metric"] for r in rows} == {"auroc", "auprc", "r2", "mae", "dice_nonempty", "dice", "fp_empty", "iou", "dice_05"}
    assert {r["encoder"] for r in rows} == {"pixels", "rad-dino", "chexagent"}
    checked = 0
    for r in rows:
        p = read_predictions(store, r["run_id"]).to_pandas()
        p = p[p.split == "test"]
        assert r["n"] == len(p) and r["resamples"] == (0 if r["method"] == "delong-logit" else 200)
        if r["metric"] in ("auroc", "auprc"):
            pos, neg = int(p.label.sum()), int((1 - p.label).sum())
            assert (r["n_pos"], r["n_neg"]) == (pos, neg)
            if min(pos, neg) < 1:  # the fixture's minimum (min_class_count=1): no number, no interval
                assert r["status"] == "insufficient" and np.isnan(r["value"]) and np.isnan(r["ci_low"])
                continue
            fn = roc_auc_score if r["metric"] == "auroc" else average_precision_score
            expect = fn(p.label, p.score)
        elif r["metric"] in ("r2", "mae"):
            assert r["n_pos"] is None and r["status"] == "ok"
            expect = (r2_score if r["metric"] == "r2" else mean_absolute_error)(p.label, p.value)
        else:  # mask metrics recomputed from the run's stored masks, one image at a time
            loc = store.loc.child(RUNS_DIR, r["run_id"])
            cut = 0.5 if r["metric"] == "dice_05" else r["threshold"]
            assert cut == read_run(store, r["run_id"])["operating_points"].get("threshold", 0.5) or r["metric"] == "dice_05"
            pred = zarr.open_array(loc.zarr_store("masks.zarr", read_only=True))[:].astype(np.float32) > cut
            true = zarr.open_array(loc.zarr_store("targets.zarr", read_only=True))[:] > 0
            dice, iou, fp = [], [], []
            for a, b in zip(true, pred):
                inter, tot, uni = (a & b).sum(), a.sum() + b.sum(), (a | b).sum()
                dice.append(1.0 if tot == 0 else 2 * inter / tot)
                iou.append(1.0 if uni == 0 else inter / uni)
                fp.append(float(b.any()))
            nonempty = np.array([a.any() for a in true])
            assert (r["n_pos"], r["n_neg"]) == (nonempty.sum(), (~nonempty).sum())
            expect = {
                "dice": np.mean(dice),
                "dice_05": np.mean(dice),
                "iou": np.mean(iou),
                "dice_nonempty": np.mean(np.array(dice)[nonempty]) if nonempty.any() else np.nan,
                "fp_empty": np.mean(np.array(fp)[~nonempty]) if (~nonempty).any() else np.nan,
            }[r["metric"]]
            if np.isnan(expect):
                assert np.isnan(r["value"])
                continue
        assert r["value"] == pytest.approx(expect, abs=1e-12), r
        assert r["ci_low"] <= r["value"] + 1e-12 and r["value"] - 1e-12 <= r["ci_high"] or np.isnan(r["ci_low"])
        checked += 1
    assert checked >= 30
    assert meta["config"]["resamples"] == 200 and len(meta["runs"]) == len({r["run_id"] for r in rows})
    assert meta["store_format_version"] == 1 and meta["code_version"]


def test_comparisons_are_paired_and_corrected(evaluated_store):
    url, eval_id, _ = evaluated_store
    _, t = read_evaluation(Store.open(url), eval_id)
    c = t["comparisons"].to_pandas()
    assert set(c.test) == {"paired-bootstrap", "delong", "nemenyi"}
    undefined = c[c.p.isna()]
    assert undefined.p_bonferroni.isna().all() and (undefined.family_size == 0).all()
    for (test, _metric), g in c[c.p.notna()].groupby(["test", "metric"]):
        assert (g.family_size == len(g)).all()
        if test != "nemenyi":
            assert np.allclose(g.p_bonferroni, np.minimum(1, g.p * len(g)))
            assert (g.p_holm <= g.p_bonferroni + 1e-15).all() and (g.p_holm >= g.p - 1e-15).all()
    # Three encoders: three pairs per (task, head, fold, metric) of the paired bootstrap.
    pb = c[c.test == "paired-bootstrap"]
    assert (pb.groupby(["task", "head", "fold", "metric"], dropna=False).size() == 3).all()
    assert np.allclose(pb["diff"], pb.value_a - pb.value_b, equal_nan=True)
    m = t["metrics"].to_pandas()
    one = pb.iloc[0]
    va = m[(m.run_id == one.run_a) & (m.metric == one.metric)].value.item()
    assert va == pytest.approx(one.value_a)
    f = t["folds"].to_pandas()
    assert set(f.task) == {"cardiomegaly-cls"} and (f.folds == 2).all() and set(f.encoder) == {"pixels", "rad-dino", "chexagent"}
    assert f.friedman_p.notna().all() and np.isclose(f[f.metric == "auroc"].mean_rank.sum(), 6)


def test_identical_inputs_same_version_new_inputs_new_version(evaluated_store):
    url, eval_id, _ = evaluated_store
    store = Store.open(url)
    before = store.loc.read_bytes(METRICS_DIR, eval_id, "metrics.parquet")
    again = evaluate(store, None, EvalConfig(resamples=200, seed=1, min_class_count=1))
    assert again.eval_id == eval_id and not again.created
    assert store.loc.read_bytes(METRICS_DIR, eval_id, "metrics.parquet") == before
    # Recomputed from scratch, the same inputs give the same numbers.
    from evaluation.artifacts import compute, load_run

    cfg = EvalConfig(resamples=200, seed=1, min_class_count=1)
    runs = [load_run(store, r, cfg) for r in select_runs(store)]
    rows = compute(runs, cfg, eval_id, again.meta and read_evaluation(store, eval_id)[1]["metrics"].column("created_at")[0].as_py())
    assert pa.Table.from_pylist(rows["metrics"]).column("value").to_pylist() == pytest.approx(
        read_evaluation(store, eval_id)[1]["metrics"].column("value").to_pylist(), nan_ok=True
    )
    # Other inputs (a subset of runs, another seed): new versions, the old one untouched.
    sub = [r for r in select_runs(store) if read_run(store, r)["task"] == "ctr-reg"]
    other = evaluate(store, sub, EvalConfig(resamples=200, seed=1))
    reseed = evaluate(store, sub, EvalConfig(resamples=200, seed=2))
    assert len({eval_id, other.eval_id, reseed.eval_id}) == 3 and other.created and reseed.created
    assert store.loc.read_bytes(METRICS_DIR, eval_id, "metrics.parquet") == before
    ids = [e["eval_id"] for e in list_evaluations(store)]
    assert {eval_id, other.eval_id, reseed.eval_id} <= set(ids)


def test_a_version_without_eval_json_is_invisible(evaluated_store, tmp_path):
    url, eval_id, _ = evaluated_store
    store = Store.open(url)
    store.loc.write_parquet(pa.table({"x": [1]}), METRICS_DIR, "eval-crashed", "metrics.parquet")
    assert "eval-crashed" not in [e["eval_id"] for e in list_evaluations(store)]
    with pytest.raises(RadstoreError, match="no evaluation 'eval-crashed'"):
        read_evaluation(store, "eval-crashed")


def test_bad_inputs_name_the_culprit(evaluated_store):
    url, _, _ = evaluated_store
    store = Store.open(url)
    with pytest.raises(RadstoreError, match="no run 'nope'"):
        evaluate(store, ["nope"])
    with pytest.raises(RadstoreError, match="resamples"):
        EvalConfig(resamples=10)
    with pytest.raises(RadstoreError, match="empty_both"):
        EvalConfig(empty_both="maybe")
    # A run whose predictions hold NaN: the error names the run and the image.
    rid = next(r for r in select_runs(store) if read_run(store, r)["task"] == "ctr-reg")
    bad = rid + "-nan"
    src = store.loc.child(RUNS_DIR, rid)
    meta = src.read_json("run.json") | {"run_id": bad}
    p = read_predictions(store, rid)
    vals = p.column("value").to_numpy().copy()
    vals[0] = np.nan
    p = p.set_column(p.schema.get_field_index("value"), "value", pa.array(vals))
    dst = store.loc.child(RUNS_DIR, bad)
    dst.write_parquet(p, "predictions.parquet")
    dst.write_json(meta, "run.json")
    try:
        with pytest.raises(RadstoreError, match=f"run {bad}: value is NaN/Inf for {p.column('image_id')[0].as_py()}"):
            evaluate(store, [bad])
    finally:
        store.loc.fs.rm(dst.path(), recursive=True)


def test_the_printed_decisions_table_is_the_evaluations_rows(evaluated_store):
    from evaluation.artifacts import decisions_table, format_value
    from featurestore.encoders.registry import display_name

    def shown(r):  # a number where the row has one, else the reason, in words
        return format_value(r) if r["status"] == "ok" else None

    url, eval_id, _ = evaluated_store
    _, t = read_evaluation(Store.open(url), eval_id)
    rows = decisions_table(t)
    fold = lambda r: "" if r["fold"] is None else r["fold"]  # noqa: E731  (as the table shows it)
    cal = {(r["task"], fold(r), r["encoder"], r["scaling"]): r for r in t["calibration"].to_pylist() if r["metric"] == "ece"}
    ops = {(r["task"], fold(r), r["encoder"], r["metric"]): r for r in t["operating_points"].to_pylist() if r["rule"] == "youden"}
    assert len(rows) == len({k[:3] for k in cal}) > 0
    for row in rows:
        f = row["fold"]
        enc = next(k[2] for k in cal if display_name(k[2]) == row["encoder"] and k[:2] == (row["task"], f))
        assert row["ECE"] == format_value(cal[(row["task"], f, enc, "none")])
        for col, r in (
            ("ECE after Platt", cal[(row["task"], f, enc, "platt")]),
            ("sensitivity", ops[(row["task"], f, enc, "sensitivity")]),
        ):
            want = shown(r)
            assert row[col] == want if want is not None else not any(c.isdigit() for c in row[col]), (col, row[col])
