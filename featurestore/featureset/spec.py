"""What a feature set holds (:class:`FeatureSetSpec`) and what a write reports (:class:`WriteResult`).

Kept apart from the reader and the writer because encoders, the store and the tests build
specs without touching any data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from featurestore import layout
from featurestore.config import STORAGE_DTYPES
from featurestore.errors import FeatureSetError

#: Storage dtypes of the patch grids; part of the feature set id. ``int8`` keeps per image and
#: channel scaled codes (:mod:`.quantize`) and is read back as float32.
SUPPORTED_DTYPES = STORAGE_DTYPES  # written once, in featurestore.config (the CLI reads it without torch)
CODECS = ("none", "zstd")

#: How ``weights_fingerprint`` was computed (:attr:`FeatureSetSpec.fingerprint_scheme`):
#: ``files-v1`` hashes the tensors as stored in the checkpoint files
#: (:class:`featurestore.encoders.weights.WeightFiles`); ``module-state-dict`` the module's
#: in-memory ``state_dict()``, whose names a library upgrade can change. Feature sets written
#: before the scheme was recorded used the latter.
FILES_SCHEME = "files-v1"
MODULE_SCHEME = "module-state-dict"
SCHEME_NAMES = {FILES_SCHEME: "files-v1", MODULE_SCHEME: "legacy module state_dict"}


@dataclass(frozen=True)
class FeatureSetSpec:
    """What a feature set holds. Identity fields decide its id; storage fields only its layout,
    so the same embeddings stored differently are still the same feature set."""

    encoder: str
    weights_fingerprint: str
    grid: tuple[int, int, int]  # (channels, height, width) of the patch grid
    global_dim: int
    preprocessing: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float16"
    extra_globals: dict[str, int] = field(default_factory=dict)  # more global vectors: name -> dim
    # storage only (not part of the id):
    shard_images: int = 0  # rows per shard = per commit; 0: choose by size (layout.choose_shard_images)
    sharded: bool = True  # False: one chunk object per image, committed in groups of shard_images
    codec: str = "none"
    labels: dict[str, Any] = field(default_factory=dict)  # e.g. {"weights": "random:tiny"}
    # How weights_fingerprint was computed (FILES_SCHEME, MODULE_SCHEME; None: not recorded, as in
    # feature sets written before it was, or no weights). Not part of the id: the fingerprint's
    # value is, and a new scheme gives a new value.
    fingerprint_scheme: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if len(self.grid) != 3 or min(self.grid) <= 0:
            raise FeatureSetError(f"grid must be (channels, height, width) > 0, got {self.grid}")
        for name in self.extra_globals:
            if name in layout.CLS_RESERVED or not name.isidentifier():
                raise FeatureSetError(f"extra global name {name!r} is reserved or not an identifier")
        if self.global_dim <= 0:
            raise FeatureSetError(f"global_dim must be > 0, got {self.global_dim}")
        if self.dtype not in SUPPORTED_DTYPES:
            raise FeatureSetError(f"dtype {self.dtype!r} not supported; use one of {SUPPORTED_DTYPES}")
        if self.codec not in CODECS:
            raise FeatureSetError(f"codec {self.codec!r} not supported; use one of {CODECS}")
        if self.shard_images < 0:
            raise FeatureSetError("shard_images must be >= 0 (0 = automatic)")
        if self.shard_images == 0:
            # An int8 set shards like its float16 twin: the same rows per commit, and readers,
            # which hold a shard's rows dequantised, hold no more than they would for float16.
            itemsize = 2 if self.dtype == "int8" else np.dtype(self.dtype).itemsize
            object.__setattr__(self, "shard_images", layout.choose_shard_images(self.grid, itemsize))

    def identity(self) -> dict[str, Any]:
        """The fields that decide the feature set id: what the embeddings are, not how they are stored."""
        return {
            "encoder": self.encoder,
            "weights_fingerprint": self.weights_fingerprint,
            "preprocessing": self.preprocessing,
            "grid": list(self.grid),
            "global_dim": self.global_dim,
            "dtype": self.dtype,
            **({"extra_globals": dict(sorted(self.extra_globals.items()))} if self.extra_globals else {}),
        }

    @property
    def feature_set_id(self) -> str:
        """The id under which the store keeps these embeddings (derived from :meth:`identity`)."""
        return layout.feature_set_id(self.encoder, self.identity())

    @property
    def image_bytes(self) -> int:
        """Bytes of one stored patch grid: the unit of every direct shard read and write."""
        return int(np.prod(self.grid)) * np.dtype(self.dtype).itemsize

    @property
    def read_dtype(self) -> str:
        """The dtype grids are read as (what a reader's ``out`` buffer should be): the store
        dtype, except int8, whose codes are dequantised to float32 on every read."""
        return "float32" if self.dtype == "int8" else self.dtype

    @property
    def scales_channels(self) -> int | None:
        """Channels of the per-row ``scales`` column an int8 set's cls parts carry; None otherwise."""
        return self.grid[0] if self.dtype == "int8" else None

    @property
    def scheme_name(self) -> str:
        """How ``radstore store info`` names the fingerprint's scheme: "files-v1", "legacy module
        state_dict" (also for a feature set that recorded none, as every one written before the
        scheme was recorded), or "none" for a weight-free encoder."""
        if self.fingerprint_scheme is not None:
            return SCHEME_NAMES.get(self.fingerprint_scheme, self.fingerprint_scheme)
        return "none" if self.weights_fingerprint == "none" else SCHEME_NAMES[MODULE_SCHEME]

    def to_json(self) -> dict[str, Any]:
        """The form stored in feature_set.json; ``fingerprint_scheme`` only when set, so a spec
        without one is stored as before it existed."""
        d = asdict(self)
        d["grid"] = list(self.grid)
        if d["fingerprint_scheme"] is None:
            del d["fingerprint_scheme"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureSetSpec:
        """Back from feature_set.json; unknown keys are ignored so newer files still open."""
        keys = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in keys})


@dataclass(frozen=True)
class WriteResult:
    """What one ``FeatureSetWriter.write`` call did with a batch, so callers can count progress
    and resumed (skipped) images separately."""

    accepted: int  # buffered for commit (committed by the time the writer is closed)
    skipped: int  # already committed earlier: not written again
