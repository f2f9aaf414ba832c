"""Encoder adapters: one interface (:class:`~featurestore.encoders.base.Encoder`) for every model.

==============  =============================================  =====  ===========  ==========
name            model                                          input  global       patches
==============  =============================================  =====  ===========  ==========
rad-dino        transformers Dinov2Model (microsoft/rad-dino)  518    768 pooler   37x37x768
chexagent       transformers SiglipVisionModel (XraySigLIP)    512    1024 attnpool 32x32x1024
biomedclip      open_clip timm ViT-B/16 (BiomedCLIP)           224    512 proj     14x14x768
pixels          none: pooled pixels (control)                  512    274 stats    32x32x16
random-vit      Dinov2Model, random weights, seeded (control)   518    768 pooler   37x37x768
==============  =============================================  =====  ===========  ==========
"""

from __future__ import annotations

import os

# radstore never downloads weights: keep huggingface_hub (and transformers, timm) offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from featurestore.encoders.base import EmbedOutput, Encoder
from featurestore.encoders.weights import MissingWeightsError, resolve

ENCODERS = ("rad-dino", "chexagent", "biomedclip", "pixels", "random-vit")
HUB_REPOS = {
    "rad-dino": "microsoft/rad-dino",
    "chexagent": "StanfordAIMI/XraySigLIP__vit-l-16-siglip-384__webli",
    "biomedclip": "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
}

__all__ = ["ENCODERS", "EmbedOutput", "Encoder", "MissingWeightsError", "choose_weights", "load_encoder", "preflight"]


def _check_name(name: str) -> None:
    from featurestore.errors import RadstoreError

    if name not in ENCODERS:
        raise RadstoreError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")


def _weights_or_default(name: str, weights: str | None) -> str | None:
    """random-vit is random by definition; the others look for real weights."""
    return weights or ("random" if name == "random-vit" else None)


def preflight(name: str, weights: str | None = None) -> None:
    """Raise now (RadstoreError) if ``name`` is unknown or its weights cannot be found offline."""
    _check_name(name)
    if name != "pixels":
        resolve(name, _weights_or_default(name, weights), HUB_REPOS.get(name))


def choose_weights(name: str, weights: str | None, fallback: str = "error") -> tuple[str | None, str | None]:
    """The weights to use, and a warning when they are a stand-in.

    ``fallback`` ("random:tiny", "random" or "error") is what an encoder gets when its real
    weights are not found offline; the warning says so loudly, because numbers from random
    weights measure the pipeline, not the model.
    """
    try:
        preflight(name, weights)
        return weights, None
    except MissingWeightsError as e:
        if fallback == "error":
            raise
        return fallback, (f"*** {name}: NO REAL WEIGHTS FOUND, using {fallback} weights -- its numbers mean nothing about "
                          f"{name}. {e}")


def load_encoder(name: str, weights: str | None = None, size: int | None = None, bits: int | None = None) -> Encoder:
    """Build encoder ``name`` from offline weights; ``size``/``bits`` override its preprocessing.

    A changed input size or bit depth changes the preprocessing, hence the feature set id: the
    study's resolution and bit-depth ablations land in distinct feature sets.
    """
    _check_name(name)
    if name == "pixels":
        from featurestore.encoders.pixels import PixelsEncoder

        return PixelsEncoder(size=size or 512, bits=bits or 8)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # radstore shows its own progress; keep logs readable
    if name == "chexagent":
        from featurestore.encoders.siglip import SiglipEncoder

        return SiglipEncoder.load(name, resolve(name, weights, HUB_REPOS[name]), size=size or 512, bits=bits or 8)
    if name == "biomedclip":
        from featurestore.encoders.openclip import OpenClipEncoder

        return OpenClipEncoder.load(name, resolve(name, weights, HUB_REPOS[name]), size=size, bits=bits or 8)
    from featurestore.encoders.dinov2 import Dinov2Encoder

    return Dinov2Encoder.load(name, resolve(name, _weights_or_default(name, weights), HUB_REPOS.get(name)), size=size or 518, bits=bits or 8)
