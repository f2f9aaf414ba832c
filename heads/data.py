"""Training data streamed from the store: labels and masks joined by image_id from the manifest.

:class:`StreamingLoader` reads a feature set shard by shard in shuffled order; each shard's
global embeddings come from its ``cls`` Parquet part and its grids from the Zarr shard. Rows
go into a shuffle buffer of ``buffer_images`` and leave it in batches, so memory is bounded by
``buffer_images + (1 + prefetch) * shard_images`` rows whatever the cohort size (``max_buffered`` records the
peak); those shard buffers and up to three batches are reused from one batch and epoch to the
next while the loader lives (a buffer is reused only once nothing refers to it). ``in_memory=True`` loads the split once instead: the baseline the benchmarks compare
against.

Segmentation targets are the manifest's mask PNGs put through the feature set's own
preprocessing geometry (resize / crop, so a pixel of the target lines up with the grid) and
resized to ``target_size``; they are cached once per (feature set, mask column, size) as a
memory-mapped uint8 array under ``$RADSTORE_CACHE/targets``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from featurestore import layout
from featurestore.encoders.preprocess import Preprocessing
from featurestore.encoders.weights import cache_dir
from featurestore.errors import LabelError, RadstoreError
from featurestore.featureset import FeatureSet
from featurestore.imageio import read_image, sniff_format
from featurestore.manifest import load_manifest
from featurestore.store import Store
from featurestore.subsets import TrainSubset
from featurestore.tasks import TaskDef

SPLITS = ("train", "val", "test")


@dataclass
class Labels:
    """The labelled images of one task: ids, patient ids, split, and the label or mask path."""

    image_ids: list[str]
    patients: list[str]
    splits: list[str]
    values: np.ndarray  # float labels, or (segmentation) nothing useful
    mask_uris: list[str] | None
    classes: tuple[float, ...] = ()  # the label values when labels are classes (TaskKind.classes)

    def subset(self, idx: np.ndarray) -> Labels:
        """The rows at positions ``idx``, in that order (a split or a fold)."""
        return Labels(
            [self.image_ids[i] for i in idx],
            [self.patients[i] for i in idx],
            [self.splits[i] for i in idx],
            self.values[idx],
            None if self.mask_uris is None else [self.mask_uris[i] for i in idx],
            self.classes,
        )


def manifests_of(store: Store) -> list[str]:
    """The manifests the store's images were ingested from (where labels are read when none is given);
    empty when nothing is ingested."""
    t = store.images()
    if t.num_rows == 0 or "manifest" not in t.column_names:
        return []
    return sorted({m for m in t.column("manifest").to_pylist() if m})


def load_labels(task: TaskDef, fs: FeatureSet, manifest: str | list[str] | None, store: Store) -> Labels:
    """Join the task's label column with the committed images of the feature set.

    Every labelled row the task will use (an image of the feature set, from the first manifest
    that labels it; a null or empty cell is no label, and that image is left out) is checked
    against the task's labels (``TaskDef.expected``, :mod:`featurestore.tasks`) before anything
    is trained; masks are checked from their file's header (opens, and is its image's size).
    Every bad row of the column is reported in one :class:`LabelError` naming the manifest,
    column, task, image ids and what was expected.
    """
    urls = [manifest] if isinstance(manifest, str) else (manifest or manifests_of(store))
    if not urls:
        raise RadstoreError(
            f"no manifest to take labels for {task.name} from: pass --manifest, or ingest the cohort into {store.url} first"
        )
    committed = fs.index()
    dense = task.spec.dense
    ids, patients, splits, values, masks, images = [], [], [], [], [], []
    bad: list[tuple[str, str, str]] = []  # (manifest, image_id, what is wrong) of every bad row
    seen: dict[str, int] = {}  # image_id -> its position among the labelled rows
    for url in urls:
        m = load_manifest(url, required=("image_id", task.column))
        cols = [c for c in ("image_id", "patient_id", "split", "path", task.column) if c in m.table.column_names]
        for r in m.table.select(cols).to_pylist():
            i, cell = r["image_id"], r[task.column]
            if i in seen or i not in committed or cell is None or (isinstance(cell, str) and not cell.strip()):
                continue
            seen[i] = len(seen)
            try:
                value = task.label(cell)
            except ValueError as e:
                bad.append((url, i, str(e)))
                continue
            ids.append(i)
            patients.append(r.get("patient_id") or i)
            splits.append(r.get("split") or "train")
            if dense:
                values.append(0.0)
                masks.append(m.resolve(value))
                path = r.get("path")
                images.append((url, m.resolve(path) if isinstance(path, str) and path.strip() else None))
            else:
                values.append(value)
    if dense and ids:
        bad += _mask_problems(ids, masks, images, store)
    if bad:
        raise _label_error(task, sorted(bad, key=lambda b: seen[b[1]]))  # in manifest order
    if not ids:
        raise RadstoreError(f"no image of feature set {fs.id} has a {task.column!r} label in {', '.join(urls)}")
    return Labels(ids, patients, splits, np.asarray(values, np.float32), masks if dense else None, task.spec.classes)


SHOWN_BAD_ROWS = 10  # image ids a LabelError lists before "and N more"


def _label_error(task: TaskDef, bad: list[tuple[str, str, str]]) -> LabelError:
    """One line for every bad row of the task's column (the first SHOWN_BAD_ROWS listed)."""
    where = list(dict.fromkeys(u for u, _, _ in bad))
    shown = ", ".join(f"{i} ({why})" for _, i, why in bad[:SHOWN_BAD_ROWS])
    more = f", and {len(bad) - SHOWN_BAD_ROWS} more" if len(bad) > SHOWN_BAD_ROWS else ""
    return LabelError(
        f"{'manifest' if len(where) == 1 else 'manifests'} {', '.join(where)} column {task.column!r} (task {task.name}) "
        f"has {len(bad)} value(s) that are not {task.expected}: image_id {shown}{more}; "
        "fix them, or leave those cells empty to train without those images"
    )


