"""The ``int8`` storage dtype of patch grids: symmetric quantisation per image and channel.

A feature set stored as ``int8`` keeps each grid ``x[C, H, W]`` as

    scale[c] = max |x[c, :, :]| / 127        (0 for a channel of zeros)
    q[c]     = clip(round(x[c] / scale[c]), -127, 127)      (x / 1 where scale[c] is 0)

computed in float32 (rounding half to even), and ``scale`` ([C] float32) in the row's cls
part, the ``scales`` column (:data:`SCALES`). The cls part is written after the grid and is the
commit point, so a row's scales are committed atomically with it. Every grid read returns the
dequantised ``x' = q * scale`` as float32 (or into a float16/float32 ``out`` the caller gives),
so heads, evaluation and analysts never see the raw codes; per channel ``|x - x'| <= scale / 2``
(exact arithmetic; float32 adds a relative ~1e-7), i.e. at most 1/254 of that channel's
largest magnitude in that image.

Bytes per image: ``C*H*W`` for the grid plus ``4*C`` for the scales, against ``4*C*H*W`` as
float32: ``0.25 + 1/(H*W)`` of it (0.254 for a 16x16 grid, 0.251 for 37x37).

-128 is never a code, so it is the array's fill value: a grid a cls part promises but storage
lacks reads as -128 and becomes NaN when dequantised, which the read paths' presence check
(:meth:`~featurestore.featureset.grids.GridReader.require_present`) reports as for float sets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from featurestore.layout.schemas import SCALES_COLUMN

#: The storage dtype this module serves.
INT8 = "int8"
#: Largest code magnitude: codes are symmetric, -QMAX..QMAX.
QMAX = 127
#: The array's fill value: never a code, so a never-written grid is recognisable.
FILL = -128
#: The cls part's column holding each row's per-channel scales.
SCALES = SCALES_COLUMN
#: What grids of an int8 set are read as when the caller gives no ``out`` buffer.
READ_DTYPE = "float32"


def is_quantized(dtype: str) -> bool:
    """Whether a store dtype keeps codes plus scales rather than the values themselves."""
    return dtype == INT8


def quantize_into(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> None:
    """Quantise float grids ``x`` [B, C, H, W] into int8 ``q`` and float32 ``scales`` [B, C].

    ``q`` and ``scales`` may live on another device than ``x`` (the writer's CPU buffers for
    a GPU batch): the arithmetic happens on ``x``'s device, only codes and scales are copied.
    """
    xf = x.float()
    amax = xf.abs().amax(dim=(2, 3))
    s = amax / QMAX
    div = torch.where(s > 0, s, torch.ones_like(s))[:, :, None, None]
    codes = torch.round(xf / div).clamp_(-QMAX, QMAX)
    q.copy_(codes)
    scales.copy_(s)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, float32 scales [B, C]) of float grids ``x`` [B, C, H, W], on ``x``'s device."""
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scales = torch.empty(x.shape[:2], dtype=torch.float32, device=x.device)
    quantize_into(x, q, scales)
    return q, scales


def dequantize(q: np.ndarray, scales: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``q * scales`` per channel as float32 (or into float16/float32 ``out``); grids stored as
    the fill value (never written) come back as NaN, so the presence checks catch them."""
    if out is None:
        out = np.empty(q.shape, np.dtype(READ_DTYPE))
    if not len(q):
        return out
    # (np.require copies only an array torch cannot wrap: read-only, e.g. Arrow's, or strided)
    s = torch.from_numpy(np.require(scales, np.float32, ["C", "W"]))[:, :, None, None]
    qt = torch.from_numpy(np.require(q, np.int8, ["C", "W"]))
    o = torch.from_numpy(out) if out.flags.c_contiguous else None
    if o is not None and out.dtype == np.float32:
        torch.mul(qt, s, out=o)
    elif o is not None:
        o.copy_(qt * s)
    else:
        out[...] = (qt * s).numpy()
    missing = np.flatnonzero(q[:, 0, 0, 0] == FILL)
    if len(missing):
        out[missing] = np.nan
    return out


class DequantizedRows:
    """Rows of int8 codes (e.g. a memory-mapped shard) that dequantise when indexed.

    What ``map_rows`` hands out for an int8 set: like the memory map of a float set, nothing
    is read or converted until the caller indexes a row, and then only that row.
    """

    def __init__(self, codes: np.ndarray, scales: np.ndarray):
        self.codes = codes
        self.scales = scales
        self.shape = codes.shape
        self.dtype = np.dtype(READ_DTYPE)
        self.ndim = codes.ndim

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return dequantize(self.codes[key][None], self.scales[key][None])[0]
        key = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        return dequantize(self.codes[key], self.scales[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self[np.arange(len(self))]
        return a if dtype is None else a.astype(dtype)
