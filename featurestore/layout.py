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
        committed/upto-<parts:08d>-<uuid>.parquet
                                          derived, rebuildable: (image_id, row, shard) of every
                                          row of the cls parts it names (COMMITTED_SCHEMA)
        rejects/part-*.parquet            images an extraction could not embed (REJECTS_SCHEMA)
        .lock                             local stores only: serialises shard allocation

Commit protocol (why readers never see torn rows):

1. A writer allocates a fresh shard index ``k`` under the feature set's lock: it grows the
   array to ``(k + 1) * S`` rows. Rows ``k*S .. k*S+S-1`` now belong to that writer alone.
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
per-chunk encoding; :func:`shard_index`) and reads a run of images with one ranged read
(:func:`parse_shard_index`); zarr, zarrs, tensorstore and xarray read the same bytes. Any
other codec configuration (``codec="zstd"``, ``sharded=False``) goes through zarr itself.

The committed index. Listing the committed ids means reading every cls part: ~0.3 ms per
part, 5 s for a million images in 15,625 parts. The extraction planner therefore writes
``committed/upto-<n>-<uuid>.parquet``, the (image_id, row, shard) rows of the ``n`` parts
it read (their file names in the schema metadata, ``radstore.parts``), and later readers
take the newest such file plus the parts it does not name (0.2 s instead of 5 s). It is a cache, never the truth: a row still exists when, and only when, its cls part exists;
an index naming a part that is no longer listed is ignored, and deleting ``committed/`` only
makes the next listing slower. Older index files are removed once a newer one is written.
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
COMMITTED_DIR = "committed"
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


COMMITTED_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("row", pa.int64()),
        ("shard", pa.int64()),
    ]
)  # + schema metadata ``radstore.parts``: the file names of the cls parts it holds, one a line

#: Index entry of an image a shard does not hold (zarr v3 sharding: offset and nbytes both).
SHARD_EMPTY = 2**64 - 1


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


def committed_index_name(parts: int, token: str) -> str:
    return f"upto-{parts:08d}-{token}.parquet"


def committed_index_parts(name: str) -> int:
    """How many cls parts a committed index names (``upto-00015625-ab12.parquet`` -> 15625)."""
    return int(name.rsplit("/", 1)[-1].split("-")[1])


def shard_index(n: int, shard_images: int, image_bytes: int) -> bytes:
    """Sharding index (plus CRC32C) of a shard whose first ``n`` images are stored in order."""
    import google_crc32c
    import numpy as np

    idx = np.full((shard_images, 2), SHARD_EMPTY, dtype="<u8")
    idx[:n, 0] = np.arange(n, dtype=np.uint64) * np.uint64(image_bytes)
    idx[:n, 1] = image_bytes
    raw = idx.tobytes()
    return raw + google_crc32c.value(raw).to_bytes(4, "little")


def shard_index_nbytes(shard_images: int) -> int:
    return 16 * shard_images + 4


def parse_shard_index(tail: bytes, shard_images: int):
    """``[S, 2]`` uint64 (offset, nbytes) from a shard's last ``shard_index_nbytes(S)`` bytes.

    Raises ValueError when the checksum does not match (not a shard of this layout).
    """
    import google_crc32c
    import numpy as np

    raw, crc = tail[: 16 * shard_images], tail[16 * shard_images :]
    if len(raw) != 16 * shard_images or int.from_bytes(crc, "little") != google_crc32c.value(raw):
        raise ValueError("shard index checksum mismatch")
    return np.frombuffer(raw, dtype="<u8").reshape(shard_images, 2)


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
