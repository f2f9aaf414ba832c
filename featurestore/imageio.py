"""Read a radiograph (DICOM, PNG, JPEG, TIFF) as float32 in [0, 1], bright = dense.

DICOM follows the standard display pipeline (pydicom does each step):
modality LUT / rescale -> VOI LUT or window (the first one in the file) -> scaled to [0, 1]
over the VOI output range -> MONOCHROME1 inverted. Without a VOI LUT or window, the default is
the image's own min..max after the modality LUT (documented choice: no clipping). Colour
images are converted to luminance; multi-frame files give their first frame.

PNG/TIFF at 8 or 16 bits and 8-bit JPEG are read with Pillow and scaled by their bit depth
(12-bit JPEG exists only inside DICOM, which pydicom decodes with pylibjpeg). A 16-bit PNG or
TIFF often carries fewer significant bits (a 12-bit detector's values 0..4095): it is scaled
by ``2**bits - 1`` where ``bits`` is, in order, the PNG's ``sBIT`` chunk when it declares one,
else the smallest of 10, 12, 14, 16 bits that holds the file's maximum value
(:func:`significant_bits`); ``depth_rule="container"`` divides by 65535 as radstore once did.
Which rule gave the depth is recorded (``ImageMeta.bits_rule``, the images table's
``bits_rule``): ``sBIT``, ``max-value``, ``container``, ``BitsStored`` (DICOM) or ``8-bit``.

``intensity="minmax"`` is the study's per-image rule (``--intensity minmax``): the stored values
(DICOM: the modality LUT's output, no VOI window) stretched over the image's own min..max, in
float64; with ``levels=255`` rounded (half to even) to the 8-bit grid there, from the integers,
so the uint8 image is exactly the one ``np.round((v - min) / (max - min) * 255)`` gives.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import fsspec
import numpy as np

from featurestore.errors import ImageReadError

FORMATS = ("dicom", "png", "jpeg", "tiff")
_EXT = {".dcm": "dicom", ".dicom": "dicom", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}


@dataclass(frozen=True)
class ImageMeta:
    """What ingest records about an image file: its decoded size and bit depth, photometric
    interpretation, and the sha256 and size of the file's bytes."""

    uri: str
    format: str
    height: int
    width: int
    bits_stored: int
    photometric: str
    sha256: str
    size_bytes: int
    bits_rule: str = "8-bit"  # where bits_stored came from (see the module docstring)


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image: float32 [H, W] pixels in [0, 1] (bright = dense) and its metadata."""

    pixels: np.ndarray  # float32 [H, W] in [0, 1]
    meta: ImageMeta


def sniff_format(data: bytes, uri: str = "") -> str | None:
    """Format from the file's magic bytes, else from its extension."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    for ext, fmt in _EXT.items():
        if uri.lower().endswith(ext):
            return fmt
    return None


