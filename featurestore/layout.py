"""The store's on-disk format, in one place.

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
        rejects/part-*.parquet            images an extraction could not embed (REJECTS_SCHEMA)
        .lock                             local stores only: serialises shard allocation

Commit protocol (why readers never see torn rows):

1. A writer allocates a fresh shard index ``k`` under the feature set's lock: it grows the
   array to ``(k + 1) * S`` rows. Rows ``k*S .. k*S+S-1`` now belong to that writer alone.
2. It writes the shard's patch grids in one call (zarr's stores write each object atomically:
   temp file + rename locally, one PUT on object stores).
3. It then writes ``cls/shard-<k>-<uuid>.parquet`` atomically. **A row exists when, and only
   when, its cls part exists.** A crash between 2 and 3 leaves an orphan shard no reader
   sees; a rerun plans those images again into a new shard.
4. The array's fill value is NaN, so a read of a chunk that was never written is caught
   (zarr 3.1 cannot make a missing chunk an error; radstore checks the first value of each
   image it reads).

If two writers ever commit the same image_id (e.g. two backfills racing), readers keep the
row from the lowest shard index: the first committed.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

FORMAT_NAME = "radstore"
FORMAT_VERSION = 1

STORE_JSON = "store.json"
IMAGES_DIR = "images"
INGEST_ERRORS_DIR = "ingest_errors"
FEATURES_DIR = "features"
FEATURE_SET_JSON = "feature_set.json"
PATCHES_GROUP = "patches.zarr"
PATCHES_ARRAY = "patches"
CLS_DIR = "cls"
REJECTS_DIR = "rejects"
LOCK_FILE = ".lock"
DIMENSION_NAMES = ("image", "channel", "y", "x")

#: Bytes a shard should hold when ``shard_images`` is left to the store (see choose_shard_images).
TARGET_SHARD_BYTES = 128 * 2**20
SHARD_MULTIPLE = 16  # the study's batch size: whole batches fill whole shards
MAX_SHARD_IMAGES = 256  # small grids: keep shards small enough to spread work over workers

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
        ("ingested_at", pa.timestamp("ms", tz="UTC")),
        ("manifest", pa.string()),  # the manifest it came from: training joins labels and masks there
    ]
)

INGEST_ERRORS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("reason", pa.string()),
        ("run_at", pa.timestamp("ms", tz="UTC")),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("reason", pa.string()),
        ("time", pa.timestamp("ms", tz="UTC")),
    ]
)


def cls_schema(global_dim: int, extra_globals: dict[str, int] | None = None) -> pa.Schema:
    """One row per committed image; embeddings are fixed-size lists so DuckDB sees FLOAT[D].

    ``extra_globals`` adds one more vector column per entry (e.g. BiomedCLIP keeps its trunk's
    768-d [CLS] as ``cls_trunk`` beside the projected 512-d ``cls``).
    """
    extras = [(name, pa.list_(pa.float32(), dim)) for name, dim in sorted((extra_globals or {}).items())]
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("row", pa.int64()),
            ("shard", pa.int64()),
            ("cls", pa.list_(pa.float32(), global_dim)),
            *extras,
            ("sha256", pa.string()),
            ("extracted_at", pa.timestamp("ms", tz="UTC")),
        ]
    )


def now_ms() -> datetime:
    """UTC now, truncated to the milliseconds the tables store."""
    t = datetime.now(timezone.utc)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def keep_first(table: pa.Table, key: str = "image_id") -> pa.Table:
    """Rows of ``table`` (already in precedence order) with the first occurrence of each key."""
    if table.num_rows == 0 or pa.compute.count_distinct(table.column(key)).as_py() == table.num_rows:
        return table
    import numpy as np

    _, first = np.unique(np.asarray(table.column(key).to_pylist(), dtype=object), return_index=True)
    return table.take(pa.array(np.sort(first)))


def cls_part_name(shard: int, token: str) -> str:
    return f"shard-{shard:08d}-{token}.parquet"


def shard_of_part(name: str) -> int:
    """Shard index from a cls part's file name (``shard-00000012-ab12.parquet`` -> 12)."""
    return int(name.rsplit("/", 1)[-1].split("-")[1])


def feature_set_id(encoder: str, identity: dict[str, Any]) -> str:
    """``<encoder>-<12 hex>``: the same inputs always land in the same feature set."""
    payload = json.dumps({"format_version": FORMAT_VERSION, **identity}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in encoder)
    return f"{safe}-{digest}"


def choose_shard_images(grid: tuple[int, int, int], itemsize: int) -> int:
    """Images per shard: about TARGET_SHARD_BYTES, a multiple of SHARD_MULTIPLE, 16..MAX_SHARD_IMAGES.

    768x37x37 float16 (2.1 MB an image) gives 64 images (134 MB a shard): a million images
    become ~16k shard objects instead of a million chunk files.
    """
    c, h, w = grid
    per_image = c * h * w * itemsize
    n = round(TARGET_SHARD_BYTES / per_image / SHARD_MULTIPLE) * SHARD_MULTIPLE
    return int(min(MAX_SHARD_IMAGES, max(SHARD_MULTIPLE, n)))


def check_format_version(found: Any, where: str) -> None:
    """Refuse metadata written by a newer (or unknown) radstore format."""
    from featurestore.errors import StoreVersionError

    if not isinstance(found, int):
        raise StoreVersionError(f"{where} has no valid format_version ({found!r}); it was not written by radstore")
    if found > FORMAT_VERSION:
        raise StoreVersionError(
            f"{where} was written with store format version {found}, but this radstore reads "
            f"versions up to {FORMAT_VERSION}. Upgrade radstore (pip install -U radstore) to read it; "
            "nothing was changed."
        )
