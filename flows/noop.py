"""Reruns with nothing to do, recognised before Prefect starts.

Starting a flow costs seconds of Prefect start-up (an ephemeral server when none is
configured) even when every image is committed and every run exists. The functions here
answer "is there anything to do?" from what the store and the local describe cache
(:mod:`featurestore.describe`) already hold: each returns the line(s) to print when there is
nothing to do, else None, and the caller then takes the normal path. They only read, and any
doubt (a feature set never seen by this machine, a manifest with bad rows, a file whose size
differs from the indexed one) is a None: the flow decides.

:func:`extract_noop` opens neither the store's writer side nor the encoder, so it imports
neither torch nor Prefect; :func:`train_noop` and :func:`study_noop` run where their caller has
torch loaded already (labels, run records), still without Prefect.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import posixpath
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from featurestore import describe, layout
from featurestore.config import ExtractConfig
from featurestore.errors import RadstoreError
from featurestore.manifest import Manifest, check_rows, load_manifest
from featurestore.storage import Location

if TYPE_CHECKING:
    from flows.config import StudyConfig
    from heads.config import TrainConfig


@dataclass(frozen=True)
class Committed:
    """One extraction config whose feature set already holds every valid row of the manifest."""

    cfg: ExtractConfig
    feature_set_id: str
    images: int

    def line(self) -> str:
        """What ``radstore extract`` prints for it."""
        return f"nothing to extract: all {self.images} images of the manifest are committed in {self.feature_set_id} ({self.cfg.encoder})"


@functools.cache
def _committed_module() -> ModuleType:
    """featurestore/featureset/committed.py (which lists committed rows from the committed index and
    the cls parts) without running its package's ``__init__``, which imports the writer and so
    torch. Where the package is loaded already, it is the module itself."""
    name = "featurestore.featureset.committed"
    if "featurestore.featureset" in sys.modules:
        return importlib.import_module(name)
    path = Path(layout.__file__).resolve().parents[1] / "featureset" / "committed.py"
    spec = importlib.util.spec_from_file_location("featurestore._noop_committed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _store_location(store: str, storage_options: dict | None) -> Location | None:
    """The store's location, or None when there is no store there or its format is not one this
    radstore reads (the normal path says why)."""
    loc = Location(store, storage_options)
    try:
        if not loc.exists(layout.STORE_JSON):
            return None
        meta = loc.read_json(layout.STORE_JSON)
        if meta.get("format") != layout.FORMAT_NAME:
            return None
        layout.check_format_version(meta.get("format_version"), f"store {store}")
    except (OSError, ValueError, RadstoreError):
        return None
    return loc


def _feature_set_location(loc: Location, feature_set_id: str) -> tuple[str, Location, dict[str, Any]] | None:
    """(id, location, feature_set.json) of a feature set by its id or an alias of it (as
    Store.feature_set finds it); None when there is none."""
    try:
        fid = feature_set_id
        if not loc.exists(layout.FEATURES_DIR, fid, layout.FEATURE_SET_JSON):
            if not loc.exists(layout.ALIASES_DIR, layout.alias_name(fid)):
                return None
            fid = loc.read_json(layout.ALIASES_DIR, layout.alias_name(fid))["alias_of"]
            if not loc.exists(layout.FEATURES_DIR, fid, layout.FEATURE_SET_JSON):
                return None
        fs_loc = loc.child(layout.FEATURES_DIR, fid)
        meta = fs_loc.read_json(layout.FEATURE_SET_JSON)
        layout.check_format_version(meta.get("format_version"), f"feature set {fs_loc.url}")
    except (OSError, ValueError, KeyError, RadstoreError):
        return None
    return fid, fs_loc, meta


def committed_image_ids(loc: Location, feature_set_id: str) -> tuple[str, set[str]] | None:
    """(the feature set's own id, every image_id committed in it) for a feature set of the store at
    ``loc`` given by id or alias, read as the planner reads it but without refreshing the
    committed index; None when the store has no such feature set."""
    found = _feature_set_location(loc, feature_set_id)
    if found is None:
        return None
    fid, fs_loc, meta = found
    spec = meta.get("spec") or {}
    schema = layout.cls_schema(spec["global_dim"], spec.get("extra_globals") or {})
    rows = _committed_module().committed_rows(fs_loc, schema, update_index=False, min_new_parts=sys.maxsize)
    return fid, set(rows.column("image_id").to_pylist())


def _valid_ids(manifest: str | Manifest, action: str) -> list[str] | None:
    """The manifest's image_ids, or None when it has a bad row (the normal path reports and
    records those, every time)."""
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    valid, errors = check_rows(m, action=action)
    if errors:
        return None
    return m.table.column("image_id").take(valid).to_pylist()


def complete_feature_sets(
    manifest: str | Manifest, store: str, cfgs: Sequence[ExtractConfig], storage_options: dict | None = None
) -> list[Committed] | None:
    """One :class:`Committed` per config when every config's feature set is known (describe cache)
    and holds every row of the manifest, and the manifest has no bad row; else None."""
    fids = [describe.known_feature_set(c) for c in cfgs]
    if not cfgs or None in fids:
        return None
    loc = _store_location(store, storage_options)
    if loc is None:
        return None
    ids = _valid_ids(manifest, "embedded")
    if ids is None:
        return None
    out = []
    for cfg, fid in zip(cfgs, fids):
        found = committed_image_ids(loc, fid)
        if found is None or not found[1].issuperset(ids):
            return None
        out.append(Committed(cfg, found[0], len(ids)))
    return out


def extract_noop(manifest: str, store: str, cfgs: list[ExtractConfig], storage_options: dict | None = None) -> str | None:
    """The message for ``radstore extract`` when every image of the manifest is committed in every
    config's feature set (one line per config), else None: then the extraction flow runs."""
    done = complete_feature_sets(manifest, store, cfgs, storage_options)
    return None if done is None else "\n".join(c.line() for c in done)


