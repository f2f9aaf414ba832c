"""The report's "Calibration and operating points" section, on a store whose classification runs
are written by hand with known scores: a calibrated encoder, one over-confident by a known
temperature, one without validation predictions and a task with too few validation positives.
The cells equal the evaluation's Parquet rows, status rows say why instead of a number, the
reliability diagrams are real images, the section sits between the comparisons and the
embedding health, and an evaluation without classification runs, or made before these tables
existed, gets a note instead."""

from __future__ import annotations

import dataclasses
import html
import math
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from evaluation.artifacts import EvalConfig, evaluate
from evaluation.calibration import sigmoid
from evaluation.decisions import status_text
from evaluation.report import ReportData, render_report, write_report
from evaluation.report.decisions import (
    NO_CLASSIFICATION,
    OLD_EVALUATION,
    calibration_table,
    decides,
    operating_points_table,
    reliability_figure,
    rule_text,
)
from evaluation.report.render import decisions_section, decisions_section_html
from featurestore.layout.records import EvaluationRecord, RunRecord, predictions_table, write_run
from featurestore.store import Store
from featurestore.tasks import get_kind
from tests.evaluation.report_checks import cell as _cell
from tests.evaluation.report_checks import real_png as _png

N_TEST, N_VAL = 240, 240
TEMPERATURE = 3.0  # encoder "sharp" reports the true logit times 3: over-confident
NO_VAL = "no validation predictions (retrain)"
TOO_FEW = "too few validation positives or negatives (< 10 of a class)"
SECTION = "Calibration and operating points"


def _run(store, run_id, task, kind, encoder, ids, pred, y, val=None):
    rec = RunRecord(run_id=run_id, task=task, task_kind=kind, head="linear", feature_set_id=f"{encoder}-0", encoder=encoder,
                    config={"head": "linear"}, created_at=datetime.now(UTC).isoformat(), seed=0)  # fmt: skip
    write_run(store, rec, b"", predictions_table(get_kind(kind), ids, pred, y, val=val))
    return run_id


def _scores(rng, n, temperature):
    """Labels drawn from known probabilities, and the score reporting them sharpened by ``temperature``."""
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < sigmoid(z)).astype(float)
    return y, sigmoid(z * temperature)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """(store, eval id of classification + regression runs, eval id of the regression runs only)."""
    store = Store.open(str(tmp_path_factory.mktemp("decisions-report") / "store"), create=True)
    rng = np.random.default_rng(0)
    test_ids = [f"t{k:03d}" for k in range(N_TEST)]
    val_ids = [f"v{k:03d}" for k in range(N_VAL)]
    y_test, z_test = _scores(rng, N_TEST, 1.0)
    for enc, t in (("calibrated", 1.0), ("sharp", TEMPERATURE)):
        y_val, p_val = _scores(rng, N_VAL, t)
        p_test = sigmoid(np.log(z_test / (1 - z_test)) * t)
        _run(store, f"card-{enc}", "cardiomegaly-cls", "classification", enc, test_ids, p_test, y_test, (val_ids, p_val, y_val))
    _run(store, "card-old", "cardiomegaly-cls", "classification", "old", test_ids, z_test, y_test)  # trained before val was kept
    few = np.r_[np.ones(3), np.zeros(N_VAL - 3)]  # 3 validation positives: below min_class_count 10
    for enc in ("calibrated", "sharp"):
        _run(store, f"ptx-{enc}", "pneumothorax-cls", "classification", enc, test_ids, z_test, y_test, (val_ids, rng.random(N_VAL), few))
    reg = []
    for enc in ("calibrated", "sharp"):
        ctr = rng.uniform(0.3, 0.7, N_TEST)
        reg.append(_run(store, f"ctr-{enc}", "ctr-reg", "regression", enc, test_ids, ctr + rng.normal(0, 0.05, N_TEST), ctr))
    full = evaluate(store, None, EvalConfig(resamples=200, seed=1))
    regression_only = evaluate(store, reg, EvalConfig(resamples=200, seed=1))
    return store, full.eval_id, regression_only.eval_id


@pytest.fixture(scope="module")
def report(evaluated, tmp_path_factory):
    """(output folder, index.html text) of the full evaluation's report."""
    store, eval_id, _ = evaluated
    out = tmp_path_factory.mktemp("decisions-page")
    index = write_report(store, out, eval_id, overlays=0)
    return out, index.read_text(encoding="utf-8")


def _table(store, eval_id, name) -> list[dict]:
    """An evaluation table read with pyarrow directly: an oracle independent of the store's reader."""
    return pq.read_table(Path(store.loc.path("metrics", eval_id, f"{name}.parquet"))).to_pylist()


