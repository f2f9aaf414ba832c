"""Reading patch grids of committed rows: directly where the layout allows, through zarr otherwise.

Every read path ends in the same presence check: the array's fill value is NaN, so a grid a
cls part promises but storage lacks is caught here (StoreCorruptionError), never handed on.

An int8 set's codes are dequantised on every path (:mod:`.quantize`) with the scales of the
rows' cls parts, so callers get float32 (or their float16/float32 ``out``), never codes; its
fill value (-128) dequantises to NaN, so the same presence check holds.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import zarr

from featurestore import layout
from featurestore.errors import FeatureSetError, StoreCorruptionError
from featurestore.featureset.array import ZARR_CONFIG
from featurestore.featureset.direct import DirectShards
from featurestore.featureset.quantize import FILL, SCALES, DequantizedRows, dequantize, is_quantized

if TYPE_CHECKING:
    from featurestore.featureset.reader import FeatureSet


class GridReader:
    """The grid reads of one feature set (behind ``FeatureSet.read_rows`` and friends)."""

    #: Shards whose scales an int8 set's reader keeps (a few MB for wide grids).
    SCALES_CACHE_SHARDS = 256

    def __init__(self, fs: FeatureSet):
        self.fs = fs
        self.spec = fs.spec
        self.shards = DirectShards(fs.loc, fs.spec, fs.shard_key)
        self.quantized = is_quantized(fs.spec.dtype)
        # int8: scales of committed shards (a committed shard never changes) and the cls part of each shard
        self._scales: OrderedDict[int, np.ndarray] = OrderedDict()
        self._parts: dict[int, str] = {}

    def _check_out(self, out: np.ndarray, shape: tuple[int, ...], contiguous: bool) -> None:
        ok = (np.float16, np.float32) if self.quantized else (np.dtype(self.spec.dtype),)
        if out.shape != shape or out.dtype not in ok or (contiguous and not out.flags.c_contiguous):
            what = "C-contiguous " if contiguous else ""
            want = "float16 or float32" if self.quantized else self.spec.dtype
            raise FeatureSetError(f"out buffer must be {what}{shape} {want}, got {out.shape} {out.dtype}")

    def read_rows(self, rows: np.ndarray, out: np.ndarray | None = None, image_ids: Sequence[str] | None = None) -> np.ndarray:
        """Grids of ``rows`` in any order: ranged reads in the plain layout, else one concurrent
        zarr read per row. ``image_ids`` only name the rows in errors."""
        rows = np.asarray(rows, np.int64)
        shape = (len(rows), *self.spec.grid)
        if out is None:
            out = np.empty(shape, dtype=self.spec.read_dtype)
        else:
            self._check_out(out, shape, contiguous=False)
        if self.quantized:
            dequantize(self._read_rows(rows, np.empty(shape, np.int8)), self.scales_of(rows), out)
        else:
            self._read_rows(rows, out)
        self.require_present(out, rows, image_ids)
        return out

    def _read_rows(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The stored values (codes for int8) of ``rows`` into ``out``, unchecked."""
        arr = self.fs.array_for_rows(int(rows.max()) + 1 if len(rows) else 0)
        if len(rows) and out.flags.c_contiguous and self.fs.plain_layout and self.shards.read_into(rows, out):
            return out

        async def one(i: int, r: int) -> None:
            out[i] = await arr._async_array.getitem(int(r))

        async def gather() -> None:
            await asyncio.gather(*(one(i, r) for i, r in enumerate(rows)))

        with zarr.config.set(ZARR_CONFIG):
            zarr.core.sync.sync(gather())
        return out

    def read_span(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Grids of ``rows`` that lie close together (one shard): one read, then a take.

        Through zarr a whole-shard slice is decoded in one call instead of one call per row; in
        the plain shard layout each run of consecutive rows is one ranged read.
        """
        rows = np.asarray(rows, np.int64)
        shape = (len(rows), *self.spec.grid)
        if out is not None:
            self._check_out(out, shape, contiguous=True)
        if self.quantized:
            got = dequantize(self._read_span(rows, None), self.scales_of(rows), out)
        else:
            got = self._read_span(rows, out)
        self.require_present(got, rows)
        return got

    def _read_span(self, rows: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """The stored values (codes for int8) of ``rows``, into ``out`` when given, unchecked."""
        lo, hi = int(rows.min()), int(rows.max()) + 1
        arr = self.fs.array_for_rows(hi)
        if self.fs.plain_layout:
            target = np.empty((len(rows), *self.spec.grid), dtype=self.spec.dtype) if out is None else out
            if self.shards.read_into(rows, target):
                return target
        with zarr.config.set(ZARR_CONFIG):
            block = arr[lo:hi]
        got = block[rows - lo] if len(rows) != hi - lo or not np.array_equal(rows, np.arange(lo, hi)) else block
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
        if self.quantized:
            first = int(rows[0] // self.spec.shard_images) * self.spec.shard_images
            scales = self.scales_of(np.arange(first, first + len(mapped)))
            bad = np.flatnonzero((mapped[at, 0, 0, 0] == FILL) | np.isnan(scales[at, 0]))
            mapped = DequantizedRows(mapped, scales)
        else:
            bad = np.flatnonzero(np.isnan(mapped[at, 0, 0, 0]))
        if len(bad):
            self.require_present(mapped[at[bad]], rows[bad])
        return mapped, at

    def scales_of(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), C] float32 quantisation scales of an int8 set's ``rows``, from the cls
        parts that committed them (NaN for a row no part holds: its read then fails the
        presence check)."""
        s = self.spec.shard_images
        out = np.empty((len(rows), self.spec.grid[0]), np.float32)
        shards = rows // s
        for sh in np.unique(shards):
            at = shards == sh
            out[at] = self._shard_scales(int(sh))[rows[at] - sh * s]
        return out

    def _shard_scales(self, shard: int) -> np.ndarray:
        """[shard_images, C] scales of one shard's rows (NaN where none), cached once committed."""
        got = self._scales.get(shard)
        if got is not None:
            self._scales.move_to_end(shard)
            return got
        got = np.full((self.spec.shard_images, self.spec.grid[0]), np.nan, np.float32)
        if shard not in self._parts:  # committed since the last listing?
            for p in self.fs.cls_parts():
                self._parts.setdefault(layout.shard_of_part(p), p)  # first part wins, as for the rows
        part = self._parts.get(shard)
        if part is None:
            return got
        t = self.fs.loc.read_parquet([part], columns=["row", SCALES], schema=self.fs.cls_schema)
        flat = t.column(SCALES).combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)
        got[t.column("row").to_numpy() - shard * self.spec.shard_images] = flat
        self._scales[shard] = got
        while len(self._scales) > self.SCALES_CACHE_SHARDS:
            self._scales.popitem(last=False)
        return got

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
                missing = first == FILL if self.quantized else np.isnan(first)
                bad += [ids[k] for k in np.flatnonzero((rows >= lo) & (rows < hi)) if missing[rows[k] - lo]]
        return bad

    def _checked(self, data, ids: list[str], rows: np.ndarray, scales: np.ndarray | None = None):
        """``data`` (dask, the committed rows in order) with the presence check of every other
        read path applied to each block when it is computed: a committed image whose grid is
        missing raises StoreCorruptionError instead of arriving as NaN. ``scales`` ([rows, C],
        int8 sets): each block's codes are dequantised first."""

        def check(block: np.ndarray, block_info=None) -> np.ndarray:
            lo, hi = block_info[0]["array-location"][0]
            if scales is not None:
                block = dequantize(block, scales[lo:hi])
            self.require_present(block, rows[lo:hi], ids[lo:hi])
            return block

        return data.map_blocks(check, dtype=np.dtype(self.spec.read_dtype))

    def to_xarray(self):
        """Lazy ``xarray.Dataset`` of the committed rows (dask, one chunk per shard)."""
        import xarray as xr

        t = self.fs.cls()
        rows = t.column("row").to_numpy()
        ids = t.column("image_id").to_pylist()
        scales = None
        if self.quantized:
            scales = t.column(SCALES).combine_chunks().flatten().to_numpy().reshape(len(ids), self.spec.grid[0])
        with zarr.config.set(ZARR_CONFIG):
            ds = xr.open_zarr(
                self.fs.loc.zarr_store(layout.PATCHES_GROUP, read_only=True),
                chunks={"image": self.spec.shard_images},
                consolidated=False,
                zarr_format=3,
                mask_and_scale=not self.quantized,  # int8: the codes as stored, dequantised below
            )
        ds = ds.isel(image=rows)
        ds["patches"] = ds["patches"].copy(data=self._checked(ds["patches"].data, ids, rows, scales))
        cls = t.column("cls").combine_chunks().flatten().to_numpy().reshape(len(ids), self.spec.global_dim)
        c, h, w = self.spec.grid
        ds = ds.assign_coords(image_id=("image", ids), channel=np.arange(c), y=np.arange(h), x=np.arange(w))
        ds["cls"] = (("image", "dim"), cls)
        ds = ds.swap_dims({"image": "image_id"}).drop_vars("image", errors="ignore")
        ds.attrs.update({"feature_set_id": self.fs.id, "encoder": self.spec.encoder})
        return ds
