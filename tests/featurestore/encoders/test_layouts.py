"""The three published checkpoint layouts (tiny random weights, conftest.py) through radstore's
real loaders: each loads, gives the documented grid and equals the library's own forward pass
on the same input, bit for bit."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from featurestore.encoders import load_encoder
from featurestore.encoders.weights import transformers_weight_files
from featurestore.errors import RadstoreError


def _input(enc, n: int = 2, seed: int = 0) -> torch.Tensor:
    """A batch of the encoder's input size (values as a normalised image has them)."""
    s = enc.preprocessing.size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


def _grid(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)


def _no_interpolation(enc, monkeypatch) -> list[int]:
    """Make the SigLIP embeddings' position-embedding interpolation count its calls."""
    from transformers.models.siglip.modeling_siglip import SiglipVisionEmbeddings

    (emb,) = [m for m in enc.model.modules() if isinstance(m, SiglipVisionEmbeddings)]
    calls = []
    original = emb.interpolate_pos_encoding

    def counted(*a, **kw):
        calls.append(1)
        return original(*a, **kw)

    monkeypatch.setattr(emb, "interpolate_pos_encoding", counted)
    return calls


# -- XraySigLIP: a full SiglipModel, vision at 512 ------------------------------------------------


def test_published_siglip_folder_is_a_full_siglip_model(siglip_folders):
    """The layout the loader is tested on is the published one (guards the fixture)."""
    cfg = json.loads((siglip_folders.full / "config.json").read_text())
    assert cfg["model_type"] == "siglip" and cfg["vision_config"]["image_size"] == 512 and cfg["vision_config"]["patch_size"] == 16
    with safe_open(siglip_folders.full / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert any(n.startswith("text_model.") for n in names) and any(n.startswith("vision_model.") for n in names)
    assert {"logit_scale", "logit_bias"} <= names


def test_siglip_full_folder_gives_the_vision_tower_at_its_own_size(siglip_folders, monkeypatch):
    from transformers import SiglipModel

    enc = load_encoder("chexagent", weights=str(siglip_folders.full))
    assert type(enc.model).__name__ == "SiglipVisionModel"  # the text tower is never built
    assert enc.preprocessing.size == enc.model.config.image_size == 512
    assert enc.grid == (32, 32, 32) and enc.global_dim == 32
    calls = _no_interpolation(enc, monkeypatch)
    x = _input(enc)
    with torch.inference_mode():
        out = enc.embed(x)
        ref = SiglipModel.from_pretrained(siglip_folders.full).eval().vision_model(pixel_values=x)
    assert calls == []  # input size == config size: the checkpoint's own position embeddings
    assert torch.equal(out.global_, ref.pooler_output)  # attention pool: SigLIP has no [CLS]
    assert torch.equal(out.patches, _grid(ref.last_hidden_state, 32, 32))


def test_siglip_other_size_interpolates(siglip_folders, monkeypatch):
    """Only a --size other than the config's interpolates the position embeddings."""
    from transformers import SiglipModel

    enc = load_encoder("chexagent", weights=str(siglip_folders.full), size=384)
    assert enc.grid == (32, 24, 24)
    calls = _no_interpolation(enc, monkeypatch)
    x = _input(enc, n=1)
    with torch.inference_mode():
        out = enc.embed(x)
        ref = SiglipModel.from_pretrained(siglip_folders.full).eval().vision_model(pixel_values=x, interpolate_pos_encoding=True)
    assert calls == [1]
    torch.testing.assert_close(out.patches, _grid(ref.last_hidden_state, 24, 24))


@pytest.mark.parametrize("layout", ["bare", "bare_prefixed"])
def test_siglip_bare_vision_folder_still_loads(siglip_folders, layout):
    """A bare SiglipVisionModel folder (as transformers 5 and 4 wrote it) gives what the full
    folder with the same vision weights gives."""
    from transformers import SiglipVisionModel

    folder = getattr(siglip_folders, layout)
    enc = load_encoder("chexagent", weights=str(folder))
    full = load_encoder("chexagent", weights=str(siglip_folders.full))
    assert enc.grid == (32, 32, 32)
    x = _input(enc)
    with torch.inference_mode():
        out = enc.embed(x)
        ref = SiglipVisionModel.from_pretrained(folder).eval()(pixel_values=x)
        ref_full = full.embed(x)
    assert torch.equal(out.global_, ref.pooler_output)
    assert torch.equal(out.patches, _grid(ref.last_hidden_state, 32, 32))
    assert torch.equal(out.global_, ref_full.global_) and torch.equal(out.patches, ref_full.patches)


def test_random_tiny_siglip_is_saved_in_the_published_layout():
    enc = load_encoder("chexagent", "random:tiny")
    (path,) = enc.weight_files.files
    cfg = json.loads((path.parent / "config.json").read_text())
    assert cfg["model_type"] == "siglip" and cfg["vision_config"]["image_size"] == 512 and cfg["vision_config"]["patch_size"] == 16
    with safe_open(path, "pt") as f:
        assert any(n.startswith("text_model.") for n in f.keys())
    assert enc.grid == (32, 32, 32) and enc.preprocessing.size == enc.model.config.image_size  # no interpolation by default


def test_full_size_random_siglip_is_vit_l16_at_512():
    """The "random" stand-in's configuration, built on the meta device (no weights, no memory)."""
    from transformers import SiglipModel

    from featurestore.encoders.siglip import SiglipEncoder, random_config

    cfg = random_config("random")
    v = cfg.vision_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.image_size, v.patch_size) == (1024, 24, 16, 512, 16)
    with torch.device("meta"):
        model = SiglipModel(cfg)
    assert sum(p.numel() for p in model.text_model.parameters()) < sum(p.numel() for p in model.vision_model.parameters()) / 100
    assert SiglipEncoder("chexagent", model.vision_model).grid == (1024, 32, 32)


