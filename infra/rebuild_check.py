"""Does a venv rebuilt from ``constraints.txt`` reproduce a study bit for bit? (``make rebuild-check``)

Why: ``constraints.txt`` pins every package of the environment the tests passed in, so that a
venv rebuilt from it (a fresh machine, CI, an image) computes what the tested one computes. A
test suite that passes is not proof of that: a changed wheel can move a metric in its last
bits and every tolerance still holds. ``make rebuild-check`` runs one small study
(``configs/rebuild-check.yaml``) with the current ``.venv`` and again with a venv that
``make venv`` builds from scratch in a copy of the working tree, then compares the two stores
with this script:

* ``snapshot --store DIR --out FILE.json`` writes a canonical JSON of a store: every feature set
  (id, encoder, weights label and fingerprint, preprocessing, images, a sha256 of its global
  embeddings), every training run (training config, curve, test metrics, operating points,
  sha256 of its predictions file), every evaluation (config, runs, positive-control checks) and
  every row of every table of every evaluation (metrics, comparisons, per-image scores, fold
  summaries), all columns. Floats are written as ``repr`` strings, so a one-bit change shows;
  keys are sorted and rows keyed, so the file depends on the store's content only.
* ``compare A.json B.json`` exits 0 when the two are identical, else prints one line per
  differing item (``what: A=... B=...``) and exits 1.

What is compared by content rather than by id, and why. Feature-set ids are content hashes
(weights fingerprint, preprocessing, dtype) and are compared as they are. Run ids are not:
``featurestore.layout.paths.new_run_id`` makes ``<feature set>-<task>-<head>-<UTC time>-<random
hex>``, unique by design, so two stores never share one. A run is therefore keyed by its content:
feature set, task, head, fold and a hash of its training config (without the runtime-only keys
of ``featurestore.layout.records.RUNTIME_ONLY``). Evaluation ids (``evaluation.artifacts.eval_id_for``) hash the
evaluation config with each run's id and predictions sha256, so they inherit the run ids' time
and randomness; the snapshot recomputes the same hash with each run id replaced by its content
key (``content_id``: equal exactly when the real eval ids would be, given equal run ids) and keys
evaluations by config and run keys. The real run and eval ids, ``created_at`` times and the
code version (the git commit of the checkout) are kept under ``volatile``, which ``compare``
reports but does not count as a difference.

Only the standard library and radstore's own reading APIs; run it with the venv whose radstore
made the store. ``snapshot`` imports radstore from the checkout this file lives in (not from
whatever the venv's editable install points at), so the two runs of ``make rebuild-check`` use
one copy of the source and differ only in their environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT_FORMAT = 1
#: Columns of the evaluation tables that record when or under which id a version was written.
VOLATILE_COLUMNS = ("eval_id", "created_at")
#: Columns that hold a run id: replaced by the run's content key.
RUN_COLUMNS = ("run_id", "run_a", "run_b")
#: How the rows of each evaluation table are keyed (after run ids become run keys); a table not
#: listed here is keyed by its rows' canonical JSON.
ROW_KEYS = {
    "metrics": ("run_id", "metric"),
    "comparisons": ("metric", "test", "run_a", "run_b"),
    "per_image": ("run_id", "image_id"),
    "folds": ("task", "head", "feature_set_id", "metric"),
}
#: The snapshot's counts, in the order they are printed.
COUNTS = ("feature_sets", "runs", "evaluations", "metric_rows", "comparison_rows", "per_image_rows", "fold_rows")


# -- canonical values --------------------------------------------------------------------------


def canon(value: Any) -> Any:
    """``value`` as plain JSON: floats as their repr (every bit shows; nan and inf too), times as
    ISO strings, tuples as lists, mappings with string keys."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): canon(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canon(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return canon(value.item())
    return repr(value)


