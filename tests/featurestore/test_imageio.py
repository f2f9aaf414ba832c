"""Image reading: DICOM display pipeline variants, PNG/JPEG bit depths, pydicom's samples, bad files."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from featurestore.errors import ImageReadError
from featurestore.imageio import read_image, sniff_format
from featurestore.synth.cohort import write_dicom


@pytest.fixture(scope="module")
def ramp() -> np.ndarray:
    """A known intensity image (0..1) with structure in both axes, non-square."""
    y, x = np.mgrid[0:60, 0:80]
    return ((x / 79) * 0.7 + (y / 59) * 0.3).astype(np.float32)


@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("slope,intercept", [(1.0, 0.0), (0.5, -1024.0), (2.0, 100.0)])
def test_dicom_variants_recover_the_intensity(tmp_path, ramp, bits, photometric, slope, intercept):
    p = tmp_path / "x.dcm"
    write_dicom(
        p,
        ramp,
        bits_stored=bits,
        photometric=photometric,
        slope=slope,
        intercept=intercept,
        patient_id="P",
        image_id="x",
        seed=0,
        pixel_spacing=0.2,
    )
    img = read_image(str(p))
    assert img.meta.format == "dicom" and img.meta.bits_stored == bits and img.meta.photometric == photometric
    assert (img.meta.height, img.meta.width) == ramp.shape
    assert img.pixels.dtype == np.float32
    # The synthetic window spans the written range: the intensity comes back, MONOCHROME1
    # inverted, to within the quantisation step plus DICOM's LINEAR window offset (1/width).
    np.testing.assert_allclose(img.pixels, ramp, atol=2.0 / (2**bits - 1) + 2e-3)


def test_dicom_matches_pydicom_window_oracle(tmp_path, ramp):
    """Independent oracle: pydicom's own modality+VOI output, min-max scaled over its range."""
    p = tmp_path / "x.dcm"
    write_dicom(
        p,
        ramp,
        bits_stored=12,
        photometric="MONOCHROME2",
        slope=0.5,
        intercept=-1024.0,
        patient_id="P",
        image_id="x",
        seed=0,
        pixel_spacing=0.2,
    )
    ds = pydicom.dcmread(p)
    ds.WindowCenter, ds.WindowWidth = float(ds.WindowCenter) + 200, float(ds.WindowWidth) / 3  # a clipping window
    buf = io.BytesIO()
    ds.save_as(buf)
    got = read_image(str(p), data=buf.getvalue()).pixels
    ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    v = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    # The narrow window clips both ends, so pydicom's output reaches both ends of its range.
    assert got.min() == 0.0 and got.max() == 1.0
    np.testing.assert_allclose(got, (v - v.min()) / (v.max() - v.min()), atol=1e-5)


def test_dicom_without_window_uses_full_range(tmp_path, ramp):
    p = tmp_path / "x.dcm"
    write_dicom(
        p,
        ramp,
        bits_stored=16,
        photometric="MONOCHROME2",
        slope=1.0,
        intercept=0.0,
        patient_id="P",
        image_id="x",
        seed=0,
        pixel_spacing=0.2,
    )
    ds = pydicom.dcmread(p)
    del ds.WindowCenter, ds.WindowWidth
    buf = io.BytesIO()
    ds.save_as(buf)
    img = read_image("nowindow.dcm", data=buf.getvalue())
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0
    np.testing.assert_allclose(img.pixels, (ramp - ramp.min()) / (ramp.max() - ramp.min()), atol=1e-4)


def _shipped_pydicom_samples() -> list[str]:
    """The sample files inside the pydicom package (get_testdata_files would also try to
    download the rest from GitHub: no traffic beyond loopback from the tests)."""
    from pathlib import Path

    from pydicom.data import DATA_ROOT

    return sorted(
        str(p)
        for p in (Path(DATA_ROOT) / "test_files").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".json", ".txt", ".gz", ".bz2")
    )


def test_every_decodable_pydicom_sample():
    """Every sample file pydicom ships whose pixels pydicom itself can decode reads cleanly."""
    ok = 0
    for f in _shipped_pydicom_samples():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(f)
                ds.pixel_array  # noqa: B018 - the oracle: can pydicom decode it?
        except Exception:  # noqa: BLE001
            continue
        img = read_image(f)
        assert img.pixels.ndim == 2 and img.pixels.dtype == np.float32
        assert 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0, f
        ok += 1
    assert ok >= 40  # pydicom 3 ships ~50 decodable pixel-data samples


@pytest.mark.parametrize("mode,bits", [("L", 8), ("I;16", 16)])
def test_png_8_and_16_bit(tmp_path, ramp, mode, bits):
    top = 2**bits - 1
    arr = np.round(ramp * top).astype(np.uint8 if bits == 8 else np.uint16)
    p = tmp_path / "x.png"
    Image.fromarray(arr).save(p)
    img = read_image(str(p))
    assert img.meta.format == "png" and img.meta.bits_stored == bits
    np.testing.assert_allclose(img.pixels, arr / top, atol=1e-6)


