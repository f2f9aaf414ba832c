"""One health check of a feature set, read from the store: every figure and its tables.

The committed rows are read once, streamed part by part: the global figures fold every row
into :class:`~featurestore.health.spectrum.Moments`, and the rows the other figures need are
kept as they pass (the training and test images for the leakage audit, the seeded sample for
the CKA, the drift test's two sides). The sample's grids are then read in batches for the
patch figures. Memory is ``d x d`` plus the rows kept, never the whole feature set's grids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore import layout
from featurestore.errors import RadstoreError
from featurestore.featureset.reader import FeatureSet
from featurestore.health.config import HealthConfig
from featurestore.health.drift import DriftTest, drift_test
from featurestore.health.leakage import Neighbours, audit, unit_rows, whitener
from featurestore.health.patches import PatchAccumulator
from featurestore.health.similarity import linear_cka
from featurestore.health.spectrum import Moments, Spectrum, spectrum_of
from featurestore.store import Store

#: Parts read per step of the streamed pass over the global embeddings.
PARTS_PER_READ = 256
#: Fewer images than this are reported but never flagged: a handful of embeddings spans only
#: that many directions, so their spectrum says nothing about the encoder.
MIN_FLAG_IMAGES = 10
TRAIN, TEST = "train", "test"


def matrix(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed-size-list column as an ``[n, dim]`` float32 array."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


@dataclass
class Committed:
    """The committed rows of a feature set (first commit wins), in row order, with what each
    image is to the check: its split, its patient and the cls part that committed it."""

    ids: np.ndarray  # object
    rows: np.ndarray  # int64, ascending
    extracted_at: np.ndarray  # datetime64[ms]
    split: np.ndarray  # object (None where the image index has no split)
    patient: np.ndarray  # object
    part: np.ndarray  # object: the basename of the cls part each row was committed in
    parts: list[str]  # full paths of the cls parts read (one listing for the whole check)

    def __len__(self) -> int:
        return len(self.ids)

    def part_names(self) -> list[str]:
        """The basenames of the parts read, sorted (a version records them: the next one's drift
        test takes the rows of every other part as new)."""
        return sorted(p.rsplit("/", 1)[-1] for p in self.parts)


def committed(store: Store, fs: FeatureSet) -> Committed:
    """Read which rows exist, and in which part, from one listing of the cls parts, and join the
    image index's split and patient id."""
    import pyarrow.dataset as ds

    parts = fs.cls_parts()
    if not parts:
        raise RadstoreError(f"feature set {fs.id} has no committed rows: extract images first (radstore extract)")
    d = ds.dataset(parts, schema=fs.cls_schema, format="parquet", filesystem=fs.loc.fs)
    t = d.to_table(columns=["image_id", "row", "extracted_at", "__filename"]).rename_columns(["image_id", "row", "extracted_at", "part"])
    t = layout.keep_first(t.sort_by([("row", "ascending")]))
    images = store.images().select(["image_id", "split", "patient_id"])
    joined = t.join(images, "image_id", join_type="left outer").sort_by([("row", "ascending")])
    return Committed(
        ids=np.asarray(joined.column("image_id").to_pylist(), dtype=object),
        rows=joined.column("row").to_numpy(),
        extracted_at=joined.column("extracted_at").cast(pa.timestamp("ms")).to_numpy(zero_copy_only=False),
        split=np.asarray(joined.column("split").to_pylist(), dtype=object),
        patient=np.asarray(joined.column("patient_id").to_pylist(), dtype=object),
        part=np.asarray([p.rsplit("/", 1)[-1] for p in joined.column("part").to_pylist()], dtype=object),
        parts=parts,
    )


def choose(n: int, k: int, seed: int, *key: str) -> np.ndarray:
    """Sorted positions of a seeded sample of ``k`` of ``n`` (all when ``k`` is 0 or >= n)."""
    if k == 0 or k >= n:
        return np.arange(n)
    ss = np.random.SeedSequence([seed, *(int.from_bytes(s.encode()[:8].ljust(8, b"\0"), "little") for s in key)])
    return np.sort(np.random.default_rng(ss).choice(n, k, replace=False))


