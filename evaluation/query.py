"""SQL over a store: DuckDB views of every table radstore writes.

The views (``radstore query --store S "SQL"``; the same from Python with :func:`connect`):

============  ==================================================================================
images        one row per ingested image (``images/part-*.parquet``, first ingest wins)
features      one row per feature set: encoder, weights, grid, dims, committed images
cls           long form: feature_set_id, image_id, row, shard, cls (FLOAT[]), sha256, extracted_at
              (``features/<id>/cls/*.parquet``, first commit of an image wins)
runs          one row per training run (``runs/<run_id>/run.json``)
predictions   test-set (and, for classification and regression runs, validation-set: column
              ``split``) predictions of every run, with the run's task, head, encoder, fold
              (``runs/<run_id>/predictions.parquet``)
lineage       every image each run used: run_id, image_id, split, label or mask_sha256, with the
              run's task, head, encoder, feature set, fold, data_hash (``runs/<run_id>/lineage.parquet``)
evaluations   one row per committed evaluation version (``metrics/<eval_id>/eval.json``)
metrics       every metric row of every version (``metrics/<eval_id>/metrics.parquet``)
latest        metrics, the newest version of each (task, head, encoder, feature set, fold, metric)
comparisons   paired comparisons with raw and corrected p (``metrics/<eval_id>/comparisons.parquet``)
per_image     per-image Dice/IoU of segmentation runs; ``folds``: summaries across folds
calibration   classification runs: Brier and ECE, raw and recalibrated on validation (Platt,
              temperature), with CIs; ``reliability``: the reliability diagrams' bins
operating_points  thresholds chosen on validation (Youden, sensitivity@0.90) and the test
              sensitivity, specificity, PPV, NPV at them with CIs
health        embedding health, the newest version of each feature set, long form: scope,
              metric, value, limit, flagged (``features/<id>/health/<health_id>/summary.parquet``)
health_*      that version's other tables: ``health_spectrum``, ``health_dimensions``,
              ``health_patch_images``, ``health_norm_map``, ``health_leakage``,
              ``health_neighbours``, ``health_drift``; ``health_versions``: every version
============  ==================================================================================

Tables are scanned lazily as Arrow datasets (local disk, or object storage through fsspec),
so a query that touches one column of ``cls`` reads that column only. Only committed data
is visible: cls parts (their presence is the commit), runs and evaluations whose json
exists.

What SQL can and cannot touch: the store's files are read by pyarrow (the views above), never
by DuckDB, so the connection runs with DuckDB's external access off (:data:`SANDBOX`) and its
configuration locked (``SET``/``RESET`` cannot turn access back on). SQL can read the views and
compute anything from them (``CREATE TEMP TABLE``/``VIEW`` live in memory and vanish with the
query); it cannot open a file or URL (``read_csv``/``read_parquet``/``read_text``/``glob``/
``'file.csv'`` scans, inside the store or out), write one (``COPY ... TO``, ``EXPORT DATABASE``,
so no write into the store either), ``ATTACH`` a database file, ``INSTALL``/``LOAD`` an
extension, create persistent secrets or scan Python variables. Such statements raise a one-line
RadstoreError; exporting a result is ``--out FILE.csv|.parquet`` (:func:`write_result`, written
by radstore in Python). DuckDB's ``allowed_directories`` is deliberately left empty: it would
allow ``COPY ... TO`` into the allowed directory, i.e. into the store. The one directory DuckDB
still writes is its spill directory, moved to a private fresh directory in the system temp dir
(not ``.tmp`` under the working directory) and removed with the connection. A connection
passed to :func:`connect` is left as configured unless ``sandboxed=True``.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from featurestore import layout
from featurestore.errors import RadstoreError
from featurestore.layout.records import (
    evaluation_table_paths,
    health_table_paths,
    lineage_path,
    list_evaluations,
    list_health,
    list_runs,
    predictions_path,
    runs_root,
)
from featurestore.store import Store

#: DuckDB settings of a query connection, applied in order after the views are registered (and
#: after ``temp_directory`` is moved to a private spill directory, see :func:`sandbox`):
#: no file/network access of DuckDB's own (COPY, file functions, ATTACH, INSTALL/LOAD), no scans
#: of Python variables, no implicit extension downloads, no persistent secrets; then the
#: configuration is locked. Settings this DuckDB does not have are skipped, except the two that
#: carry the guarantee (``enable_external_access``, ``lock_configuration``).
SANDBOX: tuple[tuple[str, str], ...] = (
    ("allowed_directories", "[]"),
    ("allowed_paths", "[]"),
    ("enable_external_access", "false"),
    ("python_enable_replacements", "false"),
    ("autoinstall_known_extensions", "false"),
    ("autoload_known_extensions", "false"),
    ("allow_community_extensions", "false"),
    ("allow_unsigned_extensions", "false"),
    ("allow_persistent_secrets", "false"),
    ("allow_extension_repositories", "'forbidden'"),
    ("lock_configuration", "true"),
)
_REQUIRED = ("enable_external_access", "lock_configuration")

VIEWS = (
    "images",
    "features",
    "cls",
    "runs",
    "predictions",
    "lineage",
    "evaluations",
    "metrics",
    "latest",
    *(name for name in layout.EVAL_TABLES if name != "metrics"),
    *(("health" if name == "summary" else f"health_{name}") for name in layout.HEALTH_TABLES),
    "health_versions",
)


def _filesystem(store: Store) -> pafs.FileSystem:
    if store.loc.is_local:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(store.loc.fs))


def _dataset(store: Store, paths: list[str], schema: pa.Schema, **kw: Any) -> ds.Dataset | pa.Table:
    if not paths:
        return schema.empty_table()
    return ds.dataset(paths, schema=schema, format="parquet", filesystem=_filesystem(store), **kw)


def _features(store: Store) -> pa.Table:
    rows = []
    for fs in store.feature_sets():
        s = fs.spec
        rows.append(
            {
                "feature_set_id": fs.id,
                "encoder": s.encoder,
                "weights": str(s.labels.get("weights", "")),
                "weights_fingerprint": s.weights_fingerprint,
                "channels": s.grid[0],
                "grid_h": s.grid[1],
                "grid_w": s.grid[2],
                "global_dim": s.global_dim,
                "dtype": s.dtype,
                "shard_images": s.shard_images,
                "preprocessing": str(s.preprocessing),
            }
        )
    return pa.Table.from_pylist(rows, schema=layout.FEATURES_VIEW_SCHEMA)


def _runs(store: Store) -> pa.Table:
    names = layout.RUNS_VIEW_SCHEMA.names
    rows = [{k: r.get(k) for k in names} for r in list_runs(store)]
    for r in rows:
        r["created_at"] = datetime.fromisoformat(r["created_at"])
    return pa.Table.from_pylist(rows, schema=layout.RUNS_VIEW_SCHEMA)


def _evaluations(evals: list) -> pa.Table:
    rows = [
        {
            "eval_id": e.eval_id,
            "created_at": e.created,
            "code_version": e.code_version,
            "store_format_version": e.store_format_version,
            "runs": len(e.runs),
            "resamples": e.config["resamples"],
            "seed": e.config["seed"],
            "method": e.config["method"],
            "empty_both": e.config["empty_both"],
        }
        for e in evals
    ]
    return pa.Table.from_pylist(rows, schema=layout.EVALUATIONS_VIEW_SCHEMA)


def _health(store: Store, con: duckdb.DuckDBPyConnection) -> None:
    """Register the health views: each feature set's newest health version's tables, and every version."""
    newest: dict[str, list[str]] = {name: [] for name in layout.HEALTH_TABLES}
    rows = []
    for fs in store.feature_sets():
        recs = list_health(fs)
        for r in recs:
            rows.append({"feature_set_id": fs.id, "health_id": r.health_id, "encoder": r.encoder, "created_at": r.created,
                         "images": r.images, "sampled": r.sampled,
                         "watermark": datetime.fromisoformat(r.watermark) if r.watermark else None, "previous": r.previous,
                         "flags": list(r.flags), "code_version": r.code_version, "latest": r is recs[-1]})  # fmt: skip
        if recs:
            for name in layout.HEALTH_TABLES:
                newest[name] += health_table_paths(fs, [recs[-1].health_id], name)
    for name, schema in layout.HEALTH_TABLES.items():
        con.register("health" if name == "summary" else f"health_{name}", _dataset(store, newest[name], schema))
    con.register("health_versions", pa.Table.from_pylist(rows, schema=layout.HEALTH_VERSIONS_VIEW_SCHEMA))


def _predictions(store: Store, run_ids: list[str]) -> ds.Dataset | pa.Table:
    """All runs' predictions in one schema (score for classification, value for regression,
    mask columns for segmentation; absent columns are NULL), run_id from the directory name."""
    paths = [predictions_path(store, r) for r in run_ids]
    schema = layout.predictions_schema(with_run_id=True)
    if not paths:
        return schema.empty_table()
    part = ds.partitioning(pa.schema([("run_id", pa.string())]))
    return ds.dataset(
        paths, schema=schema, format="parquet", filesystem=_filesystem(store), partitioning=part, partition_base_dir=runs_root(store)
    )


def _lineage(store: Store, run_ids: list[str]) -> ds.Dataset | pa.Table:
    """Every run's lineage.parquet (runs that recorded one), run_id from the directory name."""
    paths = [p for r in run_ids if (p := lineage_path(store, r)) is not None]
    schema = layout.LINEAGE_SCHEMA.append(pa.field("run_id", pa.string()))
    if not paths:
        return schema.empty_table()
    part = ds.partitioning(pa.schema([("run_id", pa.string())]))
    return ds.dataset(
        paths, schema=schema, format="parquet", filesystem=_filesystem(store), partitioning=part, partition_base_dir=runs_root(store)
    )


