"""A health version of a feature set: computed once per input, versioned, written beside the features.

``features/<id>/health/<health_id>/`` holds the tables of :data:`featurestore.layout.HEALTH_TABLES`
and ``health.json`` (:class:`featurestore.layout.records.HealthRecord`), written last: the
version exists from then on, a crash before leaves a directory no listing returns.

``health_id`` hashes what the numbers depend on: the committed cls parts (immutable, so their
names identify the rows), every committed image's split and patient (the leakage audit reads
them), the control feature sets' parts (the CKA reads them), the configuration and
:data:`HEALTH_VERSION`. Checking unchanged inputs again returns the existing version without
reading a grid, so a nightly study pays for a check only when something changed.

Drift is measured between versions of the same configuration: each version records the cls
parts it read; the next one compares the rows of every other part (one backfill, or all the
backfills since, whatever their extraction times) with those before, and carries the earlier
version's drift rows, so the newest version holds the whole history.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from featurestore import layout
from featurestore.featureset.reader import FeatureSet
from featurestore.health import compute as C
from featurestore.health.config import HealthConfig
from featurestore.layout.records import HealthRecord, code_version, health_exists, list_health, read_health_tables, write_health
from featurestore.store import Store

HEALTH_VERSION = 1  # bump when a figure's definition changes: old and new numbers never share an id


@dataclass(frozen=True)
class HealthResult:
    """A health version: its record and tables, where it lives, and whether this call wrote it."""

    record: HealthRecord
    tables: dict[str, pa.Table]
    path: str
    created: bool

    def figure(self, metric: str) -> float | None:
        """One figure of the summary by metric name (None when the version has none)."""
        t = self.tables["summary"]
        hit = [v for m, v in zip(t.column("metric").to_pylist(), t.column("value").to_pylist()) if m == metric]
        return hit[0] if hit else None


def _digest(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def _basenames(paths: list[str]) -> list[str]:
    return sorted(p.rsplit("/", 1)[-1] for p in paths)


def inputs_of(store: Store, fs: FeatureSet, c: C.Committed) -> dict[str, Any]:
    """What a version's numbers depend on, besides its config (see the module docstring)."""
    import featurestore.encoders  # noqa: F401
    from featurestore.encoders.registry import control_of

    controls = {o.id: _digest(_basenames(o.cls_parts())) for o in store.feature_sets()
                if o.id != fs.id and o.spec.encoder != fs.spec.encoder and control_of(o.spec.encoder) == "negative"}  # fmt: skip
    images = [f"{i}\t{s}\t{p}" for i, s, p in zip(c.ids, c.split, c.patient)]
    return {"parts": _digest(_basenames(c.parts)), "images": _digest(sorted(images)), "controls": controls}


def health_id_of(fs: FeatureSet, inputs: dict[str, Any], cfg: HealthConfig) -> str:
    """The version id: a hash of the inputs, the configuration's identity and HEALTH_VERSION."""
    doc = {"feature_set_id": fs.id, "inputs": inputs, "config": cfg.identity(), "health_version": HEALTH_VERSION}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def latest_health(fs: FeatureSet, cfg: HealthConfig | None = None) -> HealthRecord | None:
    """The newest committed health version of ``fs`` (of ``cfg``'s identity when given: drift is
    compared between versions that compute the same figures), or None before the first."""
    recs = list_health(fs)
    if cfg is not None:
        recs = [r for r in recs if _identity_of(r) == cfg.identity()]
    return recs[-1] if recs else None


def _identity_of(rec: HealthRecord) -> dict[str, Any] | None:
    try:
        return HealthConfig.from_dict(rec.config).identity()
    except (TypeError, ValueError):  # a version written with keys this code no longer has
        return None


def load_health(fs: FeatureSet, health_id: str) -> HealthResult:
    """A committed health version as a :class:`HealthResult` (``created`` False)."""
    rec = HealthRecord.from_json(fs.loc.read_json(layout.HEALTH_DIR, health_id, layout.HEALTH_JSON))
    return HealthResult(rec, read_health_tables(fs, health_id), fs.loc.path(layout.HEALTH_DIR, health_id), False)


