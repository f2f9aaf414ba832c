"""Each adapter against its library's own forward pass, real-size shapes, offline weight loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore.encoders import MissingWeightsError, load_encoder
from featurestore.encoders.dinov2 import Dinov2Encoder
from featurestore.encoders.openclip import OpenClipEncoder, tiny_model_cfg
from featurestore.encoders.pixels import PixelsEncoder
from featurestore.encoders.siglip import SiglipEncoder


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((300, 260)).astype(np.float32), rng.random((256, 320)).astype(np.float32)]


def _batch(enc, images) -> torch.Tensor:
    return torch.stack([enc.preprocessing(i) for i in images])


def test_rad_dino_matches_transformers_forward(tmp_path, images):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    Dinov2Model(
        Dinov2Config(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, image_size=518)
    ).save_pretrained(tmp_path / "m")
    enc = load_encoder("rad-dino", weights=str(tmp_path / "m"))
    assert enc.preprocessing.size == 518 and enc.preprocessing.mean == (0.5307,) * 3 and enc.preprocessing.std == (0.2583,) * 3
    assert enc.grid == (24, 37, 37) and enc.global_dim == 24
    x = _batch(enc, images)
    with torch.inference_mode():
        out = enc.embed(x)
        ref = Dinov2Model.from_pretrained(tmp_path / "m").eval()(pixel_values=x)
    torch.testing.assert_close(out.global_, ref.pooler_output)
    torch.testing.assert_close(out.patches, ref.last_hidden_state[:, 1:].reshape(2, 37, 37, 24).permute(0, 3, 1, 2))
    assert enc.labels["weights"].startswith("local:")


def test_register_tokens_are_skipped(tmp_path, images):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(2)
    cfg = Dinov2WithRegistersConfig(
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        image_size=518,
        patch_size=14,
        num_register_tokens=4,
    )
    Dinov2WithRegistersModel(cfg).save_pretrained(tmp_path / "m")
    enc = load_encoder("rad-dino", weights=str(tmp_path / "m"))
    x = _batch(enc, images[:1])
    with torch.inference_mode():
        out = enc.embed(x)
        ref = Dinov2WithRegistersModel.from_pretrained(tmp_path / "m").eval()(pixel_values=x)
    torch.testing.assert_close(out.patches, ref.last_hidden_state[:, 5:].reshape(1, 37, 37, 24).permute(0, 3, 1, 2))


def test_chexagent_siglip_matches_transformers_forward(tmp_path, images):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(3)
    cfg = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=384, patch_size=16
    )
    SiglipVisionModel(cfg).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    enc = load_encoder("chexagent", weights=str(tmp_path / "m"))
    assert enc.preprocessing.size == 512 and enc.preprocessing.resize == "squash"
    assert enc.grid == (32, 32, 32)
    x = _batch(enc, images)
    with torch.inference_mode():
        out = enc.embed(x)
        ref = SiglipVisionModel.from_pretrained(tmp_path / "m").eval()(pixel_values=x, interpolate_pos_encoding=True)
    torch.testing.assert_close(out.global_, ref.pooler_output)  # attention pool: SigLIP has no [CLS]
    torch.testing.assert_close(out.patches, ref.last_hidden_state.reshape(2, 32, 32, 32).permute(0, 3, 1, 2))


def test_biomedclip_matches_open_clip_encode_image(tmp_path, images):
    """A full tiny CLIP (timm image tower + HF text tower from a *local* config), saved in
    open_clip's folder format; the adapter loads only its image tower and must agree with
    open_clip's own ``encode_image`` and trunk."""
    import open_clip
    from transformers import BertConfig

    text_dir = tmp_path / "text-config"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=128).save_pretrained(text_dir)
    folder = tmp_path / "biomedclip"
    folder.mkdir()
    cfg = {
        "model_cfg": tiny_model_cfg(str(text_dir)),
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(4)
    model = open_clip.create_model(f"local-dir:{folder}", pretrained_text=False, load_weights=False).eval()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    enc = load_encoder("biomedclip", weights=str(folder))
    assert enc.preprocessing.size == 224 and enc.grid == (192, 14, 14) and enc.extra_globals == {"cls_trunk": 192}
    x = _batch(enc, images)
    with torch.inference_mode():
        out = enc.embed(x)
        ref_global = model.encode_image(x, normalize=False)
        ref_tokens = model.visual.trunk.forward_features(x)
    torch.testing.assert_close(out.global_, ref_global)
    torch.testing.assert_close(out.extras["cls_trunk"], ref_tokens[:, 0])
    torch.testing.assert_close(out.patches, ref_tokens[:, 1:].reshape(2, 14, 14, 192).permute(0, 3, 1, 2))


def test_pixels_control_is_pooled_pixels(images):
    enc = PixelsEncoder()
    x = _batch(enc, images)
    out = enc.embed(x)
    assert out.patches.shape == (2, 16, 32, 32) and out.global_.shape == (2, 274)
    img = x[0, 0].numpy()
    # Patch (row 3, col 5), channel (1, 2): the 4x4 block at that position inside the 16x16 patch.
    block = img[3 * 16 + 1 * 4 : 3 * 16 + 2 * 4, 5 * 16 + 2 * 4 : 5 * 16 + 3 * 4].mean()
    assert out.patches[0, 1 * 4 + 2, 3, 5].item() == pytest.approx(block, abs=1e-6)
    assert out.global_[0, -2].item() == pytest.approx(img.mean(), abs=1e-5)
    torch.testing.assert_close(enc.embed(x).patches, out.patches)  # deterministic


def test_real_configurations_give_the_published_grids():
    """Real-size models built from their configs on the meta device (no weights, no memory)."""
    from open_clip.model import _build_vision_tower
    from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel

    with torch.device("meta"):
        dino = Dinov2Encoder("rad-dino", Dinov2Model(Dinov2Config(image_size=518, patch_size=14)))
        sig = SiglipEncoder(
            "chexagent",
            SiglipVisionModel(
                SiglipVisionConfig(
                    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=512, patch_size=16
                )
            ),
        )
        vis = _build_vision_tower(
            512,
            {
                "timm_model_name": "vit_base_patch16_224",
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": 224,
            },
        )
        clip = OpenClipEncoder("biomedclip", vis, 512)
        for enc, dim in ((dino, 768), (sig, 1024), (clip, 512)):
            s = enc.preprocessing.size
            out = enc.embed(torch.empty(1, 3, s, s))
            assert tuple(out.patches.shape[1:]) == enc.grid and out.global_.shape[1] == dim == enc.global_dim
    assert dino.grid == (768, 37, 37) and sig.grid == (1024, 32, 32) and clip.grid == (768, 14, 14)
    assert PixelsEncoder().grid == (16, 32, 32)


def test_random_tiny_is_labelled_and_reloaded_through_the_same_path():
    a = load_encoder("rad-dino", "random:tiny")
    b = load_encoder("rad-dino", "random:tiny")  # second time: loaded from the saved folder
    assert a.fingerprint == b.fingerprint and a.labels["weights"] == "random:tiny"
    assert a.spec().labels["weights"] == "random:tiny"
    assert Path(load_encoder("biomedclip", "random:tiny").labels["weights"]) == Path("random:tiny")


def test_preprocessing_and_weights_are_identity():
    base = load_encoder("chexagent", "random:tiny")
    assert load_encoder("chexagent", "random:tiny", size=384).spec().feature_set_id != base.spec().feature_set_id
    assert load_encoder("chexagent", "random:tiny", size=384).grid == (32, 24, 24)
    assert load_encoder("chexagent", "random:tiny", bits=16).spec().feature_set_id != base.spec().feature_set_id
    assert load_encoder("rad-dino", "random:tiny").spec().feature_set_id != load_encoder("random-vit", "random:tiny").spec().feature_set_id


def test_preprocessing_matches_the_hf_image_processor(images):
    """Oracle: RAD-DINO's processor (BitImageProcessor per its model card) on the 8-bit image."""
    from transformers import BitImageProcessor

    proc = BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": 518},
        resample=3,
        do_center_crop=True,
        crop_size={"height": 518, "width": 518},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5307] * 3,
        image_std=[0.2583] * 3,
        do_convert_rgb=True,
    )
    y, x = np.mgrid[0:400, 0:300]
    smooth = (0.5 + 0.4 * np.sin(x / 23.0) * np.cos(y / 31.0)).astype(np.float32)  # resampling-friendly content
    u8 = np.round(smooth * 255).astype(np.uint8)
    ref = proc(images=np.stack([u8] * 3, -1), return_tensors="pt")["pixel_values"][0]
    ours = load_encoder("rad-dino", "random:tiny").preprocessing(smooth)
    assert ours.shape == ref.shape == (3, 518, 518)
    assert (ours - ref).abs().mean().item() < 0.01  # PIL vs torch bicubic: same picture, tiny differences
    assert (ours - ref).abs().max().item() < 0.1