def _mask_problems(ids: list[str], masks: list[str], images: list[tuple[str, str | None]], store: Store) -> list[tuple[str, str, str]]:
    """(manifest, image_id, what is wrong) of every mask that cannot be opened or whose size is
    not its image's: the image index's size, else the image file's header (unchecked when neither
    is known). Reads only file headers, a few at a time."""
    index = store.images()
    known = dict(zip(index.column("image_id").to_pylist(), zip(index.column("height").to_pylist(), index.column("width").to_pylist())))

    def one(k: int) -> str | None:
        try:
            got = header_size(masks[k])
        except ValueError as e:
            return f"{masks[k]}: {e}"
        want = known.get(ids[k])
        if want is None and images[k][1] is not None:
            with contextlib.suppress(ValueError):
                want = header_size(images[k][1])
        if want is not None and tuple(want) != got:
            return f"mask {got[1]}x{got[0]}, image {want[1]}x{want[0]}"
        return None

    with ThreadPoolExecutor(8) as ex:
        found = list(ex.map(one, range(len(ids))))
    return [(images[k][0], ids[k], why) for k, why in enumerate(found) if why is not None]


def header_size(uri: str) -> tuple[int, int]:
    """(height, width) of an image file from its header alone (Pillow's lazy open, or the DICOM
    header without pixel data); ValueError saying why when the file cannot be opened as an image."""
    try:
        with fsspec.open(uri, "rb") as f:
            head = f.read(132)
            f.seek(0)
            if not head:
                raise ValueError("file is empty")
            if sniff_format(head, uri) == "dicom":
                import pydicom

                ds = pydicom.dcmread(f, stop_before_pixels=True)
                return int(ds.Rows), int(ds.Columns)
            from PIL import Image

            with Image.open(f) as im:
                return im.height, im.width
    except ValueError:
        raise
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not an image file") from None
    except Exception as e:  # noqa: BLE001 - whatever the decoder says, the file is not a readable image
        raise ValueError(f"not a readable image ({type(e).__name__})") from None


