"""The report's "Label efficiency" section: every cell of the curve and comparison tables from
hand-made rows with known answers, the figure a real image, the section between calibration
and subgroups with a note saying how to turn it on when an evaluation has no curves, and, end
to end, L-BFGS probes of two planted encoders on subsets of the training split whose evaluation
numbers are the ones the page shows."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from evaluation.report import ReportData, render_report
from evaluation.report.label_efficiency import (
    NOT_CONFIGURED,
    comparisons_table,
    curve_figure,
    curve_table,
    figure_name,
    images_text,
    size_text,
    value_text,
)
from evaluation.report.render import label_efficiency_section, label_efficiency_section_html
from featurestore.layout.records import EvaluationRecord
from tests.evaluation.report_checks import SECTIONS_AFTER_COMPARISONS, figure_on_page, headings_from_comparisons
from tests.evaluation.report_checks import cell as _cell
from tests.evaluation.report_checks import real_png as _png

SECTION = "Label efficiency"
COLOURS = {"a": "#0072B2", "b": "#E69F00"}


def point(encoder: str, regime: str, size: float, value: float, *, task: str = "t", head: str = "linear", fold=None,
          metric: str = "auroc", primary: bool = True, seeds: int = 3, sd: float = 0.02, images: float | None = 20.0,
          status: str = "ok", low: float | None = None, high: float | None = None) -> dict:  # fmt: skip
    """A label_efficiency row (the columns the report reads)."""
    return {"task": task, "task_kind": "classification", "head": head, "fold": fold, "regime": regime, "size": size,
            "encoder": encoder, "feature_set_id": f"fs-{encoder}", "metric": metric, "primary": primary, "seeds": seeds,
            "value": value, "ci_low": value - 0.05 if low is None else low, "ci_high": value + 0.04 if high is None else high,
            "seed_sd": sd if seeds > 1 else math.nan, "seed_min": value - 0.03, "seed_max": value + 0.02,
            "train_images": images, "train_positives": None if images is None else images * 0.3, "confidence": 0.95,
            "n": 100, "resamples": 200, "seed": 0, "n_pos": 30, "n_neg": 70, "status": status}  # fmt: skip


def comparison(size: float, p: float, p_holm: float, *, regime: str = "fraction", metric: str = "auroc", a: str = "a",
               b: str = "b", diff: float = 0.05, task: str = "t") -> dict:  # fmt: skip
    return {"task": task, "head": "linear", "fold": None, "regime": regime, "size": size, "metric": metric, "test": "paired",
            "encoder_a": a, "encoder_b": b, "seeds": 3, "value_a": 0.8, "value_b": 0.8 - diff, "diff": diff,
            "ci_low": diff - 0.04, "ci_high": diff + 0.04, "p": p, "p_bonferroni": p, "p_holm": p_holm, "family_size": 1,
            "wins_a": 3, "wins_b": 0, "n": 100}  # fmt: skip


def _texts(table) -> list[list[str]]:
    return [[str(c.text) for c in row] for row in table.rows]


# -- known answers ------------------------------------------------------------------------------


def test_sizes_images_and_cells_are_written_as_documented():
    assert [size_text("fraction", f) for f in (0.01, 0.025, 0.05, 0.5, 1.0)] == ["1%", "2.5%", "5%", "50%", "100%"]
    assert size_text("shots", 16.0) == "16 per class" and size_text("other", 3.0) == "other 3"
    assert [images_text(x) for x in (40.0, 40.5, 7, None, math.nan)] == ["40", "40.5", "7", "?", "?"]
    r = point("a", "fraction", 0.1, 0.81234, low=0.7712, high=0.85, sd=0.01234)
    assert value_text(r) == "0.812 [0.771, 0.850] (sd 0.012)"
    assert value_text(point("a", "fraction", 1.0, 0.9, seeds=1, low=0.85, high=0.94)) == "0.900 [0.850, 0.940] (1 seed)"
    assert value_text({**r, "status": "insufficient", "value": math.nan, "n_pos": 3, "n_neg": 50}) == "insufficient (3 pos / 50 neg)"
    assert value_text({**r, "value": math.nan}) == "n/a"


def test_curve_table_cells_are_the_rows_formatted():
    rows = [
        point("b", "fraction", 0.1, 0.70, images=20.0, sd=0.031),
        point("a", "fraction", 0.1, 0.75, images=20.0, sd=0.012),
        point("a", "fraction", 1.0, 0.85, images=200.0, seeds=1),
        point("b", "fraction", 1.0, 0.80, images=200.0, seeds=1),
        point("a", "shots", 16.0, 0.72, images=32.0, sd=0.02),
        point("b", "shots", 16.0, math.nan, images=33.0, status="insufficient"),
        point("a", "fraction", 0.1, 0.5, metric="auprc", primary=False),  # not the primary metric: not shown
        point("a", "fraction", 0.1, 0.5, task="other"),  # another task
        point("a", "fraction", 0.1, 0.1, fold=0),  # a fold: the held-out split is shown
    ]
    table = curve_table(rows, "t")
    assert [h.lines for h in table.header] == [("head",), ("encoder",), ("10%", "20 training images"), ("100%", "200 training images"),
                                                ("16 per class",)]  # fmt: skip
    assert {h.small for h in table.header[2:]} == {"AUROC [CI] (seed sd)"}
    assert _texts(table) == [
        ["linear", "a", "0.750 [0.700, 0.790] (sd 0.012)", "0.850 [0.800, 0.890] (1 seed)", "0.720 [0.670, 0.760] (sd 0.020)"],
        ["linear", "b", "0.700 [0.650, 0.740] (sd 0.031)", "0.800 [0.750, 0.840] (1 seed)", "insufficient (30 pos / 70 neg)"],
    ]
    assert table.rows[1][4].cls == "num na" and table.rows[0][2].cls == "num"
    assert dict(table.rows[0][2].data) == {"task": "t", "head": "linear", "fold": "", "encoder": "a", "regime": "fraction", "size": "0.1"}
    # A missing point is a dash; folds alone get a split column.
    only_folds = [point("a", "fraction", 0.1, 0.6, fold=1), point("b", "fraction", 0.1, 0.65, fold=0),
                  point("a", "fraction", 0.5, 0.7, fold=0)]  # fmt: skip
    t2 = curve_table(only_folds, "t")
    assert [h.lines[0] for h in t2.header] == ["head", "split", "encoder", "10%", "50%"]
    assert _texts(t2) == [
        ["linear", "fold 0", "a", "—", "0.700 [0.650, 0.740] (sd 0.020)"],
        ["linear", "fold 0", "b", "0.650 [0.600, 0.690] (sd 0.020)", "—"],
        ["linear", "fold 1", "a", "0.600 [0.550, 0.640] (sd 0.020)", "—"],
    ]
    assert curve_table(rows, "absent") is None


def test_training_images_in_the_header_only_when_every_row_agrees():
    rows = [point("a", "fraction", 0.1, 0.7, images=20.0), point("b", "fraction", 0.1, 0.7, images=21.5)]
    assert curve_table(rows, "t").header[2].lines == ("10%",)
    rows = [point("a", "fraction", 0.1, 0.7, images=None), point("b", "fraction", 0.1, 0.7, images=None)]
    assert curve_table(rows, "t").header[2].lines == ("10%",)


def test_comparisons_mark_holm_significant_pairs():
    comps = [
        comparison(0.5, 0.2, 0.3, diff=-0.02),
        comparison(0.1, 0.004, 0.012),
        comparison(16.0, 0.0001, 0.0002, regime="shots"),
        comparison(1.0, math.nan, math.nan, diff=math.nan),
        comparison(0.1, 0.001, 0.001, metric="auprc"),  # not the primary metric
    ]
    table = comparisons_table(comps, "t", "auroc")
    assert [h.lines[0] for h in table.header] == ["head", "size", "A", "B", "seeds", "A − B", "seeds won", "p", "p Holm"]
    assert table.header[-1].small == "* < 0.05" and table.header[5].small == "AUROC [CI]"
    assert _texts(table) == [
        ["linear", "10%", "a", "b", "3", "0.050 [0.010, 0.090]", "3 / 0", "0.004", "0.012 *"],
        ["linear", "50%", "a", "b", "3", "-0.020 [-0.060, 0.020]", "3 / 0", "0.200", "0.300"],
        ["linear", "100%", "a", "b", "3", "n/a", "3 / 0", "n/a", "n/a"],
        ["linear", "16 per class", "a", "b", "3", "0.050 [0.010, 0.090]", "3 / 0", "<0.001", "<0.001 *"],
    ]
    holm = [row[-1] for row in table.rows]
    assert [c.bold for c in holm] == [True, False, False, True] and holm[0].cls == "num sig" and holm[1].cls == "num"
    assert table.rows[2][5].cls == "num na"
    assert comparisons_table(comps, "t", "dice") is None and comparisons_table(comps, "other", "auroc") is None


# -- the figure and the section -----------------------------------------------------------------


def _curves(task: str = "t") -> list[dict]:
    rows = []
    for enc, base in (("a", 0.7), ("b", 0.6)):
        for regime, sizes in (("fraction", (0.05, 0.25, 1.0)), ("shots", (8.0, 16.0))):
            for s in sizes:
                n = 200 * s if regime == "fraction" else 2 * s
                rows.append(point(enc, regime, s, base + 0.05 * math.log10(n), task=task, images=n, seeds=1 if s == 1.0 else 3))
    return rows


def test_curve_figure_is_an_image_whatever_the_points():
    _png(curve_figure("t", _curves(), COLOURS), "curves")
    # every point of a panel insufficient; the other encoder drawn; training images unrecorded: the size axis
    rows = [point("a", "fraction", 0.1, math.nan, status="insufficient"), point("a", "fraction", 0.5, math.nan, status="insufficient")]
    rows += [point("b", "fraction", 0.1, 0.7, images=None), point("b", "fraction", 0.5, 0.8, images=None)]
    _png(curve_figure("t", rows, {}), "insufficient and unrecorded")
    _png(curve_figure("t", rows[:2], {}), "nothing drawable")
    two_heads = _curves() + [{**r, "head": "mlp"} for r in _curves()]
    assert _png(curve_figure("t", two_heads, COLOURS), "two heads").height > _png(curve_figure("t", _curves(), COLOURS), "one").height
    assert curve_figure("absent", _curves(), COLOURS) is None


def _data(label_efficiency: list[dict], comparisons: list[dict] = ()) -> ReportData:
    metrics = [{"task": r["task"], "task_kind": "classification", "head": "linear", "encoder": r["encoder"], "fold": None,
                "metric": "auroc", "primary": True, "value": 0.8, "ci_low": 0.7, "ci_high": 0.9, "confidence": 0.95,
                "run_id": f"run-{r['encoder']}", "feature_set_id": r["feature_set_id"], "n": 100, "n_pos": 30, "n_neg": 70,
                "method": "percentile", "status": "ok", "threshold": None} for r in label_efficiency if r["size"] == 1.0]  # fmt: skip
    record = EvaluationRecord(eval_id="e", created_at="2025-01-01T00:00:00+00:00", config={"confidence": 0.95}, runs=[])
    return ReportData(record, "file:///s", metrics, [], [], [], label_efficiency=label_efficiency,
                      label_efficiency_comparisons=list(comparisons))  # fmt: skip


def test_section_and_page_from_hand_made_rows(tmp_path):
    task = "t<b>"
    rows = _curves(task)
    comps = [comparison(0.05, 0.01, 0.02, task=task)]
    section = label_efficiency_section(_data(rows, comps), COLOURS, number=9)
    assert section["number"] == 9 and section["note"] is None and section["conf"] == 95
    (shown,) = section["tasks"]
    assert shown["figure"].name == figure_name(task) == "label-efficiency-t-b" and shown["metric"] == "AUROC"
    fragment = label_efficiency_section_html(section)
    assert fragment.startswith(f"<h2>9. {SECTION}</h2>") and "<h3>t&lt;b&gt;</h3>" in fragment and "t<b>" not in fragment
    assert "0.020 *" in fragment and "95% bootstrap interval" in fragment
    text = render_report(_data(rows, comps), tmp_path).read_text(encoding="utf-8")
    figure_on_page(text, tmp_path, "label-efficiency-t-b")
    n, from_comparisons = headings_from_comparisons(text)
    assert from_comparisons == [f"{n + k}. {h}" for k, h in enumerate(SECTIONS_AFTER_COMPARISONS)]


def test_without_rows_the_section_says_how_to_turn_it_on(tmp_path):
    section = label_efficiency_section(_data([]), COLOURS, number=6)
    assert section["note"] == NOT_CONFIGURED and section["tasks"] == []
    fragment = label_efficiency_section_html(section)
    assert fragment.startswith(f"<h2>6. {SECTION}</h2>") and "label_efficiency: key to the study config" in fragment
    assert "<table" not in fragment and "<img" not in fragment
    text = render_report(_data([]), tmp_path).read_text(encoding="utf-8")
    heads = [h.split(". ", 1) for h in re.findall(r"<h2>(.*?)</h2>", text)]
    assert [h[1] for h in heads[-3:]] == [SECTION, "Subgroups", "Embedding health"]
    assert [int(h[0]) for h in heads] == list(range(1, len(heads) + 1))
    assert not list((tmp_path / "figures").glob("label-efficiency-*"))


# -- end to end ---------------------------------------------------------------------------------


def _second_feature_set(store, manifest: str, encoder: str, auroc: float, dims: int = 64):
    """A second planted feature set over planted_store's images: the label in dimension 0 at ``auroc``."""
    from featurestore.featureset import FeatureSetSpec
    from tests.planted import class_shift

    rows = pq.read_table(manifest).to_pylist()
    rng = np.random.default_rng(1)
    g = rng.standard_normal((len(rows), dims))
    g[:, 0] += class_shift(auroc) * np.array([r["pneumothorax"] for r in rows])
    fs = store.create_feature_set(FeatureSetSpec(encoder, "label-efficiency", (2, 2, 2), dims, dtype="float32", shard_images=64))
    ids = [r["image_id"] for r in rows]
    with fs.writer() as w:
        for k in range(0, len(ids), 64):
            w.write(ids[k : k + 64], g[k : k + 64].astype(np.float32), np.zeros((len(ids[k : k + 64]), 2, 2, 2), np.float32))
    return fs.id


