"""The extraction job's configuration: one frozen dataclass that the CLI, the flows and the
tests all build, so a default or a choice is written once (the CLI reads its options from here).

Kept free of heavy imports so ``radstore --help`` need not load torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DEVICES = ("auto", "cpu", "cuda", "mps")
BITS = (8, 16)
#: How an image's intensities reach the encoder: ``window`` (the DICOM display pipeline, 16-bit
#: files by their significant bits) or ``minmax`` (the study's per-image min-max stretch).
INTENSITIES = ("window", "minmax")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides what is extracted and how fast; drives CLI, flow and tests."""

    encoder: str
    weights: str | None = None  # folder, "random", "random:tiny"; None: $RADSTORE_WEIGHTS_DIR / HF cache
    size: int | None = None  # input resolution override (a distinct feature set)
    bits: int | None = None  # 8 or 16 (a distinct feature set); None: the encoder's default (8)
    intensity: str | None = None  # window or minmax (a distinct feature set); None: window
    batch_size: int = 16
    device: str = "auto"
    num_workers: int = 1  # DataLoader processes decoding and preprocessing
    dtype: str = "float16"  # storage dtype of the patch grids
    shard_images: int = 0  # images per shard for a *new* feature set; 0: by size (layout.py)
    progress: bool = True

    def to_json(self) -> dict[str, Any]:
        """Every field as a plain json-ready dict; ``ExtractConfig(**d)`` rebuilds the same configuration."""
        return asdict(self)
