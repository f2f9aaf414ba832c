"""A feature set: the patch grids (Zarr) and global embeddings (Parquet) of one encoder setup.

Writers buffer validated batches into whole shards and commit each shard as described in
:mod:`featurestore.layout`; readers only ever see committed rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import zarr

from featurestore import layout
from featurestore.errors import FeatureSetError, StoreCorruptionError
from featurestore.storage import Location

SUPPORTED_DTYPES = ("float16", "float32")
CODECS = ("none", "zstd")

#: zarr-python with the zarrs (Rust) codec pipeline: same on-disk format, ~2-6x faster I/O
#: here (see benchmarks/). Applied only inside radstore's own array operations.
_ZARR_CONFIG = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline", "async.concurrency": 16}


@dataclass(frozen=True)
class FeatureSetSpec:
    """What a feature set holds. Identity fields decide its id; storage fields only its layout."""

    encoder: str
    weights_fingerprint: str
    grid: tuple[int, int, int]  # (channels, height, width) of the patch grid
    global_dim: int
    preprocessing: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float16"
    extra_globals: dict[str, int] = field(default_factory=dict)  # more global vectors: name -> dim
    # storage only (not part of the id):
    shard_images: int = 0  # rows per shard = per commit; 0: choose by size (layout.choose_shard_images)
    sharded: bool = True  # False: one chunk object per image, committed in groups of shard_images
    codec: str = "none"
    labels: dict[str, Any] = field(default_factory=dict)  # e.g. {"weights": "random:tiny"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if len(self.grid) != 3 or min(self.grid) <= 0:
            raise FeatureSetError(f"grid must be (channels, height, width) > 0, got {self.grid}")
        for name in self.extra_globals:
            if name in ("image_id", "row", "shard", "cls", "sha256", "extracted_at") or not name.isidentifier():
                raise FeatureSetError(f"extra global name {name!r} is reserved or not an identifier")
        if self.global_dim <= 0:
            raise FeatureSetError(f"global_dim must be > 0, got {self.global_dim}")
        if self.dtype not in SUPPORTED_DTYPES:
            raise FeatureSetError(f"dtype {self.dtype!r} not supported; use one of {SUPPORTED_DTYPES}")
        if self.codec not in CODECS:
            raise FeatureSetError(f"codec {self.codec!r} not supported; use one of {CODECS}")
        if self.shard_images < 0:
            raise FeatureSetError("shard_images must be >= 0 (0 = automatic)")
        if self.shard_images == 0:
            itemsize = np.dtype(self.dtype).itemsize
            object.__setattr__(self, "shard_images", layout.choose_shard_images(self.grid, itemsize))

    def identity(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder,
            "weights_fingerprint": self.weights_fingerprint,
            "preprocessing": self.preprocessing,
            "grid": list(self.grid),
            "global_dim": self.global_dim,
            "dtype": self.dtype,
            **({"extra_globals": dict(sorted(self.extra_globals.items()))} if self.extra_globals else {}),
        }

    @property
    def feature_set_id(self) -> str:
        return layout.feature_set_id(self.encoder, self.identity())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FeatureSetSpec":
        keys = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in keys})


@dataclass(frozen=True)
class WriteResult:
    accepted: int  # buffered for commit (committed by the time the writer is closed)
    skipped: int  # already committed earlier: not written again


class FeatureSet:
    """Read and write one feature set. Obtain it from :class:`featurestore.store.Store`."""

    def __init__(self, loc: Location, spec: FeatureSetSpec, meta: dict[str, Any]):
        self.loc = loc
        self.spec = spec
        self.meta = meta
        self.id = spec.feature_set_id
        self._index: dict[str, int] | None = None
        self._array: zarr.Array | None = None
        self._array_rows = -1
        self._plain: bool | None = None  # plain shard layout: read and written directly (layout.py)
        self._shard_idx: dict[int, np.ndarray] = {}  # shard -> its (offset, nbytes) index; shards are immutable
        self._image_bytes = int(np.prod(spec.grid)) * np.dtype(spec.dtype).itemsize

    def __repr__(self) -> str:
        return f"FeatureSet({self.id!r}, grid={self.spec.grid}, dim={self.spec.global_dim})"

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, loc: Location, spec: FeatureSetSpec) -> "FeatureSet":
        with loc.lock(layout.LOCK_FILE):
            if loc.exists(layout.FEATURE_SET_JSON):
                return cls.open(loc)
            with zarr.config.set(_ZARR_CONFIG):
                group = zarr.open_group(loc.zarr_store(layout.PATCHES_GROUP), mode="w", zarr_format=3)
                c, h, w = spec.grid
                s = spec.shard_images
                group.create_array(
                    layout.PATCHES_ARRAY,
                    shape=(0, c, h, w),
                    chunks=(1, c, h, w),
                    shards=(s, c, h, w) if spec.sharded and s > 1 else None,
                    dtype=spec.dtype,
                    fill_value=np.nan,
                    compressors=None if spec.codec == "none" else zarr.codecs.ZstdCodec(level=1),
                    dimension_names=layout.DIMENSION_NAMES,
                    attributes={"feature_set_id": spec.feature_set_id, "note": "rows are valid only where cls/ has them"},
                )
            meta = {
                "feature_set_id": spec.feature_set_id,
                "format_version": layout.FORMAT_VERSION,
                "created_at": datetime.now(timezone.utc).isoformat(),
                "spec": spec.to_json(),
            }
            loc.write_json(meta, layout.FEATURE_SET_JSON)  # written last: marks the set as complete
            return cls(loc, spec, meta)

    @classmethod
    def open(cls, loc: Location) -> "FeatureSet":
        meta = loc.read_json(layout.FEATURE_SET_JSON)
        layout.check_format_version(meta.get("format_version"), f"feature set {loc.url}")
        return cls(loc, FeatureSetSpec.from_json(meta["spec"]), meta)

    # -- the array --------------------------------------------------------------------------
    def _open_array(self, fresh: bool = False) -> zarr.Array:
        if self._array is None or fresh:
            with zarr.config.set(_ZARR_CONFIG):
                group = zarr.open_group(self.loc.zarr_store(layout.PATCHES_GROUP), mode="r+")
                self._array = group[layout.PATCHES_ARRAY]
            self._array_rows = self._array.shape[0]
        return self._array

    def allocate_shards(self, n: int = 1) -> list[int]:
        """Reserve ``n`` fresh shard indices for this writer alone (grows the array once)."""
        with self.loc.lock(layout.LOCK_FILE):
            arr = self._open_array(fresh=True)
            s = self.spec.shard_images
            first = -(-arr.shape[0] // s)
            with zarr.config.set(_ZARR_CONFIG):
                arr.resize(((first + n) * s, *self.spec.grid))
            self._array = None  # reopen read-only-fresh on next use
            return list(range(first, first + n))

    # -- writing ----------------------------------------------------------------------------
    def writer(self, *, skip_committed: bool = True, background: bool = True, shards: Sequence[int] = ()) -> "FeatureSetWriter":
        """A writer; ``shards`` are indices a coordinator allocated for it (used first, once each)."""
        return FeatureSetWriter(self, skip_committed=skip_committed, background=background, shards=shards)

    def write_shard(
        self,
        shard: int,
        image_ids: Sequence[str],
        cls: np.ndarray,
        patches: np.ndarray,
        sha256: Sequence[str | None] | None = None,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Commit one whole shard: grids first (one array call), then the cls part (atomic)."""
        n = len(image_ids)
        s = self.spec.shard_images
        if not 0 < n <= s:
            raise FeatureSetError(f"a shard holds 1..{s} images, got {n}")
        if patches.dtype != np.dtype(self.spec.dtype):
            raise FeatureSetError(f"patches must already be {self.spec.dtype}, got {patches.dtype}")
        start = shard * s
        arr = self._array_for_rows(start + n)
        if self._plain_shards():
            # One buffered write of the grids as they are, then the index (layout.py): no
            # per-chunk encoding. Atomic locally (temp + rename) and on object stores (one PUT).
            data = np.ascontiguousarray(patches).reshape(-1).view(np.uint8)
            self.loc.write_atomic([data, layout.shard_index(n, s, self._image_bytes)], self._shard_key(shard))
        else:
            with zarr.config.set(_ZARR_CONFIG):
                arr[start : start + n] = patches
        self._commit_cls_part(shard, self._cls_table(shard, image_ids, cls, sha256, extras))

    def _cls_table(self, shard: int, image_ids: Sequence[str], cls: np.ndarray, sha256: Sequence[str | None] | None, extras: dict[str, np.ndarray] | None) -> pa.Table:
        n = len(image_ids)
        start = shard * self.spec.shard_images
        now = layout.now_ms()

        def vectors(x: np.ndarray, dim: int) -> pa.FixedSizeListArray:
            return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, np.float32).reshape(-1)), dim)

        extras = extras or {}
        return pa.table(
            {
                "image_id": pa.array(list(image_ids), pa.string()),
                "row": pa.array(np.arange(start, start + n), pa.int64()),
                "shard": pa.array(np.full(n, shard), pa.int64()),
                "cls": vectors(cls, self.spec.global_dim),
                **{k: vectors(extras[k][:n], d) for k, d in self.spec.extra_globals.items()},
                "sha256": pa.array(list(sha256) if sha256 is not None else [None] * n, pa.string()),
                "extracted_at": pa.array([now] * n, pa.timestamp("ms", tz="UTC")),
            },
            schema=self.cls_schema,
        )

    def _commit_cls_part(self, shard: int, table: pa.Table) -> None:
        # The commit point. Kept as its own method so fault-injection tests can kill here.
        self.loc.write_parquet(table, layout.CLS_DIR, layout.cls_part_name(shard, uuid.uuid4().hex[:12]), dictionary_columns=["image_id"])
        self._index = None

    def record_rejects(self, image_ids: Sequence[str], reasons: Sequence[str]) -> None:
        """Remember images an extraction could not embed, with the reason."""
        if not image_ids:
            return
        now = layout.now_ms()
        table = pa.table(
            {"image_id": list(image_ids), "reason": list(reasons), "time": [now] * len(image_ids)},
            schema=layout.REJECTS_SCHEMA,
        )
        self.loc.write_parquet(table, layout.REJECTS_DIR, f"part-{uuid.uuid4().hex}.parquet")

    def _array_for_rows(self, rows: int) -> zarr.Array:
        arr = self._open_array()
        if self._array_rows < rows:
            arr = self._open_array(fresh=True)
            if self._array_rows < rows:
                raise FeatureSetError(
                    f"shard rows up to {rows} were never allocated in {self.id} (array has {self._array_rows}); "
                    "call allocate_shards() first"
                )
        return arr

    def _plain_shards(self) -> bool:
        """Whether the array has the plain shard layout radstore reads and writes directly."""
        if self._plain is None:
            self._plain = _is_plain_shard_layout(self._open_array().metadata, self.spec)
        return self._plain

    def _shard_key(self, shard: int) -> str:
        key = self._open_array().metadata.encode_chunk_key((shard, 0, 0, 0))
        return f"{layout.PATCHES_GROUP}/{layout.PATCHES_ARRAY}/{key}"

    def _shard_offsets(self, shard: int) -> np.ndarray:
        """[S, 2] (offset, nbytes) of a committed shard; cached, since a shard is written once."""
        idx = self._shard_idx.get(shard)
        if idx is None:
            s = self.spec.shard_images
            idx = layout.parse_shard_index(self.loc.read_tail(layout.shard_index_nbytes(s), self._shard_key(shard)), s)
            self._shard_idx[shard] = idx
        return idx

    def _read_plain(self, rows: np.ndarray, out: np.ndarray) -> bool:
        """Fill ``out`` by ranged reads of the shard objects, one read per run of rows stored
        one after another. False (nothing promised about ``out``) where that is not possible:
        a missing shard or image, or a shard not in the plain layout; the caller then reads
        through zarr, which reports missing grids."""
        s, nb = self.spec.shard_images, self._image_bytes
        try:
            shards = rows // s
            offsets = np.empty(len(rows), np.int64)
            for sh in np.unique(shards):
                at = shards == sh
                idx = self._shard_offsets(int(sh))[rows[at] - sh * s]
                if (idx[:, 1] != nb).any():
                    return False  # an image this shard does not hold
                offsets[at] = idx[:, 0].astype(np.int64)
            # A new run starts where the shard changes or the next row is not the next stored image.
            brk = np.flatnonzero((shards[1:] != shards[:-1]) | (offsets[1:] != offsets[:-1] + nb)) + 1
            starts = np.r_[0, brk]
            ends = np.r_[brk, len(rows)]
            self.loc.read_ranges_into(
                [out[a:b] for a, b in zip(starts, ends)],
                [int(offsets[a]) for a in starts],
                [self._shard_key(int(shards[a])) for a in starts],
            )
            return True
        except (OSError, ValueError, EOFError):
            return False

    # -- reading ----------------------------------------------------------------------------
    @property
    def cls_schema(self) -> pa.Schema:
        return layout.cls_schema(self.spec.global_dim, self.spec.extra_globals)

    def cls_parts(self) -> list[str]:
        return self.loc.list(layout.CLS_DIR, suffix=".parquet")

    def cls(self, columns: list[str] | None = None) -> pa.Table:
        """Committed rows (one per image_id, first commit wins), ordered by row."""
        schema = self.cls_schema
        want = None if columns is None else list(dict.fromkeys(["image_id", "row", *columns]))
        if want is not None and set(want) <= set(layout.COMMITTED_SCHEMA.names):
            table = self.committed_rows().select(want)  # the committed index serves these
        else:
            table = self.loc.read_parquet(self.cls_parts(), columns=want, schema=schema)
        # Sorted by row, i.e. by shard: the first occurrence of an id is its first commit.
        table = layout.keep_first(table.sort_by([("row", "ascending")]))
        if columns is not None:
            table = table.select(columns)
        return table

    def committed_ids(self) -> set[str]:
        return set(self.committed_rows().column("image_id").to_pylist())

    #: ``committed_rows(update_index=True)`` writes a new committed index once the newest one
    #: misses at least this many cls parts (layout.py, "The committed index").
    COMMITTED_INDEX_MIN_NEW_PARTS = 256

    def committed_rows(self, *, update_index: bool = False) -> pa.Table:
        """(image_id, row, shard) of every row of every cls part, in no particular order and
        with repeats (``cls()`` keeps the first): the committed index plus the parts it does
        not name. ``update_index`` (the extraction planner) writes a new index when at least
        COMMITTED_INDEX_MIN_NEW_PARTS parts had to be read one by one."""
        names = layout.COMMITTED_SCHEMA.names
        parts = self.cls_parts()
        by_name = {p.rsplit("/", 1)[-1]: p for p in parts}
        index, covered = self._read_committed_index(set(by_name))
        rest = [p for n, p in by_name.items() if n not in covered]
        table = self.loc.read_parquet(rest, columns=names, schema=self.cls_schema)
        if index is not None:
            table = pa.concat_tables([index, table.cast(index.schema)])
        if update_index and len(rest) >= self.COMMITTED_INDEX_MIN_NEW_PARTS:
            with contextlib.suppress(OSError):  # a cache: a read-only store just stays slower
                self._write_committed_index(table, list(by_name))
        return table

    def _read_committed_index(self, listed: set[str]) -> tuple[pa.Table | None, set[str]]:
        """The newest committed index whose parts are all still listed, and the parts it names."""
        found = self.loc.list(layout.COMMITTED_DIR, suffix=".parquet")
        for path in sorted(found, key=lambda p: (layout.committed_index_parts(p), p), reverse=True):
            try:
                t = self.loc.read_parquet_file(path)
            except (OSError, pa.ArrowException):
                continue  # removed by a newer planner meanwhile, or unreadable: read the parts
            covered = set((t.schema.metadata or {}).get(_INDEX_PARTS_KEY, b"").decode().split("\n")) - {""}
            if covered and covered <= listed:
                return t.select(layout.COMMITTED_SCHEMA.names).replace_schema_metadata(None), covered
        return None, set()

    def _write_committed_index(self, table: pa.Table, part_names: list[str]) -> None:
        old = self.loc.list(layout.COMMITTED_DIR, suffix=".parquet")
        t = table.select(layout.COMMITTED_SCHEMA.names).cast(layout.COMMITTED_SCHEMA)
        t = t.replace_schema_metadata({_INDEX_PARTS_KEY: "\n".join(sorted(part_names)).encode()})
        name = layout.committed_index_name(len(part_names), uuid.uuid4().hex[:12])
        self.loc.write_parquet(t, layout.COMMITTED_DIR, name)
        for p in old:  # superseded (a concurrent planner's newer index is kept: it names more parts)
            if layout.committed_index_parts(p) <= len(part_names):
                with contextlib.suppress(OSError):
                    self.loc.fs.rm(p)

    def index(self, refresh: bool = False) -> dict[str, int]:
        """image_id -> row of every committed image."""
        if self._index is None or refresh:
            t = self.cls(columns=["image_id", "row"])
            self._index = dict(zip(t.column("image_id").to_pylist(), t.column("row").to_pylist()))
        return self._index

    def __len__(self) -> int:
        return len(self.index(refresh=True))

    def rows_for(self, image_ids: Sequence[str]) -> np.ndarray:
        idx = self.index()
        missing = [i for i in image_ids if i not in idx]
        if missing:
            idx = self.index(refresh=True)
            missing = [i for i in image_ids if i not in idx]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise FeatureSetError(
                f"{len(missing)} image_id(s) have no committed row in feature set {self.id}: "
                f"{', '.join(map(str, missing[:5]))}{more}. Extract them first (radstore extract)."
            )
        return np.fromiter((idx[i] for i in image_ids), dtype=np.int64, count=len(image_ids))

    def patches(self, image_ids: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
        """Patch grids ``[N, C, H, W]`` in the order asked, read by concurrent single-image reads."""
        rows = self.rows_for(list(image_ids))
        return self.read_rows(rows, out=out, image_ids=image_ids)

    def read_rows(self, rows: np.ndarray, out: np.ndarray | None = None, image_ids: Sequence[str] | None = None) -> np.ndarray:
        arr = self._array_for_rows(int(rows.max()) + 1 if len(rows) else 0)
        shape = (len(rows), *self.spec.grid)
        if out is None:
            out = np.empty(shape, dtype=self.spec.dtype)
        elif out.shape != shape or out.dtype != np.dtype(self.spec.dtype):
            raise FeatureSetError(f"out buffer must be {shape} {self.spec.dtype}, got {out.shape} {out.dtype}")
        rows = np.asarray(rows, np.int64)
        if len(rows) and out.flags.c_contiguous and self._plain_shards() and self._read_plain(rows, out):
            self._require_present(out, rows, image_ids)
            return out

        async def one(i: int, r: int) -> None:
            out[i] = await arr._async_array.getitem(int(r))

        async def gather() -> None:
            await asyncio.gather(*(one(i, r) for i, r in enumerate(rows)))

        with zarr.config.set(_ZARR_CONFIG):
            zarr.core.sync.sync(gather())
        self._require_present(out, rows, image_ids)
        return out

    def _require_present(self, out: np.ndarray, rows: np.ndarray, image_ids: Sequence[str] | None = None) -> None:
        """A never-written chunk reads as NaN fill: one value per image tells."""
        bad = np.flatnonzero(np.isnan(out[:, 0, 0, 0])) if len(rows) else []
        if len(bad):
            who = [str(image_ids[i]) if image_ids is not None else f"row {rows[i]}" for i in bad[:5]]
            raise StoreCorruptionError(
                f"feature set {self.id}: committed grid(s) missing on storage for {', '.join(who)}. "
                "The cls table says they were written but the array has no data: run "
                "`radstore store verify` and re-extract those images."
            )

    def read_span(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Grids of ``rows`` that lie close together (one shard): one read, then a take.

        A whole-shard slice is decoded in one call, several times faster than one read per row;
        in the plain shard layout (layout.py) each run of consecutive rows is one ranged read.
        ``out`` (C-contiguous, ``[len(rows), C, H, W]`` of the store dtype) is filled and
        returned when given.
        """
        rows = np.asarray(rows, np.int64)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        arr = self._array_for_rows(hi)
        shape = (len(rows), *self.spec.grid)
        if out is not None and (out.shape != shape or out.dtype != np.dtype(self.spec.dtype) or not out.flags.c_contiguous):
            raise FeatureSetError(f"out buffer must be C-contiguous {shape} {self.spec.dtype}, got {out.shape} {out.dtype}")
        if self._plain_shards():
            target = np.empty(shape, dtype=self.spec.dtype) if out is None else out
            if self._read_plain(rows, target):
                self._require_present(target, rows)
                return target
        with zarr.config.set(_ZARR_CONFIG):
            block = arr[lo:hi]
        got = block[rows - lo] if len(rows) != hi - lo or not np.array_equal(rows, np.arange(lo, hi)) else block
        self._require_present(got, rows)
        if out is not None:
            out[...] = got
            return out
        return got

    def map_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Grids of ``rows`` (all in one shard) without reading them: ``(mapped, at)`` where
        ``mapped[at[i]]`` is row ``rows[i]``'s grid, ``mapped`` a memory map of the shard
        object (copy-on-write, never written). Nothing is copied until the caller indexes it.

        Local stores in the plain shard layout, with the shard's images stored in order from
        its start (as radstore writes them); None otherwise (then use :meth:`read_span`).
        Missing grids raise StoreCorruptionError as in the read paths.
        """
        rows = np.asarray(rows, np.int64)
        s, nb = self.spec.shard_images, self._image_bytes
        if not len(rows) or not self.loc.is_local or not self._plain_shards():
            return None
        shard = int(rows[0] // s)
        if (rows // s != shard).any():
            return None
        try:
            idx = self._shard_offsets(shard)
        except (OSError, ValueError):
            return None
        present = idx[:, 1] == nb
        k = int(present.sum())
        at = rows - shard * s
        if k == 0 or not present[:k].all() or int(at.max()) >= k or not np.array_equal(idx[:k, 0], np.arange(k, dtype=np.uint64) * np.uint64(nb)):
            return None
        mapped = np.memmap(self.loc.path(self._shard_key(shard)), dtype=self.spec.dtype, mode="c", shape=(k, *self.spec.grid))
        self._require_present_at(mapped, at, rows)
        return mapped, at

    def _require_present_at(self, mapped: np.ndarray, at: np.ndarray, rows: np.ndarray) -> None:
        bad = np.flatnonzero(np.isnan(mapped[at, 0, 0, 0]))
        if len(bad):
            self._require_present(mapped[at[bad]], rows[bad])

    def to_xarray(self):
        """Lazy ``xarray.Dataset``: ``patches`` (dask, one chunk per shard) and ``cls``, committed rows only."""
        import xarray as xr

        t = self.cls()
        rows = t.column("row").to_numpy()
        ids = t.column("image_id").to_pylist()
        with zarr.config.set(_ZARR_CONFIG):
            ds = xr.open_zarr(
                self.loc.zarr_store(layout.PATCHES_GROUP, read_only=True),
                chunks={"image": self.spec.shard_images},
                consolidated=False,
                zarr_format=3,
            )
        ds = ds.isel(image=rows)
        cls = t.column("cls").combine_chunks().flatten().to_numpy().reshape(len(ids), self.spec.global_dim)
        c, h, w = self.spec.grid
        ds = ds.assign_coords(image_id=("image", ids), channel=np.arange(c), y=np.arange(h), x=np.arange(w))
        ds["cls"] = (("image", "dim"), cls)
        ds = ds.swap_dims({"image": "image_id"}).drop_vars("image", errors="ignore")
        ds.attrs.update({"feature_set_id": self.id, "encoder": self.spec.encoder})
        return ds

    def verify(self) -> list[str]:
        """image_ids whose committed row has no grid on storage (should always be empty)."""
        t = self.cls(columns=["image_id", "row"])
        ids, rows = t.column("image_id").to_pylist(), t.column("row").to_numpy()
        arr = self._array_for_rows(int(rows.max()) + 1 if len(rows) else 0)
        s = self.spec.shard_images
        bad: list[str] = []
        with zarr.config.set(_ZARR_CONFIG):
            for shard in np.unique(rows // s):  # one read per shard, not one per row
                lo, hi = int(shard * s), int(shard * s + s)
                first = arr[lo:hi, 0, 0, 0]
                bad += [ids[k] for k in np.flatnonzero((rows >= lo) & (rows < hi)) if np.isnan(first[rows[k] - lo])]
        return bad

    def rejects(self) -> pa.Table:
        return self.loc.read_parquet(self.loc.list(layout.REJECTS_DIR, suffix=".parquet"), schema=layout.REJECTS_SCHEMA)

    def info(self) -> dict[str, Any]:
        return {
            "feature_set_id": self.id,
            "encoder": self.spec.encoder,
            "grid": "x".join(map(str, self.spec.grid)),
            "global_dim": self.spec.global_dim,
            "dtype": self.spec.dtype,
            "shard_images": self.spec.shard_images,
            "images": len(self),
            "bytes": self.loc.du(),
            "labels": self.spec.labels,
        }


_INDEX_PARTS_KEY = b"radstore.parts"
#: Grids are cast and appended to a streamed shard in pieces of about this size: small enough to
#: stay in cache between the cast and the write, and to keep the staging buffers' first-touch
#: page faults small for short writes (3 x 8 MiB instead of 3 x a 16-image batch).
_STAGE_BYTES = 8 * 2**20
_STAGE_SLOTS = 3


@contextlib.contextmanager
def _one_torch_thread(x: Any):
    """Run the writer's check and cast of CPU tensors on one intra-op thread.

    Both are memory-bound: a second OpenMP thread does not make them faster, but its spinning
    takes the core the background shard write needs (measured on 2 cores: 1.47 instead of
    2.09 ms of CPU per 768x37x37 grid; benchmarks/README.md). Device tensors are left alone.
    """
    n = torch.get_num_threads()
    if n == 1 or (isinstance(x, torch.Tensor) and x.device.type != "cpu"):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _is_plain_shard_layout(meta: Any, spec: FeatureSetSpec) -> bool:
    """Sharded, one image per chunk, no compressor, ``[bytes, crc32c]`` index at the end,
    little-endian: the shard layout of layout.py that radstore reads and writes directly."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
    from zarr.codecs.sharding import ShardingCodecIndexLocation

    codecs = tuple(getattr(meta, "codecs", ()))
    if sys.byteorder != "little" or len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return False
    sc = codecs[0]

    def little(c: Any) -> bool:
        return isinstance(c, BytesCodec) and (c.endian is None or c.endian.value == "little")

    try:
        native = np.dtype(meta.data_type.to_native_dtype())
        shard_shape = tuple(meta.chunk_grid.chunk_shape)
    except Exception:  # noqa: BLE001 - an unfamiliar metadata object: let zarr do the I/O
        return False
    return (
        tuple(sc.chunk_shape) == (1, *spec.grid)
        and shard_shape == (spec.shard_images, *spec.grid)
        and len(sc.codecs) == 1
        and little(sc.codecs[0])
        and len(sc.index_codecs) == 2
        and little(sc.index_codecs[0])
        and isinstance(sc.index_codecs[1], Crc32cCodec)
        and sc.index_location == ShardingCodecIndexLocation.end
        and native == np.dtype(spec.dtype)
        and native.byteorder in ("=", "<", "|")
    )


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    """A CPU-or-device float tensor view of ``x``; checks finiteness cheaply."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise FeatureSetError(f"{what} must be floating point, got {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise FeatureSetError(f"{what} must be floating point, got {x.dtype}")
        t = x.detach()
    else:
        raise FeatureSetError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")
    # A sum is finite iff every element is (20x cheaper than isfinite().all() here); only
    # on a non-finite sum (NaN/Inf, or an overflow of huge values) look element-wise. Half
    # types: their min and max instead (NaN propagates; 6x cheaper than a float32-accumulated
    # sum of float16 here, which is what extraction hands the writer).
    if t.dtype in (torch.float16, torch.bfloat16) and t.numel():
        lo, hi = torch.aminmax(t)
        finite = bool(torch.isfinite(lo) & torch.isfinite(hi))
    else:
        finite = bool(torch.isfinite(t.sum(dtype=torch.float32)))
    if not finite:
        flat = t.reshape(t.shape[0], -1)
        bad = (~torch.isfinite(flat)).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise _NonFinite(bad)
    return t


class _NonFinite(Exception):
    def __init__(self, positions: list[int]):
        self.positions = positions


class _ShardBuffer:
    """One shard's worth of rows, filled in place (the cast to the store dtype happens here, in torch)."""

    def __init__(self, spec: FeatureSetSpec, stream: bool = False):
        s = spec.shard_images
        # Streamed shards (local, plain layout) go to their file batch by batch: no grid buffer.
        self.patches = None if stream else np.empty((s, *spec.grid), dtype=spec.dtype)
        self.cls = np.empty((s, spec.global_dim), dtype=np.float32)
        self.extras = {k: np.empty((s, d), dtype=np.float32) for k, d in spec.extra_globals.items()}
        self.ids: list[str] = []
        self.sha: list[str | None] = []
        self._p = None if stream else torch.from_numpy(self.patches)
        self._c = torch.from_numpy(self.cls)
        # streaming state: the shard, its final and temporary paths, the open file, the appends
        self.shard: int | None = None
        self.final = self.tmp = ""
        self.file: Any = None
        self.appends: list[Future] = []

    @property
    def n(self) -> int:
        return len(self.ids)

    def put(self, ids: list[str], sha: list[str | None], cls: torch.Tensor, patches: torch.Tensor | None, extras: dict[str, torch.Tensor]) -> None:
        a, b = self.n, self.n + len(ids)
        if patches is not None:
            self._p[a:b].copy_(patches)
        self._c[a:b].copy_(cls)
        for k, v in extras.items():
            torch.from_numpy(self.extras[k])[a:b].copy_(v)
        self.ids.extend(ids)
        self.sha.extend(sha)

    def reset(self) -> None:
        self.ids, self.sha = [], []
        self.shard, self.final, self.tmp, self.file, self.appends = None, "", "", None, []


class FeatureSetWriter:
    """Buffers validated batches into whole shards and commits each shard in one call.

    A batch is validated as a whole before any of it is buffered: wrong shape or dtype, NaN or
    Inf, an empty or repeated image_id in the batch -> FeatureSetError, nothing of that batch
    kept. Already committed image_ids are skipped (resume). Two shard buffers alternate: one
    is committed by a background thread while the caller fills the other. ``close()`` (or
    leaving the ``with`` block, also on an exception) commits the last, partial shard.

    On local stores with the plain shard layout (layout.py) the grids are not buffered: each
    batch is cast, in pieces of ~8 MiB, into one of three staging buffers and appended by the
    background thread to a temporary file while the caller goes on; the commit allocates the
    shard, writes the index, renames the file into place and then writes the cls part, the
    same order as for a buffered shard.
    """

    def __init__(self, fs: FeatureSet, *, skip_committed: bool = True, background: bool = True, shards: Sequence[int] = ()):
        self.fs = fs
        self._preallocated = list(shards)
        self.spec = fs.spec
        self.skip = fs.committed_ids() if skip_committed else set()
        self._stream = background and fs.loc.is_local and fs._plain_shards()
        self._buffers = [_ShardBuffer(self.spec, self._stream)] + ([_ShardBuffer(self.spec, self._stream)] if background else [])
        self._staging: list[list[Any]] = [[None, None] for _ in range(_STAGE_SLOTS)]  # [array, pending append]
        self._stage_next = 0
        self._cur = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="radstore-shard") if background else None
        self._pending: Future | None = None
        self.written = 0
        self.skipped = 0
        self.shards_committed = 0

    def __enter__(self) -> "FeatureSetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(
        self,
        image_ids: Sequence[str],
        cls: Any,
        patches: Any,
        sha256: Sequence[str | None] | None = None,
        extras: dict[str, Any] | None = None,
    ) -> WriteResult:
        ids = [str(i) for i in image_ids]
        b = len(ids)
        c, h, w = self.spec.grid
        d = self.spec.global_dim
        if any(not i for i in ids):
            raise FeatureSetError("empty image_id in batch; nothing of this batch was written")
        if len(set(ids)) != b:
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise FeatureSetError(f"image_id(s) {', '.join(dupes[:5])} appear twice in one batch; nothing of this batch was written")
        if tuple(cls.shape) != (b, d):
            raise FeatureSetError(
                f"cls has shape {tuple(cls.shape)}, feature set {self.fs.id} expects ({b}, {d}) for {b} image_id(s); "
                "nothing of this batch was written"
            )
        if tuple(patches.shape) != (b, c, h, w):
            raise FeatureSetError(
                f"patches have shape {tuple(patches.shape)}, feature set {self.fs.id} expects ({b}, {c}, {h}, {w}); "
                "nothing of this batch was written"
            )
        if sha256 is not None and len(sha256) != b:
            raise FeatureSetError(f"{len(sha256)} sha256 values for {b} image_ids; nothing of this batch was written")
        extras = extras or {}
        if set(extras) != set(self.spec.extra_globals):
            raise FeatureSetError(
                f"feature set {self.fs.id} expects extra global(s) {sorted(self.spec.extra_globals)}, got {sorted(extras)}; "
                "nothing of this batch was written"
            )
        for k, v in extras.items():
            if tuple(v.shape) != (b, self.spec.extra_globals[k]):
                raise FeatureSetError(
                    f"extra global {k!r} has shape {tuple(v.shape)}, expected ({b}, {self.spec.extra_globals[k]}); "
                    "nothing of this batch was written"
                )
        with _one_torch_thread(patches):
            return self._validated_write(ids, cls, patches, sha256, extras)

    def _validated_write(self, ids: list[str], cls: Any, patches: Any, sha256: Sequence[str | None] | None, extras: dict[str, Any]) -> WriteResult:
        b = len(ids)
        try:
            cls_t = _as_tensor(cls, "cls")
            pat_t = _as_tensor(patches, "patches")
            ext_t = {k: _as_tensor(v, k) for k, v in extras.items()}
        except _NonFinite as e:
            who = ", ".join(ids[i] for i in e.positions[:5])
            raise FeatureSetError(f"NaN or Inf in the embedding of image_id(s) {who}; nothing of this batch was written") from None
        keep = [k for k, i in enumerate(ids) if i not in self.skip]
        skipped = b - len(keep)
        if skipped and keep:
            sel = torch.as_tensor(keep, device=pat_t.device)
            cls_t, pat_t = cls_t.index_select(0, sel.to(cls_t.device)), pat_t.index_select(0, sel)
            ext_t = {k: v.index_select(0, sel.to(v.device)) for k, v in ext_t.items()}
        ids_k = [ids[k] for k in keep]
        sha_k = [(sha256[k] if sha256 is not None else None) for k in keep]
        self.skip.update(ids_k)  # the same id later in this run is a repeat
        self.skipped += skipped
        pos, s = 0, self.spec.shard_images
        while pos < len(ids_k):
            buf = self._buffers[self._cur]
            take = min(s - buf.n, len(ids_k) - pos)
            if self._stream:
                step = max(1, _STAGE_BYTES // self.fs._image_bytes)
                for a in range(pos, pos + take, step):
                    self._append(buf, pat_t[a : min(pos + take, a + step)])
            buf.put(
                ids_k[pos : pos + take],
                sha_k[pos : pos + take],
                cls_t[pos : pos + take],
                None if self._stream else pat_t[pos : pos + take],
                {k: v[pos : pos + take] for k, v in ext_t.items()},
            )
            pos += take
            if buf.n == s:
                self._flush()
        return WriteResult(accepted=len(ids_k), skipped=skipped)

    def _next_shard(self) -> int:
        # A shard is committed once, by one writer: preallocated ones are used up, then new ones.
        (shard,) = [self._preallocated.pop(0)] if self._preallocated else self.fs.allocate_shards(1)
        return shard

    def _append(self, buf: _ShardBuffer, patches: torch.Tensor) -> None:
        """Cast a batch's grids into a staging buffer and queue their append to the shard's file."""
        if buf.file is None:
            # The shard index is allocated by the commit, in the background; until then the
            # grids go to a temporary file beside the array's metadata.
            buf.tmp = self.fs.loc.path(layout.PATCHES_GROUP, layout.PATCHES_ARRAY, f"{uuid.uuid4().hex}.partial")
            buf.file = open(buf.tmp, "wb")  # noqa: SIM115 - closed by the commit (or its failure)
        slot = self._staging[self._stage_next]
        self._stage_next = (self._stage_next + 1) % len(self._staging)
        if slot[1] is not None:
            slot[1].result()  # that staging buffer's last append is done (re-raises its failure)
            slot[1] = None
        k = len(patches)
        if slot[0] is None or len(slot[0]) < k:
            slot[0] = np.empty((k, *self.spec.grid), dtype=self.spec.dtype)
        stage = slot[0][:k]
        torch.from_numpy(stage).copy_(patches)
        slot[1] = self._pool.submit(buf.file.write, stage.reshape(-1).view(np.uint8))
        buf.appends.append(slot[1])

    def _flush(self) -> None:
        buf = self._buffers[self._cur]
        if buf.n == 0:
            return
        self._wait()  # the other buffer's commit must finish before we reuse it next
        if self._stream:
            self._pending = self._pool.submit(self._commit_stream, buf)
            self._cur = (self._cur + 1) % len(self._buffers)
            return
        shard = self._next_shard()
        if self._pool is None:
            self._commit(shard, buf)
        else:
            self._pending = self._pool.submit(self._commit, shard, buf)
            self._cur = (self._cur + 1) % len(self._buffers)

    def _commit_stream(self, buf: _ShardBuffer) -> None:
        """(background thread, after the shard's appends) allocate, index, rename into place, cls part."""
        n = buf.n
        try:
            shard = buf.shard = self._next_shard()
            buf.final = self.fs.loc.path(self.fs._shard_key(shard))
            os.makedirs(os.path.dirname(buf.final), exist_ok=True)
            for f in buf.appends:
                f.result()  # already run (same thread, queued earlier); re-raise a failed append
            if buf.file.tell() != n * self.fs._image_bytes:
                raise FeatureSetError(f"a shard of {self.fs.id}: {buf.file.tell()} grid bytes written, expected {n * self.fs._image_bytes}")
            buf.file.write(layout.shard_index(n, self.spec.shard_images, self.fs._image_bytes))
            buf.file.close()
            os.replace(buf.tmp, buf.final)
        except BaseException:
            with contextlib.suppress(OSError):
                buf.file.close()
            with contextlib.suppress(OSError):
                os.unlink(buf.tmp)
            raise
        table = self.fs._cls_table(shard, buf.ids, buf.cls[:n], buf.sha, {k: v[:n] for k, v in buf.extras.items()})
        self.fs._commit_cls_part(shard, table)
        self.written += n
        self.shards_committed += 1
        buf.reset()

    def _commit(self, shard: int, buf: _ShardBuffer) -> None:
        n = buf.n
        self.fs.write_shard(shard, buf.ids, buf.cls[:n], buf.patches[:n], buf.sha, {k: v[:n] for k, v in buf.extras.items()})
        self.written += n
        self.shards_committed += 1
        buf.reset()

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a background failure here

    def flush(self) -> None:
        """Commit everything buffered (a partial last shard included) and wait for it."""
        self._flush()
        self._wait()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
