"""``radstore synth --compression``: every lossless transfer syntax decodes to the uncompressed pixels.

Oracles: the same seed's uncompressed cohort (pydicom's stored values and the reader's [0, 1]
image, bit for bit), the transfer syntax UID the file declares, and the file sizes a lossless
coder must achieve on 12-bit data in a 16-bit container (the top four bits are always zero).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder

from featurestore.imageio import read_image
from featurestore.synth.cohort import TRANSFER_SYNTAXES, SynthConfig, synthesize, write_dicom
from featurestore.synth.phantom import render, sample_patient
from flows.cli import main as cli_main

LOSSLESS = ("rle", "jpeg-ls", "jpeg2000")
SMALL = dict(n=6, seed=3, min_side=96, max_side=160, png_fraction=0.0, workers=1)


def _images(manifest) -> dict[str, str]:
    root = manifest.parent
    return {r["image_id"]: str(root / r["path"]) for r in pq.read_table(manifest).to_pylist()}


@pytest.fixture(scope="module")
def uncompressed(tmp_path_factory):
    return _images(synthesize(tmp_path_factory.mktemp("none"), SynthConfig(**SMALL), progress=False))


@pytest.mark.parametrize("compression", LOSSLESS)
def test_reads_back_bit_equal_to_the_uncompressed_cohort(compression, uncompressed, tmp_path):
    images = _images(synthesize(tmp_path, SynthConfig(**SMALL, compression=compression), progress=False))
    assert images.keys() == uncompressed.keys()
    bits = set()
    for image_id, path in images.items():
        ds, ref = pydicom.dcmread(path), pydicom.dcmread(uncompressed[image_id])
        assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[compression]
        assert ref.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPInstanceUID == ref.SOPInstanceUID  # lossless: the same instance
        np.testing.assert_array_equal(ds.pixel_array, ref.pixel_array)
        got, want = read_image(path), read_image(uncompressed[image_id])
        assert got.pixels.dtype == want.pixels.dtype and np.array_equal(got.pixels, want.pixels)
        assert (got.meta.bits_stored, got.meta.photometric) == (want.meta.bits_stored, want.meta.photometric)
        bits.add(got.meta.bits_stored)
    assert bits == {12, 16}  # both depths went through the coder


@pytest.mark.parametrize("bits", [12, 16])
def test_compressed_files_are_smaller(bits, tmp_path):
    rng = np.random.default_rng(7)
    ph = render(sample_patient(rng), rng, 300, 260, pneumothorax=False)
    size = {}
    for compression in ("none", *LOSSLESS):
        path = tmp_path / f"{compression}.dcm"
        write_dicom(path, ph.image, bits_stored=bits, photometric="MONOCHROME2", slope=1.0, intercept=0.0, patient_id="P",
                    image_id="i", seed=0, pixel_spacing=0.2, compression=compression)  # fmt: skip
        size[compression] = path.stat().st_size
    # 12 significant bits of 16 leave a quarter of the raw bytes free to any lossless coder.
    bound = 12 / 16 if bits == 12 else 1.0
    assert size["jpeg-ls"] < bound * size["none"] and size["jpeg2000"] < bound * size["none"]
    if bits == 12:
        assert size["rle"] < size["none"]
    else:  # byte-wise run lengths gain nothing on a noisy low byte: RLE grows full 16-bit data
        assert size["rle"] > size["none"]


def test_same_seed_same_bytes(tmp_path):
    cfg = SynthConfig(**{**SMALL, "n": 2}, compression="jpeg2000")
    a, b = (synthesize(tmp_path / d, cfg, progress=False).parent for d in ("a", "b"))
    digest = lambda root: sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "images").iterdir())  # noqa: E731
    assert digest(a) == digest(b)


def test_unknown_compression_is_refused():
    with pytest.raises(ValueError, match="jpeg-ls"):
        SynthConfig(compression="jpeg-lossless")  # pydicom has no encoder for it


#: What PACS exports carry; pydicom decodes each with the plugins pyproject.toml depends on.
DECODABLE = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless,
             uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2K, uid.RLELossless)  # fmt: skip


def test_pydicom_has_a_decoder_for_every_compressed_syntax():
    assert [u.name for u in DECODABLE if not get_decoder(u).is_available] == []


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_other_toolkits_files_decode_to_the_uncompressed_one(name):
    """pydicom's test files, encoded elsewhere: each lossless one decodes to MR_small.dcm's values."""
    ref = get_testdata_file("MR_small.dcm")
    np.testing.assert_array_equal(pydicom.dcmread(get_testdata_file(name)).pixel_array, pydicom.dcmread(ref).pixel_array)
    assert np.array_equal(read_image(get_testdata_file(name)).pixels, read_image(ref).pixels)


def test_cli_option(tmp_path, capsys):
    assert cli_main(["synth", "--out", str(tmp_path), "--n", "2", "--min-side", "64", "--max-side", "80", "--workers", "1",
                     "--compression", "jpeg-ls", "--quiet"]) == 0  # fmt: skip
    syntaxes = {str(pydicom.dcmread(p).file_meta.TransferSyntaxUID) for p in (tmp_path / "images").glob("*.dcm")}
    assert syntaxes == {TRANSFER_SYNTAXES["jpeg-ls"]}
