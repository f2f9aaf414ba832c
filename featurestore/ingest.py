"""Ingest a manifest into the store's image index.

Idempotent: an image already indexed with the same bytes (sha256) is skipped; one whose bytes
changed under the same image_id is reported and *not* replaced. Bad rows (missing or corrupt
file, unknown format, duplicate image_id) are reported one line each and recorded in the
store's ``ingest_errors`` table; every other image is still ingested.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa

from featurestore import layout
from featurestore.errors import ImageReadError
from featurestore.imageio import read_bytes, read_image, sha256_of
from featurestore.manifest import Manifest, load_manifest
from featurestore.store import Store


@dataclass
class IngestReport:
    """The outcome of one ingest: image_ids added and unchanged, and (image_id, path, reason) of each
    row that was not ingested."""

    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (image_id, path, reason)

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
    rel = row.get("path")
    if not rel:
        return "failed", "empty path in manifest"
    uri = manifest.resolve(rel)
    try:
        data = read_bytes(uri)
        if image_id in known:
            sha = sha256_of(data)
            if sha == known[image_id]:
                return "unchanged", image_id
            return "failed", (
                f"bytes changed since it was ingested (sha256 {known[image_id][:12]}... -> {sha[:12]}...); "
                "the indexed version was kept. Give the new image a new image_id, or remove the old store entry."
            )
        img = read_image(uri, data=data, format=row.get("format"))
    except ImageReadError as e:
        return "failed", e.reason
    m = img.meta
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
        "photometric": m.photometric,
    }


def ingest(manifest_url: str, store: Store, *, workers: int = 0, progress: bool = True, log=print) -> IngestReport:
    """Index every image of the manifest into ``store``; see the module docstring."""
    from tqdm import tqdm

    manifest = load_manifest(manifest_url)
    rows = manifest.table.to_pylist()
    report = IngestReport()
    counts = Counter(r["image_id"] for r in rows)
    todo = []
    for i, r in enumerate(rows):
        iid = r["image_id"]
        if iid is None or str(iid).strip() == "":
            report.failed.append(("", str(r.get("path")), f"manifest row {i} has an empty image_id"))
        elif counts[iid] > 1:
            where = [j for j, x in enumerate(rows) if x["image_id"] == iid]
            report.failed.append(
                (iid, str(r.get("path")), f"duplicate image_id in manifest (rows {', '.join(map(str, where))}); none of them ingested")
            )
        else:
            todo.append(r)

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
                report.failed.append((r["image_id"], str(r.get("path")), value))

    now = layout.now_ms()
    if added:
        manifest_uri = manifest.url if "://" in manifest.url else os.path.abspath(manifest.url)
        for a in added:
            a["ingested_at"] = now
            a["manifest"] = manifest_uri
        store.append_images(pa.Table.from_pylist(added))
    if report.failed:
        for iid, path, reason in report.failed:
            log(f"ERROR image_id={iid or '?'} path={path}: {reason}")
        store.append_ingest_errors(
            pa.Table.from_pylist([{"image_id": i, "path": p, "reason": r, "run_at": now} for i, p, r in report.failed])
        )
    return report
