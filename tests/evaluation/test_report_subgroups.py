"""The report's "Subgroups" section from hand-made subgroup rows with known answers: the table of
subgroups that differ from the rest after Holm (every cell), the notes when none does or none
could be tested, the forest plot a real image (too-small subgroups and columns without values
handled), the section between label efficiency and embedding health, the notes when an
evaluation has no subgroups, and the rows read back from an evaluation's Parquet table."""

from __future__ import annotations

import html
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.report import ReportData, render_report
from evaluation.report.render import subgroups_section, subgroups_section_html
from evaluation.report.subgroups import (
    NO_METADATA,
    NO_SUBGROUPS,
    NOT_CONFIGURED,
    forest_figure,
    no_difference_note,
    primary_by_task,
    section_note,
    significant_table,
    slot_key,
    unknown_columns,
)
from featurestore.layout.records import EvaluationRecord
from featurestore.layout.schemas import SUBGROUPS_SCHEMA
from tests.evaluation.report_checks import SECTIONS_AFTER_COMPARISONS, figure_on_page, headings_from_comparisons
from tests.evaluation.report_checks import cell as _cell
from tests.evaluation.report_checks import real_png as _png

SECTION = "Subgroups"
COLOURS = {"a": "#0072B2", "b": "#E69F00"}
RUNS = {"a": 0.80, "b": 0.70}  # whole-test-set AUROC of each encoder's run


def sub(encoder: str, column: str, subgroup: str, value: float | None, *, p_holm: float | None = 0.9, p: float | None = None,
        n: int = 80, status: str = "ok", task: str = "t", metric: str = "auroc", head: str = "linear", fold=None,
        family: int = 3, diff: float | None = None) -> dict:  # fmt: skip
    """A subgroups row (every column of SUBGROUPS_SCHEMA); a too-small row carries no number, one
    without ``p_holm`` no test (a column with a single subgroup: no rest)."""
    small = status != "ok"
    tested = not small and p_holm is not None
    d = (value - RUNS[encoder] if diff is None else diff) if tested else None
    return {"eval_id": "e", "created_at": datetime(2025, 1, 1, tzinfo=UTC), "task": task, "task_kind": "classification",
            "head": head, "fold": fold, "encoder": encoder, "feature_set_id": f"fs-{encoder}", "run_id": f"run-{task}-{encoder}",
            "metric": metric, "column": column, "subgroup": subgroup, "n": n, "n_pos": n // 4, "n_neg": n - n // 4, "n_rest": 200,
            "status": status, "value": None if small else value, "ci_low": None if small else value - 0.08,
            "ci_high": None if small else value + 0.07, "method": "bca", "diff_vs_rest": d,
            "diff_ci_low": d - 0.1 if tested else None, "diff_ci_high": d + 0.1 if tested else None,
            "p": (p_holm / 3 if p is None else p) if tested else None, "p_holm": p_holm if tested else None,
            "family_size": family if tested else None}  # fmt: skip


def _rows(task: str = "t") -> list[dict]:
    """Two encoders; VendorC worse for both (significant after Holm for both), an unknown subgroup
    too small, two views, age bands, and patient_sex with no value on any image."""
    out = []
    for enc, base in RUNS.items():
        out += [
            sub(enc, "manufacturer", "VendorA", base + 0.02, p_holm=0.6, task=task),
            sub(enc, "manufacturer", "VendorC", base - 0.2, p_holm=0.003 if enc == "a" else 0.0004, task=task),
            sub(enc, "manufacturer", "unknown", None, n=12, status="too-small", task=task),
            sub(enc, "view_position", "PA", base, p_holm=0.8, family=1, task=task),
            sub(enc, "view_position", "AP", base - 0.01, p_holm=0.8, family=1, task=task),
            sub(enc, "age_band", "40-59", base, p_holm=0.7, task=task),
            sub(enc, "age_band", "<40", base + 0.01, p_holm=0.7, task=task),
            sub(enc, "patient_sex", "unknown", base, p_holm=None, family=0, task=task),
            sub(enc, "manufacturer", "VendorC", 0.3, p_holm=0.001, metric="auprc", task=task),  # not the primary metric
        ]
    return out


def _texts(table) -> list[list[str]]:
    return [[str(c.text) for c in row] for row in table.rows]


# -- known answers ------------------------------------------------------------------------------