@dataclass
class Kept:
    """Slots of the rows kept from the streamed pass: ``slots[name][position]`` is the row's
    index in ``arrays[name]`` (or -1)."""

    slots: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def want(self, name: str, n: int, positions: np.ndarray, dim: int) -> None:
        """Keep the rows at ``positions`` (of ``n`` committed) as ``arrays[name]``, in that order."""
        s = np.full(n, -1, dtype=np.int64)
        s[positions] = np.arange(len(positions))
        self.slots[name] = s
        self.arrays[name] = np.zeros((len(positions), dim), dtype=np.float32)

    def take(self, positions: np.ndarray, x: np.ndarray) -> None:
        """File the rows ``x`` (at committed ``positions``) into every array that wants them."""
        for name, s in self.slots.items():
            at = s[positions]
            ok = at >= 0
            self.arrays[name][at[ok]] = x[ok]


@dataclass
class GlobalPass:
    """What the streamed pass over the global embeddings returns."""

    spectrum: Spectrum
    norms: np.ndarray
    kept: Kept


def stream_globals(fs: FeatureSet, c: Committed, kept: Kept, progress: bool = False) -> GlobalPass:
    """One pass over the cls parts: every committed row into the moments, the wanted rows kept."""
    from tqdm import tqdm

    dim = fs.spec.global_dim
    moments = Moments(dim)
    norms = np.full(len(c), np.nan)
    seen = np.zeros(len(c), dtype=bool)
    with tqdm(total=len(c), desc=f"health {fs.id}: globals", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(c.parts), PARTS_PER_READ):
            t = fs.loc.read_parquet(c.parts[start : start + PARTS_PER_READ], columns=["row", "cls"], schema=fs.cls_schema)
            rows = t.column("row").to_numpy()
            pos = np.searchsorted(c.rows, rows)
            pos = np.minimum(pos, len(c) - 1)
            ok = c.rows[pos] == rows  # a losing duplicate commit's row is not in c.rows
            ok &= ~seen[pos]
            if not ok.any():
                continue
            ok_idx = np.nonzero(ok)[0]
            pos = pos[ok_idx]
            seen[pos] = True
            x = matrix(t.column("cls"), dim)[ok_idx]
            if not np.isfinite(x).all():
                bad = c.ids[pos[~np.isfinite(x).all(1)]][:5]
                raise RadstoreError(f"feature set {fs.id}: non-finite global embeddings for {', '.join(map(str, bad))}; "
                                    "re-extract them (radstore store verify)")  # fmt: skip
            norms[pos] = moments.add(x)
            kept.take(pos, x)
            bar.update(len(pos))
    if not seen.all():
        raise RadstoreError(f"feature set {fs.id}: {int((~seen).sum())} committed row(s) vanished while reading; rerun the check")
    return GlobalPass(moments.spectrum(), norms, kept)


def stream_patches(fs: FeatureSet, c: Committed, positions: np.ndarray, cfg: HealthConfig, progress: bool = False) -> PatchAccumulator:
    """Read the sampled images' grids in batches (row order) into a :class:`PatchAccumulator`."""
    from tqdm import tqdm

    acc = PatchAccumulator(fs.spec.grid, rank_images=cfg.rank_images, tokens_per_image=cfg.tokens_per_image, seed=cfg.seed)
    with tqdm(total=len(positions), desc=f"health {fs.id}: patches", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(positions), cfg.batch):
            p = positions[start : start + cfg.batch]
            acc.add(fs.read_rows(c.rows[p], image_ids=list(c.ids[p])))
            bar.update(len(p))
    return acc


@dataclass(frozen=True)
class ControlCKA:
    """Linear CKA with one negative control's feature set, on ``n`` shared images."""

    feature_set_id: str
    encoder: str
    cka: float
    n: int


