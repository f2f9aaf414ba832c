"""The store's on-disk format, in one place: every path, every table's schema, the shard
byte format and the typed records of runs and evaluations.

Modules: :mod:`.paths` (names), :mod:`.schemas` (tables), :mod:`.shard` (shard objects),
:mod:`.identity` (ids and versions), :mod:`.records` (run.json, eval.json and their files).

A store is one directory or one object-store prefix::

    STORE/
      store.json                          {"format": "radstore", "format_version": 1, ...}
      images/part-<time>-<uuid>.parquet   image index (IMAGES_SCHEMA), append-only parts
      ingest_errors/part-*.parquet        failures of ingest runs (INGEST_ERRORS_SCHEMA)
      features/<feature_set_id>/
        feature_set.json                  FeatureSetSpec + format_version + created_at
        patches.zarr/                     zarr v3 group; array ``patches`` [image, channel, y, x]
                                          chunk = 1 image, shard = S images (S = shard_images;
                                          S = 1 means plain chunks, no sharding codec)
        cls/shard-<k:08d>-<uuid>.parquet  one file per committed shard (CLS_SCHEMA)
        committed/upto-<parts:08d>-<uuid>.parquet
                                          derived, rebuildable: (image_id, row, shard) of every
                                          row of the cls parts it names (COMMITTED_SCHEMA)
        rejects/part-*.parquet            images an extraction could not embed (REJECTS_SCHEMA)
        claims/shard-<k:08d>.json         the claim of shard k: created once, atomically, by its
                                          one writer ({"owner", "host", "pid", "claimed_at"})
        .tmp/<host>-<pid>-<token>.partial local stores only: files being written, renamed into
                                          place when whole (a dead writer's are swept)
        .lock                             local stores only: serialises the array's growth
        health/<health_id>/               one embedding-health version (featurestore.health):
          summary.parquet, spectrum.parquet, ...  (HEALTH_TABLES)
          health.json                     the record (records.HealthRecord); written last: the
                                          version exists from here on
      aliases/<feature_set_id>.json       an id that resolves to an existing feature set, created
                                          once, atomically: {"feature_set_id", "alias_of", "reason",
                                          "fingerprint_scheme", "weights_fingerprint",
                                          "legacy_fingerprint", "created_at", "created_by"}
                                          (see "Weights fingerprints" below)
      runs/<run_id>/                      one trained head (records.RunRecord), immutable
        run.json                          the record; written last: the run exists from here on
        head.pt                           the head's state dict (torch.save)
        predictions.parquet               test split (predictions_schema(): the kind's column); global
                                          kinds also the validation split (split = 'val')
        lineage.parquet                   every image of every split with its label or mask sha256
                                          (LINEAGE_SCHEMA); its hash is the record's data_hash
        masks.zarr, targets.zarr          segmentation: predicted probabilities (float16) and
                                          true masks (uint8), [image, y, x], rows as predictions
      published.json                      {"eval_id", "previous", "published_at"}: the evaluation the
                                          study published last (what its regression alerts compare with)
      metrics/<eval_id>/                  one evaluation version (records.EvaluationRecord)
        metrics.parquet, comparisons.parquet, per_image.parquet, folds.parquet  (EVAL_TABLES)
        eval.json                         the record; written last: the version exists from here on

Weights fingerprints. ``feature_set.json``'s spec records ``weights_fingerprint`` and, from
the ``files-v1`` scheme on, ``fingerprint_scheme``: ``files-v1`` hashes the tensors as stored in
the checkpoint files (names, dtypes, shapes, bytes), so a library that renames its modules
cannot change a feature set id; a spec without the key was fingerprinted from the module's
in-memory ``state_dict()`` (``module-state-dict``). When an extraction's new id has no feature
set but the same spec under the encoder's legacy fingerprint has one, that feature set is used
and ``aliases/<new id>.json`` is created naming it (``alias_of``); the store then resolves the
new id to it without recomputing the legacy fingerprint. No existing file is rewritten.

Commit protocol (why readers never see torn rows):

1. A writer claims a fresh shard index ``k`` by creating ``claims/shard-<k>.json`` with an
   atomic create-if-absent: ``O_EXCL``-style (a hard link of a whole temporary file) on local
   disk, a conditional PUT (``If-None-Match: *``) on S3. Exactly one writer succeeds; a loser
   tries ``k + 1``. It then grows the array to at least ``(k + 1) * S`` rows, never shrinking it:
   under ``.lock`` locally, by a compare-and-swap of the array's ``zarr.json`` (``If-Match`` on
   its ETag) on S3. Rows ``k*S .. k*S+S-1`` now belong to that writer alone, whichever process,
   flow run or machine it runs in. The array grows only for shards claimed at commit time, so
   a planner that dies grows nothing, and a writer that dies leaves at most the shards it had
   claimed as unused rows (``radstore store gc`` reports them).
2. It writes the shard's patch grids in one call, as one object written atomically (temp
   file + rename locally, one PUT on object stores): directly for the plain shard layout
   below, through zarr otherwise (zarr's stores write each object the same way).
3. It then writes ``cls/shard-<k>-<uuid>.parquet`` atomically. **A row exists when, and only
   when, its cls part exists.** A crash between 2 and 3 leaves an orphan shard no reader
   sees; a rerun plans those images again into a new shard.
4. The array's fill value is NaN, so a read of a chunk that was never written is caught
   (zarr 3.1 cannot make a missing chunk an error; radstore checks the first value of each
   image it reads).

If two writers ever commit the same image_id (e.g. two backfills racing), readers keep the
row from the lowest shard index: the first committed.

Shard objects. With the default codecs (no compressor), a shard is the plain concatenation of
its images' grids (C-order, little-endian, image ``k*S + i`` at byte ``i * image_bytes``)
followed by the zarr v3 sharding index: ``S`` pairs of little-endian uint64 (offset, nbytes),
``2**64-1`` twice for an image never written, then the CRC32C of those ``16*S`` bytes (4 bytes,
little-endian). That is exactly what zarr's ``sharding_indexed`` codec with ``bytes`` inner
codecs and ``[bytes, crc32c]`` index codecs at ``index_location: end`` writes and reads, so
radstore writes such a shard with one buffered write of the grids it already holds (no
per-chunk encoding; ``ShardIndex.dense(...).to_bytes()``) and reads a run of images with one
ranged read (``ShardIndex.parse``); zarr, zarrs, tensorstore and xarray read the same bytes. Any
other codec configuration (``codec="zstd"``, ``sharded=False``) goes through zarr itself.

The committed index. Listing the committed ids means reading every cls part, which grows with
the number of parts (a million images are ~15k parts). The extraction planner therefore writes
``committed/upto-<n>-<uuid>.parquet``, the (image_id, row, shard) rows of the ``n`` parts it
read (their file names in the schema metadata, ``radstore.parts``), and later readers take the
newest such file plus the parts it does not name (benchmarks/README.md has the figures). It is
a cache, never the truth: a row still exists when, and only when, its cls part exists; an
index naming a part that is no longer listed is ignored, and deleting ``committed/`` only
makes the next listing slower. Older index files are removed once a newer one is written.
"""

