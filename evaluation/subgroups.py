"""Every metric of every run per subgroup of its test images, and each subgroup against the rest.

A model that is good on average can fail one scanner, one view or one age group; this is where
that shows. Pure (no I/O): the same runs, attributes and configuration give the same rows.

Subgroups are the values of a column of the image index (:data:`SUBGROUP_COLUMNS`: the DICOM
attributes ingest records, :mod:`featurestore.attributes`, and the file's format, bit depth and
photometric interpretation), or a value derived from one (``age_band`` from ``patient_age``,
:func:`age_band`). An image with no value (a PNG without a manufacturer, an image the index
does not hold) is in the subgroup :data:`UNKNOWN`, reported like any other: images without
metadata are a group whose performance can differ too, and leaving them out would silently
shrink "the rest" every other subgroup is compared with.

Per run, column, subgroup and metric of the run's task kind (one row each):

- the value with its interval, by the main table's machinery (:func:`evaluation.compute.interval`:
  logit-DeLong for AUROC, BCa otherwise under ``method="auto"``), resampled within each class
  where the main table stratifies (class-based metrics, mask kinds);
- ``status`` ``"too-small"`` and no number (value, interval, test all null) for a subgroup of fewer
  than ``min_images`` images (default :data:`MIN_SUBGROUP_IMAGES`), fewer than
  ``cfg.min_class_count`` of either class for a class-based metric, or no image the metric reads
  (Dice on non-empty masks in a subgroup without one); ``"ok"`` otherwise;
- the difference from the rest of the test images (``diff_vs_rest`` = subgroup - rest), by a
  bootstrap that resamples the two disjoint groups independently (each within its classes where
  the main table stratifies): its percentile interval and a two-sided p-value, how often the
  resampled difference crosses zero (as :func:`evaluation.compare.paired_bootstrap`). Each
  group's resampled values are first spread around its value by ``k / (k - 1)``, ``k`` its
  smallest stratum: resampling k values estimates their variance (k - 1) / k too small, and that
  variance is itself estimated from k values. The square root of the factor, the paired test's
  widening, left the test liberal at 12-18 positives a group (AUROC 5.4-6.6% rejections of a
  true null at 5%, AP 6.0-7.3%); this one gives AUROC 4.4-5.8%, AP 5.0-6.6% (bootstrap AP
  underestimates its variance more than AUROC does). The interval and the p-value come from the
  same spread differences, so the interval excludes 0 when p < 1 - confidence (up to the
  p-value's +1). No test when either side is too small;
- ``p_holm``: Holm's correction over the distinct hypotheses among the subgroups of one (run,
  column, metric) that have a test (``family_size``): with two subgroups, "A vs the rest" and
  "B vs the rest" compare the same two sets of images and are one hypothesis. Measured
  family-wise error without an effect (three or four groups of 40-150 images, 2,000 resamples):
  AUROC 3.0-5.8%, AP 4.6-8.7% (400-800 simulated data sets each, AUROC 0.7-0.9).

A side's resamples are drawn from a seed derived from ``cfg.seed``, the column and the
subgroups it holds, so every run sharing its images and classes shares them (comparisons of
encoders on a subgroup are then on the same resamples), and the two sides of a test are
independent.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from evaluation import metrics as M
from evaluation.bootstrap import CI, resample_indices
from evaluation.compare import adjust
from evaluation.compute import RunData, interval
from evaluation.config import EvalConfig
from featurestore.attributes import text_value
from featurestore.errors import RadstoreError
from featurestore.tasks import TaskKind, get_kind

#: The subgroup of images that have no value in a column.
UNKNOWN = "unknown"
#: A subgroup with fewer test images than this reports no number (``status="too-small"``).
MIN_SUBGROUP_IMAGES = EvalConfig.min_subgroup_images
OK, TOO_SMALL = "ok", "too-small"

#: Age bands (years): (upper bound, exclusive; label). Under 40, 40-59, 60-74, 75 and over:
#: the adult ranges chest radiograph studies report, the last two where cardiomegaly and
#: degenerative findings become common.
AGE_BANDS: tuple[tuple[float, str], ...] = ((40.0, "<40"), (60.0, "40-59"), (75.0, "60-74"), (math.inf, "75+"))


def age_band(age: float | None) -> str | None:
    """The :data:`AGE_BANDS` label of an age in years; None for a missing or non-finite age."""
    if age is None:
        return None
    a = float(age)
    if not math.isfinite(a):
        return None
    return next(label for upper, label in AGE_BANDS if a < upper)


@dataclass(frozen=True)
class SubgroupColumn:
    """A column subgroups can be formed on: the image-index column it reads and how a value
    becomes a subgroup label (None: :data:`UNKNOWN`)."""

    name: str
    source: str
    label: Callable[[Any], str | None] = text_value


#: Every column subgroups can be formed on, by name.
SUBGROUP_COLUMNS: dict[str, SubgroupColumn] = {
    c.name: c
    for c in (
        SubgroupColumn("manufacturer", "manufacturer"),
        SubgroupColumn("view_position", "view_position"),
        SubgroupColumn("patient_sex", "patient_sex"),
        SubgroupColumn("age_band", "patient_age", age_band),
        SubgroupColumn("bits_stored", "bits_stored"),
        SubgroupColumn("photometric", "photometric"),
        SubgroupColumn("format", "format"),
    )
}

Attributes = pa.Table | Mapping[str, Mapping[str, Any]]


def _lookup(attributes: Attributes, sources: Iterable[str]) -> dict[str, dict[str, Any]]:
    """source column -> {image_id: value}, from the image index (a table with ``image_id``) or
    a mapping image_id -> {column: value}; a column the table lacks is all unknown."""
    sources = sorted(set(sources))
    if isinstance(attributes, pa.Table):
        ids = attributes.column("image_id").to_pylist()
        return {s: dict(zip(ids, attributes.column(s).to_pylist())) if s in attributes.column_names else {} for s in sources}
    return {s: {i: a.get(s) for i, a in attributes.items()} for s in sources}


def subgroup_labels(image_ids: Sequence[str], column: str, values: Mapping[str, Any]) -> np.ndarray:
    """The subgroup of each image (object array; :data:`UNKNOWN` where it has no value), given
    ``values`` image_id -> the column's source value."""
    col = SUBGROUP_COLUMNS[column]
    out = np.empty(len(image_ids), dtype=object)
    for k, i in enumerate(image_ids):
        out[k] = col.label(values.get(i)) or UNKNOWN
    return out