def _png16(path, arr: np.ndarray, sbit: int | None = None, tiff: bool = False):
    from PIL import PngImagePlugin

    if tiff:
        Image.fromarray(arr).save(path)
        return path
    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(arr).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    "top,sbit,bits,rule",
    [
        (4095, 12, 12, "sBIT"),  # 12-bit data, declared
        (4095, None, 12, "max-value"),  # 12-bit data, undeclared: the maximum tells
        (3000, 12, 12, "sBIT"),  # a dark 12-bit image: the declaration wins over the maximum
        (3000, None, 12, "max-value"),
        (900, None, 10, "max-value"),
        (65535, None, 16, "max-value"),
        (16383, 14, 14, "sBIT"),
        (8000, 12, 14, "max-value"),  # data exceed the declared depth: the declaration is wrong
    ],
)
def test_16bit_png_scaled_by_its_significant_bits(tmp_path, ramp, top, sbit, bits, rule):
    """Known answer: ``top * ramp`` stored in a 16-bit PNG comes back as ``value / (2**bits - 1)``,
    with ``bits`` from sBIT when declared (and consistent), else from the maximum."""
    arr = np.round(ramp * top).astype(np.uint16)
    img = read_image(str(_png16(tmp_path / "x.png", arr, sbit)))
    assert (img.meta.bits_stored, img.meta.bits_rule) == (bits, rule)
    np.testing.assert_allclose(img.pixels, arr / (2**bits - 1), atol=1e-6)
    old = read_image(str(tmp_path / "x.png"), depth_rule="container")  # what radstore did before
    assert old.meta.bits_rule == "container"
    np.testing.assert_allclose(old.pixels, arr / 65535, atol=1e-6)


def test_12bit_data_reach_the_model_with_their_full_range(tmp_path, ramp):
    """The case that once squeezed 12-bit data into 16 grey levels: a 16-bit PNG of 12-bit data
    now spans the 8-bit range after quantisation, as the same data in a 12-bit DICOM do."""
    arr = np.round(ramp * 4095).astype(np.uint16)
    for sbit in (12, None):
        px = read_image(str(_png16(tmp_path / f"x{sbit}.png", arr, sbit))).pixels
        assert len(np.unique(np.round(px * 255))) > 200
    tif = read_image(str(_png16(tmp_path / "x.tif", arr, tiff=True)))
    assert tif.meta.format == "tiff" and (tif.meta.bits_stored, tif.meta.bits_rule) == (12, "max-value")


def test_minmax_ignores_the_window_and_stretches_the_stored_values(tmp_path, ramp):
    """``intensity="minmax"``: the study's rule, (value - min) / (max - min) of the modality output, even
    where the file's window would clip; MONOCHROME1 still inverted (bright = dense)."""
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        p = tmp_path / f"{photometric}.dcm"
        write_dicom(p, ramp, bits_stored=12, photometric=photometric, slope=0.5, intercept=-1024.0, patient_id="P",
                    image_id="x", seed=0, pixel_spacing=0.2)  # fmt: skip
        ds = pydicom.dcmread(p)
        ds.WindowWidth = float(ds.WindowWidth) / 4  # a clipping window
        buf = io.BytesIO()
        ds.save_as(buf)
        m = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        expected = (m - m.min()) / (m.max() - m.min())
        if photometric == "MONOCHROME1":
            expected = 1.0 - expected
        got = read_image(str(p), data=buf.getvalue(), intensity="minmax").pixels
        np.testing.assert_allclose(got, expected, atol=1e-6)
        windowed = read_image(str(p), data=buf.getvalue()).pixels
        assert (windowed == 0).mean() > 0.1 and (got == 0).mean() < 0.01  # the window clipped, min-max did not


def test_jpeg_and_rgb_png(tmp_path, ramp):
    arr = np.round(ramp * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.jpg", quality=95)
    img = read_image(str(tmp_path / "x.jpg"))
    assert img.meta.format == "jpeg" and img.meta.bits_stored == 8
    np.testing.assert_allclose(img.pixels, arr / 255, atol=0.05)
    Image.fromarray(np.stack([arr] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_image(str(tmp_path / "rgb.png")).pixels, arr / 255, atol=1 / 255)


def test_sha256_and_size(tmp_path, ramp):
    import hashlib

    p = tmp_path / "x.png"
    Image.fromarray(np.round(ramp * 255).astype(np.uint8)).save(p)
    m = read_image(str(p)).meta
    assert m.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() and m.size_bytes == p.stat().st_size


def test_bad_files_name_the_file_and_reason(tmp_path, ramp):
    dcm = tmp_path / "x.dcm"
    write_dicom(
        dcm,
        ramp,
        bits_stored=12,
        photometric="MONOCHROME2",
        slope=1.0,
        intercept=0.0,
        patient_id="P",
        image_id="x",
        seed=0,
        pixel_spacing=0.2,
    )
    (tmp_path / "trunc.dcm").write_bytes(dcm.read_bytes()[:2000])
    png = tmp_path / "x.png"
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)  # incompressible
    Image.fromarray(noise).save(png)
    (tmp_path / "trunc.png").write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.dcm").write_bytes(b"")
    cases = {
        "trunc.dcm": "corrupt or truncated dicom",
        "trunc.png": "corrupt or truncated png",
        "junk.png": "corrupt or truncated png",
        "notes.txt": "unsupported or unrecognised image format",
        "empty.dcm": "file is empty",
        "missing.dcm": "file not found",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageReadError, match=reason) as e:
            read_image(str(tmp_path / name))
        assert name in str(e.value)


def test_sniff_prefers_magic_over_extension(tmp_path, ramp):
    png = io.BytesIO()
    Image.fromarray(np.round(ramp * 255).astype(np.uint8)).save(png, format="PNG")
    assert sniff_format(png.getvalue(), "mislabelled.dcm") == "png"
    assert read_image("mislabelled.dcm", data=png.getvalue()).meta.format == "png"
