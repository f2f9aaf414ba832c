"""The training job's configuration: one frozen dataclass that the CLI, the flows, the study
config and the tests all build (the CLI reads its options and defaults from here).

Kept free of heavy imports so ``radstore --help`` need not load torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from featurestore.config import DEVICES
from featurestore.errors import RadstoreError
from featurestore.tasks import get_task

SEG_LOSSES = ("bce", "dice+bce")
FUSIONS = ("add", "concat")
SOLVERS = ("adamw", "lbfgs")


@dataclass(frozen=True)
class TrainConfig:
    """One training run; the same object drives the CLI, the flows and the tests."""

    task: str
    head: str = "linear"
    lr: float = 1e-4
    weight_decay: float = 1e-2
    batch_size: int = 16
    patience: int = 5
    # Early stopping counts an epoch as progress only when the validation loss falls by more
    # than ``min_delta`` below the best so far, and never stops before ``min_epochs`` epochs
    # (the best weights are still the lowest validation loss seen). Chosen on the planted
    # feature set (tests/planted.py), see README "Heads and training".
    min_delta: float = 0.0
    min_epochs: int = 20
    max_epochs: int = 500
    # Fewer validation positives or negatives than this (labels; for masks, images with a
    # non-empty / empty mask) and the run warns and records it: model and threshold selection
    # on such a split is noise.
    min_val_positives: int = 10
    seed: int = 0
    seg_loss: str = "bce"
    target_size: int = 128  # segmentation target resolution (masks resized to it)
    fold: int | None = None  # None: the manifest's split; k: fold k of `folds`, by patient
    folds: int = 5
    buffer_images: int = 256  # shuffle buffer (rows held in memory while streaming)
    in_memory: bool = False  # load the split once instead of streaming (benchmark baseline)
    device: str = "auto"
    attn_size: int = 64
    refiner_channels: tuple[int, int] = (512, 256)
    fusion: str = "add"
    # "adamw": the study's protocol. "lbfgs": the CLIP-style linear probe for global tasks,
    # scikit-learn's L-BFGS logistic / ridge regression with the L2 strength chosen on the
    # validation split (holds the split's global vectors in memory, never the grids).
    # Segmentation tasks ignore it and train with AdamW.
    solver: str = "adamw"
    progress: bool = True

    def __post_init__(self) -> None:
        kind = get_task(self.task).spec
        if self.head not in kind.heads:
            raise RadstoreError(
                f"head {self.head!r} does not apply to task {self.task} ({kind.name}); choose one of {', '.join(kind.heads)}"
            )
        if self.solver not in SOLVERS:
            raise RadstoreError(f"solver must be one of {SOLVERS}")
        if self.seg_loss not in SEG_LOSSES:
            raise RadstoreError(f"seg_loss must be one of {SEG_LOSSES}")
        if self.fusion not in FUSIONS:
            raise RadstoreError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.device not in DEVICES:
            raise RadstoreError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.min_delta < 0 or self.min_epochs < 0:
            raise RadstoreError("min_delta and min_epochs must be >= 0")
        object.__setattr__(self, "refiner_channels", tuple(self.refiner_channels))

    def to_json(self) -> dict[str, Any]:
        """The fields as plain json (lists, not tuples): what a run records as its config, and what
        ``find_run`` compares to reuse a run."""
        d = asdict(self)
        d["refiner_channels"] = list(self.refiner_channels)
        return d


def grid_configs(tasks: list[str] | None, heads: list[str] | None, folds: list[int | None] | None,
                 base: dict | None = None) -> list[TrainConfig]:  # fmt: skip
    """Every (task, head, fold) that makes sense: a head only where its task kind takes it. The one
    grid the study, ``radstore train`` and the no-op check all build (``None``: every task, every
    head, the manifest's split)."""
    from featurestore.tasks import TASKS, all_heads

    out = []
    for t in tasks or list(TASKS):
        for h in heads or list(all_heads()):
            if h not in TASKS[t].spec.heads:
                continue
            for f in folds or [None]:
                out.append(TrainConfig(task=t, head=h, **{**(base or {}), "fold": f}))
    return out
