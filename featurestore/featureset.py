"""A feature set: the patch grids (Zarr) and global embeddings (Parquet) of one encoder setup.

Writers buffer validated batches into whole shards and commit each shard as described in
:mod:`featurestore.layout`; readers only ever see committed rows.
"""

from __future__ import annotations

import asyncio
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
        with zarr.config.set(_ZARR_CONFIG):
            arr[start : start + n] = patches
        now = layout.now_ms()

        def vectors(x: np.ndarray, dim: int) -> pa.FixedSizeListArray:
            return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, np.float32).reshape(-1)), dim)

        extras = extras or {}
        table = pa.table(
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
        self._commit_cls_part(shard, table)

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

    # -- reading ----------------------------------------------------------------------------
    @property
    def cls_schema(self) -> pa.Schema:
        return layout.cls_schema(self.spec.global_dim, self.spec.extra_globals)

    def cls_parts(self) -> list[str]:
        return self.loc.list(layout.CLS_DIR, suffix=".parquet")

    def cls(self, columns: list[str] | None = None) -> pa.Table:
        """Committed rows (one per image_id, first commit wins), ordered by row."""
        schema = self.cls_schema
        parts = self.cls_parts()
        want = None if columns is None else list(dict.fromkeys(["image_id", "row", *columns]))
        table = self.loc.read_parquet(parts, columns=want, schema=schema)
        # Sorted by row, i.e. by shard: the first occurrence of an id is its first commit.
        table = layout.keep_first(table.sort_by([("row", "ascending")]))
        if columns is not None:
            table = table.select(columns)
        return table

    def committed_ids(self) -> set[str]:
        schema = self.cls_schema
        t = self.loc.read_parquet(self.cls_parts(), columns=["image_id"], schema=schema)
        return set(t.column("image_id").to_pylist())

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

    def read_span(self, rows: np.ndarray) -> np.ndarray:
        """Grids of ``rows`` that lie close together (one shard): one slice read, then a take.

        A whole-shard slice is decoded in one call, several times faster than one read per row.
        """
        lo, hi = int(rows.min()), int(rows.max()) + 1
        arr = self._array_for_rows(hi)
        with zarr.config.set(_ZARR_CONFIG):
            block = arr[lo:hi]
        out = block[rows - lo] if len(rows) != hi - lo or not np.array_equal(rows, np.arange(lo, hi)) else block
        self._require_present(out, rows)
        return out

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
    # on a non-finite sum (NaN/Inf, or an overflow of huge values) look element-wise.
    if not bool(torch.isfinite(t.sum(dtype=torch.float32))):
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

    def __init__(self, spec: FeatureSetSpec):
        s = spec.shard_images
        self.patches = np.empty((s, *spec.grid), dtype=spec.dtype)
        self.cls = np.empty((s, spec.global_dim), dtype=np.float32)
        self.extras = {k: np.empty((s, d), dtype=np.float32) for k, d in spec.extra_globals.items()}
        self.ids: list[str] = []
        self.sha: list[str | None] = []
        self._p = torch.from_numpy(self.patches)
        self._c = torch.from_numpy(self.cls)

    @property
    def n(self) -> int:
        return len(self.ids)

    def put(self, ids: list[str], sha: list[str | None], cls: torch.Tensor, patches: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        a, b = self.n, self.n + len(ids)
        self._p[a:b].copy_(patches)
        self._c[a:b].copy_(cls)
        for k, v in extras.items():
            torch.from_numpy(self.extras[k])[a:b].copy_(v)
        self.ids.extend(ids)
        self.sha.extend(sha)

    def reset(self) -> None:
        self.ids, self.sha = [], []


class FeatureSetWriter:
    """Buffers validated batches into whole shards and commits each shard in one call.

    A batch is validated as a whole before any of it is buffered: wrong shape or dtype, NaN or
    Inf, an empty or repeated image_id in the batch -> FeatureSetError, nothing of that batch
    kept. Already committed image_ids are skipped (resume). Two shard buffers alternate: one
    is committed by a background thread while the caller fills the other. ``close()`` (or
    leaving the ``with`` block, also on an exception) commits the last, partial shard.
    """

    def __init__(self, fs: FeatureSet, *, skip_committed: bool = True, background: bool = True, shards: Sequence[int] = ()):
        self.fs = fs
        self._preallocated = list(shards)
        self.spec = fs.spec
        self.skip = fs.committed_ids() if skip_committed else set()
        self._buffers = [_ShardBuffer(self.spec)] + ([_ShardBuffer(self.spec)] if background else [])
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
            buf.put(
                ids_k[pos : pos + take],
                sha_k[pos : pos + take],
                cls_t[pos : pos + take],
                pat_t[pos : pos + take],
                {k: v[pos : pos + take] for k, v in ext_t.items()},
            )
            pos += take
            if buf.n == s:
                self._flush()
        return WriteResult(accepted=len(ids_k), skipped=skipped)

    def _flush(self) -> None:
        buf = self._buffers[self._cur]
        if buf.n == 0:
            return
        self._wait()  # the other buffer's commit must finish before we reuse it next
        # A shard is committed once, by one writer: preallocated ones are used up, then new ones.
        (shard,) = [self._preallocated.pop(0)] if self._preallocated else self.fs.allocate_shards(1)
        if self._pool is None:
            self._commit(shard, buf)
        else:
            self._pending = self._pool.submit(self._commit, shard, buf)
            self._cur = (self._cur + 1) % len(self._buffers)

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
