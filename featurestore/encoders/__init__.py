"""Encoder adapters: one interface (:class:`~featurestore.encoders.base.Encoder`) for every model.

Each adapter module registers its encoders (:mod:`featurestore.encoders.registry`);
``radstore encoders`` and the README print the table of what is registered.
"""

from __future__ import annotations

import os

# radstore never downloads weights: keep huggingface_hub (and transformers, timm) offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib
import pkgutil

from featurestore.encoders.base import EmbedOutput, Encoder
from featurestore.encoders.registry import ENCODERS, EncoderInfo, encoder_names, get_encoder, register
from featurestore.encoders.weights import MissingWeightsError, resolve

__all__ = [
    "ENCODERS",
    "EmbedOutput",
    "Encoder",
    "EncoderInfo",
    "MissingWeightsError",
    "choose_weights",
    "encoder_names",
    "get_encoder",
    "load_encoder",
    "preflight",
    "register",
]

#: Modules of this package that are infrastructure, not adapters.
_NOT_ADAPTERS = {"base", "preprocess", "registry", "weights"}


def _discover() -> None:
    """Import every adapter module of this package (each registers its encoders), then any
    package that declares a ``radstore.encoders`` entry point."""
    for m in pkgutil.iter_modules(__path__):
        if m.name not in _NOT_ADAPTERS:
            importlib.import_module(f"{__name__}.{m.name}")
    from importlib.metadata import entry_points

    for ep in entry_points(group="radstore.encoders"):
        ep.load()


def _weights_or_default(info: EncoderInfo, weights: str | None) -> str | None:
    return weights or info.default_weights


def preflight(name: str, weights: str | None = None) -> None:
    """Raise now (RadstoreError) if ``name`` is unknown or its weights cannot be found offline."""
    info = get_encoder(name)
    if info.needs_weights:
        resolve(name, _weights_or_default(info, weights), info.hub_repo)


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
        return fallback, (f"*** {name}: NO REAL WEIGHTS FOUND, using {fallback} weights -- its numbers mean nothing about {name}. {e}")


def load_encoder(name: str, weights: str | None = None, size: int | None = None, bits: int | None = None,
                 intensity: str | None = None) -> Encoder:  # fmt: skip
    """Build encoder ``name`` from offline weights; ``size``/``bits``/``intensity`` override its
    preprocessing.

    A changed input size, bit depth or intensity rule changes the preprocessing, hence the
    feature set id: the study's resolution, bit-depth and min-max ablations land in distinct
    feature sets.
    """
    info = get_encoder(name)
    source = resolve(name, _weights_or_default(info, weights), info.hub_repo) if info.needs_weights else None
    if info.needs_weights:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # radstore shows its own progress; keep logs readable
    encoder = info.load(name, source, size, bits)
    if intensity is not None:
        encoder.preprocessing = encoder.preprocessing.with_overrides(intensity=intensity)
    return encoder


_discover()
