"""The cohort manifest: one row per image, paths relative to the manifest file.

A user's own cohort is described by a Parquet (or CSV) file of this schema. Ingestion needs
only ``image_id`` and ``path``; the label and mask columns are needed by training.

The per-row checks ingest and extract share live here too (:func:`check_rows`): a bad row
(empty or unprintable image_id, an id repeated in the manifest, a null or empty path) is that
row's error, never the whole manifest's; :func:`error_line` is the one line printed for each.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from featurestore.errors import ManifestError

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("patient_id", pa.string()),
        ("path", pa.string()),
        ("format", pa.string()),
        ("split", pa.string()),
        ("pneumothorax", pa.bool_()),
        ("cardiomegaly", pa.bool_()),
        ("ctr", pa.float64()),
        ("heart_mask", pa.string()),
        ("lung_mask", pa.string()),
        ("pneumothorax_mask", pa.string()),
        # Optional: acquisition and patient attributes for subgroup analysis, where the image has
        # no DICOM header (PNG/JPEG) or its header lacks or misstates them (featurestore.attributes).
        ("view_position", pa.string()),
        ("manufacturer", pa.string()),
        ("patient_sex", pa.string()),
        ("patient_age", pa.float64()),  # years (a DICOM Age String such as "065Y" is read too)
    ]
)
REQUIRED_FOR_INGEST = ("image_id", "path")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest: the table, and the directory its relative paths start from."""

    url: str
    table: pa.Table
    base: str

    def resolve(self, rel: str) -> str:
        """A manifest path as an absolute path/URL (absolute paths and URLs pass through).
        Raises ManifestError for a null or empty path (:func:`check_rows` reports those per row)."""
        if not isinstance(rel, str) or not rel.strip():
            raise ManifestError(f"manifest {self.url}: {'no path (null)' if rel is None else 'empty path'} for an image")
        if "://" in rel or rel.startswith("/"):
            return rel
        return posixpath.join(self.base, rel)

    def __len__(self) -> int:
        return self.table.num_rows


