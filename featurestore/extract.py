"""The extraction engine: decode + preprocess in DataLoader workers, forward, commit to the store.

Usable without Prefect: ``extract(manifest, store, ExtractConfig(encoder="rad-dino"))``.
The Prefect flow (``flows/extract.py``) calls :func:`plan` once and :func:`extract_group`
for each shard-sized group, possibly on several Dask workers at once.

A row's failure is that row's: a bad manifest row (:func:`featurestore.manifest.check_rows`:
empty or unprintable image_id, an id repeated in the manifest, null or empty path), a file that
cannot be read or decoded, or, when the store's image index has the image_id, a file whose
bytes differ from the indexed version (sha256), is recorded in the feature set's rejects with
its path and reason; every other image is embedded and committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, Dataset

from featurestore.config import DEVICES, ExtractConfig
from featurestore.encoders import Encoder, load_encoder
from featurestore.featureset import FeatureSet
from featurestore.imageio import read_bytes, read_image, sha256_of
from featurestore.manifest import Manifest, changed_bytes_reason, check_rows, load_manifest, read_failure_reason
from featurestore.store import Store
from featurestore.tasks import TASKS

#: (image_id, path as written in the manifest or None, reason) of a row that was not embedded
Rejected = tuple[str, str | None, str]


@dataclass
class ExtractResult:
    """What one extraction did: images embedded, images skipped as already committed, rows that
    were not embedded with their path and reason, and the seconds it took."""

    feature_set_id: str
    done: int = 0
    skipped: int = 0
    rejected: list[Rejected] = field(default_factory=list)  # (image_id, manifest path, reason)
    seconds: float = 0.0

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(image_id, reason) of each row not embedded (:attr:`rejected` has the paths too)."""
        return [(i, r) for i, _, r in self.rejected]

    @property
    def images_per_s(self) -> float:
        """Images embedded per second (0 when no time was recorded)."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def merge(self, other: ExtractResult) -> ExtractResult:
        """Add ``other``'s counts, failures and seconds to this result (in place) and return it."""
        self.done += other.done
        self.skipped += other.skipped
        self.rejected.extend(other.rejected)
        self.seconds += other.seconds
        return self

    def summary(self) -> str:
        """One line for people: counts and throughput."""
        return (
            f"feature set {self.feature_set_id}: {self.done} extracted, {self.skipped} already there, "
            f"{len(self.failed)} failed, {self.images_per_s:.1f} images/s"
        )


@dataclass(frozen=True)
class Plan:
    """The images left to extract, split into groups of at most one shard each; ``shards`` are
    the shards claimed for the groups when the planner was asked to claim them (empty otherwise:
    each writer then claims its shards at commit); ``skipped`` counts manifest rows already
    committed; ``rejected`` the manifest rows that cannot be extracted (bad or repeated id,
    no path), which the caller reports and records (:func:`record_rejected`)."""

    feature_set_id: str
    groups: list[list[str]]  # each at most one shard of image_ids
    shards: list[int]  # the shard claimed for each group, or empty
    skipped: int
    rejected: list[Rejected] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``--device`` choice; ``auto`` prefers CUDA, then MPS, then the CPU.
    Raises ValueError for a name outside DEVICES."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=4)
def _cached_encoder(name: str, weights: str | None, size: int | None, bits: int | None, intensity: str | None, device: str) -> Encoder:
    """One model per process and configuration (a Dask worker runs many groups)."""
    return load_encoder(name, weights, size=size, bits=bits, intensity=intensity).to(device)


def encoder_for(cfg: ExtractConfig) -> Encoder:
    """The encoder ``cfg`` names, loaded and moved to its device once per process and reused."""
    return _cached_encoder(cfg.encoder, cfg.weights, cfg.size, cfg.bits, cfg.intensity, str(resolve_device(cfg.device)))


def feature_set_for(store: Store, cfg: ExtractConfig) -> FeatureSet:
    """The feature set ``cfg``'s embeddings go into, created on first use (its shard size applies
    only then: an existing feature set keeps its own). One written under the encoder's legacy
    weights fingerprint is found and reused (:meth:`Store.create_feature_set`)."""
    encoder = encoder_for(cfg)
    spec = encoder.spec(cfg.dtype)
    if cfg.shard_images:
        spec = dataclasses.replace(spec, shard_images=cfg.shard_images)
    return store.create_feature_set(spec, legacy_fingerprint=lambda: encoder.legacy_fingerprint)