def current_health(store: Store, fs: FeatureSet, cfg: HealthConfig) -> str | None:
    """The id of the health version of ``fs``'s committed rows under ``cfg`` when it is already
    stored (a check would return it unchanged), else None."""
    c = C.committed(store, fs)
    hid = health_id_of(fs, inputs_of(store, fs, c), cfg)
    return hid if health_exists(fs, hid) else None


def check_health(store: Store, fs: FeatureSet | str, cfg: HealthConfig | None = None, *, progress: bool = False) -> HealthResult:
    """The health version of ``fs``'s committed rows: the existing one for unchanged inputs, else
    computed and written (see the module docstring)."""
    cfg = cfg or HealthConfig()
    fs = store.feature_set(fs) if isinstance(fs, str) else fs
    c = C.committed(store, fs)
    inputs = inputs_of(store, fs, c)
    hid = health_id_of(fs, inputs, cfg)
    if health_exists(fs, hid):
        return load_health(fs, hid)
    previous = latest_health(fs, cfg)
    timings: dict[str, float] = {}
    n, dim = len(c), fs.spec.global_dim

    kept = C.Kept()
    for split in (C.TRAIN, C.TEST):
        kept.want(split, n, np.nonzero(c.split == split)[0], dim)
    sample = C.choose(n, cfg.sample, cfg.seed, "sample")
    kept.want("sample", n, sample, dim)
    is_new = C.new_rows(c, previous.parts) if previous is not None and previous.parts else None
    if is_new is not None:
        for side, where in (("new", np.nonzero(is_new)[0]), ("before", np.nonzero(~is_new)[0])):
            kept.want(side, n, where[C.choose(len(where), cfg.drift_sample, cfg.seed, f"drift-{side}")], dim)

    t = time.perf_counter()
    g = C.stream_globals(fs, c, kept, progress)
    timings["globals"] = time.perf_counter() - t
    t = time.perf_counter()
    acc = C.stream_patches(fs, c, sample, cfg, progress)
    timings["patches"] = time.perf_counter() - t
    t = time.perf_counter()
    leak = C.audit_leakage(g, cfg)
    timings["leakage"] = time.perf_counter() - t
    t = time.perf_counter()
    ckas = C.control_cka(store, fs, c.ids[sample], kept.arrays["sample"])
    timings["cka"] = time.perf_counter() - t
    t = time.perf_counter()
    drift = C.measure_drift(c, kept, is_new, cfg) if is_new is not None else None
    timings["drift"] = time.perf_counter() - t

    created = layout.now_ms()
    rows = C.summary_rows(fs, g, acc, ckas, leak, drift, cfg)
    flags = [_flag_text(r) for r in rows if r["flagged"]]
    rec = HealthRecord(
        health_id=hid,
        feature_set_id=fs.id,
        encoder=fs.spec.encoder,
        created_at=created.isoformat(),
        config=cfg.to_json(),
        inputs=inputs,
        images=n,
        sampled=len(sample),
        watermark=c.extracted_at.max().astype("datetime64[ms]").astype(datetime).replace(tzinfo=UTC).isoformat(),
        previous=previous.health_id if previous is not None else None,
        parts=c.part_names(),
        flags=flags,
        health_version=HEALTH_VERSION,
        code_version=code_version(),
        timings={k: round(v, 3) for k, v in timings.items()},
    )
    tables = _tables(fs, rec, created, rows, g, acc, leak, c, sample, drift, previous, cfg)
    path = write_health(fs, rec, tables)
    return HealthResult(rec, tables, path, True)


def _flag_text(r: dict[str, Any]) -> str:
    op = "<" if r["metric"] in ("participation_ratio", "p_value") else ">="
    return f"{r['scope']} {r['metric']} {r['value']:.4g} {op} {r['limit']:g}"


def _table(schema: pa.Schema, fs: FeatureSet, rec: HealthRecord, **cols: Any) -> pa.Table:
    n = len(next(iter(cols.values()))) if cols else 0
    base = {"feature_set_id": [fs.id] * n, "health_id": [rec.health_id] * n}
    return pa.table({**base, **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in cols.items()}}).cast(schema)


def _nullable(x: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in x]


