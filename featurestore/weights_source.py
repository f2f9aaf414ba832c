"""Where an encoder's weights come from: strictly offline, and known without torch.

Order: ``--weights`` (a directory, ``random`` or ``random:tiny``) -> ``$RADSTORE_WEIGHTS_DIR/<encoder>``
-> the Hugging Face cache (``local_files_only``). Nothing is ever downloaded; a miss raises
:class:`MissingWeightsError` saying where radstore looked and the one command that fetches them.

Kept free of torch (outside :mod:`featurestore.encoders`, whose package imports the models) so
that the describe cache (:mod:`featurestore.describe`) finds weights in the same order as the
loaders (:mod:`featurestore.encoders.weights`, which re-exports these names) without loading one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from featurestore.errors import RadstoreError

ENV_WEIGHTS_DIR = "RADSTORE_WEIGHTS_DIR"
ENV_CACHE = "RADSTORE_CACHE"
RANDOM_KINDS = ("random", "random:tiny")


class MissingWeightsError(RadstoreError):
    """No weights where radstore looked; the message lists the places and the command that fetches them."""

    pass


@dataclass(frozen=True)
class WeightsSource:
    """Where an encoder's weights were found: a folder (``path``) or a random kind (``path`` None), and
    the label the feature set records for them."""

    kind: str  # "local" | "hf-cache" | "random" | "random:tiny"
    path: Path | None
    label: str  # what the feature set's metadata records

    @property
    def is_random(self) -> bool:
        """True for ``random`` and ``random:tiny``: the loader builds the model instead of reading a folder."""
        return self.kind.startswith("random")


def cache_dir() -> Path:
    """Where random models are saved: ``$RADSTORE_CACHE``, else ``~/.cache/radstore`` (read on every
    call, so a changed environment takes effect)."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "radstore")


def resolve(encoder: str, weights: str | None, hub_repo: str | None) -> WeightsSource:
    """Find ``encoder``'s weights offline, in the order of the module docstring; raises
    MissingWeightsError saying where it looked when there are none."""
    if weights in RANDOM_KINDS:
        return WeightsSource(weights, None, weights)
    looked: list[str] = []
    if weights:
        p = Path(weights).expanduser()
        if p.is_dir():
            return WeightsSource("local", p, f"local:{p.resolve()}")
        raise MissingWeightsError(
            f"--weights {weights} for encoder {encoder} is not a directory. Give a folder holding the model's "
            f"files{_fetch_hint(encoder, hub_repo, p)}"
        )
    env = os.environ.get(ENV_WEIGHTS_DIR)
    if env:
        p = Path(env).expanduser() / encoder
        if p.is_dir():
            return WeightsSource("local", p, f"local:{p.resolve()}")
        looked.append(f"${ENV_WEIGHTS_DIR}/{encoder} ({p}: missing)")
    else:
        looked.append(f"${ENV_WEIGHTS_DIR} (not set)")
    if hub_repo:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a download, whoever imports huggingface_hub first
        from huggingface_hub import snapshot_download
        from huggingface_hub.constants import HF_HUB_CACHE

        hub_cache = os.environ.get("HF_HUB_CACHE") or HF_HUB_CACHE  # read now: tests and users may set it late
        try:
            p = Path(snapshot_download(hub_repo, local_files_only=True, cache_dir=hub_cache))
            return WeightsSource("hf-cache", p, f"hf:{hub_repo}@{p.name}")
        except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and friends: not cached
            looked.append(f"Hugging Face cache ({hub_cache}: no {hub_repo})")
    target = Path(env).expanduser() / encoder if env else Path(f"$RADSTORE_WEIGHTS_DIR/{encoder}")
    raise MissingWeightsError(
        f"no weights for encoder {encoder}: looked in --weights (not given), {', '.join(looked)}"
        f"{_fetch_hint(encoder, hub_repo, target)} Or run with --weights random:tiny for a test run."
    )


def _fetch_hint(encoder: str, hub_repo: str | None, target: Path) -> str:
    if not hub_repo:
        return "."
    return f". On a machine with internet run: hf download {hub_repo} --local-dir {target} (then copy the folder here)."
