"""The HTML report: every encoder, task and figure is there, the numbers are the Parquet's,
figures are real images, and the page renders in a browser."""

from __future__ import annotations

import base64
import html
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from evaluation.report import fmt, fmt_ci, forest_figure, results_table_html, write_report
from featurestore.errors import RadstoreError
from featurestore.store import Store
from tests.evaluation.report_checks import real_png as _assert_real_png

pytestmark = pytest.mark.slow  # trains, evaluates and renders a whole report

CHROMIUM = Path("/usr/bin/chromium")
SCREEN = (1400, 4000)


@pytest.fixture(scope="module")
def report(evaluated_store, tmp_path_factory):
    """(index.html path, its text, store url, eval id): one report of the session's evaluation."""
    url, eval_id, _ = evaluated_store
    out = tmp_path_factory.mktemp("report")
    index = write_report(Store.open(url), out, eval_id)
    return index, index.read_text(encoding="utf-8"), url, eval_id


def _metrics(url: str, eval_id: str) -> list[dict]:
    """metrics.parquet read directly with pyarrow: an oracle independent of the store's reader."""
    return pq.read_table(Path(url) / "metrics" / eval_id / "metrics.parquet").to_pylist()


def _table(url: str, eval_id: str, name: str) -> list[dict]:
    """Another table of the evaluation, read the same way (empty when the version has no such file)."""
    path = Path(url) / "metrics" / eval_id / f"{name}.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def _is_nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def test_report_names_every_encoder_task_and_the_version(report):
    index, text, url, eval_id = report
    assert index.name == "index.html" and index.exists()
    rows = _metrics(url, eval_id)
    assert eval_id in text
    for enc in {r["encoder"] for r in rows}:
        assert html.escape(enc) in text, enc
    for task in {r["task"] for r in rows}:
        assert html.escape(task) in text, task
    meta = Store.open(url).loc.read_json("metrics", eval_id, "eval.json")
    for value in (meta["created_at"], meta["code_version"], meta["config"]["resamples"], meta["config"]["seed"], meta["config"]["method"]):
        assert f"<td>{html.escape(str(value))}</td>" in text, value
    for run in meta["runs"]:
        assert run["run_id"] in text
    # Self-contained: no scripts, no remote resources.
    assert "<script" not in text.lower() and not re.search(r'(src|href)="https?://', text)


