"""The cohort manifest: one row per image, paths relative to the manifest file.

A user's own cohort is described by a Parquet (or CSV) file of this schema. Ingestion needs
only ``image_id`` and ``path``; the label and mask columns are needed by training.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import fsspec
import pyarrow as pa
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
        """A manifest path as an absolute path/URL (absolute paths and URLs pass through)."""
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
