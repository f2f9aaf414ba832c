"""``radstore diff``: each kind of change is reported with the reason its lineage records, only the
rows it touches change, and what is within noise is said to be (evaluation.diff)."""

from __future__ import annotations

import dataclasses
import json
import math

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from evaluation.artifacts import evaluate
from evaluation.config import EvalConfig
from evaluation.diff import diff, format_diff, lineage_reasons
from evaluation.query import query
from featurestore.extract import ExtractConfig, extract
from featurestore.layout.records import read_run
from heads.runs import plan_runs
from heads.train import train
from tests.lineage_grid import build, configs, edit_manifest

pytestmark = pytest.mark.slow  # trains and evaluates a store twice

CFG = EvalConfig(resamples=200, min_class_count=2)


@pytest.fixture
def grid(tmp_path):
    manifest, store, fsid, runs = build(tmp_path)
    first = evaluate(store, list(runs.values()), CFG).eval_id
    return manifest, store, fsid, runs, first


def _retrain(store, fsid, manifest=None, cfgs=None) -> list[str]:
    reuse, todo = plan_runs(store, fsid, cfgs or configs(), manifest=manifest)
    return [rid for _, rid in reuse] + [train(store, fsid, c, manifest).run_id for c in todo]


def test_an_unchanged_rerun_reports_no_change(grid):
    _, store, fsid, _, first = grid
    again = evaluate(store, _retrain(store, fsid), CFG).eval_id
    assert again == first
    result = diff(store, first, again)
    assert result["changes"] == [] and result["unchanged"] > 0
    assert format_diff(result).endswith("no change")
    # The command line: --json for machines; a reference past the first evaluation is one line.
    import subprocess
    import sys

    cli = [sys.executable, "-m", "flows.cli", "diff", "--store", store.url]
    out = subprocess.run([*cli, first, "latest", "--json"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["changes"] == []
    bad = subprocess.run([*cli, "latest~9", "latest"], capture_output=True, text=True)
    assert bad.returncode == 2 and "latest~9" in bad.stderr and "Traceback" not in bad.stderr


def test_relabelled_test_images_change_only_their_task_and_say_which(grid, tmp_path):
    manifest, store, fsid, runs, first = grid
    t = pq.read_table(manifest)
    test = t.filter(pc.equal(t.column("split"), "test")).slice(0, 5)
    flipped = {i: not v for i, v in zip(test.column("image_id").to_pylist(), test.column("pneumothorax").to_pylist())}
    edit_manifest(manifest, "pneumothorax", flipped)
    second = evaluate(store, _retrain(store, fsid), CFG).eval_id
    result = diff(store, "latest~1", "latest")
    a_tests = read_run(store, runs[("pneumothorax-cls", "linear")]).splits["test"]
    assert (result["a"], result["b"]) == (first, second)
    changed = {(c.task, c.metric) for c in result["changes"]}
    assert changed and {task for task, _ in changed} == {"pneumothorax-cls"}
    for c in result["changes"]:
        assert c.run_a == runs[("pneumothorax-cls", "linear")] and c.run_b != c.run_a
        assert any(r.startswith("labels changed for 5 image(s)") for r in c.reasons), c.reasons
        assert c.n_shared == a_tests and 0 <= c.q <= 1  # paired over every test image (the same images)
    text = format_diff(result)
    assert "because labels changed for 5 image(s)" in text and sorted(flipped)[0] in text
    # The report of the new version shows its provenance and what changed since the previous one.
    from evaluation.report import write_report

    page = write_report(store, tmp_path / "report", second, overlays=0).read_text()
    assert f"What changed since <code>{first}</code>" in page and "labels changed for 5 image(s)" in page
    rec = read_run(store, next(c.run_b for c in result["changes"]))
    assert rec.data_hash in page and "Cohort hash" in page


def test_settings_change_is_named_and_within_noise(grid):
    """Same runs, more resamples: the intervals move, the values do not; the paired difference is
    exactly zero, so nothing is significant."""
    _, store, _, runs, first = grid
    second = evaluate(store, list(runs.values()), dataclasses.replace(CFG, resamples=300)).eval_id
    result = diff(store, first, second)
    assert result["settings"] == ["evaluation settings changed: resamples 200 -> 300"]
    assert result["changes"] and not any(c.significant for c in result["changes"])
    assert all(math.isnan(c.p) for c in result["changes"])  # same predictions: nothing to test, nothing tested
    assert all(c.delta == 0 and c.value_a == c.value_b for c in result["changes"] if c.delta == c.delta)


def test_feature_set_config_code_and_data_reasons(grid, tmp_path):
    manifest, store, fsid, runs, _ = grid
    other = extract(str(manifest), store, ExtractConfig("pixels", size=256, progress=False, num_workers=0)).feature_set_id
    cfg = configs(lr=0.01)[1]
    a = read_run(store, runs[("ctr-reg", "linear")])
    b = read_run(store, train(store, other, cfg).run_id)
    reasons = lineage_reasons(store, a, b)
    assert any(r.startswith("preprocessing changed: size 512 -> 256") for r in reasons), reasons
    assert f"training config changed: lr {a.config['lr']!r} -> 0.01" in reasons
    assert lineage_reasons(store, a, dataclasses.replace(a, run_id=a.run_id, code_version="other")) == [
        f"code version changed ({a.code_version or '?'} -> other)"
    ]


def test_a_new_test_image_and_the_sql_view(grid, tmp_path):
    manifest, store, fsid, runs, first = grid
    from featurestore.synth.cohort import synthesize
    from tests.lineage_grid import COHORT

    bigger = synthesize(tmp_path / "bigger", dataclasses.replace(COHORT, n=COHORT.n + 6), progress=False)
    extract(str(bigger), store, ExtractConfig("pixels", progress=False, num_workers=0))
    second = evaluate(store, _retrain(store, fsid, str(bigger)), CFG).eval_id
    result = diff(store, first, second)
    new_ids = pq.read_table(bigger).slice(COHORT.n)
    new_test = [i for i, s in zip(new_ids.column("image_id").to_pylist(), new_ids.column("split").to_pylist()) if s == "test"]
    ctr = [c for c in result["changes"] if c.task == "ctr-reg"]
    assert ctr and any(r.startswith(f"test images changed: +{len(new_test)} (") for r in ctr[0].reasons)
    json.dumps([c.to_json() for c in result["changes"]])  # serialisable as --json prints it
    rows = query(store, "SELECT task, split, count(*) AS n FROM lineage WHERE run_id = "
                 f"'{runs[('ctr-reg', 'linear')]}' GROUP BY ALL ORDER BY split").to_pylist()  # fmt: skip
    assert {r["split"] for r in rows} == {"test", "train", "val"} and all(r["task"] == "ctr-reg" for r in rows)
