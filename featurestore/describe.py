"""Which feature set an extraction configuration goes into, known without loading the model.

A feature set's id needs the weights fingerprint, a hash over every tensor of the checkpoint,
so learning it means loading the encoder. Once an extraction has done that, :func:`remember`
records ``signature(cfg) -> feature set id`` under ``<radstore cache>/describe/<signature>.json``;
:func:`known_feature_set` gives the id back from that record alone, which is what lets a rerun
with nothing to do say so before Prefect (or torch) starts.

The signature changes whenever the id could: the encoder's name; where its weights are found,
as :func:`featurestore.weights_source.resolve` finds them (a folder, the Hugging Face
cache, a random stand-in), with the name, size and mtime of every file there; every field of
the config but those that only decide speed (:data:`SPEED_FIELDS`: batch size, device,
workers...); the libraries that build models from names; and
a hash of radstore's own source files that decide a spec (the encoder adapters, the spec and
the id functions, this module). A missing or unreadable record is a cache miss: the caller
takes the normal path, which loads the model.

Kept free of torch, transformers and Prefect: it must stay cheap to import.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from featurestore.config import ExtractConfig
from featurestore.weights_source import RANDOM_KINDS, MissingWeightsError, cache_dir, resolve

#: Bump when the signature's content changes meaning.
SIGNATURE_VERSION = 1
DESCRIBE_DIR = "describe"
#: ExtractConfig fields that decide how fast, not what, is extracted; every other field enters the
#: signature (a field added later counts until it is listed here).
SPEED_FIELDS = ("batch_size", "device", "num_workers", "progress", "profile", "device_preprocess")
#: Libraries that build a model from a name or config: their version may change its shape.
MODEL_LIBRARIES = ("transformers", "open_clip_torch", "timm")

_ROOT = Path(__file__).resolve().parent
#: Infrastructure modules of featurestore/encoders: every other module there is an adapter.
_NOT_ADAPTERS = {"__init__", "base", "preprocess", "registry", "weights"}


@dataclass(frozen=True)
class Registration:
    """What ``@register(...)`` in an adapter module says about an encoder, read from its source."""

    name: str
    hub_repo: str | None = None
    needs_weights: bool = True
    default_weights: str | None = None


def source_files() -> list[Path]:
    """radstore's source files that decide a feature set's spec and id: a change to any of them may
    change defaults, hence ids."""
    files = sorted((_ROOT / "encoders").glob("*.py"))
    files += [_ROOT / "featureset" / "spec.py", _ROOT / "layout" / "identity.py", _ROOT / "layout" / "paths.py", _ROOT / "config.py",
              _ROOT / "weights_source.py", Path(__file__)]  # fmt: skip
    return files


def source_hash() -> str:
    """sha256 over :func:`source_files` (names and bytes)."""
    h = hashlib.sha256()
    for p in source_files():
        h.update(p.name.encode() + b"\0")
        with contextlib.suppress(OSError):
            h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def registrations() -> dict[str, Registration]:
    """The encoders the adapter modules of featurestore/encoders register, read from their source
    (importing them would import torch). An encoder whose ``register`` arguments are not literals
    (or module-level constants) is left out: its signature cannot be computed."""
    out: dict[str, Registration] = {}
    for path in sorted((_ROOT / "encoders").glob("*.py")):
        if path.stem in _NOT_ADAPTERS:
            continue
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError, ValueError):
            continue
        consts = _module_constants(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for deco in node.decorator_list:
                    reg = _registration(deco, consts)
                    if reg is not None:
                        out[reg.name] = reg
    return out


_MISSING = object()


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    consts: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target, value = node.target.id, node.value
        else:
            continue
        if isinstance(value, ast.Constant):
            consts[target] = value.value
    return consts


def _literal(node: ast.expr, consts: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return consts.get(node.id, _MISSING)
    return _MISSING


def _registration(deco: ast.expr, consts: dict[str, Any]) -> Registration | None:
    """The Registration of a ``@register("name", ...)`` decorator; None for any other decorator or one
    whose weights-related arguments are not literals."""
    if not (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name) and deco.func.id == "register" and deco.args):
        return None
    name = _literal(deco.args[0], consts)
    if not isinstance(name, str):
        return None
    kw: dict[str, Any] = {}
    for k in deco.keywords:
        if k.arg in ("hub_repo", "needs_weights", "default_weights"):
            value = _literal(k.value, consts)
            if value is _MISSING:
                return None
            kw[k.arg] = value
    return Registration(name, **kw)


def _plugins() -> list[list[str]]:
    """Encoders other packages register (entry points): they may replace a built-in one."""
    try:
        eps = metadata.entry_points(group="radstore.encoders")
    except Exception:  # noqa: BLE001 - broken metadata: the signature just says so
        return [["unreadable"]]
    return sorted([ep.name, ep.value, getattr(ep.dist, "name", "") or "", getattr(ep.dist, "version", "") or ""] for ep in eps)


def _library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for lib in MODEL_LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def weights_source(reg: Registration, weights: str | None) -> tuple[str, Path | None] | None:
    """(kind, folder) of the weights an encoder would load, found by the loaders' own
    :func:`featurestore.weights_source.resolve`; ("none", None) for a weight-free encoder; None
    when there are no weights (loading would fail)."""
    if not reg.needs_weights:
        return "none", None
    try:
        found = resolve(reg.name, weights or reg.default_weights, reg.hub_repo)
    except MissingWeightsError:
        return None
    return found.kind, (found.path.expanduser().resolve() if found.path is not None else None)


def _files(root: Path, prefix: str = "") -> list[list[Any]]:
    """[relative name, size, mtime_ns] of every file under ``root`` (symlinks followed, as the
    Hugging Face cache links its snapshot files to blobs), in name order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            try:
                st = p.stat()
            except OSError:
                continue
            out.append([prefix + p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def _weights_files(kind: str, folder: Path | None, name: str) -> list[list[Any]]:
    if folder is not None:
        return _files(folder)
    if kind in RANDOM_KINDS:
        # The adapters save random stand-ins as <cache>/<kind>/<encoder>-...: the saved files are
        # what the fingerprint hashes, so a rebuilt stand-in changes the signature.
        base = cache_dir() / kind.replace(":", "-")
        with contextlib.suppress(OSError):
            return [f for d in sorted(base.iterdir()) if d.is_dir() and d.name.startswith(f"{name}-") for f in _files(d, d.name + "/")]
    return []


def signature(cfg: ExtractConfig) -> str | None:
    """A cheap key that changes whenever ``cfg``'s feature set id could (module docstring); None when
    it cannot be computed without loading the model (an encoder registered by another package
    under a name radstore does not know, weights not found)."""
    reg = registrations().get(cfg.encoder)
    if reg is None:
        return None
    source = weights_source(reg, cfg.weights)
    if source is None:
        return None
    kind, folder = source
    doc = {
        "version": SIGNATURE_VERSION,
        "encoder": cfg.encoder,
        "weights": {"kind": kind, "path": None if folder is None else str(folder), "files": _weights_files(kind, folder, cfg.encoder)},
        "config": {k: v for k, v in cfg.to_json().items() if k not in ("encoder", "weights", *SPEED_FIELDS)},
        "source": source_hash(),
        "libraries": _library_versions() if reg.needs_weights else {},
        "plugins": _plugins(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _record_path(sig: str) -> Path:
    return cache_dir() / DESCRIBE_DIR / f"{sig}.json"


def _read(sig: str) -> str | None:
    try:
        rec = json.loads(_record_path(sig).read_text())
    except (OSError, ValueError):
        return None
    fid = rec.get("feature_set_id") if isinstance(rec, dict) else None
    if not isinstance(fid, str) or not fid or rec.get("signature") != sig:
        return None
    return fid


def remember(cfg: ExtractConfig, feature_set_id: str) -> None:
    """Record that ``cfg`` goes into ``feature_set_id`` (called once the model is loaded and the
    feature set known). A cache: a failure to write it is ignored, and an unchanged record is
    not rewritten."""
    sig = signature(cfg)
    if sig is None or _read(sig) == feature_set_id:
        return
    path = _record_path(sig)
    rec = {"signature": sig, "feature_set_id": feature_set_id, "encoder": cfg.encoder, "weights": cfg.weights}
    tmp = path.with_name(f".{sig}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(rec, indent=1))
        os.replace(tmp, path)  # a reader sees the old record or the new one, never half of one
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def known_feature_set(cfg: ExtractConfig) -> str | None:
    """The feature set id ``cfg`` was last found to go into under an identical signature, or None
    (never recorded, or anything that could change the id has changed since)."""
    sig = signature(cfg)
    return None if sig is None else _read(sig)


__all__ = ["Registration", "known_feature_set", "registrations", "remember", "signature", "source_hash", "weights_source"]
