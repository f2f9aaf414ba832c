"""CheXagent's vision encoder: transformers ``SiglipVisionModel`` (XraySigLIP ViT-L/16, width 1024).

The published folder (:data:`HUB_REPO`) is a full ``SiglipModel`` (text and vision towers,
``model_type`` "siglip"); its vision config says 512x512 with 16-pixel patches (the "384" in
the repository's name is the WebLI model it started from). radstore loads the vision tower
alone from it (a folder of a bare ``SiglipVisionModel`` works too): plain bicubic resize to
512x512 (no crop), the checkpoint's own position embeddings (interpolated only when ``--size``
asks for another input size), the processor's mean/std (0.5/0.5 unless the folder's
``preprocessor_config.json`` says otherwise). SigLIP has **no [CLS] token**: the global
embedding is the attention-pooling head's ``pooler_output``, and the patches are the *whole*
``last_hidden_state`` (32x32x1024 at 512).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from featurestore.encoders.base import EmbedOutput, Encoder
from featurestore.encoders.preprocess import PARITY, Preprocessing, from_processor_config
from featurestore.encoders.registry import register
from featurestore.encoders.weights import WeightFiles, WeightsSource, cache_dir, from_pretrained, transformers_weight_files

HUB_REPO = "StanfordAIMI/XraySigLIP__vit-l-16-siglip-384__webli"
#: The XraySigLIP processor as the study ran it (transformers ``SiglipImageProcessor``): plain
#: bicubic resize to 512x512, rescale 1/255, mean 0.5 / std 0.5. Written beside the random
#: stand-ins; also the fallback (with a warning) for a folder without the file.
XRAYSIGLIP_PROCESSOR_CONFIG = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "SiglipProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 512, "width": 512},
}
XRAYSIGLIP_PREPROCESSING = Preprocessing(size=512, mean=(0.5,) * 3, std=(0.5,) * 3, resize="squash")


def random_config(kind: str):
    """The ``SiglipConfig`` of a random stand-in in the published layout: the vision tower at 512x512
    with 16-pixel patches (ViT-L/16 for ``random``, 32 wide and 2 layers for ``random:tiny``) and a
    small text tower."""
    from transformers import SiglipConfig

    if kind == "random:tiny":
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    else:  # ViT-L/16, as the real checkpoint
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
    # The text tower only has to be there, as in the published folder: extraction never runs it,
    # so it is small even for "random" (the real one, about as large as the vision tower, would
    # double the cache).
    # Its projection must match the vision width, as SiglipModel's logits need.
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=1000,
                max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                projection_size=vision["hidden_size"])  # fmt: skip
    return SiglipConfig(text_config=text, vision_config={**vision, "image_size": 512, "patch_size": 16})


def build_random(kind: str, name: str, seed: int = 0) -> str:
    """Save a randomly initialised full ``SiglipModel`` in the published layout (:func:`random_config`)
    with the published processor config, once; return the folder to load from."""
    from transformers import SiglipModel

    folder = cache_dir() / kind.replace(":", "-") / f"{name}-siglip512-seed{seed}"
    if not (folder / "config.json").exists():
        torch.manual_seed(seed)
        model = SiglipModel(random_config(kind)).eval()
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps(XRAYSIGLIP_PROCESSOR_CONFIG, indent=2))
    return str(folder)


#: ``model_type`` of the folders radstore loads: a full SigLIP (the vision tower is taken) or its
#: vision tower alone.
SIGLIP_MODEL_TYPES = ("siglip", "siglip_vision_model")
#: Tensors of a full SigLIP checkpoint that the vision tower does not load.
TEXT_TOWER = ("text_model.", "logit_scale", "logit_bias")


def load_vision_model(folder: Path):
    """The ``SiglipVisionModel`` of a full ``SiglipModel`` folder (its ``vision_model.*`` tensors;
    the text tower is never built) or of a bare vision-tower folder, with the weight files its
    fingerprint is taken from. Raises RadstoreError for another model type or missing weights."""
    from transformers import SiglipVisionModel

    from featurestore.errors import RadstoreError

    model_type = json.loads((folder / "config.json").read_text()).get("model_type") if (folder / "config.json").exists() else None
    if model_type not in SIGLIP_MODEL_TYPES:
        raise RadstoreError(
            f"{folder}: config.json has model_type {model_type!r}; a SigLIP folder is needed ({', '.join(SIGLIP_MODEL_TYPES)})"
        )
    model = from_pretrained(SiglipVisionModel, folder, unused=TEXT_TOWER)
    return model, WeightFiles(transformers_weight_files(folder), tower="vision_model.")


class SiglipEncoder(Encoder):
    """CheXagent's SigLIP vision tower: attention-pool ``pooler_output`` as the global vector (there is
    no [CLS]) and the whole ``last_hidden_state`` as the patch grid."""

    def __init__(self, name: str, model, size: int | None = None, bits: int = 8, weights_label: str = "unknown",
                 preprocessing: Preprocessing = XRAYSIGLIP_PREPROCESSING):  # fmt: skip
        cfg = model.config
        self.model = self.module = model.eval()
        self.name = name
        self.preprocessing = preprocessing.with_overrides(size=size, bits=bits)
        side = self.preprocessing.size // cfg.patch_size
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
    def load(cls, name: str, source: WeightsSource, size: int | None = None, bits: int = 8) -> SiglipEncoder:
        """Load the vision tower offline from the source's folder (or a saved random one), with the
        mean/std of the folder's processor config (:func:`load_vision_model`)."""
        folder = Path(source.path) if source.path else Path(build_random(source.kind, name))
        model, files = load_vision_model(folder)
        pre = from_processor_config(folder, XRAYSIGLIP_PREPROCESSING)
        encoder = cls(name, model, size, bits, source.label, pre)
        encoder.weight_files = files
        return encoder

    def embed(self, batch: torch.Tensor) -> EmbedOutput:
        """Global and patch embeddings of a batch; position embeddings are interpolated only when the input
        size differs from the checkpoint's (a ``--size`` other than its config's)."""
        native = self.model.config.image_size
        out = self.model(pixel_values=batch, interpolate_pos_encoding=batch.shape[-1] != native)
        return EmbedOutput(global_=out.pooler_output, patches=self.to_grid(out.last_hidden_state))


@register(
    "chexagent",
    hub_repo=HUB_REPO,
    order=1,
    processor=f"transformers `SiglipImageProcessor` (512x512) from the folder's `preprocessor_config.json`; {PARITY}",
    summary=(
        "`StanfordAIMI/XraySigLIP__vit-l-16-siglip-384__webli`, transformers `SiglipModel`'s vision tower (`SiglipVisionModel`) | "
        "plain bicubic resize 512x512 (the checkpoint's own size, patch 16), processor mean/std | "
        "attention-pool `pooler_output`, 1024 (**SigLIP has no [CLS] token**) | "
        "the whole `last_hidden_state`, 32x32x1024"
    ),
)
def load(name: str, source: WeightsSource, size: int | None = None, bits: int | None = None) -> SiglipEncoder:
    """CheXagent's SigLIP vision encoder from its folder."""
    return SiglipEncoder.load(name, source, size=size, bits=bits or 8)
