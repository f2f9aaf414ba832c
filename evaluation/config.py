"""The evaluation job's configuration: one frozen dataclass for the CLI, the flows, the study
config and the tests (the CLI reads its options and defaults from here). Every field is part
of an evaluation's identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evaluation.bootstrap import METHODS
from evaluation.metrics import EMPTY_CONVENTIONS
from featurestore.errors import RadstoreError

CI_METHODS = ("auto", *METHODS)


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate; every field is part of the evaluation's identity."""

    resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95
    # "auto": the interval that covers in simulation (logit DeLong for AUROC, BCa otherwise);
    # or "percentile" / "bca" for every metric (BCa falls back to NaN bounds where undefined).
    method: str = "auto"
    empty_both: str = "one"  # Dice/IoU of an image whose true and predicted masks are both empty
    # Mask probabilities -> masks. None: each run's threshold chosen on its validation split
    # (run.json operating_points; 0.5 for runs that have none); a number forces it for all.
    threshold: float | None = None
    # AUROC/AP on fewer positives or negatives than this are reported as "insufficient" (no
    # value, no interval, no comparison): with a handful of one class they mislead.
    min_class_count: int = 10
    # Headline metric per task kind where it should not be the kind's first metric, e.g.
    # {"segmentation": "dice"} for the mean Dice over all images instead of non-empty ones.
    primary: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in CI_METHODS:
            raise RadstoreError(f"CI method must be one of {CI_METHODS}, got {self.method!r}")
        if self.empty_both not in EMPTY_CONVENTIONS:
            raise RadstoreError(f"empty_both must be one of {EMPTY_CONVENTIONS}, got {self.empty_both!r}")
        if self.threshold is not None and not 0.0 < float(self.threshold) < 1.0:
            raise RadstoreError(f"threshold must be in (0, 1) or None (chosen on validation), got {self.threshold!r}")
        if self.min_class_count < 1:
            raise RadstoreError(f"min_class_count must be >= 1, got {self.min_class_count}")
        from featurestore.tasks import get_kind

        for kind, metric in self.primary.items():
            if metric not in get_kind(kind).metrics:
                raise RadstoreError(f"primary: {metric!r} is not a metric of task kind {kind} ({', '.join(get_kind(kind).metrics)})")
        if self.resamples < 100:
            raise RadstoreError(f"resamples={self.resamples}: use at least 100 for a 95% interval")
