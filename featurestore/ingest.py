"""Ingest a manifest into the store's image index.

Idempotent: an image already indexed with the same bytes (sha256) is skipped; one whose bytes
changed under the same image_id is reported and *not* replaced. Each image's acquisition and
patient attributes (view, manufacturer, sex, age) are recorded from its DICOM header or the
manifest's columns of those names (:mod:`featurestore.attributes`); an image indexed before they
were recorded keeps nulls (re-ingesting skips it). Bad rows (missing, unreadable
or corrupt file, unknown format, null or empty path, empty, unprintable or duplicate image_id;
:func:`featurestore.manifest.check_rows`) are reported one line each and recorded in the
store's ``ingest_errors`` table; every other image is still ingested.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa

from featurestore import attributes, layout
from featurestore.imageio import decode, read_bytes, sha256_of
from featurestore.manifest import Manifest, changed_bytes_reason, check_rows, error_line, load_manifest, read_failure_reason
from featurestore.store import Store


@dataclass
class IngestReport:
    """The outcome of one ingest: image_ids added and unchanged, and (image_id, path, reason) of each
    row that was not ingested."""

    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str | None, str]] = field(default_factory=list)  # (image_id, manifest path, reason)

    @property
    def ok(self) -> bool:
        """True when every row was ingested or already indexed (no row failed)."""
        return not self.failed

    def summary(self) -> str:
        """One line of counts: added, unchanged, failed."""
        return f"ingested {len(self.added)} new, {len(self.unchanged)} unchanged, {len(self.failed)} failed"


def _check_one(row: dict, manifest: Manifest, known: dict[str, str]) -> tuple[str, dict | str]:
    """('added', row) | ('unchanged', id) | ('failed', reason) for one manifest row."""
    image_id = row["image_id"]
    uri = manifest.resolve(row["path"])
    try:
        data = read_bytes(uri)
        if image_id in known:
            sha = sha256_of(data)
            if sha == known[image_id]:
                return "unchanged", image_id
            return "failed", changed_bytes_reason(known[image_id], sha, "the indexed version was kept")
        decoded = decode(uri, data, row.get("format"))
        img = decoded.image()  # what read_image gives: an image that cannot be mapped fails here
    except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the rest
        return "failed", read_failure_reason(e)
    m = img.meta
    found = attributes.merge(attributes.from_dataset(decoded.dataset), row)
    return "added", {
        "image_id": image_id,
        "patient_id": row.get("patient_id"),
        "split": row.get("split"),
        "uri": m.uri,
        "format": m.format,
        "sha256": m.sha256,
        "size_bytes": m.size_bytes,
        "height": m.height,
        "width": m.width,
        "bits_stored": m.bits_stored,
        "bits_rule": m.bits_rule,
        "photometric": m.photometric,
        **found,
    }


def ingest(manifest: str | Manifest, store: Store, *, workers: int = 0, progress: bool = True, log=print) -> IngestReport:
    """Index every image of the manifest (a URL, or one already loaded) into ``store``; see the
    module docstring."""
    from tqdm import tqdm

    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    rows = manifest.table.to_pylist()
    report = IngestReport()
    valid, errors = check_rows(manifest, action="ingested")
    report.failed.extend((e.image_id, e.path, e.reason) for e in errors)
    todo = [rows[i] for i in valid.to_pylist()]

    existing = store.images()
    known = dict(zip(existing.column("image_id").to_pylist(), existing.column("sha256").to_pylist()))
    added = []
    # Decoding releases the GIL in numpy/pydicom/zlib: threads keep both cores busy.
    n_workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(n_workers) as ex, tqdm(total=len(todo), desc="ingest", unit="img", disable=not progress) as bar:
        for r, (status, value) in zip(todo, ex.map(lambda r: _check_one(r, manifest, known), todo)):
            bar.update()
            if status == "added":
                added.append(value)
                report.added.append(r["image_id"])
            elif status == "unchanged":
                report.unchanged.append(r["image_id"])
            else:
                report.failed.append((r["image_id"], r["path"], value))

    now = layout.now_ms()
    if added:
        manifest_uri = manifest.url if "://" in manifest.url else os.path.abspath(manifest.url)
        for a in added:
            a["ingested_at"] = now
            a["manifest"] = manifest_uri
        store.append_images(pa.Table.from_pylist(added))
    if report.failed:
        for iid, path, reason in report.failed:
            log(error_line(iid, path, reason))
        store.append_ingest_errors(
            pa.Table.from_pylist([{"image_id": i, "path": p, "reason": r, "run_at": now} for i, p, r in report.failed])
        )
    return report
