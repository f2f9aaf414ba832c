"""The heads radstore can train, by name: ``@register_head("linear")`` on a builder.

A builder takes the task kind, the training config, the feature set's grid and global width
and the objective's output width (and target scale), and returns a torch module whose
``forward(global, patches)`` gives the objective's raw output. Which heads a task kind may
use is said once, in its ``heads`` (featurestore.tasks); CLI choices and config validation
come from :func:`head_names`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from featurestore.errors import RadstoreError

_BUILTIN_MODULES = ("heads.linear", "heads.cross_attention")


@dataclass(frozen=True)
class HeadEntry:
    """A registered head: its name, its builder, and whether a mask head also reads the global vector
    (training then streams both embeddings)."""

    name: str
    build: Callable[..., Any]  # (kind, cfg, channels, global_dim, outputs, y_scale) -> nn.Module
    reads_global: bool  # a mask head that also reads the global vector (cross-attention)
    #: A linear read-out of the embedding (the probes): what the positive control's expected
    #: values describe, so only these heads are held to them (evaluation.controls).
    linear_readout: bool = False


HEADS: dict[str, HeadEntry] = {}


def register_head(name: str, reads_global: bool = False, linear_readout: bool = False):
    """Decorator registering a head builder under ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        HEADS[name] = HeadEntry(name, fn, reads_global, linear_readout)
        return fn

    return deco


def _load_builtins() -> None:
    import importlib

    for m in _BUILTIN_MODULES:
        importlib.import_module(m)


def head_names() -> tuple[str, ...]:
    """Every registered head, the built-in ones included (their modules are imported first)."""
    _load_builtins()
    return tuple(HEADS)


def get_head(name: str) -> HeadEntry:
    """The registered head ``name`` (built-ins loaded first); raises RadstoreError listing the heads
    otherwise."""
    _load_builtins()
    if name not in HEADS:
        raise RadstoreError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    return HEADS[name]
