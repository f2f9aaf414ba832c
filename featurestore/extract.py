"""The extraction engine: decode + preprocess in DataLoader workers, forward, commit to the store.

Usable without Prefect: ``extract(manifest, store, ExtractConfig(encoder="rad-dino"))``.
The Prefect flow (``flows/extract.py``) calls :func:`plan` once and :func:`extract_group`
for each shard-sized group, possibly on several Dask workers at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass, field

import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, Dataset

from featurestore.config import DEVICES, ExtractConfig
from featurestore.encoders import Encoder, load_encoder
from featurestore.errors import ImageReadError
from featurestore.featureset import FeatureSet
from featurestore.imageio import read_image
from featurestore.manifest import load_manifest
from featurestore.store import Store


@dataclass
class ExtractResult:
    """What one extraction did: images embedded, images skipped as already committed, images that
    failed with their reason, and the seconds it took."""

    feature_set_id: str
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image_id, reason)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        """Images embedded per second (0 when no time was recorded)."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def merge(self, other: ExtractResult) -> ExtractResult:
        """Add ``other``'s counts, failures and seconds to this result (in place) and return it."""
        self.done += other.done
        self.skipped += other.skipped
        self.failed.extend(other.failed)
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
    """The images left to extract, split into groups of at most one shard each, with the shard
    allocated to each group; ``skipped`` counts manifest rows left out (already committed, or a
    repeated id)."""

    feature_set_id: str
    groups: list[list[str]]  # each at most one shard of image_ids
    shards: list[int]  # the shard allocated to each group
    skipped: int


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
def _cached_encoder(name: str, weights: str | None, size: int | None, bits: int | None, device: str) -> Encoder:
    """One model per process and configuration (a Dask worker runs many groups)."""
    return load_encoder(name, weights, size=size, bits=bits).to(device)


def encoder_for(cfg: ExtractConfig) -> Encoder:
    """The encoder ``cfg`` names, loaded and moved to its device once per process and reused."""
    return _cached_encoder(cfg.encoder, cfg.weights, cfg.size, cfg.bits, str(resolve_device(cfg.device)))


def feature_set_for(store: Store, cfg: ExtractConfig) -> FeatureSet:
    """The feature set ``cfg``'s embeddings go into, created on first use (its shard size applies
    only then: an existing feature set keeps its own)."""
    spec = encoder_for(cfg).spec(cfg.dtype)
    if cfg.shard_images:
        spec = dataclasses.replace(spec, shard_images=cfg.shard_images)
    return store.create_feature_set(spec)


class _Images(Dataset):
    def __init__(self, rows: list[tuple[str, str, str | None]], preprocess):
        self.rows = rows
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        image_id, uri, fmt = self.rows[i]
        try:
            img = read_image(uri, format=fmt)
            return {"image_id": image_id, "x": self.preprocess(img.pixels), "sha256": img.meta.sha256, "error": None}
        except ImageReadError as e:
            return {"image_id": image_id, "x": None, "sha256": None, "error": e.reason}
        except Exception as e:  # noqa: BLE001 - preprocessing failure of one image must not stop the rest
            return {"image_id": image_id, "x": None, "sha256": None, "error": f"{type(e).__name__}: {e}"}


def _collate(items: list[dict]) -> dict:
    ok = [it for it in items if it["error"] is None]
    return {
        "ids": [it["image_id"] for it in ok],
        "x": torch.stack([it["x"] for it in ok]) if ok else None,
        "sha256": [it["sha256"] for it in ok],
        "failed": [(it["image_id"], it["error"]) for it in items if it["error"] is not None],
    }


def plan(manifest_url: str, store: Store, cfg: ExtractConfig, allocate: bool = True) -> Plan:
    """Images of the manifest not yet committed in the feature set, grouped by shard (backfill)."""
    fs = feature_set_for(store, cfg)
    ids = load_manifest(manifest_url).table.column("image_id")
    # The committed ids come from the committed index plus the parts it does not name, and the
    # planner refreshes that index (layout.py); the difference is taken in Arrow, not Python.
    done = fs.committed_rows(update_index=True).column("image_id").combine_chunks()
    left = ids.filter(pc.invert(pc.is_in(ids, value_set=done)))
    todo = list(dict.fromkeys(left.to_pylist()))  # first occurrence of each, in manifest order
    s = fs.spec.shard_images
    groups = [todo[k : k + s] for k in range(0, len(todo), s)]
    shards = fs.allocate_shards(len(groups)) if (allocate and groups) else []
    return Plan(fs.id, groups, shards, skipped=len(ids) - len(todo))


def extract_group(
    manifest_url: str,
    store: Store,
    cfg: ExtractConfig,
    image_ids: list[str] | None = None,
    shards: list[int] = (),
    desc: str | None = None,
) -> ExtractResult:
    """Extract ``image_ids`` (default: the whole manifest) into the feature set; skip committed ones."""
    from tqdm import tqdm

    enc = encoder_for(cfg)
    fs = feature_set_for(store, cfg)
    manifest = load_manifest(manifest_url)
    rows = {
        r["image_id"]: r
        for r in manifest.table.select([c for c in ("image_id", "path", "format") if c in manifest.table.column_names]).to_pylist()
    }
    wanted = list(rows) if image_ids is None else image_ids
    result = ExtractResult(fs.id)
    t0 = time.perf_counter()
    device = enc.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with fs.writer(shards=shards) as writer:
        todo = [i for i in wanted if i not in writer.skip]
        result.skipped = len(wanted) - len(todo)
        items = [(i, manifest.resolve(rows[i]["path"]), rows[i].get("format")) for i in todo]
        loader = DataLoader(
            _Images(items, enc.preprocessing),
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
                result.failed.extend(batch["failed"])
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
    if result.failed:
        fs.record_rejects([i for i, _ in result.failed], [r for _, r in result.failed])
    result.seconds = time.perf_counter() - t0
    return result


def extract(manifest_url: str, store: Store, cfg: ExtractConfig) -> ExtractResult:
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
