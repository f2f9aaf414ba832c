"""Everything a report reads from the store, in one pass, into plain rows and arrays.

Reads go through the evaluation's typed record and the run functions of
:mod:`featurestore.layout.records` (the health versions through :mod:`featurestore.health`)
only, so the report follows the store's format wherever it moves. What comes out,
:class:`ReportData`, holds no store handle: the figures and the page are drawn from it alone
(and tests can build one by hand).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluation.artifacts import read_evaluation
from evaluation.report.health import HealthData, gather_health
from evaluation.report.masks import Overlay, OverlayImage, best_mask_run, pick_images
from featurestore.errors import RadstoreError
from featurestore.layout.records import EvaluationRecord, open_masks, read_test_predictions
from featurestore.tasks import TASK_KINDS

if TYPE_CHECKING:
    from featurestore.store import Store


@dataclass(frozen=True)
class ReportData:
    """One evaluation version as the report shows it: its record, its tables as row dicts,
    the test predictions of its global runs, the overlay images of its mask tasks and the
    embedding health of the feature sets its runs read."""

    record: EvaluationRecord
    store_url: str
    metrics: list[dict]
    comparisons: list[dict]
    per_image: list[dict]
    folds: list[dict]
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # run_id -> (label, prediction)
    overlays: dict[str, Overlay] = field(default_factory=dict)  # mask task -> its overlay images
    provenance: list[dict] = field(default_factory=list)  # per run: what it trained on (provenance_rows)
    cohort_hash: str | None = None  # the images every run used, by content (provenance_rows)
    previous: str | None = None  # the evaluation before this one, and what changed since it
    changes: str | None = None
    health: list[HealthData] = field(default_factory=list)  # latest health version of each feature set checked
    # Classification runs' calibration and operating points (evaluation.decisions); empty for an
    # evaluation written before they were computed.
    calibration: list[dict] = field(default_factory=list)
    reliability: list[dict] = field(default_factory=list)
    operating_points: list[dict] = field(default_factory=list)
    # Label-efficiency curves (evaluation.label_efficiency: runs on subsets of the training split)
    # and subgroup results (evaluation.subgroups); empty where the evaluation has none.
    label_efficiency: list[dict] = field(default_factory=list)
    label_efficiency_comparisons: list[dict] = field(default_factory=list)
    subgroups: list[dict] = field(default_factory=list)

    @property
    def eval_id(self) -> str:
        """The id of the evaluation version this report shows."""
        return self.record.eval_id

    @property
    def runs(self) -> list[dict]:
        """The runs the evaluation read, as listed in its record (a copy: changing it changes nothing)."""
        return list(self.record.runs)

    @property
    def config(self) -> dict[str, Any]:
        """The configuration the evaluation ran with (a copy of the record's)."""
        return dict(self.record.config)

    def threshold(self, run_id: str) -> float:
        """The probability above which a pixel of ``run_id`` counted as predicted: the run's
        own (chosen on its validation split) unless the evaluation forced one."""
        forced = self.config.get("threshold")
        if forced is not None:
            return float(forced)
        for m in self.metrics:
            if m["run_id"] == run_id and m.get("threshold") is not None:
                return float(m["threshold"])
        return 0.5


def gather(store: Store, eval_id: str | None = None, overlays: int = 3) -> ReportData:
    """Read evaluation ``eval_id`` (default: the latest), the test predictions of its runs of
    global kinds and, for each mask task, ``overlays`` images of its best run with their masks."""
    record, tables = read_evaluation(store, eval_id)
    rows = {name: tables[name].to_pylist() for name in ("metrics", "comparisons", "per_image", "folds")}
    decisions = {name: tables[name].to_pylist() if name in tables else [] for name in ("calibration", "reliability", "operating_points")}
    breakdowns = {
        name: tables[name].to_pylist() if name in tables else []
        for name in ("label_efficiency", "label_efficiency_comparisons", "subgroups")
    }
    predictions = {}
    for run in record.runs:
        kind = TASK_KINDS.get(run["task_kind"])
        if kind is not None and not kind.dense:
            predictions[run["run_id"]] = read_global_predictions(store, run["run_id"], kind.prediction)
    drawn: dict[str, Overlay] = {}
    uris: dict[str, str] | None = None
    for task in sorted({r["task"] for r in rows["per_image"]}):
        best = best_mask_run(task, rows["per_image"])
        picks = pick_images(best[1], overlays) if best else []
        if not picks:
            continue
        if uris is None:
            images = store.images()
            uris = dict(zip(images.column("image_id").to_pylist(), images.column("uri").to_pylist()))
        drawn[task] = overlay_data(store, task, *best, picks, uris)
    provenance, cohort = provenance_rows(store, record)
    previous, changes = changes_since(store, record.eval_id)
    health = gather_health(store, {r["feature_set_id"]: r["encoder"] for r in record.runs})  # skips what it cannot read
    return ReportData(record, store.url, **rows, predictions=predictions, overlays=drawn, provenance=provenance,
                      cohort_hash=cohort, previous=previous, changes=changes, health=health, **decisions, **breakdowns)  # fmt: skip


def provenance_rows(store: Store, record: EvaluationRecord) -> tuple[list[dict], str | None]:
    """Per run of the evaluation: weights fingerprint, data hash, images per split and a hash of
    its labels (or masks); and one hash of every image the runs used, by the sha256 of its
    bytes (the cohort). Runs trained before lineage was recorded show what their record has."""
    import hashlib

    from featurestore.layout.records import read_lineage, read_run

    images = store.images()
    sha = dict(zip(images.column("image_id").to_pylist(), images.column("sha256").to_pylist()))
    rows, used = [], set()
    for run in record.runs:
        rec = read_run(store, run["run_id"])
        lineage = read_lineage(store, rec.run_id)
        fingerprint = record.feature_sets.get(rec.feature_set_id, {}).get("weights_fingerprint")
        row = {"run_id": rec.run_id, "task": rec.task, "head": rec.head, "encoder": run["encoder"], "fold": rec.fold,
               "weights_fingerprint": fingerprint, "data_hash": rec.data_hash, **{s: rec.splits.get(s) for s in ("train", "val", "test")},
               "labels_hash": None}  # fmt: skip
        if lineage is not None:
            cols = [lineage.column(c).to_pylist() for c in ("image_id", "label", "mask_sha256")]
            row["labels_hash"] = hashlib.sha256("\n".join(f"{i}\t{v}\t{m}" for i, v, m in zip(*cols)).encode()).hexdigest()[:12]
            used.update(cols[0])
        rows.append(row)
    cohort = None
    if used:
        cohort = hashlib.sha256("\n".join(f"{i}\t{sha.get(i)}" for i in sorted(used)).encode()).hexdigest()[:12]
    return rows, cohort


def changes_since(store: Store, eval_id: str) -> tuple[str | None, str | None]:
    """(the evaluation before ``eval_id``, ``radstore diff`` of the two as text), or (None, None)
    for the store's first; a diff that cannot be made says why instead."""
    from evaluation.diff import diff, format_diff, previous_eval_id

    previous = previous_eval_id(store, eval_id)
    if previous is None:
        return None, None
    try:
        return previous, format_diff(diff(store, previous, eval_id))
    except Exception as e:  # noqa: BLE001 - the report must render even when the diff cannot be made
        return previous, f"no diff: {type(e).__name__}: {e}"


def read_global_predictions(store: Store, run_id: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(true label, prediction ``column``) of a run's test split, as float arrays."""
    table, _ = read_test_predictions(store, run_id)
    return (table.column("label").to_numpy().astype(float), table.column(column).to_numpy().astype(float))


def overlay_data(store: Store, task: str, run_id: str, rows: list[dict], picks: list[tuple[str, dict]], uris: dict[str, str]) -> Overlay:
    """The masks of the picked images of one run (only those rows are read) and each image
    re-read as its encoder saw it."""
    prob, true = open_masks(store, run_id)
    images = []
    for name, r in picks:
        p = np.asarray(prob[r["mask_row"]], dtype=np.float32)
        t = np.asarray(true[r["mask_row"]])
        img = aligned_image(store, r["image_id"], uris, r["feature_set_id"], 16 * p.shape[-1])
        images.append(OverlayImage(name, r, p, t, img))
    first = rows[0]
    mean = float(np.nanmean([r["dice"] for r in rows]))
    return Overlay(task, run_id, first["encoder"], first["head"], first["fold"], mean, images)


def aligned_image(store: Store, image_id: str, uris: dict[str, str], feature_set_id: str, size: int) -> np.ndarray | None:
    """The image as the encoder saw it (the feature set's resize/crop), so the masks, which went
    through the same geometry, lie on the right pixels; None when it cannot be read."""
    import torch
    import torch.nn.functional as F

    from featurestore.encoders.preprocess import Preprocessing
    from featurestore.imageio import read_image

    if image_id not in uris:
        return None
    try:
        pixels = read_image(uris[image_id]).pixels
    except (RadstoreError, OSError):  # a moved or unreadable file must not sink the whole report
        return None
    t = torch.from_numpy(np.ascontiguousarray(pixels))[None, None]
    try:
        spec = store.feature_set(feature_set_id).spec.preprocessing
        t = Preprocessing.from_json(spec).geometry(t, "bilinear")
    except (RadstoreError, TypeError, ValueError):  # no feature set / no preprocessing recorded: plain resize
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[0, 0].clamp(0, 1).numpy()
