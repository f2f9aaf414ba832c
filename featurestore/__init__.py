"""radstore's library core: images, the synthetic cohort, the on-disk store (no Prefect here)."""

__version__ = "0.1.0"
