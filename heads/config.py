"""The training job's configuration: one frozen dataclass that the CLI, the flows, the study
config and the tests all build (the CLI reads its options and defaults from here).

Kept free of heavy imports so ``radstore --help`` need not load torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from featurestore.config import DEVICES
from featurestore.errors import RadstoreError
from featurestore.subsets import WHOLE_SPLIT, LabelEfficiency, TrainSubset, subset_config
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
    # Train on part of the training split (featurestore.subsets): a fraction of its images, or
    # ``shots`` images of each class (class-labelled kinds only), drawn by patient with
    # ``subset_seed``. None and a fraction of 1 are the whole split (then subset_seed is 0: there
    # is nothing to draw). Recorded only when set (to_json), so runs recorded before these
    # fields existed are whole-split runs and are still reused.
    train_fraction: float | None = None
    shots: int | None = None
    subset_seed: int = 0

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
        subset = self.subset  # validates the subset fields
        if subset is not None and subset.shots is not None and not kind.classes:
            raise RadstoreError(
                f"shots (training images of each class) apply to tasks whose labels are classes; {self.task} ({kind.name}) "
                f"has {kind.labels} labels: use train_fraction"
            )
        for k, v in subset_config(subset).items():  # one spelling of each subset (and of none)
            object.__setattr__(self, k, v)

    @property
    def subset(self) -> TrainSubset | None:
        """The part of the training split this run trains on; None for the whole split."""
        return TrainSubset.of({k: getattr(self, k) for k in WHOLE_SPLIT})

    def to_json(self) -> dict[str, Any]:
        """The fields as plain json (lists, not tuples): what a run records as its config, and what
        ``find_run`` compares to reuse a run. The subset keys appear only when set, so a
        whole-split config is recorded exactly as before they existed."""
        d = asdict(self)
        d["refiner_channels"] = list(self.refiner_channels)
        for k, whole in WHOLE_SPLIT.items():
            if d[k] == whole:
                del d[k]
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


def label_efficiency_grid(configs: list[TrainConfig], plan: LabelEfficiency) -> list[TrainConfig]:
    """The subset runs of ``plan`` for every config of ``configs`` (a whole-split grid) it covers:
    the config with each subset of :meth:`LabelEfficiency.subsets` for its task's kind. The
    whole-split configs themselves are not repeated: they are the curves' last point."""
    out = []
    for c in configs:
        if c.subset is None and plan.covers(c.task, c.head):
            out += [replace(c, **s.config()) for s in plan.subsets(get_task(c.task).spec)]
    return out
