"""Whether an encoder's patch tokens still describe different places of the image.

For one image's grid ``[C, H, W]`` (``P = H * W`` tokens of ``C`` channels):

* ``patch_cosine``: the mean cosine over all distinct pairs of its tokens,
  ``(|sum u|^2 - P) / (P (P - 1))`` with ``u`` the unit tokens. Near 1, every token points
  the same way: the grid is spatially collapsed, and a segmentation head reading it has
  nothing to localise with. Exact and linear in ``P``, so it is computed for every sampled image;
* ``patch_rank``: the effective rank (RankMe) of the image's ``P x C`` token matrix, from the
  eigenvalues of its smaller Gram matrix; cubic in ``C``, so computed for the first images of
  the sample only;
* the spatial map of the mean token norm per grid position: a border, corner or register
  artefact shows as a ring or a spot.

:class:`PatchAccumulator` folds batches of grids into these, plus a seeded sample of tokens
per image whose pooled spectrum (:class:`featurestore.health.spectrum.Moments`) says how many
directions the patch tokens use across images.
"""

from __future__ import annotations

import numpy as np
import torch

from featurestore.health.spectrum import Moments, Spectrum, effective_rank


def patch_cosine(grids: np.ndarray | torch.Tensor) -> np.ndarray:
    """Mean pairwise cosine between the patch tokens of each grid of ``[B, C, H, W]`` (tokens of
    norm 0 are left out; NaN when fewer than two remain)."""
    x = torch.as_tensor(grids).to(torch.float32).flatten(2)  # [B, C, P]
    return _cosine_of(x, x.norm(dim=1))


def _cosine_of(flat: torch.Tensor, norms: torch.Tensor) -> np.ndarray:
    """:func:`patch_cosine` from the tokens ``[B, C, P]`` and their norms ``[B, P]``."""
    ok = norms > 0
    inv = torch.where(ok, norms.reciprocal(), torch.zeros_like(norms))
    s = torch.bmm(flat, inv.unsqueeze(2)).squeeze(2).double()  # [B, C]: the sum of the unit tokens
    m = ok.sum(1).double()
    out = ((s * s).sum(1) - m) / (m * (m - 1))
    out[m < 2] = float("nan")
    return out.numpy()


def patch_rank(grids: np.ndarray | torch.Tensor) -> np.ndarray:
    """Effective rank (RankMe) of each grid's token matrix ``[P, C]``."""
    x = torch.as_tensor(grids).to(torch.float64).flatten(2)  # [B, C, P]
    c, p = x.shape[1], x.shape[2]
    gram = x @ x.transpose(1, 2) if c <= p else x.transpose(1, 2) @ x  # the smaller side
    ev = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().numpy()
    return np.array([effective_rank(e) for e in ev])


class PatchAccumulator:
    """Patch figures over batches of grids: per image (cosine, rank, mean norm), the mean-norm map
    and the pooled token spectrum (``tokens_per_image`` seeded positions of each image)."""

    def __init__(self, grid: tuple[int, int, int], *, rank_images: int, tokens_per_image: int, seed: int):
        self.grid = grid
        self.rank_images = rank_images
        self.tokens_per_image = min(tokens_per_image, grid[1] * grid[2])
        self.rng = np.random.default_rng(seed)
        self.norm_sum = np.zeros(grid[1:], dtype=np.float64)
        self.images = 0
        self.cosine: list[np.ndarray] = []
        self.rank: list[np.ndarray] = []
        self.mean_norm: list[np.ndarray] = []
        self.tokens = Moments(grid[0])
        self._token_spectrum: Spectrum | None = None

    def add(self, grids: np.ndarray) -> None:
        """Fold in a batch ``[B, C, H, W]`` (any float dtype)."""
        x = torch.as_tensor(np.asarray(grids)).to(torch.float32)
        b, c, h, w = x.shape
        flat = x.flatten(2)  # [B, C, P]
        tok = flat.norm(dim=1)  # [B, P]: each norm computed once, for the map and the cosine
        norms = tok.double().view(b, h, w)
        self.norm_sum += norms.sum(0).numpy()
        self.mean_norm.append(norms.flatten(1).mean(1).numpy())
        self.cosine.append(_cosine_of(flat, tok))
        todo = max(0, min(b, self.rank_images - self.images))
        r = np.full(b, np.nan)
        if todo:
            r[:todo] = patch_rank(x[:todo])
        self.rank.append(r)
        self.images += b
        if self.tokens_per_image:
            pos = np.stack([self.rng.choice(h * w, self.tokens_per_image, replace=False) for _ in range(b)])
            picked = torch.gather(flat, 2, torch.as_tensor(pos).unsqueeze(1).expand(b, c, -1))  # [B, C, T]
            self.tokens.add(picked.transpose(1, 2).reshape(-1, c).numpy())

    def token_spectrum(self) -> Spectrum | None:
        """The pooled tokens' spectrum (None before any token), one eigendecomposition per set
        of tokens: the summary and the spectrum table both read it."""
        if not self.tokens.n:
            return None
        if self._token_spectrum is None or self._token_spectrum.n != self.tokens.n:
            self._token_spectrum = self.tokens.spectrum()
        return self._token_spectrum

    @property
    def norm_map(self) -> np.ndarray:
        """Mean token norm per grid position, ``[H, W]``."""
        return self.norm_sum / max(self.images, 1)

    def per_image(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(patch_cosine, patch_rank (NaN where not computed), mean_norm), one value per image added."""
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        return cat(self.cosine), cat(self.rank), cat(self.mean_norm)