def test_a_checkpoint_missing_weights_is_refused(siglip_folders, tmp_path):
    """transformers would fill a missing tensor with random values and only warn."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(siglip_folders.full, folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["vision_model.head.probe"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RadstoreError, match=r"lacks 1 weight\(s\) of SiglipVisionModel \(head.probe"):
        load_encoder("chexagent", weights=str(folder))


def test_a_folder_of_another_model_is_refused(rad_dino_folder):
    with pytest.raises(RadstoreError, match="model_type 'dinov2'.*SigLIP"):
        load_encoder("chexagent", weights=str(rad_dino_folder))


# -- RAD-DINO: model.safetensors with backbone_compatible and dino_head beside it -----------------


def test_rad_dino_layout_loads_model_safetensors_only(rad_dino_folder):
    from transformers import Dinov2Model

    assert {p.name for p in rad_dino_folder.glob("*.safetensors")} == {
        "model.safetensors",
        "backbone_compatible.safetensors",
        "dino_head.safetensors",
    }
    enc = load_encoder("rad-dino", weights=str(rad_dino_folder))
    assert enc.weight_files.files == (rad_dino_folder / "model.safetensors",)
    assert enc.preprocessing.size == 518 and enc.grid == (32, 37, 37) and enc.global_dim == 32
    x = _input(enc)
    with torch.inference_mode():
        out = enc.embed(x)
        ref = Dinov2Model.from_pretrained(rad_dino_folder).eval()(pixel_values=x)
    assert torch.equal(out.global_, ref.pooler_output)  # the layer-normed [CLS]
    assert torch.equal(out.patches, _grid(ref.last_hidden_state[:, 1:], 37, 37))


def test_rad_dino_files_beside_the_model_are_never_read(rad_dino_folder, tmp_path):
    """Unreadable copies of backbone_compatible / dino_head change nothing: same outputs, same
    fingerprint, same feature set."""
    folder = tmp_path / "rad-dino"
    shutil.copytree(rad_dino_folder, folder)
    for name in ("backbone_compatible.safetensors", "dino_head.safetensors"):
        (folder / name).write_bytes(b"not a safetensors file")
    enc = load_encoder("rad-dino", weights=str(folder))
    ref = load_encoder("rad-dino", weights=str(rad_dino_folder))
    assert transformers_weight_files(folder) == (folder / "model.safetensors",)
    x = _input(enc, n=1)
    with torch.inference_mode():
        assert torch.equal(enc.embed(x).patches, ref.embed(x).patches)
    assert enc.fingerprint == ref.fingerprint and enc.spec().feature_set_id == ref.spec().feature_set_id


# -- BiomedCLIP: open_clip_pytorch_model.bin with both towers ------------------------------------


def test_biomedclip_layout_matches_open_clip_tower(biomedclip_folder):
    from open_clip.model import _build_vision_tower

    from tests.featurestore.encoders.conftest import BIOMEDCLIP_CONFIG

    state = torch.load(biomedclip_folder / "open_clip_pytorch_model.bin", weights_only=True)
    assert state["text.transformer.embeddings.position_ids"].dtype == torch.int64 and "logit_scale" in state
    enc = load_encoder("biomedclip", weights=str(biomedclip_folder))
    assert enc.preprocessing.size == 224 and enc.grid == (192, 14, 14) and enc.global_dim == 16
    assert enc.extra_globals == {"cls_trunk": 192}
    # open_clip's own image tower, built and loaded independently from the same checkpoint
    cfg = BIOMEDCLIP_CONFIG["model_cfg"]
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"])
    visual.load_state_dict({k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}, strict=True)
    visual.eval()
    x = _input(enc)
    with torch.inference_mode():
        out = enc.embed(x)
        ref_global = visual(x)  # what encode_image returns before normalisation
        ref_tokens = visual.trunk.forward_features(x)
    assert torch.equal(out.global_, ref_global)
    assert torch.equal(out.extras["cls_trunk"], ref_tokens[:, 0])
    assert torch.equal(out.patches, _grid(ref_tokens[:, 1:], 14, 14))
