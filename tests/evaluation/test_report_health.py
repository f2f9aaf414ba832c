"""The report's "Embedding health" section, from health versions checked on a hand-built store:
a collapsed encoder's flags are shown and an isotropic one has none, the planted duplicate and
the backfill appear in their tables, the figures are real images, feature sets never checked (or
unreadable) are named rather than crash the page, and the section is numbered last."""

from __future__ import annotations

import html
import io
import logging
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape
from PIL import Image

from evaluation.report import ReportData, render_report
from evaluation.report.common import colours
from evaluation.report.health import LEAKAGE_ROWS, gather_health, norm_map_figure, patch_cosine_figure, spectrum_figure
from evaluation.report.render import health_section, health_section_html
from featurestore import layout
from featurestore.health import HealthConfig, check_health, latest_health
from featurestore.layout.records import EvaluationRecord
from featurestore.store import Store
from tests.featurestore.health.conftest import register_images, write_set

N, D, GRID = 60, 24, (16, 5, 5)
BACKFILL = 20  # the collapsed set's last images arrive after its first check
CFG = HealthConfig(sample=40, rank_images=10, permutations=100)
FIGURES = {"health-spectra", "health-patch-cosine", "health-norm-maps"}


def _png(data: bytes | None, what: str) -> None:
    assert data is not None and data[:8] == b"\x89PNG\r\n\x1a\n", what
    im = Image.open(io.BytesIO(data))
    assert im.width >= 300 and im.height >= 200, (what, im.size)
    assert np.asarray(im.convert("L"), dtype=np.float32).std() > 8, f"{what} looks blank"


def _write(store, fsid, ids, g, grids):
    with store.feature_set(fsid).writer() as w:
        for k in range(0, len(ids), 16):
            w.write(ids[k : k + 16], g[k : k + 16].astype(np.float32), grids[k : k + 16].astype(np.float32))


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """(store, {encoder: feature set id}, planted (test id, train id)): an isotropic set, a
    collapsed one (one patch token everywhere, one global direction, a planted test-train
    duplicate, a backfill between its two checks), a pixels control never checked itself, and a
    set whose health version is corrupt."""
    store = Store.open(str(tmp_path_factory.mktemp("health-report") / "store"), create=True)
    rng = np.random.default_rng(0)
    ids = [f"i{k:03d}" for k in range(N)]
    splits = list(rng.choice(["train", "val", "test"], N, p=[0.6, 0.2, 0.2]))
    register_images(store, ids, splits, [f"p-{i}" for i in ids])
    sets = {"pixels": write_set(store, ids, rng.standard_normal((N, 9)), rng.standard_normal((N, 4, 3, 3)), encoder="pixels", tag="px")}
    sets["iso-enc"] = write_set(store, ids, rng.standard_normal((N, D)), rng.standard_normal((N, *GRID)), encoder="iso-enc", tag="iso")
    v, token = rng.standard_normal(D), rng.standard_normal((GRID[0], 1, 1))
    g = v + 0.01 * rng.standard_normal((N, D))
    test, train = splits.index("test"), splits.index("train")
    g[test] = g[train] + 0.001 * rng.standard_normal(D)  # the same film under another patient
    grids = token + 0.01 * rng.standard_normal((N, *GRID))
    first = N - BACKFILL
    sets["flat-enc"] = write_set(store, ids[:first], g[:first], grids[:first], encoder="flat-enc", tag="flat")
    sets["broken-enc"] = write_set(store, ids, rng.standard_normal((N, D)), rng.standard_normal((N, *GRID)), encoder="broken-enc", tag="b")
    check_health(store, sets["iso-enc"], CFG)
    check_health(store, sets["flat-enc"], CFG)
    _write(store, sets["flat-enc"], ids[first:], g[first:], grids[first:])
    check_health(store, sets["flat-enc"], CFG)
    broken = check_health(store, sets["broken-enc"], CFG)
    (Path(broken.path) / layout.table_file("summary")).write_bytes(b"not parquet")
    return store, sets, (ids[test], ids[train])


@pytest.fixture(scope="module")
def health(checked):
    store, sets, _ = checked
    return gather_health(store, {fsid: enc for enc, fsid in sets.items()})


def _runs(sets: dict[str, str]) -> list[dict]:
    return [{"run_id": f"run-{e}", "task": "t", "head": "linear", "encoder": e, "feature_set_id": f, "fold": None} for e, f in sets.items()]


def _cell(text: str, encoder: str, metric: str) -> re.Match:
    m = re.search(rf'<td class="([^"]*)" data-encoder="{re.escape(encoder)}" data-metric="{re.escape(metric)}">(.*?)</td>', text)
    assert m, (encoder, metric)
    return m


