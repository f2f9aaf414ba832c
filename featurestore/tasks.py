"""What the study predicts, written once: task kinds and the tasks built on them.

A :class:`TaskKind` says everything the pipeline needs to handle a kind of target: which
embedding a head reads, what its head outputs and how training turns that into a prediction
(``objective``, named in :mod:`heads.objectives`), which column of ``predictions.parquet``
holds it, which metrics evaluate it (the first is the headline, ``primary``; defined in
:mod:`evaluation.metrics`) and which heads apply. A :class:`TaskDef` binds a kind to a
manifest column. Training, evaluation, the report, the SQL views and the CLI all read these
tables; a new kind or task is one :func:`register_kind` / :func:`register_task` call.

What a task's manifest column may hold is said here too, once (:data:`LABEL_TYPES`, a kind's
``labels``, a task's ``value_range``; :meth:`TaskDef.label` applies it to one cell). Training
checks every labelled row against it before anything is trained (:func:`heads.data.load_labels`):

- ``binary`` (classification): booleans, the numbers 0 and 1, or the text true/false/1/0 (any
  case: what a CSV reader makes of a boolean column when some other cell is text);
- ``number`` (regression): finite numbers (also as text), inside the task's ``value_range``
  when it has one (the cardiothoracic ratio: 0 < ctr < 1); booleans are not numbers;
- ``mask`` (segmentation): the path of an image file (PNG, JPEG, TIFF or DICOM) that can be
  opened and whose size equals its image's (checked from the file's header by heads.data).

A null or empty cell is no label: that image is left out of the task (not an error).

This module sits below ``heads`` and ``evaluation`` (both read it) and imports neither: the
names it holds (objectives, metrics, heads) are checked where they are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from featurestore.errors import RadstoreError

INPUTS = ("global", "patches")
MASK = "mask"  # the prediction of a patch kind: per-pixel probabilities stored as an array
LABEL_TYPES = ("binary", "number", "mask")  # what a kind's manifest column holds (module doc)
_TRUE, _FALSE = ("true", "1"), ("false", "0")  # binary labels written as text (any case)


@dataclass(frozen=True)
class ValueRange:
    """The values a ``number`` label may take: ``low < v < high`` (``closed``: ``low <= v <= high``)."""

    low: float
    high: float
    closed: bool = False

    def __contains__(self, v: float) -> bool:
        return self.low <= v <= self.high if self.closed else self.low < v < self.high

    def __str__(self) -> str:
        return f"{'[' if self.closed else '('}{self.low:g}, {self.high:g}{']' if self.closed else ')'}"


@dataclass(frozen=True)
class TaskKind:
    """One kind of target (classification, regression, segmentation, ...)."""

    name: str
    input: str  # "global": the [CLS]/pooled vector; "patches": the patch grid
    prediction: str  # predictions.parquet column of a global kind ("score", "value"); MASK for patch kinds
    objective: str  # heads.objectives name: loss, output width and output -> prediction
    metrics: tuple[str, ...]  # evaluation.metrics names, the headline first
    heads: tuple[str, ...]  # heads.registry names that can be trained for this kind
    # LABEL_TYPES name of the manifest column; "" = "mask" for patch kinds, "binary" for the
    # classification objective, "number" otherwise
    labels: str = ""

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise RadstoreError(f"task kind {self.name}: input must be one of {INPUTS}, got {self.input!r}")
        if (self.input == "patches") != (self.prediction == MASK):
            raise RadstoreError(f"task kind {self.name}: patch kinds predict {MASK!r}, global kinds a column")
        if not self.metrics or not self.heads:
            raise RadstoreError(f"task kind {self.name}: needs at least one metric and one head")
        if not self.labels:
            default = "mask" if self.input == "patches" else "binary" if self.objective == "classification" else "number"
            object.__setattr__(self, "labels", default)
        if self.labels not in LABEL_TYPES:
            raise RadstoreError(f"task kind {self.name}: labels must be one of {LABEL_TYPES}, got {self.labels!r}")
        if (self.labels == "mask") != (self.input == "patches"):
            raise RadstoreError(f"task kind {self.name}: patch kinds, and only they, have mask labels")

    @property
    def primary(self) -> str:
        """The headline metric (what the results table and rankings use)."""
        return self.metrics[0]

    @property
    def dense(self) -> bool:
        """True when the prediction is a mask (stored as an array, evaluated per image)."""
        return self.prediction == MASK

    @property
    def classes(self) -> tuple[float, ...]:
        """The label values of a kind whose labels are classes (binary labels: 0.0 and 1.0, the
        positive last), empty when they are numbers or masks: what a training subset of k images
        per class (:mod:`featurestore.subsets`) counts."""
        return (0.0, 1.0) if self.labels == "binary" else ()


@dataclass(frozen=True)
class TaskDef:
    """A task of the study: a kind applied to one manifest column (a label or a mask path)."""

    name: str
    kind: str  # a TASK_KINDS name, as stored in run.json and the metric tables (task_kind)
    column: str
    value_range: ValueRange | None = None  # number labels only: the values the column may hold

    @property
    def spec(self) -> TaskKind:
        """The task's kind; raises RadstoreError if the kind is not registered."""
        return get_kind(self.kind)

    @property
    def input(self) -> str:
        """The embedding the task's heads read: "global" or "patches" (from its kind)."""
        return self.spec.input

    @property
    def expected(self) -> str:
        """What every labelled cell of the column must be, in the words error messages use."""
        labels = self.spec.labels
        if labels == "binary":
            return "booleans (true/false or 0/1)"
        if labels == "number":
            return "finite numbers" + (f" in {self.value_range}" if self.value_range else "")
        return "paths of readable mask images (PNG, JPEG, TIFF or DICOM) the size (width x height) of their image"

    def label(self, value: object) -> float | str:
        """One non-empty cell of the column as training uses it: 0.0/1.0 (binary), the number
        (number) or the path as written (mask; the file itself is checked by heads.data).
        Raises ValueError when the cell is not one of :attr:`expected`."""
        labels = self.spec.labels
        if labels == "mask":
            if not isinstance(value, str):
                raise ValueError(f"{value!r} is not a path")
            return value
        if isinstance(value, str):
            text = value.strip().lower()
            if labels == "binary" and text in _TRUE + _FALSE:
                return float(text in _TRUE)
            try:
                number = float(text)
            except ValueError:
                raise ValueError(repr(value)) from None
        elif isinstance(value, bool):
            if labels == "binary":
                return float(value)
            raise ValueError(repr(value))
        elif isinstance(value, int | float):
            number = float(value)
        else:
            raise ValueError(repr(value))
        if labels == "binary":
            if number not in (0.0, 1.0):
                raise ValueError(repr(value))
            return number
        if not math.isfinite(number) or (self.value_range is not None and number not in self.value_range):
            raise ValueError(repr(value))
        return number


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
    kind = get_kind(task.kind)
    if task.value_range is not None and kind.labels != "number":
        raise RadstoreError(f"task {task.name}: only number labels have a value_range ({task.kind} labels are {kind.labels})")
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
    TaskDef("ctr-reg", "regression", "ctr", ValueRange(0.0, 1.0)),  # cardiothoracic ratio: 0 < ctr < 1
    TaskDef("pneumothorax-seg", "segmentation", "pneumothorax_mask"),
    TaskDef("heart-seg", "segmentation", "heart_mask"),
):
    register_task(_task)
