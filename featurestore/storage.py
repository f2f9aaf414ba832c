"""Where a store's bytes live: a local directory or any fsspec URL (``s3://bucket/prefix``).

Only the few operations the commit protocol needs: atomic whole-object writes, an atomic
create-if-absent (shard claims) and compare-and-swap (the array's shape), listing, Parquet and
JSON helpers, a zarr store for the patch arrays, and the sweep of dead writers' temporary files.

Concurrent writers from different processes or machines are safe on local disk and on S3 (and
S3-compatible servers that honour ``If-None-Match``/``If-Match`` on PUT). Other fsspec backends
get the same calls through ``pipe_file(mode="create")`` and a read-modify-write, atomic only
where that filesystem makes them so.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import io
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from fsspec.implementations.local import LocalFileSystem

from featurestore.errors import StoreFullError
from featurestore.layout import paths as names

#: This machine, as it appears in temporary file names (no dashes: they separate the fields).
HOST = socket.gethostname().replace("-", "_").replace("/", "_") or "host"
#: A temporary file of another machine (whose writer cannot be asked whether it is alive) is
#: taken for dead after this many seconds without a change.
FOREIGN_PARTIAL_AGE_S = 24 * 3600


def _error_code(e: BaseException) -> str | None:
    cause = e.__cause__ or e.__context__
    return getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None


def _precondition_failed(e: BaseException) -> bool:
    """Whether an object-store error is a failed If-Match / If-None-Match (HTTP 412)."""
    return _error_code(e) in ("PreconditionFailed", "412") or "pre-condition" in str(e).lower() or "precondition" in str(e).lower()


def _conflict(e: BaseException) -> bool:
    """Whether S3 refused a conditional write because another one on the key was in flight (HTTP
    409): the same request may succeed when tried again."""
    return _error_code(e) in ("ConditionalRequestConflict", "409") or "conditionalrequestconflict" in str(e).lower()


#: Tries of a conditional write that S3 answers with 409 (a concurrent one in flight).
CONFLICT_RETRIES = 20
#: A temporary file younger than this is never swept: its writer may not hold its lock yet
#: (the lock is taken right after the file is created).
PARTIAL_GRACE_S = 2.0


def hold(f: Any) -> None:
    """Mark an open temporary file as in use by this process (a shared ``flock`` held until it is
    closed): :meth:`Location.sweep_partials` removes only files nobody holds, whatever pid
    namespace or host name the writer had."""
    import fcntl

    fcntl.flock(f.fileno(), fcntl.LOCK_SH)


#: ``fallocate(2)`` mode: reserve blocks without changing the file's size.
_FALLOC_FL_KEEP_SIZE = 1
#: Objects smaller than this are written without reserving their blocks first (json, Parquet).
PREALLOCATE_MIN_BYTES = 1 << 20


@functools.cache
def _fallocate() -> Callable[..., int] | None:
    """libc's ``fallocate`` (Linux), or None where there is none; ``os.posix_fallocate`` cannot
    keep the size, which a shard whose final length is not known yet needs."""
    try:
        f = ctypes.CDLL(None, use_errno=True).fallocate
    except (AttributeError, OSError):
        return None
    f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    f.restype = ctypes.c_int
    return f


def preallocate(fd: int, nbytes: int) -> bool:
    """Reserve ``nbytes`` of disk for a file about to be written sequentially, without changing its
    size; True when done.

    Writing into reserved blocks skips the filesystem's per-page delayed allocation, the largest
    cost of a big page-cache write on ext4 (benchmarks/README.md, "Writer throughput"). Best effort:
    a filesystem that cannot (tmpfs, network, not Linux) or a disk too full for the whole
    reservation just writes as before, and a full disk is still reported by the write itself.
    Blocks reserved past what was written stay allocated until :func:`release_preallocation`.
    """
    f = _fallocate()
    if f is None or nbytes < PREALLOCATE_MIN_BYTES:
        return False
    return f(fd, _FALLOC_FL_KEEP_SIZE, 0, nbytes) == 0


def release_preallocation(fd: int) -> None:
    """Give back the blocks :func:`preallocate` reserved past the file's end (a shard that came
    out shorter than reserved): truncating to its own size frees them and changes no byte."""
    os.ftruncate(fd, os.fstat(fd).st_size)


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is the filesystem saying there is no room (ENOSPC, or a quota: EDQUOT)."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


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

    @property
    def is_s3(self) -> bool:
        """Whether the filesystem speaks S3 (conditional PUTs: If-None-Match, If-Match)."""
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        return any(p in ("s3", "s3a") for p in protocols)

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
        Local: a held temporary file (:meth:`_held_temp`), fsync-free rename. Object stores: one
        PUT of the final key (a PUT is atomic there; there is no rename).
        """
        final = self.path(*parts)
        bufs = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        if self.is_local:
            nbytes = sum(memoryview(b).nbytes for b in bufs)
            with self._held_temp(final, nbytes) as (tmp, f):
                preallocate(f.fileno(), nbytes)  # exactly what is written: nothing left to release
                for b in bufs:
                    f.write(b)
                f.flush()  # whole before it gets its name (the file stays open, held, until after)
                os.replace(tmp, final)  # while held: a sweeper never takes a file being renamed
        else:
            self.fs.pipe_file(final, bufs[0] if len(bufs) == 1 else b"".join(memoryview(b).cast("B") for b in bufs))
        return final

    @contextlib.contextmanager
    def _held_temp(self, final: str, nbytes: int) -> Iterator[tuple[str, Any]]:
        """(local) ``(path, open file)`` of a new temporary file for ``final``, held (:func:`hold`)
        while the caller writes it and moves it into place; removed afterwards whatever happened
        (gone already after a rename). A full disk raises :meth:`full_error` for ``nbytes``."""
        tmp = ""
        try:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = self.temp_path()
            with open(tmp, "wb") as f:
                hold(f)
                yield tmp, f
        except OSError as e:
            if is_disk_full(e):
                raise self.full_error(final, nbytes) from None
            raise
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def temp_path(self) -> str:
        """(local) A new temporary file's path under this root's ``.tmp`` directory: same
        filesystem as the final path, so the rename into place is atomic, and named for this
        host and process, so :meth:`sweep_partials` can tell a dead writer's leftovers."""
        d = self.path(names.TMP_DIR)
        os.makedirs(d, exist_ok=True)
        return f"{d}/{names.partial_name(HOST, os.getpid())}"

    def full_error(self, path: str, needed: int) -> StoreFullError:
        """The one-line error for a write that found the disk full: the store, the path, the
        bytes needed and free. Never retried: more attempts only fill the disk again."""
        free = "?"
        with contextlib.suppress(OSError):
            free = f"{shutil.disk_usage(self.root).free:,}"
        return StoreFullError(
            f"store location {self.url}: no space left on device writing {path} "
            f"({needed:,} bytes needed, {free} bytes free); nothing of this write was committed. "
            "Free space (or move the store) and run the same command again: committed data is intact."
        )

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """Create the object with ``data`` unless it exists; True for the one caller that created it.

        Local: a whole temporary file hard-linked to the final name (``link`` fails when the name
        exists, so readers never see a partial object). S3: a PUT with ``If-None-Match: *``.
        """
        final = self.path(*parts)
        if self.is_local:
            try:
                with self._held_temp(final, len(data)) as (tmp, f):
                    f.write(data)
                    f.flush()  # whole before it gets its name
                    os.link(tmp, final)
                return True
            except FileExistsError:
                return False
        for k in range(CONFLICT_RETRIES):
            try:
                self.fs.pipe_file(final, data, mode="create")
                return True
            except FileExistsError:
                return False
            except OSError as e:
                if _precondition_failed(e):
                    return False
                if not _conflict(e) or k == CONFLICT_RETRIES - 1:
                    raise
                time.sleep(min(1.0, 0.02 * (k + 1)))
        return False  # not reached

    def compare_and_swap(self, update: Callable[[bytes], bytes | None], *parts: str, attempts: int = 200) -> bytes:
        """Replace an existing object by ``update(current)`` unless it returns None; returns the
        bytes now stored. Local: under the lock. S3: a PUT with ``If-Match`` on the ETag that was
        read, retried on a concurrent change, so no update is ever lost."""
        path = self.path(*parts)
        if self.is_local:
            with self.lock(names.LOCK_FILE):
                old = self.read_bytes(*parts)
                new = update(old)
                if new is None:
                    return old
                self.write_atomic(new, *parts)
                return new
        for k in range(attempts):
            self.fs.invalidate_cache(path)
            etag = self.fs.info(path).get("ETag")
            old = self.fs.cat_file(path)
            new = update(old)
            if new is None:
                return old
            try:
                if etag is not None and self.is_s3:
                    self.fs.pipe_file(path, new, IfMatch=etag)
                else:
                    self.fs.pipe_file(path, new)  # no conditional PUT known for this backend
                return new
            except OSError as e:
                if not (_precondition_failed(e) or _conflict(e)):
                    raise
                time.sleep(min(0.5, 0.005 * (k + 1)))  # someone else changed it: read again
        raise OSError(f"{path}: gave up after {attempts} concurrent updates")

    def sweep_partials(self, older_than_s: float | None = None) -> list[tuple[str, int]]:
        """Remove temporary files of writers that are gone; returns (path, bytes) of each removed.

        Only ``*.partial`` files older than PARTIAL_GRACE_S that no process holds (:func:`hold`)
        are candidates. One named for this host is removed then; one of another host (or with a
        name radstore did not give it) only once it has not changed for ``older_than_s`` seconds
        (default FOREIGN_PARTIAL_AGE_S), since a lock may not reach across machines. Only this
        root's ``.tmp`` directory is looked at: cheap enough for every new writer. Object stores
        have no temporary files.
        """
        if not self.is_local:
            return []
        d = self.path(names.TMP_DIR)
        try:
            return self._remove_dead([f"{d}/{n}" for n in os.listdir(d)], older_than_s)
        except FileNotFoundError:
            return []

    def walk_partials(self, older_than_s: float | None = None) -> list[tuple[str, int]]:
        """:meth:`sweep_partials` over every ``*.partial`` file anywhere under the root (a full walk:
        for ``radstore store gc``, which also finds leftovers of older versions and of zarr)."""
        if not self.is_local:
            return []
        return self._remove_dead([f"{d}/{f}" for d, _, files in os.walk(self.root) for f in files], older_than_s)

    @classmethod
    def _remove_dead(cls, paths: list[str], older_than_s: float | None) -> list[tuple[str, int]]:
        """(path, bytes) of each ``*.partial`` file of ``paths`` removed as dead (:meth:`_remove_if_dead`)."""
        return [(p, n) for p in paths if p.endswith(names.PARTIAL_SUFFIX) and (n := cls._remove_if_dead(p, older_than_s)) is not None]

    @staticmethod
    def _remove_if_dead(path: str, older_than_s: float | None) -> int | None:
        import fcntl

        owner = names.partial_owner(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        age = time.time() - st.st_mtime
        foreign_age = FOREIGN_PARTIAL_AGE_S if older_than_s is None else older_than_s
        if age < min(PARTIAL_GRACE_S, foreign_age) or ((owner is None or owner[0] != HOST) and age < foreign_age):
            return None
        try:
            with open(path, "rb") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None  # its writer is alive (in whatever pid namespace)
                os.unlink(path)  # under the lock: nobody can take it up meanwhile
                return st.st_size
        except OSError:  # gone meanwhile, or a store this process may not change
            return None

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

    @staticmethod
    def json_bytes(obj: dict) -> bytes:
        """How radstore's own json objects are stored: indented, keys sorted."""
        return json.dumps(obj, indent=2, sort_keys=True).encode()

    def write_json(self, obj: dict, *parts: str) -> str:
        """Write ``obj`` as :meth:`json_bytes`, atomically; returns the full path."""
        return self.write_atomic(self.json_bytes(obj), *parts)

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

    # -- local lock -----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *parts: str) -> Iterator[None]:
        """(local) An exclusive ``flock`` across processes for short metadata updates.

        Object stores have no locks: what needs one there uses :meth:`create_exclusive` or
        :meth:`compare_and_swap`, so this refuses them.
        """
        if not self.is_local:
            raise NotImplementedError(f"{self.url}: object stores have no locks; use create_exclusive or compare_and_swap")
        import fcntl

        path = self.path(*parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
