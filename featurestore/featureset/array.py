"""The zarr array of patch grids: how it is created, opened and configured.

One place for the array's creation arguments, because they *are* the on-disk format: a change
here changes every feature set written afterwards (tests/featurestore/test_format_compat.py
holds them to the committed fixture).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.metadata.v3 import ArrayV3Metadata

from featurestore import layout
from featurestore.featureset import quantize
from featurestore.featureset.spec import FeatureSetSpec
from featurestore.storage import Location

#: zarr-python with the zarrs (Rust) codec pipeline: the same on-disk format, faster codecs
#: (benchmarks/README.md). Applied only inside radstore's own array operations, so a caller's
#: zarr configuration is left alone.
ZARR_CONFIG = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline", "async.concurrency": 16}
#: The zarr v3 metadata object of a group or array.
ZARR_JSON = "zarr.json"


def create_array(loc: Location, spec: FeatureSetSpec) -> None:
    """Create the empty ``patches`` array of a new feature set (no rows: shards are claimed).

    The metadata is made by zarr in memory and each object created only where it is absent,
    so two processes creating the same feature set at once never overwrite each other (nor an
    array another one has already grown). NaN fill value (int8: -128, never a code): a read of a
    chunk that was never written is recognisable (layout, commit protocol step 4).
    """
    objects: dict = {}
    mem = zarr.storage.MemoryStore(store_dict=objects)
    with zarr.config.set(ZARR_CONFIG):
        group = zarr.open_group(mem, mode="w", zarr_format=3)
        c, h, w = spec.grid
        s = spec.shard_images
        group.create_array(
            layout.PATCHES_ARRAY,
            shape=(0, c, h, w),
            chunks=(1, c, h, w),
            shards=(s, c, h, w) if spec.sharded and s > 1 else None,
            dtype=spec.dtype,
            fill_value=fill_value(spec.dtype),
            compressors=None if spec.codec == "none" else zarr.codecs.ZstdCodec(level=1),
            dimension_names=layout.DIMENSION_NAMES,
            attributes={"feature_set_id": spec.feature_set_id, "note": "rows are valid only where cls/ has them"},
        )
    for key in sorted(objects):  # the group's zarr.json, then the array's
        loc.create_exclusive(objects[key].to_bytes(), layout.PATCHES_GROUP, key)


def fill_value(dtype: str) -> float | int:
    """What a never-written grid reads as: NaN, or for int8 codes the one value never written."""
    return quantize.FILL if quantize.is_quantized(dtype) else np.nan


def grow_array(loc: Location, rows: int) -> None:
    """Make the array at least ``rows`` rows long; never shrinks it, never loses a concurrent
    growth (:meth:`Location.compare_and_swap` of its ``zarr.json``)."""

    def update(raw: bytes) -> bytes | None:
        meta = ArrayV3Metadata.from_dict(json.loads(raw))
        if meta.shape[0] >= rows:
            return None
        grown = dataclasses.replace(meta, shape=(rows, *meta.shape[1:]))
        return grown.to_buffer_dict(default_buffer_prototype())[ZARR_JSON].to_bytes()

    loc.compare_and_swap(update, layout.PATCHES_GROUP, layout.PATCHES_ARRAY, ZARR_JSON)


def storage_of(arr: zarr.Array, spec: FeatureSetSpec) -> FeatureSetSpec:
    """``spec`` with the storage fields (shard size, sharding, codec) the array really has: the
    array decides, since its shards are what writers fill. Only fields the array contradicts
    change (an unsharded array does not record its commit group size)."""
    codec = "none" if not arr.compressors else "zstd"
    if arr.shards is not None:
        return dataclasses.replace(spec, shard_images=int(arr.shards[0]), sharded=True, codec=codec)
    if spec.sharded and spec.shard_images > 1:
        return dataclasses.replace(spec, sharded=False, codec=codec)
    return dataclasses.replace(spec, codec=codec)


def open_array(loc: Location) -> zarr.Array:
    """The ``patches`` array as it is on storage now (its shape grows as shards are allocated)."""
    with zarr.config.set(ZARR_CONFIG):
        group = zarr.open_group(loc.zarr_store(layout.PATCHES_GROUP), mode="r+")
        return group[layout.PATCHES_ARRAY]


def shard_object_key(arr: zarr.Array, shard: int) -> str:
    """Store-relative key of shard ``shard``'s object (of its one chunk when unsharded)."""
    key = arr.metadata.encode_chunk_key((shard, 0, 0, 0))
    return f"{layout.PATCHES_GROUP}/{layout.PATCHES_ARRAY}/{key}"
