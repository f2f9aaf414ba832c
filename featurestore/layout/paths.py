"""Every directory and file name of a store, and the functions that build or parse them.

Nothing outside :mod:`featurestore.layout` types a store path: runs, evaluations and feature
sets all find their files through these names.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

FORMAT_NAME = "radstore"
FORMAT_VERSION = 1

STORE_JSON = "store.json"
IMAGES_DIR = "images"
INGEST_ERRORS_DIR = "ingest_errors"

# features/<feature_set_id>/
FEATURES_DIR = "features"
FEATURE_SET_JSON = "feature_set.json"
PATCHES_GROUP = "patches.zarr"
PATCHES_ARRAY = "patches"
CLS_DIR = "cls"
REJECTS_DIR = "rejects"
COMMITTED_DIR = "committed"
CLAIMS_DIR = "claims"  # claims/shard-<k:08d>.json: created once, atomically, by the shard's one writer
LOCK_FILE = ".lock"
#: Temporary files of local writes (``<host>-<pid>-<token>.partial``), renamed into place when
#: whole; under each location's root, so a dead writer's leftovers are found in one listing.
TMP_DIR = ".tmp"
PARTIAL_SUFFIX = ".partial"
DIMENSION_NAMES = ("image", "channel", "y", "x")

# features/<feature_set_id>/health/<health_id>/: one embedding-health version (featurestore.health)
HEALTH_DIR = "health"
HEALTH_JSON = "health.json"

# aliases/<feature_set_id>.json: another id under which an existing feature set is found
ALIASES_DIR = "aliases"

# runs/<run_id>/
RUNS_DIR = "runs"
RUN_JSON = "run.json"
HEAD_WEIGHTS = "head.pt"
PREDICTIONS = "predictions.parquet"
LINEAGE = "lineage.parquet"
PREDICTED_MASKS = "masks.zarr"  # segmentation: predicted probabilities [image, y, x], float16
TARGET_MASKS = "targets.zarr"  # segmentation: the true masks at the target resolution, uint8
MASK_DIMENSIONS = ("image", "y", "x")

# metrics/<eval_id>/
METRICS_DIR = "metrics"
EVAL_JSON = "eval.json"
PUBLISHED_JSON = "published.json"


def table_file(name: str) -> str:
    """File name of one of an evaluation's tables (``metrics`` -> ``metrics.parquet``)."""
    return f"{name}.parquet"


def part_name() -> str:
    """A new append-only part of the images or ingest-errors table: time-ordered, unique."""
    return f"part-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"


def rejects_part_name() -> str:
    """A new part of a feature set's rejects table: a random, unique name (the table is read whole, so
    its parts need no order)."""
    return f"part-{uuid.uuid4().hex}.parquet"


def cls_part_name(shard: int, token: str) -> str:
    """The cls part that commits ``shard`` (``token`` keeps two writers' parts apart)."""
    return f"shard-{shard:08d}-{token}.parquet"


def alias_name(feature_set_id: str) -> str:
    """The alias record of ``feature_set_id``: it names the feature set that id resolves to."""
    return f"{feature_set_id}.json"


def claim_name(shard: int) -> str:
    """The claim object of ``shard``: whoever creates it owns the shard's rows."""
    return f"shard-{shard:08d}.json"


def partial_name(host: str, pid: int) -> str:
    """A temporary file's name: the writer's host and pid tell a sweeper whether it is still alive."""
    return f"{host}-{pid}-{uuid.uuid4().hex}{PARTIAL_SUFFIX}"


def partial_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of a temporary file named by :func:`partial_name`; None for any other name."""
    base = name.rsplit("/", 1)[-1]
    if not base.endswith(PARTIAL_SUFFIX):
        return None
    parts = base[: -len(PARTIAL_SUFFIX)].rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def shard_of_part(name: str) -> int:
    """Shard index from a cls part's file name (``shard-00000012-ab12.parquet`` -> 12)."""
    return int(name.rsplit("/", 1)[-1].split("-")[1])


def committed_index_name(parts: int, token: str) -> str:
    """A committed index naming ``parts`` cls parts (the count sorts the newest first)."""
    return f"upto-{parts:08d}-{token}.parquet"


def committed_index_parts(name: str) -> int:
    """How many cls parts a committed index names (``upto-00015625-ab12.parquet`` -> 15625)."""
    return int(name.rsplit("/", 1)[-1].split("-")[1])


def new_run_id(task: str, head: str, feature_set_id: str) -> str:
    """A run id that sorts by feature set, task, head and time, and never repeats."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{feature_set_id}-{task}-{head}-{stamp}-{uuid.uuid4().hex[:6]}"
