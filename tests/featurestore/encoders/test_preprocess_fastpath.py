"""``Preprocessing.prepare`` / ``finish`` (the extraction's path) give ``__call__``'s model input.

Known answer: the reference ``__call__`` on ``read_image``'s pixels, for 8- and 16-bit input,
both intensity rules and all three resamplers, through both ways to the device.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from featurestore.encoders.dinov2 import RAD_DINO_PREPROCESSING
from featurestore.imageio import decode, read_image
from featurestore.synth.cohort import write_dicom


@pytest.fixture(scope="module")
def dicom(tmp_path_factory):
    rng = np.random.default_rng(3)
    img = np.clip(np.linspace(0, 1, 611)[:, None] * np.linspace(0.2, 1, 733)[None] + rng.normal(0, 0.05, (611, 733)), 0, 1)
    path = tmp_path_factory.mktemp("fast") / "x.dcm"
    write_dicom(path, img.astype(np.float32), bits_stored=12, photometric="MONOCHROME1", slope=0.5, intercept=-100.0,
                patient_id="P", image_id="x", seed=3, pixel_spacing=0.2)  # fmt: skip
    return str(path)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("intensity", ["window", "minmax"])
@pytest.mark.parametrize("resampler", ["torchvision", "pil", "torch"])
def test_prepare_and_finish_equal_the_reference(dicom, bits, intensity, resampler):
    pre = replace(RAD_DINO_PREPROCESSING, size=224, bits=bits, intensity=intensity, resampler=resampler)
    expected = pre(read_image(dicom, **pre.decode_options()).pixels)
    decoded = decode(dicom)
    assert torch.equal(pre.prepare(decoded), expected)
    shipped = pre.prepare(decoded, on_device=True)
    assert shipped.dtype == (torch.uint8 if bits == 8 else torch.uint16) and shipped.ndim == 2
    assert shipped.numel() < expected.numel() * 4  # bytes: less than the float32 input it replaces
    finished = pre.finish([shipped, pre.prepare(decoded)], torch.device("cpu"))
    assert finished.shape == (2, 3, 224, 224) and finished.dtype == torch.float32
    # uint16 shipping of a 16-bit image rounds it to 1/65535: far below one 8-bit level.
    torch.testing.assert_close(finished[0], expected, rtol=0, atol=0 if bits == 8 else 1e-4)
    assert torch.equal(finished[1], expected)