def read_bytes(uri: str) -> bytes:
    """The whole file at ``uri`` (a path or fsspec URL); a missing file or a directory raises
    ImageReadError."""
    try:
        with fsspec.open(uri, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageReadError(uri, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(uri, "is a directory, not an image file") from None


def sha256_of(data: bytes) -> str:
    """Hex sha256 of an image file's bytes: how ingest tells a changed image from the one indexed."""
    return hashlib.sha256(data).hexdigest()


def read_image(uri: str, data: bytes | None = None, format: str | None = None, *, intensity: str = "window",
               depth_rule: str = "significant", levels: int | None = None) -> LoadedImage:  # fmt: skip
    """Decode one image (``intensity``, ``depth_rule``, ``levels``: see the module docstring).
    Raises ImageReadError naming the file and the reason."""
    minmax = (lambda a: _minmax(a, levels)) if intensity == "minmax" else None
    if data is None:
        data = read_bytes(uri)
    if not data:
        raise ImageReadError(uri, "file is empty")
    sniffed = sniff_format(data, uri)
    fmt = sniffed or (format.lower() if format else None)
    if fmt in ("dcm",):
        fmt = "dicom"
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in FORMATS:
        raise ImageReadError(
            uri, f"unsupported or unrecognised image format ({format or 'no format given'}); supported: {', '.join(FORMATS)}"
        )
    try:
        if fmt == "dicom":
            pixels, bits, photometric, rule = _decode_dicom(data, minmax)
        else:
            pixels, bits, photometric, rule = _decode_pillow(data, depth_rule, minmax)
    except ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001
        if type(e).__name__ == "UnidentifiedImageError":
            raise ImageReadError(uri, f"corrupt {fmt} file: its content is not a {fmt} image Pillow can identify") from None
        raise ImageReadError(uri, f"corrupt or truncated {fmt} file: {type(e).__name__}: {e}") from None
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise ImageReadError(uri, f"decoded to shape {pixels.shape}, not a 2-D image")
    if not np.isfinite(pixels).all():
        raise ImageReadError(uri, "decoded pixels contain NaN or Inf")
    meta = ImageMeta(
        uri=uri,
        format=fmt,
        height=int(pixels.shape[0]),
        width=int(pixels.shape[1]),
        bits_stored=int(bits),
        photometric=photometric,
        sha256=sha256_of(data),
        size_bytes=len(data),
        bits_rule=rule,
    )
    return LoadedImage(pixels=pixels, meta=meta)


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    arr = arr.astype(np.float32, copy=False)
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    out = (arr - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _minmax(arr: np.ndarray, levels: int | None) -> np.ndarray:
    """The stored values over their own min..max, in float64 (on ``levels`` steps when given)."""
    a = np.asarray(arr, dtype=np.float64)
    lo, hi = a.min(), a.max()
    out = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if levels:
        out = np.round(out * levels) / levels
    return out.astype(np.float32)


Stretch = Callable[[np.ndarray], np.ndarray] | None


def _decode_dicom(data: bytes, minmax: Stretch = None) -> tuple[np.ndarray, int, str, str]:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError("DICOM file has no pixel data")
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    spp = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if spp > 1:
        # pydicom returns RGB (YBR converted); radiographs are greyscale: take luminance.
        rgb = arr.astype(np.float32)
        lum = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return (minmax(lum) if minmax else _scale(lum, 0.0, float(2**bits - 1))), bits, photometric, "BitsStored"
    m = apply_modality_lut(arr, ds)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if minmax is not None:
        out = minmax(m)
    elif has_voi:
        v = apply_voi_lut(m, ds, index=0, prefer_lut=True)
        # The VOI output range, found by sending the extremes of the input range through it.
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        raw_ext = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
        ext = apply_voi_lut(apply_modality_lut(raw_ext, ds).astype(np.float64), ds, index=0, prefer_lut=True)
        lo, hi = float(np.min(ext)), float(np.max(ext))
        if not hi > lo:  # degenerate windows exist in the wild: fall back to the data's range
            lo, hi = float(np.min(v)), float(np.max(v))
        out = _scale(v, lo, hi)
    else:
        out = _scale(m, float(np.min(m)), float(np.max(m)))
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out, bits, photometric, "BitsStored"


def _decode_pillow(data: bytes, depth_rule: str = "significant", minmax: Stretch = None) -> tuple[np.ndarray, int, str, str]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N") or mode == "I":
            arr = np.asarray(im, dtype=np.int64 if mode == "I" else np.uint16)
            if mode == "I" and arr.max(initial=0) <= 255 and arr.min(initial=0) >= 0:
                bits, rule, top = 8, "8-bit", 255
            elif depth_rule == "container":
                bits, rule, top = 16, "container", 65535
            else:
                bits, rule = significant_bits(arr, png_sbit(data))
                top = 2**bits - 1
            return (minmax(arr) if minmax else _scale(arr, 0.0, float(top))), bits, "MONOCHROME2", rule
        if mode == "F":
            arr = np.asarray(im, dtype=np.float32)
            return (minmax or (lambda a: _scale(a, float(a.min()), float(a.max()))))(arr), 32, "MONOCHROME2", "min-max"
        if mode == "1":
            return np.asarray(im, dtype=np.float32), 1, "MONOCHROME2", "1-bit"
        photometric = "MONOCHROME2" if mode == "L" else mode
        if mode != "L":
            im = im.convert("L")
        arr = np.asarray(im, dtype=np.uint8)
        return (minmax(arr) if minmax else _scale(arr, 0.0, 255.0)), 8, photometric, "8-bit"


#: Depths a 16-bit container's data is assumed to have when the file does not say (detectors
#: digitise at 10, 12, 14 or 16 bits).
INFERRED_DEPTHS = (10, 12, 14, 16)


def significant_bits(arr: np.ndarray, sbit: int | None) -> tuple[int, str]:
    """(bits, rule) for a 16-bit image: the file's declared ``sBIT`` when it has one (and the data
    fit in it), else the smallest of :data:`INFERRED_DEPTHS` holding the maximum value."""
    top = int(arr.max(initial=0))
    if sbit is not None and 1 <= sbit <= 16 and top < 2**sbit:
        return sbit, "sBIT"
    return next(b for b in INFERRED_DEPTHS if top < 2**b), "max-value"


def png_sbit(data: bytes) -> int | None:
    """The significant bits a PNG declares in its ``sBIT`` chunk (the grey or the largest colour
    channel's), or None when it has none or is not a PNG. Pillow does not expose the chunk, so
    the chunk list before the image data is walked here (length, type, body, crc each)."""
    import struct

    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"sBIT" and length >= 1:
            body = data[pos + 8 : pos + 8 + length]
            return max(body[: 3 if length >= 3 else 1])
        if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
            return None
        pos += 12 + length
    return None