def test_significant_table_lists_holm_significant_subgroups_smallest_p_first():
    rows = _rows() + [sub("a", "age_band", "75+", 0.6, p_holm=0.049, p=0.02), sub("b", "age_band", "75+", 0.65, p_holm=0.05)]
    table = significant_table(rows, "t", "auroc")
    assert [h.lines[0] for h in table.header] == ["head", "encoder", "column", "subgroup", "n (pos/neg)", "subgroup",
                                                  "subgroup − rest", "p", "p Holm"]  # fmt: skip
    assert [h.small for h in table.header] == ["", "", "", "", "", "AUROC [CI]", "AUROC [CI]", "", "(family)"]
    assert _texts(table) == [
        ["linear", "b", "manufacturer", "VendorC", "80 (20/60)", "0.500 [0.420, 0.570]", "-0.200 [-0.300, -0.100]", "<0.001", "<0.001 (3)"],
        ["linear", "a", "manufacturer", "VendorC", "80 (20/60)", "0.600 [0.520, 0.670]", "-0.200 [-0.300, -0.100]", "0.001", "0.003 (3)"],
        ["linear", "a", "age_band", "75+", "80 (20/60)", "0.600 [0.520, 0.670]", "-0.200 [-0.300, -0.100]", "0.020", "0.049 (3)"],
    ]  # 0.05 is not below 0.05; the AUPRC row is another metric
    assert all(row[-1].bold and row[-1].cls == "num sig" for row in table.rows)
    assert dict(table.rows[1][5].data) == {"task": "t", "head": "linear", "fold": "", "encoder": "a", "column": "manufacturer",
                                           "subgroup": "VendorC", "what": "value"}  # fmt: skip
    assert significant_table(rows, "t", "dice") is None and significant_table(rows, "other", "auroc") is None
    # folds alone: a split column
    folded = [{**r, "fold": 2} for r in rows]
    assert [h.lines[0] for h in significant_table(folded, "t", "auroc").header][:2] == ["head", "split"]
    assert _texts(significant_table(folded, "t", "auroc"))[0][1] == "fold 2"


def test_without_a_significant_subgroup_the_note_says_why():
    quiet = [r for r in _rows() if r["subgroup"] != "VendorC"]
    assert significant_table(quiet, "t", "auroc") is None
    assert no_difference_note(quiet, "t", "auroc") == "t: no subgroup differs from the rest after Holm correction."
    small = [r for r in quiet if r["status"] != "ok" or r["column"] == "patient_sex"]
    assert no_difference_note(small, "t", "auroc") == (
        "t: no subgroup could be tested against the rest (too small, or a column with a single subgroup)."
    )


def test_order_columns_and_primary_metric():
    slots = [("age_band", "75+"), ("age_band", "unknown"), ("age_band", "<40"), ("manufacturer", "B"), ("age_band", "40-59"),
             ("manufacturer", "A"), ("custom", "x"), ("view_position", "PA")]  # fmt: skip
    assert sorted(slots, key=slot_key) == [("manufacturer", "A"), ("manufacturer", "B"), ("view_position", "PA"), ("age_band", "<40"),
                                           ("age_band", "40-59"), ("age_band", "75+"), ("age_band", "unknown"), ("custom", "x")]  # fmt: skip
    assert unknown_columns(_rows()) == ["patient_sex"]
    metrics = [{"task": "t", "task_kind": "classification", "metric": "auprc", "primary": True},
               {"task": "t", "task_kind": "classification", "metric": "auroc", "primary": False}]  # fmt: skip
    rows = [sub("a", "manufacturer", "A", 0.8), {**sub("a", "manufacturer", "A", 0.8, task="seg"), "task_kind": "segmentation"},
            {**sub("a", "manufacturer", "A", 0.8, task="new", metric="m1"), "task_kind": "unheard-of"}]  # fmt: skip
    assert primary_by_task(rows, metrics, {}) == {"t": "auprc", "seg": "dice_nonempty", "new": "m1"}  # flag, kind's first, the rows'
    assert primary_by_task(rows, [], {"primary": {"segmentation": "dice"}})["seg"] == "dice"  # the evaluation's config


def test_section_notes_say_why_there_is_nothing():
    assert section_note([], {"subgroups": []}) == NOT_CONFIGURED and "evaluation: subgroups:" in NOT_CONFIGURED
    assert section_note([], {"subgroups": ["manufacturer"]}) == NO_SUBGROUPS == section_note([], {})
    blank = [sub("a", c, "unknown", 0.8, p_holm=None) for c in ("manufacturer", "age_band")]
    assert section_note(blank, {}) == NO_METADATA.format(columns="manufacturer, age_band")
    assert section_note(_rows(), {}) is None


