"""The one interface every encoder implements."""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from featurestore.encoders.preprocess import Preprocessing
from featurestore.featureset import FeatureSetSpec


@dataclass
class EmbedOutput:
    """What ``embed`` returns for a batch: the global vector, the patch grid and any further global
    vectors the feature set stores as extra columns (named as in ``extra_globals``)."""

    global_: torch.Tensor  # [B, D]
    patches: torch.Tensor  # [B, C, H, W]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # other global vectors [B, d]


class Encoder(ABC):
    """An encoder: its preprocessing, output dimensions, weights fingerprint and ``embed``."""

    name: str
    preprocessing: Preprocessing
    global_dim: int
    grid: tuple[int, int, int]
    labels: dict[str, Any]
    extra_globals: dict[str, int] = {}
    device: torch.device = torch.device("cpu")
    module: torch.nn.Module | None = None  # the weights; None for weight-free controls
    #: Manifest columns :meth:`input_for` reads besides the pixels (a mask column's paths arrive
    #: resolved); empty for every encoder of images.
    manifest_columns: tuple[str, ...] = ()

    def input_for(self, pixels: Any, row: dict[str, Any]) -> torch.Tensor:
        """One image's input to :meth:`embed`: its pixels preprocessed. ``row`` holds the image_id
        and the :attr:`manifest_columns` (the positive control builds its input from them)."""
        return self.preprocessing(pixels)

    @abstractmethod
    def embed(self, batch: torch.Tensor) -> EmbedOutput:
        """``batch`` [B, 3, S, S] (preprocessed, on ``self.device``) -> global and patch embeddings."""

    @functools.cached_property
    def fingerprint(self) -> str:
        """Short hash of the loaded weights ("none" for a weight-free control): part of the feature set's
        identity, so other weights under the same encoder name never share a feature set."""
        return fingerprint_module(self.module) if self.module is not None else "none"

    def to(self, device: torch.device | str) -> Encoder:
        """Move the weights to ``device`` and remember it as where ``embed`` expects its batches; returns
        self, for chaining."""
        self.device = torch.device(device)
        if self.module is not None:
            self.module.to(self.device)
        return self

    def to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, H*W, C] -> [B, C, H, W], checking they form this encoder's grid."""
        b, n, c = tokens.shape
        _, h, w = self.grid
        if n != h * w or c != self.grid[0]:
            raise RuntimeError(f"{self.name}: {n} tokens of width {c} do not form the expected {self.grid} grid")
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    def spec(self, dtype: str = "float16") -> FeatureSetSpec:
        """The feature set this encoder's output goes into, stored as ``dtype``: the same encoder,
        weights and preprocessing always give the same feature set id."""
        return FeatureSetSpec(
            encoder=self.name,
            weights_fingerprint=self.fingerprint,
            grid=self.grid,
            global_dim=self.global_dim,
            preprocessing=self.preprocessing.to_json(),
            dtype=dtype,
            extra_globals=dict(self.extra_globals),
            labels=dict(self.labels),
        )


def fingerprint_module(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, in name order: the same weights, the same id."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
