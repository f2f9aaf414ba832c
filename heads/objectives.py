"""Training objectives, one per task kind's ``objective`` name (featurestore.tasks).

An objective says how wide a global head's output is, which loss trains it, how its output
becomes the stored prediction (a probability, a value, a per-pixel probability) and which
closed-form probe ``--solver lbfgs`` fits. A new task kind names an existing objective or
registers its own with :func:`register_objective`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featurestore.errors import RadstoreError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """How a head of one task kind is trained and read out."""

    name: str
    outputs: int  # width of a global head's output (a mask head gives one logit per pixel)
    make_loss: Callable[[np.ndarray, Any, float | None], LossFn]  # (y_train, cfg, foreground fraction) -> loss
    predict: Callable[[torch.Tensor], torch.Tensor]  # head output -> stored prediction
    lbfgs: str | None = None  # closed-form probe for global kinds: "logistic", "ridge" or None (AdamW only)
    scaled: bool = False  # the head predicts the standardised target (mean/std of the training split)


OBJECTIVES: dict[str, Objective] = {}


def register_objective(obj: Objective) -> Objective:
    """Add ``obj`` under its name, replacing any objective of that name; returns it."""
    OBJECTIVES[obj.name] = obj
    return obj


def get_objective(name: str) -> Objective:
    """The registered objective ``name``; raises RadstoreError listing the registered ones otherwise."""
    if name not in OBJECTIVES:
        raise RadstoreError(f"unknown training objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def target_scale(y_train: np.ndarray) -> tuple[float, float]:
    """Mean and std of a regression target on the training split (std 1 if constant)."""
    return float(np.mean(y_train)), float(np.std(y_train)) or 1.0


def _balanced_ce(y_train: np.ndarray, cfg: Any, fg: float | None) -> LossFn:
    pos = float(y_train.mean())
    if pos in (0.0, 1.0):
        raise RadstoreError(f"{cfg.task}: the training split has only one class ({'positive' if pos else 'negative'})")
    weight = torch.tensor([0.5 / (1 - pos), 0.5 / pos], dtype=torch.float32)  # balanced class weights

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.float(), y.long(), weight=weight.to(out.device))

    return loss


def _standardised_mse(y_train: np.ndarray, cfg: Any, fg: float | None) -> LossFn:
    mu, sd = target_scale(y_train)
    return lambda out, y: F.mse_loss((out.float()[:, 0] - mu) / sd, (y - mu) / sd)


def _dice_loss(logits: torch.Tensor, y: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    y = y.flatten(1)
    return (1 - (2 * (p * y).sum(1) + eps) / (p.sum(1) + y.sum(1) + eps)).mean()


def _weighted_bce(y_train: np.ndarray, cfg: Any, fg: float | None) -> LossFn:
    # Foreground is a few percent of pixels: unweighted BCE settles on "all background" for
    # weak features, so positives are weighted like the classification classes.
    f = min(max(fg or 0.5, 1e-3), 0.5)
    pos_weight = torch.tensor(min((1 - f) / f, 50.0))

    def seg(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(out.float(), y, pos_weight=pos_weight.to(out.device))
        return bce + _dice_loss(out.float(), y) if cfg.seg_loss == "dice+bce" else bce

    return seg


register_objective(Objective("classification", 2, _balanced_ce, lambda out: torch.softmax(out, 1)[:, 1], lbfgs="logistic"))
register_objective(Objective("regression", 1, _standardised_mse, lambda out: out[:, 0], lbfgs="ridge", scaled=True))
register_objective(Objective("segmentation", 1, _weighted_bce, torch.sigmoid))
