"""Validation of the batches handed to a writer, before any of a batch is buffered.

A batch is refused whole (FeatureSetError) so that a caller never has to find out which part of
it was kept: wrong shapes, an empty or repeated image_id, a non-float or non-finite embedding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from featurestore.errors import FeatureSetError
from featurestore.featureset.spec import FeatureSetSpec
from featurestore.manifest import printable

_NOTHING = "nothing of this batch was written"


def check_batch(
    spec: FeatureSetSpec,
    fs_id: str,
    ids: list[str],
    cls: Any,
    patches: Any,
    sha256: Sequence[str | None] | None,
    extras: dict[str, Any],
) -> None:
    """Shapes and ids of one batch for feature set ``fs_id``: everything that can be told
    without touching the values (those are checked by :func:`as_tensor`)."""
    b = len(ids)
    c, h, w = spec.grid
    d = spec.global_dim
    empty = [k for k, i in enumerate(ids) if not i]
    if empty:
        raise FeatureSetError(f"empty image_id at position(s) {_positions(empty)} of a batch of {b}; {_NOTHING}")
    if len(set(ids)) != b:
        where: dict[str, list[int]] = {}
        for k, i in enumerate(ids):
            where.setdefault(i, []).append(k)
        dupes = [(printable(i), ks) for i, ks in where.items() if len(ks) > 1]
        at = "; ".join(f"{i} at positions {_positions(ks)}" for i, ks in dupes[:5])
        more = f" and {len(dupes) - 5} more" if len(dupes) > 5 else ""
        raise FeatureSetError(f"image_id(s) {', '.join(i for i, _ in dupes[:5])}{more} appear twice in one batch ({at}); {_NOTHING}")
    if tuple(cls.shape) != (b, d):
        raise FeatureSetError(f"cls has shape {tuple(cls.shape)}, feature set {fs_id} expects ({b}, {d}) for {b} image_id(s); {_NOTHING}")
    if tuple(patches.shape) != (b, c, h, w):
        raise FeatureSetError(f"patches have shape {tuple(patches.shape)}, feature set {fs_id} expects ({b}, {c}, {h}, {w}); {_NOTHING}")
    if sha256 is not None and len(sha256) != b:
        raise FeatureSetError(f"{len(sha256)} sha256 values for {b} image_ids; {_NOTHING}")
    if set(extras) != set(spec.extra_globals):
        raise FeatureSetError(f"feature set {fs_id} expects extra global(s) {sorted(spec.extra_globals)}, got {sorted(extras)}; {_NOTHING}")
    for k, v in extras.items():
        if tuple(v.shape) != (b, spec.extra_globals[k]):
            raise FeatureSetError(f"extra global {k!r} has shape {tuple(v.shape)}, expected ({b}, {spec.extra_globals[k]}); {_NOTHING}")


def _positions(ks: list[int], most: int = 10) -> str:
    """``ks`` as text, at most ``most`` of them (then how many more)."""
    return ", ".join(map(str, ks[:most])) + (f" and {len(ks) - most} more" if len(ks) > most else "")


class NonFinite(Exception):
    """NaN or Inf in the rows at ``positions``: the writer names those images in its error."""

    def __init__(self, positions: list[int]):
        self.positions = positions


def as_tensor(x: Any, what: str) -> torch.Tensor:
    """A CPU-or-device float tensor view of ``x`` (no copy where avoidable), checked finite.

    Raises FeatureSetError for a non-float or unknown type and :class:`NonFinite` with the bad
    rows, so the caller can say which image_ids are at fault.
    """
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise FeatureSetError(f"{what} must be floating point, got {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise FeatureSetError(f"{what} must be floating point, got {x.dtype}")
        t = x.detach()
    else:
        raise FeatureSetError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")
    # One reduction instead of an element-wise isfinite(): a sum is finite when every element
    # is; only a non-finite sum (NaN/Inf, or an overflow of huge values) is looked at element
    # by element. Half types use their min and max instead (NaN propagates), which avoids a
    # float32-accumulated sum of the float16 input extraction hands the writer.
    if t.dtype in (torch.float16, torch.bfloat16) and t.numel():
        lo, hi = torch.aminmax(t)
        finite = bool(torch.isfinite(lo) & torch.isfinite(hi))
    else:
        finite = bool(torch.isfinite(t.sum(dtype=torch.float32)))
    if not finite:
        flat = t.reshape(t.shape[0], -1)
        bad = (~torch.isfinite(flat)).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise NonFinite(bad)
    return t


@contextlib.contextmanager
def one_torch_thread(x: Any) -> Iterator[None]:
    """Run the writer's check and cast of CPU tensors on one intra-op thread.

    Both are memory-bound: a second OpenMP thread does not make them faster, but its spinning
    takes the core the background shard write needs (benchmarks/README.md). Device tensors
    are left alone.
    """
    n = torch.get_num_threads()
    if n == 1 or (isinstance(x, torch.Tensor) and x.device.type != "cpu"):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