def test_every_figure_is_a_real_png_embedded_and_on_disk(report):
    index, text, url, eval_id = report
    files = re.findall(r'<a href="(figures/[^"]+\.png)"><img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    names = {Path(f).stem for f, _ in files}
    rows = _metrics(url, eval_id)
    kinds = {r["task"]: r["task_kind"] for r in rows}
    expected = {"forest", "pvalues-paired-bootstrap", "pvalues-nemenyi"}
    expected |= {f"{p}-{t}" for t, k in kinds.items() if k == "classification" for p in ("roc-pr", "reliability")}
    expected |= {f"regression-{t}" for t, k in kinds.items() if k == "regression"}
    expected |= {f"{p}-{t}" for t, k in kinds.items() if k == "segmentation" for p in ("dice", "overlay")}
    # a subgroup forest plot per task with a subgroup some test image has a value for; a curve per task with subset runs
    expected |= {f"subgroups-{r['task']}" for r in _table(url, eval_id, "subgroups") if r["subgroup"] != "unknown"}
    expected |= {f"label-efficiency-{r['task']}" for r in _table(url, eval_id, "label_efficiency")}
    assert names == expected
    assert text.count("data:image/png;base64,") == len(files)  # every embedded image has its file
    for rel, b64 in files:
        on_disk = (index.parent / rel).read_bytes()
        assert base64.b64decode(b64) == on_disk, rel
        _assert_real_png(on_disk, rel)


def test_results_table_cells_equal_metrics_parquet(report):
    _, text, url, eval_id = report
    rows = [r for r in _metrics(url, eval_id) if r["primary"] and r["fold"] is None]
    assert rows
    for r in rows:
        m = re.search(
            rf'<td class="([^"]*)" data-encoder="{re.escape(r["encoder"])}" data-head="{re.escape(r["head"])}" '
            rf'data-task="{re.escape(r["task"])}" data-fold="">(.*?)</td>',
            text,
        )
        assert m, (r["encoder"], r["head"], r["task"])
        shown = re.sub(r"<[^>]+>", "", m.group(2))
        if r["status"] == "insufficient":
            expect = f"insufficient ({r['n_pos']} pos / {r['n_neg']} neg)"
        else:
            expect = "n/a" if _is_nan(r["value"]) else f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        assert shown == expect, r
        # Bold exactly where the value is the best of its column (higher is better for every primary metric).
        column = [x["value"] for x in rows if x["task"] == r["task"] and not _is_nan(x["value"])]
        best = not _is_nan(r["value"]) and r["value"] >= max(column) - 1e-12
        assert ("best" in m.group(1).split()) == best and ("<b>" in m.group(2)) == best, r
    # One cell spelled out, as a person would check it against the parquet.
    one = next(r for r in rows if r["encoder"] == "rad-dino" and r["task"] == "heart-seg" and r["head"] == "linear")
    assert f"{one['value']:.3f} [{one['ci_low']:.3f}, {one['ci_high']:.3f}]" in text


def test_overlays_for_every_segmentation_task(report):
    index, text, url, eval_id = report
    seg = {r["task"] for r in _metrics(url, eval_id) if r["task_kind"] == "segmentation"}
    assert seg
    for task in seg:
        png = index.parent / "figures" / f"overlay-{task}.png"
        im = _assert_real_png(png.read_bytes(), png.name)
        assert im.width > 2 * im.height  # three images side by side
        caption = re.search(rf'<figure id="fig-overlay-{re.escape(task)}">.*?<figcaption>(.*?)</figcaption>', text, re.DOTALL).group(1)
        assert "best" in caption and "median" in caption and "worst" in caption and "Dice" in caption


def test_latest_version_no_overlays_and_holm(evaluated_store, tmp_path):
    """Without eval_id the latest version is reported; overlays=0 draws none; bad options fail early."""
    from evaluation.artifacts import latest_eval_id

    url, _, _ = evaluated_store
    store = Store.open(url)
    index = write_report(store, tmp_path / "r", overlays=0, correction="holm")
    text = index.read_text(encoding="utf-8")
    assert latest_eval_id(store) in text and "Holm-corrected p" in text
    assert not list((tmp_path / "r" / "figures").glob("overlay-*.png"))
    with pytest.raises(RadstoreError, match="correction"):
        write_report(store, tmp_path / "x", correction="sidak")
    with pytest.raises(RadstoreError, match="overlays"):
        write_report(store, tmp_path / "x", overlays=-1)


def test_health_section_of_the_evaluated_store(evaluated_store, tmp_path):
    """Health checked on a copy of the session's store (the shared one stays as the other tests
    expect it): every evaluated encoder has its row, and the section's figures are written."""
    from featurestore.health import HealthConfig, check_health

    url, eval_id, _ = evaluated_store
    shutil.copytree(url, tmp_path / "store")
    store = Store.open(str(tmp_path / "store"))
    runs = store.loc.read_json("metrics", eval_id, "eval.json")["runs"]
    for fsid in sorted({r["feature_set_id"] for r in runs}):
        check_health(store, fsid, HealthConfig(permutations=100))
    index = write_report(store, tmp_path / "r", eval_id, overlays=0)
    text = index.read_text(encoding="utf-8")
    heads = re.findall(r"<h2>(.*?)</h2>", text)
    assert heads[-1].endswith(". Embedding health") and "No health check yet" not in text
    section = text[text.index("Embedding health</h2>") :]
    for enc in {r["encoder"] for r in runs}:
        assert f'data-encoder="{html.escape(enc)}" data-metric="rankme"' in section, enc
    assert "CKA vs<br>pixels (negative control)" in section
    for name in ("health-spectra", "health-patch-cosine", "health-norm-maps"):
        _assert_real_png((tmp_path / "r" / "figures" / f"{name}.png").read_bytes(), name)
        assert f'<figure id="fig-{name}">' in section


def test_undefined_numbers_show_na_and_text_is_escaped():
    nan = float("nan")
    assert fmt(nan) == "n/a" and fmt(None) == "n/a" and fmt_ci(nan, nan, nan) == "n/a"
    assert fmt_ci(0.5, nan, nan) == "0.500 [n/a, n/a]"
    base = {
        "task": "t<x>",
        "task_kind": "classification",
        "head": "linear",
        "fold": None,
        "metric": "auroc",
        "primary": True,
        "confidence": 0.95,
    }
    rows = [
        {**base, "encoder": "<b>evil</b>", "value": nan, "ci_low": nan, "ci_high": nan},
        {**base, "encoder": "ok & fine", "value": 0.7, "ci_low": 0.6, "ci_high": 0.8},
    ]
    out = results_table_html(rows)
    assert "<b>evil</b>" not in out and "&lt;b&gt;evil&lt;/b&gt;" in out and "ok &amp; fine" in out and "t&lt;x&gt;" in out
    assert "<b>0.700 [0.600, 0.800]</b>" in out and ">n/a<" in out
    # A panel where every value is undefined still renders (with a note), rather than crashing.
    png = forest_figure([rows[0]], {"<b>evil</b>": "#0072B2"})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_renders_in_headless_chromium(report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    index = report[0]
    shot = tmp_path / "screenshot.png"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={SCREEN[0]},{SCREEN[1]}",
        f"--screenshot={shot}",
        index.resolve().as_uri(),
    ]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish the screenshot within 180 s")
    finally:
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    assert shot.exists(), proc.stderr[-2000:]
    im = _assert_real_png(shot.read_bytes(), "screenshot")
    assert im.size == SCREEN
    # The page's top holds the title and the results table: dark text on a white page.
    top = np.asarray(im.convert("L").crop((0, 0, SCREEN[0], 1200)), dtype=np.float32)
    assert (top < 100).mean() > 0.005 and (top > 240).mean() > 0.5