def _expected(r: dict) -> str:
    if r["status"] != "ok" or r["value"] is None or math.isnan(r["value"]):
        return "insufficient" if r["status"] == "insufficient" else "n/a"
    spread = f"sd {r['seed_sd']:.3f}" if r["seeds"] > 1 else "1 seed"
    return f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] ({spread})"


def _p(p: float) -> str:
    return "n/a" if p is None or math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """(store, eval id, report folder, page text): two planted encoders (AUROC 0.85 and 0.6) probed
    on 5% and 25% of the training split (two seeds each) and on all of it, evaluated and reported."""
    import torch

    from evaluation.artifacts import EvalConfig, evaluate
    from evaluation.report import write_report
    from heads.config import TrainConfig
    from heads.train import train
    from tests.evaluation.test_label_efficiency import planted_store

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny probes: threads only wait on each other
    try:
        root = tmp_path_factory.mktemp("label-efficiency-report")
        store, strong, manifest = planted_store(root)
        weak = _second_feature_set(store, manifest, "weak", 0.6)
        base = dict(task="pneumothorax-cls", solver="lbfgs", progress=False, device="cpu")
        cfgs = [TrainConfig(**base)] + [TrainConfig(**base, train_fraction=f, subset_seed=s) for f in (0.05, 0.25) for s in (0, 1)]
        for fsid in (strong, weak):
            for c in cfgs:
                train(store, fsid, c, manifest)
        ev = evaluate(store, None, EvalConfig(resamples=200))
    finally:
        torch.set_num_threads(threads)
    out = root / "report"
    text = write_report(store, out, ev.eval_id, overlays=0).read_text(encoding="utf-8")
    return store, ev.eval_id, out, text