from __future__ import annotations

from featurestore.layout.identity import (
    MAX_SHARD_IMAGES,
    SHARD_MULTIPLE,
    TARGET_SHARD_BYTES,
    check_format_version,
    choose_shard_images,
    feature_set_id,
)
from featurestore.layout.paths import (
    ALIASES_DIR,
    CLAIMS_DIR,
    CLS_DIR,
    COMMITTED_DIR,
    DIMENSION_NAMES,
    EVAL_JSON,
    FEATURE_SET_JSON,
    FEATURES_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEAD_WEIGHTS,
    HEALTH_DIR,
    HEALTH_JSON,
    IMAGES_DIR,
    INGEST_ERRORS_DIR,
    LOCK_FILE,
    MASK_DIMENSIONS,
    METRICS_DIR,
    PARTIAL_SUFFIX,
    PATCHES_ARRAY,
    PATCHES_GROUP,
    PREDICTED_MASKS,
    PREDICTIONS,
    REJECTS_DIR,
    RUN_JSON,
    RUNS_DIR,
    STORE_JSON,
    TARGET_MASKS,
    TMP_DIR,
    alias_name,
    claim_name,
    cls_part_name,
    committed_index_name,
    committed_index_parts,
    new_run_id,
    part_name,
    partial_name,
    partial_owner,
    rejects_part_name,
    shard_of_part,
    table_file,
)
from featurestore.layout.schemas import (
    CLS_RESERVED,
    COMMITTED_PARTS_KEY,
    COMMITTED_SCHEMA,
    COMPARISONS_SCHEMA,
    EVAL_TABLES,
    EVALUATIONS_VIEW_SCHEMA,
    FEATURES_VIEW_SCHEMA,
    FOLDS_SCHEMA,
    HEALTH_SCHEMA,
    HEALTH_TABLES,
    HEALTH_VERSIONS_VIEW_SCHEMA,
    IMAGES_DICTIONARY_COLUMNS,
    IMAGES_SCHEMA,
    INGEST_ERRORS_SCHEMA,
    LINEAGE_SCHEMA,
    MASK_PREDICTION_COLUMNS,
    METRICS_SCHEMA,
    PER_IMAGE_SCHEMA,
    REJECTS_SCHEMA,
    RUNS_VIEW_SCHEMA,
    cls_schema,
    keep_first,
    now_ms,
    predictions_schema,
)
from featurestore.layout.shard import ShardIndex