def control_cka(store: Store, fs: FeatureSet, ids: np.ndarray, x: np.ndarray) -> list[ControlCKA]:
    """Linear CKA of ``x`` (the sample's globals, rows ``ids``) against each negative control
    encoder's feature set sharing the most of those images (one per control encoder)."""
    import featurestore.encoders  # noqa: F401  (registers the encoders: control_of reads the registry)
    from featurestore.encoders.registry import control_of

    want = pa.array(list(ids), pa.string())
    best: dict[str, tuple[int, FeatureSet, pa.Table]] = {}
    for other in store.feature_sets():
        enc = other.spec.encoder
        if other.id == fs.id or enc == fs.spec.encoder or control_of(enc) != "negative":
            continue
        t = other.cls(columns=["image_id", "cls"])
        t = t.filter(pc.is_in(t.column("image_id"), value_set=want))
        if t.num_rows > best.get(enc, (1, None, None))[0]:
            best[enc] = (t.num_rows, other, t)
    out = []
    at = {v: i for i, v in enumerate(ids)}
    for enc, (n, other, t) in sorted(best.items()):
        rows = np.fromiter((at[i] for i in t.column("image_id").to_pylist()), dtype=np.int64, count=t.num_rows)
        out.append(ControlCKA(other.id, enc, linear_cka(x[rows], matrix(t.column("cls"), other.spec.global_dim)), n))
    return out


@dataclass(frozen=True)
class Backfill:
    """The drift of the images committed since the previous version against those before."""

    new_from: datetime  # the new rows' extraction times
    new_upto: datetime
    n_before: int  # every committed image the previous version read (the test reads a sample of each side)
    n_new: int
    test: DriftTest
    before: Spectrum
    new: Spectrum


def audit_leakage(g: GlobalPass, cfg: HealthConfig) -> tuple[Neighbours, np.ndarray, np.ndarray] | None:
    """Whiten the test and training globals with the feature set's mean and covariance
    (:mod:`.leakage`) and audit them; None without both splits."""
    kept = g.kept
    tr, te = kept.arrays.get(TRAIN), kept.arrays.get(TEST)
    if tr is None or te is None or len(tr) == 0 or len(te) == 0:
        return None
    s = g.spectrum
    w = whitener(s.covariance, cfg.leakage_whiten) if cfg.leakage_whiten is not None else None
    nb = audit(unit_rows(te, s.mean, w), unit_rows(tr, s.mean, w), cfg.leakage_threshold, per_image=cfg.leakage_pairs_per_image)
    return nb, np.nonzero(kept.slots[TEST] >= 0)[0], np.nonzero(kept.slots[TRAIN] >= 0)[0]


def new_rows(c: Committed, previous_parts: list[str]) -> np.ndarray:
    """Which committed rows came in parts the previous version did not read (boolean)."""
    return ~np.isin(c.part, np.asarray(previous_parts, dtype=object))


def measure_drift(c: Committed, kept: Kept, is_new: np.ndarray, cfg: HealthConfig) -> Backfill | None:
    """The drift test of the kept ``new``/``before`` rows (None with fewer than 2 on a side)."""
    x, y = kept.arrays.get("before"), kept.arrays.get("new")
    if x is None or y is None or len(x) < 2 or len(y) < 2:
        return None
    test = drift_test(x, y, permutations=cfg.permutations, seed=cfg.seed)
    new_times = c.extracted_at[is_new]
    as_dt = lambda t: t.astype("datetime64[ms]").astype(datetime)  # noqa: E731
    return Backfill(as_dt(new_times.min()), as_dt(new_times.max()), int((~is_new).sum()), int(is_new.sum()), test, spectrum_of(x),
                    spectrum_of(y))  # fmt: skip


