"""The report's "Embedding health" section: is each encoder's geometry sound, next to its results?

An encoder that scores erratically may simply have collapsed (its embeddings use a few
directions, or its patch tokens all point the same way), may see test images it has already
seen under another name, or may have drifted with a backfill. :mod:`featurestore.health`
measures all of it per feature set and versions it beside the features; this module shows the
latest version of each feature set the evaluation's runs read, so a reader judges an encoder's
numbers and its embeddings on the same page.

Three layers, as in the rest of the report: :func:`gather_health` reads the store into
:class:`HealthData` (no store handle kept); the figure functions draw PNGs from it alone; the
table functions build :class:`~evaluation.report.tables.Table` data the template renders.
A feature set never checked is left out here and named by the page (with the command that
checks it), so a report of a store without health versions looks as before, plus one note.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, work on headless machines

import matplotlib.pyplot as plt
import numpy as np

from evaluation.report.common import PALETTE, finite, fmt, fmt_p, label
from evaluation.report.figures import LINESTYLES, render_png
from evaluation.report.tables import Cell, Header, Table
from featurestore.errors import RadstoreError

if TYPE_CHECKING:
    from featurestore.health import HealthResult
    from featurestore.store import Store

log = logging.getLogger(__name__)

#: Leakage pairs kept per feature set (most similar first); the count of all of them is kept too.
LEAKAGE_ROWS = 50
#: The spectrum the figure draws: the covariance's (mean removed), what the participation ratio reads.
SPECTRUM_SOURCE = "global_centered"
SUMMARY_COLUMNS = ("scope", "metric", "value", "limit", "flagged", "n", "detail")


@dataclass(frozen=True, eq=False)
class HealthData:
    """The latest health version of one feature set of the evaluation, as the section shows it:
    the record (a dict), the long-form summary rows, and only the parts of the other tables the
    figures and tables draw (so a report of many encoders stays small)."""

    encoder: str  # as the evaluation's runs name it (the report's colours are keyed by it)
    feature_set_id: str
    record: dict[str, Any]  # featurestore.layout.records.HealthRecord.to_json()
    summary: list[dict]  # scope, metric, value, limit, flagged, n, detail
    spectrum: np.ndarray  # variance fraction per principal direction of the centred globals, largest first
    raw_spectrum: np.ndarray  # RankMe's p_k: singular values of the raw globals over their sum, largest first
    patch_cosine: np.ndarray  # per sampled image (NaN dropped)
    norm_map: np.ndarray  # [H, W] mean patch-token norm per grid position
    leakage: list[dict]  # at most LEAKAGE_ROWS test-train pairs, most similar first
    leakage_count: int  # every pair at or above the threshold
    drift: list[dict]  # one row per backfill, oldest first

    @property
    def health_id(self) -> str:
        """The id of the health version shown."""
        return self.record["health_id"]

    @property
    def flags(self) -> list[str]:
        """The warnings the version raised, as the check wrote them (empty: none)."""
        return list(self.record.get("flags") or [])

    def row(self, metric: str) -> dict | None:
        """The summary row of ``metric`` (None when the version has none, e.g. no leakage audit
        without both a train and a test split)."""
        return next((r for r in self.summary if r["metric"] == metric), None)

    def value(self, metric: str) -> float | None:
        """The value of ``metric`` (None when absent)."""
        r = self.row(metric)
        return None if r is None else r["value"]

    @property
    def max_patch_cosine(self) -> float | None:
        """The patch-cosine flag limit the version was checked with (HealthConfig.max_patch_cosine)."""
        limit = (self.record.get("config") or {}).get("max_patch_cosine")
        if limit is None:
            r = self.row("patch_cosine_median")
            limit = r["limit"] if r is not None else None
        return float(limit) if finite(limit) else None


# -- reading -------------------------------------------------------------------------------------


def health_data(encoder: str, result: HealthResult) -> HealthData:
    """A :class:`~featurestore.health.HealthResult` reduced to what the section draws."""
    t = result.tables
    summary = [{k: r[k] for k in SUMMARY_COLUMNS} for r in t["summary"].to_pylist()]
    spec = sorted((r["k"], r["variance_fraction"]) for r in t["spectrum"].to_pylist() if r["source"] == SPECTRUM_SOURCE)
    raw = np.array([s for _, s in sorted((r["k"], r["singular_value"]) for r in t["spectrum"].to_pylist() if r["source"] == "global")])
    raw = raw / raw.sum() if raw.size and raw.sum() > 0 else raw
    cos = np.array([v for v in t["patch_images"].column("patch_cosine").to_pylist() if v is not None], dtype=float)
    norm_map = np.zeros((0, 0))
    if t["norm_map"].num_rows:
        y, x, v = (t["norm_map"].column(c).to_numpy() for c in ("y", "x", "mean_norm"))
        norm_map = np.full((int(y.max()) + 1, int(x.max()) + 1), np.nan)
        norm_map[y, x] = v
    leak = t["leakage"].sort_by([("cosine", "descending")])
    keep = ("test_image_id", "train_image_id", "test_patient_id", "train_patient_id", "cosine", "same_patient")
    leakage = leak.slice(0, LEAKAGE_ROWS).select(list(keep)).to_pylist()
    drift = sorted(({k: v for k, v in r.items() if k not in ("feature_set_id", "health_id")} for r in t["drift"].to_pylist()),
                   key=lambda r: r["backfill"])  # fmt: skip
    return HealthData(
        encoder=encoder,
        feature_set_id=result.record.feature_set_id,
        record=result.record.to_json(),
        summary=summary,
        spectrum=np.array([f for _, f in spec], dtype=float),
        raw_spectrum=np.asarray(raw, dtype=float),
        patch_cosine=cos[np.isfinite(cos)],
        norm_map=norm_map,
        leakage=leakage,
        leakage_count=leak.num_rows,
        drift=drift,
    )


def gather_health(store: Store, feature_set_ids: Mapping[str, str]) -> list[HealthData]:
    """The latest health version of each feature set (``feature_set_id -> encoder``, as the
    evaluation's runs name them), ordered by encoder. A feature set never checked is skipped;
    so is one whose health cannot be read (logged): the report must render whatever state its
    health versions are in, and the results it exists for do not depend on them."""
    from featurestore.health import latest_health, load_health

    out = []
    for fsid, encoder in sorted(feature_set_ids.items(), key=lambda kv: (kv[1], kv[0])):
        try:
            fs = store.feature_set(fsid)
            rec = latest_health(fs)
            if rec is not None:
                out.append(health_data(encoder, load_health(fs, rec.health_id)))
        except (RadstoreError, OSError, ValueError) as e:  # ValueError: a corrupt table (pyarrow's ArrowInvalid) or json
            log.warning("report: embedding health of feature set %s left out: %s: %s", fsid, type(e).__name__, e)
    return out


# -- figures -------------------------------------------------------------------------------------


def names(health: list[HealthData]) -> list[str]:
    """How each feature set is named in figures and tables: its encoder, plus the start of its
    id where two feature sets share an encoder (same encoder, other weights)."""
    seen = Counter(h.encoder for h in health)
    return [label(h.encoder) + (f" [{h.feature_set_id[:8]}]" if seen[h.encoder] > 1 else "") for h in health]


def _colour(colours: Mapping[str, str], h: HealthData, i: int) -> str:
    return colours.get(h.encoder) or PALETTE[i % len(PALETTE)]


def spectrum_figure(health: list[HealthData], colours: Mapping[str, str]) -> bytes | None:
    """Share of the variance on each principal direction of the global embeddings, one line per
    encoder, log-log: a collapsed encoder's line drops steeply after a few directions; a healthy
    one stays flat for long. None when no version has a spectrum."""
    drawn = [(i, h, n) for i, (h, n) in enumerate(zip(health, names(health))) if (h.spectrum > 0).any()]
    if not drawn:
        return None
    fig, (raw_ax, ax) = plt.subplots(1, 2, figsize=(11.5, 4.8), layout="constrained")
    for i, h, name in drawn:
        style = {"color": _colour(colours, h, i), "ls": LINESTYLES[i % len(LINESTYLES)], "lw": 1.8}
        for a, y, text in ((raw_ax, h.raw_spectrum, f"{name} (RankMe {fmt(h.value('rankme'), 1)})"),
                           (ax, h.spectrum, f"{name} (PR {fmt(h.value('participation_ratio'), 1)})")):  # fmt: skip
            k = np.arange(1, len(y) + 1)
            ok = y > 0
            if ok.any():
                a.plot(k[ok], y[ok], label=text, **style)
    raw_ax.set_title("Raw embeddings: what RankMe reads", fontsize=11)
    raw_ax.set_ylabel("singular value / sum of singular values")
    ax.set_title("Mean removed: what the participation ratio reads", fontsize=11)
    ax.set_ylabel("share of the variance")
    for a in (raw_ax, ax):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("direction k (largest first)")
        a.grid(which="major", color="#e6e6e6", lw=0.6)
        a.legend(fontsize=8, loc="lower left", frameon=False)
    return render_png(fig)


def patch_cosine_figure(health: list[HealthData], colours: Mapping[str, str]) -> bytes | None:
    """Per encoder, the distribution over sampled images of the mean pairwise cosine of an
    image's patch tokens, with the flag limit dashed: a box near 1 means every token of an image
    says the same thing (spatial collapse). None when no version has patch figures."""
    drawn = [(i, h, n) for i, (h, n) in enumerate(zip(health, names(health))) if len(h.patch_cosine)]
    if not drawn:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(drawn) + 2.5), 4.6), layout="constrained")
    pos = np.arange(1, len(drawn) + 1)
    box = ax.boxplot([h.patch_cosine for _, h, _ in drawn], positions=pos, widths=0.55, showfliers=False, patch_artist=True,
                     medianprops={"color": "black", "lw": 1.4})  # fmt: skip
    rng = np.random.default_rng(0)  # the jitter only: the same report draws the same points
    for p, patch, (i, h, _) in zip(pos, box["boxes"], drawn):
        c = _colour(colours, h, i)
        patch.set(facecolor=c, alpha=0.35, edgecolor=c)
        ax.scatter(p + rng.uniform(-0.18, 0.18, len(h.patch_cosine)), h.patch_cosine, s=6, color=c, alpha=0.5, lw=0)
    limits = sorted({h.max_patch_cosine for _, h, _ in drawn if h.max_patch_cosine is not None})
    for j, lim in enumerate(limits):
        ax.axhline(lim, color="#c00000", ls="--", lw=1.0, label="flag limit (median)" if j == 0 else None)
    lo = min(float(min(h.patch_cosine.min() for _, h, _ in drawn)), 0.0)
    ax.set_ylim(lo - 0.05, 1.05)
    ticks = [f"{n}\n{len(h.patch_cosine)} images" for _, h, n in drawn]
    ax.set_xticks(pos, ticks, rotation=20 if len(drawn) > 3 else 0, ha="right" if len(drawn) > 3 else "center", fontsize=9)
    ax.set_ylabel("mean pairwise cosine of an image's patch tokens")
    ax.set_title("Patch diversity per image (sampled images)", fontsize=11)
    ax.grid(axis="y", color="#e6e6e6", lw=0.6)
    if limits:
        ax.legend(fontsize=8, loc="best")
    return render_png(fig)


def norm_map_figure(health: list[HealthData]) -> bytes | None:
    """One panel per encoder: the mean patch-token norm at each grid position, each on its own
    colour scale (norms differ between encoders; the pattern is what matters). None when no
    version has a norm map."""
    drawn = [(h, n) for h, n in zip(health, names(health)) if h.norm_map.size and np.isfinite(h.norm_map).any()]
    if not drawn:
        return None
    ncols = min(4, len(drawn))
    nrows = -(-len(drawn) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.6 * ncols, 6.0), 3.5 * nrows + 0.5), squeeze=False, layout="constrained")
    for ax in axes.flat[len(drawn) :]:
        ax.axis("off")
    for ax, (h, name) in zip(axes.flat, drawn):
        im = ax.imshow(h.norm_map, cmap="magma", interpolation="nearest")
        bar = fig.colorbar(im, ax=ax, shrink=0.85)
        bar.formatter.set_useOffset(False)  # normalised tokens vary in the 4th digit: print the norms, not "+5.656"
        bar.update_ticks()
        ax.set_xticks([])
        ax.set_yticks([])
        gh, gw = h.norm_map.shape
        cv = h.value("norm_map_cv")
        ax.set_title(f"{name}\n{gh}x{gw} grid, CV {f'{cv:.2g}' if finite(cv) else 'n/a'}", fontsize=9)
    fig.suptitle("Mean patch-token norm per grid position", fontsize=11)
    return render_png(fig)


#: The section's figures, in page order: (file name, caption saying how to read it).
FIGURES = (
    ("health-spectra",
     "Spectra of each encoder's global embeddings, largest direction first, log-log. Left: the raw embeddings' singular values "
     "over their sum, what RankMe (exp entropy of these shares, 1 to min(n, d)) reads: one direction shared by every embedding "
     "(anisotropy) shows as a first value far above the rest. Right: the share of the variance once the mean is removed, what "
     "the participation ratio (PR) reads: a steep early drop = few directions used (dimensional collapse); a long flat line = "
     "variance spread over many"),
    ("health-patch-cosine",
     "Patch diversity: per sampled image, the mean pairwise cosine of its patch tokens (box: quartiles; dots: images). Near 0: "
     "tokens describe different places; near 1: every token is the same (spatial collapse, nothing for a segmentation head to "
     "localise with). Dashed: the flag limit on the median (max_patch_cosine)"),
    ("health-norm-maps",
     "Mean patch-token norm per grid position, one panel per encoder (own colour scale each; CV = spread across positions). "
     "A bright ring, corner or spot is a border or register-token artefact the heads will read as signal"),
)  # fmt: skip


def health_figures(health: list[HealthData], colours: Mapping[str, str]) -> list[tuple[str, str, bytes | None]]:
    """The section's figures as (name, caption, PNG or None), in page order."""
    pngs = (spectrum_figure(health, colours), patch_cosine_figure(health, colours), norm_map_figure(health))
    return [(name, caption, png) for (name, caption), png in zip(FIGURES, pngs)]


# -- tables --------------------------------------------------------------------------------------


def _limit(health: list[HealthData], metric: str, op: str, pct: bool = False) -> str:
    """The flag limit of ``metric`` for the header, when every version shares one ("" otherwise)."""
    limits = {r["limit"] for h in health if (r := h.row(metric)) is not None and r["limit"] is not None}
    if len(limits) != 1:
        return ""
    (lim,) = limits
    return f"flag {op} {lim:.0%}" if pct else f"flag {op} {lim:g}"


def _drift_limit(health: list[HealthData]) -> str:
    """The drift flag's limit: from a version that measured drift, else from the checks' configs
    (a version without a backfill has no p-value row to read it from)."""
    alphas = {float(a) for h in health if finite(a := (h.record.get("config") or {}).get("drift_alpha"))}
    return _limit(health, "p_value", "<") or (f"flag < {next(iter(alphas)):g}" if len(alphas) == 1 else "")


def _num_text(text: str) -> Cell:
    return Cell(text, "num")


def _cell(h: HealthData, metric: str, text: str | None = None, flag_by: str | None = None, digits: int = 3) -> Cell:
    """A number of the summary, marked (bold, class ``flag``) where its version flagged it."""
    data = (("encoder", h.encoder), ("metric", metric))
    r = h.row(metric)
    if r is None:
        return Cell("—", "num na", data)
    if not finite(r["value"]):
        return Cell("n/a", "num na", data)
    f = h.row(flag_by or metric)
    flagged = bool(f is not None and f["flagged"])
    return Cell(fmt(r["value"], digits) if text is None else text, "num flag" if flagged else "num", data, bold=flagged)


def _checked(record: Mapping[str, Any]) -> str:
    try:
        return datetime.fromisoformat(record["created_at"]).strftime("%Y-%m-%d %H:%M")
    except (KeyError, TypeError, ValueError):
        return str(record.get("created_at") or "")


def _drift_cell(h: HealthData) -> Cell:
    data = (("encoder", h.encoder), ("metric", "drift_p_value"))
    if not h.drift:
        return Cell("no backfill", "num na", data)
    d = h.drift[-1]
    flagged = bool(d.get("flagged"))
    return Cell(f"{fmt_p(d['p_value'])} (backfill {d['backfill']})", "num flag" if flagged else "num", data, bold=flagged)


def summary_table(health: list[HealthData]) -> Table:
    """One row per feature set: the headline figures of its latest health version, each flagged
    one marked, then the version's flags in words."""
    controls = sorted({r["metric"] for h in health for r in h.summary if r["metric"].startswith("cka_")})
    header = (
        Header(("encoder",)),
        Header(("feature set",)),
        Header(("health version",), "checked (UTC)"),
        Header(("images",), "(patch sample)"),
        Header(("RankMe",), "global"),
        Header(("participation", "ratio"), _limit(health, "participation_ratio", "<")),
        Header(("anisotropy",), _limit(health, "anisotropy", "≥")),
        Header(("dead dims",), _limit(health, "dead_fraction", "≥", pct=True)),
        Header(("median patch", "cosine"), _limit(health, "patch_cosine_median", "≥")),
        Header(("median patch", "rank"), "effective rank"),
        *(Header(("CKA vs", label(m.removeprefix("cka_"))), "linear") for m in controls),
        Header(("leakage", "pairs"), _limit(health, "pairs", "≥")),
        Header(("latest drift", "p"), _drift_limit(health)),
        Header(("flags",)),
    )
    rows = []
    for h, name in zip(health, names(health)):
        rec = h.record
        dead, frac = h.value("dead_dimensions"), h.value("dead_fraction")
        dead_text = f"{int(dead)} ({frac:.0%})" if finite(dead) and finite(frac) else None
        pairs = h.value("pairs")
        flags = h.flags
        rows.append([
            Cell(name),
            Cell(h.feature_set_id, code=True),
            Cell(f"{h.health_id} ({_checked(rec)})"),
            _num_text(f"{rec.get('images')} ({rec.get('sampled')})"),
            _cell(h, "rankme", digits=1),
            _cell(h, "participation_ratio", digits=2),
            _cell(h, "anisotropy"),
            _cell(h, "dead_dimensions", dead_text, flag_by="dead_fraction"),
            _cell(h, "patch_cosine_median"),
            _cell(h, "patch_rank_median", digits=1),
            *(_cell(h, m) for m in controls),
            _cell(h, "pairs", str(int(pairs)) if finite(pairs) else None),
            _drift_cell(h),
            Cell("; ".join(flags), "flag", (("encoder", h.encoder), ("metric", "flags"))) if flags else Cell("none", "na"),
        ])  # fmt: skip
    return Table(header, rows, "health")


def leakage_table(health: list[HealthData]) -> Table | None:
    """Every listed test-train pair at or above its version's threshold (at most LEAKAGE_ROWS
    per feature set), most similar first; None when no version found one."""
    rows = [
        [
            Cell(name),
            Cell(r["test_image_id"], code=True),
            Cell(r["train_image_id"], code=True),
            Cell(r["test_patient_id"] or ""),
            Cell(r["train_patient_id"] or ""),
            _num_text(fmt(r["cosine"])),
            Cell("yes" if r["same_patient"] else "no"),
        ]
        for h, name in zip(health, names(health))
        for r in h.leakage
    ]
    if not rows:
        return None
    head = (*(Header((n,)) for n in ("encoder", "test image", "train image", "test patient", "train patient")),
            Header(("cosine",)), Header(("same patient",)))  # fmt: skip
    return Table(head, rows, "health")


def leakage_notes(health: list[HealthData]) -> list[str]:
    """What the leakage table leaves out: per feature set, how many pairs beyond the listed ones,
    and which versions ran no audit (no train or no test split)."""
    out = []
    for h, name in zip(health, names(health)):
        if h.row("pairs") is None:
            out.append(f"{name}: no leakage audit (the image index has no train or no test split).")
        elif h.leakage_count > len(h.leakage):
            out.append(f"{name}: {h.leakage_count} pairs, the {len(h.leakage)} most similar listed.")
    return out


def leakage_rule(health: list[HealthData]) -> str:
    """Which pairs the audit lists, in words: the kind of cosine (whitened when the check's
    config whitens, centred otherwise) and its threshold(s), as the versions were checked."""
    cfgs = [h.record.get("config") or {} for h in health]
    kinds = sorted({"centred" if c.get("leakage_whiten") is None else "whitened" for c in cfgs})
    ts = sorted({float(t) for c in cfgs if finite(t := c.get("leakage_threshold"))})
    return f"a {' or '.join(kinds) or 'centred'} cosine at or above {' / '.join(f'{t:g}' for t in ts) or 'the threshold'}"


def drift_table(health: list[HealthData]) -> Table | None:
    """One row per backfill of each feature set: the new images against those before; None when
    no version has seen a backfill."""
    rows = []
    for h, name in zip(health, names(health)):
        for d in h.drift:
            flagged = bool(d.get("flagged"))
            span = " – ".join(x.strftime("%Y-%m-%d %H:%M") if isinstance(x, datetime) else str(x) for x in (d["new_from"], d["new_upto"]))
            rows.append([
                Cell(name),
                _num_text(str(d["backfill"])),
                Cell(span),
                _num_text(str(d["n_before"])),
                _num_text(str(d["n_new"])),
                _num_text(fmt(d["mean_shift"])),
                _num_text(fmt(d["mmd2"], 4)),
                Cell(fmt_p(d["p_value"]), "num flag" if flagged else "num", (("encoder", h.encoder), ("backfill", d["backfill"])),
                     bold=flagged),
                _num_text(f"{fmt(d['rankme_before'], 1)} → {fmt(d['rankme_new'], 1)}"),
                _num_text(f"{fmt(d['anisotropy_before'])} → {fmt(d['anisotropy_new'])}"),
            ])  # fmt: skip
    if not rows:
        return None
    head = (Header(("encoder",)), Header(("backfill",)), Header(("new images extracted",), "from – to (UTC)"), Header(("images",), "before"),
            Header(("images",), "new"), Header(("mean shift",), "in units of the earlier spread"), Header(("MMD²",), "unbiased"),
            Header(("p",), _drift_limit(health) or "permutation test"), Header(("RankMe",), "before → new"),
            Header(("anisotropy",), "before → new"))  # fmt: skip
    return Table(head, rows, "health")