def sandbox(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Apply :data:`SANDBOX` to ``con``: afterwards SQL reads registered tables and views only,
    and no SET/RESET can undo it. Already-registered Arrow tables and datasets keep working.

    DuckDB keeps its spill directory writable when external access is off (by default ``.tmp``
    under the working directory, which may be inside the store), so it is moved first to a
    fresh private directory in the system temp dir, removed when the connection goes away.
    """
    have = {r[0] for r in con.execute("SELECT name FROM duckdb_settings()").fetchall()}
    spill = tempfile.mkdtemp(prefix="radstore-query-")
    weakref.finalize(con, shutil.rmtree, spill, ignore_errors=True)
    try:
        con.execute("SET temp_directory = ?", [spill])
    except duckdb.Error as e:
        raise RadstoreError(f"cannot sandbox this DuckDB connection (its temp directory is in use): {e}") from None
    for name, value in SANDBOX:
        if name not in have:
            if name in _REQUIRED:
                raise RadstoreError(f"DuckDB {duckdb.__version__} lacks the setting {name}: radstore query cannot run sandboxed")
            continue
        con.execute(f"SET {name} = {value}")
    return con


def connect(
    store: Store | str, con: duckdb.DuckDBPyConnection | None = None, *, sandboxed: bool | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with every view of the store registered.

    A new connection is sandboxed (:func:`sandbox`: the views, nothing outside them, no writes);
    a connection you pass in is left as configured unless ``sandboxed=True``.
    """
    store = Store.open(store) if isinstance(store, str) else store
    sandboxed = con is None if sandboxed is None else sandboxed
    con = con or duckdb.connect()
    con.register("images", store.images())
    con.register("_features", _features(store))
    # cls: one dataset per feature set (each has its own vector width), unioned in long form.
    selects = []
    for i, fs in enumerate(store.feature_sets()):
        con.register(f"_cls_{i}", _dataset(store, fs.cls_parts(), fs.cls_schema))
        selects.append(
            f"SELECT '{fs.id}' AS feature_set_id, image_id, row, shard, CAST(cls AS FLOAT[]) AS cls, sha256, "
            f"extracted_at FROM _cls_{i} QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY row) = 1"
        )
    if not selects:
        con.register("_cls_empty", layout.cls_schema(1).empty_table())
        selects.append(
            "SELECT '' AS feature_set_id, image_id, row, shard, CAST(cls AS FLOAT[]) AS cls, sha256, extracted_at FROM _cls_empty"
        )
    con.execute("CREATE OR REPLACE VIEW cls AS " + " UNION ALL ".join(selects))
    con.execute(
        "CREATE OR REPLACE VIEW features AS SELECT f.*, coalesce(c.images, 0) AS images FROM _features f "
        "LEFT JOIN (SELECT feature_set_id, count(*) AS images FROM cls GROUP BY 1) c USING (feature_set_id)"
    )
    runs = _runs(store)
    con.register("runs", runs)
    con.register("_predictions", _predictions(store, runs.column("run_id").to_pylist()))
    con.execute(
        "CREATE OR REPLACE VIEW predictions AS SELECT p.*, r.task, r.task_kind, r.head, r.encoder, r.feature_set_id, "
        "r.fold FROM _predictions p JOIN runs r USING (run_id)"
    )
    con.register("_lineage", _lineage(store, runs.column("run_id").to_pylist()))
    con.execute(
        "CREATE OR REPLACE VIEW lineage AS SELECT l.*, r.task, r.head, r.encoder, r.feature_set_id, r.fold, r.data_hash "
        "FROM _lineage l JOIN runs r USING (run_id)"
    )
    evals = list_evaluations(store)
    con.register("evaluations", _evaluations(evals))
    for name, schema in layout.EVAL_TABLES.items():
        con.register(name, _dataset(store, evaluation_table_paths(store, [e.eval_id for e in evals], name), schema))
    con.execute(
        "CREATE OR REPLACE VIEW latest AS SELECT * FROM metrics QUALIFY row_number() OVER "
        "(PARTITION BY task, head, encoder, feature_set_id, fold, metric ORDER BY created_at DESC, eval_id DESC) = 1"
    )
    _health(store, con)
    return sandbox(con) if sandboxed else con


def _refused(e: duckdb.Error) -> bool:
    """Whether DuckDB refused ``e``'s statement because of the sandbox (not a plain SQL error)."""
    return isinstance(e, duckdb.PermissionException) or "configuration has been locked" in str(e)


def query(store: Store | str, sql: str) -> pa.Table:
    """Run SQL over the store's views in a sandboxed connection (:func:`connect`); a clear
    error names the views on failure, and a refused statement (file access, COPY, ATTACH,
    INSTALL/LOAD, SET) says so in one line."""
    con = connect(store)
    try:
        rel = con.sql(sql)
        return rel.to_arrow_table() if rel is not None else pa.table({})
    except duckdb.Error as e:
        if _refused(e):
            why = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
            raise RadstoreError(
                f"radstore query is read-only and sees only the store's tables (views: {', '.join(VIEWS)}); "
                f"COPY/ATTACH/INSTALL/LOAD/SET and file functions are refused: {why}. Use --out FILE.csv|.parquet to export."
            ) from None
        raise RadstoreError(f"query failed: {e}\nviews: {', '.join(VIEWS)} (radstore query --help)") from None
    finally:
        con.close()


def write_result(table: pa.Table, out: str) -> str:
    """Write a query result as CSV or Parquet, chosen by the file's suffix."""
    if out.endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(table, out)
    elif out.endswith(".csv"):
        import pyarrow.csv as pcsv

        nested = [f.name for f in table.schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)]
        if nested:
            raise RadstoreError(f"CSV cannot hold the vector column(s) {', '.join(nested)}; write .parquet or select scalars")
        pcsv.write_csv(table, out)
    else:
        raise RadstoreError(f"--out {out!r}: use a .csv or .parquet file name")
    return out


