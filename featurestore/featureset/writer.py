"""Writing a feature set: whole shards, committed as the layout's commit protocol says.

Two ways to put a shard's grids on storage, chosen once per writer (``direct``): *direct*, the
plain shard layout's bytes written by radstore itself (one object: the grids plus a
:class:`~featurestore.layout.ShardIndex`), or *through zarr* (any layout). Either way the cls
part is written last and is the commit point. The writer uses only the feature set's public
API (``loc``, ``spec``, ``id``, ``image_bytes``, ``plain_layout``, ``shard_key``, ``array_for_rows``,
``allocate_shards``, ``committed_ids``, ``cls_schema``, ``commit_cls_part``). Shards are claimed
when they are committed (``allocate_shards``), never ahead, so a writer that dies has claimed
at most the shards it was committing.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
import zarr

from featurestore import layout
from featurestore.errors import FeatureSetError
from featurestore.featureset.array import ZARR_CONFIG
from featurestore.featureset.checks import NonFinite, as_tensor, check_batch, one_torch_thread
from featurestore.featureset.spec import WriteResult
from featurestore.featureset.staging import ShardBuffer, Staging
from featurestore.layout import ShardIndex
from featurestore.storage import is_disk_full

if TYPE_CHECKING:
    from featurestore.featureset.reader import FeatureSet


def resolve_direct(fs: FeatureSet, direct: bool | None) -> bool:
    """Whether to write ``fs``'s shards directly: None means "when the array has the plain
    layout"; False forces zarr (e.g. to compare the two); True on another layout is an error,
    since radstore's own bytes would not be what the array's metadata describes."""
    if direct is None:
        return fs.plain_layout
    if direct and not fs.plain_layout:
        raise FeatureSetError(f"feature set {fs.id} does not have the plain shard layout: its shards cannot be written directly")
    return bool(direct)


def cls_table(
    fs: FeatureSet,
    shard: int,
    image_ids: Sequence[str],
    cls: np.ndarray,
    sha256: Sequence[str | None] | None,
    extras: dict[str, np.ndarray] | None,
) -> pa.Table:
    """The cls part of one shard: its rows, their global vectors, and the time of the commit.

    For an int8 set ``extras`` also carries the rows' grid scales under ``layout.SCALES_COLUMN``
    (``ShardBuffer.filled_extras`` puts them there): they are committed with the rows.
    """
    from featurestore.layout.schemas import SCALES_COLUMN

    n = len(image_ids)
    start = shard * fs.spec.shard_images
    now = layout.now_ms()

    def vectors(x: np.ndarray, dim: int) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, np.float32).reshape(-1)), dim)

    extras = extras or {}
    scales = {}
    if fs.spec.scales_channels is not None:
        if SCALES_COLUMN not in extras:
            raise FeatureSetError(f"feature set {fs.id} stores int8 grids: a shard needs its scales (extras[{SCALES_COLUMN!r}])")
        scales = {SCALES_COLUMN: vectors(extras[SCALES_COLUMN][:n], fs.spec.scales_channels)}
    return pa.table(
        {
            "image_id": pa.array(list(image_ids), pa.string()),
            "row": pa.array(np.arange(start, start + n), pa.int64()),
            "shard": pa.array(np.full(n, shard), pa.int64()),
            "cls": vectors(cls, fs.spec.global_dim),
            **{k: vectors(extras[k][:n], d) for k, d in fs.spec.extra_globals.items()},
            **scales,
            "sha256": pa.array(list(sha256) if sha256 is not None else [None] * n, pa.string()),
            "extracted_at": pa.array([now] * n, pa.timestamp("ms", tz="UTC")),
        },
        schema=fs.cls_schema,
    )


def write_shard(
    fs: FeatureSet,
    shard: int,
    image_ids: Sequence[str],
    cls: np.ndarray,
    patches: np.ndarray,
    sha256: Sequence[str | None] | None = None,
    extras: dict[str, np.ndarray] | None = None,
    *,
    direct: bool | None = None,
) -> None:
    """Commit one whole, allocated shard: grids first (one object write), then the cls part.

    ``direct`` as for :class:`FeatureSetWriter` (:func:`resolve_direct`).
    """
    n = len(image_ids)
    s = fs.spec.shard_images
    if not 0 < n <= s:
        raise FeatureSetError(f"a shard holds 1..{s} images, got {n}")
    if patches.dtype != np.dtype(fs.spec.dtype):
        raise FeatureSetError(f"patches must already be {fs.spec.dtype}, got {patches.dtype}")
    start = shard * s
    arr = fs.array_for_rows(start + n)
    if resolve_direct(fs, direct):
        # The grids as they are, then the index: no per-chunk encoding. Atomic locally
        # (temp + rename) and on object stores (one PUT).
        data = np.ascontiguousarray(patches).reshape(-1).view(np.uint8)
        index = ShardIndex.dense(n, s, fs.image_bytes).to_bytes()
        fs.loc.write_atomic([data, index], fs.shard_key(shard))
    else:
        try:
            with zarr.config.set(ZARR_CONFIG):
                arr[start : start + n] = patches
        except OSError as e:
            if is_disk_full(e):
                raise fs.loc.full_error(fs.loc.path(fs.shard_key(shard)), patches.nbytes) from None
            raise
    fs.commit_cls_part(shard, cls_table(fs, shard, image_ids, cls, sha256, extras))


class FeatureSetWriter:
    """Buffers validated batches into whole shards and commits each shard in one call.

    A batch is validated as a whole before any of it is buffered: wrong shape or dtype, NaN or
    Inf, an empty or repeated image_id in the batch -> FeatureSetError, nothing of that batch
    kept. Already committed image_ids are skipped (resume). Two shard buffers alternate: one
    is committed by a background thread while the caller fills the other. ``close()`` (or
    leaving the ``with`` block, also on an exception) commits the last, partial shard.

    ``direct`` (see :func:`resolve_direct`) chooses how grids reach storage. Writing directly
    to a local store with a background thread, the grids are not buffered but streamed to a
    temporary file (:mod:`.staging`); the commit then allocates the shard, writes the index,
    renames the file into place and writes the cls part, the same order as for a buffered shard.
    """

    def __init__(
        self,
        fs: FeatureSet,
        *,
        skip_committed: bool = True,
        background: bool = True,
        shards: Sequence[int] = (),
        direct: bool | None = None,
    ):
        self.fs = fs
        self.spec = fs.spec
        fs.loc.sweep_partials()  # temporary files of writers that died (their shards were never committed)
        self.direct = resolve_direct(fs, direct)
        self._preallocated = list(shards)
        self.skip = fs.committed_ids() if skip_committed else set()
        self._stream = background and fs.loc.is_local and self.direct
        self._buffers = [ShardBuffer(self.spec, self._stream) for _ in range(2 if background else 1)]
        # One background thread per buffer when streaming: a shard's appends stay in order on its
        # thread, while the next shard's appends run beside the previous one's last writes and
        # commit instead of queueing behind them. Buffered shards: one commit thread.
        n_pools = len(self._buffers) if self._stream else 1
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix=f"radstore-shard{k}") for k in range(n_pools)] if background else []
        self._stagings = [Staging(fs, p) for p in self._pools] if self._stream else []
        self._cur = 0
        self._pending: Future | None = None
        self.written = 0
        self.skipped = 0
        self.shards_committed = 0

    def __enter__(self) -> FeatureSetWriter:
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
        """Validate one batch and buffer its not yet committed images; commits every shard it fills."""
        ids = [str(i) for i in image_ids]
        extras = extras or {}
        check_batch(self.spec, self.fs.id, ids, cls, patches, sha256, extras)
        with one_torch_thread(patches):
            return self._validated_write(ids, cls, patches, sha256, extras)

    def _validated_write(
        self, ids: list[str], cls: Any, patches: Any, sha256: Sequence[str | None] | None, extras: dict[str, Any]
    ) -> WriteResult:
        b = len(ids)
        try:
            cls_t = as_tensor(cls, "cls")
            pat_t = as_tensor(patches, "patches")
            ext_t = {k: as_tensor(v, k) for k, v in extras.items()}
        except NonFinite as e:
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
                self._stagings[self._cur].append(buf, pat_t[pos : pos + take])
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

    def _flush(self) -> None:
        buf = self._buffers[self._cur]
        if buf.n == 0:
            return
        self._wait()  # the other buffer's commit must finish before we reuse it next
        if self._stream:
            self._pending = self._pools[self._cur].submit(self._commit_stream, buf, self._stagings[self._cur])
            self._cur = (self._cur + 1) % len(self._buffers)
            return
        shard = self._next_shard()
        if not self._pools:
            self._commit(shard, buf)
        else:
            self._pending = self._pools[0].submit(self._commit, shard, buf)
            self._cur = (self._cur + 1) % len(self._buffers)

    def _commit_stream(self, buf: ShardBuffer, staging: Staging) -> None:
        """(the buffer's background thread, after the shard's appends) the file into place, then the
        cls part."""
        shard = staging.finish(buf, self._next_shard)
        n = buf.n
        self.fs.commit_cls_part(shard, cls_table(self.fs, shard, buf.ids, buf.cls[:n], buf.sha, buf.filled_extras()))
        self._done(buf)

    def _commit(self, shard: int, buf: ShardBuffer) -> None:
        n = buf.n
        write_shard(self.fs, shard, buf.ids, buf.cls[:n], buf.patches[:n], buf.sha, buf.filled_extras(), direct=self.direct)
        self._done(buf)

    def _done(self, buf: ShardBuffer) -> None:
        self.written += buf.n
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
        """Commit what is buffered and stop the background thread (also after a failure)."""
        try:
            self.flush()
        finally:
            for pool in self._pools:
                pool.shutdown(wait=True)
