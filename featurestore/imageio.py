"""Read a radiograph (DICOM, PNG, JPEG, TIFF) as float32 in [0, 1], bright = dense.

DICOM follows the standard display pipeline (pydicom does each step):
modality LUT / rescale -> VOI LUT or window (the first one in the file) -> scaled to [0, 1]
over the VOI output range -> MONOCHROME1 inverted. Without a VOI LUT or window, the default is
the image's own min..max after the modality LUT (documented choice: no clipping). Colour
images are converted to luminance; multi-frame files give their first frame.

PNG/TIFF at 8 or 16 bits and 8-bit JPEG are read with Pillow and scaled by their bit depth
(12-bit JPEG exists only inside DICOM, which pydicom decodes with pylibjpeg).
"""

from __future__ import annotations

import hashlib
import io
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


def read_image(uri: str, data: bytes | None = None, format: str | None = None) -> LoadedImage:
    """Decode one image. Raises ImageReadError naming the file and the reason."""
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
            pixels, bits, photometric = _decode_dicom(data)
        else:
            pixels, bits, photometric = _decode_pillow(data)
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
    )
    return LoadedImage(pixels=pixels, meta=meta)


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    arr = arr.astype(np.float32, copy=False)
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    out = (arr - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _decode_dicom(data: bytes) -> tuple[np.ndarray, int, str]:
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
        return _scale(lum, 0.0, float(2**bits - 1)), bits, photometric
    m = apply_modality_lut(arr, ds)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
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
    return out, bits, photometric


def _decode_pillow(data: bytes) -> tuple[np.ndarray, int, str]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            arr = np.asarray(im, dtype=np.uint16)
            return _scale(arr, 0.0, 65535.0), 16, "MONOCHROME2"
        if mode == "I":
            arr = np.asarray(im, dtype=np.int64)
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
            return _scale(arr, 0.0, top), 16 if top > 255 else 8, "MONOCHROME2"
        if mode == "F":
            arr = np.asarray(im, dtype=np.float32)
            return _scale(arr, float(arr.min()), float(arr.max())), 32, "MONOCHROME2"
        if mode == "1":
            return np.asarray(im, dtype=np.float32), 1, "MONOCHROME2"
        if mode != "L":
            im = im.convert("L")
        return _scale(np.asarray(im, dtype=np.uint8), 0.0, 255.0), 8, "MONOCHROME2" if mode == "L" else mode
