"""Direct reads of shard objects in the plain layout: ranged reads and memory maps, no zarr.

In the plain layout a shard is its grids in order plus a :class:`~featurestore.layout.ShardIndex`,
so a run of consecutive images is one ranged read and a whole local shard is one memory map;
going through zarr would decode one chunk per image. Every entry point here answers "not
possible" (False or None) instead of raising where the bytes are not what it expects; the
reader then falls back to zarr, which reports missing grids.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from featurestore.featureset.spec import FeatureSetSpec
from featurestore.layout import ShardIndex
from featurestore.storage import Location


class DirectShards:
    """The shard objects of one feature set whose array has the plain layout.

    ``key`` maps a shard number to its store-relative object key. Parsed indexes are cached:
    a shard is written once and never changes afterwards.
    """

    def __init__(self, loc: Location, spec: FeatureSetSpec, key: Callable[[int], str]):
        self.loc = loc
        self.spec = spec
        self._key = key
        self._index: dict[int, ShardIndex] = {}

    def index(self, shard: int) -> ShardIndex:
        """The committed shard's index, read from the object's tail once.

        Raises OSError for a missing object and ValueError for one that is not in this layout.
        """
        idx = self._index.get(shard)
        if idx is None:
            s = self.spec.shard_images
            tail = self.loc.read_tail(ShardIndex.nbytes(s), self._key(shard))
            idx = self._index[shard] = ShardIndex.parse(tail, s, self.spec.image_bytes)
        return idx

    def read_into(self, rows: np.ndarray, out: np.ndarray) -> bool:
        """Fill C-contiguous ``out`` with the grids of ``rows``: one ranged read per run of rows
        stored one after another (the stored values: codes for an int8 set). False (nothing
        promised about ``out``) where that is not possible: a missing shard or image, or a
        shard not in the plain layout."""
        s, nb = self.spec.shard_images, self.spec.image_bytes
        try:
            shards = rows // s
            offsets = np.empty(len(rows), np.int64)
            for sh in np.unique(shards):
                at = shards == sh
                got = self.index(int(sh)).offsets(rows[at] - sh * s)
                if got is None:
                    return False  # an image this shard does not hold
                offsets[at] = got
            # A new run starts where the shard changes or the next row is not the next stored image.
            brk = np.flatnonzero((shards[1:] != shards[:-1]) | (offsets[1:] != offsets[:-1] + nb)) + 1
            starts = np.r_[0, brk]
            ends = np.r_[brk, len(rows)]
            self.loc.read_ranges_into(
                [out[a:b] for a, b in zip(starts, ends)],
                [int(offsets[a]) for a in starts],
                [self._key(int(shards[a])) for a in starts],
            )
            return True
        except (OSError, ValueError, EOFError):
            return False

    def map(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mapped, at)`` with ``mapped[at[i]]`` the grid of ``rows[i]``: a copy-on-write memory
        map of the shard object, so nothing is read until the caller indexes it.

        Only for local stores, rows of one shard, and a shard stored as radstore writes it
        (:meth:`ShardIndex.dense_count`); None otherwise. Grids are not checked for presence,
        and are the stored values: an int8 set's codes, which the grid reader dequantises.
        """
        s = self.spec.shard_images
        if not len(rows) or not self.loc.is_local:
            return None
        shard = int(rows[0] // s)
        if (rows // s != shard).any():
            return None
        try:
            k = self.index(shard).dense_count()
        except (OSError, ValueError):
            return None
        at = rows - shard * s
        if k == 0 or int(at.max()) >= k:
            return None
        mapped = np.memmap(self.loc.path(self._key(shard)), dtype=self.spec.dtype, mode="c", shape=(k, *self.spec.grid))
        return mapped, at