# -- the figure and the section -----------------------------------------------------------------


def test_forest_figure_is_an_image_and_leaves_out_what_has_no_values():
    rows = [r for r in _rows() if r["metric"] == "auroc"]
    whole = {f"run-t-{e}": v for e, v in RUNS.items()}
    one = _png(forest_figure("t", rows, whole, COLOURS), "forest")
    two = _png(forest_figure("t", rows + [{**r, "head": "mlp"} for r in rows], whole, COLOURS), "two heads")
    assert two.width > one.width
    _png(forest_figure("t", [{**r, "fold": 1} for r in rows], {}, {}), "a fold, no whole-set values, no palette")
    small = [{**r, "subgroup": "VendorD"} for r in rows if r["status"] != "ok"]
    _png(forest_figure("t", small, whole, COLOURS), "only too-small subgroups")
    assert forest_figure("t", [r for r in rows if r["status"] != "ok"], whole, COLOURS) is None  # "unknown" alone: no metadata
    assert forest_figure("t", [r for r in rows if r["column"] == "patient_sex"], whole, COLOURS) is None  # no value anywhere
    assert forest_figure("absent", rows, whole, COLOURS) is None


def _data(subgroups: list[dict], config: dict | None = None) -> ReportData:
    tasks = sorted({r["task"] for r in subgroups}) or ["t"]
    metrics = [{"task": t, "task_kind": "classification", "head": "linear", "encoder": e, "fold": None, "metric": "auroc",
                "primary": True, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "confidence": 0.95, "run_id": f"run-{t}-{e}",
                "feature_set_id": f"fs-{e}", "n": 300, "n_pos": 75, "n_neg": 225, "method": "percentile", "status": "ok",
                "threshold": None} for t in tasks for e, v in RUNS.items()]  # fmt: skip
    record = EvaluationRecord(eval_id="e", created_at="2025-01-01T00:00:00+00:00", config=config or {"confidence": 0.95}, runs=[])
    return ReportData(record, "file:///s", metrics, [], [], [], subgroups=subgroups)


def test_section_and_page_from_hand_made_rows(tmp_path):
    task = "t<b>"
    rows = _rows(task)
    section = subgroups_section(_data(rows), COLOURS, number=10)
    assert section["number"] == 10 and section["note"] is None and section["conf"] == 95
    (shown,) = section["tasks"]
    assert shown["figure"].name == "subgroups-t-b" and shown["metric"] == "AUROC" and shown["none"] is None
    assert shown["unknown"] == "t<b>: no test image has a value in patient_sex (left out)."
    fragment = subgroups_section_html(section)
    assert fragment.startswith(f"<h2>10. {SECTION}</h2>") and "<h3>t&lt;b&gt;</h3>" in fragment and "t<b>" not in fragment
    assert _cell(fragment, task=task, head="linear", fold="", encoder="a", column="manufacturer", subgroup="VendorC",
                 what="p_holm") == "0.003 (3)"  # fmt: skip
    assert _cell(fragment, task=task, head="linear", fold="", encoder="b", column="manufacturer", subgroup="VendorC",
                 what="diff") == "-0.200 [-0.300, -0.100]"  # fmt: skip
    assert fragment.count("<tr>") == 3  # the header and the two VendorC rows
    text = render_report(_data(rows), tmp_path).read_text(encoding="utf-8")
    figure_on_page(text, tmp_path, "subgroups-t-b")
    n, from_comparisons = headings_from_comparisons(text)
    assert from_comparisons == [f"{n + k}. {h}" for k, h in enumerate(SECTIONS_AFTER_COMPARISONS)]
    quiet = subgroups_section_html(subgroups_section(_data([r for r in rows if r["subgroup"] != "VendorC"]), COLOURS, 1))
    assert "t&lt;b&gt;: no subgroup differs from the rest after Holm correction." in quiet and "<table" not in quiet


@pytest.mark.parametrize(("config", "note"), [({"subgroups": []}, NOT_CONFIGURED), ({}, NO_SUBGROUPS)])
def test_without_rows_the_section_is_a_note(tmp_path, config, note):
    section = subgroups_section(_data([], config), COLOURS, number=6)
    assert section["note"] == note and section["tasks"] == []
    fragment = subgroups_section_html(section)
    assert fragment.startswith(f"<h2>6. {SECTION}</h2>") and html.escape(note) in fragment and "<img" not in fragment
    text = render_report(_data([], config), tmp_path).read_text(encoding="utf-8")
    heads = [h.split(". ", 1) for h in re.findall(r"<h2>(.*?)</h2>", text)]
    assert [h[1] for h in heads[-3:]] == ["Label efficiency", SECTION, "Embedding health"]
    assert [int(h[0]) for h in heads] == list(range(1, len(heads) + 1))
    assert not list((tmp_path / "figures").glob("subgroups-*"))