def _tables(fs, rec, created, rows, g, acc, leak, c, sample, drift, previous, cfg) -> dict[str, pa.Table]:  # noqa: ANN001
    S = layout.schemas
    summary = pa.Table.from_pylist(
        [{"feature_set_id": fs.id, "health_id": rec.health_id, "created_at": created, "encoder": fs.spec.encoder, **r} for r in rows],
        schema=S.HEALTH_SCHEMA,
    )
    spectra = []
    sources = [("global", g.spectrum.singular_values), ("global_centered", g.spectrum.centered_singular_values)]
    if acc is not None and (tokens := acc.token_spectrum()) is not None:
        sources.append(("patch", tokens.singular_values))
    for source, sv in sources:
        total = float((sv**2).sum()) or 1.0
        spectra.append(_table(S.SPECTRUM_SCHEMA, fs, rec, source=[source] * len(sv), k=np.arange(1, len(sv) + 1),
                              singular_value=sv, variance_fraction=sv**2 / total))  # fmt: skip
    sp = g.spectrum
    dims = _table(S.DIMENSIONS_SCHEMA, fs, rec, dim=np.arange(sp.dim), mean=sp.mean, variance=sp.variance, dead=sp.dead)
    cos, rank, mean_norm = acc.per_image()
    ids = list(c.ids[sample])
    patch_images = _table(S.PATCH_IMAGES_SCHEMA, fs, rec, image_id=ids, patch_cosine=_nullable(cos), patch_rank=_nullable(rank),
                          mean_norm=mean_norm)  # fmt: skip
    h, w = acc.norm_map.shape
    yy, xx = np.mgrid[0:h, 0:w]
    norm_map = _table(S.NORM_MAP_SCHEMA, fs, rec, y=yy.ravel(), x=xx.ravel(), mean_norm=acc.norm_map.ravel())
    if leak is not None:
        nb, test_pos, train_pos = leak
        te, tr = test_pos[nb.pairs[:, 0]], train_pos[nb.pairs[:, 1]]
        leakage = _table(S.LEAKAGE_SCHEMA, fs, rec, test_image_id=list(c.ids[te]), train_image_id=list(c.ids[tr]),
                         test_patient_id=list(c.patient[te]), train_patient_id=list(c.patient[tr]), cosine=nb.pair_cosine,
                         same_patient=[a is not None and a == b for a, b in zip(c.patient[te], c.patient[tr])])  # fmt: skip
        neighbours = _table(S.NEIGHBOURS_SCHEMA, fs, rec, image_id=list(c.ids[test_pos]),
                            nearest_train_id=list(c.ids[train_pos[nb.nearest]]), cosine=nb.nearest_cosine)  # fmt: skip
    else:
        leakage, neighbours = S.LEAKAGE_SCHEMA.empty_table(), S.NEIGHBOURS_SCHEMA.empty_table()
    drift_rows = []
    if previous is not None:
        drift_rows = read_health_tables(fs, previous.health_id)["drift"].to_pylist()
    if drift is not None:
        d = drift.test
        drift_rows.append({
            "feature_set_id": fs.id, "health_id": rec.health_id, "backfill": len(drift_rows) + 1,
            "new_from": drift.new_from, "new_upto": drift.new_upto, "n_before": drift.n_before, "n_new": drift.n_new,
            "mean_shift": d.mean_shift, "mmd2": d.mmd2, "bandwidth": d.bandwidth, "p_value": d.p_value,
            "permutations": d.permutations, "rankme_before": drift.before.rankme, "rankme_new": drift.new.rankme,
            "anisotropy_before": drift.before.anisotropy, "anisotropy_new": drift.new.anisotropy,
            "flagged": bool(d.p_value < cfg.drift_alpha),
        })  # fmt: skip
    drift_t = pa.Table.from_pylist(drift_rows, schema=S.DRIFT_SCHEMA)
    return {"summary": summary, "spectrum": pa.concat_tables(spectra), "dimensions": dims, "patch_images": patch_images,
            "norm_map": norm_map, "leakage": leakage, "neighbours": neighbours, "drift": drift_t}  # fmt: skip


def check_store(store: Store, feature_set_ids: list[str] | None = None, cfg: HealthConfig | None = None, *,
                progress: bool = False) -> list[HealthResult]:  # fmt: skip
    """:func:`check_health` of each feature set (every one with committed rows when ``feature_set_ids`` is None)."""
    sets = [store.feature_set(i) for i in feature_set_ids] if feature_set_ids else store.feature_sets()
    return [check_health(store, fs, cfg, progress=progress) for fs in sets if feature_set_ids or len(fs)]
