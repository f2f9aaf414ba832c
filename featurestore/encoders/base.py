"""The one interface every encoder implements."""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from featurestore.encoders.preprocess import Preprocessing
from featurestore.encoders.weights import WeightFiles
from featurestore.featureset import FeatureSetSpec
from featurestore.featureset.spec import FILES_SCHEME, MODULE_SCHEME


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
    #: The checkpoint files ``module`` was loaded from (set by the loader): the fingerprint is
    #: taken from them. None for a module built in memory, fingerprinted from its state_dict.
    weight_files: WeightFiles | None = None
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
        identity, so other weights under the same encoder name never share a feature set. Taken from
        the checkpoint files as stored (:class:`WeightFiles`), so that an upgrade of the library
        that builds the module cannot change it; from the module only when there are no files."""
        if self.module is None:
            return "none"
        if self.weight_files is not None:
            return self.weight_files.fingerprint()
        return self.legacy_fingerprint

    @property
    def fingerprint_scheme(self) -> str | None:
        """How :attr:`fingerprint` was computed: FILES_SCHEME, MODULE_SCHEME, or None without weights."""
        if self.module is None:
            return None
        return FILES_SCHEME if self.weight_files is not None else MODULE_SCHEME

    @functools.cached_property
    def legacy_fingerprint(self) -> str | None:
        """The fingerprint radstore recorded for these weights before it read them from the files
        (:func:`fingerprint_module`; None without weights): how a store written then finds its
        feature sets (:meth:`featurestore.store.Store.create_feature_set`). Computed on first use
        only, since it hashes the whole module."""
        return fingerprint_module(self.module) if self.module is not None else None

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
            fingerprint_scheme=self.fingerprint_scheme,
        )


def fingerprint_module(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer of the module in memory, in name order (scheme
    ``module-state-dict``): what radstore used before :class:`WeightFiles`. The names are the
    library's, which may change between its versions; kept to find feature sets written with it."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