def summary_rows(fs: FeatureSet, g: GlobalPass, acc: PatchAccumulator | None, ckas: list[ControlCKA],
                 leak: tuple[Neighbours, np.ndarray, np.ndarray] | None, drift: Backfill | None,
                 cfg: HealthConfig) -> list[dict[str, Any]]:  # fmt: skip
    """The long-form figures with their limits (``flagged`` where a limit applies)."""
    s = g.spectrum
    rows: list[dict[str, Any]] = []

    def add(scope: str, metric: str, value: float, n: int, limit: float | None = None, above: bool = True, detail: str | None = None):
        flagged = None
        if limit is not None and np.isfinite(value) and (scope not in ("global", "patch") or n >= MIN_FLAG_IMAGES):
            flagged = bool(value >= limit) if above else bool(value < limit)
        rows.append({"scope": scope, "metric": metric, "value": float(value), "limit": limit, "flagged": flagged, "n": n, "detail": detail})

    add("global", "rankme", s.rankme, s.n)
    add("global", "rankme_fraction", s.rankme / min(s.n, s.dim), s.n)
    add("global", "participation_ratio", s.participation_ratio, s.n, cfg.min_participation_ratio, above=False)
    add("global", "anisotropy", s.anisotropy, s.n, cfg.max_anisotropy)
    add("global", "dead_dimensions", s.dead_count, s.n)
    add("global", "dead_fraction", s.dead_count / s.dim, s.n, cfg.max_dead_fraction)
    add("global", "zero_norm_rows", s.zero_rows, s.n)
    for q, name in ((0.01, "norm_p01"), (0.5, "norm_median"), (0.99, "norm_p99")):
        add("global", name, float(np.quantile(g.norms, q)), s.n)
    add("global", "norm_mean", float(g.norms.mean()), s.n)
    add("global", "norm_cv", float(g.norms.std() / g.norms.mean()) if g.norms.mean() > 0 else float("nan"), s.n)
    if acc is not None and acc.images:
        cos, rank, _ = acc.per_image()
        add("patch", "patch_cosine_median", float(np.nanmedian(cos)), acc.images, cfg.max_patch_cosine)
        add("patch", "patch_cosine_p90", float(np.nanquantile(cos, 0.9)), acc.images)
        ranked = rank[np.isfinite(rank)]
        if ranked.size:
            add("patch", "patch_rank_median", float(np.median(ranked)), int(ranked.size))
            add(
                "patch",
                "patch_rank_fraction",
                float(np.median(ranked)) / min(fs.spec.grid[0], fs.spec.grid[1] * fs.spec.grid[2]),
                int(ranked.size),
            )
        if (t := acc.token_spectrum()) is not None:
            add("patch", "token_rankme", t.rankme, t.n)
            add("patch", "token_participation_ratio", t.participation_ratio, t.n)
            add("patch", "token_anisotropy", t.anisotropy, t.n)
        nm = acc.norm_map
        add("patch", "norm_map_cv", float(nm.std() / nm.mean()) if nm.mean() > 0 else float("nan"), acc.images)
    for k in ckas:
        add("control", f"cka_{k.encoder}", k.cka, k.n, detail=k.feature_set_id)
    if leak is not None:
        nb, test_pos, train_pos = leak
        add("leakage", "pairs", nb.count, len(test_pos), 1, detail=f"{len(nb.pair_cosine)} listed")
        add("leakage", "nearest_cosine_median", float(np.median(nb.nearest_cosine)), len(test_pos))
        add("leakage", "nearest_cosine_max", float(nb.nearest_cosine.max()), len(test_pos), detail=f"threshold {cfg.leakage_threshold}")
    if drift is not None:
        d = drift.test
        add("drift", "mean_shift", d.mean_shift, drift.n_new)
        add("drift", "mmd2", d.mmd2, drift.n_new)
        rows.append({"scope": "drift", "metric": "p_value", "value": d.p_value, "limit": cfg.drift_alpha,
                     "flagged": bool(d.p_value < cfg.drift_alpha), "n": drift.n_new, "detail": None})  # fmt: skip
    return rows
