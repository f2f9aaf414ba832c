"""The evaluation job's configuration: one frozen dataclass for the CLI, the flows, the study
config and the tests (the CLI reads its options and defaults from here). Every field is part
of an evaluation's identity.
"""

from __future__ import annotations

from dataclasses import dataclass

from evaluation.bootstrap import METHODS
from evaluation.metrics import EMPTY_CONVENTIONS
from featurestore.errors import RadstoreError


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate; every field is part of the evaluation's identity."""

    resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95
    method: str = "percentile"  # or "bca" (falls back to NaN bounds where BCa is undefined)
    empty_both: str = "one"  # Dice/IoU of an image whose true and predicted masks are both empty
    threshold: float = 0.5  # segmentation probabilities -> masks

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RadstoreError(f"CI method must be one of {METHODS}, got {self.method!r}")
        if self.empty_both not in EMPTY_CONVENTIONS:
            raise RadstoreError(f"empty_both must be one of {EMPTY_CONVENTIONS}, got {self.empty_both!r}")
        if self.resamples < 100:
            raise RadstoreError(f"resamples={self.resamples}: use at least 100 for a 95% interval")
