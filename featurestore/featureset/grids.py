"""Reading patch grids of committed rows: directly where the layout allows, through zarr otherwise.

Every read path ends in the same presence check: the array's fill value is NaN, so a grid a
cls part promises but storage lacks is caught here (StoreCorruptionError), never handed on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import zarr

from featurestore import layout
from featurestore.errors import FeatureSetError, StoreCorruptionError
from featurestore.featureset.array import ZARR_CONFIG
from featurestore.featureset.direct import DirectShards

if TYPE_CHECKING:
    from featurestore.featureset.reader import FeatureSet


class GridReader:
    """The grid reads of one feature set (behind ``FeatureSet.read_rows`` and friends)."""

    def __init__(self, fs: FeatureSet):
        self.fs = fs
        self.spec = fs.spec
        self.shards = DirectShards(fs.loc, fs.spec, fs.shard_key)

    def _check_out(self, out: np.ndarray, shape: tuple[int, ...], contiguous: bool) -> None:
        if out.shape != shape or out.dtype != np.dtype(self.spec.dtype) or (contiguous and not out.flags.c_contiguous):
            what = "C-contiguous " if contiguous else ""
            raise FeatureSetError(f"out buffer must be {what}{shape} {self.spec.dtype}, got {out.shape} {out.dtype}")

    def read_rows(self, rows: np.ndarray, out: np.ndarray | None = None, image_ids: Sequence[str] | None = None) -> np.ndarray:
        """Grids of ``rows`` in any order: ranged reads in the plain layout, else one concurrent
        zarr read per row. ``image_ids`` only name the rows in errors."""
        arr = self.fs.array_for_rows(int(rows.max()) + 1 if len(rows) else 0)
        shape = (len(rows), *self.spec.grid)
        if out is None:
            out = np.empty(shape, dtype=self.spec.dtype)
        else:
            self._check_out(out, shape, contiguous=False)
        rows = np.asarray(rows, np.int64)
        if len(rows) and out.flags.c_contiguous and self.fs.plain_layout and self.shards.read_into(rows, out):
            self.require_present(out, rows, image_ids)
            return out

        async def one(i: int, r: int) -> None:
            out[i] = await arr._async_array.getitem(int(r))

        async def gather() -> None:
            await asyncio.gather(*(one(i, r) for i, r in enumerate(rows)))

        with zarr.config.set(ZARR_CONFIG):
            zarr.core.sync.sync(gather())
        self.require_present(out, rows, image_ids)
        return out

    def read_span(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Grids of ``rows`` that lie close together (one shard): one read, then a take.

        Through zarr a whole-shard slice is decoded in one call instead of one call per row; in
        the plain shard layout each run of consecutive rows is one ranged read.
        """
        rows = np.asarray(rows, np.int64)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        arr = self.fs.array_for_rows(hi)
        shape = (len(rows), *self.spec.grid)
        if out is not None:
            self._check_out(out, shape, contiguous=True)
        if self.fs.plain_layout:
            target = np.empty(shape, dtype=self.spec.dtype) if out is None else out
            if self.shards.read_into(rows, target):
                self.require_present(target, rows)
                return target
        with zarr.config.set(ZARR_CONFIG):
            block = arr[lo:hi]
        got = block[rows - lo] if len(rows) != hi - lo or not np.array_equal(rows, np.arange(lo, hi)) else block
        self.require_present(got, rows)
        if out is not None:
            out[...] = got
            return out
        return got

    def map_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mapped, at)`` of rows in one shard of a local plain-layout store
        (:meth:`DirectShards.map`), checked for presence; None where not possible."""
        rows = np.asarray(rows, np.int64)
        if not len(rows) or not self.fs.loc.is_local or not self.fs.plain_layout:
            return None
        got = self.shards.map(rows)
        if got is None:
            return None
        mapped, at = got
        bad = np.flatnonzero(np.isnan(mapped[at, 0, 0, 0]))
        if len(bad):
            self.require_present(mapped[at[bad]], rows[bad])
        return mapped, at

    def require_present(self, out: np.ndarray, rows: np.ndarray, image_ids: Sequence[str] | None = None) -> None:
        """Raise StoreCorruptionError for rows read as NaN fill (never written): one value per
        image tells, since a real embedding is finite (the writer refuses NaN)."""
        bad = np.flatnonzero(np.isnan(out[:, 0, 0, 0])) if len(rows) else []
        if len(bad):
            who = [str(image_ids[i]) if image_ids is not None else f"row {rows[i]}" for i in bad[:5]]
            raise StoreCorruptionError(
                f"feature set {self.fs.id}: committed grid(s) missing on storage for {', '.join(who)}. "
                "The cls table says they were written but the array has no data: run "
                "`radstore store verify` and re-extract those images."
            )

    def verify(self) -> list[str]:
        """image_ids whose committed row has no grid on storage, read one shard at a time."""
        t = self.fs.cls(columns=["image_id", "row"])
        ids, rows = t.column("image_id").to_pylist(), t.column("row").to_numpy()
        arr = self.fs.array_for_rows(int(rows.max()) + 1 if len(rows) else 0)
        s = self.spec.shard_images
        bad: list[str] = []
        with zarr.config.set(ZARR_CONFIG):
            for shard in np.unique(rows // s):  # one read per shard, not one per row
                lo, hi = int(shard * s), int(shard * s + s)
                first = arr[lo:hi, 0, 0, 0]
                bad += [ids[k] for k in np.flatnonzero((rows >= lo) & (rows < hi)) if np.isnan(first[rows[k] - lo])]
        return bad

    def _checked(self, data, ids: list[str], rows: np.ndarray):
        """``data`` (dask, the committed rows in order) with the presence check of every other
        read path applied to each block when it is computed: a committed image whose grid is
        missing raises StoreCorruptionError instead of arriving as NaN."""

        def check(block: np.ndarray, block_info=None) -> np.ndarray:
            lo, hi = block_info[0]["array-location"][0]
            self.require_present(block, rows[lo:hi], ids[lo:hi])
            return block

        return data.map_blocks(check, dtype=data.dtype)

    def to_xarray(self):
        """Lazy ``xarray.Dataset`` of the committed rows (dask, one chunk per shard)."""
        import xarray as xr

        t = self.fs.cls()
        rows = t.column("row").to_numpy()
        ids = t.column("image_id").to_pylist()
        with zarr.config.set(ZARR_CONFIG):
            ds = xr.open_zarr(
                self.fs.loc.zarr_store(layout.PATCHES_GROUP, read_only=True),
                chunks={"image": self.spec.shard_images},
                consolidated=False,
                zarr_format=3,
            )
        ds = ds.isel(image=rows)
        ds["patches"] = ds["patches"].copy(data=self._checked(ds["patches"].data, ids, rows))
        cls = t.column("cls").combine_chunks().flatten().to_numpy().reshape(len(ids), self.spec.global_dim)
        c, h, w = self.spec.grid
        ds = ds.assign_coords(image_id=("image", ids), channel=np.arange(c), y=np.arange(h), x=np.arange(w))
        ds["cls"] = (("image", "dim"), cls)
        ds = ds.swap_dims({"image": "image_id"}).drop_vars("image", errors="ignore")
        ds.attrs.update({"feature_set_id": self.fs.id, "encoder": self.spec.encoder})
        return ds