# -- through a store ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """(store, eval id) of two hand-written classification runs whose evaluation's subgroups table
    is then replaced by the hand-made rows (what the report reads back)."""
    from evaluation.artifacts import EvalConfig, evaluate
    from featurestore.layout.records import RunRecord, predictions_table, write_run
    from featurestore.store import Store
    from featurestore.tasks import get_kind

    store = Store.open(str(tmp_path_factory.mktemp("subgroups-report") / "store"), create=True)
    rng = np.random.default_rng(0)
    ids = [f"img{k:03d}" for k in range(200)]
    y = (rng.random(200) < 0.3).astype(float)
    for enc, shift in (("a", 1.5), ("b", 0.8)):
        rec = RunRecord(run_id=f"run-t-{enc}", task="cardiomegaly-cls", task_kind="classification", head="linear",
                        feature_set_id=f"fs-{enc}", encoder=enc, config={"head": "linear"}, created_at=datetime.now(UTC).isoformat(),
                        seed=0)  # fmt: skip
        score = 1 / (1 + np.exp(-(y * shift + rng.normal(0, 1, 200))))
        write_run(store, rec, b"", predictions_table(get_kind("classification"), ids, score, y))
    ev = evaluate(store, None, EvalConfig(resamples=200, seed=1))
    rows = [{**r, "eval_id": ev.eval_id, "task": "cardiomegaly-cls", "run_id": f"run-t-{r['encoder']}"}
            for r in _rows() if r["metric"] == "auroc"]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=SUBGROUPS_SCHEMA), Path(store.loc.path("metrics", ev.eval_id, "subgroups.parquet")))
    return store, ev.eval_id


def test_the_page_shows_the_evaluations_subgroup_rows(evaluated, tmp_path):
    from evaluation.report import write_report

    store, eval_id = evaluated
    text = write_report(store, tmp_path, eval_id, overlays=0).read_text(encoding="utf-8")
    rows = pq.read_table(Path(store.loc.path("metrics", eval_id, "subgroups.parquet"))).to_pylist()
    listed = [r for r in rows if r["p_holm"] is not None and r["p_holm"] < 0.05]
    assert len(listed) == 2
    for r in listed:
        key = dict(task=r["task"], head=r["head"], fold="", encoder=r["encoder"], column=r["column"], subgroup=r["subgroup"])
        assert _cell(text, **key, what="value") == f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        assert _cell(text, **key, what="diff") == f"{r['diff_vs_rest']:.3f} [{r['diff_ci_low']:.3f}, {r['diff_ci_high']:.3f}]"
        p = "<0.001" if r["p_holm"] < 0.001 else f"{r['p_holm']:.3f}"
        assert _cell(text, **key, what="p_holm") == f"{p} ({r['family_size']})"
    _png((tmp_path / "figures" / "subgroups-cardiomegaly-cls.png").read_bytes(), "store figure")
    assert '<figure id="fig-subgroups-cardiomegaly-cls">' in text
    heads = re.findall(r"<h2>(.*?)</h2>", text)
    n = int(next(h for h in heads if h.endswith(SECTION)).split(".")[0])
    assert heads[-3:] == [f"{n - 1}. Label efficiency", f"{n}. {SECTION}", f"{n + 1}. Embedding health"]


def test_an_evaluation_without_subgroup_rows_gets_a_note(evaluated, tmp_path):
    from evaluation.report import write_report
    from featurestore.store import Store

    store, eval_id = evaluated
    shutil.copytree(store.loc.path(), tmp_path / "store")
    (tmp_path / "store" / "metrics" / eval_id / "subgroups.parquet").unlink()
    text = write_report(Store.open(str(tmp_path / "store")), tmp_path / "r", eval_id, overlays=0).read_text(encoding="utf-8")
    section = text[text.index(f"{SECTION}</h2>") : text.index("Embedding health</h2>")]
    assert html.escape(NO_SUBGROUPS) in section and "<table" not in section
    assert not list((tmp_path / "r" / "figures").glob("subgroups-*"))
