"""The CLI's options, derived from the job configs and the registries.

A default or a choice is written once, in ``ExtractConfig``/``TrainConfig``/``EvalConfig`` or
a registry; :func:`config_option` reads it from there, and registry-backed choices are read
lazily (:class:`LazyChoices`) so ``radstore --help`` does not import torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any


class LazyChoices(Sequence):
    """Choices read from a registry whenever argparse looks at them (never copied), so building
    the parser (and ``radstore --help``) does not import the registry's heavy modules, and an
    encoder registered later is a valid choice."""

    def __init__(self, load: Callable[[], Sequence[str]]):
        self._load = load

    def _get(self) -> Sequence[str]:
        return tuple(self._load())

    def __getitem__(self, i):  # noqa: ANN001 - Sequence protocol
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __contains__(self, x: object) -> bool:
        return x in self._get()


def _encoder_names() -> Sequence[str]:
    from featurestore.encoders import encoder_names

    return encoder_names()


ENCODER_CHOICES = LazyChoices(_encoder_names)


def encoder_list(text: str) -> list[str]:
    """``--encoder a,b,c`` -> the names, each a registered encoder, none twice (argparse type)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one encoder name")
    from featurestore.describe import registrations

    known = registrations()  # read from the adapters' source, without importing torch
    unknown = [n for n in names if n not in known and n not in ENCODER_CHOICES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown encoder(s) {', '.join(map(repr, unknown))}; choose from {', '.join(ENCODER_CHOICES)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"encoder(s) listed twice: {', '.join(twice)}")
    return names


def config_option(p: argparse.ArgumentParser, cls: type, name: str, help: str, **kw: Any) -> None:
    """``--name`` for field ``name`` of config dataclass ``cls``: its default (and type) come
    from the dataclass, so a default is changed in one place and the CLI follows."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    default = None if f.default is dataclasses.MISSING else f.default
    if "type" not in kw and "action" not in kw:
        kw["type"] = type(default) if isinstance(default, (int, float, str)) and not isinstance(default, bool) else str
    shown = "" if default is None else f" (default: {default})"
    p.add_argument("--" + name.replace("_", "-"), dest=name, default=default, help=help + shown, **kw)


def config_values(args: argparse.Namespace, cls: type, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``cls`` fields the parser holds (or ``names`` of them), as keyword arguments."""
    wanted = names or [f.name for f in dataclasses.fields(cls)]
    return {n: getattr(args, n) for n in wanted if hasattr(args, n)}


#: The TrainConfig fields `radstore train` exposes (task, head and fold are chosen per run).
TRAIN_OPTIONS = (
    "seed",
    "lr",
    "max_epochs",
    "patience",
    "min_delta",
    "min_epochs",
    "min_val_positives",
    "batch_size",
    "seg_loss",
    "target_size",
    "device",
    "folds",
    "solver",
    "train_fraction",
    "shots",
    "subset_seed",
)
EXTRACT_OPTIONS = ("weights", "size", "bits", "intensity", "batch_size", "device", "num_workers", "shard_images", "dtype", "profile")
#: The HealthConfig fields `radstore health` exposes, with their help (defaults come from the config).
HEALTH_OPTIONS = {
    "sample": "images whose patch grids are read (and CKA's images); 0: all",
    "seed": "seed of the samples and the drift test's permutations",
    "leakage_threshold": "whitened cosine at or above which a test-train pair is listed",
    "drift_sample": "embeddings per side of the drift test",
    "permutations": "permutations of the drift test's p-value",
}

EVAL_OPTIONS = ("resamples", "seed", "method", "empty_both", "threshold", "min_class_count", "target_sensitivity")