def _expected(r: dict) -> str:
    if r["status"] == "no-validation":
        return NO_VAL
    if r["status"] == "insufficient":
        return TOO_FEW
    v = r["value"]
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def _section(text: str) -> str:
    start = text.index(f"{SECTION}</h2>")
    return text[start : text.index("<h2>", start)]


def test_section_sits_between_comparisons_and_health(report):
    _, text = report
    heads = re.findall(r"<h2>(.*?)</h2>", text)
    comparisons = int(next(h for h in heads if h.endswith("Comparisons between encoders")).split(".")[0])
    i = heads.index(f"{comparisons}. Comparisons between encoders")
    assert heads[i + 1 :] == [f"{comparisons + 1}. {SECTION}", f"{comparisons + 2}. Label efficiency", f"{comparisons + 3}. Subgroups",
                              f"{comparisons + 4}. Embedding health"]  # fmt: skip


def test_calibration_cells_equal_the_evaluation_rows(evaluated, report):
    store, eval_id, _ = evaluated
    _, text = report
    section = _section(text)
    rows = _table(store, eval_id, "calibration")
    assert {r["status"] for r in rows} == {"ok", "no-validation", "insufficient"}
    shown = [r for r in rows if r["scaling"] == "none" or r["metric"] == "ece"]  # the columns of the table
    for r in shown:
        cell = _cell(section, encoder=r["encoder"], head="linear", task=r["task"], fold="", scaling=r["scaling"], metric=r["metric"])
        assert cell == _expected(r), r
    # Brier after recalibration is in the Parquet, not in the table.
    assert 'data-scaling="platt" data-metric="brier"' not in section
    # The over-confident encoder's raw ECE is the larger, and temperature scaling lowers it.
    ece = {(r["encoder"], r["scaling"]): r["value"] for r in rows if r["task"] == "cardiomegaly-cls" and r["metric"] == "ece"}
    assert ece[("sharp", "none")] > max(0.1, ece[("calibrated", "none")]) and ece[("sharp", "temperature")] < ece[("sharp", "none")]


def test_operating_point_cells_equal_the_evaluation_rows(evaluated, report):
    store, eval_id, _ = evaluated
    _, text = report
    section = _section(text)
    rows = _table(store, eval_id, "operating_points")
    assert {r["rule"] for r in rows} == {"youden", "sensitivity@0.90"}
    for r in rows:
        data = {"encoder": r["encoder"], "head": "linear", "task": r["task"], "fold": "", "rule": r["rule"]}
        cell = _cell(section, **data, metric=r["metric"])
        if r["status"] == "ok":
            assert cell == _expected(r), r
            assert _cell(section, **data, metric="threshold") == f"{r['threshold']:.3f}"
        else:
            assert cell == "—" and _cell(section, **data, metric="threshold") == _expected(r), r
    assert "Youden&#39;s J" in section and "sensitivity ≥ 0.90" in section


def test_status_rows_say_why(report):
    _, text = report
    section = _section(text)
    assert _cell(section, encoder="old", head="linear", task="cardiomegaly-cls", fold="", scaling="platt", metric="ece") == NO_VAL
    assert _cell(section, encoder="old", head="linear", task="cardiomegaly-cls", fold="", rule="youden", metric="threshold") == NO_VAL
    assert _cell(section, encoder="sharp", head="linear", task="cardiomegaly-cls", fold="", scaling="temperature", metric="ece") != TOO_FEW
    assert _cell(section, encoder="sharp", head="linear", task="pneumothorax-cls", fold="", scaling="temperature", metric="ece") == TOO_FEW
    # The raw calibration needs no validation split: it has numbers for every run.
    assert re.fullmatch(
        r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]",
        _cell(section, encoder="old", head="linear", task="cardiomegaly-cls", fold="", scaling="none", metric="ece"),
    )
    assert "fitted on each run's validation split only" in section and "at that threshold" in section


def test_reliability_figures_are_real_images_on_disk_and_embedded(report):
    out, text = report
    section = _section(text)
    for task in ("cardiomegaly-cls", "pneumothorax-cls"):
        name = f"reliability-{task}"
        im = _png((out / "figures" / f"{name}.png").read_bytes(), name)
        assert im.width > im.height  # raw and temperature-scaled side by side
        assert f'<figure id="fig-{name}">' in section
    assert not (out / "figures" / "reliability-ctr-reg.png").exists()
    assert "<h3>ctr-reg</h3>" not in section
    assert "observed fraction of positives" in section and "marker area" in section