def split_indices(labels: Labels, fold: int | None, folds: int, seed: int, subset: TrainSubset | None = None) -> dict[str, np.ndarray]:
    """The manifest's split, or fold ``fold`` of ``folds`` by patient (test = fold, val = next).

    With a ``subset`` (a run's :attr:`heads.config.TrainConfig.subset`) ``train`` is that part of
    the training split (:func:`subset_training`) and ``train_pool`` the whole split it was drawn
    from; validation and test are untouched. The one place training, the run's lineage and the
    reuse check take a run's images from."""
    if fold is None:
        out = {s: np.flatnonzero(np.array(labels.splits) == s) for s in SPLITS}
    else:
        if not 0 <= fold < folds:
            raise RadstoreError(f"fold {fold} is outside 0..{folds - 1}")
        patients = sorted(set(labels.patients))
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(patients))
        fold_of = {patients[p]: k % folds for k, p in enumerate(order)}
        f = np.array([fold_of[p] for p in labels.patients])
        out = {"test": np.flatnonzero(f == fold), "val": np.flatnonzero(f == (fold + 1) % folds)}
        out["train"] = np.flatnonzero((f != fold) & (f != (fold + 1) % folds))
    for s in SPLITS:
        if len(out[s]) == 0:
            raise RadstoreError(f"the {s} split is empty ({len(labels.image_ids)} labelled images); check the manifest's split column")
    if subset is not None:
        out["train_pool"] = out["train"]
        out["train"] = subset_training(labels, out["train"], subset.fraction, subset.shots, subset.seed)
    return out


def patient_order(patients: list[str], seed: int) -> list[str]:
    """The distinct ``patients`` in the order a subset seed draws them: by the sha256 of (seed,
    patient id). A patient's place depends on nothing else, so the order is the same on every
    machine and a patient added to the split only slots in between the others."""
    return sorted(set(patients), key=lambda p: (hashlib.sha256(f"{seed}\t{p}".encode()).digest(), p))


def subset_training(labels: Labels, train_idx: np.ndarray, fraction: float | None = None, shots: int | None = None,
                    seed: int = 0) -> np.ndarray:  # fmt: skip
    """The positions (ascending) of a patient-level subset of the training split ``train_idx``.

    Patients are taken in :func:`patient_order` for ``seed``, every image of a patient at once,
    until the subset is big enough:

    - ``fraction``: until it holds at least ``ceil(fraction * len(train_idx))`` images (one at
      least) and, where labels are classes, an image of every class the split holds (a
      classifier cannot be fitted to one class). The last patient can overshoot the target by
      their other images: the run records the images it really used;
    - ``shots``: until it holds at least ``shots`` images of each class (labels must be
      classes): exactly k per class is not possible patient by patient, and the run records the
      images it used. A split with fewer than ``shots`` images of a class is an error, not a
      silently smaller subset.

    Every subset of one seed is a prefix of the same patient order, so subsets of one seed are
    nested (1% within 2% ... within 100%, 8 shots within 16 within 32, and a k-shot subset within
    any larger fraction subset); the order depends on the seed and the patient ids only, so every
    encoder trained with one seed sees the same patients, and another seed draws others.
    """
    train_idx = np.asarray(train_idx)
    if (fraction is None) == (shots is None):
        raise RadstoreError("a training subset needs a fraction or a number of shots (one of the two)")
    values = labels.values[train_idx]
    if shots is not None:
        if not labels.classes:
            raise RadstoreError("a k-shot subset needs labels that are classes; size it by a fraction instead")
        have = {c: int(np.count_nonzero(values == c)) for c in labels.classes}
        if min(have.values()) < shots:
            counts = ", ".join(f"{n} of class {c:g}" for c, n in have.items())
            raise RadstoreError(f"{shots} shots need {shots} training images of each class; the training split has {counts}")
        classes, per_class, target = labels.classes, shots, 0
    else:
        classes = tuple(c for c in labels.classes if np.any(values == c))
        per_class, target = 1, max(1, math.ceil(fraction * len(train_idx) - 1e-9))  # 0.1 * 30 is 3, not 4
    by_patient: dict[str, list[int]] = {}
    for i in train_idx.tolist():
        by_patient.setdefault(labels.patients[i], []).append(i)
    taken: list[int] = []
    got = dict.fromkeys(classes, 0)
    for p in patient_order(list(by_patient), seed):
        if len(taken) >= target and all(n >= per_class for n in got.values()):
            break
        rows = by_patient[p]
        taken += rows
        for c in classes:
            got[c] += int(np.count_nonzero(labels.values[rows] == c))
    return np.sort(np.asarray(taken, dtype=train_idx.dtype))