# -- training ----------------------------------------------------------------------------------


def reusable_runs(store, feature_set_id: str, cfgs: list[TrainConfig], manifest: str | None) -> list[str] | None:
    """The run id for each config when every one can be reused (heads.runs.plan_runs: same config,
    same data), else None."""
    from heads.runs import plan_runs

    if not cfgs:
        return None
    reuse, todo = plan_runs(store, feature_set_id, cfgs, manifest=manifest)
    return None if todo else [rid for _, rid in reuse]


def train_noop(store: str, feature_set: str, tasks: list[str] | None, heads: list[str] | None, folds: list[int | None] | None,
               manifest: str | None = None, config: dict[str, Any] | None = None,
               storage_options: dict | None = None) -> str | None:  # fmt: skip
    """The message for ``radstore train`` when every run of its grid (``tasks`` x ``heads`` x
    ``folds``, ``config`` the other TrainConfig fields) exists with the same config and data:
    a first line, then one reused run id a line. None when any run must be trained."""
    from featurestore.store import Store

    st = Store.open(store, storage_options=storage_options)
    fid = st.feature_set(feature_set).id  # an alias resolved
    from heads.config import grid_configs

    rids = reusable_runs(st, fid, grid_configs(tasks, heads, folds, config), manifest)
    if rids is None:
        return None
    return "\n".join([f"nothing to train: all {len(rids)} run(s) on {fid} exist with the same config and data", *rids])


# -- the study ---------------------------------------------------------------------------------