__all__ = [
    "ALIASES_DIR",
    "CLAIMS_DIR",
    "CLS_DIR",
    "CLS_RESERVED",
    "COMMITTED_DIR",
    "COMMITTED_PARTS_KEY",
    "COMMITTED_SCHEMA",
    "COMPARISONS_SCHEMA",
    "DIMENSION_NAMES",
    "EVALUATIONS_VIEW_SCHEMA",
    "EVAL_JSON",
    "EVAL_TABLES",
    "FEATURES_DIR",
    "FEATURES_VIEW_SCHEMA",
    "FEATURE_SET_JSON",
    "FOLDS_SCHEMA",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HEAD_WEIGHTS",
    "HEALTH_DIR",
    "HEALTH_JSON",
    "HEALTH_SCHEMA",
    "HEALTH_TABLES",
    "HEALTH_VERSIONS_VIEW_SCHEMA",
    "IMAGES_DICTIONARY_COLUMNS",
    "IMAGES_DIR",
    "IMAGES_SCHEMA",
    "INGEST_ERRORS_DIR",
    "INGEST_ERRORS_SCHEMA",
    "LINEAGE_SCHEMA",
    "LOCK_FILE",
    "MASK_DIMENSIONS",
    "MASK_PREDICTION_COLUMNS",
    "MAX_SHARD_IMAGES",
    "METRICS_DIR",
    "METRICS_SCHEMA",
    "PARTIAL_SUFFIX",
    "PATCHES_ARRAY",
    "PATCHES_GROUP",
    "PER_IMAGE_SCHEMA",
    "PREDICTED_MASKS",
    "PREDICTIONS",
    "REJECTS_DIR",
    "REJECTS_SCHEMA",
    "RUNS_DIR",
    "RUNS_VIEW_SCHEMA",
    "RUN_JSON",
    "SHARD_MULTIPLE",
    "STORE_JSON",
    "ShardIndex",
    "TARGET_MASKS",
    "TARGET_SHARD_BYTES",
    "TMP_DIR",
    "alias_name",
    "check_format_version",
    "claim_name",
    "choose_shard_images",
    "cls_part_name",
    "cls_schema",
    "committed_index_name",
    "committed_index_parts",
    "feature_set_id",
    "keep_first",
    "new_run_id",
    "now_ms",
    "part_name",
    "partial_name",
    "partial_owner",
    "predictions_schema",
    "rejects_part_name",
    "shard_of_part",
    "table_file",
]
