"""Runs and evaluations written before the format moved into featurestore.layout read the same,
and evaluating the same runs again with today's code gives the same version and numbers.

The fixture (tests/data/store-v1) was written once by the older code; see make_store_v1.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
EXPECTED = json.loads((DATA / "store-v1-expected.json").read_text())


@pytest.fixture
def store_v1(tmp_path):
    from featurestore.store import Store

    root = tmp_path / "store-v1"
    shutil.copytree(DATA / "store-v1", root)
    return Store.open(str(root))


def test_runs_and_evaluation_records_read(store_v1):
    from evaluation.artifacts import read_evaluation
    from featurestore.layout.records import list_evaluations, list_runs, open_masks, read_predictions

    runs = {r.run_id: r for r in list_runs(store_v1)}
    assert {k: (r.task, r.head) for k, r in runs.items()} == {k: (v["task"], v["head"]) for k, v in EXPECTED["runs"].items()}
    for r in runs.values():
        assert read_predictions(store_v1, r.run_id).num_rows == r.splits["test"]
        if r.task_kind == "segmentation":
            pred, truth = open_masks(store_v1, r.run_id)
            assert pred.shape[0] == truth.shape[0] == r.splits["test"]
    (ev,) = list_evaluations(store_v1)
    assert ev.eval_id == EXPECTED["eval_id"] and ev["eval_id"] == ev.eval_id  # typed and as the json mapping
    meta, tables = read_evaluation(store_v1, ev.eval_id)
    later = {name: 0 for name in tables if name not in EXPECTED["tables"]}  # tables added after v1: read as empty
    assert set(later) >= {"calibration", "reliability", "operating_points", "label_efficiency", "subgroups"}
    assert {k: v.num_rows for k, v in tables.items()} == {**EXPECTED["tables"], **later}
    assert meta.to_json() == json.loads((DATA / "store-v1" / "metrics" / ev.eval_id / "eval.json").read_text())


def test_reevaluating_the_old_runs_keeps_their_values_in_a_new_version(store_v1):
    """The old runs evaluate again under today's metric definitions (a new version beside the
    old one, which stays readable); the point estimates that did not change definition agree."""
    from evaluation.artifacts import EvalConfig, evaluate, read_evaluation
    from featurestore.layout.records import list_evaluations

    ev = evaluate(store_v1, None, EvalConfig(resamples=100, seed=0, min_class_count=1))
    assert ev.created and ev.eval_id != EXPECTED["eval_id"]
    assert [e.eval_id for e in list_evaluations(store_v1)] == [EXPECTED["eval_id"], ev.eval_id]
    new = {(r["run_id"], r["metric"]): r for r in read_evaluation(store_v1, ev.eval_id)[1]["metrics"].to_pylist()}
    for old in EXPECTED["metrics"]:
        got = new[(old["run_id"], old["metric"])]
        assert got["n"] == old["n"]
        if got["status"] == "insufficient":  # a class is absent from the old test split: no number now
            continue
        assert json.dumps(got["value"]) == json.dumps(old["value"]), old  # exact, NaN as NaN
    seg = [r for r in new.values() if r["task_kind"] == "segmentation"]
    assert seg and all(r["threshold"] == 0.5 for r in seg)  # runs without an operating point: 0.5
    # old runs kept no validation predictions: raw calibration only, the rest says why not
    cal = read_evaluation(store_v1, ev.eval_id)[1]["calibration"].to_pylist()
    assert cal and all((r["status"] == "ok") == (r["scaling"] == "none") for r in cal)
    assert {r["status"] for r in cal if r["scaling"] != "none"} == {"no-validation"}


def test_sql_views_over_the_old_store(store_v1):
    from evaluation.query import query

    n = query(store_v1, "SELECT count(*) AS n FROM predictions").column("n")[0].as_py()
    assert n == sum(r["splits"]["test"] for r in _runs(store_v1))
    latest = query(store_v1, 'SELECT count(*) AS n FROM latest WHERE "primary"').column("n")[0].as_py()
    assert latest == len(EXPECTED["runs"])


def _runs(store):
    from featurestore.layout.records import list_runs

    return list_runs(store)
