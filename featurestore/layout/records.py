"""Typed records of a run (``runs/<id>/run.json``), an evaluation (``metrics/<id>/eval.json``) and
an embedding-health version (``features/<id>/health/<health_id>/health.json``), and the only code
that reads or writes their directories.

A record is written last, atomically: a run or evaluation exists once its json exists, and a
crash before that leaves a directory no listing returns. Records read as mappings too
(``rec["task"]``), with exactly the keys of their json file, so SQL views, reports and older
callers see the stored document.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.errors import RadstoreError
from featurestore.layout import paths as P
from featurestore.layout.schemas import EVAL_TABLES, HEALTH_TABLES, LINEAGE_SCHEMA

if TYPE_CHECKING:
    import zarr

    from featurestore.featureset.reader import FeatureSet
    from featurestore.storage import Location
    from featurestore.store import Store
    from featurestore.tasks import TaskKind


def code_version() -> str:
    """radstore's version plus the git commit when running from a checkout: recorded in every
    run and evaluation, so a changed number can be traced to the code that made it."""
    from featurestore import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


class _JsonRecord(Mapping):
    """A frozen record that is also the read-only mapping of its json document."""

    #: Fields added after the record's first version: written only when set.
    _OMIT_UNSET: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for name in self._OMIT_UNSET:  # fields added later: absent until set, so old records round-trip
            if d.get(name) in (None, [], {}):
                d.pop(name, None)
        return {**self.extra, **d}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]):
        """Build from a json document; keys this version does not know are kept in ``extra``
        (and written back unchanged), missing optional keys take their defaults."""
        names = {f.name for f in fields(cls)} - {"extra"}
        missing = [f.name for f in fields(cls) if f.name in cls._REQUIRED and f.name not in d]
        if missing:
            raise RadstoreError(f"{cls.__name__}: the stored json lacks {', '.join(missing)}; it was not written by radstore")
        return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


# -- runs --------------------------------------------------------------------------------------


#: Training config fields that change how a run is computed, not what it computes: ignored when
#: runs are matched for reuse (heads.runs.find_run) or compared (evaluation.diff).
RUNTIME_ONLY = ("progress", "device")


@dataclass(frozen=True, eq=False)
class RunRecord(_JsonRecord):
    """One trained head: what it was trained on and how, and its test-set summary."""

    run_id: str
    task: str
    task_kind: str
    head: str
    feature_set_id: str
    encoder: str
    config: dict[str, Any]
    created_at: str
    seed: int | None = None
    fold: int | None = None
    code_version: str = ""
    best_epoch: int = -1
    epochs: int = 0
    curve: list[dict] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    # Chosen on the validation split, e.g. {"threshold": 0.37} for a mask kind (absent: 0.5).
    operating_points: dict[str, float] = field(default_factory=dict)
    # Positives / negatives of the validation split (labels; images with non-empty / empty masks).
    val_counts: dict[str, int] = field(default_factory=dict)
    # e.g. {"validation_warning": "..."} when the validation split cannot support selection.
    warnings: dict[str, str] = field(default_factory=dict)
    # Whether the head is a linear read-out of the embedding (the probes): what the positive
    # control's expected values hold (evaluation.controls); None for runs that predate it.
    linear_readout: bool | None = None
    # The content hash of lineage.parquet and the feature set (heads.lineage.data_hash): a run is
    # reused only for the same data; None for runs that predate it (never reused).
    data_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _REQUIRED: ClassVar[tuple[str, ...]] = ("run_id", "task", "task_kind", "head", "feature_set_id", "encoder", "config", "created_at")
    _OMIT_UNSET: ClassVar[tuple[str, ...]] = ("linear_readout", "data_hash")

    @property
    def created(self) -> datetime:
        """``created_at`` as a datetime."""
        return datetime.fromisoformat(self.created_at)


def predictions_table(kind: TaskKind, ids: list[str], pred: np.ndarray, y: np.ndarray, threshold: float = 0.5,
                      val: tuple[list[str], np.ndarray, np.ndarray] | None = None) -> pa.Table:  # fmt: skip
    """A run's ``predictions.parquet``: the kind's prediction column and the label for a global
    kind; for a mask kind the row of each image in the mask arrays and its pixel counts
    (predicted pixels: probability above the run's ``threshold``). ``val`` (ids, predictions,
    labels) of a global kind adds the validation split's rows (``split`` "val"): what the
    evaluation chooses operating points and fits calibration on, never on the test split."""
    cols: dict[str, Any] = {"image_id": ids, "split": ["test"] * len(ids)}
    if kind.dense:
        cols["mask_row"] = np.arange(len(ids))
        cols["positive_pixels"] = (y > 0.5).sum((1, 2)).astype(np.int64)
        cols["predicted_pixels"] = (pred > threshold).sum((1, 2)).astype(np.int64)
        return pa.table(cols)
    cols[kind.prediction] = pred.astype(np.float64)
    cols["label"] = y.astype(np.float64)
    if val is not None:
        vids, vpred, vy = val
        cols = {"image_id": [*ids, *vids], "split": [*cols["split"], *["val"] * len(vids)],
                kind.prediction: np.concatenate([cols[kind.prediction], np.asarray(vpred, np.float64)]),
                "label": np.concatenate([cols["label"], np.asarray(vy, np.float64)])}  # fmt: skip
    return pa.table(cols)


def write_run(store: Store, rec: RunRecord, head: bytes, predictions: pa.Table, masks: tuple[np.ndarray, np.ndarray] | None = None,
              lineage: pa.Table | None = None) -> str:  # fmt: skip
    """Write a run's files, then its run.json (the commit). ``masks``: (predicted probabilities,
    true masks) [image, y, x] of a mask kind, rows in the order of ``predictions``; ``lineage``:
    the images it used (LINEAGE_SCHEMA)."""
    import zarr

    loc = store.loc.child(P.RUNS_DIR, rec.run_id)
    loc.write_atomic(head, P.HEAD_WEIGHTS)
    if masks is not None:
        pred, truth = masks
        for name, data, dtype, fill in ((P.PREDICTED_MASKS, pred, "float16", np.nan), (P.TARGET_MASKS, truth, "uint8", 0)):
            arr = zarr.create_array(loc.zarr_store(name), shape=data.shape, chunks=(1, *data.shape[1:]), dtype=dtype,
                                    compressors=None, dimension_names=P.MASK_DIMENSIONS, fill_value=fill)  # fmt: skip
            arr[:] = data.astype(dtype)
    loc.write_parquet(predictions, P.PREDICTIONS)
    if lineage is not None:
        loc.write_parquet(lineage.cast(LINEAGE_SCHEMA), P.LINEAGE)
    loc.write_json(rec.to_json(), P.RUN_JSON)  # last: the run exists from here on
    return rec.run_id


def _committed(store: Store, directory: str, marker: str) -> list[dict]:
    """The ``marker`` json of every ``directory/<id>/`` that has one."""
    out = []
    for p in store.loc.list(directory):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if store.loc.exists(directory, name, marker):
            out.append(store.loc.read_json(directory, name, marker))
    return out


def list_runs(store: Store) -> list[RunRecord]:
    """Every committed run of the store, in no particular order."""
    return [RunRecord.from_json(d) for d in _committed(store, P.RUNS_DIR, P.RUN_JSON)]


def read_run(store: Store, run_id: str) -> RunRecord:
    """The record of ``run_id``; raises RadstoreError when the store has no committed run of that id."""
    if not store.loc.exists(P.RUNS_DIR, run_id, P.RUN_JSON):
        raise RadstoreError(f"no run {run_id!r} in {store.url} (runs are listed by `radstore runs`)")
    return RunRecord.from_json(store.loc.read_json(P.RUNS_DIR, run_id, P.RUN_JSON))


def lineage_path(store: Store, run_id: str) -> str | None:
    """Full path of a run's ``lineage.parquet``; None for a run written before lineage."""
    return store.loc.path(P.RUNS_DIR, run_id, P.LINEAGE) if store.loc.exists(P.RUNS_DIR, run_id, P.LINEAGE) else None


