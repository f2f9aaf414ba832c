"""Why two evaluations differ: every changed metric row, the reasons its runs' lineage gives, and
whether the change is larger than noise.

A row (task, head, fold, encoder, metric) changed when its value, interval or status did, or it
is in one evaluation only. Its reasons come from what was recorded, never guessed: the
evaluation settings and metric code (``eval.json``), the runs' feature sets (weights
fingerprint, preprocessing), training configs and code versions (``run.json``), and the images,
splits, labels and masks each run used (``lineage.parquet``, :mod:`heads.lineage`). The noise
test is a paired bootstrap over the test images both runs share, with the same resamples for
both (those of evaluation B's settings), and Benjamini-Hochberg's FDR over the changed rows
(``scipy.stats.false_discovery_control``): ``significant`` means q < ``alpha``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from evaluation import metrics as M
from evaluation.artifacts import load_run
from evaluation.bootstrap import resample_indices
from evaluation.compare import paired_bootstrap
from evaluation.compute import _aligned, _take
from evaluation.config import EvalConfig
from featurestore.errors import FeatureSetNotFound, RadstoreError
from featurestore.layout.records import (
    RUNTIME_ONLY,
    EvaluationRecord,
    RunRecord,
    list_evaluations,
    read_evaluation_record,
    read_evaluation_tables,
    read_lineage,
    read_run,
)
from featurestore.store import Store
from featurestore.tasks import get_kind

KEY = ("task", "head", "fold", "encoder", "metric")
SHOWN_IDS = 3  # image ids a reason names before "..."
#: Evaluation settings that change what a run's predictions score (not only the interval).
VALUE_SETTINGS = ("threshold", "empty_both")


@dataclass
class RowChange:
    """One metric row that differs between evaluation A and B, why, and whether beyond noise."""

    task: str
    head: str
    fold: int | None
    encoder: str
    metric: str
    primary: bool
    value_a: float | None
    value_b: float | None
    run_a: str | None
    run_b: str | None
    reasons: list[str] = field(default_factory=list)
    delta: float = math.nan  # B - A on the test images both runs share (n_shared)
    ci_low: float = math.nan
    ci_high: float = math.nan
    p: float = math.nan
    q: float = math.nan  # Benjamini-Hochberg over the changed rows
    n_shared: int = 0
    significant: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (NaN as None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def resolve(store: Store, ref: str) -> str:
    """An evaluation id from ``ref``: an id, ``latest`` or ``latest~k`` (the k-th before the latest)."""
    evals = list_evaluations(store)
    if ref == "latest" or ref.startswith("latest~"):
        back = 0 if ref == "latest" else ref.removeprefix("latest~")
        if not str(back).isdigit():
            raise RadstoreError(f"{ref!r}: write latest~N with N a number")
        if int(back) >= len(evals):
            raise RadstoreError(f"{ref!r}: the store has {len(evals)} evaluation(s)")
        return evals[-1 - int(back)].eval_id
    read_evaluation_record(store, ref)  # a clear error for an unknown id
    return ref


def _few(ids: list[str]) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:SHOWN_IDS]) + (", ..." if len(ids) > SHOWN_IDS else "")


def _changed_keys(a: dict, b: dict, skip: tuple[str, ...] = ()) -> list[str]:
    keys = sorted((set(a) | set(b)) - set(skip))
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def setting_reasons(a: EvaluationRecord, b: EvaluationRecord) -> list[str]:
    """What changed in how the two evaluations were computed (applies to every row)."""
    out = []
    if changed := _changed_keys(a.config, b.config):
        out.append("evaluation settings changed: " + "; ".join(changed))
    if a.eval_version != b.eval_version:
        out.append(f"metric code changed (eval version {a.eval_version} -> {b.eval_version})")
    if a.radstore_version != b.radstore_version:
        out.append(f"radstore version changed ({a.radstore_version} -> {b.radstore_version})")
    return out


def _feature_set_reasons(store: Store, a: str, b: str) -> list[str]:
    try:
        sa, sb = store.feature_set(a).spec, store.feature_set(b).spec
    except FeatureSetNotFound:
        return [f"feature set changed ({a} -> {b})"]
    out = []
    if sa.weights_fingerprint != sb.weights_fingerprint:
        out.append(f"weights changed (fingerprint {sa.weights_fingerprint} -> {sb.weights_fingerprint})")
    if changed := _changed_keys(sa.preprocessing, sb.preprocessing):
        out.append("preprocessing changed: " + "; ".join(changed))
    if sa.dtype != sb.dtype:
        out.append(f"storage dtype changed ({sa.dtype} -> {sb.dtype})")
    return out or [f"feature set changed ({a} -> {b})"]


def lineage_reasons(store: Store, a: RunRecord, b: RunRecord) -> list[str]:
    """Why run ``b`` is not run ``a``: feature set, training config, code version, and the images,
    splits, labels and masks of their lineage."""
    out = []
    if a.feature_set_id != b.feature_set_id:
        out += _feature_set_reasons(store, a.feature_set_id, b.feature_set_id)
    if changed := _changed_keys(a.config, b.config, RUNTIME_ONLY):
        out.append("training config changed: " + "; ".join(changed))
    if a.code_version != b.code_version:
        out.append(f"code version changed ({a.code_version or '?'} -> {b.code_version or '?'})")
    la, lb = read_lineage(store, a.run_id), read_lineage(store, b.run_id)
    if la is None or lb is None:
        missing = [r.run_id for r, t in ((a, la), (b, lb)) if t is None]
        return out + [f"data not comparable: no lineage recorded for {', '.join(missing)} (trained before radstore recorded it)"]
    ra = {r["image_id"]: r for r in la.to_pylist()}
    rb = {r["image_id"]: r for r in lb.to_pylist()}
    for split in ("train", "val", "test"):
        sa = {i for i, r in ra.items() if r["split"] == split}
        sb = {i for i, r in rb.items() if r["split"] == split}
        added, removed = sorted(sb - sa), sorted(sa - sb)
        if added or removed:
            parts = [f"+{len(added)} ({_few(added)})" if added else "", f"-{len(removed)} ({_few(removed)})" if removed else ""]
            out.append(f"{split} images changed: " + " ".join(p for p in parts if p))
    shared = sorted(set(ra) & set(rb))
    relabelled = [i for i in shared if ra[i]["label"] != rb[i]["label"] and ra[i]["label"] is not None]
    if relabelled:
        out.append(f"labels changed for {len(relabelled)} image(s) ({_few(relabelled)})")
    remasked = [i for i in shared if ra[i]["mask_sha256"] != rb[i]["mask_sha256"] and ra[i]["mask_sha256"] is not None]
    if remasked:
        out.append(f"masks changed for {len(remasked)} image(s) ({_few(remasked)})")
    return out or ["retrained on the same data, config and code (training is not bit-reproducible on this device)"]


def _row_key(r: dict) -> tuple:
    return tuple(r[k] for k in KEY)


def _differs(a: dict, b: dict) -> bool:
    for k in ("value", "ci_low", "ci_high"):
        x, y = a[k], b[k]
        if not ((x is None and y is None) or (x is not None and y is not None and (x == y or (math.isnan(x) and math.isnan(y))))):
            return True
    return a["status"] != b["status"]


def _noise(store: Store, change: RowChange, cfgs: dict[str, EvalConfig], cache: dict) -> None:
    """Fill ``change``'s delta (B - A), interval and p from a paired bootstrap on the test images
    both runs share, resampled as evaluation B's settings say."""
    for side, rid in (("a", change.run_a), ("b", change.run_b)):
        if (side, rid) not in cache:
            cache[(side, rid)] = load_run(store, rid, cfgs[side])
    ra, rb = cache[("a", change.run_a)], cache[("b", change.run_b)]
    shared, (pa_, pb) = _aligned([ra, rb])  # the evaluation's own alignment of a group's runs
    change.n_shared = len(shared)
    if len(shared) < 2:
        return
    m = M.get_metric(change.metric)
    spec = get_kind(rb.meta["task_kind"])
    classes = None
    if spec.dense or m.class_based:  # resampled within each class, as the evaluation itself does
        (labels,) = _take(rb, pb, ("nonempty" if spec.dense else "y",))
        classes = labels if M.class_counts(labels) else None
    cfg = cfgs["b"]
    idx = resample_indices(len(shared), cfg.resamples, cfg.seed, strata=classes)
    d = paired_bootstrap(m.fn, _take(rb, pb, m.inputs), _take(ra, pa_, m.inputs), idx=idx, strata=classes, seed=cfg.seed,
                         confidence=cfg.confidence)  # fmt: skip
    change.delta, change.ci_low, change.ci_high, change.p = d.diff, d.low, d.high, d.p