def split_counts(labels: Labels, splits: dict[str, np.ndarray]) -> dict[str, int]:
    """What a run records of its splits (run.json ``splits``): the images of each split it used,
    the positives of its training images where labels are classes (``train_positives``), and for
    a subset the images of the whole training split it was drawn from (``train_pool``)."""
    out = {k: len(v) for k, v in splits.items()}
    if labels.classes:
        out["train_positives"] = int(np.count_nonzero(labels.values[splits["train"]] == labels.classes[-1]))
    return out


def mask_targets(fs: FeatureSet, labels: Labels, target_size: int, column: str, progress: bool = False,
                 mask_hashes: list[str] | None = None) -> np.ndarray:  # fmt: skip
    """uint8 [N, T, T] masks aligned with ``labels.image_ids``, cached as a memmap keyed by the
    masks' paths and their content (``mask_hashes``: sha256 of each file, hashed here when not
    given): an edited mask file is read again, not served from the cache."""
    from tqdm import tqdm

    if mask_hashes is None:
        from heads.lineage import mask_hashes as hash_masks

        mask_hashes = hash_masks(labels.mask_uris)

    pre = Preprocessing.from_json(fs.spec.preprocessing)
    parts = [fs.id, column, str(target_size), *labels.image_ids, *labels.mask_uris, *mask_hashes]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    path = Path(cache_dir()) / "targets" / f"{fs.id}-{column}-{target_size}-{key}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{np.random.default_rng().integers(1 << 30)}.partial.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(labels.image_ids), target_size, target_size))

    def one(i: int) -> None:
        m = torch.from_numpy(read_image(labels.mask_uris[i]).pixels)[None, None]
        m = pre.geometry((m > 0.5).float(), "bilinear")
        m = F.interpolate(m, size=(target_size, target_size), mode="area")
        arr[i] = (m[0, 0] > 0.5).numpy().astype(np.uint8)

    with ThreadPoolExecutor(4) as ex:
        list(tqdm(ex.map(one, range(len(labels.image_ids))), total=len(labels.image_ids), desc=f"targets {column}", disable=not progress))
    arr.flush()
    tmp.replace(path)  # atomic: a half-built cache is never picked up
    return np.load(path, mmap_mode="r")


