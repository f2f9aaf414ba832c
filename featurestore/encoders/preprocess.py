"""Encoder input preprocessing: part of a feature set's identity.

Input is the reader's float32 [0, 1] greyscale image. Steps, each a field of
:class:`Preprocessing`: the intensity rule (``window``: the reader's display pipeline as is;
``minmax``: the study's per-image min-max stretch), optional 8-bit quantisation (``bits=8``
reproduces what a Hugging Face or open_clip image processor sees when fed an 8-bit export;
``bits=16`` keeps the full depth), resize (``shortest_edge_crop``: shortest edge to
``resize_to`` then centre crop ``size``, as RAD-DINO's and BiomedCLIP's processors;
``squash``: plain resize to ``size`` x ``size``, as SigLIP's), bicubic with antialiasing,
replication to 3 channels, normalisation.

An 8-bit input is resized by the library its model's processor resizes with
(:attr:`Preprocessing.resampler`: torchvision for transformers' image processors, Pillow for
open_clip's); a 16-bit input by torch's antialiased interpolation in float, which agrees with
both kernels up to their 8-bit rounding.
The geometry rounds as the models' own processors do, so the same pixels reach the model:
the resized long edge is ``int(edge * long / short)`` (transformers'
``get_resize_output_image_size`` and torchvision's ``Resize`` both truncate) and the crop
offset is floored (transformers' ``center_crop``) or rounded half to even (torchvision's
``CenterCrop``, which open_clip uses), per :attr:`Preprocessing.crop_offset`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from featurestore.config import INTENSITIES

if TYPE_CHECKING:
    from featurestore.imageio import Decoded

RESIZE_MODES = ("shortest_edge_crop", "squash")
#: How the resized long edge and the crop offset round: "floor" (truncate) or "round" (Python's round).
ROUNDINGS = ("floor", "round")
#: How a 16-bit PNG/TIFF maps to [0, 1]: ``significant`` (sBIT, else inferred from the maximum,
#: see :func:`featurestore.imageio.significant_bits`) or ``container`` (divide by 65535).
DEPTH_RULES = ("significant", "container")
#: Values a record written before a field existed was made with: read back as such, so an old
#: feature set describes what it did and keeps its id.
LEGACY = {"long_edge": "round", "crop_offset": "floor", "intensity": "window", "depth_rule": "container", "resampler": "torch"}
#: Who resizes an 8-bit input, as the model's own processor does: ``torchvision`` (transformers'
#: default image processors resize the uint8 tensor with ``torchvision...functional.resize``,
#: antialiased), ``pil`` (open_clip's transform and transformers' ``*Pil`` processors hand a PIL
#: image to ``Image.resize``: two passes, each rounded to 8 bits and clipped) or ``torch`` (one
#: float pass; what 16-bit input always gets, and what radstore once did).
RESAMPLERS = ("torchvision", "pil", "torch")


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
    long_edge: str = "floor"  # the resized long edge: truncated, as transformers and torchvision
    crop_offset: str = "floor"  # "floor": transformers' center_crop; "round": torchvision's CenterCrop
    intensity: str = "window"
    depth_rule: str = "significant"
    resampler: str = "torchvision"  # who resizes 8-bit input (RESAMPLERS); 16-bit input: always torch

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.bits not in (8, 16):
            raise ValueError(f"bits must be 8 or 16, got {self.bits}")
        for name, allowed in (("long_edge", ROUNDINGS), ("crop_offset", ROUNDINGS), ("intensity", INTENSITIES),
                              ("depth_rule", DEPTH_RULES), ("resampler", RESAMPLERS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.size < 8:
            raise ValueError(f"input size {self.size} is too small")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def with_overrides(self, size: int | None = None, bits: int | None = None, intensity: str | None = None) -> Preprocessing:
        """The study's ablations: another input resolution, bit depth or intensity rule is another
        feature set."""
        out = self if intensity is None else replace(self, intensity=intensity)
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
        nh, nw = self.resized_shape(h, w)
        t = F.interpolate(t, size=(nh, nw), mode=mode, antialias=aa, align_corners=False if aa else None)
        top, left = self._offset(nh), self._offset(nw)
        return t[..., top : top + self.size, left : left + self.size]

    def resized_shape(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) after the resize step, before any crop."""
        if self.resize == "squash":
            return self.size, self.size
        edge = self.resize_to or self.size
        if self.long_edge == "round":  # records written before radstore matched the processors
            scale = edge / min(h, w)
            return max(edge, round(h * scale)), max(edge, round(w * scale))
        if h <= w:  # the libraries' own formula, float division then truncation
            return edge, int(edge * w / h)
        return int(edge * h / w), edge

    def _geometry_8bit(self, u8: torch.Tensor) -> torch.Tensor:
        """The resize and crop of an 8-bit [H, W] image by the library the model's processor uses
        (:data:`RESAMPLERS`), -> [size, size] float32 in [0, 1]."""
        return self._crop_8bit(u8).to(torch.float32) / 255.0

    def _crop_8bit(self, u8: torch.Tensor) -> torch.Tensor:
        """:meth:`_geometry_8bit` before the scaling: the [size, size] uint8 crop."""
        h, w = u8.shape
        nh, nw = self.resized_shape(h, w)
        if self.resampler == "pil":
            from PIL import Image

            im = Image.fromarray(u8.numpy(), "L").resize((nw, nh), resample=PIL_RESAMPLE[self.interpolation])
            out = torch.from_numpy(np.array(im))
        else:
            from torchvision.transforms.v2 import InterpolationMode
            from torchvision.transforms.v2 import functional as tvF

            mode = InterpolationMode.BICUBIC if self.interpolation == "bicubic" else InterpolationMode.BILINEAR
            out = tvF.resize(u8[None], [nh, nw], interpolation=mode, antialias=True)[0]
        top, left = (0, 0) if self.resize == "squash" else (self._offset(nh), self._offset(nw))
        return out[top : top + self.size, left : left + self.size]

    def _offset(self, n: int) -> int:
        if self.crop_offset == "round":
            return int(round((n - self.size) / 2.0))
        return (n - self.size) // 2

    def decode_options(self) -> dict[str, Any]:
        """What :func:`featurestore.imageio.read_image` needs to decode for this preprocessing."""
        levels = 255 if self.intensity == "minmax" and self.bits == 8 else None  # the study's uint8, exactly
        return {"intensity": self.intensity, "depth_rule": self.depth_rule, "levels": levels}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_json` output; unknown keys are ignored and a missing field takes the
        value radstore used before the field existed (:data:`LEGACY`), so an old record still
        loads and still describes the geometry its embeddings were made with."""
        keys = cls.__dataclass_fields__.keys()
        return cls(**{**LEGACY, **{k: v for k, v in d.items() if k in keys}})

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        """[H, W] float in [0, 1] -> normalised [3, size, size] float32."""
        t = torch.as_tensor(pixels, dtype=torch.float32)[None, None]
        if self.intensity == "minmax":  # the study's per-image stretch (before its uint8 cast)
            lo, hi = t.amin(), t.amax()
            t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
        if self.bits == 8 and self.resampler != "torch":
            t = self._geometry_8bit(torch.round(t[0, 0] * 255.0).to(torch.uint8))
        else:
            if self.bits == 8:
                t = torch.round(t * 255.0) / 255.0
            t = self.geometry(t, self.interpolation).clamp_(0.0, 1.0)[0, 0]
        return self._normalise(t)

    def prepare(self, decoded: Decoded, on_device: bool = False) -> torch.Tensor:
        """A decoded file -> the model input, equal to ``__call__`` on its decoded image, reading
        the 8-bit image through the reader's table (:meth:`featurestore.imageio.Decoded.uint8`)
        instead of rounding a float copy.

        ``on_device=False``: the normalised [3, size, size] float32. ``on_device=True``: the
        smallest array that still determines the input exactly, for :meth:`finish` on the
        device: 8-bit input resized by the processor's library gets its [size, size] uint8
        crop (that uint8 resize runs here, as the processor runs it on the CPU: a float resize
        on the GPU would differ from it by up to 2/255); otherwise the whole image, [H, W]
        uint8 (8-bit) or uint16 on the 0..65535 scale (16-bit), which :meth:`finish` resizes
        in float, the reference's own float operation."""
        if self.bits == 8 and self.resampler != "torch":
            crop = self._crop_8bit(torch.from_numpy(decoded.uint8(self.intensity, self.depth_rule)))
            return crop if on_device else self._normalise(crop.to(torch.float32) / 255.0)
        if not on_device:
            return self(decoded.image(**self.decode_options()).pixels)
        if self.bits == 8:  # __call__'s stretch is the identity on the reader's minmax output
            return torch.from_numpy(decoded.uint8(self.intensity, self.depth_rule))
        t = torch.from_numpy(decoded.image(**self.decode_options()).pixels)
        if self.intensity == "minmax":  # as __call__ stretches
            lo, hi = t.amin(), t.amax()
            t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
        return torch.round(t * 65535.0).to(torch.int32).to(torch.uint16)

    def finish(self, items: list[torch.Tensor], device: torch.device | str) -> torch.Tensor:
        """[B, 3, size, size] float32 on ``device`` from :meth:`prepare` items, the small integer
        arrays moved before anything is made float: a final [3, size, size] tensor is moved as
        is; a uint8 crop is normalised; a whole image is resized, cropped and normalised (the
        float steps of ``__call__``)."""
        device = torch.device(device)
        out = []
        for item in items:
            t = item.to(device, non_blocking=True)
            if t.ndim == 3:
                out.append(t.to(torch.float32))
                continue
            x = t.to(torch.float32) / (255.0 if t.dtype == torch.uint8 else 65535.0)
            if not (self.bits == 8 and self.resampler != "torch"):  # a uint8 image is on __call__'s 8-bit grid
                x = self.geometry(x[None, None], self.interpolation).clamp_(0.0, 1.0)[0, 0]
            out.append(self._normalise(x))
        return torch.stack(out)

    def _normalise(self, t: torch.Tensor) -> torch.Tensor:
        """[size, size] in [0, 1] -> [3, size, size] normalised by the model's mean and std."""
        t = t.expand(3, -1, -1)
        mean = torch.tensor(self.mean, device=t.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=t.device).view(3, 1, 1)
        return ((t - mean) / std).contiguous()


#: What the parity test (tests/featurestore/encoders/test_processor_parity.py) asserts of every
#: encoder whose registry entry names a reference processor; the README's encoder table says it.
PARITY = (
    "8-bit input (the default) equal to it: max difference < 1e-5 of the input range over 52 images "
    "(8/16-bit PNG, DICOM, 199-3000 px); `--bits 16` differs by design (up to 6/255)"
)


#: A transformers image processor's ``resample`` code -> the interpolation radstore uses.
RESAMPLE = {2: "bilinear", 3: "bicubic"}
PIL_RESAMPLE = {name: code for code, name in RESAMPLE.items()}  # Pillow's codes are the same numbers
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
