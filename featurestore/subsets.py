"""Training on part of the training split, written once for the runs that train on it
(:mod:`heads`), the study that plans them (:mod:`flows.config`) and the evaluation that reads the
part back from a run's recorded config (:mod:`evaluation.label_efficiency`).

A run trains on its whole training split unless its config names a :class:`TrainSubset`: a
fraction of the split's images (``train_fraction``) or at least k images of each class
(``shots``, for kinds whose labels are classes), drawn patient by patient with
``subset_seed``; :func:`heads.data.subset_training` draws it. :class:`LabelEfficiency` is the
study's plan of subsets, several seeds at each size, from which label-efficiency curves
(how many labels does each encoder need?) are drawn.

The subset keys are recorded in a run's config only when set (:data:`WHOLE_SPLIT` holds their
whole-split values), so a run recorded before they existed reads as a whole-split run.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from featurestore.errors import RadstoreError
from featurestore.tasks import TaskKind, all_heads, get_task

#: The study's default sizes: fractions of the training split's images, images per class, seeds.
DEFAULT_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
DEFAULT_SHOTS = (8, 16, 32)
DEFAULT_SEEDS = 5

#: The training-config keys of a subset at their whole-split values: the defaults of
#: heads.config.TrainConfig, and what a config recorded before subsets existed means.
WHOLE_SPLIT: dict[str, Any] = {"train_fraction": None, "shots": None, "subset_seed": 0}

#: How a subset's size is given: a fraction of the training images, or images per class.
REGIMES = ("fraction", "shots")


def check_fraction(value: Any) -> float:
    """``value`` as a fraction of the training split, in (0, 1]; RadstoreError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise RadstoreError(f"train_fraction must be a number in (0, 1] (1: the whole training split), got {value!r}")
    return float(value)


def check_shots(value: Any) -> int:
    """``value`` as a number of training images per class, >= 1; RadstoreError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise RadstoreError(f"shots must be a whole number >= 1 (training images of each class), got {value!r}")
    return int(value)


def check_seed(value: Any, what: str = "subset_seed") -> int:
    """``value`` as a seed, a whole number >= 0; RadstoreError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise RadstoreError(f"{what} must be a whole number >= 0, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class TrainSubset:
    """Part of a training split: a ``fraction`` of its images or ``shots`` images of each class
    (exactly one), drawn with ``seed``. The whole split is no subset: :meth:`of` says None."""

    fraction: float | None = None
    shots: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.shots is None):
            raise RadstoreError("a training subset is either a train_fraction or a number of shots, not both")
        if self.fraction is not None and check_fraction(self.fraction) == 1.0:
            raise RadstoreError("train_fraction 1 is the whole training split, not a subset")
        if self.shots is not None:
            check_shots(self.shots)
        check_seed(self.seed)

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> TrainSubset | None:
        """The subset a training config names (``train_fraction``, ``shots``, ``subset_seed``; an
        absent key is its :data:`WHOLE_SPLIT` value), or None for the whole split: neither
        set, or a fraction of 1. RadstoreError when the values are not a subset's."""
        c = {**WHOLE_SPLIT, **{k: config[k] for k in WHOLE_SPLIT if k in config}}
        fraction, shots = c["train_fraction"], c["shots"]
        if fraction is not None and shots is not None:
            raise RadstoreError("give train_fraction or shots, not both: a subset is sized one way")
        if fraction is not None:
            fraction = check_fraction(fraction)
        if shots is not None:
            shots = check_shots(shots)
        seed = check_seed(c["subset_seed"])
        if shots is None and fraction in (None, 1.0):
            return None
        return cls(fraction, shots, seed)

    @property
    def regime(self) -> str:
        """How the size is given: ``fraction`` or ``shots`` (:data:`REGIMES`)."""
        return REGIMES[0] if self.fraction is not None else REGIMES[1]

    @property
    def size(self) -> float:
        """The fraction, or the number of images per class."""
        return float(self.fraction if self.fraction is not None else self.shots)

    def config(self) -> dict[str, Any]:
        """The training-config keys that select this subset."""
        return {"train_fraction": self.fraction, "shots": self.shots, "subset_seed": self.seed}


