"""A feature set: the patch grids (Zarr) and global embeddings (Parquet) of one encoder setup.

:class:`FeatureSet` is what the rest of radstore holds: it opens or creates the set, serves the
committed rows (readers only ever see rows whose cls part exists) and hands out writers. The
work is done by the sibling modules: :mod:`.committed` (which rows exist), :mod:`.grids` and
:mod:`.direct` (reading grids), :mod:`.array` (the zarr array) and :mod:`.writer` (commits).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import zarr

from featurestore import layout
from featurestore.errors import FeatureSetError
from featurestore.featureset import committed
from featurestore.featureset import writer as writing
from featurestore.featureset.array import create_array, grow_array, open_array, shard_object_key, storage_of
from featurestore.featureset.grids import GridReader
from featurestore.featureset.spec import FeatureSetSpec
from featurestore.layout import ShardIndex
from featurestore.storage import HOST, Location


class FeatureSet:
    """Read and write one feature set. Obtain it from :class:`featurestore.store.Store`."""

    #: ``committed_rows(update_index=True)`` writes a new committed index once the newest one
    #: misses at least this many cls parts (layout docstring, "The committed index").
    COMMITTED_INDEX_MIN_NEW_PARTS = 256

    def __init__(self, loc: Location, spec: FeatureSetSpec, meta: dict[str, Any]):
        self.loc = loc
        self.spec = spec
        self.meta = meta
        self.id = spec.feature_set_id
        self._index: dict[str, int] | None = None
        self._array: zarr.Array | None = None
        self._array_rows = -1
        self._plain: bool | None = None
        self._grids = GridReader(self)
        self._next_claim = 0  # claims below this one were tried by this object already
        self._owner = uuid.uuid4().hex  # who this object's claims say owns a shard

    def __repr__(self) -> str:
        return f"FeatureSet({self.id!r}, grid={self.spec.grid}, dim={self.spec.global_dim})"

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, loc: Location, spec: FeatureSetSpec) -> FeatureSet:
        """The feature set at ``loc``, created with ``spec`` unless it exists.

        Every object is created only where absent, so concurrent creators (processes, machines)
        agree on one set and none overwrites what another already wrote.
        """
        if loc.exists(layout.FEATURE_SET_JSON):
            return cls.open(loc)
        create_array(loc, spec)
        # Another creator may have made the array with other storage settings (shard size and
        # codec are not part of the id): the array's own settings are the ones that hold.
        spec = storage_of(open_array(loc), spec)
        meta = {
            "feature_set_id": spec.feature_set_id,
            "format_version": layout.FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(),
            "spec": spec.to_json(),
        }
        # Written last: marks the set as complete. A concurrent creator's record may win.
        if loc.create_exclusive(loc.json_bytes(meta), layout.FEATURE_SET_JSON):
            return cls(loc, spec, meta)
        return cls.open(loc)

    @classmethod
    def open(cls, loc: Location) -> FeatureSet:
        """An existing feature set; refuses a format version this code does not know."""
        meta = loc.read_json(layout.FEATURE_SET_JSON)
        layout.check_format_version(meta.get("format_version"), f"feature set {loc.url}")
        fs = cls(loc, FeatureSetSpec.from_json(meta["spec"]), meta)
        if storage_of(fs._open_array(), fs.spec) != fs.spec:
            raise FeatureSetError(
                f"feature set {fs.id}: {layout.FEATURE_SET_JSON} says shards of {fs.spec.shard_images} image(s), codec "
                f"{fs.spec.codec}, but its array is stored otherwise; the set was damaged by mixed writers: re-extract it"
            )
        return fs

    # -- the array and its shards -----------------------------------------------------------
    def _open_array(self, fresh: bool = False) -> zarr.Array:
        if self._array is None or fresh:
            self._array = open_array(self.loc)
            self._array_rows = self._array.shape[0]
        return self._array

    def array_rows(self) -> int:
        """Rows the array has now: every claimed shard's, committed or not."""
        return self._open_array(fresh=True).shape[0]

    def array_for_rows(self, rows: int) -> zarr.Array:
        """The zarr array, reopened if the cached one has fewer than ``rows`` rows; raises
        FeatureSetError when those rows were never allocated (a writer must allocate first)."""
        arr = self._open_array()
        if self._array_rows < rows:
            arr = self._open_array(fresh=True)
            if self._array_rows < rows:
                raise FeatureSetError(
                    f"shard rows up to {rows} were never allocated in {self.id} (array has {self._array_rows}); "
                    "call allocate_shards() first"
                )
        return arr

    def allocate_shards(self, n: int = 1) -> list[int]:
        """Claim ``n`` fresh shard indices for this writer alone and grow the array to hold them.

        Each claim is an atomic create of ``claims/shard-<k>.json`` (layout, commit protocol
        step 1): a shard another process claimed first is skipped, on every backend.
        """
        s = self.spec.shard_images
        k = max(self._next_claim, -(-self._open_array(fresh=True).shape[0] // s))
        got: list[int] = []
        while len(got) < n:
            if self.loc.create_exclusive(self._claim_record(), layout.CLAIMS_DIR, layout.claim_name(k)):
                got.append(k)
            k += 1
        self._next_claim = k
        grow_array(self.loc, (got[-1] + 1) * s)
        self._array = None  # reopened with its new shape on next use
        return got

    def _claim_record(self) -> bytes:
        return self.loc.json_bytes({"owner": self._owner, "host": HOST, "pid": os.getpid(), "claimed_at": datetime.now(UTC).isoformat()})

    @property
    def plain_layout(self) -> bool:
        """Whether the array has the plain shard layout, which radstore reads and writes directly
        (:meth:`ShardIndex.is_plain_layout`); otherwise every grid goes through zarr."""
        if self._plain is None:
            self._plain = ShardIndex.is_plain_layout(self._open_array().metadata, self.spec)
        return self._plain

    @property
    def image_bytes(self) -> int:
        """Bytes of one stored grid (the unit of the plain layout's offsets)."""
        return self.spec.image_bytes

    def shard_key(self, shard: int) -> str:
        """Store-relative key of a shard's object: where a direct write puts its bytes."""
        return shard_object_key(self._open_array(), shard)

    # -- writing ----------------------------------------------------------------------------
    def writer(
        self, *, skip_committed: bool = True, background: bool = True, shards: Sequence[int] = (), direct: bool | None = None
    ) -> writing.FeatureSetWriter:
        """A writer; ``shards`` are indices a coordinator allocated for it (used first, once each).

        ``direct``: None writes plain-layout shards directly and others through zarr; False
        always goes through zarr; True requires the plain layout (FeatureSetError otherwise).
        """
        return writing.FeatureSetWriter(self, skip_committed=skip_committed, background=background, shards=shards, direct=direct)

    #: Commit one whole, allocated shard: :func:`.writer.write_shard` with this set as ``fs``.
    write_shard = writing.write_shard

    def commit_cls_part(self, shard: int, table: pa.Table) -> None:
        """Write a shard's cls part: the commit point, after which its rows exist.

        A method of its own so fault-injection tests can stop a writer exactly here.
        """
        self.loc.write_parquet(table, layout.CLS_DIR, layout.cls_part_name(shard, uuid.uuid4().hex[:12]), dictionary_columns=["image_id"])
        self._index = None

    def record_rejects(self, image_ids: Sequence[str], reasons: Sequence[str], paths: Sequence[str | None] | None = None) -> None:
        """Remember images an extraction could not embed, with the reason and (when given) the
        path as written in the manifest."""
        if not image_ids:
            return
        now = layout.now_ms()
        paths = [None] * len(image_ids) if paths is None else list(paths)
        table = pa.table(
            {"image_id": list(image_ids), "path": paths, "reason": list(reasons), "time": [now] * len(image_ids)},
            schema=layout.REJECTS_SCHEMA,
        )
        self.loc.write_parquet(table, layout.REJECTS_DIR, layout.rejects_part_name())

    # -- committed rows ---------------------------------------------------------------------
    @property
    def cls_schema(self) -> pa.Schema:
        """Schema of this set's cls parts (its global dims and extra globals)."""
        return layout.cls_schema(self.spec.global_dim, self.spec.extra_globals, scales=self.spec.scales_channels)

    def cls_parts(self) -> list[str]:
        """Paths of the committed cls parts, one per committed shard."""
        return committed.cls_parts(self.loc)

    def cls(self, columns: list[str] | None = None) -> pa.Table:
        """Committed rows (one per image_id, first commit wins), ordered by row."""
        want = None if columns is None else list(dict.fromkeys(["image_id", "row", *columns]))
        if want is not None and set(want) <= set(layout.COMMITTED_SCHEMA.names):
            table = self.committed_rows().select(want)  # the committed index serves these
        else:
            table = self.loc.read_parquet(self.cls_parts(), columns=want, schema=self.cls_schema)
        # Sorted by row, i.e. by shard: the first occurrence of an id is its first commit.
        table = layout.keep_first(table.sort_by([("row", "ascending")]))
        if columns is not None:
            table = table.select(columns)
        return table

    def committed_ids(self) -> set[str]:
        """Every image_id with a committed row (what a resumed writer skips)."""
        return set(self.committed_rows().column("image_id").to_pylist())

    def committed_rows(self, *, update_index: bool = False) -> pa.Table:
        """(image_id, row, shard) of every row of every cls part, in no particular order and
        with repeats (``cls()`` keeps the first). ``update_index`` (the extraction planner)
        writes a new committed index when at least COMMITTED_INDEX_MIN_NEW_PARTS parts had to
        be read one by one."""
        return committed.committed_rows(
            self.loc, self.cls_schema, update_index=update_index, min_new_parts=self.COMMITTED_INDEX_MIN_NEW_PARTS
        )

    def index(self, refresh: bool = False) -> dict[str, int]:
        """image_id -> row of every committed image."""
        if self._index is None or refresh:
            t = self.cls(columns=["image_id", "row"])
            self._index = dict(zip(t.column("image_id").to_pylist(), t.column("row").to_pylist()))
        return self._index

    def __len__(self) -> int:
        return len(self.index(refresh=True))

    def rows_for(self, image_ids: Sequence[str]) -> np.ndarray:
        """Rows of ``image_ids`` in order; FeatureSetError naming those never committed."""
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

    # -- grids ------------------------------------------------------------------------------
    def patches(self, image_ids: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
        """Patch grids ``[N, C, H, W]`` of committed images, in the order asked."""
        rows = self.rows_for(list(image_ids))
        return self.read_rows(rows, out=out, image_ids=image_ids)

    def read_rows(self, rows: np.ndarray, out: np.ndarray | None = None, image_ids: Sequence[str] | None = None) -> np.ndarray:
        """Grids of ``rows`` in any order (``out``: ``[len(rows), C, H, W]`` of ``spec.read_dtype``;
        an int8 set's are dequantised, into float32 or a float16/float32 ``out``)."""
        return self._grids.read_rows(rows, out=out, image_ids=image_ids)

    def read_span(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Grids of ``rows`` that lie close together (one shard): one read, then a take.

        ``out`` (C-contiguous, ``[len(rows), C, H, W]`` of ``spec.read_dtype``, or float16 for an
        int8 set) is filled and returned when given.
        """
        return self._grids.read_span(rows, out=out)

    def map_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Grids of ``rows`` (all in one shard) without reading them: ``(mapped, at)`` where
        ``mapped[at[i]]`` is row ``rows[i]``'s grid, ``mapped`` a memory map of the shard
        object (copy-on-write, never written). Nothing is copied until the caller indexes it.

        Local stores in the plain shard layout, with the shard's images stored in order from
        its start (as radstore writes them); None otherwise (then use :meth:`read_span`). For
        an int8 set ``mapped`` dequantises the rows it is indexed with (float32), so callers
        never see codes.
        Missing grids raise StoreCorruptionError as in the read paths.
        """
        return self._grids.map_rows(rows)

    def to_xarray(self):
        """Lazy ``xarray.Dataset``: ``patches`` (dask, one chunk per shard) and ``cls``, committed rows only."""
        return self._grids.to_xarray()

    def verify(self) -> list[str]:
        """image_ids whose committed row has no grid on storage (should always be empty)."""
        return self._grids.verify()

    def shared_shards(self) -> dict[int, int]:
        """Shards committed by more than one cls part, with the count (should always be empty:
        a shard has one owner, so two parts mean two writers wrote the same rows)."""
        counts: dict[int, int] = {}
        for p in self.cls_parts():
            k = layout.shard_of_part(p)
            counts[k] = counts.get(k, 0) + 1
        return {k: n for k, n in sorted(counts.items()) if n > 1}

    # -- summaries --------------------------------------------------------------------------
    def rejects(self) -> pa.Table:
        """Images extractions could not embed, with the reason (every attempt, newest not first)."""
        return self.loc.read_parquet(self.loc.list(layout.REJECTS_DIR, suffix=".parquet"), schema=layout.REJECTS_SCHEMA)

    def info(self) -> dict[str, Any]:
        """A one-line-per-field summary for ``radstore store info``."""
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
            "weights_fingerprint": self.spec.weights_fingerprint,
            "fingerprint_scheme": self.spec.scheme_name,
        }