__all__ = ["SANDBOX", "VIEWS", "connect", "query", "sandbox", "write_result"]


# The README's example queries (tests run each of them).
EXAMPLES: dict[str, str] = {
    "best encoder per task, with its CI (latest numbers)": """
SELECT task, head, encoder, metric, round(value, 3) AS value, round(ci_low, 3) AS ci_low, round(ci_high, 3) AS ci_high, n
FROM latest WHERE "primary" AND fold IS NULL
QUALIFY row_number() OVER (PARTITION BY task ORDER BY CASE WHEN metric = 'mae' THEN -value ELSE value END DESC NULLS LAST) = 1
ORDER BY task""",
    "history of one metric across evaluation versions": """
SELECT m.created_at, m.eval_id, e.code_version, m.encoder, m.head, round(m.value, 4) AS auroc, round(m.ci_low, 4) AS ci_low,
       round(m.ci_high, 4) AS ci_high
FROM metrics m JOIN evaluations e USING (eval_id)
WHERE m.task = 'cardiomegaly-cls' AND m.metric = 'auroc' AND m.fold IS NULL
ORDER BY m.encoder, m.created_at""",
    "images where two encoders disagree most": """
WITH p AS (SELECT image_id, encoder, score, label FROM predictions
           WHERE task = 'cardiomegaly-cls' AND fold IS NULL AND split = 'test'
           QUALIFY row_number() OVER (PARTITION BY image_id, encoder ORDER BY run_id DESC) = 1)
SELECT a.image_id, a.label, round(a.score, 3) AS pixels, round(b.score, 3) AS rad_dino, round(abs(a.score - b.score), 3) AS gap
FROM p a JOIN p b USING (image_id)
WHERE a.encoder = 'pixels' AND b.encoder = 'rad-dino'
ORDER BY gap DESC LIMIT 10""",
}