def _digest(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


# -- snapshot ----------------------------------------------------------------------------------


def _project() -> None:
    """Import radstore from this checkout (see the module docstring)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def _cls_sha256(fs: Any) -> tuple[int, str]:
    """(committed images, sha256 of their global embeddings in image_id order, every vector column)."""
    import numpy as np

    vectors = ["cls", *sorted(fs.spec.extra_globals)]
    table = fs.cls(columns=["image_id", *vectors]).sort_by("image_id")
    h = hashlib.sha256()
    for image_id in table.column("image_id").to_pylist():
        h.update(image_id.encode() + b"\0")
    for name in vectors:
        col = table.column(name).combine_chunks()
        h.update(name.encode() + b"\0")
        h.update(np.ascontiguousarray(np.asarray(col.flatten(), dtype="<f4")).tobytes())
    return table.num_rows, h.hexdigest()


def _feature_sets(store: Any) -> dict[str, Any]:
    out = {}
    for fs in store.feature_sets():
        s = fs.spec
        images, sha = _cls_sha256(fs)
        out[fs.id] = {
            "encoder": s.encoder,
            "weights": s.labels.get("weights"),
            "weights_fingerprint": s.weights_fingerprint,
            "fingerprint_scheme": s.fingerprint_scheme,
            "grid": list(s.grid),
            "global_dim": s.global_dim,
            "extra_globals": dict(s.extra_globals),
            "dtype": s.dtype,
            "preprocessing": s.preprocessing,
            "images": images,
            "cls_sha256": sha,
        }
    return out


def _run_keys(runs: list[Any]) -> dict[str, str]:
    """run id -> content key ``<feature set>/<task>/<head>/fold=<k>/cfg-<hash>`` (``#2``, ``#3``
    for retrainings of one config, in time order)."""
    from featurestore.layout.records import RUNTIME_ONLY

    keys: dict[str, str] = {}
    seen: dict[str, int] = {}
    for r in sorted(runs, key=lambda r: (r.created_at, r.run_id)):
        config = {k: v for k, v in r.config.items() if k not in RUNTIME_ONLY}
        key = f"{r.feature_set_id}/{r.task}/{r.head}/fold={r.fold}/cfg-{_digest(config, 8)}"
        seen[key] = seen.get(key, 0) + 1
        keys[r.run_id] = key if seen[key] == 1 else f"{key}#{seen[key]}"
    return keys


def _runs(store: Any, runs: list[Any], keys: dict[str, str]) -> dict[str, Any]:
    from featurestore.layout.records import RUNTIME_ONLY, read_test_predictions

    out = {}
    for r in runs:
        _, sha = read_test_predictions(store, r.run_id)
        out[keys[r.run_id]] = {
            "feature_set_id": r.feature_set_id,
            "encoder": r.encoder,
            "task": r.task,
            "task_kind": r.task_kind,
            "head": r.head,
            "fold": r.fold,
            "seed": r.seed,
            "config": {k: v for k, v in r.config.items() if k not in RUNTIME_ONLY},
            "best_epoch": r.best_epoch,
            "epochs": r.epochs,
            "curve": r.curve,
            "splits": r.splits,
            "test_metrics": r.test_metrics,
            "operating_points": r.operating_points,
            "val_counts": r.val_counts,
            "warnings": r.warnings,
            "linear_readout": r.linear_readout,
            "predictions_sha256": sha,
        }
    return out


def _rows(name: str, table: Any, keys: dict[str, str]) -> dict[str, Any]:
    """An evaluation table as {row key: {column: value}}, volatile columns dropped, run ids as run keys."""
    out: dict[str, Any] = {}
    for row in table.to_pylist():
        row = {k: v for k, v in row.items() if k not in VOLATILE_COLUMNS}
        for col in RUN_COLUMNS:
            if row.get(col) is not None:
                row[col] = keys.get(row[col], row[col])
        row = canon(row)
        key_cols = ROW_KEYS.get(name)
        key = " ".join(f"{c}={row.get(c)}" for c in key_cols) if key_cols else json.dumps(row, sort_keys=True)
        if key in out:  # never expected; keep both rather than hide one
            key = f"{key} (row {sum(k.startswith(key) for k in out) + 1})"
        out[key] = row
    return out


def _evaluations(store: Any, keys: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    from featurestore.layout.records import list_evaluations, read_evaluation_tables

    out, ids = {}, {}
    for rec in list_evaluations(store):
        run_keys = sorted(keys.get(r["run_id"], r["run_id"]) for r in rec.runs)
        ekey = "eval~" + _digest({"eval_version": rec.eval_version, "config": rec.config, "runs": run_keys})
        # evaluation.artifacts.eval_id_for's hash, with run keys in place of run ids
        ident = {
            "eval_version": rec.eval_version,
            "config": rec.config,
            "runs": sorted([keys.get(r["run_id"], r["run_id"]), r["predictions_sha256"]] for r in rec.runs),
        }
        controls = {}
        for c in rec.controls:
            c = {**c, "run_id": keys.get(c["run_id"], c["run_id"])}
            controls[f"run_id={c['run_id']} metric={c['metric']}"] = c
        tables = read_evaluation_tables(store, rec.eval_id)
        out[ekey] = {
            "content_id": "eval-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12],
            "eval_version": rec.eval_version,
            "config": rec.config,
            "runs": run_keys,
            "feature_sets": rec.feature_sets,
            "counts": rec.counts,
            "controls": controls,
            **{name: _rows(name, t, keys) for name, t in sorted(tables.items())},
        }
        ids[ekey] = rec.eval_id
    return out, ids


def snapshot(store_url: str) -> dict[str, Any]:
    """The canonical content of a store (module docstring): what ``compare`` compares."""
    _project()
    from featurestore.layout.records import code_version, list_runs
    from featurestore.store import Store

    store = Store.open(store_url)
    runs = list_runs(store)
    keys = _run_keys(runs)
    evaluations, eval_ids = _evaluations(store, keys)
    evals = list(evaluations.values())
    snap = {
        "snapshot_format": SNAPSHOT_FORMAT,
        "images": store.images().num_rows,
        "feature_sets": _feature_sets(store),
        "runs": _runs(store, runs, keys),
        "evaluations": evaluations,
        "counts": {
            "feature_sets": len(store.feature_set_ids()),
            "runs": len(runs),
            "evaluations": len(evals),
            "metric_rows": sum(len(e["metrics"]) for e in evals),
            "comparison_rows": sum(len(e["comparisons"]) for e in evals),
            "per_image_rows": sum(len(e["per_image"]) for e in evals),
            "fold_rows": sum(len(e["folds"]) for e in evals),
        },
        "volatile": {
            "store": store.url,
            "run_ids": {keys[r.run_id]: r.run_id for r in runs},
            "eval_ids": eval_ids,
            "run_created_at": {keys[r.run_id]: r.created_at for r in runs},
            "code_versions": sorted({code_version(), *(r.code_version for r in runs)}),
        },
    }
    return canon(snap)


def summary(snap: dict[str, Any]) -> str:
    """The snapshot's counts in words: ``3 feature sets, 6 runs, ...``."""
    counts = snap.get("counts", {})
    return ", ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in COUNTS if k in counts)


def dumps(snap: dict[str, Any]) -> str:
    """The snapshot's canonical text (sorted keys, one item per line)."""
    return json.dumps(snap, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


# -- compare -----------------------------------------------------------------------------------

MISSING = object()


def _show(value: Any, width: int = 160) -> str:
    if value is MISSING:
        return "(missing)"
    if isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(value.items())) + "}"
    else:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def diff(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(what, value in A, value in B) of every differing leaf; a key present on one side only is
    one item (the whole subtree)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff(a.get(k, MISSING), b.get(k, MISSING), f"{path}[{k}]" if path else k)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += diff(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [(path, a, b)]


def compare(a: dict[str, Any], b: dict[str, Any], out: Any = None) -> int:
    """Print every difference of two snapshots outside ``volatile`` (and a summary); 0 if none, else 1."""
    out = out or sys.stdout
    items = diff({k: v for k, v in a.items() if k != "volatile"}, {k: v for k, v in b.items() if k != "volatile"})
    for what, x, y in items:
        print(f"{what}: A={_show(x)} B={_show(y)}", file=out)
    va, vb = a.get("volatile", {}), b.get("volatile", {})
    same_ids = sum(va.get("run_ids", {}).get(k) == v for k, v in vb.get("run_ids", {}).items())
    note = (
        f"(not compared: run ids equal for {same_ids} of {len(vb.get('run_ids', {}))} runs, eval ids "
        f"{'equal' if va.get('eval_ids') == vb.get('eval_ids') else 'differ'}: time-stamped by design, compared by content key)"
    )
    counts = summary(a)
    if items:
        print(f"DIFFERENT: {len(items)} item(s) differ; A has {counts} {note}", file=out)
        return 1
    print(f"identical: {counts} {note}", file=out)
    return 0


# -- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``snapshot`` or ``compare`` (module docstring); exit 0 ok, 1 the snapshots differ, 2 error."""
    p = argparse.ArgumentParser(prog="infra/rebuild_check.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot", help="write the canonical JSON of a store")
    s.add_argument("--store", required=True, help="store directory or URL")
    s.add_argument("--out", required=True, help="JSON file to write")
    c = sub.add_parser("compare", help="exit 0 if two snapshots are identical, else print the differences and exit 1")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args(argv)
    if args.cmd == "snapshot":
        snap = snapshot(args.store)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(dumps(snap))
        print(f"{args.out}: {summary(snap)}")
        return 0
    try:
        a, b = (json.loads(Path(f).read_text()) for f in (args.a, args.b))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, snap in ((args.a, a), (args.b, b)):
        if not isinstance(snap, dict) or snap.get("snapshot_format") != SNAPSHOT_FORMAT:
            print(f"error: {name} is not a snapshot of format {SNAPSHOT_FORMAT}", file=sys.stderr)
            return 2
    return compare(a, b)


if __name__ == "__main__":
    sys.exit(main())
