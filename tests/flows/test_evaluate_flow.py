"""The evaluation flow and the analyst's commands: evaluate, query, report, against a real Prefect server."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from evaluation.artifacts import list_evaluations
from featurestore.store import Store
from flows.cli import EXIT_ERROR, EXIT_OK, main
from tests.flows.test_extract_flow import _artifacts


def test_evaluate_query_report_from_the_command_line(prefect_server, evaluated_store, tmp_path, capsys):
    url, eval_id, _ = evaluated_store
    # The fixture's inputs and settings again: the same version, untouched, and the table printed.
    assert main(["evaluate", "--store", url, "--all", "--resamples", "200", "--seed", "1", "--min-class-count", "1"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == eval_id and "existing version" in err
    assert "heart-seg" in out and "cross-attention" in out and "[" in out
    table = _artifacts("evaluation")
    assert table and table[0].type == "table"
    rows = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
    assert {r["task"] for r in rows} == {"pneumothorax-cls", "cardiomegaly-cls", "ctr-reg", "pneumothorax-seg", "heart-seg"}
    md = _artifacts("evaluation-summary")[0]
    assert md.type == "markdown" and eval_id in md.data
    # Other settings: a second version beside the first.
    assert main(["evaluate", "--store", url, "--all", "--resamples", "150", "--seed", "1", "--method", "bca"]) == EXIT_OK
    second = capsys.readouterr().out.strip().splitlines()[-1]
    assert second != eval_id and {eval_id, second} <= {e["eval_id"] for e in list_evaluations(Store.open(url))}

    assert main(["query", "--store", url, "SELECT eval_id, count(*) AS n FROM metrics GROUP BY 1 ORDER BY 1"]) == EXIT_OK
    out = capsys.readouterr().out
    assert eval_id in out and second in out
    assert main(["query", "--store", url, "SELECT * FROM latest", "--out", str(tmp_path / "latest.parquet")]) == EXIT_OK
    assert set(pq.read_table(tmp_path / "latest.parquet").column("eval_id").to_pylist()) <= {eval_id, second}
    assert main(["query", "--store", url, "SELECT * FROM nowhere"]) == EXIT_ERROR
    assert "views: images" in capsys.readouterr().err

    assert main(["report", "--store", url, "--out", str(tmp_path / "report"), "--eval", eval_id]) == EXIT_OK
    assert (tmp_path / "report" / "index.html").exists()
    assert eval_id in (tmp_path / "report" / "index.html").read_text()
