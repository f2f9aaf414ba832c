"""What a health check reads and where it raises a flag: one frozen config for CLI, study and tests.

Kept free of heavy imports so ``radstore --help`` need not load torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class HealthConfig:
    """Sampling, the leakage audit, the drift test and the warning limits of a health check.

    The global figures (spectrum, anisotropy, dimensions, norms) and the leakage audit read every
    committed row; the patch figures, the CKA and the drift test read a seeded sample.
    """

    sample: int = 2000  # images whose grids are read (and CKA's images); 0: all of them
    seed: int = 0
    rank_images: int = 256  # images of the sample whose patch effective rank is computed
    tokens_per_image: int = 16  # tokens of each sampled image in the pooled patch spectrum
    batch: int = 32  # grids per read
    leakage_threshold: float = 0.9  # whitened cosine at or above which a test-train pair is listed
    leakage_pairs_per_image: int = 5  # pairs listed per test image (all are counted)
    #: Ridge of the leakage audit's whitening, a fraction of the mean covariance eigenvalue
    #: (featurestore.health.leakage); None: the centred cosine, not whitened.
    leakage_whiten: float | None = 0.01
    drift_sample: int = 500  # embeddings per side of the drift test
    permutations: int = 500  # of the drift test's p-value
    drift_alpha: float = 0.01  # a backfill whose drift p-value is below this is flagged
    max_anisotropy: float = 0.95  # flag: mean pairwise cosine of the global embeddings
    max_patch_cosine: float = 0.95  # flag: median over images of the mean pairwise patch cosine
    max_dead_fraction: float = 0.1  # flag: share of dead dimensions
    min_participation_ratio: float = 1.5  # flag: fewer effective directions of variance than this

    def __post_init__(self) -> None:
        for name in ("sample", "rank_images", "tokens_per_image"):
            if getattr(self, name) < 0:
                raise ValueError(f"health: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch", "leakage_pairs_per_image", "drift_sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"health: {name} must be >= 1, got {getattr(self, name)}")
        if self.leakage_whiten is not None and self.leakage_whiten <= 0:
            raise ValueError(f"health: leakage_whiten must be > 0 (or null for the centred cosine), got {self.leakage_whiten}")
        if not -1.0 <= self.leakage_threshold <= 1.0:
            raise ValueError(f"health: leakage_threshold is a cosine in [-1, 1], got {self.leakage_threshold}")
        if not 0.0 < self.drift_alpha < 1.0:
            raise ValueError(f"health: drift_alpha must be in (0, 1), got {self.drift_alpha}")
        if (1 + self.permutations) * self.drift_alpha <= 1:
            # the smallest p-value a permutation test can give is 1 / (1 + permutations)
            need = int(1 / self.drift_alpha)
            raise ValueError(f"health: {self.permutations} permutations cannot reach a p-value below drift_alpha "
                             f"{self.drift_alpha}; use at least {need} permutations or a larger drift_alpha")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """Every field, json-ready (recorded in each health version)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> HealthConfig:
        """Build from a study config's ``health:`` mapping; an unknown key is an error naming it."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"health: unknown key(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    #: Fields that change how fast a check runs, not what it computes: left out of its id.
    RUNTIME_ONLY: ClassVar[tuple[str, ...]] = ("batch",)

    def identity(self) -> dict[str, Any]:
        """The fields that decide the numbers (a health version's id hashes them)."""
        return {k: v for k, v in asdict(self).items() if k not in self.RUNTIME_ONLY}
