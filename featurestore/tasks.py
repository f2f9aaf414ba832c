"""What the study predicts, written once: task kinds and the tasks built on them.

A :class:`TaskKind` says everything the pipeline needs to handle a kind of target: which
embedding a head reads, what its head outputs and how training turns that into a prediction
(``objective``, named in :mod:`heads.objectives`), which column of ``predictions.parquet``
holds it, which metrics evaluate it (the first is the headline, ``primary``; defined in
:mod:`evaluation.metrics`) and which heads apply. A :class:`TaskDef` binds a kind to a
manifest column. Training, evaluation, the report, the SQL views and the CLI all read these
tables; a new kind or task is one :func:`register_kind` / :func:`register_task` call.

This module sits below ``heads`` and ``evaluation`` (both read it) and imports neither: the
names it holds (objectives, metrics, heads) are checked where they are used.
"""

from __future__ import annotations

from dataclasses import dataclass

from featurestore.errors import RadstoreError

INPUTS = ("global", "patches")
MASK = "mask"  # the prediction of a patch kind: per-pixel probabilities stored as an array


@dataclass(frozen=True)
class TaskKind:
    """One kind of target (classification, regression, segmentation, ...)."""

    name: str
    input: str  # "global": the [CLS]/pooled vector; "patches": the patch grid
    prediction: str  # predictions.parquet column of a global kind ("score", "value"); MASK for patch kinds
    objective: str  # heads.objectives name: loss, output width and output -> prediction
    metrics: tuple[str, ...]  # evaluation.metrics names, the headline first
    heads: tuple[str, ...]  # heads.registry names that can be trained for this kind

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise RadstoreError(f"task kind {self.name}: input must be one of {INPUTS}, got {self.input!r}")
        if (self.input == "patches") != (self.prediction == MASK):
            raise RadstoreError(f"task kind {self.name}: patch kinds predict {MASK!r}, global kinds a column")
        if not self.metrics or not self.heads:
            raise RadstoreError(f"task kind {self.name}: needs at least one metric and one head")

    @property
    def primary(self) -> str:
        """The headline metric (what the results table and rankings use)."""
        return self.metrics[0]

    @property
    def dense(self) -> bool:
        """True when the prediction is a mask (stored as an array, evaluated per image)."""
        return self.prediction == MASK


@dataclass(frozen=True)
class TaskDef:
    """A task of the study: a kind applied to one manifest column (a label or a mask path)."""

    name: str
    kind: str  # a TASK_KINDS name, as stored in run.json and the metric tables (task_kind)
    column: str

    @property
    def spec(self) -> TaskKind:
        """The task's kind; raises RadstoreError if the kind is not registered."""
        return get_kind(self.kind)

    @property
    def input(self) -> str:
        """The embedding the task's heads read: "global" or "patches" (from its kind)."""
        return self.spec.input


TASK_KINDS: dict[str, TaskKind] = {}
TASKS: dict[str, TaskDef] = {}


def register_kind(kind: TaskKind) -> TaskKind:
    """Add a task kind (its order of registration is the order reports show kinds in)."""
    if kind.name in TASK_KINDS and TASK_KINDS[kind.name] != kind:
        raise RadstoreError(f"task kind {kind.name!r} is already registered differently")
    TASK_KINDS[kind.name] = kind
    return kind


def register_task(task: TaskDef) -> TaskDef:
    """Add a task; its kind must be registered first."""
    get_kind(task.kind)
    if task.name in TASKS and TASKS[task.name] != task:
        raise RadstoreError(f"task {task.name!r} is already registered differently")
    TASKS[task.name] = task
    return task


def get_kind(name: str) -> TaskKind:
    """The registered task kind ``name``; raises RadstoreError listing the known kinds otherwise."""
    if name not in TASK_KINDS:
        raise RadstoreError(f"unknown task kind {name!r}; known: {', '.join(TASK_KINDS)}")
    return TASK_KINDS[name]


def get_task(name: str) -> TaskDef:
    """The registered task ``name``; raises RadstoreError listing the registered tasks otherwise."""
    if name not in TASKS:
        raise RadstoreError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def kind_order(name: str) -> int:
    """Position of a kind in display order (unknown kinds last)."""
    names = list(TASK_KINDS)
    return names.index(name) if name in names else len(names)


def all_heads() -> tuple[str, ...]:
    """Every head some kind can use, in first-use order (the CLI's and the study's choices)."""
    return tuple(dict.fromkeys(h for k in TASK_KINDS.values() for h in k.heads))


def prediction_columns() -> tuple[str, ...]:
    """The prediction columns of every registered global kind, in registration order."""
    return tuple(dict.fromkeys(k.prediction for k in TASK_KINDS.values() if not k.dense))


for _kind in (
    TaskKind("classification", "global", "score", "classification", ("auroc", "auprc"), ("linear",)),
    TaskKind("regression", "global", "value", "regression", ("r2", "mae"), ("linear",)),
    # Mask kinds: Dice on images with a true mask (the headline; the evaluation's ``primary``
    # config can name another), the mean Dice over all images (an empty truth predicted empty
    # counts 1), the false-positive rate on empty images, IoU, and Dice at a fixed 0.5.
    TaskKind(
        "segmentation",
        "patches",
        MASK,
        "segmentation",
        ("dice_nonempty", "dice", "fp_empty", "iou", "dice_05"),
        ("linear", "cross-attention"),
    ),
):
    register_kind(_kind)

for _task in (
    TaskDef("pneumothorax-cls", "classification", "pneumothorax"),
    TaskDef("cardiomegaly-cls", "classification", "cardiomegaly"),
    TaskDef("ctr-reg", "regression", "ctr"),
    TaskDef("pneumothorax-seg", "segmentation", "pneumothorax_mask"),
    TaskDef("heart-seg", "segmentation", "heart_mask"),
):
    register_task(_task)
