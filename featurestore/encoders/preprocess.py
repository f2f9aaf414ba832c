"""Encoder input preprocessing: part of a feature set's identity.

Input is the reader's float32 [0, 1] greyscale image. Steps, each a field of
:class:`Preprocessing`: optional 8-bit quantisation (``bits=8`` reproduces what a Hugging Face
image processor sees when fed an 8-bit export; ``bits=16`` keeps the full depth), resize
(``shortest_edge_crop``: shortest edge to ``resize_to`` then centre crop ``size``, as
RAD-DINO's processor; ``squash``: plain resize to ``size`` x ``size``, as the study ran
CheXagent), bicubic with antialiasing, replication to 3 channels, normalisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

RESIZE_MODES = ("shortest_edge_crop", "squash")


@dataclass(frozen=True)
class Preprocessing:
    """The steps from a [0, 1] greyscale image to an encoder's input; stored with the feature set and
    part of its identity, so changing any field makes a different feature set."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "shortest_edge_crop"
    resize_to: int | None = None  # shortest edge before the crop; default: size
    interpolation: str = "bicubic"
    bits: int = 8

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.bits not in (8, 16):
            raise ValueError(f"bits must be 8 or 16, got {self.bits}")
        if self.size < 8:
            raise ValueError(f"input size {self.size} is too small")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def with_overrides(self, size: int | None = None, bits: int | None = None) -> Preprocessing:
        """The study's ablations: another input resolution or bit depth is another feature set."""
        out = self
        if size is not None and size != self.size:
            # Keep the resize/crop ratio: RAD-DINO resizes the shortest edge to the crop size.
            ratio = (self.resize_to or self.size) / self.size
            out = replace(out, size=size, resize_to=round(size * ratio) if self.resize_to else None)
        if bits is not None:
            out = replace(out, bits=bits)
        return out

    def to_json(self) -> dict[str, Any]:
        """The fields as stored in feature_set.json (mean and std as lists); :meth:`from_json` reads it back."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def geometry(self, t: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """The resize/crop alone, on [N, C, H, W]: masks go through the same geometry as images."""
        h, w = t.shape[-2:]
        aa = mode in ("bilinear", "bicubic")
        if self.resize == "squash":
            return F.interpolate(t, size=(self.size, self.size), mode=mode, antialias=aa, align_corners=False if aa else None)
        edge = self.resize_to or self.size
        scale = edge / min(h, w)
        nh, nw = max(edge, round(h * scale)), max(edge, round(w * scale))
        t = F.interpolate(t, size=(nh, nw), mode=mode, antialias=aa, align_corners=False if aa else None)
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        return t[..., top : top + self.size, left : left + self.size]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_json` output; unknown keys are ignored and missing ones take their
        defaults, so records written by another version still load."""
        keys = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in keys})

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        """[H, W] float in [0, 1] -> normalised [3, size, size] float32."""
        t = torch.as_tensor(pixels, dtype=torch.float32)[None, None]
        if self.bits == 8:
            t = torch.round(t * 255.0) / 255.0
        t = self.geometry(t, self.interpolation).clamp_(0.0, 1.0)[0].expand(3, -1, -1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return ((t - mean) / std).contiguous()


#: A transformers image processor's ``resample`` code -> the interpolation radstore uses.
RESAMPLE = {2: "bilinear", 3: "bicubic"}
PROCESSOR_CONFIG = "preprocessor_config.json"


def from_processor_config(folder: Any, default: Preprocessing) -> Preprocessing:
    """The preprocessing a weights folder's own ``preprocessor_config.json`` describes (a
    transformers image processor's): mean and std; ``size: {shortest_edge}`` with a centre
    ``crop_size`` (BitImageProcessor, as RAD-DINO's) or ``size: {height, width}`` (a plain resize,
    as SiglipImageProcessor's); ``resample``. Fields it does not give keep ``default``'s, and
    ``bits`` is always ``default``'s. A folder without the file gets ``default`` with a warning
    naming it, since its model may have been trained with other statistics.
    """
    import json
    import warnings
    from pathlib import Path

    path = Path(folder) / PROCESSOR_CONFIG
    if not path.is_file():
        warnings.warn(
            f"{folder} has no {PROCESSOR_CONFIG}: using the documented defaults "
            f"(size {default.size}, mean {default.mean[0]:g}, std {default.std[0]:g}); add the file if the weights expect others",
            stacklevel=2,
        )
        return default
    cfg = json.loads(path.read_text())
    out = default
    if "image_mean" in cfg and "image_std" in cfg:
        out = replace(out, mean=tuple(cfg["image_mean"]), std=tuple(cfg["image_std"]))
    size, crop = cfg.get("size") or {}, cfg.get("crop_size") or {}
    if isinstance(size, dict) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        side = int(crop.get("height", edge)) if cfg.get("do_center_crop", True) else edge
        out = replace(out, resize="shortest_edge_crop", size=side, resize_to=None if edge == side else edge)
    elif isinstance(size, dict) and "height" in size:
        out = replace(out, resize="squash", size=int(size["height"]), resize_to=None)
    if cfg.get("resample") in RESAMPLE:
        out = replace(out, interpolation=RESAMPLE[cfg["resample"]])
    return out
