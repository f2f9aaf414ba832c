"""Formatting and ordering shared by the report's figures, tables and page.

Everything here takes plain values or the row dicts of the evaluation tables, so the same
rules (how a number is rounded, in which order tasks appear, what "best" means) hold in every
figure and table of a report.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

from featurestore.tasks import TASK_KINDS, kind_order

# Okabe & Ito's colour-blind-safe palette (black last: it is the identity/chance line colour too).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def finite(x: Any) -> bool:
    """Whether ``x`` is a real number that is neither NaN nor infinite (None and strings are not)."""
    return isinstance(x, numbers.Real) and math.isfinite(x)


def fmt(x: Any, digits: int = 3) -> str:
    """A metric for people: fixed decimals, "n/a" for an undefined (None/NaN) value."""
    if not isinstance(x, numbers.Real) or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.{digits}f}"


def fmt_ci(value: Any, low: Any, high: Any) -> str:
    """The results-table cell: ``value [low, high]`` (the rounding of ``results_table``), or
    "n/a" alone for an undefined value."""
    return "n/a" if fmt(value) == "n/a" else f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def fmt_row(r: dict) -> str:
    """A metric row's cell: ``value [low, high]``, or why there is no number (too few of a
    class: the counts say how few)."""
    if r.get("status") == "insufficient":
        from evaluation.artifacts import insufficient_text

        return insufficient_text(r)
    return fmt_ci(r["value"], r["ci_low"], r["ci_high"])


def fmt_counts(r: dict) -> str:
    """``n`` of a metric row, with its class counts where the task has classes."""
    return str(r["n"]) if r.get("n_pos") is None else f"{r['n']} ({r['n_pos']}/{r['n_neg']})"


def fmt_p(p: Any) -> str:
    """A p-value: three decimals, "<0.001" below that (more digits suggest a precision a
    bootstrap of a few hundred resamples does not have)."""
    if not finite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def metric_display(metric: str) -> str:
    """How a metric is named for people (AUROC, R², ...); an unregistered metric keeps its id,
    so a report of an evaluation made by a plugin this process lacks still renders."""
    from evaluation.metrics import get_metric

    try:
        return get_metric(metric).display
    except KeyError:
        return metric


def higher_is_better(metric: str) -> bool:
    """The direction of "best" in the results table (higher when the metric is unknown)."""
    from evaluation.metrics import get_metric

    try:
        return get_metric(metric).higher_is_better
    except KeyError:
        return True


def kind_metrics(kind: str) -> tuple[str, ...]:
    """The metrics a task kind reports, headline first (empty for an unregistered kind)."""
    return TASK_KINDS[kind].metrics if kind in TASK_KINDS else ()


def fold_text(fold: Any) -> str:
    """How a fold is written in labels: empty for the held-out split (fold None)."""
    return "" if fold is None else f"fold {fold}"


def fold_key(fold: Any) -> int:
    """Sort key putting the held-out split (fold None) before the folds."""
    return -1 if fold is None else fold


def label(encoder: str, head: str | None = None, fold: Any = None) -> str:
    """The name of a series in axis labels and titles, "encoder / head / fold k", leaving out the
    parts not given."""
    from featurestore.encoders.registry import display_name

    return " / ".join(x for x in (display_name(encoder) if encoder else encoder, head, fold_text(fold)) if x)


def slug(*parts: Any) -> str:
    """A file-name-safe name for a figure (task names may hold any character)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(str(p) for p in parts if p not in (None, ""))).strip("-") or "x"


def colours(encoders: Iterable[str]) -> dict[str, str]:
    """One colour per encoder for the whole report, so a colour means the same thing everywhere."""
    return {e: PALETTE[i % len(PALETTE)] for i, e in enumerate(sorted(set(encoders)))}


def task_order(rows: Iterable[Mapping]) -> list[str]:
    """Tasks of the rows by their kind's display order (featurestore.tasks), then by name."""
    kind = {r["task"]: r["task_kind"] for r in rows}
    return sorted(kind, key=lambda t: (kind_order(kind[t]), t))


def row_key(r: Mapping) -> tuple:
    """Sort key of a metrics row within a task: encoder, head, then the held-out split before the folds."""
    return (r["encoder"], r["head"], fold_key(r.get("fold")))


def headline_rows(metrics: list[dict]) -> list[dict]:
    """The primary-metric rows the study's table shows: the held-out split (fold None) of each
    task, or, for a task evaluated only by cross-validation, each of its folds."""
    prim = [m for m in metrics if m["primary"]]
    has_split = {m["task"] for m in prim if m["fold"] is None}
    return [m for m in prim if m["fold"] is None or m["task"] not in has_split]


def primary_metrics(metrics: list[dict]) -> dict[str, str]:
    """Task -> its headline metric, in task order, as the evaluation recorded it (so a kind
    this process does not know still gets its headline)."""
    primary = {m["task"]: m["metric"] for m in metrics if m["primary"]}
    return {t: primary[t] for t in task_order(metrics) if t in primary}


def runs_by_split(runs: Iterable[Mapping], task: str) -> dict[Any, list[Mapping]]:
    """A task's runs per split: None (the held-out split) first, then each cross-validation fold."""
    runs = [r for r in runs if r["task"] == task]
    folds = sorted({r.get("fold") for r in runs}, key=fold_key)
    return {f: sorted((r for r in runs if r.get("fold") == f), key=lambda r: (r["encoder"], r["head"])) for f in folds}


def undefined_comparison(r: Mapping) -> bool:
    """A comparison of two undefined metrics (AUROC on a one-class split): its stored p (1.0)
    carries no information, so it is reported as n/a."""
    return r["test"] != "nemenyi" and not (finite(r["value_a"]) and finite(r["value_b"]))