def test_an_evaluation_without_classification_says_so(evaluated, tmp_path):
    store, _, regression_only = evaluated
    text = write_report(store, tmp_path, regression_only, overlays=0).read_text(encoding="utf-8")
    section = _section(text)
    assert html.escape(NO_CLASSIFICATION) in section and "<table" not in section
    assert not list((tmp_path / "figures").glob("reliability-*"))


def test_an_evaluation_made_before_calibration_gets_a_note(evaluated, tmp_path):
    store, eval_id, _ = evaluated
    shutil.copytree(store.loc.path(), tmp_path / "store")
    old = Store.open(str(tmp_path / "store"))
    for name in ("calibration", "reliability", "operating_points"):
        (tmp_path / "store" / "metrics" / eval_id / f"{name}.parquet").unlink()
    text = write_report(old, tmp_path / "r", eval_id, overlays=0).read_text(encoding="utf-8")
    section = _section(text)
    assert html.escape(OLD_EVALUATION) in section and "re-run radstore evaluate" in section
    assert "<table" not in section and not list((tmp_path / "r" / "figures").glob("reliability-*"))
    heads = re.findall(r"<h2>(.*?)</h2>", text)
    assert heads[-4].endswith(SECTION) and heads[-1].endswith("Embedding health")


# -- known answers, no store --------------------------------------------------------------------


def _cal(encoder, scaling, metric, value, low, high, status="ok", fold=None, task="t"):
    return {"task": task, "head": "linear", "fold": fold, "encoder": encoder, "scaling": scaling, "metric": metric,
            "value": value, "ci_low": low, "ci_high": high, "status": status}  # fmt: skip


def _op(encoder, rule, metric, value, low, high, threshold=0.4321, status="ok", task="t"):
    return {"task": task, "head": "linear", "fold": None, "encoder": encoder, "rule": rule, "threshold": threshold, "metric": metric,
            "value": value, "ci_low": low, "ci_high": high, "status": status}  # fmt: skip


def _texts(table) -> list[list[str]]:
    return [[c.text for c in row] for row in table.rows]


def test_calibration_table_known_cells():
    nan = float("nan")
    rows = [
        _cal("b", "none", "brier", 0.12345, 0.1, 0.15),
        _cal("b", "none", "ece", 0.0567, 0.04, 0.0712),
        _cal("b", "none", "sce_debiased", 0.0021, -0.0004, 0.0052),
        _cal("b", "platt", "ece", 0.02, 0.01, 0.03),
        _cal("b", "temperature", "ece", 0.021, 0.0104, 0.0333),
        _cal("a", "none", "brier", 0.2, 0.19, 0.21),
        _cal("a", "none", "ece", nan, nan, nan),
        _cal("a", "platt", "ece", nan, nan, nan, "no-validation"),
        _cal("a", "temperature", "ece", nan, nan, nan, "insufficient"),
        _cal("a", "none", "ece", 0.5, 0.4, 0.6, task="other"),
    ]
    t = calibration_table(rows, "t", 10)
    assert [(h.lines, h.small) for h in t.header] == [
        (("encoder",), ""),
        (("head",), ""),
        (("Brier",), "raw [CI]"),
        (("ECE",), "raw [CI]"),
        (("squared CE, debiased",), "raw [CI]"),
        (("ECE",), "after Platt [CI]"),
        (("ECE",), "after temperature [CI]"),
    ]
    assert _texts(t) == [
        ["a", "linear", "0.200 [0.190, 0.210]", "n/a", "—", NO_VAL, TOO_FEW],
        ["b", "linear", "0.123 [0.100, 0.150]", "0.057 [0.040, 0.071]", "0.002 [-0.000, 0.005]", "0.020 [0.010, 0.030]",
         "0.021 [0.010, 0.033]"],
    ]  # fmt: skip
    assert [c.cls for c in t.rows[0][2:]] == ["num", "num na", "num na", "num na", "num na"]
    assert calibration_table(rows, "missing") is None
    # A task evaluated only by cross-validation: its folds, with a split column.
    folds = [_cal("a", "none", m, 0.1, 0.0, 0.2, fold=f) for f in (1, 0) for m in ("brier", "ece")]
    t = calibration_table(folds, "t")
    assert [h.lines[0] for h in t.header][:3] == ["encoder", "head", "split"]
    assert [r[2] for r in _texts(t)] == ["fold 0", "fold 1"]