def diff(store: Store, a: str, b: str, alpha: float = 0.05) -> dict[str, Any]:
    """Compare evaluations ``a`` and ``b`` (ids or ``latest~k``): {a, b, settings, changes
    (RowChange), unchanged (count)}; see the module docstring."""
    from scipy.stats import false_discovery_control

    a, b = resolve(store, a), resolve(store, b)
    ea, eb = read_evaluation_record(store, a), read_evaluation_record(store, b)
    ma = {_row_key(r): r for r in read_evaluation_tables(store, a)["metrics"].to_pylist()}
    mb = {_row_key(r): r for r in read_evaluation_tables(store, b)["metrics"].to_pylist()}
    settings = setting_reasons(ea, eb)
    cfgs = {
        side: EvalConfig(**{k: v for k, v in e.config.items() if k in EvalConfig.__dataclass_fields__})
        for side, e in (("a", ea), ("b", eb))
    }
    changes, unchanged, runs, cache = [], 0, {}, {}

    def record(rid: str) -> RunRecord:
        return runs.get(rid) or runs.setdefault(rid, read_run(store, rid))

    for key in sorted(set(ma) | set(mb), key=lambda k: tuple(str(x) for x in k)):
        ra, rb = ma.get(key), mb.get(key)
        if ra is not None and rb is not None and not _differs(ra, rb):
            unchanged += 1
            continue
        row = rb or ra
        c = RowChange(*key, primary=bool(row["primary"]), value_a=ra and ra["value"], value_b=rb and rb["value"],
                      run_a=ra and ra["run_id"], run_b=rb and rb["run_id"])  # fmt: skip
        if ra is None or rb is None:
            c.reasons.append(f"only in evaluation {'B' if ra is None else 'A'} (the evaluations' runs or metrics differ)")
        else:
            if c.run_a != c.run_b:
                c.reasons += lineage_reasons(store, record(c.run_a), record(c.run_b))
            if ra["n"] != rb["n"]:  # the evaluation scores a group on the test images all its runs share
                c.reasons.append(f"scored on {ra['n']} -> {rb['n']} test images (those every run of the group shares)")
            c.reasons += settings
            if not c.reasons:
                c.reasons.append("same run, settings and images: the stored values differ")
            # The noise test, where it means something: both values reportable, and different
            # predictions (another run, or a setting that changes how they are scored).
            value_settings = {k for k in VALUE_SETTINGS if ea.config.get(k) != eb.config.get(k)}
            if ra["status"] == rb["status"] == "ok" and (c.run_a != c.run_b or value_settings):
                _noise(store, c, cfgs, cache)
        changes.append(c)
    tested = [c for c in changes if math.isfinite(c.p)]
    if tested:
        for c, q in zip(tested, false_discovery_control([c.p for c in tested], method="bh")):
            c.q, c.significant = float(q), bool(q < alpha)
    return {"a": a, "b": b, "settings": settings, "changes": changes, "unchanged": unchanged, "alpha": alpha}


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def format_diff(result: dict[str, Any]) -> str:
    """The table ``radstore diff`` prints: one line per changed row, then its reasons."""
    lines = [f"diff {result['a']} -> {result['b']}: {len(result['changes'])} row(s) changed, {result['unchanged']} unchanged"]
    if not result["changes"]:
        return lines[0] + "\nno change"
    for c in result["changes"]:
        where = f"{c.task}/{c.head}{'' if c.fold is None else f'/fold{c.fold}'} {c.encoder} {c.metric}{'*' if c.primary else ''}"
        noise = (
            f" delta {_fmt(c.delta)} [{_fmt(c.ci_low)}, {_fmt(c.ci_high)}] on {c.n_shared} shared, q={_fmt(c.q)} "
            f"{'SIGNIFICANT' if c.significant else 'within noise'}"
            if math.isfinite(c.p)
            else ""
        )
        lines.append(f"{where}: {_fmt(c.value_a)} -> {_fmt(c.value_b)}{noise}")
        lines += [f"    because {r}" for r in c.reasons]
    return "\n".join(lines)


def regressions(result: dict[str, Any]) -> list[RowChange]:
    """The changed rows that are a regression worth an alert: a task's headline (primary) metric,
    significantly worse after FDR (lower where higher is better, and vice versa)."""
    out = []
    for c in result["changes"]:
        if c.primary and c.significant and math.isfinite(c.delta):
            if (c.delta < 0) == M.get_metric(c.metric).higher_is_better:
                out.append(c)
    return out


def previous_eval_id(store: Store, eval_id: str) -> str | None:
    """The evaluation created last before ``eval_id`` (what a scheduled study compares with), or None."""
    evals = list_evaluations(store)
    ids = [e.eval_id for e in evals]
    if eval_id not in ids:
        raise RadstoreError(f"no evaluation {eval_id!r} in {store.url}")
    i = ids.index(eval_id)
    return ids[i - 1] if i > 0 else None
