"""The schema of every table radstore writes or serves, in one place.

Stored tables (Parquet): images, ingest errors, rejects, cls parts, the committed index, a
run's predictions and an evaluation's metrics, comparisons, per-image and folds tables.
Served tables (built from json records for the SQL views): features, runs, evaluations.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UTC_MS = pa.timestamp("ms", tz="UTC")
UTC_US = pa.timestamp("us", tz="UTC")

IMAGES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("patient_id", pa.string()),
        ("split", pa.string()),
        ("uri", pa.string()),
        ("format", pa.string()),
        ("sha256", pa.string()),
        ("size_bytes", pa.int64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("bits_stored", pa.int16()),
        ("photometric", pa.string()),
        ("ingested_at", UTC_MS),
        ("manifest", pa.string()),  # the manifest it came from: training joins labels and masks there
        # where bits_stored came from (sBIT, max-value, BitsStored, 8-bit...; imageio's docstring);
        # added later: parts written without it read as null
        ("bits_rule", pa.string()),
        # Acquisition and patient attributes for subgroup analysis (featurestore.attributes): the
        # DICOM header's ViewPosition, Manufacturer, PatientSex and PatientAge (in years), or the
        # manifest's columns of these names; null where neither has them. Added later: parts
        # written without them read as null.
        ("view_position", pa.string()),
        ("manufacturer", pa.string()),
        ("patient_sex", pa.string()),
        ("patient_age", pa.float64()),
    ]
)
IMAGES_DICTIONARY_COLUMNS = ["format", "photometric", "split", "bits_rule", "view_position", "manufacturer", "patient_sex"]

INGEST_ERRORS_SCHEMA = pa.schema([("image_id", pa.string()), ("path", pa.string()), ("reason", pa.string()), ("run_at", UTC_MS)])

#: ``path`` (the path as written in the manifest; null when it had none) was added later: parts
#: written without it read with a null path (read_parquet(..., schema=REJECTS_SCHEMA)).
REJECTS_SCHEMA = pa.schema([("image_id", pa.string()), ("path", pa.string()), ("reason", pa.string()), ("time", UTC_MS)])

#: + schema metadata ``radstore.parts``: the file names of the cls parts it holds, one a line
COMMITTED_SCHEMA = pa.schema([("image_id", pa.string()), ("row", pa.int64()), ("shard", pa.int64())])
COMMITTED_PARTS_KEY = b"radstore.parts"

#: The cls part column of an int8 feature set holding each row's per-channel grid scales.
SCALES_COLUMN = "scales"
#: Columns of a cls part that are not embeddings (an extra global may not take these names).
CLS_RESERVED = ("image_id", "row", "shard", "cls", SCALES_COLUMN, "sha256", "extracted_at")


def cls_schema(global_dim: int, extra_globals: dict[str, int] | None = None, scales: int | None = None) -> pa.Schema:
    """One row per committed image; embeddings are fixed-size lists so DuckDB sees FLOAT[D].

    ``extra_globals`` adds one more vector column per entry (e.g. BiomedCLIP keeps its trunk's
    768-d [CLS] as ``cls_trunk`` beside the projected 512-d ``cls``). ``scales`` (the grid's
    channels; int8 feature sets only) adds :data:`SCALES_COLUMN`, the row's per-channel
    quantisation scales, committed with the row because the cls part is the commit point.
    """
    extras = [(name, pa.list_(pa.float32(), dim)) for name, dim in sorted((extra_globals or {}).items())]
    if scales is not None:
        extras.append((SCALES_COLUMN, pa.list_(pa.float32(), scales)))
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("row", pa.int64()),
            ("shard", pa.int64()),
            ("cls", pa.list_(pa.float32(), global_dim)),
            *extras,
            ("sha256", pa.string()),
            ("extracted_at", UTC_MS),
        ]
    )


#: A run's lineage.parquet (heads.lineage): every image it trained, validated and tested on, with
#: its split, and its label (global tasks) or its mask file's sha256 (mask tasks).
LINEAGE_SCHEMA = pa.schema([("image_id", pa.string()), ("split", pa.string()), ("label", pa.float64()), ("mask_sha256", pa.string())])

#: Columns of a segmentation run's predictions.parquet (the masks themselves are arrays).
MASK_PREDICTION_COLUMNS = {"mask_row": pa.int64(), "positive_pixels": pa.int64(), "predicted_pixels": pa.int64()}


def predictions_schema(with_run_id: bool = False) -> pa.Schema:
    """All runs' predictions in one schema: each registered global kind's prediction column
    (``score``, ``value``, ...), ``label``, and the mask columns of segmentation runs; a run
    fills its own kind's columns, the others are null. ``with_run_id``: the SQL view's form."""
    from featurestore.tasks import prediction_columns

    fields = [("image_id", pa.string()), ("split", pa.string())]
    fields += [(c, pa.float64()) for c in prediction_columns()]
    fields += [("label", pa.float64()), *MASK_PREDICTION_COLUMNS.items()]
    if with_run_id:
        fields.append(("run_id", pa.string()))
    return pa.schema(fields)


METRICS_SCHEMA = pa.schema([
    ("eval_id", pa.string()), ("created_at", UTC_MS),
    ("task", pa.string()), ("task_kind", pa.string()), ("head", pa.string()),
    ("encoder", pa.string()), ("feature_set_id", pa.string()), ("run_id", pa.string()), ("fold", pa.int32()),
    ("metric", pa.string()), ("primary", pa.bool_()), ("value", pa.float64()),
    ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("method", pa.string()), ("confidence", pa.float64()),
    ("n", pa.int64()), ("resamples", pa.int64()), ("seed", pa.int64()),
    # Class counts of the test set (positives/negatives; non-empty/empty masks; null for
    # regression), "ok" or "insufficient" (too few of a class: no value, no interval), and the
    # threshold a mask kind's probabilities were cut at. Absent (null) in evaluations written
    # before they existed.
    ("n_pos", pa.int64()), ("n_neg", pa.int64()), ("status", pa.string()), ("threshold", pa.float64()),
])  # fmt: skip
COMPARISONS_SCHEMA = pa.schema([
    ("eval_id", pa.string()), ("task", pa.string()), ("head", pa.string()), ("fold", pa.int32()),
    ("metric", pa.string()), ("test", pa.string()),
    ("encoder_a", pa.string()), ("encoder_b", pa.string()),
    ("feature_set_a", pa.string()), ("feature_set_b", pa.string()), ("run_a", pa.string()), ("run_b", pa.string()),
    ("value_a", pa.float64()), ("value_b", pa.float64()), ("diff", pa.float64()),
    ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    ("p", pa.float64()), ("p_bonferroni", pa.float64()), ("p_holm", pa.float64()), ("family_size", pa.int64()),
    ("n", pa.int64()),
])  # fmt: skip
PER_IMAGE_SCHEMA = pa.schema([
    ("eval_id", pa.string()), ("run_id", pa.string()), ("task", pa.string()), ("head", pa.string()),
    ("encoder", pa.string()), ("feature_set_id", pa.string()), ("fold", pa.int32()),
    ("image_id", pa.string()), ("mask_row", pa.int64()), ("dice", pa.float64()), ("iou", pa.float64()),
    ("true_pixels", pa.int64()), ("predicted_pixels", pa.int64()),
])  # fmt: skip
FOLDS_SCHEMA = pa.schema([
    ("eval_id", pa.string()), ("task", pa.string()), ("head", pa.string()), ("metric", pa.string()),
    ("encoder", pa.string()), ("feature_set_id", pa.string()), ("folds", pa.int64()),
    ("median", pa.float64()), ("mean", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    ("mean_rank", pa.float64()), ("friedman_statistic", pa.float64()), ("friedman_p", pa.float64()),
])  # fmt: skip
_RUN_COLUMNS = [
    ("eval_id", pa.string()), ("created_at", UTC_MS), ("task", pa.string()), ("head", pa.string()), ("fold", pa.int32()),
    ("encoder", pa.string()), ("feature_set_id", pa.string()), ("run_id", pa.string()),
]  # fmt: skip
#: Classification runs (evaluation.decisions): Brier and ECE of the test scores, raw
#: (``scaling`` none) and recalibrated on validation (platt, temperature: ``p' = sigmoid(slope *
#: logit(p) + intercept)``); ``status`` ok, no-validation or insufficient (no numbers).
CALIBRATION_SCHEMA = pa.schema([
    *_RUN_COLUMNS, ("scaling", pa.string()), ("metric", pa.string()), ("value", pa.float64()), ("ci_low", pa.float64()),
    ("ci_high", pa.float64()), ("method", pa.string()), ("n", pa.int64()), ("slope", pa.float64()), ("intercept", pa.float64()),
    ("status", pa.string()),
])  # fmt: skip
#: The reliability diagram's bins of each classification run and scaling.
RELIABILITY_SCHEMA = pa.schema([
    *_RUN_COLUMNS, ("scaling", pa.string()), ("bin", pa.int32()), ("lower", pa.float64()), ("upper", pa.float64()),
    ("count", pa.int64()), ("mean_predicted", pa.float64()), ("fraction_positive", pa.float64()),
])  # fmt: skip
#: Thresholds chosen on validation (``rule`` youden, sensitivity@0.90) and the test sensitivity,
#: specificity, PPV and NPV at them, with intervals over the test images.
OPERATING_POINTS_SCHEMA = pa.schema([
    *_RUN_COLUMNS, ("rule", pa.string()), ("threshold", pa.float64()), ("metric", pa.string()), ("value", pa.float64()),
    ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("method", pa.string()), ("n", pa.int64()), ("status", pa.string()),
])  # fmt: skip

# -- label efficiency (evaluation.label_efficiency) ---------------------------------------------
#: Runs trained on subsets of the training split (featurestore.subsets): ``regime`` fraction |
#: shots and ``size`` (the fraction, or images per class; a whole-split run is fraction 1).
_SUBSET_COLUMNS = [
    ("eval_id", pa.string()), ("created_at", UTC_MS), ("task", pa.string()), ("task_kind", pa.string()), ("head", pa.string()),
    ("fold", pa.int32()), ("regime", pa.string()), ("size", pa.float64()), ("encoder", pa.string()), ("feature_set_id", pa.string()),
]  # fmt: skip
#: One row per encoder, size and metric: the mean over seeds (``value``) with the percentile
#: interval of that mean over the test resamples, the spread over seeds (sd, min, max), and the
#: training labels used (mean over seeds; positives where labels are classes).
LABEL_EFFICIENCY_SCHEMA = pa.schema([
    *_SUBSET_COLUMNS, ("metric", pa.string()), ("primary", pa.bool_()), ("seeds", pa.int64()),
    ("value", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    ("seed_sd", pa.float64()), ("seed_min", pa.float64()), ("seed_max", pa.float64()),
    ("train_images", pa.float64()), ("train_positives", pa.float64()),
    ("confidence", pa.float64()), ("n", pa.int64()), ("resamples", pa.int64()), ("seed", pa.int64()),
    ("n_pos", pa.int64()), ("n_neg", pa.int64()), ("status", pa.string()),
])  # fmt: skip
#: One row per run (one subset seed) and metric, its interval as in the metrics table.
LABEL_EFFICIENCY_SEEDS_SCHEMA = pa.schema([
    *_SUBSET_COLUMNS, ("run_id", pa.string()), ("subset_seed", pa.int64()), ("metric", pa.string()), ("primary", pa.bool_()),
    ("value", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("method", pa.string()),
    ("confidence", pa.float64()), ("n", pa.int64()), ("resamples", pa.int64()), ("seed", pa.int64()),
    ("n_pos", pa.int64()), ("n_neg", pa.int64()), ("status", pa.string()),
    ("train_images", pa.int64()), ("train_positives", pa.int64()), ("train_pool", pa.int64()),
])  # fmt: skip
#: Encoder pairs at each size: the difference of their seed means, paired over the same test
#: resamples and the same subset seeds; Bonferroni/Holm over the pairs of one size and metric.
LABEL_EFFICIENCY_COMPARISONS_SCHEMA = pa.schema([
    ("eval_id", pa.string()), ("task", pa.string()), ("head", pa.string()), ("fold", pa.int32()),
    ("regime", pa.string()), ("size", pa.float64()), ("metric", pa.string()), ("test", pa.string()),
    ("encoder_a", pa.string()), ("encoder_b", pa.string()), ("feature_set_a", pa.string()), ("feature_set_b", pa.string()),
    ("seeds", pa.int64()), ("value_a", pa.float64()), ("value_b", pa.float64()), ("diff", pa.float64()),
    ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    ("p", pa.float64()), ("p_bonferroni", pa.float64()), ("p_holm", pa.float64()), ("family_size", pa.int64()),
    ("wins_a", pa.int64()), ("wins_b", pa.int64()), ("n", pa.int64()),
])  # fmt: skip
#: The label-efficiency tables by name (evaluation.label_efficiency.label_efficiency_rows' keys).
LABEL_EFFICIENCY_TABLES = {
    "label_efficiency": LABEL_EFFICIENCY_SCHEMA,
    "label_efficiency_seeds": LABEL_EFFICIENCY_SEEDS_SCHEMA,
    "label_efficiency_comparisons": LABEL_EFFICIENCY_COMPARISONS_SCHEMA,
}

# -- subgroups (evaluation.subgroups) -----------------------------------------------------------
#: One row per run, subgroup column (manufacturer, view_position, age_band, ...), subgroup
#: (``unknown``: no value) and metric: the value with its interval (``method`` as in the
#: metrics table), the difference from the rest of the test images (subgroup - rest) with its
#: interval and two-sided bootstrap p, Holm-corrected over the subgroups of one run, column and
#: metric (``family_size`` hypotheses). ``status`` ok, or too-small: no value, interval or test.
SUBGROUPS_SCHEMA = pa.schema([
    ("eval_id", pa.string()), ("created_at", UTC_MS), ("task", pa.string()), ("task_kind", pa.string()),
    ("head", pa.string()), ("fold", pa.int32()), ("encoder", pa.string()), ("feature_set_id", pa.string()),
    ("run_id", pa.string()), ("metric", pa.string()), ("column", pa.string()), ("subgroup", pa.string()),
    ("n", pa.int64()), ("n_pos", pa.int64()), ("n_neg", pa.int64()), ("n_rest", pa.int64()), ("status", pa.string()),
    ("value", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("method", pa.string()),
    ("diff_vs_rest", pa.float64()), ("diff_ci_low", pa.float64()), ("diff_ci_high", pa.float64()),
    ("p", pa.float64()), ("p_holm", pa.float64()), ("family_size", pa.int64()),
])  # fmt: skip

#: The tables of one evaluation version, by name (file ``<name>.parquet``). Tables added after
#: the first version read as empty from versions written before them.
EVAL_TABLES = {"metrics": METRICS_SCHEMA, "comparisons": COMPARISONS_SCHEMA, "per_image": PER_IMAGE_SCHEMA, "folds": FOLDS_SCHEMA,
               "calibration": CALIBRATION_SCHEMA, "reliability": RELIABILITY_SCHEMA, "operating_points": OPERATING_POINTS_SCHEMA,
               **LABEL_EFFICIENCY_TABLES, "subgroups": SUBGROUPS_SCHEMA}  # fmt: skip

# -- embedding health (features/<id>/health/<health_id>/, featurestore.health) -------------------
#: Every figure of one health version in long form: ``scope`` global | patch | control | leakage |
#: drift; ``limit`` and ``flagged`` where the figure has a warning limit (null otherwise); ``n``
#: the images (or tokens, for pooled patch figures) it was computed from; ``detail`` what it
#: was compared with (a control's feature set id, a backfill's number).
HEALTH_SCHEMA = pa.schema([
    ("feature_set_id", pa.string()), ("health_id", pa.string()), ("created_at", UTC_MS), ("encoder", pa.string()),
    ("scope", pa.string()), ("metric", pa.string()), ("value", pa.float64()), ("limit", pa.float64()),
    ("flagged", pa.bool_()), ("n", pa.int64()), ("detail", pa.string()),
])  # fmt: skip
#: Singular values, largest first: ``source`` global (the raw embeddings, what RankMe reads),
#: global_centered (the covariance's, what the participation ratio reads) or patch (pooled tokens).
SPECTRUM_SCHEMA = pa.schema([
    ("feature_set_id", pa.string()), ("health_id", pa.string()), ("source", pa.string()), ("k", pa.int32()),
    ("singular_value", pa.float64()), ("variance_fraction", pa.float64()),
])  # fmt: skip
DIMENSIONS_SCHEMA = pa.schema([
    ("feature_set_id", pa.string()), ("health_id", pa.string()), ("dim", pa.int32()),
    ("mean", pa.float64()), ("variance", pa.float64()), ("dead", pa.bool_()),
])  # fmt: skip
#: One row per sampled image: the mean pairwise cosine of its patch tokens, their effective rank
#: (null beyond the images it is computed for) and their mean norm.
PATCH_IMAGES_SCHEMA = pa.schema([
    ("feature_set_id", pa.string()), ("health_id", pa.string()), ("image_id", pa.string()),
    ("patch_cosine", pa.float64()), ("patch_rank", pa.float64()), ("mean_norm", pa.float64()),
])  # fmt: skip
NORM_MAP_SCHEMA = pa.schema([
    ("feature_set_id", pa.string()), ("health_id", pa.string()), ("y", pa.int32()), ("x", pa.int32()), ("mean_norm", pa.float64()),
])  # fmt: skip
#: Test-train pairs at or above the audit's cosine threshold (every such pair, not only nearest).
LEAKAGE_SCHEMA = pa.schema([
    ("feature_set_id", pa.string()), ("health_id", pa.string()),
    ("test_image_id", pa.string()), ("train_image_id", pa.string()),
    ("test_patient_id", pa.string()), ("train_patient_id", pa.string()), ("cosine", pa.float64()), ("same_patient", pa.bool_()),
])  # fmt: skip
#: Every test image's nearest training image (the distribution the threshold cuts).
NEIGHBOURS_SCHEMA = pa.schema([
    ("feature_set_id", pa.string()), ("health_id", pa.string()), ("image_id", pa.string()),
    ("nearest_train_id", pa.string()), ("cosine", pa.float64()),
])  # fmt: skip
#: One row per backfill a health version saw arrive: its new images against those before.
DRIFT_SCHEMA = pa.schema([
    ("feature_set_id", pa.string()), ("health_id", pa.string()), ("backfill", pa.int32()),
    ("new_from", UTC_MS), ("new_upto", UTC_MS), ("n_before", pa.int64()), ("n_new", pa.int64()),
    ("mean_shift", pa.float64()), ("mmd2", pa.float64()), ("bandwidth", pa.float64()), ("p_value", pa.float64()),
    ("permutations", pa.int64()), ("rankme_before", pa.float64()), ("rankme_new", pa.float64()),
    ("anisotropy_before", pa.float64()), ("anisotropy_new", pa.float64()), ("flagged", pa.bool_()),
])  # fmt: skip
#: One row per committed health version (served from health.json records for the SQL views).
HEALTH_VERSIONS_VIEW_SCHEMA = pa.schema([
    ("feature_set_id", pa.string()), ("health_id", pa.string()), ("encoder", pa.string()), ("created_at", UTC_US),
    ("images", pa.int64()), ("sampled", pa.int64()), ("watermark", UTC_US), ("previous", pa.string()),
    ("flags", pa.list_(pa.string())), ("code_version", pa.string()), ("latest", pa.bool_()),
])  # fmt: skip
#: The tables of one health version, by name (file ``<name>.parquet``).
HEALTH_TABLES = {
    "summary": HEALTH_SCHEMA, "spectrum": SPECTRUM_SCHEMA, "dimensions": DIMENSIONS_SCHEMA,
    "patch_images": PATCH_IMAGES_SCHEMA, "norm_map": NORM_MAP_SCHEMA, "leakage": LEAKAGE_SCHEMA,
    "neighbours": NEIGHBOURS_SCHEMA, "drift": DRIFT_SCHEMA,
}  # fmt: skip

FEATURES_VIEW_SCHEMA = pa.schema([
    ("feature_set_id", pa.string()), ("encoder", pa.string()), ("weights", pa.string()),
    ("weights_fingerprint", pa.string()), ("channels", pa.int64()), ("grid_h", pa.int64()),
    ("grid_w", pa.int64()), ("global_dim", pa.int64()), ("dtype", pa.string()),
    ("shard_images", pa.int64()), ("preprocessing", pa.string()),
])  # fmt: skip
RUNS_VIEW_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("task", pa.string()), ("task_kind", pa.string()), ("head", pa.string()),
    ("encoder", pa.string()), ("feature_set_id", pa.string()), ("fold", pa.int32()), ("seed", pa.int64()),
    ("created_at", UTC_US), ("best_epoch", pa.int64()), ("epochs", pa.int64()), ("code_version", pa.string()),
    ("data_hash", pa.string()),
])  # fmt: skip
EVALUATIONS_VIEW_SCHEMA = pa.schema([
    ("eval_id", pa.string()), ("created_at", UTC_US), ("code_version", pa.string()),
    ("store_format_version", pa.int64()), ("runs", pa.int64()), ("resamples", pa.int64()),
    ("seed", pa.int64()), ("method", pa.string()), ("empty_both", pa.string()),
])  # fmt: skip


def now_ms() -> datetime:
    """UTC now, truncated to the milliseconds the tables store."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def keep_first(table: pa.Table, key: str = "image_id") -> pa.Table:
    """Rows of ``table`` (already in precedence order) with the first occurrence of each key:
    the one rule for every table where a race can write a key twice."""
    if table.num_rows == 0 or pc.count_distinct(table.column(key)).as_py() == table.num_rows:
        return table
    _, first = np.unique(np.asarray(table.column(key).to_pylist(), dtype=object), return_index=True)
    return table.take(pa.array(np.sort(first)))
