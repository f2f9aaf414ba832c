"""What makes two pieces of stored data the same: feature-set ids, format versions, sizes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from featurestore.layout.paths import FORMAT_VERSION

#: Bytes a shard should hold when ``shard_images`` is left to the store (see choose_shard_images).
TARGET_SHARD_BYTES = 128 * 2**20
SHARD_MULTIPLE = 16  # the study's batch size: whole batches fill whole shards
MAX_SHARD_IMAGES = 256  # small grids: keep shards small enough to spread work over workers


def feature_set_id(encoder: str, identity: dict[str, Any]) -> str:
    """``<encoder>-<12 hex>``: the same inputs always land in the same feature set."""
    payload = json.dumps({"format_version": FORMAT_VERSION, **identity}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in encoder)
    return f"{safe}-{digest}"


def choose_shard_images(grid: tuple[int, int, int], itemsize: int) -> int:
    """Images per shard: about TARGET_SHARD_BYTES, a multiple of SHARD_MULTIPLE, 16..MAX_SHARD_IMAGES.

    Large enough that a million images become thousands of objects rather than a million
    (768x37x37 float16, 2.1 MB an image, gives 64 images a shard), small enough that a
    feature set of a few hundred images still spreads over several workers.
    """
    c, h, w = grid
    per_image = c * h * w * itemsize
    n = round(TARGET_SHARD_BYTES / per_image / SHARD_MULTIPLE) * SHARD_MULTIPLE
    return int(min(MAX_SHARD_IMAGES, max(SHARD_MULTIPLE, n)))


def check_format_version(found: Any, where: str) -> None:
    """Refuse metadata written by a newer (or unknown) radstore format: reading it could
    misinterpret bytes, so nothing is read or changed."""
    from featurestore.errors import StoreVersionError

    if not isinstance(found, int):
        raise StoreVersionError(f"{where} has no valid format_version ({found!r}); it was not written by radstore")
    if found > FORMAT_VERSION:
        raise StoreVersionError(
            f"{where} was written with store format version {found}, but this radstore reads "
            f"versions up to {FORMAT_VERSION}. Upgrade radstore (pip install -U radstore) to read it; "
            "nothing was changed."
        )