def test_gather_takes_the_latest_version_and_skips_the_unchecked_and_unreadable(checked, health, caplog):
    store, sets, _ = checked
    assert [h.encoder for h in health] == ["flat-enc", "iso-enc"]
    flat, iso = health
    assert flat.health_id == latest_health(store.feature_set(sets["flat-enc"])).health_id
    assert flat.record["previous"] is not None and len(flat.drift) == 1 and flat.drift[0]["n_new"] == BACKFILL
    assert iso.flags == [] and flat.flags
    assert flat.patch_cosine.min() > 0.99 and np.abs(iso.patch_cosine).max() < 0.2 and len(iso.patch_cosine) == CFG.sample
    assert flat.norm_map.shape == GRID[1:] and np.isfinite(flat.norm_map).all()
    assert len(flat.spectrum) == D and flat.spectrum[0] >= flat.spectrum[-1] and flat.spectrum.sum() == pytest.approx(1.0)
    assert flat.max_patch_cosine == CFG.max_patch_cosine and iso.value("cka_pixels") is not None
    with caplog.at_level(logging.WARNING, logger="evaluation.report.health"):
        again = gather_health(store, {sets["broken-enc"]: "broken-enc", "no-such-set": "ghost", sets["iso-enc"]: "iso-enc"})
    assert [h.encoder for h in again] == ["iso-enc"]
    logged = caplog.text
    assert sets["broken-enc"] in logged and "no-such-set" in logged


def test_section_marks_the_collapsed_encoder_and_not_the_isotropic_one(checked, health):
    _, sets, (test_id, train_id) = checked
    section = health_section(health, _runs(sets), "file:///s<b>", colours(sets), number=8)
    text = health_section_html(section)
    assert text.startswith("<h2>8. Embedding health</h2>")
    flat, iso = health
    for metric in ("anisotropy", "patch_cosine_median", "pairs"):
        m = _cell(text, "flat-enc", metric)
        assert "flag" in m.group(1).split() and m.group(2).startswith("<b>"), metric
        m = _cell(text, "iso-enc", metric)
        assert "flag" not in m.group(1).split() and "<b>" not in m.group(2), metric
    assert _cell(text, "iso-enc", "patch_cosine_median").group(2) == f"{iso.value('patch_cosine_median'):.3f}"
    assert html.escape("; ".join(flat.flags)) in _cell(text, "flat-enc", "flags").group(2)
    assert re.search(r'<td class="na">none</td>', text)  # the isotropic set's flags column
    assert "CKA vs<br>pixels (negative control)" in text and _cell(text, "iso-enc", "cka_pixels").group(1) == "num"
    # the never-checked and the unreadable feature sets are named with the command, the store url escaped
    assert "No health check yet for" in text and sets["pixels"] in text and sets["broken-enc"] in text
    command = ["radstore", "health", "--store", "file:///s<b>", "--feature-set", sets["broken-enc"], "--feature-set", sets["pixels"]]
    assert f"<code>{escape(shlex.join(command))}</code>" in text and "s&lt;b&gt;" in text
    # the planted duplicate is the one leakage pair; the backfill is the one drift row
    assert text.count(f"<code>{test_id}</code>") == 1 and f"<code>{train_id}</code>" in text
    assert "None above the threshold." not in text and "No backfill since" not in text
    assert f"cosine at or above {CFG.leakage_threshold:g}, most similar first" in text
    assert "backfill 1" in _cell(text, "flat-enc", "drift_p_value").group(2)
    assert re.search(r'data-encoder="flat-enc" data-backfill="1"', text)
    assert _cell(text, "iso-enc", "drift_p_value").group(2) == "no backfill"
    blocks = {b.name: b for b in section["blocks"]}
    assert set(blocks) == FIGURES and all(b.caption for b in blocks.values())
    for b in blocks.values():
        _png(b.png, b.name)


def test_leakage_rows_are_capped_but_counted(health):
    import dataclasses

    flat = health[0]
    many = dataclasses.replace(flat, leakage=flat.leakage * LEAKAGE_ROWS, leakage_count=3 * LEAKAGE_ROWS)
    text = health_section_html(health_section([many], [], "s", {}, 1))
    assert f"{3 * LEAKAGE_ROWS} pairs, the {LEAKAGE_ROWS} most similar listed." in text


def test_without_health_the_section_says_how_to_check_and_draws_nothing(checked):
    _, sets, _ = checked
    section = health_section([], _runs(sets), "/data/store", {}, number=3)
    text = health_section_html(section)
    assert "<h2>3. Embedding health</h2>" in text and "<code>radstore health --store /data/store --feature-set " in text
    assert "<table" not in text and "<img" not in text and section["blocks"] == []
    assert spectrum_figure([], {}) is None and patch_cosine_figure([], {}) is None and norm_map_figure([]) is None


def test_page_numbers_the_section_last_and_writes_its_figures(checked, health, tmp_path):
    _, sets, _ = checked
    record = EvaluationRecord(eval_id="eval-h", created_at="2025-01-01T00:00:00+00:00", config={"confidence": 0.95}, runs=_runs(sets))
    index = render_report(ReportData(record, "file:///s", [], [], [], [], health=health), tmp_path)
    text = index.read_text(encoding="utf-8")
    heads = re.findall(r"<h2>(.*?)</h2>", text)
    comparisons = int(next(h for h in heads if h.endswith("Comparisons between encoders")).split(".")[0])
    assert heads[-4:] == [f"{comparisons + 1}. Calibration and operating points", f"{comparisons + 2}. Label efficiency",
                          f"{comparisons + 3}. Subgroups", f"{comparisons + 4}. Embedding health"]  # fmt: skip
    for name in FIGURES:
        data = (tmp_path / "figures" / f"{name}.png").read_bytes()
        _png(data, name)
        assert f'<figure id="fig-{name}">' in text
