"""The extraction engine: decode + preprocess in DataLoader workers, forward, commit to the store.

Usable without Prefect: ``extract(manifest, store, ExtractConfig(encoder="rad-dino"))``, or
``extract_many(manifest, store, [cfg_a, cfg_b, ...])`` to embed with several encoders while
reading and decoding each image once (the decode of a real radiograph costs more than most
forwards). The Prefect flow (``flows/extract.py``) calls :func:`plan_many` once and
:func:`extract_many` for each shard-sized group, possibly on several Dask workers at once.

A row's failure is that row's: a bad manifest row (:func:`featurestore.manifest.check_rows`:
empty or unprintable image_id, an id repeated in the manifest, null or empty path), a file that
cannot be read or decoded, or, when the store's image index has the image_id, a file whose
bytes differ from the indexed version (sha256), is recorded in the feature set's rejects with
its path and reason; every other image is embedded and committed. An encoder's failure is that
encoder's: each encoder has its own feature set and writer, so the others go on and commit; the
failure is raised once every writer is closed, and a rerun extracts only what is missing.

On a CUDA device an image's last steps run there (:meth:`Preprocessing.finish`): the workers
ship the 8-bit crop (or the 16-bit image) :meth:`Preprocessing.prepare` makes, not float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, Dataset

from featurestore import describe
from featurestore.config import DEVICES, ExtractConfig
from featurestore.encoders import Encoder, load_encoder
from featurestore.featureset import FeatureSet
from featurestore.imageio import decode, read_bytes, sha256_of
from featurestore.manifest import Manifest, changed_bytes_reason, check_rows, load_manifest, read_failure_reason
from featurestore.store import Store
from featurestore.tasks import TASKS

#: (image_id, path as written in the manifest or None, reason) of a row that was not embedded
Rejected = tuple[str, str | None, str]


@dataclass
class ExtractResult:
    """What one extraction did for one encoder: images embedded, images skipped as already
    committed, rows that were not embedded with their path and reason, and where the seconds
    went: waiting for decoded input (shared by the encoders of one :func:`extract_many`), this
    encoder's forward passes, and its writes to the store."""

    feature_set_id: str
    done: int = 0
    skipped: int = 0
    rejected: list[Rejected] = field(default_factory=list)  # (image_id, manifest path, reason)
    seconds: float = 0.0
    encoder: str = ""
    wait_s: float = 0.0
    forward_s: float = 0.0
    commit_s: float = 0.0
    loop_s: float = 0.0  # time inside the extraction loops, summed over groups that ran at once

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
        self.wait_s += other.wait_s
        self.forward_s += other.forward_s
        self.commit_s += other.commit_s
        self.loop_s += other.loop_s
        return self

    def summary(self) -> str:
        """One line for people: counts and throughput."""
        return (
            f"feature set {self.feature_set_id}: {self.done} extracted, {self.skipped} already there, "
            f"{len(self.failed)} failed, {self.images_per_s:.1f} images/s"
        )

    def profile_line(self) -> str:
        """Where the time went (``--profile``): shares of the time inside the extraction loops
        (of every group, when groups ran at once), and images/s over the wall time."""
        total = self.loop_s or self.seconds
        share = (lambda s: s / total) if total > 0 else (lambda s: 0.0)
        return (
            f"profile {self.encoder}: {self.done} images, {self.images_per_s:.2f} images/s; input wait {share(self.wait_s):.1%}, "
            f"forward {share(self.forward_s):.1%}, commit {share(self.commit_s):.1%}"
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


@dataclass(frozen=True)
class MultiPlan:
    """One :class:`Plan` per encoder and the groups of images that at least one of them still
    needs (manifest order, at most the smallest shard size each): what one decode feeds."""

    plans: list[Plan]
    groups: list[list[str]]


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


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def workers_for(cfg: ExtractConfig) -> int:
    """DataLoader processes: ``cfg.num_workers`` when given, else the cores available minus the
    one that runs the forward and the commits (at least one)."""
    return cfg.num_workers if cfg.num_workers is not None else max(1, available_cores() - 1)


def batch_size_for(cfg: ExtractConfig, device: torch.device) -> int:
    """Images per forward: ``cfg.batch_size`` when given, else sized to the device (a GPU wants
    large batches to stay busy; a CPU gains nothing from them and holds them in memory)."""
    if cfg.batch_size is not None:
        return cfg.batch_size
    return 64 if device.type == "cuda" else 16


@functools.lru_cache(maxsize=8)
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
    fs = store.create_feature_set(spec, legacy_fingerprint=lambda: encoder.legacy_fingerprint)
    # Which feature set ``cfg`` makes, for a rerun with nothing new to say so without the model.
    describe.remember(cfg, fs.id)
    return fs


class _Images(Dataset):
    """Rows (image_id, manifest path, uri, format, indexed sha256 or None, encoders needing it) ->
    each needing encoder's input, from one read and one decode; a row that cannot be read or
    decoded, or whose bytes differ from the indexed sha256, comes back with its error for every
    encoder, and an input one encoder cannot make with the error for that encoder."""

    def __init__(self, rows: list[tuple], encoders: list[Encoder], extra: list[dict[str, dict]], on_device: bool):
        self.rows = rows
        self.encoders = encoders
        self.extra = extra  # per encoder: image_id -> its manifest columns
        self.on_device = on_device

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        image_id, path, uri, fmt, indexed, needs = self.rows[i]
        out = {"image_id": image_id, "path": path, "x": {}, "sha256": None, "error": None, "errors": {}}
        try:
            data = read_bytes(uri)
            if indexed is not None and (sha := sha256_of(data)) != indexed:
                out["error"] = changed_bytes_reason(indexed, sha, "not embedded: the image index holds the earlier version")
                return out
            decoded = decode(uri, data=data, format=fmt)
            out["sha256"] = decoded.meta.sha256
        except Exception as e:  # noqa: BLE001 - a failure of one image must not stop the rest
            out["error"] = read_failure_reason(e)
            return out
        for k in needs:
            enc = self.encoders[k]
            try:
                if enc.manifest_columns:  # an input built from more than the pixels (the positive control)
                    pixels = decoded.image(**enc.preprocessing.decode_options()).pixels
                    out["x"][k] = enc.input_for(pixels, {"image_id": image_id, **self.extra[k].get(image_id, {})})
                else:
                    out["x"][k] = enc.preprocessing.prepare(decoded, on_device=self.on_device)
            except Exception as e:  # noqa: BLE001
                out["errors"][k] = read_failure_reason(e)
        return out


def _as_is(item: dict) -> dict:
    """The loader's collate for single images: batches are formed by the extraction loop."""
    return item


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


def plan_many(manifest: str | Manifest, store: Store, cfgs: Sequence[ExtractConfig]) -> MultiPlan:
    """:func:`plan` for each configuration, and the images any of them still needs grouped by
    the smallest of their shard sizes, so that each group is decoded once for all of them."""
    m = _manifest(manifest)
    check_distinct(cfgs)
    plans = [plan(m, store, c) for c in cfgs]
    needed = {i for p in plans for g in p.groups for i in g}
    order = [i for i in m.table.column("image_id").to_pylist() if i in needed]
    order = list(dict.fromkeys(order))
    size = min(store.feature_set(p.feature_set_id).spec.shard_images for p in plans) if plans else 1
    return MultiPlan(plans, [order[k : k + size] for k in range(0, len(order), size)])


def check_distinct(cfgs: Sequence[ExtractConfig]) -> None:
    """Two configurations of one extraction must differ in encoder or settings: the same one
    twice would write the same feature set from two writers of one process."""
    from featurestore.errors import RadstoreError

    seen: set[tuple] = set()
    for c in cfgs:
        key = (c.encoder, c.weights, c.size, c.bits, c.intensity, c.dtype)
        if key in seen:
            raise RadstoreError(f"encoder {c.encoder!r} is listed twice with the same settings; list each encoder once")
        seen.add(key)


@dataclass
class _Job:
    """One encoder's share of an extraction: its model, feature set, writer and counts."""

    cfg: ExtractConfig
    enc: Encoder
    fs: FeatureSet
    result: ExtractResult
    writer: object = None
    todo: set[str] = field(default_factory=set)
    error: BaseException | None = None


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
    return extract_many(manifest_url, store, [cfg], image_ids, shards=shards, desc=desc)[0]


def extract_many(
    manifest_url: str | Manifest,
    store: Store,
    cfgs: Sequence[ExtractConfig],
    image_ids: list[str] | None = None,
    shards: list[int] = (),
    desc: str | None = None,
) -> list[ExtractResult]:
    """Extract ``image_ids`` (default: the whole manifest) with every encoder of ``cfgs``: each
    image is read and decoded once and fed to the preprocessing of every encoder whose feature
    set does not hold it yet; each encoder commits to its own feature set. ``shards`` (claimed
    shards) only with one configuration. Returns one result per configuration, in order; if an
    encoder failed, its error is raised after every writer has committed what it had."""
    from tqdm import tqdm

    if not cfgs:
        return []
    if shards and len(cfgs) > 1:
        raise ValueError("pre-claimed shards belong to one feature set: pass them with one configuration")
    check_distinct(cfgs)
    manifest = _manifest(manifest_url)
    jobs = []
    for c in cfgs:
        enc = encoder_for(c)
        fs = feature_set_for(store, c)
        jobs.append(_Job(c, enc, fs, ExtractResult(fs.id, encoder=c.encoder)))
    valid, errors = check_rows(manifest, action="embedded")
    columns = {"image_id", "path", "format", *(col for j in jobs for col in j.enc.manifest_columns)}
    table = manifest.table.select([c for c in manifest.table.column_names if c in columns]).take(valid)
    if image_ids is not None:
        table = table.filter(pc.is_in(table.column("image_id"), value_set=pa.array(image_ids, pa.string())))
    rows = {r["image_id"]: r for r in table.to_pylist()}
    if image_ids is None:
        wanted = list(rows)
        bad = _rejected(errors)
    else:
        wanted = [i for i in image_ids if i in rows]
        bad = [
            (i, None, "no longer a usable row of the manifest (it changed after the extraction was planned); run the extraction again")
            for i in image_ids
            if i not in rows
        ]
    t0 = time.perf_counter()
    device = jobs[0].enc.device
    on_device = device.type == "cuda" if cfgs[0].device_preprocess is None else cfgs[0].device_preprocess
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    sync = torch.cuda.synchronize if (device.type == "cuda" and cfgs[0].profile) else (lambda: None)
    with contextlib.ExitStack() as stack:
        for j in jobs:
            j.writer = j.fs.writer(shards=shards)
            stack.callback(_close, j)
            j.todo = {i for i in wanted if i not in j.writer.skip}
            j.result.skipped = len(wanted) - len(j.todo)
            j.result.rejected.extend(bad)
        todo = [i for i in wanted if any(i in j.todo for j in jobs)]
        indexed = indexed_sha256(store, todo)
        items = [
            (i, rows[i]["path"], manifest.resolve(rows[i]["path"]), rows[i].get("format"), indexed.get(i),
             tuple(k for k, j in enumerate(jobs) if i in j.todo))
            for i in todo
        ]  # fmt: skip
        extra = [_extra_columns(j.enc, manifest, rows, todo) for j in jobs]
        batch = max(batch_size_for(c, device) for c in cfgs)
        workers = max(workers_for(c) for c in cfgs) if len(items) > batch else 0
        # One image per worker task, batched here: every worker decodes while a batch fills
        # (a worker per batch would leave most of them idle on a few hundred images and a GPU's
        # large batches); enough in flight for two batches ahead.
        loader = DataLoader(
            _Images(items, [j.enc for j in jobs], extra, on_device),
            batch_size=None,
            num_workers=workers,
            collate_fn=_as_is,
            pin_memory=device.type == "cuda",
            prefetch_factor=max(2, -(-2 * batch // workers)) if workers else None,
            persistent_workers=False,
        )
        names = ", ".join(c.encoder for c in cfgs)
        bar = tqdm(total=len(items), desc=desc or f"extract {names}", unit="img", disable=not cfgs[0].progress, dynamic_ncols=True)
        with torch.inference_mode():
            it = iter(loader)
            while True:
                tw = time.perf_counter()
                got = list(itertools.islice(it, batch))
                wait = time.perf_counter() - tw
                for j in jobs:
                    j.result.wait_s += wait
                if not got:
                    break
                bar.update(len(got))
                for k, j in enumerate(jobs):
                    if j.error is None:
                        _embed_batch(j, k, got, device, autocast, sync)
        bar.close()
    for j in jobs:
        record_rejected(j.fs, j.result.rejected)
        j.result.seconds = j.result.loop_s = time.perf_counter() - t0
    failed = [j for j in jobs if j.error is not None]
    if failed:
        raise failed[0].error
    return [j.result for j in jobs]


def _embed_batch(job: _Job, k: int, items: list[dict], device: torch.device, autocast, sync) -> None:
    """One encoder's part of a loader batch: its failed rows recorded, the rest embedded in
    batches of its own size and written. An exception stops this encoder only."""
    mine = [it for it in items if k in it["x"] or k in it["errors"] or (it["error"] is not None and it["image_id"] in job.todo)]
    for it in mine:
        if it["error"] is not None or k in it["errors"]:
            job.result.rejected.append((it["image_id"], it["path"], it["error"] or it["errors"][k]))
    ok = [it for it in mine if k in it["x"]]
    step = batch_size_for(job.cfg, device)
    try:
        for s in range(0, len(ok), step):
            part = ok[s : s + step]
            t = time.perf_counter()
            xs = [it["x"][k] for it in part]
            if job.enc.manifest_columns:
                x = torch.stack(xs).to(device, non_blocking=True)
            else:
                x = job.enc.preprocessing.finish(xs, device)
            with autocast:
                out = job.enc.embed(x)
            # Cast on the device: the store keeps float16 (or quantises from it), and numpy's cast is slow.
            patches = out.patches.to(torch.float16 if job.cfg.dtype == "int8" else getattr(torch, job.cfg.dtype))
            sync()
            t1 = time.perf_counter()
            job.writer.write(
                [it["image_id"] for it in part],
                out.global_.float(),
                patches,
                sha256=[it["sha256"] for it in part],
                extras={n: v.float() for n, v in out.extras.items()},
            )
            job.result.forward_s += t1 - t
            job.result.commit_s += time.perf_counter() - t1
            job.result.done += len(part)
    except Exception as e:  # noqa: BLE001 - the other encoders go on; raised at the end
        job.error = e
        _close(job)


def _close(job: _Job) -> None:
    """Commit what the encoder's writer holds (its validated rows) and stop it; once."""
    w, job.writer = job.writer, None
    if w is None:
        return
    t = time.perf_counter()
    try:
        w.close()
    except Exception as e:  # noqa: BLE001
        job.error = job.error or e
    job.result.commit_s += time.perf_counter() - t


def extract(manifest_url: str | Manifest, store: Store, cfg: ExtractConfig) -> ExtractResult:
    """The whole manifest in this process (what the flow does, without Prefect)."""
    return extract_group(manifest_url, store, cfg)


def stack_results(results: list[ExtractResult], wall_seconds: float | None = None) -> ExtractResult:
    """One result for several groups: counts and failures summed; ``wall_seconds`` replaces the summed
    seconds when the groups ran concurrently."""
    out = ExtractResult(results[0].feature_set_id if results else "", encoder=results[0].encoder if results else "")
    for r in results:
        out.merge(r)
    if wall_seconds is not None:
        out.seconds = wall_seconds
    return out
