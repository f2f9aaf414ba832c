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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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
    return decode(uri, data, format).image(intensity, depth_rule, levels)


def decode(uri: str, data: bytes | None = None, format: str | None = None) -> Decoded:
    """Read and decode the file once, to its stored values: every intensity rule and depth rule
    is then a mapping of the same array (:class:`Decoded`), so a caller that needs one of them
    pays for the decode once and for the mapping as a table lookup. Raises ImageReadError naming
    the file and the reason, as :func:`read_image` does."""
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
    with _read_errors(uri, fmt):
        source = _parse_dicom(data) if fmt == "dicom" else _parse_pillow(data)
    if len(source.shape) != 2 or min(source.shape) < 2:
        raise ImageReadError(uri, f"decoded to shape {source.shape}, not a 2-D image")
    return Decoded(uri, fmt, data, source)


@contextmanager
def _read_errors(uri: str, fmt: str) -> Iterator[None]:
    """A decoder's exception -> ImageReadError naming the file, the format and the reason."""
    try:
        yield
    except ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001
        if type(e).__name__ == "UnidentifiedImageError":
            raise ImageReadError(uri, f"corrupt {fmt} file: its content is not a {fmt} image Pillow can identify") from None
        raise ImageReadError(uri, f"corrupt or truncated {fmt} file: {type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class _Source:
    """A file's decoded values before any intensity mapping: ``arr`` as the decoder returns it
    (DICOM: the first frame's stored values, RGB when colour; Pillow: the image's own array,
    other colour modes converted to luminance) and what the mapping needs."""

    arr: np.ndarray
    kind: str  # "dicom", or the Pillow mode family: "int" (16-bit or I), "F", "1", "L"
    bits: int = 8
    photometric: str = "MONOCHROME2"
    ds: Any = None  # the pydicom dataset (DICOM only)
    sbit: int | None = None  # the PNG's sBIT (Pillow only)
    colour: bool = False  # DICOM with several samples per pixel (RGB)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.arr.shape[:-1]) if self.colour else tuple(self.arr.shape)


class Decoded:
    """One decoded file: its stored values plus what is needed to map them, and the mapped images
    it has been asked for. :meth:`image` gives exactly what :func:`read_image` gives for the same
    options; for integer data of at most 16 bits (greyscale DICOM, 8/16-bit PNG/TIFF, JPEG) it
    maps the values through a table built by the same float pipeline run on every value the
    container can hold (each step is per pixel, so the table's entry is the pixel's result, bit
    for bit), cached per setting. Float, colour and wider data take the per-pixel path."""

    def __init__(self, uri: str, fmt: str, data: bytes, source: _Source) -> None:
        self.uri, self.format, self._data, self._src = uri, fmt, data, source
        self._tables: dict[tuple, np.ndarray] = {}
        self._sha: str | None = None

    @property
    def meta(self) -> ImageMeta:
        """The file's metadata as ``read_image`` records it with the default depth rule."""
        return self._meta(*self._depth("significant")[:2])

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return self._src.shape  # type: ignore[return-value]

    @property
    def dataset(self) -> Any:
        """The parsed pydicom dataset (DICOM only; None otherwise): its header holds what ingest
        records beyond the pixels (:mod:`featurestore.attributes`) without parsing the file again."""
        return self._src.ds

    def image(self, intensity: str = "window", depth_rule: str = "significant", levels: int | None = None) -> LoadedImage:
        """float32 [H, W] in [0, 1], bit-identical to ``read_image`` with the same options."""
        bits, rule, _ = self._depth(depth_rule)
        table = self._table(intensity, depth_rule, levels)
        if table is not None:
            pixels = np.take(table, self._index())
        else:
            with _read_errors(self.uri, self.format):
                pixels = self._float_image(intensity, depth_rule, levels)
            if not np.isfinite(pixels).all():
                raise ImageReadError(self.uri, "decoded pixels contain NaN or Inf")
        return LoadedImage(pixels=pixels, meta=self._meta(bits, rule))

    def uint8(self, intensity: str = "window", depth_rule: str = "significant") -> np.ndarray:
        """uint8 [H, W]: the image on the 8-bit grid, exactly ``np.round(image * 255)`` (``minmax``:
        of the ``levels=255`` image, the study's exact uint8), by a table lookup for integer data."""
        levels = 255 if intensity == "minmax" else None
        key = ("uint8", intensity, depth_rule, levels)
        table = self._tables.get(key)
        if table is None:
            base = self._table(intensity, depth_rule, levels)
            if base is None:
                return np.round(self.image(intensity, depth_rule, levels).pixels * 255).astype(np.uint8)
            table = self._tables[key] = np.round(base * 255).astype(np.uint8)
        return np.take(table, self._index())

    # -- the per-pixel path (today's pipeline, also what the tables are built with) --

    def _float_image(self, intensity: str, depth_rule: str, levels: int | None, values: np.ndarray | None = None,
                     extrema: Callable[[np.ndarray], tuple[float, float]] | None = None) -> np.ndarray:  # fmt: skip
        """The mapping of ``values`` (default: the image), with min..max over the image given by
        ``extrema`` (default: of ``values`` themselves)."""
        src = self._src
        arr = src.arr if values is None else values
        ext = extrema or (lambda a: (float(np.min(a)), float(np.max(a))))
        minmax = (lambda a: _minmax(a, levels, *ext(a))) if intensity == "minmax" else None
        if src.kind == "dicom":
            return _map_dicom(src, arr, minmax, ext)
        if src.kind == "int":
            if minmax:
                return minmax(arr)
            return _scale(arr, 0.0, float(self._depth(depth_rule)[2]))
        if src.kind == "F":
            return (minmax or (lambda a: _scale(a, *ext(a))))(arr)
        if src.kind == "1":
            return arr.astype(np.float32)
        return minmax(arr) if minmax else _scale(arr, 0.0, 255.0)

    def _depth(self, depth_rule: str) -> tuple[int, str, int]:
        """(bits, rule, the value that maps to 1) for ``depth_rule``."""
        key = ("depth", depth_rule)
        if key not in self._tables:
            self._tables[key] = self._find_depth(depth_rule)  # type: ignore[assignment]
        return self._tables[key]  # type: ignore[return-value]

    def _find_depth(self, depth_rule: str) -> tuple[int, str, int]:
        src = self._src
        if src.kind != "int":
            rule = {"dicom": "BitsStored", "F": "min-max", "1": "1-bit"}.get(src.kind, "8-bit")
            return src.bits, rule, 2**src.bits - 1
        top = int(src.arr.max(initial=0))
        if src.arr.dtype != np.uint16 and top <= 255 and int(src.arr.min(initial=0)) >= 0:
            return 8, "8-bit", 255
        if depth_rule == "container":
            return 16, "container", 65535
        bits, rule = significant_bits(src.arr, src.sbit)
        return bits, rule, 2**bits - 1

    def _meta(self, bits: int, rule: str) -> ImageMeta:
        if self._sha is None:
            self._sha = sha256_of(self._data)
        src = self._src
        photometric = src.photometric if src.kind in ("dicom", "L") else "MONOCHROME2"
        h, w = self.shape
        return ImageMeta(uri=self.uri, format=self.format, height=int(h), width=int(w), bits_stored=int(bits),
                         photometric=photometric, sha256=self._sha, size_bytes=len(self._data), bits_rule=rule)  # fmt: skip

    # -- the table path --

    def _lookup_dtype(self) -> np.dtype | None:
        """The unsigned type indexing the table (the stored values' bit patterns), or None when
        no table applies (float, colour or wider than 16 bits)."""
        a = self._src.arr
        if self._src.colour or self._src.kind == "1" or a.ndim != 2:
            return None
        if a.dtype.kind not in "ui" or a.dtype.itemsize > 2 or not a.dtype.isnative:
            return None
        return np.dtype(f"uint{8 * a.dtype.itemsize}")

    def _index(self) -> np.ndarray:
        a = self._src.arr
        return a.view(self._lookup_dtype())

    def _table(self, intensity: str, depth_rule: str, levels: int | None) -> np.ndarray | None:
        """float32 [2**bits] image of every value the container can hold, or None when no table
        applies."""
        udt = self._lookup_dtype()
        if udt is None:
            return None
        key = ("float", intensity, depth_rule if self._src.kind == "int" else None, levels)
        table = self._tables.get(key)
        if table is None:
            domain = np.arange(2 ** (8 * udt.itemsize), dtype=udt).view(self._src.arr.dtype)
            with _read_errors(self.uri, self.format):
                table = self._float_image(intensity, depth_rule, levels, domain, self._image_extrema)
            if not np.isfinite(table).all():  # only entries the image uses matter
                if not np.isfinite(table[self._present()]).all():
                    raise ImageReadError(self.uri, "decoded pixels contain NaN or Inf")
            self._tables[key] = table
        return table

    def _present(self) -> np.ndarray:
        """Which container values occur in the image (boolean over the table's index)."""
        if "present" not in self._tables:
            idx = self._index()
            self._tables["present"] = np.bincount(idx.ravel(), minlength=2 ** (8 * idx.itemsize)) > 0
        return self._tables["present"]

    def _image_extrema(self, table_values: np.ndarray) -> tuple[float, float]:
        """min and max over the image of a per-value mapping given on the whole table domain: over
        the values the image holds."""
        used = table_values[self._present()]
        return float(np.min(used)), float(np.max(used))


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    arr = arr.astype(np.float32, copy=False)
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    out = (arr - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _minmax(arr: np.ndarray, levels: int | None, lo: float, hi: float) -> np.ndarray:
    """The stored values over the image's min..max (``lo``, ``hi``), in float64 (on ``levels``
    steps when given)."""
    a = np.asarray(arr, dtype=np.float64)
    out = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if levels:
        out = np.round(out * levels) / levels
    return out.astype(np.float32)


Stretch = Callable[[np.ndarray], np.ndarray] | None


#: Decoders pydicom should use for a transfer syntax when installed, fastest first: CharLS
#: (pyjpegls) decodes JPEG-LS several times faster than libjpeg, pydicom's first choice.
PREFERRED_PLUGINS = {"1.2.840.10008.1.2.4.80": ("pyjpegls", "jpeg_ls"), "1.2.840.10008.1.2.4.81": ("pyjpegls", "jpeg_ls")}


def _preferred_plugin(ds: Any) -> str:
    """The pydicom decoding plugin to ask for (empty: pydicom's own choice)."""
    import importlib.util

    uid = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    plugin, module = PREFERRED_PLUGINS.get(uid, ("", None))
    return plugin if module and importlib.util.find_spec(module) is not None else ""


def _parse_dicom(data: bytes) -> _Source:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError("DICOM file has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    # Only the first frame is used, so only it is decoded; and by the fastest decoder installed.
    ds.pixel_array_options(index=0 if frames > 1 else None, decoding_plugin=_preferred_plugin(ds))
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    colour = int(ds.get("SamplesPerPixel", 1)) > 1
    return _Source(arr=arr, kind="dicom", bits=bits, photometric=photometric, ds=ds, colour=colour)


def _map_dicom(src: _Source, arr: np.ndarray, minmax: Stretch, extrema: Callable[[np.ndarray], tuple[float, float]]) -> np.ndarray:
    """The display pipeline on ``arr`` (the image's stored values, or every value a table holds)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds, bits = src.ds, src.bits
    if src.colour:
        # pydicom returns RGB (YBR converted); radiographs are greyscale: take luminance.
        rgb = arr.astype(np.float32)
        lum = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return minmax(lum) if minmax else _scale(lum, 0.0, float(2**bits - 1))
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
            lo, hi = extrema(v)
        out = _scale(v, lo, hi)
    else:
        out = _scale(m, *extrema(m))
    if src.photometric == "MONOCHROME1":
        out = 1.0 - out
    return out


def _parse_pillow(data: bytes) -> _Source:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N") or mode == "I":
            arr = np.asarray(im, dtype=np.int64 if mode == "I" else np.uint16)
            return _Source(arr=arr, kind="int", sbit=png_sbit(data))
        if mode == "F":
            return _Source(arr=np.asarray(im, dtype=np.float32), kind="F", bits=32)
        if mode == "1":
            return _Source(arr=np.asarray(im), kind="1", bits=1)
        photometric = "MONOCHROME2" if mode == "L" else mode
        if mode != "L":
            im = im.convert("L")
        return _Source(arr=np.asarray(im, dtype=np.uint8), kind="L", photometric=photometric)


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
