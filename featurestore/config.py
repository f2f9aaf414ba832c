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
#: How patch grids are stored (a distinct feature set each): float16, float32, or int8 with a
#: scale per image and channel (:mod:`featurestore.featureset.quantize`).
STORAGE_DTYPES = ("float16", "float32", "int8")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides what is extracted and how fast; drives CLI, flow and tests."""

    encoder: str
    weights: str | None = None  # folder, "random", "random:tiny"; None: $RADSTORE_WEIGHTS_DIR / HF cache
    size: int | None = None  # input resolution override (a distinct feature set)
    bits: int | None = None  # 8 or 16 (a distinct feature set); None: the encoder's default (8)
    intensity: str | None = None  # window or minmax (a distinct feature set); None: window
    batch_size: int | None = None  # images per forward; None: sized to the device (16 on CPU, 64 on CUDA)
    device: str = "auto"
    num_workers: int | None = None  # DataLoader processes decoding; None: the cores available minus one
    dtype: str = "float16"  # storage dtype of the patch grids
    shard_images: int = 0  # images per shard for a *new* feature set; 0: by size (layout.py)
    progress: bool = True
    profile: bool = False  # time the input wait, forwards and commits exactly (synchronises CUDA)
    #: Finish the preprocessing (resize, normalise) on the device from the small array the workers
    #: ship; None: on CUDA only. True on the CPU runs that path where there is no GPU (tests).
    device_preprocess: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """Every field as a plain json-ready dict; ``ExtractConfig(**d)`` rebuilds the same configuration."""
        return asdict(self)
