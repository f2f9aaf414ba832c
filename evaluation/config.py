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
    # Classification: the sensitivity the ``sensitivity@`` operating point must reach on the
    # validation split, the equal-width bins of the ECE and the reliability diagram, and the
    # recalibrations fitted on validation (evaluation.calibration.SCALINGS; "none" is always there).
    target_sensitivity: float = 0.9
    calibration_bins: int = 10
    scalings: tuple[str, ...] = ("platt", "temperature")
    # Every metric per subgroup of the test images (evaluation.subgroups.SUBGROUP_COLUMNS: the
    # image index's DICOM attributes, age bands, file format...), each subgroup tested against the
    # rest; a subgroup of fewer images than ``min_subgroup_images`` is reported as too small.
    subgroups: tuple[str, ...] = ("manufacturer", "view_position", "patient_sex", "age_band")
    min_subgroup_images: int = 30

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
        from evaluation.calibration import SCALINGS

        object.__setattr__(self, "scalings", tuple(self.scalings))
        bad = [m for m in self.scalings if m not in SCALINGS or m == "none"]
        if bad:
            raise RadstoreError(f"scalings: {', '.join(map(str, bad))} unknown; choose from {', '.join(SCALINGS[1:])}")
        from evaluation.subgroups import SUBGROUP_COLUMNS

        object.__setattr__(self, "subgroups", tuple(self.subgroups or ()))
        unknown = [c for c in self.subgroups if c not in SUBGROUP_COLUMNS]
        if unknown:
            raise RadstoreError(f"subgroups: {', '.join(map(str, unknown))} unknown; choose from {', '.join(SUBGROUP_COLUMNS)}")
        if self.min_subgroup_images < 2:
            raise RadstoreError(f"min_subgroup_images must be >= 2, got {self.min_subgroup_images}")
        if not 0.0 < self.target_sensitivity < 1.0:
            raise RadstoreError(f"target_sensitivity must be in (0, 1), got {self.target_sensitivity!r}")
        if self.calibration_bins < 2:
            raise RadstoreError(f"calibration_bins must be >= 2, got {self.calibration_bins}")
        if self.resamples < 100:
            raise RadstoreError(f"resamples={self.resamples}: use at least 100 for a 95% interval")
