"""``infra/rebuild_check.py`` (``make rebuild-check``): what ``compare`` calls a difference and how it
names it, and that ``snapshot`` of an evaluated store lists its content and is deterministic."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "rebuild_check.py"
METRIC = "run_id=rad-dino-bbb/pneumothorax-cls/linear/fold=None/cfg-1234abcd metric=auroc"


@pytest.fixture(scope="module")
def rc():
    spec = importlib.util.spec_from_file_location("rebuild_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _snap(rc) -> dict:
    """A hand-made snapshot in the script's format (floats as repr strings)."""
    run = "rad-dino-bbb/pneumothorax-cls/linear/fold=None/cfg-1234abcd"
    return rc.canon(
        {
            "snapshot_format": rc.SNAPSHOT_FORMAT,
            "images": 24,
            "feature_sets": {
                "pixels-aaa": {"encoder": "pixels", "weights_fingerprint": "none", "cls_sha256": "0f"},
                "rad-dino-bbb": {"encoder": "rad-dino", "weights_fingerprint": "fad7f677", "cls_sha256": "1e"},
            },
            "runs": {run: {"test_metrics": {"auroc": 0.75}, "predictions_sha256": "ab"}},
            "evaluations": {
                "eval~0123": {
                    "content_id": "eval-4567",
                    "metrics": {METRIC: {"value": 0.75, "ci_low": 0.5, "ci_high": 0.9, "n": 9, "fold": None}},
                }
            },
            "counts": {"feature_sets": 2, "runs": 1, "evaluations": 1, "metric_rows": 1},
            "volatile": {
                "run_ids": {run: "rad-dino-bbb-pneumothorax-cls-linear-20260101T000000-abcdef"},
                "eval_ids": {"eval~0123": "eval-9"},
            },
        }
    )


def _compare(rc, a, b) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = rc.compare(a, b, out)
    return code, out.getvalue().splitlines()


def test_floats_are_written_so_that_every_bit_shows(rc):
    assert rc.canon({"x": 0.1 + 0.2, "nan": float("nan"), "t": (1, 2.5), "n": None}) == {
        "x": "0.30000000000000004",
        "nan": "nan",
        "t": [1, "2.5"],
        "n": None,
    }


def test_identical_snapshots_pass_and_volatile_ids_do_not_count(rc):
    a = _snap(rc)
    b = copy.deepcopy(a)
    b["volatile"]["run_ids"] = {k: v.replace("abcdef", "012345") for k, v in b["volatile"]["run_ids"].items()}
    b["volatile"]["eval_ids"] = {"eval~0123": "eval-other"}
    code, lines = _compare(rc, a, b)
    assert code == 0
    assert lines[-1].startswith("identical: 2 feature sets, 1 runs, 1 evaluations, 1 metric rows")
    assert "run ids equal for 0 of 1 runs, eval ids differ" in lines[-1]


def test_a_changed_float_is_one_line_naming_the_metric(rc):
    a, b = _snap(rc), _snap(rc)
    row = b["evaluations"]["eval~0123"]["metrics"][METRIC]
    row["value"] = repr(math.nextafter(0.75, 1.0))  # one bit more
    assert row["value"] == "0.7500000000000001"
    code, lines = _compare(rc, a, b)
    assert code == 1
    assert lines[0] == f'evaluations[eval~0123][metrics][{METRIC}][value]: A="0.75" B="0.7500000000000001"'
    assert lines[-1].startswith("DIFFERENT: 1 item(s) differ")


def test_a_missing_feature_set_is_one_line_naming_it(rc):
    a, b = _snap(rc), _snap(rc)
    del b["feature_sets"]["pixels-aaa"]
    code, lines = _compare(rc, a, b)
    assert code == 1
    assert len(lines) == 2
    assert lines[0] == 'feature_sets[pixels-aaa]: A={cls_sha256: "0f", encoder: "pixels", weights_fingerprint: "none"} B=(missing)'


def test_command_line(rc, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(rc.dumps(_snap(rc)))
    b.write_text(rc.dumps(_snap(rc)))
    assert rc.main(["compare", str(a), str(b)]) == 0
    snap = _snap(rc)
    snap["feature_sets"]["rad-dino-bbb"]["weights_fingerprint"] = "0000"
    b.write_text(rc.dumps(snap))
    assert rc.main(["compare", str(a), str(b)]) == 1
    assert 'feature_sets[rad-dino-bbb][weights_fingerprint]: A="fad7f677" B="0000"' in capsys.readouterr().out
    b.write_text(json.dumps({"something": "else"}))
    assert rc.main(["compare", str(a), str(b)]) == 2


def test_snapshot_of_an_evaluated_store(rc, evaluated_store, tmp_path):
    from evaluation.artifacts import read_evaluation
    from featurestore.layout.records import list_evaluations, list_runs
    from featurestore.store import Store

    url, eval_id, _ = evaluated_store
    store = Store.open(url)
    _, tables = read_evaluation(store, eval_id)
    first = rc.snapshot(url)
    assert sorted(first["feature_sets"]) == sorted(store.feature_set_ids())
    assert {f["encoder"] for f in first["feature_sets"].values()} == {"pixels", "rad-dino", "chexagent"}
    assert all(f["images"] == 24 and len(f["cls_sha256"]) == 64 for f in first["feature_sets"].values())
    assert sorted(first["volatile"]["run_ids"].values()) == sorted(r.run_id for r in list_runs(store))
    # The session's store: other tests may have added evaluations to it; this one is among them.
    by_id = {v: k for k, v in first["volatile"]["eval_ids"].items()}
    assert sorted(by_id) == sorted(e.eval_id for e in list_evaluations(store)) and eval_id in by_id
    ev = first["evaluations"][by_id[eval_id]]
    assert ev["content_id"].startswith("eval-") and ev["content_id"] != eval_id  # run keys, not time-stamped run ids
    for name, t in tables.items():
        assert len(ev[name]) == t.num_rows, name  # one keyed entry per row: no two rows share a key
    every = [read_evaluation(store, e.eval_id)[1]["metrics"].num_rows for e in list_evaluations(store)]
    assert first["counts"]["metric_rows"] == sum(every) and tables["metrics"].num_rows > 0
    row = next(iter(ev["metrics"].values()))
    assert "eval_id" not in row and "created_at" not in row and isinstance(row["value"], str)
    assert row["run_id"] in first["runs"]  # run ids replaced by run keys
    # Deterministic: a second snapshot is the same text, and compare agrees.
    again = rc.snapshot(url)
    assert rc.dumps(again) == rc.dumps(first)
    assert _compare(rc, first, again)[0] == 0
