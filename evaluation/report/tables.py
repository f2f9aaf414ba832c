"""The report's tables as data: header and cells with their text, CSS classes and data
attributes, in the order shown. The template turns them into HTML (and escapes every text);
nothing here builds markup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from evaluation.report.common import (
    finite,
    fmt,
    fmt_ci,
    fmt_counts,
    fmt_p,
    fmt_row,
    fold_key,
    fold_text,
    higher_is_better,
    kind_metrics,
    label,
    metric_display,
    task_order,
    undefined_comparison,
)


@dataclass(frozen=True)
class Cell:
    """One table cell: ``text`` is plain text (escaped when rendered)."""

    text: Any = ""
    cls: str = ""  # CSS classes
    data: tuple[tuple[str, Any], ...] = ()  # data-* attributes, in order
    bold: bool = False
    code: bool = False


@dataclass(frozen=True)
class Header:
    """A column heading: lines of text, then an optional smaller line (the metric)."""

    lines: tuple[str, ...]
    small: str = ""


@dataclass(frozen=True)
class Table:
    """A table of the page: its header (None: no header row), rows of cells, and the CSS class of
    the ``<table>``."""

    header: tuple[Header, ...] | None  # None: no header row
    rows: list[list[Cell]]
    cls: str = ""


def _header(*names: str) -> tuple[Header, ...]:
    return tuple(Header((n,)) for n in names)


def _num(text: Any, defined: bool = True) -> Cell:
    return Cell(text, "num" if defined else "num na")


def results_table(rows: list[dict]) -> Table:
    """Rows encoder x head, columns task (x fold); the best finite value of each column in
    bold, "best" meaning the metric's own direction (a lower MAE is better)."""
    tasks = task_order(rows)
    cols = sorted({(r["task"], r["fold"]) for r in rows}, key=lambda k: (tasks.index(k[0]), fold_key(k[1])))
    lines = sorted({(r["encoder"], r["head"]) for r in rows})
    cell = {(r["encoder"], r["head"], r["task"], r["fold"]): r for r in rows}
    metric = {(r["task"], r["fold"]): r["metric"] for r in rows}
    best = {}
    for c in cols:
        vals = [r["value"] for r in rows if (r["task"], r["fold"]) == c and finite(r["value"])]
        if vals:
            best[c] = (max if higher_is_better(metric[c]) else min)(vals)
    header = _header("encoder", "head") + tuple(
        Header((t, fold_text(f)) if f is not None else (t,), f"{metric_display(metric[(t, f)])} [CI]") for t, f in cols
    )
    body = []
    for enc, head in lines:
        row = [Cell(label(enc)), Cell(head)]
        for t, f in cols:
            r = cell.get((enc, head, t, f))
            data = (("encoder", enc), ("head", head), ("task", t), ("fold", "" if f is None else f))
            if r is None:
                row.append(Cell("—", "na", data))
                continue
            is_best = (t, f) in best and finite(r["value"]) and abs(r["value"] - best[(t, f)]) <= 1e-12
            klass = "num best" if is_best else ("num" if finite(r["value"]) else "num na")
            row.append(Cell(fmt_row(r), klass, data, bold=is_best))
        body.append(row)
    return Table(header, body, "results")


def all_metrics_table(metrics: list[dict], tasks: list[str]) -> Table:
    """Every metric of every run with its CI, grouped by task, head and split."""

    def key(m):
        order = kind_metrics(m["task_kind"])
        return (
            tasks.index(m["task"]) if m["task"] in tasks else 99,
            m["head"],
            fold_key(m["fold"]),
            order.index(m["metric"]) if m["metric"] in order else 9,
            m["encoder"],
        )

    rows = []
    for m in sorted(metrics, key=key):
        ok = finite(m["value"])
        rows.append(
            [
                Cell(m["task"]),
                Cell(m["head"]),
                Cell(fold_text(m["fold"]) or "held-out"),
                Cell(label(m["encoder"])),
                Cell(metric_display(m["metric"]) + (" (primary)" if m["primary"] else "")),
                _num(fmt(m["value"]), ok),
                _num(f"[{fmt(m['ci_low'])}, {fmt(m['ci_high'])}]" if m.get("status") != "insufficient" else "insufficient", ok),
                _num(fmt_counts(m)),
                Cell(m["method"]),
            ]
        )
    return Table(_header("task", "head", "split", "encoder", "metric", "value", "CI", "n (pos/neg)", "CI method"), rows)