def read_lineage(store: Store, run_id: str) -> pa.Table | None:
    """The images ``run_id`` used (LINEAGE_SCHEMA), or None for a run written before lineage."""
    path = lineage_path(store, run_id)
    return None if path is None else store.loc.read_parquet([path], schema=LINEAGE_SCHEMA)


def predictions_path(store: Store, run_id: str) -> str:
    """Full path of a run's ``predictions.parquet`` (for scans that read it straight from the store)."""
    return store.loc.path(P.RUNS_DIR, run_id, P.PREDICTIONS)


def runs_root(store: Store) -> str:
    """The directory every run lives under (its name is the ``run_id`` partition)."""
    return store.loc.path(P.RUNS_DIR)


def read_predictions(store: Store, run_id: str) -> pa.Table:
    """Every row of a run's ``predictions.parquet``, all splits."""
    return store.loc.read_parquet([predictions_path(store, run_id)])


def read_test_predictions(store: Store, run_id: str) -> tuple[pa.Table, str]:
    """(test-split rows of predictions.parquet, sha256 of the file's bytes), from one read."""
    t, sha = read_hashed_predictions(store, run_id)
    return t.filter(pa.compute.equal(t.column("split"), "test")), sha


def read_hashed_predictions(store: Store, run_id: str) -> tuple[pa.Table, str]:
    """(every row of predictions.parquet: test and, where the run kept them, validation; sha256
    of the file's bytes), from one read."""
    raw = store.loc.read_bytes(P.RUNS_DIR, run_id, P.PREDICTIONS)
    return pq.read_table(pa.BufferReader(raw)), hashlib.sha256(raw).hexdigest()


