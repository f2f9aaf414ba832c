"""A weights folder's own processor file (DINOv2, SigLIP: ``preprocessor_config.json``; open_clip:
``open_clip_config.json``'s ``preprocess_cfg``) decides its preprocessing; the published values
are the fallback, with a warning."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from featurestore.encoders import load_encoder
from featurestore.encoders.dinov2 import RAD_DINO_PREPROCESSING, RAD_DINO_PROCESSOR_CONFIG, build_random
from featurestore.encoders.preprocess import PROCESSOR_CONFIG, Preprocessing, from_processor_config

#: An ImageNet DINOv2 folder's processor (facebook/dinov2-base): other statistics, 256 -> 224.
IMAGENET_DINOV2 = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "BitImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "size": {"shortest_edge": 256},
}


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """A copy of the tiny random DINOv2 folder, without its processor file."""
    folder = tmp_path / "dinov2"
    shutil.copytree(build_random("random:tiny", "rad-dino"), folder)
    (folder / PROCESSOR_CONFIG).unlink()
    return folder


def test_the_published_rad_dino_config_is_the_default():
    folder = Path(build_random("random:tiny", "rad-dino"))
    assert json.loads((folder / PROCESSOR_CONFIG).read_text()) == RAD_DINO_PROCESSOR_CONFIG
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the stand-in carries the published file
        assert from_processor_config(folder, RAD_DINO_PREPROCESSING) == RAD_DINO_PREPROCESSING
        enc = load_encoder("rad-dino", "random:tiny")
    assert enc.preprocessing == RAD_DINO_PREPROCESSING and enc.grid[1:] == (37, 37)


def test_another_dinov2_folder_gets_its_own_statistics_and_crop(tiny_folder):
    (tiny_folder / PROCESSOR_CONFIG).write_text(json.dumps(IMAGENET_DINOV2))
    enc = load_encoder("rad-dino", str(tiny_folder))
    assert enc.preprocessing == Preprocessing(
        size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize="shortest_edge_crop", resize_to=256
    )
    assert enc.grid[1:] == (16, 16)  # 224 / 14
    default = load_encoder("rad-dino", "random:tiny")
    assert enc.spec().feature_set_id != default.spec().feature_set_id  # never mixed with RAD-DINO's rows
    assert load_encoder("rad-dino", str(tiny_folder), size=448).preprocessing.resize_to == 512  # --size keeps the ratio


def test_a_folder_without_the_file_warns_and_uses_the_published_values(tiny_folder):
    with pytest.warns(UserWarning, match=f"{tiny_folder}.*no {PROCESSOR_CONFIG}"):
        enc = load_encoder("rad-dino", str(tiny_folder))
    assert enc.preprocessing == RAD_DINO_PREPROCESSING


def test_siglip_reads_its_processor_file_and_falls_back_with_a_warning(tmp_path):
    """XraySigLIP's stand-in carries the study's SiglipImageProcessor values; another file's
    values are used; no file gives the defaults and a warning naming the folder."""
    from featurestore.encoders.siglip import XRAYSIGLIP_PREPROCESSING, XRAYSIGLIP_PROCESSOR_CONFIG
    from featurestore.encoders.siglip import build_random as siglip_random

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc = load_encoder("chexagent", "random:tiny")
    assert enc.preprocessing == XRAYSIGLIP_PREPROCESSING and enc.grid[1:] == (32, 32)
    folder = tmp_path / "siglip"
    shutil.copytree(siglip_random("random:tiny", "chexagent"), folder)
    other = {**XRAYSIGLIP_PROCESSOR_CONFIG, "image_mean": [0.4] * 3, "image_std": [0.3] * 3, "resample": 2}
    (folder / PROCESSOR_CONFIG).write_text(json.dumps(other))
    got = load_encoder("chexagent", str(folder)).preprocessing
    assert (got.mean, got.std, got.interpolation, got.resize, got.size) == ((0.4,) * 3, (0.3,) * 3, "bilinear", "squash", 512)
    (folder / PROCESSOR_CONFIG).unlink()
    with pytest.warns(UserWarning, match=f"{folder}.*no {PROCESSOR_CONFIG}"):
        assert load_encoder("chexagent", str(folder)).preprocessing == XRAYSIGLIP_PREPROCESSING


def test_biomedclip_reads_preprocess_cfg_and_falls_back_with_a_warning(tmp_path):
    from featurestore.encoders.openclip import build_random as clip_random

    folder = tmp_path / "clip"
    shutil.copytree(clip_random("random:tiny", "biomedclip"), folder)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    base = load_encoder("biomedclip", str(folder)).preprocessing
    assert (base.resize, base.crop_offset, base.resampler) == ("shortest_edge_crop", "round", "pil")  # torchvision on PIL
    cfg["preprocess_cfg"].update(resize_mode="squash", interpolation="bilinear")
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    got = load_encoder("biomedclip", str(folder)).preprocessing
    assert (got.resize, got.interpolation) == ("squash", "bilinear")
    del cfg["preprocess_cfg"]
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="no preprocess_cfg"):
        assert load_encoder("biomedclip", str(folder)).preprocessing == base
