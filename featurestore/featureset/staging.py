"""Where a writer keeps a shard until it is committed: its buffer, and for streamed shards the
staging buffers and temporary file its grids go through.

A streamed shard (local store, direct writing, background thread) never holds its grids in
memory: each batch is cast into one of a few small staging buffers and appended to a temporary
file by the background thread while the caller goes on. The shard number is claimed only at
commit, so the file is renamed into place then.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featurestore.errors import FeatureSetError
from featurestore.featureset.quantize import SCALES, quantize_into
from featurestore.featureset.spec import FeatureSetSpec
from featurestore.layout import ShardIndex
from featurestore.storage import hold, is_disk_full, preallocate, release_preallocation

if TYPE_CHECKING:
    from featurestore.featureset.reader import FeatureSet

#: Grids are cast and appended to a streamed shard in pieces of about this size: small enough to
#: stay in cache between the cast and the write, and to keep the staging buffers' first-touch
#: page faults small for short writes (3 x 8 MiB instead of 3 x a 16-image batch).
STAGE_BYTES = 8 * 2**20
#: Staging buffers in turn: the caller casts into one while the background thread writes the others.
STAGE_SLOTS = 3


class ShardBuffer:
    """One shard's worth of rows, filled in place; the cast to the store dtype happens here, in
    torch, so each value is copied once. ``stream``: no grid buffer (the grids go to a file).

    For an int8 set the cast is the quantisation (:mod:`.quantize`) and ``scales`` holds each
    row's per-channel scales, filled here or, for a streamed shard, by :class:`Staging`; they
    reach the cls part (the commit point) through :meth:`filled_extras`.
    """

    def __init__(self, spec: FeatureSetSpec, stream: bool = False):
        s = spec.shard_images
        self.patches = None if stream else np.empty((s, *spec.grid), dtype=spec.dtype)
        self.scales = None if spec.scales_channels is None else np.empty((s, spec.scales_channels), dtype=np.float32)
        self.cls = np.empty((s, spec.global_dim), dtype=np.float32)
        self.extras = {k: np.empty((s, d), dtype=np.float32) for k, d in spec.extra_globals.items()}
        self.ids: list[str] = []
        self.sha: list[str | None] = []
        self._p = None if stream else torch.from_numpy(self.patches)
        self._c = torch.from_numpy(self.cls)
        # streaming state: the temporary file's path, the open file, its queued appends
        self.tmp = ""
        self.file: Any = None
        self.appends: list[Future] = []

    @property
    def n(self) -> int:
        """Rows buffered so far."""
        return len(self.ids)

    def filled_extras(self) -> dict[str, np.ndarray]:
        """The extra globals of the buffered rows only, and (int8 sets) their scales under
        :data:`~.quantize.SCALES`, a name no extra global may take."""
        out = {k: v[: self.n] for k, v in self.extras.items()}
        if self.scales is not None:
            out[SCALES] = self.scales[: self.n]
        return out

    def cast_into(self, dst: torch.Tensor, patches: torch.Tensor, row: int) -> None:
        """Grids ``patches`` into ``dst`` in the store dtype: a copy, or for int8 the
        quantisation, whose scales go to rows ``row...`` of :attr:`scales`."""
        if self.scales is None:
            dst.copy_(patches)
        else:
            quantize_into(patches, dst, torch.from_numpy(self.scales)[row : row + len(patches)])

    def put(
        self, ids: list[str], sha: list[str | None], cls: torch.Tensor, patches: torch.Tensor | None, extras: dict[str, torch.Tensor]
    ) -> None:
        """Append rows (``patches`` None when the grids are streamed instead)."""
        a, b = self.n, self.n + len(ids)
        if patches is not None:
            self.cast_into(self._p[a:b], patches, a)
        self._c[a:b].copy_(cls)
        for k, v in extras.items():
            torch.from_numpy(self.extras[k])[a:b].copy_(v)
        self.ids.extend(ids)
        self.sha.extend(sha)

    def reset(self) -> None:
        """Empty again after a commit, for reuse by the next shard."""
        self.ids, self.sha = [], []
        self.tmp, self.file, self.appends = "", None, []


class Staging:
    """The staging buffers of one writer and the file writes of its streamed shards.

    Appends run on ``pool`` (the background thread of the writer's buffer this staging serves),
    so they are ordered with that buffer's commits queued there. A streamed file reserves a
    whole shard's disk blocks when it opens (:func:`~featurestore.storage.preallocate`); a
    partial shard gives back the rest before its index is written.
    """

    def __init__(self, fs: FeatureSet, pool: ThreadPoolExecutor):
        self.fs = fs
        self.pool = pool
        self.image_bytes = fs.image_bytes
        self._slots: list[list[Any]] = [[None, None] for _ in range(STAGE_SLOTS)]  # [array, pending append]
        self._next = 0

    def append(self, buf: ShardBuffer, patches: torch.Tensor) -> None:
        """Queue the grids of some rows of ``buf``'s shard, in pieces of about STAGE_BYTES."""
        step = max(1, STAGE_BYTES // self.image_bytes)
        for a in range(0, len(patches), step):
            self._append(buf, patches[a : a + step], buf.n + a)

    def _append(self, buf: ShardBuffer, patches: torch.Tensor, row: int) -> None:
        """Queue ``patches``, the grids of ``buf``'s rows ``row...`` (not yet put in ``buf``)."""
        spec = self.fs.spec
        if buf.file is None:
            # The shard number is claimed by the commit, in the background; until then the
            # grids go to a temporary file of this process (swept if the process dies).
            buf.tmp = self.fs.loc.temp_path()
            buf.file = open(buf.tmp, "wb")  # noqa: SIM115 - closed by the commit (or its failure)
            hold(buf.file)
            # A whole shard's blocks, before its first piece: the grids go into allocated blocks.
            s = spec.shard_images
            preallocate(buf.file.fileno(), s * self.image_bytes + ShardIndex.nbytes(s))
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        if slot[1] is not None:
            pending, slot[1] = slot[1], None
            try:
                pending.result()  # that staging buffer's last append is done (re-raises its failure)
            except OSError as e:
                if is_disk_full(e):
                    raise self.fs.loc.full_error(buf.tmp, self.fs.spec.shard_images * self.image_bytes) from None
                raise
        k = len(patches)
        if slot[0] is None or len(slot[0]) < k:
            slot[0] = np.empty((k, *spec.grid), dtype=spec.dtype)
        stage = slot[0][:k]
        buf.cast_into(torch.from_numpy(stage), patches, row)
        slot[1] = self.pool.submit(buf.file.write, stage.reshape(-1).view(np.uint8))
        buf.appends.append(slot[1])

    def finish(self, buf: ShardBuffer, allocate: Callable[[], int]) -> int:
        """(background thread, after the shard's appends) allocate the shard, write its index and
        rename the file into place; returns the shard. On any failure the temporary file is
        removed and nothing of the shard is visible."""
        n = buf.n
        try:
            for f in buf.appends:
                f.result()  # already run (same thread, queued earlier); re-raise a failed append
            if buf.file.tell() != n * self.image_bytes:
                raise FeatureSetError(f"a shard of {self.fs.id}: {buf.file.tell()} grid bytes written, expected {n * self.image_bytes}")
            if n < self.fs.spec.shard_images:  # a partial shard gives back the blocks reserved past its grids
                buf.file.flush()
                release_preallocation(buf.file.fileno())
            buf.file.write(ShardIndex.dense(n, self.fs.spec.shard_images, self.image_bytes).to_bytes())
            buf.file.flush()
            shard = allocate()  # claimed only once the shard is whole: a failed write claims nothing
            final = self.fs.loc.path(self.fs.shard_key(shard))
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(buf.tmp, final)  # while held (see storage.hold)
            buf.file.close()
        except BaseException as e:
            with contextlib.suppress(OSError):
                buf.file.close()
            with contextlib.suppress(OSError):
                os.unlink(buf.tmp)
            if is_disk_full(e):
                raise self.fs.loc.full_error(buf.tmp, n * self.image_bytes) from None
            raise
        return shard
