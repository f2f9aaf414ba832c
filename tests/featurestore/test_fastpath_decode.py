"""The decode-once reader (:func:`featurestore.imageio.decode`): its table lookup gives the
per-pixel pipeline's image bit for bit, and pydicom's own display pipeline is the oracle.

Known answers: pydicom's ``apply_modality_lut`` / ``apply_voi_lut`` run on the whole image (the
path radstore took before the tables), for every DICOM variant the tables must cover (MONOCHROME1
and 2, rescale, window, VOI LUT sequence, modality LUT sequence, signed data, no window) and for
pydicom's own sample files; numpy's rounding for the 8-bit image.
"""

from __future__ import annotations

import io
import itertools
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian

from featurestore.errors import ImageReadError
from featurestore.imageio import decode, read_image

OPTIONS = [  # (intensity, depth_rule, levels)
    ("window", "significant", None), ("window", "container", None), ("minmax", "significant", None), ("minmax", "significant", 255),
]  # fmt: skip


def _dicom(stored: np.ndarray, signed: bool = False, bits: int = 12, photometric: str = "MONOCHROME2", **elements) -> bytes:
    """An uncompressed DICOM of ``stored`` with the given display elements (e.g. RescaleSlope)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, "1.2.3"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    for k, v in elements.items():
        setattr(ds, k, v)
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _lut_item(first: int, values: np.ndarray, bits: int = 16) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(values), first, bits])  # LUT Descriptor
    item.add_new(0x00283006, "US", [int(v) for v in values])  # LUT Data
    return item


def _pydicom_window(data: bytes) -> np.ndarray:
    """The oracle: pydicom's modality + VOI on the whole image, scaled over the VOI output range of
    the stored range's extremes, MONOCHROME1 inverted."""
    ds = pydicom.dcmread(io.BytesIO(data))
    arr = ds.pixel_array
    v = apply_voi_lut(apply_modality_lut(arr, ds), ds, index=0, prefer_lut=True)
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    raw = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    ext = apply_voi_lut(apply_modality_lut(raw, ds).astype(np.float64), ds, index=0, prefer_lut=True)
    lo, hi = float(ext.min()), float(ext.max())
    out = np.clip((v.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    return 1.0 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


def _pydicom_minmax(data: bytes, levels: int | None) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(data))
    m = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    out = (m - m.min()) / (m.max() - m.min())
    out = (np.round(out * levels) / levels if levels else out).astype(np.float32)
    return 1.0 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out  # bright = dense


RNG = np.random.default_rng(0)
U12 = RNG.integers(0, 4096, (40, 56))
S16 = RNG.integers(-2000, 3000, (40, 56))
VARIANTS = {
    "mono2-rescale-window": _dicom(U12, RescaleSlope=0.5, RescaleIntercept=-1024, WindowCenter=-300, WindowWidth=900),
    "mono1-window": _dicom(U12, photometric="MONOCHROME1", WindowCenter=2000, WindowWidth=3000),
    "negative-slope": _dicom(U12, RescaleSlope=-2.0, RescaleIntercept=100, WindowCenter=-3000, WindowWidth=5000),
    "signed-window": _dicom(S16, signed=True, bits=16, RescaleSlope=1, RescaleIntercept=0, WindowCenter=500, WindowWidth=2500),
    "signed-mono1": _dicom(S16, signed=True, bits=16, photometric="MONOCHROME1", WindowCenter=0, WindowWidth=4000),
    "voi-lut-sequence": _dicom(U12, VOILUTSequence=[_lut_item(100, np.linspace(0, 65535, 3000).astype(int))]),
    "modality-lut-sequence": _dicom(
        U12, ModalityLUTSequence=[_lut_item(50, (np.sin(np.arange(4000) / 300) + 1) * 3000)], WindowCenter=3000, WindowWidth=4000
    ),  # fmt: skip
    "no-window": _dicom(U12, RescaleSlope=2.0, RescaleIntercept=-7),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_tables_equal_pydicoms_pipeline_on_every_pixel(name):
    data = VARIANTS[name]
    d = decode(name + ".dcm", data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of a VOI LUT applied to rescaled floats
        if "WindowCenter" in pydicom.dcmread(io.BytesIO(data)) or "VOILUTSequence" in pydicom.dcmread(io.BytesIO(data)):
            np.testing.assert_array_equal(d.image().pixels, _pydicom_window(data))
        for levels in (None, 255):
            np.testing.assert_array_equal(d.image("minmax", levels=levels).pixels, _pydicom_minmax(data, levels))
        for opts in OPTIONS:
            np.testing.assert_array_equal(d.image(*opts).pixels, d._float_image(*opts), err_msg=str(opts))
    assert ("float", "window", None, None) in d._tables, "the table path was not taken"


@pytest.mark.parametrize("name", ["mono2-rescale-window", "signed-mono1", "no-window"])
def test_uint8_is_the_rounded_image(name):
    d = decode("x.dcm", VARIANTS[name])
    np.testing.assert_array_equal(d.uint8(), np.round(d.image().pixels * 255).astype(np.uint8))
    minmax = d.image("minmax", levels=255).pixels
    np.testing.assert_array_equal(d.uint8("minmax"), np.round(minmax * 255).astype(np.uint8))
    np.testing.assert_array_equal(d.uint8("minmax"), np.round(_pydicom_minmax(VARIANTS[name], None) * 255).astype(np.uint8))


@pytest.mark.slow
def test_pydicom_samples_equal_the_per_pixel_path():
    """Every decodable sample: table or not (colour, float, 32-bit take the per-pixel path), the
    image and its metadata are what the per-pixel pipeline gives."""
    from pydicom.data import get_testdata_files

    checked = tabled = 0
    for path in get_testdata_files("*.dcm"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                d = decode(path)
        except ImageReadError:
            continue
        for opts in OPTIONS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                np.testing.assert_array_equal(d.image(*opts).pixels, d._float_image(*opts), err_msg=f"{path} {opts}")
        checked += 1
        tabled += d._lookup_dtype() is not None
    assert checked > 40 and 0 < tabled < checked


@pytest.mark.parametrize("mode,bits,sbit", [("L", 8, None), ("I;16", 16, None), ("I;16", 16, 12), ("F", 32, None)])
def test_pillow_images_equal_the_per_pixel_path(tmp_path, mode, bits, sbit):
    top = {8: 255, 16: 4095}.get(bits, 1)
    arr = (RNG.random((30, 20)) * top).astype({8: np.uint8, 16: np.uint16}.get(bits, np.float32))
    path = tmp_path / ("x.tif" if mode == "F" else "x.png")
    info = None
    if sbit:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(arr).save(path, pnginfo=info) if info else Image.fromarray(arr).save(path)
    d = decode(str(path))
    for opts in OPTIONS:
        img = d.image(*opts)
        np.testing.assert_array_equal(img.pixels, d._float_image(*opts))
        assert img.meta == read_image(str(path), intensity=opts[0], depth_rule=opts[1], levels=opts[2]).meta
    assert (d._lookup_dtype() is None) == (mode == "F")


def test_decode_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 40)
    with pytest.raises(ImageReadError, match="bad.dcm"):
        decode(str(bad))
    with pytest.raises(ImageReadError, match="file not found"):
        decode(str(tmp_path / "missing.png"))


def test_read_image_is_decode_then_image():
    data = VARIANTS["mono1-window"]
    for intensity, rule, levels in itertools.product(("window", "minmax"), ("significant", "container"), (None, 255)):
        a = read_image("x.dcm", data, intensity=intensity, depth_rule=rule, levels=levels)
        b = decode("x.dcm", data).image(intensity, rule, levels)
        assert a.meta == b.meta and np.array_equal(a.pixels, b.pixels)
