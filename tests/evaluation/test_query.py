"""SQL views over the store: every view equals an independent read with pyarrow."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from evaluation.artifacts import EvalConfig, evaluate, list_evaluations
from evaluation.query import EXAMPLES, VIEWS, connect, query, write_result
from featurestore.errors import RadstoreError
from featurestore.layout.records import list_runs, read_predictions
from featurestore.store import Store


def test_views_equal_independent_reads(evaluated_store):
    url, eval_id, manifest = evaluated_store
    store = Store.open(url)
    con = connect(store)
    for v in VIEWS:
        con.execute(f"SELECT * FROM {v} LIMIT 1").fetchall()
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == pq.read_table(manifest).num_rows
    for fs in store.feature_sets():
        t = fs.cls()
        got = con.execute(f"SELECT image_id, cls FROM cls WHERE feature_set_id = '{fs.id}' ORDER BY row").fetchall()
        assert [g[0] for g in got] == t.column("image_id").to_pylist()
        np.testing.assert_array_equal(np.array([g[1] for g in got], np.float32), np.stack(t.column("cls").to_numpy(zero_copy_only=False)))
        assert con.execute(f"SELECT images, global_dim FROM features WHERE feature_set_id = '{fs.id}'").fetchone() == (
            len(t),
            fs.spec.global_dim,
        )
    runs = list_runs(store)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == len(runs)
    assert con.execute("SELECT count(*) FROM predictions").fetchone()[0] == sum(read_predictions(store, r["run_id"]).num_rows for r in runs)
    # One run's scores, through the view, equal its parquet file.
    r = next(r for r in runs if r["task_kind"] == "classification")
    got = con.execute(f"SELECT image_id, score FROM predictions WHERE run_id = '{r['run_id']}' ORDER BY image_id").fetchall()
    want = read_predictions(store, r["run_id"]).sort_by("image_id")
    assert got == list(zip(want.column("image_id").to_pylist(), want.column("score").to_pylist()))
    n_metrics = con.execute(f"SELECT count(*) FROM metrics WHERE eval_id = '{eval_id}'").fetchone()[0]
    assert n_metrics == pq.read_table(f"{url}/metrics/{eval_id}/metrics.parquet").num_rows


def test_two_versions_coexist_and_latest_picks_the_newest(evaluated_store):
    url, eval_id, _ = evaluated_store
    store = Store.open(url)
    newer = evaluate(store, None, EvalConfig(resamples=100, seed=5))
    evals = {e["eval_id"] for e in list_evaluations(store)}
    assert {eval_id, newer.eval_id} <= evals
    per_version = query(store, "SELECT eval_id, count(*) AS n FROM metrics GROUP BY 1").to_pylist()
    assert {r["eval_id"] for r in per_version} >= {eval_id, newer.eval_id}
    latest = query(store, "SELECT DISTINCT resamples FROM latest WHERE fold IS NULL AND task = 'heart-seg'").column("resamples").to_pylist()
    assert latest == [100]


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_readme_examples_run(evaluated_store, name):
    url, _, _ = evaluated_store
    t = query(url, EXAMPLES[name])
    assert t.num_rows > 0, name
    readme = open("README.md").read()
    assert EXAMPLES[name].strip().splitlines()[1].strip() in readme, f"README lacks the example {name!r}"


def test_errors_and_outputs(evaluated_store, tmp_path):
    url, _, _ = evaluated_store
    with pytest.raises(RadstoreError, match="views: images"):
        query(url, "SELECT * FROM nonsense")
    t = query(url, "SELECT feature_set_id, image_id, cls FROM cls")
    with pytest.raises(RadstoreError, match="vector column"):
        write_result(t, str(tmp_path / "x.csv"))
    write_result(t, str(tmp_path / "x.parquet"))
    assert pq.read_table(tmp_path / "x.parquet").num_rows == t.num_rows
    write_result(query(url, "SELECT image_id, split FROM images"), str(tmp_path / "i.csv"))
    assert (tmp_path / "i.csv").read_text().startswith('"image_id","split"')