def load_manifest(url: str, required: tuple[str, ...] = REQUIRED_FOR_INGEST) -> Manifest:
    """Read a Parquet or CSV manifest and check the required columns are there."""
    try:
        with fsspec.open(url, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ManifestError(f"manifest {url} does not exist") from None
    try:
        if url.endswith(".csv"):
            table = pacsv.read_csv(pa.BufferReader(data))
        else:
            table = pq.read_table(pa.BufferReader(data))
    except Exception as e:  # noqa: BLE001 - any parse failure is the manifest's fault
        raise ManifestError(f"manifest {url} could not be read as {'CSV' if url.endswith('.csv') else 'Parquet'}: {e}") from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ManifestError(
            f"manifest {url} is missing required column(s) {', '.join(missing)} "
            f"(has: {', '.join(table.column_names)}); see MANIFEST_SCHEMA in featurestore/manifest.py"
        )
    for col in ("image_id", "patient_id", "path"):
        if col in table.column_names and table.schema.field(col).type != pa.string():
            table = table.set_column(table.schema.get_field_index(col), col, table.column(col).cast(pa.string()))
    fs, path = fsspec.core.url_to_fs(url)
    base = posixpath.dirname(path)
    if getattr(fs, "protocol", None) not in ("file", ("file", "local")) and "://" in url:
        base = url.rsplit("/", 1)[0]
    return Manifest(url=url, table=table, base=base)


# -- per-row checks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RowError:
    """One manifest row that cannot be used: its position (0-based), image_id ('' when it has
    none), path as written in the manifest (None when null) and the reason."""

    row: int
    image_id: str
    path: str | None
    reason: str


def check_rows(manifest: Manifest, action: str = "used") -> tuple[pa.Array, list[RowError]]:
    """The rows of ``manifest`` that can be used, and one :class:`RowError` for each other row.

    A row is refused for an empty image_id, an image_id with control or other unprintable
    characters (``str.isprintable``), an image_id that appears on more than one row (every one
    of those rows is refused: the manifest does not say which is meant), or a null or empty
    path. ``action`` ends the duplicate message ("none of them <action>"). Returns (the usable
    rows' indices as an int64 Arrow array, the errors), both in manifest order.

    Vectorised: Arrow finds the few rows that need a look (an id or path that is not plain
    ASCII, a repeated id), Python words their reasons; a million clean rows take well under
    a second.
    """
    t = manifest.table
    n = t.num_rows
    ids = t.column("image_id")
    paths = t.column("path") if "path" in t.column_names else pa.chunked_array([pa.nulls(n, pa.string())])
    # An id of printable ASCII without a space is non-empty and printable; the others (null,
    # empty, with spaces, non-ASCII, with controls) are looked at in Python.
    plain = pc.and_(pc.ascii_is_printable(ids), pc.invert(pc.match_substring(ids, " ")))
    look = pc.fill_null(pc.or_(pc.equal(pc.utf8_length(ids), 0), pc.invert(plain)), True)
    id_ok = np.ones(n, dtype=bool)
    reasons: dict[int, str] = {}
    for i in pc.indices_nonzero(look).to_pylist():
        iid = ids[i].as_py()
        if iid is None or not iid.strip():
            reasons[i] = f"manifest row {i} has an empty image_id"
        elif not iid.isprintable():
            bad = "".join(dict.fromkeys(c for c in iid if not c.isprintable()))
            reasons[i] = (
                f"image_id contains control or unprintable character(s) {bad!r} (manifest row {i}); "
                "an image_id must be printable text: fix the id in the manifest"
            )
        else:
            continue
        id_ok[i] = False
    ok_ids = ids.filter(pa.array(id_ok))
    counts = pc.value_counts(ok_ids)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        dup = pc.and_(pc.fill_null(pc.is_in(ids, value_set=repeated), False), pa.array(id_ok))
        where: dict[str, list[int]] = {}
        for i in pc.indices_nonzero(dup).to_pylist():
            where.setdefault(ids[i].as_py(), []).append(i)
        for rows in where.values():
            for i in rows:
                reasons[i] = f"duplicate image_id in manifest (rows {', '.join(map(str, rows))}); none of them {action}"
    # A path with an ASCII graphic character is not empty; the others are looked at in Python.
    look = pc.fill_null(pc.invert(pc.match_substring_regex(paths, r"[\x21-\x7e]")), True)
    for i in pc.indices_nonzero(look).to_pylist():
        if i in reasons:
            continue
        p = paths[i].as_py()
        if p is None:
            reasons[i] = f"no path (null) in manifest row {i}"
        elif not p.strip():
            reasons[i] = f"empty path in manifest row {i}"
    if not reasons:
        return pa.array(np.arange(n, dtype=np.int64)), []
    good = np.ones(n, dtype=bool)
    good[list(reasons)] = False
    errors = [RowError(i, ids[i].as_py() or "", paths[i].as_py(), reasons[i]) for i in sorted(reasons)]
    return pa.array(np.flatnonzero(good).astype(np.int64)), errors


def changed_bytes_reason(indexed_sha256: str, sha256: str, outcome: str) -> str:
    """Why a file whose bytes differ from the image index is refused (ingest and extract)."""
    return (
        f"bytes changed since it was ingested (sha256 {indexed_sha256[:12]}... -> {sha256[:12]}...); {outcome}. "
        "Give the new image a new image_id, or remove the old store entry."
    )


def read_failure_reason(e: BaseException) -> str:
    """The reason recorded for an image that could not be read or decoded."""
    from featurestore.errors import ImageReadError

    if isinstance(e, ImageReadError):
        return e.reason
    if isinstance(e, OSError):
        return f"could not read the file: {e.strerror or type(e).__name__}"
    return f"{type(e).__name__}: {e}"


def printable(value: Any) -> str:
    """``value`` as text with control and other unprintable characters escaped the way ``repr``
    does (a newline prints as ``\\n``): what every printed line naming an image_id, a path or a
    reason goes through, so no value can break or fake a line."""
    s = "" if value is None else str(value)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def error_line(image_id: str | None, path: str | None, reason: str) -> str:
    """The one line printed for a row that failed: ``ERROR image_id=... path=...: reason``
    (``?`` for a missing id or path)."""
    return f"ERROR image_id={printable(image_id) or '?'} path={printable(path) or '?'}: {printable(reason)}"
