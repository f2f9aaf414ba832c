"""An HTML report of one evaluation version: the study's tables and figures in one file.

``write_report(store, out_dir)`` reads ``metrics/<eval_id>/`` (and, for the curves, scatter
plots and overlays, the evaluated runs' predictions) and writes::

    out_dir/index.html        self-contained: CSS inline, every figure embedded as a data URI
    out_dir/figures/*.png     the same figures as files (for slides and papers)

Why one static file: a study's result is reviewed, archived and attached to a paper's
supplement; a page without scripts, fonts or CDNs opens the same in ten years and can be
checked against the Parquet tables it came from (eval_id, config and run ids are printed).

Sections: the results table (primary metric with its CI per encoder x head x task, best of each
column in bold) and every metric; a forest plot of the CIs; then, per task kind, the figures of
what it predicts (ROC and PR curves for a score, predicted vs true for a value, per-image Dice
distributions and overlays of the best run's best, median and worst test image for a mask);
corrected p-value matrices of the paired bootstrap, the table of all comparisons, and Friedman +
Nemenyi across cross-validation folds; the calibration and operating points of the classification
runs (:mod:`.decisions`: reliability diagrams raw and after temperature scaling, Brier and ECE
raw and recalibrated, and the test sensitivity, specificity, PPV and NPV at thresholds chosen
on validation; an evaluation made before these were computed says to re-run it); the label
efficiency of each encoder (:mod:`.label_efficiency`: the primary metric against the training
labels of heads trained on nested subsets of the training split, with the test-set interval and
the spread over subset seeds, and the encoders compared at each size with Holm's p; without
subset runs, how to plan them); its subgroups (:mod:`.subgroups`: a forest plot per task of
the primary metric on each subgroup of the test images, by manufacturer, view, sex or age band,
against the whole test set, and the subgroups that differ from the rest after Holm's
correction); last, the embedding health of each feature set the runs read (:mod:`.health`: its
latest version's overview, spectra, patch diversity, norm maps, leakage pairs and drift). These
last four sections are always on the page, with a note where the evaluation has nothing for
them, so a section keeps its number from one evaluation to the next. Undefined numbers (an
AUROC on a test split with one class) are shown as "n/a", never as a crash or a fake 0.

Three layers, so each can change (or be tested) alone: :mod:`.gather` reads the store into
:class:`~.gather.ReportData`; :mod:`.figures` and :mod:`.masks` draw PNGs from rows and
arrays; :mod:`.render` chooses the sections and fills the autoescaped Jinja2 template
``templates/report.html.j2``.
"""

from evaluation.report.common import fmt, fmt_ci, fmt_p, headline_rows
from evaluation.report.figures import forest_figure, pvalue_figure, roc_pr_figure, scatter_figure
from evaluation.report.gather import ReportData, gather
from evaluation.report.masks import Overlay, OverlayImage, dice_figure, overlay_figure
from evaluation.report.render import render_report, results_table_html, write_report

__all__ = [
    "Overlay",
    "OverlayImage",
    "ReportData",
    "dice_figure",
    "fmt",
    "fmt_ci",
    "fmt_p",
    "forest_figure",
    "gather",
    "headline_rows",
    "overlay_figure",
    "pvalue_figure",
    "render_report",
    "results_table_html",
    "roc_pr_figure",
    "scatter_figure",
    "write_report",
]
