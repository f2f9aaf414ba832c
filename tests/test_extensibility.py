"""Adding a task kind, a metric or an encoder is one registration: everything else follows.

Each test registers a made-up piece from this module only (undone after the test) and runs it
through the real pipeline: extraction, training, evaluation, the SQL views, the report, the
CLI parser and the study config. The numbers are checked against independent oracles.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from evaluation import metrics as M
from featurestore import tasks as T
from featurestore.encoders import registry as R


def _spearman(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman's rho of each resample row (Pearson correlation of within-row ranks)."""
    ry = stats.rankdata(y[idx], axis=1)
    rp = stats.rankdata(pred[idx], axis=1)
    ry -= ry.mean(1, keepdims=True)
    rp -= rp.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ry * rp).sum(1) / np.sqrt((ry**2).sum(1) * (rp**2).sum(1))


@pytest.fixture
def ordinal_kind(monkeypatch):
    """A made-up kind: a graded target read as a ranking, stored in its own column ``grade``,
    evaluated by a new metric (Spearman) first and MAE second, trained like a regression."""
    monkeypatch.setitem(M.METRICS, "spearman", M.Metric("spearman", "Spearman ρ", True, M.GLOBAL_INPUTS, _spearman))
    kind = T.TaskKind("ordinal", "global", "grade", "regression", ("spearman", "mae"), ("linear",))
    monkeypatch.setitem(T.TASK_KINDS, "ordinal", kind)
    monkeypatch.setitem(T.TASKS, "ctr-grade", T.TaskDef("ctr-grade", "ordinal", "ctr"))
    return kind


@pytest.fixture
def half_pixels(monkeypatch):
    """A made-up encoder: the pixel control at half its input size, registered under a new name."""
    from featurestore.encoders.pixels import PixelsEncoder

    def load(name, source=None, size=None, bits=None):
        return PixelsEncoder(name, size=size or 256, bits=bits or 8)

    monkeypatch.setitem(
        R.ENCODERS,
        "half-pixels",
        R.EncoderInfo("half-pixels", load, needs_weights=False, summary="pixels at 256 | 256 | 274 stats | 16x16x16"),
    )
    return "half-pixels"


def test_made_up_kind_trains_evaluates_queries_and_reports(ordinal_kind, pixels_store, tmp_path):
    from evaluation.artifacts import EvalConfig, evaluate, read_evaluation
    from evaluation.query import query
    from evaluation.report import write_report
    from featurestore.layout.records import read_predictions, read_run
    from featurestore.store import Store
    from flows.train import grid_configs
    from heads.train import train

    url, fsid, _ = pixels_store
    store = Store.open(url)
    cfgs = grid_configs(["ctr-grade"], None, None, {"solver": "lbfgs", "progress": False})
    assert [(c.task, c.head) for c in cfgs] == [("ctr-grade", "linear")]  # the kind's heads decide the grid
    run_id = train(store, fsid, cfgs[0]).run_id
    assert read_run(store, run_id)["task_kind"] == "ordinal"
    pred = read_predictions(store, run_id).to_pandas()
    assert pred["grade"].notna().all() and "value" not in pred.columns
    pred = pred[pred.split == "test"]  # the validation split's predictions are kept beside them

    ev = evaluate(store, [run_id], EvalConfig(resamples=200, seed=3))
    _, tables = read_evaluation(store, ev.eval_id)
    rows = {r["metric"]: r for r in tables["metrics"].to_pylist()}
    assert list(rows) == ["spearman", "mae"] and rows["spearman"]["primary"] and not rows["mae"]["primary"]
    rho = stats.spearmanr(pred["label"], pred["grade"]).statistic  # independent oracle
    assert rows["spearman"]["value"] == pytest.approx(rho, abs=1e-12)
    assert rows["mae"]["value"] == pytest.approx(float(np.abs(pred["label"] - pred["grade"]).mean()), abs=1e-12)
    assert rows["spearman"]["ci_low"] <= rho <= rows["spearman"]["ci_high"]

    got = query(
        store, f"SELECT image_id, grade FROM predictions WHERE run_id = '{run_id}' AND split = 'test' ORDER BY image_id"
    ).to_pandas()
    want = pred.sort_values("image_id")[["image_id", "grade"]].reset_index(drop=True)
    assert got.equals(want)

    html = (tmp_path / "report").joinpath("index.html")
    write_report(store, str(tmp_path / "report"), ev.eval_id)
    text = html.read_text()
    assert "ctr-grade" in text and "Spearman" in text


def test_made_up_encoder_extracts_and_is_offered_everywhere(half_pixels, cohort, tmp_path):
    from featurestore.extract import ExtractConfig, extract
    from featurestore.ingest import ingest
    from featurestore.store import Store
    from flows.cli import build_parser
    from flows.config import StudyConfig

    store = Store.open(str(tmp_path / "store"), create=True)
    ingest(str(cohort), store, progress=False)
    r = extract(str(cohort), store, ExtractConfig(half_pixels, progress=False, num_workers=0))
    fs = store.feature_set(r.feature_set_id)
    assert fs.spec.encoder == half_pixels and len(fs) == 24 and fs.spec.grid == (16, 16, 16)

    args = build_parser().parse_args(["extract", "--manifest", "m", "--store", "s", "--encoder", half_pixels])
    assert args.encoder == [half_pixels]  # a registered name is accepted (comma-separated lists too)
    assert half_pixels in [e.name for e in StudyConfig().encoders]  # the default grid is every registered encoder
    StudyConfig(encoders=[half_pixels])  # and a config naming it validates
    assert f"`{half_pixels}`" in R.readme_table()