class _Images(Dataset):
    """Rows (image_id, manifest path, uri, format, indexed sha256 or None) -> preprocessed tensors;
    a row that cannot be read, decoded or preprocessed, or whose bytes differ from the indexed
    sha256, comes back with its error instead."""

    def __init__(self, rows: list[tuple[str, str, str, str | None, str | None]], encoder: Encoder, extra: dict[str, dict] | None = None):
        self.rows = rows
        self.encoder = encoder
        self.extra = extra or {}  # image_id -> the encoder's manifest columns

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        image_id, path, uri, fmt, indexed = self.rows[i]
        out = {"image_id": image_id, "path": path, "x": None, "sha256": None, "error": None}
        try:
            data = read_bytes(uri)
            if indexed is not None and (sha := sha256_of(data)) != indexed:
                out["error"] = changed_bytes_reason(indexed, sha, "not embedded: the image index holds the earlier version")
                return out
            img = read_image(uri, data=data, format=fmt, **self.encoder.preprocessing.decode_options())
            row = {"image_id": image_id, **self.extra.get(image_id, {})}
            out.update(x=self.encoder.input_for(img.pixels, row), sha256=img.meta.sha256)
        except Exception as e:  # noqa: BLE001 - a failure of one image must not stop the rest
            out["error"] = read_failure_reason(e)
        return out


def _collate(items: list[dict]) -> dict:
    ok = [it for it in items if it["error"] is None]
    return {
        "ids": [it["image_id"] for it in ok],
        "x": torch.stack([it["x"] for it in ok]) if ok else None,
        "sha256": [it["sha256"] for it in ok],
        "failed": [(it["image_id"], it["path"], it["error"]) for it in items if it["error"] is not None],
    }


def _extra_columns(enc: Encoder, manifest: Manifest, rows: dict[str, dict], ids: list[str]) -> dict[str, dict]:
    """image_id -> the encoder's manifest columns, mask paths resolved (empty for image encoders)."""
    if not enc.manifest_columns:
        return {}
    masks = {t.column for t in TASKS.values() if t.spec.dense}
    out = {}
    for i in ids:
        r = {c: rows[i].get(c) for c in enc.manifest_columns}
        out[i] = {c: (manifest.resolve(v) if c in masks and isinstance(v, str) and v.strip() else v) for c, v in r.items()}
    return out


def _rejected(errors) -> list[Rejected]:
    return [(e.image_id, e.path, e.reason) for e in errors]


def record_rejected(fs: FeatureSet, rejected: list[Rejected]) -> None:
    """Record rows that were not embedded in ``fs``'s rejects (image_id, path, reason)."""
    if rejected:
        fs.record_rejects([i for i, _, _ in rejected], [r for _, _, r in rejected], paths=[p for _, p, _ in rejected])


def indexed_sha256(store: Store, image_ids: list[str]) -> dict[str, str]:
    """sha256 of each of ``image_ids`` that the store's image index holds (empty without an index)."""
    images = store.images()
    if images.num_rows == 0 or not image_ids:
        return {}
    t = images.select(["image_id", "sha256"]).filter(pc.is_in(images.column("image_id"), value_set=pa.array(image_ids, pa.string())))
    return {i: s for i, s in zip(t.column("image_id").to_pylist(), t.column("sha256").to_pylist()) if s}


def _manifest(manifest: str | Manifest) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else load_manifest(manifest)


