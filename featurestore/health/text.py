"""Health versions as text: one overview row per feature set, then what was flagged and found.

What ``radstore health`` prints; the study logs the same lines.
"""

from __future__ import annotations

from typing import Any

from featurestore.health.check import HealthResult

#: (column, summary metric) of the overview, in order; CKA columns are added per control found.
OVERVIEW = (
    ("rankme", "rankme"),
    ("part.ratio", "participation_ratio"),
    ("anisotropy", "anisotropy"),
    ("dead", "dead_dimensions"),
    ("patch cos", "patch_cosine_median"),
    ("patch rank", "patch_rank_median"),
    ("leak pairs", "pairs"),
    ("drift p", "p_value"),
)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if v.is_integer() and abs(v) >= 1 else f"{v:.3g}"
    return str(v)


def overview_rows(results: list[HealthResult]) -> list[dict[str, str]]:
    """One row per health version: images, the headline figures (a trailing ``!`` marks a
    flagged one), CKA with each control, and the number of flags."""
    controls = sorted({r["metric"] for h in results for r in h.tables["summary"].to_pylist() if r["scope"] == "control"})
    out = []
    for h in results:
        by = {r["metric"]: r for r in h.tables["summary"].to_pylist()}
        row = {"feature set": h.record.feature_set_id, "encoder": h.record.encoder, "images": str(h.record.images)}
        for col, metric in (*OVERVIEW, *((c.replace("cka_", "CKA "), c) for c in controls)):
            r = by.get(metric)
            row[col] = "-" if r is None else _fmt(r["value"]) + ("!" if r["flagged"] else "")
        row["flags"] = str(len(h.record.flags))
        out.append(row)
    return out


def detail_lines(h: HealthResult, pairs: int = 10) -> list[str]:
    """The flags, the leakage pairs (the first ``pairs``) and the drift rows of one version."""
    rec = h.record
    state = "computed" if h.created else "unchanged inputs, stored version"
    lines = [f"{rec.feature_set_id} ({rec.encoder}): health {rec.health_id}, {state}; {h.path}"]
    lines += [f"  flag: {f}" for f in rec.flags]
    leak = h.tables["leakage"].to_pylist()
    for r in leak[:pairs]:
        same = " SAME PATIENT" if r["same_patient"] else ""
        lines.append(f"  leakage: test {r['test_image_id']} ({r['test_patient_id']}) ~ train {r['train_image_id']} "
                     f"({r['train_patient_id']}) cosine {r['cosine']:.4f}{same}")  # fmt: skip
    total = int(h.figure("pairs") or 0)
    if total > min(pairs, len(leak)):
        listed = "" if total == len(leak) else f" ({len(leak)} listed: the closest per test image)"
        lines.append(f"  leakage: {total} pair(s) in all{listed}: radstore query --store ... 'select * from health_leakage'")
    for r in h.tables["drift"].to_pylist():
        mark = "  DRIFT" if r["flagged"] else ""
        lines.append(f"  backfill {r['backfill']}: {r['n_new']} new vs {r['n_before']} before, mean shift {r['mean_shift']:.3g}, "
                     f"MMD^2 {r['mmd2']:.3g}, p {r['p_value']:.3g}{mark}")  # fmt: skip
    return lines