def _mtime(info: dict[str, Any]) -> float | None:
    """A listing entry's modification time in seconds since the epoch, when the backend gives one."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified"):
        v = info.get(key)
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, datetime):
            return v.timestamp()
    return None


def _file_stats(uris: Iterable[str]) -> dict[str, tuple[int, float | None]]:
    """(size, mtime) of each file that exists, from one listing per directory (an object store
    answers a listing in one request, not one per file)."""
    from fsspec.core import url_to_fs

    by_dir: dict[tuple[int, str], tuple[Any, dict[str, str]]] = {}
    for uri in uris:
        fs, path = url_to_fs(uri)
        entry = by_dir.setdefault((id(fs), posixpath.dirname(path)), (fs, {}))
        entry[1][path] = uri
    out: dict[str, tuple[int, float | None]] = {}
    for (_, parent), (fs, wanted) in by_dir.items():
        try:
            listing = {fs._strip_protocol(e["name"]): e for e in fs.ls(parent, detail=True)}
        except (OSError, ValueError):
            continue
        for path, uri in wanted.items():
            e = listing.get(path)
            if e is not None and e.get("type", "file") == "file" and e.get("size") is not None:
                out[uri] = (int(e["size"]), _mtime(e))
    return out


def images_unchanged(manifest: Manifest, store) -> bool:
    """Whether ingesting ``manifest`` would find nothing to do: every row valid, indexed, and its
    file the indexed size and not modified since it was indexed. Sizes and times, not bytes:
    hashing every image is what ingest does, and what this check exists to avoid."""
    valid, errors = check_rows(manifest, action="ingested")
    if errors:
        return False
    images = store.images()
    indexed = {
        i: (s, t)
        for i, s, t in zip(
            images.column("image_id").to_pylist(), images.column("size_bytes").to_pylist(), images.column("ingested_at").to_pylist()
        )
    }
    rows = manifest.table.select(["image_id", "path"]).take(valid).to_pylist()
    uris = {r["image_id"]: manifest.resolve(r["path"]) for r in rows}
    stats = _file_stats(uris.values())
    for image_id, uri in uris.items():
        if image_id not in indexed or uri not in stats:
            return False
        (size, mtime), (indexed_size, ingested_at) = stats[uri], indexed[image_id]
        if size != indexed_size:
            return False
        if mtime is not None and ingested_at is not None and mtime > ingested_at.timestamp():
            return False  # rewritten since: ingest would hash it
    return True


@dataclass(frozen=True)
class _RunKey:
    """What an evaluation's id reads of a run (evaluation.artifacts.eval_id_for): its id and the
    sha256 of its predictions file."""

    meta: dict[str, Any]
    sha256: str


def existing_evaluation(store, run_ids: list[str], evaluation: dict[str, Any]) -> str | None:
    """The id of the evaluation of exactly ``run_ids`` under the ``evaluation`` config when the store
    holds it (evaluate would return it unchanged), else None."""
    from evaluation.artifacts import EvalConfig, eval_id_for
    from featurestore.layout.records import evaluation_exists

    ids = list(dict.fromkeys(run_ids))  # as evaluation.artifacts.select_runs
    if not ids:
        return None
    keys = []
    for rid in ids:
        try:
            raw = store.loc.read_bytes(layout.RUNS_DIR, rid, layout.PREDICTIONS)
        except OSError:
            return None
        keys.append(_RunKey({"run_id": rid}, hashlib.sha256(raw).hexdigest()))
    eval_id = eval_id_for(keys, EvalConfig(**evaluation))
    return eval_id if evaluation_exists(store, eval_id) else None


#: The line of a report page naming the evaluation it shows (evaluation/report/templates); the
#: page names others too (the previous evaluation it is compared with).
REPORT_TITLE = "<title>radstore evaluation {eval_id}</title>"


def _report_of(report_dir: str, eval_id: str) -> Path | None:
    """``report_dir/index.html`` when it is the report of ``eval_id``."""
    index = Path(report_dir) / "index.html"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if REPORT_TITLE.format(eval_id=eval_id) in index.read_text(encoding="utf-8"):
            return index
    return None


def study_weights(name: str, weights: str | None, fallback: str) -> str | None:
    """The weights the study extracts ``name`` with (its choose-weights task, without the warning),
    or the sentinel ``"missing"`` when there are none and no fallback."""
    from featurestore.encoders import MissingWeightsError, choose_weights

    try:
        return choose_weights(name, weights, fallback)[0]
    except MissingWeightsError:
        return "missing"


def study_noop(cfg: StudyConfig) -> str | None:
    """The message for ``radstore study`` when a run would change nothing: every image ingested
    unchanged, every encoder's feature set known and complete, every training run reusable, the
    evaluation of exactly those runs in the store, and its report written (when the study writes
    one). Else None: the study flow runs."""
    from featurestore.store import Store

    so = cfg.storage_options or None
    m = load_manifest(cfg.manifest)
    try:
        st = Store.open(cfg.store, storage_options=so)
    except RadstoreError:
        return None
    if not images_unchanged(m, st):
        return None
    cfgs = []
    for enc in cfg.encoders:
        weights = study_weights(enc.name, enc.weights, cfg.missing_weights)
        if weights == "missing":
            return None
        cfgs.append(cfg.extract_config(enc, weights))
    done = complete_feature_sets(m, cfg.store, cfgs, so)
    if done is None:
        return None
    grid = cfg.train_grid()
    run_ids: list[str] = []
    for c in done:
        rids = reusable_runs(st, c.feature_set_id, grid, cfg.manifest)
        if rids is None:
            return None
        run_ids += rids
    hcfg = cfg.health_config()
    if hcfg is not None:
        from featurestore.health.check import current_health

        if any(current_health(st, st.feature_set(c.feature_set_id), hcfg) is None for c in done):
            return None
    eval_id = existing_evaluation(st, run_ids, cfg.evaluation)
    if eval_id is None:
        return None
    report = None
    if cfg.report_dir:
        report = _report_of(cfg.report_dir, eval_id)
        if report is None:
            return None
    sets = ", ".join(f"{c.feature_set_id} ({c.cfg.encoder})" for c in done)
    tail = f", report {report}" if report else ""
    return f"nothing new: {done[0].images} images committed in {sets}; {len(run_ids)} run(s) reused; evaluation {eval_id}{tail}"


__all__ = [
    "Committed",
    "committed_image_ids",
    "complete_feature_sets",
    "existing_evaluation",
    "extract_noop",
    "images_unchanged",
    "reusable_runs",
    "study_noop",
    "train_noop",
]