def subset_config(subset: TrainSubset | None) -> dict[str, Any]:
    """The training-config keys of ``subset``; the whole split's (:data:`WHOLE_SPLIT`) for None."""
    return dict(WHOLE_SPLIT) if subset is None else subset.config()


def _sizes(value: Any, check, name: str) -> tuple:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise RadstoreError(f"label_efficiency: {name} must be a list, got {value!r}")
    return tuple(sorted({check(v) for v in value}))


def _names(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise RadstoreError(f"label_efficiency: {name} must be a non-empty list (or absent: all of the study's), got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class LabelEfficiency:
    """The study's label-efficiency plan: for every task and head it covers (``tasks``/``heads``;
    None: all of the study's), one run per seed (``0 .. seeds-1``) at each fraction of the
    training split and, for class-labelled kinds, at each number of shots per class.

    A fraction of 1 is the whole split: the study's own run, trained once whatever the seed
    (every seed draws the same, whole split) and the curve's last point; listing it adds no run.
    The seed draws the subset and nothing else: the training seed stays the study's, so the
    spread over seeds is the spread over which patients were labelled, and every encoder
    trains on the same subsets (the draw depends on the labels and the seed only).
    """

    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    shots: tuple[int, ...] = DEFAULT_SHOTS
    seeds: int = DEFAULT_SEEDS
    tasks: tuple[str, ...] | None = None
    heads: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", _sizes(self.fractions, check_fraction, "fractions"))
        object.__setattr__(self, "shots", _sizes(self.shots, check_shots, "shots"))
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, numbers.Integral) or self.seeds < 1:
            raise RadstoreError(f"label_efficiency: seeds must be a whole number >= 1, got {self.seeds!r}")
        object.__setattr__(self, "seeds", int(self.seeds))
        if not self.fractions and not self.shots:
            raise RadstoreError("label_efficiency: give at least one fraction or one number of shots")
        object.__setattr__(self, "tasks", _names(self.tasks, "tasks"))
        object.__setattr__(self, "heads", _names(self.heads, "heads"))
        for t in self.tasks or ():
            get_task(t)
        for h in self.heads or ():
            if h not in all_heads():
                raise RadstoreError(f"label_efficiency: unknown head {h!r}; choose from {', '.join(all_heads())}")

    @classmethod
    def from_dict(cls, value: Any, source: str = "label_efficiency") -> LabelEfficiency | None:
        """The plan from a config file's value: a mapping of this class's fields (unknown keys are
        errors), ``true`` for the defaults, ``null``/``false`` for none (None)."""
        if isinstance(value, LabelEfficiency) or value is None:
            return value
        if isinstance(value, bool):
            return cls() if value else None
        if not isinstance(value, Mapping):
            raise RadstoreError(f"{source}: expected a mapping of {', '.join(f.name for f in fields(cls))}, true or null, got {value!r}")
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise RadstoreError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        return cls(**value)

    def covers(self, task: str, head: str) -> bool:
        """Whether the plan trains subsets of ``task`` with ``head``."""
        return (self.tasks is None or task in self.tasks) and (self.heads is None or head in self.heads)

    def subsets(self, kind: TaskKind) -> list[TrainSubset]:
        """Every subset to train for a task of ``kind``: each fraction below 1 and, where the kind's
        labels are classes, each number of shots, once per seed."""
        out = [TrainSubset(fraction=f, seed=s) for f in self.fractions if f < 1.0 for s in range(self.seeds)]
        if kind.classes:
            out += [TrainSubset(shots=k, seed=s) for k in self.shots for s in range(self.seeds)]
        return out

    def to_json(self) -> dict[str, Any]:
        """The plan as plain json (lists, not tuples): a study file's ``label_efficiency`` value."""
        return {
            "fractions": list(self.fractions),
            "shots": list(self.shots),
            "seeds": self.seeds,
            "tasks": None if self.tasks is None else list(self.tasks),
            "heads": None if self.heads is None else list(self.heads),
        }
