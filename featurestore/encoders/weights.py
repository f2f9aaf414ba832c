"""An encoder's weights: found offline (:mod:`featurestore.weights_source`, whose names are
re-exported here), loaded, fingerprinted.

``random:tiny`` builds a tiny randomly initialised model of the *same class* (fixed seed),
saves it with the library's own ``save_pretrained``/checkpoint format under
``$RADSTORE_CACHE`` (default ``~/.cache/radstore``) and loads it back through the same local
loading path as real weights; feature sets made that way are labelled ``weights: random:tiny``.

:class:`WeightFiles` fingerprints the weights from the checkpoint files as stored (scheme
``files-v1``): the part of a feature set's id that says which weights made it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featurestore.errors import RadstoreError
from featurestore.weights_source import (  # noqa: F401  (the loaders' names for them)
    ENV_CACHE,
    ENV_WEIGHTS_DIR,
    RANDOM_KINDS,
    MissingWeightsError,
    WeightsSource,
    cache_dir,
    resolve,
)

# -- the weights fingerprint, from the files ---------------------------------------------------


@dataclass(frozen=True)
class WeightFiles:
    """The checkpoint files an encoder's weights were read from, and which of their tensors it loaded.

    The fingerprint (scheme ``files-v1``) is taken from these files, not from the module built in
    memory: libraries rename modules between versions (transformers 5 dropped SigLIP's
    ``vision_model.`` prefix from ``SiglipVisionModel``), which would change every feature set id
    on an upgrade. ``tower`` is the stored-name prefix of the tensors the encoder loads
    (``vision_model.`` for SigLIP, ``visual.`` for open_clip; empty: all of them); they are named
    relative to it, so a full SigLIP checkpoint and one of its vision tower alone agree. A file
    with no name under the prefix holds the tower alone, and all of its tensors count.
    """

    files: tuple[Path, ...]
    tower: str = ""

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name relative to the tower, tensor as stored) of every loaded tensor, in name order, one at a
        time: a safetensors file is read tensor by tensor, a torch pickle memory-mapped."""
        with contextlib.ExitStack() as stack:
            where: dict[str, Callable[[], torch.Tensor]] = {}
            for path in self.files:
                if path.suffix == ".safetensors":
                    from safetensors import safe_open

                    f = stack.enter_context(safe_open(str(path), framework="pt"))
                    stored = {k: functools.partial(f.get_tensor, k) for k in f.keys()}
                else:
                    state = _torch_state_dict(path)
                    stored = {k: functools.partial(state.__getitem__, k) for k in state}
                for name, get in stored.items():
                    if name in where:
                        raise RadstoreError(f"tensor {name} is stored twice in {', '.join(map(str, self.files))}")
                    where[name] = get
            names = sorted(where)
            if self.tower and any(n.startswith(self.tower) for n in names):
                selected = {n[len(self.tower) :]: n for n in names if n.startswith(self.tower)}
            else:
                selected = {n: n for n in names}
            for rel in sorted(selected):
                yield rel, where[selected[rel]]()

    def fingerprint(self) -> str:
        """``files-v1``: sha256 over the loaded tensors in name order, each as the line
        ``json.dumps([name, dtype, shape], separators=(",", ":"))`` + newline followed by its raw
        little-endian bytes (dtype as torch names it without ``torch.``: "float32", "bfloat16",
        "int64"); the first 16 hex digits. The same tensors give the same value whether stored as
        safetensors or a torch pickle, in one file or in shards."""
        h = hashlib.sha256()
        for name, t in self.tensors():
            dtype = str(t.dtype).removeprefix("torch.")
            h.update(json.dumps([name, dtype, list(t.shape)], separators=(",", ":")).encode() + b"\n")
            if t.numel():
                h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        return h.hexdigest()[:16]


#: The files ``from_pretrained`` reads a transformers model from, in its order of preference.
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def transformers_weight_files(folder: Path) -> tuple[Path, ...]:
    """The checkpoint files transformers loads from ``folder``: ``model.safetensors``, else the shards
    its index names, else the torch pickle (or its shards). Other files beside them (RAD-DINO's
    ``backbone_compatible.safetensors`` and ``dino_head.safetensors``) are not the model's and are
    not read. Raises MissingWeightsError when there is none."""
    for name in TRANSFORMERS_WEIGHTS:
        p = Path(folder) / name
        if p.is_file():
            if name.endswith(".index.json"):
                weight_map = json.loads(p.read_text())["weight_map"]
                return tuple(Path(folder) / f for f in sorted(set(weight_map.values())))
            return (p,)
    raise MissingWeightsError(f"{folder} has no model weights (none of {', '.join(TRANSFORMERS_WEIGHTS)})")


def _torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A torch-pickled state dict (memory-mapped where the file allows), unwrapped as open_clip's
    loader does: a ``state_dict`` entry, a ``module.`` prefix left by DataParallel."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) pickle cannot be memory-mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if obj and next(iter(obj)).startswith("module"):
        obj = {k[7:]: v for k, v in obj.items()}
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _drop_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in record.getMessage()


def from_pretrained(model_cls: type, folder: Path | str, *, unused: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> Any:
    """``model_cls.from_pretrained(folder)`` offline, refusing a checkpoint that lacks some of the
    model's weights: transformers would initialise those randomly with a warning that scrolls by,
    and the features would silently not be the published model's.

    ``unused``: prefixes of stored tensors the model is expected not to load (a full SigLIP
    checkpoint's text tower); any other unused tensor is warned about. ``optional``: weights the
    checkpoint may lack because extraction never uses them (DINOv2's ``embeddings.mask_token``).
    transformers' own load report is silenced: these checks replace it.
    """
    from transformers.utils import logging as hf_logging

    report = hf_logging.get_logger("transformers.modeling_utils")
    report.addFilter(_drop_load_report)  # not the logger's level: transformers runs other checks above WARNING
    try:
        model, info = model_cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    finally:
        report.removeFilter(_drop_load_report)
    missing = sorted(k for k in info["missing_keys"] if k not in optional) + sorted(k[0] for k in info["mismatched_keys"])
    if missing:
        import transformers

        raise RadstoreError(
            f"{folder}: the checkpoint lacks {len(missing)} weight(s) of {model_cls.__name__} ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}): it is not such a checkpoint, or not one transformers "
            f"{transformers.__version__} reads; radstore will not fill them with random values"
        )
    extra = sorted(k for k in info["unexpected_keys"] if not k.startswith(unused))
    if extra:
        warnings.warn(
            f"{folder}: {len(extra)} stored tensor(s) not used by {model_cls.__name__}: {', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}",
            stacklevel=2,
        )
    return model