def test_operating_points_table_known_cells():
    nan = float("nan")
    rows = [_op("a", "sensitivity@0.90", m, 0.9, 0.8, 1.0, threshold=0.25) for m in ("sensitivity", "specificity", "ppv", "npv")]
    rows += [_op("a", "youden", "sensitivity", 0.75, 0.5, 0.875), _op("a", "youden", "specificity", 0.8, 0.7, 0.9),
             _op("a", "youden", "ppv", nan, nan, nan), _op("a", "youden", "npv", 1.0, 1.0, 1.0)]  # fmt: skip
    rows += [_op("b", r, m, nan, nan, nan, nan, "no-validation") for r in ("youden", "sensitivity@0.90") for m in ("sensitivity", "ppv")]
    t = operating_points_table(rows, "t", 10)
    assert [h.lines[0] for h in t.header] == ["encoder", "head", "rule", "threshold", "sensitivity", "specificity", "PPV", "NPV"]
    assert _texts(t) == [
        ["a", "linear", "Youden's J", "0.432", "0.750 [0.500, 0.875]", "0.800 [0.700, 0.900]", "n/a", "1.000 [1.000, 1.000]"],
        ["a", "linear", "sensitivity ≥ 0.90", "0.250", *["0.900 [0.800, 1.000]"] * 4],
        ["b", "linear", "Youden's J", NO_VAL, "—", "—", "—", "—"],
        ["b", "linear", "sensitivity ≥ 0.90", NO_VAL, "—", "—", "—", "—"],
    ]
    assert operating_points_table([], "t") is None


def test_status_and_rule_texts_and_which_kinds_decide():
    assert status_text("no-validation") == NO_VAL and status_text("insufficient", 10) == TOO_FEW
    assert status_text("insufficient") == "too few validation positives or negatives"
    assert status_text("insufficient", 1) == "validation split holds one class only"
    assert status_text("no-threshold") == "no threshold found on validation" and status_text("weird") == "weird"
    assert rule_text("youden") == "Youden's J" and rule_text("sensitivity@0.85") == "sensitivity ≥ 0.85" and rule_text("x") == "x"
    assert decides("classification") and not decides("regression") and not decides("segmentation") and not decides("unknown")


def test_reliability_figure_from_rows_and_the_section_from_hand_made_data(tmp_path):
    rel = []
    for enc, shift in (("a", 0.0), ("b", 0.2)):
        for scaling in ("none", "temperature"):
            for b in range(10):
                p = (b + 0.5) / 10
                rel.append({"task": "t", "head": "linear", "fold": None, "encoder": enc, "scaling": scaling, "bin": b, "count": 5 + b,
                            "mean_predicted": p, "fraction_positive": min(1.0, p + (shift if scaling == "none" else 0.0))})  # fmt: skip
    cal = [_cal(e, s, "ece", 0.1, 0.05, 0.15) for e in ("a", "b") for s in ("none", "temperature")]
    _png(reliability_figure("t", rel, cal, {"a": "#0072B2", "b": "#E69F00"}), "reliability")
    # Without validation every recalibrated panel says why instead of staying blank.
    no_val = [_cal(e, "temperature", "ece", math.nan, math.nan, math.nan, "no-validation") for e in ("a", "b")]
    raw = [r for r in rel if r["scaling"] == "none"]
    _png(reliability_figure("t", raw, [*cal[::2], *no_val], {}), "reliability without validation")
    assert reliability_figure("none", rel, cal, {}) is None
    metrics = [{"task": "t<b>", "task_kind": "classification", "encoder": "a", "confidence": 0.9}]
    record = EvaluationRecord(eval_id="e", created_at="2025-01-01T00:00:00+00:00", config={"calibration_bins": 10}, runs=[])
    data = ReportData(record, "file:///s", metrics, [], [], [], calibration=[{**r, "task": "t<b>"} for r in cal],
                      reliability=[{**r, "task": "t<b>"} for r in rel])  # fmt: skip
    section = decisions_section(data, {"a": "#0072B2"}, number=5)
    assert section["number"] == 5 and section["note"] is None and section["conf"] == 90
    (task,) = section["tasks"]
    assert task["figure"].name == "reliability-t-b" and task["operating"] is None
    fragment = decisions_section_html(section)
    assert fragment.startswith(f"<h2>5. {SECTION}</h2>") and "<h3>t&lt;b&gt;</h3>" in fragment and "<b>" not in fragment
    assert "t&lt;b&gt;: no operating points in this evaluation." in fragment and "90% test-set bootstrap" in fragment
    text = render_report(dataclasses.replace(data, metrics=[]), tmp_path).read_text(encoding="utf-8")  # tasks from the rows alone
    _png((tmp_path / "figures" / "reliability-t-b.png").read_bytes(), "page figure")
    assert '<figure id="fig-reliability-t-b">' in text