def test_missing_weights_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("RADSTORE_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(MissingWeightsError) as e:
        load_encoder("rad-dino")
    msg = str(e.value)
    assert f"{tmp_path / 'weights' / 'rad-dino'}: missing" in msg
    assert f"{tmp_path / 'hub'}: no microsoft/rad-dino" in msg
    assert "hf download microsoft/rad-dino --local-dir" in msg and "--weights random:tiny" in msg
    with pytest.raises(MissingWeightsError, match="is not a directory"):
        load_encoder("chexagent", weights=str(tmp_path / "nope"))


def test_weights_from_env_dir_and_hf_cache(tmp_path, monkeypatch):
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=518))
    model.save_pretrained(tmp_path / "weights" / "rad-dino")
    monkeypatch.setenv("RADSTORE_WEIGHTS_DIR", str(tmp_path / "weights"))
    enc = load_encoder("rad-dino")
    assert enc.labels["weights"] == f"local:{(tmp_path / 'weights' / 'rad-dino').resolve()}"
    # The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<rev>/...}
    monkeypatch.delenv("RADSTORE_WEIGHTS_DIR")
    repo = tmp_path / "hub" / "models--microsoft--rad-dino"
    model.save_pretrained(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    enc2 = load_encoder("rad-dino")
    assert enc2.labels["weights"] == "hf:microsoft/rad-dino@abc123"
    assert enc2.fingerprint == enc.fingerprint