class _Buffers:
    """Arrays handed out again once nothing refers to them any more.

    A batch tensor made with ``torch.from_numpy``, any view of it, a ``.numpy()`` of it and an
    autograd graph that saved it all keep a reference to the array, so an array whose only
    reference is this pool's is free. Reuse matters: page-faulting a fresh batch array costs more
    than filling it (figures in benchmarks/README.md).
    """

    def __init__(self, keep: int):
        self.keep = keep
        self.arrays: list[np.ndarray] = []
        self.lock = threading.Lock()

    def get(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        with self.lock:
            for a in self.arrays:
                if a.shape == shape and a.dtype == dtype and sys.getrefcount(a) <= _FREE_REFS:
                    return a
            a = np.empty(shape, dtype)
            if len(self.arrays) < self.keep:
                self.arrays.append(a)
            return a

    def clear(self) -> None:
        with self.lock:
            self.arrays = []


@contextlib.contextmanager
def _one_torch_thread():
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def _free_refs() -> int:
    """What sys.getrefcount reports, inside _Buffers.get's loop, for an array only the pool holds."""
    for a in [np.empty(1)]:
        return sys.getrefcount(a)
    return 0


_FREE_REFS = _free_refs()


@dataclass
class Batch:
    """One batch of :class:`StreamingLoader`: image ids, global vectors and patch grids (None when the
    loader was not asked for them), and the targets."""

    ids: list[str]
    g: torch.Tensor | None  # [B, D] float32
    patches: torch.Tensor | None  # [B, C, H, W] float32
    y: torch.Tensor  # [B] float or [B, T, T] float


class StreamingLoader:
    """Batches of (global, patches, y) for ``image_ids``, streamed shard by shard (see module doc)."""

    def __init__(
        self,
        fs: FeatureSet,
        image_ids: list[str],
        y: np.ndarray,
        *,
        batch_size: int = 16,
        shuffle: bool = False,
        seed: int = 0,
        buffer_images: int = 256,
        need_global: bool = True,
        need_patches: bool = False,
        in_memory: bool = False,
        prefetch: int = 1,
    ):
        if len(image_ids) != len(y):
            raise ValueError("image_ids and y differ in length")
        self.fs = fs
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.buffer_images = max(buffer_images, batch_size)
        self.need_global = need_global
        self.need_patches = need_patches
        self.y = y
        self.max_buffered = 0
        self.prefetch = max(1, prefetch)
        idx = fs.cls(columns=["image_id", "row", "shard"])
        pos = {i: k for k, i in enumerate(image_ids)}
        keep = pc.is_in(idx.column("image_id"), pa.array(image_ids))
        idx = idx.filter(keep)
        self.ids = idx.column("image_id").to_pylist()
        if len(self.ids) != len(image_ids):
            missing = sorted(set(image_ids) - set(self.ids))[:5]
            raise RadstoreError(f"{len(image_ids) - len(self.ids)} image(s) have no embedding in {fs.id}, e.g. {missing}")
        self.rows = idx.column("row").to_numpy()
        self.shards = idx.column("shard").to_numpy()
        self.ypos = np.fromiter((pos[i] for i in self.ids), np.int64, len(self.ids))
        self._batches = _Buffers(keep=3)  # float32 patch batches: in use, in the graph, being filled
        self._shard_bufs = _Buffers(keep=self.buffer_images // max(fs.spec.shard_images, 1) + self.prefetch + 2)
        self.parts: dict[int, str] = {}
        for p in fs.cls_parts():
            self.parts.setdefault(layout.shard_of_part(p), p)
        self._memory = self._read(np.arange(len(self.ids))) if in_memory else None

    def __len__(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    def _read(self, sel: np.ndarray) -> dict:
        """Rows ``sel`` (positions in self.ids) of one shard or of everything."""
        out = {"pos": sel}
        if self.need_patches:
            rows = self.rows[sel]
            # A shard's rows are contiguous: read them as one slice when they are one shard,
            # into a reused buffer (a fresh 134 MB one per shard costs page faults).
            one_shard = len(np.unique(self.shards[sel])) == 1
            mapped = self.fs.map_rows(rows) if one_shard else None
            if mapped is not None:
                # Local shard files are memory-mapped: batches copy straight from the page
                # cache, with no 134 MB read competing with the training step for a core.
                out["patches"], out["prow"] = mapped
            elif one_shard:
                s = self.fs.spec.shard_images
                buf = self._shard_bufs.get((max(s, len(rows)), *self.fs.spec.grid), self.fs.spec.read_dtype)
                out["patches"] = self.fs.read_span(rows, out=buf[: len(rows)])
            else:
                out["patches"] = self.fs.read_rows(rows)
        if self.need_global:
            ids = [self.ids[i] for i in sel]
            shards = np.unique(self.shards[sel])
            t = self.fs.loc.read_parquet([self.parts[s] for s in shards], columns=["image_id", "cls"], schema=self.fs.cls_schema)
            where = {i: k for k, i in enumerate(t.column("image_id").to_pylist())}
            flat = t.column("cls").combine_chunks().flatten().to_numpy().reshape(t.num_rows, self.fs.spec.global_dim)
            out["g"] = flat[[where[i] for i in ids]]
        return out

    def _emit(self, chunks: list[dict], owner: np.ndarray, local: np.ndarray) -> Batch:
        """A batch gathered from buffered shard chunks: item j is chunks[owner[j]] row local[j]."""

        def gather(key):
            parts = [chunks[o][key][local[owner == o]] for o in np.unique(owner)]
            order = np.argsort(np.argsort(owner, kind="stable"), kind="stable")  # back to batch order
            return np.concatenate(parts)[order] if len(parts) > 1 else parts[0]

        def gather_patches() -> torch.Tensor:
            # One pass per image, float16 -> float32 in torch straight into a reused batch
            # (numpy's cast is several times slower; gathering first would copy twice), on
            # one thread: per-image copies on two OpenMP threads spent most of their time
            # waiting at barriers whenever another process held the second core.
            first = chunks[owner[0]]["patches"]
            out = torch.from_numpy(self._batches.get((len(owner), *first.shape[1:]), np.float32))
            with _one_torch_thread():
                for j, (o, r) in enumerate(zip(owner.tolist(), local.tolist())):
                    chunk = chunks[o]
                    at = chunk["prow"][r] if "prow" in chunk else r
                    out[j].copy_(torch.from_numpy(chunk["patches"][at]))
            return out

        pos = gather("pos")
        y = self.y[self.ypos[pos]]
        return Batch(
            ids=[self.ids[p] for p in pos],
            g=torch.from_numpy(np.ascontiguousarray(gather("g"), np.float32)) if "g" in chunks[owner[0]] else None,
            patches=gather_patches() if "patches" in chunks[owner[0]] else None,
            y=torch.from_numpy(np.asarray(y, np.float32)),
        )

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        if self._memory is not None:
            order = rng.permutation(len(self.ids)) if self.shuffle else np.arange(len(self.ids))
            for k in range(0, len(order), self.batch_size):
                take = order[k : k + self.batch_size]
                yield self._emit([self._memory], np.zeros(len(take), np.int64), take)
            return
        shard_ids = np.unique(self.shards)
        if self.shuffle:
            shard_ids = rng.permutation(shard_ids)
        # The buffer: shard chunks as read (no copying), and (chunk, row) of each waiting item.
        chunks: dict[int, dict] = {}
        owner = np.empty(0, np.int64)
        local = np.empty(0, np.int64)
        low = self.buffer_images // 2 if self.shuffle else 0
        # Read ahead: the next shards load in a thread while the caller computes on this batch.
        pool = ThreadPoolExecutor(1, thread_name_prefix="radstore-prefetch")
        ahead = [pool.submit(self._read, np.flatnonzero(self.shards == s)) for s in shard_ids[: self.prefetch]]
        for c, _s in enumerate(shard_ids):
            chunks[c] = ahead.pop(0).result()
            if c + self.prefetch < len(shard_ids):
                ahead.append(pool.submit(self._read, np.flatnonzero(self.shards == shard_ids[c + self.prefetch])))
            n_new = len(chunks[c]["pos"])
            owner = np.concatenate([owner, np.full(n_new, c)])
            local = np.concatenate([local, np.arange(n_new)])
            self.max_buffered = max(self.max_buffered, len(owner))
            if self.shuffle and len(owner) < self.buffer_images:
                continue
            if self.shuffle:
                perm = rng.permutation(len(owner))
                owner, local = owner[perm], local[perm]
            n_emit = max(0, (len(owner) - low) // self.batch_size * self.batch_size)
            for k in range(0, n_emit, self.batch_size):
                yield self._emit(chunks, owner[k : k + self.batch_size], local[k : k + self.batch_size])
            owner, local = owner[n_emit:], local[n_emit:]
            for dead in set(chunks) - set(np.unique(owner).tolist()):
                del chunks[dead]  # every row of that shard has left the buffer
        pool.shutdown(wait=False)
        if len(owner):
            if self.shuffle:
                perm = rng.permutation(len(owner))
                owner, local = owner[perm], local[perm]
            for k in range(0, len(owner), self.batch_size):
                yield self._emit(chunks, owner[k : k + self.batch_size], local[k : k + self.batch_size])
