"""Tiny random checkpoints in the exact file layouts of the three published folders.

Each is built once per session with the libraries' own classes and writers and is read-only
to the tests (a test that alters a folder copies it first):

- XraySigLIP (``StanfordAIMI/XraySigLIP__vit-l-16-siglip-384__webli``): a full transformers
  ``SiglipModel`` (``model_type`` "siglip", ``text_model.*`` and ``vision_model.*`` tensors,
  ``logit_scale``/``logit_bias``) whose vision config is 512x512 with 16-pixel patches; beside
  it the same vision weights as a bare ``SiglipVisionModel`` folder, once as transformers 5
  writes it (names without a prefix) and once with the ``vision_model.`` prefix that
  transformers 4 wrote.
- RAD-DINO (``microsoft/rad-dino``): ``Dinov2Model`` ``model.safetensors`` with
  ``backbone_compatible.safetensors`` (the same tensors under the original DINOv2 names) and
  ``dino_head.safetensors`` (the training head) beside it, plus ``preprocessor_config.json``.
- BiomedCLIP (``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``):
  ``open_clip_config.json`` naming a hub text model (never reachable here) and a torch-saved
  ``open_clip_pytorch_model.bin`` holding the ``visual.*`` tower, text-tower tensors (int64
  ``position_ids`` and ``token_type_ids`` buffers among them) and ``logit_scale``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from featurestore.encoders.dinov2 import RAD_DINO_PROCESSOR_CONFIG

#: XraySigLIP's processor as published (SiglipImageProcessor, 512x512, mean/std 0.5): the fixture
#: the parity test builds the reference processor from.
SIGLIP_PROCESSOR = json.loads((Path(__file__).parent / "processor_configs" / "xraysiglip" / "preprocessor_config.json").read_text())
SIGLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=512, patch_size=16)
SIGLIP_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
                   max_position_embeddings=16, pad_token_id=1, bos_token_id=0, eos_token_id=2, projection_size=32)  # fmt: skip


@dataclass(frozen=True)
class SiglipFolders:
    full: Path  # SiglipModel, as published
    bare: Path  # SiglipVisionModel of the same vision weights, as transformers 5 saves it
    bare_prefixed: Path  # the same, tensors named vision_model.* as transformers 4 saved them


@pytest.fixture(scope="session")
def siglip_folders(tmp_path_factory) -> SiglipFolders:
    from safetensors.torch import load_file, save_file
    from transformers import SiglipConfig, SiglipModel, SiglipVisionModel

    root = tmp_path_factory.mktemp("siglip-layouts")
    torch.manual_seed(11)
    full = SiglipModel(SiglipConfig(text_config=SIGLIP_TEXT, vision_config=SIGLIP_VISION)).eval()
    full.save_pretrained(root / "full")
    bare = SiglipVisionModel(full.config.vision_config).eval()
    bare.load_state_dict(full.vision_model.state_dict())  # transformers 5: the tower's own names
    bare.save_pretrained(root / "bare")
    (root / "bare-prefixed").mkdir()
    (root / "bare-prefixed" / "config.json").write_text((root / "bare" / "config.json").read_text())
    tensors = load_file(root / "bare" / "model.safetensors")
    save_file({f"vision_model.{k}": v for k, v in tensors.items()}, root / "bare-prefixed" / "model.safetensors", metadata={"format": "pt"})
    for name in ("full", "bare", "bare-prefixed"):
        (root / name / "preprocessor_config.json").write_text(json.dumps(SIGLIP_PROCESSOR))
    return SiglipFolders(root / "full", root / "bare", root / "bare-prefixed")


#: Dinov2Model's names as stored in model.safetensors (transformers 5 writes the checkpoint names,
#: not its in-memory ``q_proj``...) -> the original DINOv2 backbone's.
DINOV2_NAMES = [
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.mask_token", "mask_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection", "patch_embed.proj"),
    ("encoder.layer.", "blocks."),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "ls2.gamma"),
    ("attention.attention.query", "attn.q"),
    ("attention.attention.key", "attn.k"),
    ("attention.attention.value", "attn.v"),
    ("attention.output.dense", "attn.proj"),
    ("layernorm.", "norm."),
]


def backbone_compatible(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Dinov2Model tensors under the original DINOv2 backbone names (``cls_token``, ``pos_embed``,
    ``blocks.<i>.attn.qkv.*`` with q, k and v stacked ...), as RAD-DINO ships them in
    ``backbone_compatible.safetensors``."""
    out = {}
    for name, t in state.items():
        for a, b in DINOV2_NAMES:
            name = name.replace(a, b)
        out[name] = t.clone()
    for q in [k for k in out if ".attn.q." in k]:
        out[q.replace(".attn.q.", ".attn.qkv.")] = torch.cat([out.pop(q.replace(".attn.q.", f".attn.{p}.")) for p in "qkv"])
    assert any(".attn.qkv." in k for k in out), "model.safetensors names changed: update DINOV2_NAMES"
    return out