def open_masks(store: Store, run_id: str) -> tuple[zarr.Array, zarr.Array]:
    """(predicted probabilities, true masks) of a mask run, as lazily read zarr arrays."""
    import zarr

    loc = store.loc.child(P.RUNS_DIR, run_id)
    return (zarr.open_array(loc.zarr_store(P.PREDICTED_MASKS, read_only=True)),
            zarr.open_array(loc.zarr_store(P.TARGET_MASKS, read_only=True)))  # fmt: skip


# -- evaluations -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EvaluationRecord(_JsonRecord):
    """One evaluation version: every input it read (runs with their predictions' hashes,
    feature sets, code and store versions) and the configuration it used."""

    eval_id: str
    created_at: str
    config: dict[str, Any]
    runs: list[dict]
    eval_version: int = 1
    code_version: str = ""
    radstore_version: str = ""
    store_format_version: int | None = None
    feature_sets: dict[str, dict] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    #: The positive control's checks (evaluation.controls.ControlCheck as json), one per checked
    #: metric of each ``planted`` run: value, interval, expected value, status.
    controls: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    _REQUIRED: ClassVar[tuple[str, ...]] = ("eval_id", "created_at", "config", "runs")
    _OMIT_UNSET: ClassVar[tuple[str, ...]] = ("controls",)

    @property
    def created(self) -> datetime:
        """``created_at`` as a datetime."""
        return datetime.fromisoformat(self.created_at)


def read_published(store: Store) -> str | None:
    """The evaluation the study published last (``published.json``), or None before the first."""
    return store.loc.read_json(P.PUBLISHED_JSON)["eval_id"] if store.loc.exists(P.PUBLISHED_JSON) else None


def write_published(store: Store, eval_id: str) -> None:
    """Record ``eval_id`` as the study's latest published evaluation (atomically replaced)."""
    from datetime import UTC, datetime

    store.loc.write_json({"eval_id": eval_id, "previous": read_published(store), "published_at": datetime.now(UTC).isoformat()},
                         P.PUBLISHED_JSON)  # fmt: skip


def evaluation_exists(store: Store, eval_id: str) -> bool:
    """Whether evaluation ``eval_id`` is committed (its ``eval.json`` exists)."""
    return store.loc.exists(P.METRICS_DIR, eval_id, P.EVAL_JSON)


def evaluation_path(store: Store, eval_id: str) -> str:
    """The directory of evaluation ``eval_id``, committed or not."""
    return store.loc.path(P.METRICS_DIR, eval_id)


def write_evaluation(store: Store, rec: EvaluationRecord, tables: Mapping[str, pa.Table]) -> str:
    """Write every table of EVAL_TABLES, then eval.json (the commit); returns the directory."""
    return _write_version(store.loc.child(P.METRICS_DIR, rec.eval_id), EVAL_TABLES, tables, rec, P.EVAL_JSON)


def _write_version(loc: Location, schemas: Mapping[str, pa.Schema], tables: Mapping[str, pa.Table], rec: _JsonRecord,
                   record_file: str) -> str:  # fmt: skip
    """Every table of ``schemas`` under ``loc``, then the record (the commit); returns the directory."""
    for name, schema in schemas.items():
        loc.write_parquet(tables[name].cast(schema), P.table_file(name))
    loc.write_json(rec.to_json(), record_file)  # last: the version exists from here on
    return loc.path()


def list_evaluations(store: Store) -> list[EvaluationRecord]:
    """Every committed evaluation, oldest first."""
    recs = [EvaluationRecord.from_json(d) for d in _committed(store, P.METRICS_DIR, P.EVAL_JSON)]
    return sorted(recs, key=lambda m: (m.created_at, m.eval_id))