def _check_columns(columns: Sequence[str]) -> None:
    unknown = [c for c in columns if c not in SUBGROUP_COLUMNS]
    if unknown:
        raise RadstoreError(f"unknown subgroup column(s) {', '.join(unknown)}; choose from {', '.join(SUBGROUP_COLUMNS)}")


def _seed(seed: int, key: tuple[str, ...]) -> int:
    """A resample seed for (seed, key): distinct keys draw independent resamples."""
    digest = hashlib.sha256("\x1f".join([str(seed), *key]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class _Side:
    """One side of a test: a set of a run's test images named by its column and the subgroups it
    holds (a subgroup, or all the others: with two subgroups the rest of one is the other, and
    is resampled and computed once)."""

    key: tuple[str, ...]  # (column, subgroup labels...)
    pos: np.ndarray  # positions in the run
    counts: tuple[int, int] | None  # (positives, negatives): labels, or non-empty / empty masks
    strata: np.ndarray | None

    @property
    def n(self) -> int:
        return len(self.pos)

    def smallest_stratum(self) -> int:
        return self.n if self.strata is None else int(np.unique(self.strata, return_counts=True)[1].min())


def _side(column: str, members: Iterable[str], labels: np.ndarray, classes: np.ndarray | None, stratify: bool) -> _Side:
    members = sorted(members)
    pos = np.flatnonzero(np.isin(labels, members))
    counts = M.class_counts(classes[pos]) if classes is not None and len(pos) else None
    return _Side((column, *members), pos, counts, classes[pos] if stratify and counts is not None else None)


class _Resampled:
    """One run's resamples and resampled metric values on each side, each drawn or computed once.

    The index matrices live in ``shared``, which the caller keeps for every run with the same
    test images and classes: the key fixes a side's images and strata, the seed comes from it.
    """

    def __init__(self, arrays: dict[str, np.ndarray], cfg: EvalConfig, shared: dict[tuple[str, ...], np.ndarray]):
        self.arrays, self.cfg, self.shared = arrays, cfg, shared
        self.memo: dict[tuple, Any] = {}

    def idx(self, side: _Side) -> np.ndarray:
        if side.key not in self.shared:
            self.shared[side.key] = resample_indices(side.n, self.cfg.resamples, _seed(self.cfg.seed, side.key), strata=side.strata)
        return self.shared[side.key]

    def args(self, m: M.Metric, side: _Side) -> tuple[np.ndarray, ...]:
        return tuple(self.arrays[name][side.pos] for name in m.inputs)

    def plain(self, m: M.Metric, side: _Side) -> float:
        key = ("plain", m.name, side.key)
        if key not in self.memo:
            self.memo[key] = float(m.fn(*self.args(m, side), M.identity_index(side.n))[0])
        return self.memo[key]

    def boot(self, m: M.Metric, side: _Side) -> np.ndarray:
        key = ("boot", m.name, side.key)
        if key not in self.memo:
            self.memo[key] = m.fn(*self.args(m, side), self.idx(side))
        return self.memo[key]

    def interval(self, m: M.Metric, side: _Side) -> CI:
        """The main table's interval (:func:`evaluation.compute.interval`) on the side's resamples,
        its resampled values taken from :meth:`boot` rather than computed again."""
        idx = self.idx(side)

        def fn(*given: np.ndarray) -> np.ndarray:
            return self.boot(m, side) if given[-1] is idx else m.fn(*given)

        return interval(replace(m, fn=fn), self.args(m, side), self.cfg, idx)


def _too_small(m: M.Metric, side: _Side, cfg: EvalConfig, min_images: int) -> bool:
    """Too few images, or too few of a class for a class-based metric (see the module docstring)."""
    if side.n < min_images:
        return True
    return m.class_based and (side.counts is None or min(side.counts) < cfg.min_class_count)


def _widened(boot: np.ndarray, value: float, k: int) -> np.ndarray:
    """Resampled values spread around ``value`` by k / (k - 1) (module docstring)."""
    return value + k / (k - 1) * (boot - value) if k > 1 else boot


def _difference(m: M.Metric, rs: _Resampled, a: _Side, b: _Side) -> tuple[float, float, float, float] | None:
    """(a - b, interval low, high, two-sided p) by independent bootstraps of the two sides;
    None when the difference is undefined on every resample."""
    va, vb = rs.plain(m, a), rs.plain(m, b)
    if not (math.isfinite(va) and math.isfinite(vb)):
        return None
    d = _widened(rs.boot(m, a), va, a.smallest_stratum()) - _widened(rs.boot(m, b), vb, b.smallest_stratum())
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return None
    alpha = (1 - rs.cfg.confidence) / 2
    low, high = np.quantile(d, [alpha, 1 - alpha])
    below, above = (np.sum(d <= 0) + 1) / (len(d) + 1), (np.sum(d >= 0) + 1) / (len(d) + 1)
    return va - vb, float(low), float(high), float(min(1.0, 2 * min(below, above)))


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


_NUMBERS = ("value", "ci_low", "ci_high", "method", "diff_vs_rest", "diff_ci_low", "diff_ci_high", "p", "p_holm")


def _row(m: M.Metric, rs: _Resampled, side: _Side, rest: _Side, min_images: int) -> dict[str, Any]:
    """One subgroup's row for one metric (without the run's and the column's fields)."""
    row: dict[str, Any] = {"subgroup": side.key[1], "n": side.n, "n_rest": rest.n, "status": TOO_SMALL,
                           "n_pos": side.counts[0] if side.counts else None,
                           "n_neg": side.counts[1] if side.counts else None, **dict.fromkeys(_NUMBERS)}  # fmt: skip
    if _too_small(m, side, rs.cfg, min_images):
        return row
    ci = rs.interval(m, side)
    if not math.isfinite(ci.value):  # no image the metric reads (e.g. no non-empty mask)
        return row
    row.update(status=OK, value=ci.value, ci_low=_finite(ci.low), ci_high=_finite(ci.high), method=ci.method)
    if rest.n and not _too_small(m, rest, rs.cfg, min_images):
        diff = _difference(m, rs, side, rest)
        if diff is not None:
            row.update(zip(("diff_vs_rest", "diff_ci_low", "diff_ci_high", "p"), diff))
    return row


def _holm(rows: list[dict], sides: list[tuple[_Side, _Side]]) -> None:
    """Holm over the distinct hypotheses among ``rows`` with a test: a subgroup against the rest,
    where "A vs the rest" and "B vs the rest" of a column with two subgroups are one hypothesis
    (the same two sets of images), counted once and given the same corrected p."""
    family: dict[frozenset, float] = {}
    for row, (side, rest) in zip(rows, sides):
        if row["p"] is not None:
            family.setdefault(frozenset((side.key, rest.key)), row["p"])
    holm = dict(zip(family, adjust(np.array(list(family.values())), "holm"))) if family else {}
    for row, (side, rest) in zip(rows, sides):
        row["family_size"] = len(family)
        if row["p"] is not None:
            row["p_holm"] = float(holm[frozenset((side.key, rest.key))])


def _order(labels: np.ndarray) -> list[str]:
    """Subgroup labels in display order: sorted, :data:`UNKNOWN` last."""
    present = set(labels.tolist())
    return sorted(present - {UNKNOWN}) + ([UNKNOWN] if UNKNOWN in present else [])


def _column_sides(column: str, labels: np.ndarray, classes: np.ndarray | None, stratify: bool) -> list[tuple[_Side, _Side]]:
    """(the subgroup, the rest) of every subgroup of a column."""
    groups = _order(labels)
    return [
        (_side(column, [g], labels, classes, stratify), _side(column, [o for o in groups if o != g], labels, classes, stratify))
        for g in groups
    ]


def _classes(r: RunData, spec: TaskKind) -> tuple[np.ndarray | None, bool]:
    """A run's classes (labels; "has a true mask" for mask kinds; None where the targets are not
    0/1, as in regression), and whether the main table resamples within them for this kind."""
    classes = np.asarray(r.arrays["nonempty" if spec.dense else "y"])
    if M.class_counts(classes) is None:
        return None, False
    return classes, spec.dense or any(M.get_metric(m).class_based for m in spec.metrics)


def _run_order(r: RunData) -> tuple[str, ...]:
    """Runs of one task and fold next to each other: they share test images, classes and resamples."""
    return tuple(str(r.meta.get(k)) for k in ("task", "fold", "head", "encoder", "feature_set_id", "run_id"))


def subgroup_rows(
    runs: Sequence[RunData],
    attributes: Attributes,
    columns: Sequence[str],
    cfg: EvalConfig,
    eval_id: str,
    created_at: datetime,
    *,
    min_images: int = MIN_SUBGROUP_IMAGES,
) -> list[dict]:
    """The rows of :data:`featurestore.layout.schemas.SUBGROUPS_SCHEMA` for ``runs`` (their test
    predictions) split by each of ``columns`` (names of :data:`SUBGROUP_COLUMNS`).

    ``attributes``: the image index (``Store.images()``, or any table with ``image_id`` and the
    columns' source columns) or a mapping image_id -> {source column: value}. Raises
    RadstoreError for a column that is not in :data:`SUBGROUP_COLUMNS`. See the module docstring
    for what each row holds.
    """
    _check_columns(columns)
    if min_images < 1:
        raise RadstoreError(f"min_images must be >= 1, got {min_images}")
    values = _lookup(attributes, (SUBGROUP_COLUMNS[c].source for c in columns))
    rows: list[dict] = []
    shared: dict[tuple[str, ...], np.ndarray] = {}
    signature: tuple | None = None
    for r in sorted(runs, key=_run_order):
        spec = get_kind(r.meta["task_kind"])
        classes, stratify = _classes(r, spec)
        if (now := (tuple(r.image_ids), None if classes is None else classes.tobytes(), stratify)) != signature:
            shared.clear()
            signature = now
        rs = _Resampled(r.arrays, cfg, shared)
        base = {
            "eval_id": eval_id, "created_at": created_at, "task": r.meta["task"], "task_kind": spec.name,
            "head": r.meta["head"], "fold": r.meta.get("fold"), "encoder": r.meta["encoder"],
            "feature_set_id": r.meta["feature_set_id"], "run_id": r.meta["run_id"],
        }  # fmt: skip
        for column in columns:
            labels = subgroup_labels(list(r.image_ids), column, values[SUBGROUP_COLUMNS[column].source])
            sides = _column_sides(column, labels, classes, stratify)
            for metric in spec.metrics:
                m = M.get_metric(metric)
                metric_rows = [_row(m, rs, side, rest, min_images) for side, rest in sides]
                _holm(metric_rows, sides)
                rows.extend({**base, "metric": metric, "column": column, **row} for row in metric_rows)
    return rows