@pytest.fixture(scope="session")
def rad_dino_folder(tmp_path_factory) -> Path:
    from safetensors.torch import load_file, save_file
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("rad-dino-layout") / "rad-dino"
    torch.manual_seed(12)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=518, patch_size=14)
    Dinov2Model(cfg).eval().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(RAD_DINO_PROCESSOR_CONFIG, indent=2))
    save_file(backbone_compatible(load_file(folder / "model.safetensors")), folder / "backbone_compatible.safetensors")
    head = {
        "mlp.0.weight": torch.randn(48, 32),
        "mlp.0.bias": torch.randn(48),
        "mlp.2.weight": torch.randn(16, 48),
        "mlp.2.bias": torch.randn(16),
        "last_layer.weight_g": torch.ones(64, 1),
        "last_layer.weight_v": torch.randn(64, 16),
    }
    save_file(head, folder / "dino_head.safetensors")
    return folder


#: BiomedCLIP's open_clip_config.json, its towers shrunk: a timm ViT image tower and a Hugging Face
#: text tower named by hub id (which the loader must never need).
_PUBLISHED_CLIP = json.loads((Path(__file__).parent / "processor_configs" / "biomedclip" / "open_clip_config.json").read_text())
BIOMEDCLIP_CONFIG = {
    **_PUBLISHED_CLIP,
    "model_cfg": {
        **_PUBLISHED_CLIP["model_cfg"],
        "embed_dim": 16,
        "vision_cfg": {**_PUBLISHED_CLIP["model_cfg"]["vision_cfg"], "timm_model_name": "vit_tiny_patch16_224"},
    },
}


@pytest.fixture(scope="session")
def biomedclip_folder(tmp_path_factory) -> Path:
    from open_clip.model import _build_vision_tower

    folder = tmp_path_factory.mktemp("biomedclip-layout") / "biomedclip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(BIOMEDCLIP_CONFIG, indent=2))
    torch.manual_seed(13)
    model_cfg = BIOMEDCLIP_CONFIG["model_cfg"]
    visual = _build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"])
    state = {"logit_scale": torch.tensor(4.6052)}
    state.update({f"visual.{k}": v for k, v in visual.state_dict().items()})
    state.update(
        {
            "text.transformer.embeddings.position_ids": torch.arange(256, dtype=torch.int64)[None],
            "text.transformer.embeddings.token_type_ids": torch.zeros(1, 256, dtype=torch.int64),
            "text.transformer.embeddings.word_embeddings.weight": torch.randn(100, 24),
            "text.transformer.encoder.layer.0.attention.self.query.weight": torch.randn(24, 24),
            "text.proj.0.weight": torch.randn(20, 24),
            "text.proj.2.weight": torch.randn(16, 20),
        }
    )
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    return folder
