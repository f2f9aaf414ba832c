"""CheXagent's vision encoder: transformers ``SiglipVisionModel`` (XraySigLIP ViT-L/16, width 1024).

As the study ran it: plain bicubic resize to 512x512 (no crop), position embeddings
interpolated from the 384 checkpoint (``interpolate_pos_encoding=True``), the processor's
mean/std (0.5/0.5 unless the folder's ``preprocessor_config.json`` says otherwise).
SigLIP has **no [CLS] token**: the global embedding is the attention-pooling head's
``pooler_output``, and the patches are the *whole* ``last_hidden_state`` (32x32x1024 at 512).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from featurestore.encoders.base import EmbedOutput, Encoder
from featurestore.encoders.preprocess import Preprocessing
from featurestore.encoders.registry import register
from featurestore.encoders.weights import WeightsSource, cache_dir

HUB_REPO = "StanfordAIMI/XraySigLIP__vit-l-16-siglip-384__webli"


def build_random(kind: str, name: str, seed: int = 0) -> str:
    """Save a randomly initialised ``SiglipVisionModel`` (ViT-L/16 at 384, or a tiny one for
    ``random:tiny``) with a 0.5/0.5 processor config, once; return the folder to load from."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    folder = cache_dir() / kind.replace(":", "-") / f"{name}-seed{seed}"
    if not (folder / "config.json").exists():
        torch.manual_seed(seed)
        if kind == "random:tiny":
            cfg = SiglipVisionConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=384, patch_size=16
            )
        else:  # ViT-L/16 at 384, as the real checkpoint
            cfg = SiglipVisionConfig(
                hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=384, patch_size=16
            )
        model = SiglipVisionModel(cfg).eval()
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return str(folder)


def _processor_stats(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    p = folder / "preprocessor_config.json"
    if p.exists():
        cfg = json.loads(p.read_text())
        return tuple(cfg.get("image_mean", [0.5] * 3)), tuple(cfg.get("image_std", [0.5] * 3))
    return (0.5,) * 3, (0.5,) * 3


class SiglipEncoder(Encoder):
    """CheXagent's SigLIP vision tower: attention-pool ``pooler_output`` as the global vector (there is
    no [CLS]) and the whole ``last_hidden_state`` as the patch grid."""

    def __init__(self, name: str, model, size: int = 512, bits: int = 8, mean=(0.5,) * 3, std=(0.5,) * 3, weights_label: str = "unknown"):
        cfg = model.config
        self.model = self.module = model.eval()
        self.name = name
        self.preprocessing = Preprocessing(size=size, mean=mean, std=std, resize="squash", bits=bits)
        side = size // cfg.patch_size
        self.grid = (cfg.hidden_size, side, side)
        self.global_dim = cfg.hidden_size
        self.labels = {
            "weights": weights_label,
            "model_class": "SiglipVisionModel",
            "global": "attention-pool pooler_output (SigLIP has no [CLS])",
        }
        self.extra_globals = {}
        self.device = torch.device("cpu")

    @classmethod
    def load(cls, name: str, source: WeightsSource, size: int = 512, bits: int = 8) -> SiglipEncoder:
        """Load the model offline from the source's folder (or a saved random one), with the mean/std of
        the folder's processor config."""
        from transformers import SiglipVisionModel

        folder = Path(source.path) if source.path else Path(build_random(source.kind, name))
        model = SiglipVisionModel.from_pretrained(str(folder), local_files_only=True)
        mean, std = _processor_stats(folder)
        return cls(name, model, size, bits, mean, std, source.label)

    def embed(self, batch: torch.Tensor) -> EmbedOutput:
        """Global and patch embeddings of a batch; position embeddings are interpolated when the input size
        differs from the checkpoint's."""
        native = self.model.config.image_size
        out = self.model(pixel_values=batch, interpolate_pos_encoding=batch.shape[-1] != native)
        return EmbedOutput(global_=out.pooler_output, patches=self.to_grid(out.last_hidden_state))


@register(
    "chexagent",
    hub_repo=HUB_REPO,
    order=1,
    summary=(
        "`StanfordAIMI/XraySigLIP__vit-l-16-siglip-384__webli`, transformers `SiglipVisionModel` | "
        "plain bicubic resize 512x512, position embeddings interpolated, processor mean/std | "
        "attention-pool `pooler_output`, 1024 (**SigLIP has no [CLS] token**) | "
        "the whole `last_hidden_state`, 32x32x1024"
    ),
)
def load(name: str, source: WeightsSource, size: int | None = None, bits: int | None = None) -> SiglipEncoder:
    """CheXagent's SigLIP vision encoder from its folder."""
    return SiglipEncoder.load(name, source, size=size or 512, bits=bits or 8)
