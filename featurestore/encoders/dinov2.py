"""RAD-DINO and the random ViT control: transformers ``Dinov2Model`` (ViT-B/14 at 518).

Preprocessing from the weights folder's ``preprocessor_config.json``; RAD-DINO's is (model card
and :data:`RAD_DINO_PROCESSOR_CONFIG`): shortest edge to 518 (bicubic), centre crop 518, rescale
1/255, mean 0.5307 / std 0.2583 on 3 channels, which is also the fallback (with a warning). Global = ``pooler_output`` (the
layer-normed [CLS]); patches = ``last_hidden_state`` after [CLS] (and after any register
tokens, for ``Dinov2WithRegistersModel`` configs) as a 37x37 grid of 768-d tokens.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

from featurestore.encoders.base import EmbedOutput, Encoder
from featurestore.encoders.preprocess import PARITY, PROCESSOR_CONFIG, Preprocessing, from_processor_config
from featurestore.encoders.registry import register
from featurestore.encoders.weights import WeightFiles, WeightsSource, cache_dir, from_pretrained, transformers_weight_files

RAD_DINO_PREPROCESSING = Preprocessing(size=518, mean=(0.5307,) * 3, std=(0.2583,) * 3, resize="shortest_edge_crop")
#: ``microsoft/rad-dino``'s published ``preprocessor_config.json`` (BitImageProcessor): written
#: beside the random stand-ins, and what :data:`RAD_DINO_PREPROCESSING` is read from.
RAD_DINO_PROCESSOR_CONFIG = {
    "crop_size": {"height": 518, "width": 518},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5307, 0.5307, 0.5307],
    "image_processor_type": "BitImageProcessor",
    "image_std": [0.2583, 0.2583, 0.2583],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 518},
}


def _tiny_config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=518, patch_size=14)


def _full_config():
    from transformers import Dinov2Config

    return Dinov2Config(image_size=518, patch_size=14)  # ViT-B/14: 768 wide, 12 layers, 12 heads


def build_random(kind: str, name: str, seed: int = 0) -> str:
    """Save a randomly initialised model of the real class; return the folder to load from."""
    from transformers import Dinov2Model

    folder = cache_dir() / kind.replace(":", "-") / f"{name}-named-seed{seed}"
    if not (folder / "config.json").exists():
        # Seeded by name too: rad-dino's stand-in and the random-vit control share a class and
        # must not be the same network.
        torch.manual_seed(zlib.crc32(f"{name}:{seed}".encode()))
        model = Dinov2Model(_tiny_config() if kind == "random:tiny" else _full_config()).eval()
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
    if not (folder / PROCESSOR_CONFIG).exists():  # the stand-in preprocesses as the published model
        (folder / PROCESSOR_CONFIG).write_text(json.dumps(RAD_DINO_PROCESSOR_CONFIG, indent=2))
    return str(folder)


class Dinov2Encoder(Encoder):
    """An encoder around a transformers ``Dinov2Model`` (RAD-DINO, the random ViT control): layer-normed
    [CLS] as the global vector, the patch tokens after [CLS] and any registers as the grid."""

    def __init__(self, name: str, model, size: int | None = None, bits: int = 8, weights_label: str = "unknown",
                 preprocessing: Preprocessing = RAD_DINO_PREPROCESSING):  # fmt: skip
        config = model.config
        self.model = self.module = model.eval()
        self.name = name
        self.preprocessing = preprocessing.with_overrides(size=size, bits=bits)
        self.registers = int(getattr(config, "num_register_tokens", 0) or 0)
        side = self.preprocessing.size // config.patch_size
        self.grid = (config.hidden_size, side, side)
        self.global_dim = config.hidden_size
        self.labels = {"weights": weights_label, "model_class": type(model).__name__}
        self.extra_globals = {}
        self.device = torch.device("cpu")

    @classmethod
    def load(cls, name: str, source: WeightsSource, size: int | None = None, bits: int = 8) -> Dinov2Encoder:
        """Load from the source's folder offline, or from a seeded random model saved for ``random`` /
        ``random:tiny``; picks the registers class when the config has register tokens. The
        preprocessing is the folder's ``preprocessor_config.json`` (RAD-DINO's published values,
        with a warning, when it has none); ``size`` overrides its crop size.

        Only the transformers checkpoint (``model.safetensors``, or its shards) is read and
        fingerprinted; RAD-DINO's ``backbone_compatible.safetensors`` (the same weights under the
        original DINOv2 names) and ``dino_head.safetensors`` (the training head) beside it are not."""
        from transformers import AutoConfig, Dinov2Model, Dinov2WithRegistersModel

        folder = str(source.path) if source.path else build_random(source.kind, name)
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        model_cls = Dinov2WithRegistersModel if getattr(config, "num_register_tokens", 0) else Dinov2Model
        pre = from_processor_config(folder, RAD_DINO_PREPROCESSING)
        model = from_pretrained(model_cls, folder, optional=("embeddings.mask_token",))  # masked image modelling only
        encoder = cls(name, model, size, bits, source.label, pre)
        encoder.weight_files = WeightFiles(transformers_weight_files(Path(folder)))
        return encoder

    def embed(self, batch: torch.Tensor) -> EmbedOutput:
        """Global = ``pooler_output`` [B, D]; patches = the tokens after [CLS] and the registers as the
        [B, C, H, W] grid (raises if they do not form it)."""
        out = self.model(pixel_values=batch)
        return EmbedOutput(global_=out.pooler_output, patches=self.to_grid(out.last_hidden_state[:, 1 + self.registers :]))


@register(
    "rad-dino",
    hub_repo="microsoft/rad-dino",
    order=0,
    processor=f"transformers `BitImageProcessor` from the folder's `preprocessor_config.json`; {PARITY}",
    summary=(
        "`microsoft/rad-dino`, transformers `Dinov2Model` | "
        "shortest edge 518 bicubic, centre crop 518, mean 0.5307 / std 0.2583 | "
        "`pooler_output` (layer-normed [CLS]), 768 | "
        "`last_hidden_state[:, 1:]` (registers skipped if any), 37x37x768"
    ),
)
@register(
    "random-vit",
    default_weights="random",
    order=4,
    control="negative",
    processor="as rad-dino",
    summary=("control: `Dinov2Model` ViT-B/14 at 518, random weights (seeded from the name and seed 0) | as rad-dino | 768 | 37x37x768"),
)
def load(name: str, source: WeightsSource, size: int | None = None, bits: int | None = None) -> Dinov2Encoder:
    """RAD-DINO from its folder, or the random ViT-B/14 control (same class, seeded weights)."""
    return Dinov2Encoder.load(name, source, size=size, bits=bits or 8)