def _table(store, eval_id: str, name: str) -> list[dict]:
    """An evaluation table read with pyarrow directly: an oracle independent of the report's reader."""
    return pq.read_table(Path(store.loc.path("metrics", eval_id, f"{name}.parquet"))).to_pylist()


def test_the_page_shows_the_evaluations_curves(probed):
    store, eval_id, out, text = probed
    rows = [r for r in _table(store, eval_id, "label_efficiency") if r["primary"]]
    assert {r["encoder"] for r in rows} == {"synthetic", "weak"} and {r["size"] for r in rows} == {0.05, 0.25, 1.0}
    assert {r["metric"] for r in rows} == {"auroc"}
    for r in rows:
        cell = _cell(text, task=r["task"], head=r["head"], fold="", encoder=r["encoder"], regime=r["regime"], size=f"{r['size']:g}")
        assert cell == _expected(r), r
    comps = [r for r in _table(store, eval_id, "label_efficiency_comparisons") if r["metric"] == "auroc"]
    assert len(comps) == 3  # one pair at each size
    for r in comps:
        data = dict(task=r["task"], head=r["head"], fold="", regime=r["regime"], size=f"{r['size']:g}", a=r["encoder_a"], b=r["encoder_b"])
        star = " *" if r["p_holm"] < 0.05 else ""
        assert _cell(text, **data, column="p_holm") == _p(r["p_holm"]) + star
        assert _cell(text, **data, column="p") == _p(r["p"])
        assert _cell(text, **data, column="diff") == f"{r['diff']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
    (whole,) = [r for r in comps if r["size"] == 1.0]
    assert whole["diff"] > 0.1 and whole["p_holm"] < 0.05  # 0.85 vs 0.6 on the whole split: a clear difference
    name = "label-efficiency-pneumothorax-cls"
    _png((out / "figures" / f"{name}.png").read_bytes(), name)
    assert f'<figure id="fig-{name}"><a href="figures/{name}.png"><img src="data:image/png;base64,' in text
    heads = re.findall(r"<h2>(.*?)</h2>", text)
    n = int(next(h for h in heads if h.endswith(SECTION)).split(".")[0])
    assert heads[-4:] == [
        f"{n - 1}. Calibration and operating points",
        f"{n}. {SECTION}",
        f"{n + 1}. Subgroups",
        f"{n + 2}. Embedding health",
    ]
    section = text[text.index(f"{SECTION}</h2>") : text.index("Subgroups</h2>")]
    assert html.escape(NOT_CONFIGURED) not in section and section.count("<table") == 2


def test_an_evaluation_without_subset_runs_gets_the_note(probed, tmp_path):
    import shutil

    from evaluation.report import write_report
    from featurestore.store import Store

    store, eval_id, _, _ = probed
    shutil.copytree(store.loc.path(), tmp_path / "store")
    for name in ("label_efficiency", "label_efficiency_seeds", "label_efficiency_comparisons"):
        (tmp_path / "store" / "metrics" / eval_id / f"{name}.parquet").unlink()
    text = write_report(Store.open(str(tmp_path / "store")), tmp_path / "r", eval_id, overlays=0).read_text(encoding="utf-8")
    section = text[text.index(f"{SECTION}</h2>") : text.index("Subgroups</h2>")]
    assert html.escape(NOT_CONFIGURED) in section and "<table" not in section
    assert not list((tmp_path / "r" / "figures").glob("label-efficiency-*"))