def comparisons_table(comparisons: list[dict], tasks: list[str]) -> Table:
    """Every pairwise comparison with its raw and corrected p-values."""

    def key(r):
        return (
            r["test"],
            tasks.index(r["task"]) if r["task"] in tasks else 99,
            r["head"],
            fold_key(r["fold"]),
            r["metric"],
            r["encoder_a"],
            r["encoder_b"],
        )

    rows = []
    for r in sorted(comparisons, key=key):
        undef = undefined_comparison(r)
        ps = ["n/a" if undef else fmt_p(r[c]) for c in ("p", "p_bonferroni", "p_holm")]
        diff = "n/a" if undef else (fmt(r["diff"]) + ("" if not finite(r["ci_low"]) else f" [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"))
        rows.append(
            [
                Cell(r["test"]),
                Cell(r["task"]),
                Cell(r["head"]),
                Cell(fold_text(r["fold"]) or "held-out"),
                Cell(metric_display(r["metric"])),
                Cell(r["encoder_a"]),
                Cell(r["encoder_b"]),
                _num(fmt(r["value_a"])),
                _num(fmt(r["value_b"])),
                _num(diff),
                *[_num(p) for p in ps],
                _num(r["family_size"]),
                _num(r["n"]),
            ]
        )
    return Table(
        _header(
            "test",
            "task",
            "head",
            "split",
            "metric",
            "A",
            "B",
            "A value",
            "B value",
            "A − B [CI]¹",
            "p",
            "p Bonferroni",
            "p Holm",
            "family",
            "n",
        ),
        rows,
        "comparisons",
    )


def folds_table(folds: list[dict]) -> Table:
    """Per encoder across cross-validation folds: median, mean, mean rank and Friedman's test."""
    rows = []
    for f in sorted(folds, key=lambda r: (r["task"], r["head"], r["metric"], r["encoder"])):
        rows.append(
            [
                Cell(f["task"]),
                Cell(f["head"]),
                Cell(metric_display(f["metric"])),
                Cell(f["encoder"]),
                _num(f["folds"]),
                _num(fmt(f["median"])),
                _num(fmt_ci(f["mean"], f["ci_low"], f["ci_high"])),
                _num(fmt(f["mean_rank"], 2)),
                _num(fmt(f["friedman_statistic"])),
                _num(fmt_p(f["friedman_p"])),
            ]
        )
    return Table(
        _header("task", "head", "metric", "encoder", "folds", "median", "mean [t-interval]", "mean rank", "Friedman χ²", "Friedman p"), rows
    )


def runs_table(runs: list[Mapping]) -> Table:
    """The runs the evaluation read, with the hashes that tie its numbers to their predictions."""
    rows = [
        [
            Cell(r["run_id"], code=True),
            Cell(r["task"]),
            Cell(r["head"]),
            Cell(r["encoder"]),
            Cell(r["feature_set_id"], code=True),
            Cell(fold_text(r.get("fold")) or "held-out"),
            Cell(r.get("run_code_version") or ""),
            Cell((r.get("predictions_sha256") or "")[:12], code=True),
        ]
        for r in sorted(runs, key=lambda r: (r["task"], r["head"], fold_key(r.get("fold")), r["encoder"]))
    ]
    return Table(_header("run id", "task", "head", "encoder", "feature set", "split", "run code", "predictions sha256"), rows, "runs")


def provenance_table(rows: list[Mapping]) -> Table:
    """What each run trained on: the weights, the data (hash, images per split, labels hash)."""
    body = [
        [
            Cell(r["task"]),
            Cell(r["head"]),
            Cell(r["encoder"]),
            Cell(fold_text(r.get("fold")) or "held-out"),
            Cell(r.get("weights_fingerprint") or "", code=True),
            Cell(r.get("data_hash") or "not recorded", code=True),
            Cell(" / ".join(str(r.get(s) if r.get(s) is not None else "?") for s in ("train", "val", "test"))),
            Cell(r.get("labels_hash") or "", code=True),
        ]
        for r in sorted(rows, key=lambda r: (r["task"], r["head"], fold_key(r.get("fold")), r["encoder"]))
    ]
    head = _header("task", "head", "encoder", "split", "weights fingerprint", "data hash", "train / val / test", "labels hash")
    return Table(head, body, "runs")


def meta_table(record: Mapping, store_url: str, correction: str) -> Table:
    """What a reader needs to reproduce or trust the numbers: versions, configuration, store."""
    cfg = record.get("config", {})
    items = [
        ("eval_id", record.get("eval_id")),
        ("created at", record.get("created_at")),
        ("code version", record.get("code_version")),
        ("radstore version", record.get("radstore_version")),
        ("metric definitions (eval_version)", record.get("eval_version")),
        ("store", store_url),
        ("store format version", record.get("store_format_version")),
        ("bootstrap resamples", cfg.get("resamples")),
        ("seed", cfg.get("seed")),
        ("CI method", cfg.get("method")),
        ("confidence", cfg.get("confidence")),
        ("Dice of an empty true and empty predicted mask", cfg.get("empty_both")),
        ("segmentation threshold", "each run's, chosen on validation" if cfg.get("threshold") is None else cfg.get("threshold")),
        ("fewest positives and negatives for AUROC/AP", cfg.get("min_class_count")),
        ("multiple-comparison correction in the figures", correction),
        ("runs", len(record.get("runs", []))),
        ("report generated", datetime.now(UTC).replace(microsecond=0).isoformat()),
    ]
    return Table(None, [[Cell(k), Cell("" if v is None else v)] for k, v in items], "meta")
