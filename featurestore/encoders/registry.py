"""The encoders radstore can extract with, by name: ``@register("rad-dino", ...)`` on a loader.

Each adapter module of this package registers its encoders when the package is imported
(every module here is imported; third-party packages can add encoders through the
``radstore.encoders`` entry-point group). CLI choices, study-config validation, the study's
default grid and the README's table all read :data:`ENCODERS`, so adding an encoder is one
new module plus its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featurestore.errors import RadstoreError

if TYPE_CHECKING:
    from featurestore.encoders.base import Encoder


@dataclass(frozen=True)
class EncoderInfo:
    """What the pipeline needs to know about an encoder before loading it."""

    name: str
    load: Callable[..., Encoder]  # (name, WeightsSource | None, size | None, bits | None) -> Encoder
    hub_repo: str | None = None  # the published checkpoint (looked up in the HF cache, offline)
    needs_weights: bool = True  # False for weight-free controls (pixels)
    default_weights: str | None = None  # used when none are given (random-vit: "random")
    order: int = 100  # position in the study's default grid and in listings
    summary: str = ""  # "model | input | global embedding | patch grid", for the README table
    control: str | None = None  # "negative" (no model: pixels, random-vit), "positive" (planted), None
    processor: str = ""  # the reference preprocessing its model input equals (README table; parity test)

    def describe(self) -> dict[str, Any]:
        """The encoder's ``summary`` split into the README table's columns (model, input, global, patches)."""
        model, size, glob, patches = (self.summary.split("|") + [""] * 4)[:4]
        return {"name": self.name, "model": model.strip(), "input": size.strip(), "global": glob.strip(),
                "patches": patches.strip(), "processor": self.processor or "-"}  # fmt: skip


ENCODERS: dict[str, EncoderInfo] = {}
CONTROLS = (None, "negative", "positive")


def control_of(name: str) -> str | None:
    """ "negative", "positive" or None for an encoder name (None too for a name not registered)."""
    info = ENCODERS.get(name)
    return info.control if info is not None else None


def display_name(name: str) -> str:
    """How tables, figures and logs name an encoder: a control says it is one."""
    control = control_of(name)
    return f"{name} ({control} control)" if control else name


def register(name: str, *, hub_repo: str | None = None, needs_weights: bool = True, default_weights: str | None = None,
             order: int = 100, summary: str = "", control: str | None = None, processor: str = ""):  # fmt: skip
    """Decorator registering ``load(name, source, size, bits) -> Encoder`` as encoder ``name``;
    ``control`` marks a control ("negative" or "positive"), named so wherever it appears."""
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")

    def deco(load: Callable[..., Encoder]) -> Callable[..., Encoder]:
        ENCODERS[name] = EncoderInfo(name, load, hub_repo, needs_weights, default_weights, order, summary, control, processor)
        _sort()
        return load

    return deco


def _sort() -> None:
    items = sorted(ENCODERS.items(), key=lambda kv: (kv[1].order, kv[0]))
    ENCODERS.clear()
    ENCODERS.update(items)


def get_encoder(name: str) -> EncoderInfo:
    """The registered encoder ``name``; raises RadstoreError listing the registered names otherwise."""
    if name not in ENCODERS:
        raise RadstoreError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


def encoder_names() -> tuple[str, ...]:
    """Every registered encoder, in the study's order."""
    return tuple(ENCODERS)


def readme_table() -> str:
    """The README's encoder table (a test checks the README holds it)."""
    rows = [ENCODERS[n].describe() for n in ENCODERS]
    head = (
        "| `--encoder` | model (library class) | input | global embedding | patch grid | model input equals |\n|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| `{r['name']}` | {r['model']} | {r['input']} | {r['global']} | {r['patches']} | {r['processor']} |\n" for r in rows
    )
