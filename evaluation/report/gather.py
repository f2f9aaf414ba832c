"""Everything a report reads from the store, in one pass, into plain rows and arrays.

Reads go through the evaluation's typed record and the run functions of
:mod:`featurestore.layout.records` only, so the report follows the store's format wherever
it moves. What comes out, :class:`ReportData`, holds no store handle: the figures and the page
are drawn from it alone (and tests can build one by hand).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluation.artifacts import read_evaluation
from evaluation.report.masks import Overlay, OverlayImage, best_mask_run, pick_images
from featurestore.errors import RadstoreError
from featurestore.layout.records import EvaluationRecord, open_masks, read_test_predictions
from featurestore.tasks import TASK_KINDS

if TYPE_CHECKING:
    from featurestore.store import Store


@dataclass(frozen=True)
class ReportData:
    """One evaluation version as the report shows it: its record, its tables as row dicts,
    the test predictions of its global runs and the overlay images of its mask tasks."""

    record: EvaluationRecord
    store_url: str
    metrics: list[dict]
    comparisons: list[dict]
    per_image: list[dict]
    folds: list[dict]
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # run_id -> (label, prediction)
    overlays: dict[str, Overlay] = field(default_factory=dict)  # mask task -> its overlay images

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
    return ReportData(record, store.url, **rows, predictions=predictions, overlays=drawn)


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
