"""Where a store's bytes live: a local directory or any fsspec URL (``s3://bucket/prefix``).

Only the few operations the commit protocol needs: atomic whole-object writes, listing,
Parquet and JSON helpers, a zarr store for the patch arrays, and a lock for shard allocation.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from fsspec.implementations.local import LocalFileSystem


class Location:
    """A root (directory or object prefix) plus the filesystem that serves it."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            self.root = os.path.abspath(self.root)

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def path(self, *parts: str) -> str:
        """Full path of ``parts`` under the root (in the filesystem's own form, no protocol); empty parts
        are skipped."""
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def child(self, *parts: str) -> Location:
        """A Location rooted at ``parts`` under this one, with the same filesystem and options."""
        sub = "/".join(p.strip("/") for p in parts)
        if self.is_local:
            return Location(self.path(sub))
        return Location(self._url_of(self.path(sub)), self.storage_options)

    # -- objects --------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        """Whether the object or directory exists; on object stores the listing cache is dropped first, so
        another process's commit is seen."""
        path = self.path(*parts)
        if not self.is_local:
            self.fs.invalidate_cache(path)
        return self.fs.exists(path)

    def read_bytes(self, *parts: str) -> bytes:
        """The whole object (FileNotFoundError if it does not exist)."""
        return self.fs.cat_file(self.path(*parts))

    def write_atomic(self, data: bytes | Sequence[Any], *parts: str) -> str:
        """Write a whole object so that readers see all of it or nothing.

        ``data`` is bytes, or a sequence of buffers (bytes, memoryviews, contiguous arrays)
        written one after another: a shard's grids and its index go out without being joined.
        Local: temp file in the same directory, fsync-free rename. Object stores: one PUT of
        the final key (a PUT is atomic there; there is no rename).
        """
        final = self.path(*parts)
        bufs = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        if self.is_local:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = f"{final}.{uuid.uuid4().hex}.partial"
            try:
                with open(tmp, "wb") as f:
                    for b in bufs:
                        f.write(b)
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        else:
            self.fs.pipe_file(final, bufs[0] if len(bufs) == 1 else b"".join(memoryview(b).cast("B") for b in bufs))
        return final

    def read_tail(self, nbytes: int, *parts: str) -> bytes:
        """The last ``nbytes`` of an object (FileNotFoundError if it does not exist)."""
        path = self.path(*parts)
        if self.is_local:
            with open(path, "rb") as f:
                f.seek(-nbytes, os.SEEK_END)
                return f.read(nbytes)
        size = self.fs.size(path)
        return self.fs.cat_file(path, start=max(0, size - nbytes), end=size)

    def read_into(self, out: Any, start: int, *parts: str) -> None:
        """Fill the writable contiguous buffer ``out`` from the object's bytes at ``start``."""
        view = memoryview(out).cast("B")
        path = self.path(*parts)
        if self.is_local:
            fd = os.open(path, os.O_RDONLY)
            try:
                done = 0
                while done < len(view):
                    got = os.preadv(fd, [view[done:]], start + done)
                    if got <= 0:
                        raise EOFError(f"{path}: {len(view) - done} bytes missing at offset {start + done}")
                    done += got
            finally:
                os.close(fd)
            return
        data = self.fs.cat_file(path, start=start, end=start + len(view))
        if len(data) != len(view):
            raise EOFError(f"{path}: short read at offset {start}")
        view[:] = data

    def read_ranges_into(self, outs: Sequence[Any], starts: Sequence[int], paths: Sequence[str]) -> None:
        """Several :meth:`read_into` at once (``paths`` relative to the root): concurrent."""
        if self.is_local:
            from concurrent.futures import ThreadPoolExecutor

            if len(outs) <= 1:
                for o, s, p in zip(outs, starts, paths):
                    self.read_into(o, s, p)
                return
            with ThreadPoolExecutor(min(4, len(outs))) as ex:
                list(ex.map(lambda a: self.read_into(*a), [(o, s, p) for o, s, p in zip(outs, starts, paths)]))
            return
        views = [memoryview(o).cast("B") for o in outs]
        full = [self.path(p) for p in paths]
        datas = self.fs.cat_ranges(full, list(starts), [s + len(v) for s, v in zip(starts, views)], on_error="raise")
        for v, d, p in zip(views, datas, full):
            if isinstance(d, Exception):
                raise d
            if len(d) != len(v):
                raise EOFError(f"{p}: short read")
            v[:] = d

    def list(self, *parts: str, suffix: str = "") -> list[str]:
        """Sorted full paths of the objects directly under a prefix (missing prefix: empty)."""
        base = self.path(*parts)
        if not self.is_local:
            self.fs.invalidate_cache(base)  # other processes commit parts: never trust a cached listing
        try:
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        out = [e for e in entries if e.endswith(suffix) and not e.endswith(".partial")]
        return sorted(out)

    def du(self, *parts: str) -> int:
        """Total bytes under ``parts`` (0 when missing)."""
        try:
            return int(self.fs.du(self.path(*parts), total=True))
        except FileNotFoundError:
            return 0

    # -- formats --------------------------------------------------------------------------
    def read_json(self, *parts: str) -> dict:
        """Parse one json object."""
        return json.loads(self.read_bytes(*parts))

    def write_json(self, obj: dict, *parts: str) -> str:
        """Write ``obj`` as indented json with sorted keys, atomically; returns the full path."""
        return self.write_atomic(json.dumps(obj, indent=2, sort_keys=True).encode(), *parts)

    def write_parquet(self, table: pa.Table, *parts: str, dictionary_columns: list[str] | None = None) -> str:
        """Write one zstd Parquet object atomically, dictionary-encoding only ``dictionary_columns``;
        returns the full path."""
        # Dictionary-encode only the key-like columns: on embeddings it bloats and slows.
        buf = io.BytesIO()
        pq.write_table(table, buf, use_dictionary=dictionary_columns or False, compression="zstd")
        return self.write_atomic(buf.getvalue(), *parts)

    def read_parquet(self, paths: list[str], columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
        """Read the Parquet objects ``paths`` (full paths) as one table; with no paths, an empty table of
        ``schema`` (ValueError without one)."""
        if not paths:
            if schema is None:
                raise ValueError("no parquet parts and no schema")
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        return pq.read_table(paths, columns=columns, filesystem=self.fs, schema=schema)

    def read_parquet_file(self, path: str) -> pa.Table:
        """One Parquet object (full path), with its schema metadata."""
        with self.fs.open(path, "rb") as f:
            return pq.read_table(f)

    # -- zarr -----------------------------------------------------------------------------
    def zarr_store(self, *parts: str, read_only: bool = False) -> zarr.abc.store.Store:
        """A zarr store at ``parts`` on this location's filesystem (local or fsspec)."""
        if self.is_local:
            return zarr.storage.LocalStore(self.path(*parts), read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self._url_of(self.path(*parts)), storage_options=self.storage_options, read_only=read_only)

    def _url_of(self, path: str) -> str:
        proto = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{proto}://{path}"

    # -- allocation lock ------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *parts: str) -> Iterator[None]:
        """An exclusive lock across processes for short metadata updates.

        Local stores use ``flock`` on a lock file. Object stores have no locks: there, one
        coordinator (the extraction flow) allocates shards before workers start, as the
        design requires; this context manager is then a no-op.
        """
        if not self.is_local:
            yield
            return
        import fcntl

        path = self.path(*parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