def plan(manifest: str | Manifest, store: Store, cfg: ExtractConfig, allocate: bool = False) -> Plan:
    """Images of the manifest not yet committed in the feature set, grouped by shard (backfill);
    the manifest's bad rows are returned in ``Plan.rejected``, not planned.

    Shard claims are atomic on every backend, so writers claim their own shards when they
    commit; ``allocate=True`` claims one per group up front instead (a claim that is never
    committed is only an unused shard number, which ``radstore store gc`` reports).
    """
    m = _manifest(manifest)  # first: a manifest that cannot be read creates no feature set
    fs = feature_set_for(store, cfg)
    valid, errors = check_rows(m, action="embedded")
    ids = m.table.column("image_id").take(valid)  # unique: repeated ids are errors
    # The committed ids come from the committed index plus the parts it does not name, and the
    # planner refreshes that index (layout.py); the difference is taken in Arrow, not Python.
    done = fs.committed_rows(update_index=True).column("image_id").combine_chunks()
    todo = ids.filter(pc.invert(pc.is_in(ids, value_set=done))).to_pylist()  # manifest order
    s = fs.spec.shard_images
    groups = [todo[k : k + s] for k in range(0, len(todo), s)]
    shards = fs.allocate_shards(len(groups)) if (allocate and groups) else []
    return Plan(fs.id, groups, shards, skipped=len(ids) - len(todo), rejected=_rejected(errors))


def extract_group(
    manifest_url: str | Manifest,
    store: Store,
    cfg: ExtractConfig,
    image_ids: list[str] | None = None,
    shards: list[int] = (),
    desc: str | None = None,
) -> ExtractResult:
    """Extract ``image_ids`` (default: the whole manifest, its bad rows rejected) into the feature
    set; skip committed ones. A file whose bytes differ from the store's image index is rejected."""
    from tqdm import tqdm

    manifest = _manifest(manifest_url)
    enc = encoder_for(cfg)
    fs = feature_set_for(store, cfg)
    valid, errors = check_rows(manifest, action="embedded")
    cols = [c for c in ("image_id", "path", "format", *enc.manifest_columns) if c in manifest.table.column_names]
    table = manifest.table.select(cols).take(valid)
    if image_ids is not None:
        table = table.filter(pc.is_in(table.column("image_id"), value_set=pa.array(image_ids, pa.string())))
    rows = {r["image_id"]: r for r in table.to_pylist()}
    result = ExtractResult(fs.id)
    if image_ids is None:
        wanted = list(rows)
        result.rejected.extend(_rejected(errors))
    else:
        wanted = [i for i in image_ids if i in rows]
        result.rejected.extend(
            (i, None, "no longer a usable row of the manifest (it changed after the extraction was planned); run the extraction again")
            for i in image_ids
            if i not in rows
        )
    t0 = time.perf_counter()
    device = enc.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with fs.writer(shards=shards) as writer:
        todo = [i for i in wanted if i not in writer.skip]
        result.skipped = len(wanted) - len(todo)
        indexed = indexed_sha256(store, todo)
        items = [(i, rows[i]["path"], manifest.resolve(rows[i]["path"]), rows[i].get("format"), indexed.get(i)) for i in todo]
        loader = DataLoader(
            _Images(items, enc, _extra_columns(enc, manifest, rows, todo)),
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers if len(items) > cfg.batch_size else 0,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        bar = tqdm(total=len(items), desc=desc or f"extract {fs.id}", unit="img", disable=not cfg.progress, dynamic_ncols=True)
        with torch.inference_mode():
            for batch in loader:
                bar.update(len(batch["ids"]) + len(batch["failed"]))
                result.rejected.extend(batch["failed"])
                if not batch["ids"]:
                    continue
                x = batch["x"].to(device, non_blocking=True)
                with autocast:
                    out = enc.embed(x)
                # Cast on the device: the store keeps float16, and numpy's cast is slow.
                patches = out.patches.to(getattr(torch, cfg.dtype))
                writer.write(
                    batch["ids"], out.global_.float(), patches, sha256=batch["sha256"], extras={k: v.float() for k, v in out.extras.items()}
                )
                result.done += len(batch["ids"])
        bar.close()
    record_rejected(fs, result.rejected)
    result.seconds = time.perf_counter() - t0
    return result


def extract(manifest_url: str | Manifest, store: Store, cfg: ExtractConfig) -> ExtractResult:
    """The whole manifest in this process (what the flow does, without Prefect)."""
    return extract_group(manifest_url, store, cfg)


def stack_results(results: list[ExtractResult], wall_seconds: float | None = None) -> ExtractResult:
    """One result for several groups: counts and failures summed; ``wall_seconds`` replaces the summed
    seconds when the groups ran concurrently."""
    out = ExtractResult(results[0].feature_set_id if results else "")
    for r in results:
        out.merge(r)
    if wall_seconds is not None:
        out.seconds = wall_seconds
    return out