def read_evaluation_record(store: Store, eval_id: str) -> EvaluationRecord:
    """The record of ``eval_id``; raises RadstoreError when the store has no committed evaluation of
    that id."""
    if not evaluation_exists(store, eval_id):
        raise RadstoreError(f"no evaluation {eval_id!r} in {store.url} (radstore query --store ... 'select * from evaluations')")
    return EvaluationRecord.from_json(store.loc.read_json(P.METRICS_DIR, eval_id, P.EVAL_JSON))


def evaluation_table_paths(store: Store, eval_ids: list[str], name: str) -> list[str]:
    """Where table ``name`` of each evaluation lives (for lazy scans); an evaluation written before
    the table existed has none and is left out (it reads as no rows)."""
    out = []
    for e in eval_ids:
        if name in _FIRST_EVAL_TABLES or store.loc.exists(P.METRICS_DIR, e, P.table_file(name)):
            out.append(store.loc.path(P.METRICS_DIR, e, P.table_file(name)))
    return out


#: The tables every evaluation version has had from the start (the others may be missing in old versions).
_FIRST_EVAL_TABLES = ("metrics", "comparisons", "per_image", "folds")


def read_evaluation_tables(store: Store, eval_id: str) -> dict[str, pa.Table]:
    """Every table of EVAL_TABLES of one evaluation, read with its declared schema."""
    return {name: store.loc.read_parquet(evaluation_table_paths(store, [eval_id], name), schema=schema)
            for name, schema in EVAL_TABLES.items()}  # fmt: skip


# -- embedding health ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HealthRecord(_JsonRecord):
    """One embedding-health version of a feature set (:mod:`featurestore.health`): what it read
    (``inputs``: the committed cls parts' digest, the images' splits, the controls), how
    (``config``), what it flagged, and the cls parts it read, from which the next version's drift
    measurement tells the new rows."""

    health_id: str
    feature_set_id: str
    encoder: str
    created_at: str
    config: dict[str, Any]
    inputs: dict[str, Any]
    images: int
    sampled: int
    watermark: str | None = None  # newest extracted_at among the rows it read (ISO); None: no rows
    previous: str | None = None  # the version before it (its drift rows are carried over)
    parts: list[str] = field(default_factory=list)  # the cls parts it read: the next version's new rows are the others
    flags: list[str] = field(default_factory=list)
    health_version: int = 1
    code_version: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    _REQUIRED: ClassVar[tuple[str, ...]] = ("health_id", "feature_set_id", "encoder", "created_at", "config", "inputs", "images", "sampled")

    @property
    def created(self) -> datetime:
        """``created_at`` as a datetime."""
        return datetime.fromisoformat(self.created_at)


def health_exists(fs: FeatureSet, health_id: str) -> bool:
    """Whether health version ``health_id`` of ``fs`` is committed (its ``health.json`` exists)."""
    return fs.loc.exists(P.HEALTH_DIR, health_id, P.HEALTH_JSON)


def write_health(fs: FeatureSet, rec: HealthRecord, tables: Mapping[str, pa.Table]) -> str:
    """Write every table of HEALTH_TABLES, then health.json (the commit); returns the directory."""
    return _write_version(fs.loc.child(P.HEALTH_DIR, rec.health_id), HEALTH_TABLES, tables, rec, P.HEALTH_JSON)


def list_health(fs: FeatureSet) -> list[HealthRecord]:
    """Every committed health version of ``fs``, oldest first."""
    out = []
    for p in fs.loc.list(P.HEALTH_DIR):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if fs.loc.exists(P.HEALTH_DIR, name, P.HEALTH_JSON):
            out.append(HealthRecord.from_json(fs.loc.read_json(P.HEALTH_DIR, name, P.HEALTH_JSON)))
    return sorted(out, key=lambda r: (r.created_at, r.health_id))


def health_table_paths(fs: FeatureSet, health_ids: list[str], name: str) -> list[str]:
    """Where table ``name`` of each health version of ``fs`` lives (for lazy scans)."""
    return [fs.loc.path(P.HEALTH_DIR, h, P.table_file(name)) for h in health_ids]


def read_health_tables(fs: FeatureSet, health_id: str) -> dict[str, pa.Table]:
    """Every table of HEALTH_TABLES of one health version, read with its declared schema."""
    if not health_exists(fs, health_id):
        raise RadstoreError(f"feature set {fs.id} has no health version {health_id!r} (radstore health --store ... lists them)")
    return {name: fs.loc.read_parquet(health_table_paths(fs, [health_id], name), schema=schema)
            for name, schema in HEALTH_TABLES.items()}  # fmt: skip
