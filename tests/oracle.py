"""The oracle embeddings every store test compares against: deterministic per image_id.

A module of its own (no pytest, no synthetic cohort) so that writer subprocesses import it cheaply.
"""

from __future__ import annotations

import zlib

import numpy as np

TINY_GRID = (8, 4, 4)
TINY_DIM = 6


def embedding_for(image_id: str, grid=TINY_GRID, dim=TINY_DIM) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (cls, patches) of one image."""
    rng = np.random.default_rng(zlib.crc32(image_id.encode()))
    return rng.standard_normal(dim).astype(np.float32), rng.standard_normal(grid).astype(np.float32)


def batch_for(ids, grid=TINY_GRID, dim=TINY_DIM) -> tuple[np.ndarray, np.ndarray]:
    """(cls, patches) of ``ids``, stacked."""
    pairs = [embedding_for(i, grid, dim) for i in ids]
    return np.stack([c for c, _ in pairs]), np.stack([p for _, p in pairs])
