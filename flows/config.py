"""The study as one typed configuration: the file ``radstore study --config`` reads, the
parameters the ``study`` flow and its deployments take, and what the tests build.

Every knob has a default that works on a laptop; ``configs/demo.yaml`` and
``configs/study.yaml`` (the study as published) are complete, commented examples. Unknown
keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.errors import RadstoreError

if TYPE_CHECKING:
    from featurestore.config import ExtractConfig
    from featurestore.subsets import LabelEfficiency
    from heads.config import TrainConfig

FALLBACKS = ("random:tiny", "random", "error")


@dataclass(frozen=True)
class EncoderEntry:
    """One encoder of the grid. ``weights``: a folder, ``random``/``random:tiny``, or None to
    look in $RADSTORE_WEIGHTS_DIR/<name> and the Hugging Face cache."""

    name: str
    weights: str | None = None
    size: int | None = None
    bits: int | None = None
    intensity: str | None = None  # window (default) or minmax: the study's per-image stretch
    batch_size: int | None = None  # None: sized to the device (featurestore.extract.batch_size_for)

    def __post_init__(self) -> None:
        from featurestore.config import BITS, INTENSITIES

        if self.bits is not None and self.bits not in BITS:
            raise RadstoreError(f"encoder {self.name}: bits must be one of {BITS}, got {self.bits!r}")
        if self.intensity is not None and self.intensity not in INTENSITIES:
            raise RadstoreError(f"encoder {self.name}: intensity must be one of {INTENSITIES}, got {self.intensity!r}")


@dataclass(frozen=True)
class StudyConfig:
    """The whole study: store, cohort, encoders, tasks, heads, folds and every stage's settings;
    validated when built, so a bad value fails before any work starts."""

    store: str = "demo/store"  # directory or fsspec URL (s3://bucket/prefix)
    manifest: str = "demo/cohort/manifest.parquet"
    # fsspec options for an object store, e.g. {"endpoint_url": "http://minio:9000"}; credentials
    # come from here or from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL).
    storage_options: dict[str, Any] = field(default_factory=dict)
    encoders: tuple[EncoderEntry, ...] = field(default_factory=lambda: _default_encoders())  # every registered encoder
    # What an encoder whose weights are not found locally gets: random:tiny (printed loudly; a
    # test of the plumbing, not of the model), random (the real-size architecture), or error.
    missing_weights: str = "random:tiny"
    # Add the positive control (encoder `planted`, features made from the labels with a known
    # signal) when the encoder list lacks it: every study then shows that its machinery
    # recovers what it was given (evaluation.controls). False leaves the list as written.
    positive_control: bool = True
    tasks: tuple[str, ...] = field(default_factory=lambda: _default_tasks())  # every task of featurestore.tasks
    heads: tuple[str, ...] = field(default_factory=lambda: _default_heads())  # each trained where its task kind takes it
    folds: tuple[int, ...] | None = None  # None: the manifest's split; e.g. [0,1,2,3,4] for 5-fold CV by patient
    train: dict[str, Any] = field(default_factory=dict)  # any heads.train.TrainConfig field (lr, max_epochs, solver, ...)
    evaluation: dict[str, Any] = field(default_factory=dict)  # any evaluation.artifacts.EvalConfig field
    # Embedding health after each extraction: any featurestore.health.HealthConfig field; None: skipped.
    health: dict[str, Any] | None = field(default_factory=dict)
    # Label-efficiency curves: heads also trained on nested, patient-level subsets of the training
    # split (featurestore.subsets.LabelEfficiency: fractions, shots, seeds, tasks, heads; a
    # mapping of those, true for the defaults); None: off.
    label_efficiency: LabelEfficiency | None = None
    report: str | None = None  # report directory; None: <store>/../report for a local store, no report for a remote one
    runner: str = "local"  # local | dask (a LocalCluster) | dask:tcp://scheduler:8786 (an existing cluster)
    device: str = "auto"
    num_workers: int | None = None  # image-decoding processes per extraction task; None: the cores available minus one
    schedule: str = "0 2 * * *"  # cron of the nightly backfill deployment (radstore serve)
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        from evaluation.artifacts import EvalConfig
        from featurestore.encoders import get_encoder
        from featurestore.encoders.registry import ENCODERS
        from featurestore.subsets import WHOLE_SPLIT
        from featurestore.tasks import all_heads, get_task
        from heads.train import TrainConfig

        encoders = tuple(e if isinstance(e, EncoderEntry) else _entry(e) for e in self.encoders)
        if self.positive_control and not any(ENCODERS[e.name].control == "positive" for e in encoders if e.name in ENCODERS):
            encoders += tuple(EncoderEntry(n) for n, info in ENCODERS.items() if info.control == "positive")
        object.__setattr__(self, "encoders", encoders)
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "heads", tuple(self.heads))
        if self.folds is not None:
            object.__setattr__(self, "folds", tuple(int(f) for f in self.folds))
        if self.missing_weights not in FALLBACKS:
            raise RadstoreError(f"missing_weights must be one of {FALLBACKS}, got {self.missing_weights!r}")
        if not self.encoders:
            raise RadstoreError("the study needs at least one encoder")
        repeated = sorted({e.name for e in self.encoders if sum(f.name == e.name for f in self.encoders) > 1})
        if repeated:
            raise RadstoreError(
                f"encoder(s) {', '.join(repeated)} listed twice: a study compares each encoder once. For an ablation "
                "(size, bits, intensity), run a second study with those settings, or `radstore extract` it into the same store"
            )
        for t in self.tasks:
            get_task(t)
        for h in self.heads:
            if h not in all_heads():
                raise RadstoreError(f"unknown head {h!r}; choose from {', '.join(all_heads())}")
        bad = set(self.train) - {f.name for f in fields(TrainConfig)} | ({"task", "head", "fold", *WHOLE_SPLIT} & set(self.train))
        if bad:
            raise RadstoreError(
                f"train: unknown or per-run key(s) {', '.join(sorted(bad))} (training subsets are planned by label_efficiency)"
            )
        self._check_label_efficiency()
        EvalConfig(**self.evaluation)  # validates
        if self.health is not None:
            try:
                self.health_config()
            except (TypeError, ValueError) as e:
                raise RadstoreError(str(e)) from None
        for e in self.encoders:
            get_encoder(e.name)

    def extract_config(self, enc: EncoderEntry, weights: str | None) -> ExtractConfig:
        """How the study extracts ``enc`` with the ``weights`` chosen for it: one definition for the
        extraction stage and for the check that it has nothing to do (:mod:`flows.noop`)."""
        from featurestore.config import ExtractConfig

        return ExtractConfig(encoder=enc.name, weights=weights, size=enc.size, bits=enc.bits, intensity=enc.intensity,
                             batch_size=enc.batch_size, device=self.device, num_workers=self.num_workers)  # fmt: skip

    def _check_label_efficiency(self) -> None:
        """Build the plan from the file's value; it may narrow the study's tasks and heads, not add to them."""
        from featurestore.subsets import LabelEfficiency

        plan = LabelEfficiency.from_dict(self.label_efficiency)
        object.__setattr__(self, "label_efficiency", plan)
        if plan is None:
            return
        for what, names, study in (("tasks", plan.tasks, self.tasks), ("heads", plan.heads, self.heads)):
            extra = sorted(set(names or ()) - set(study))
            if extra:
                raise RadstoreError(f"label_efficiency: {what} {', '.join(extra)} not among the study's {what} ({', '.join(study)})")

    def train_grid(self) -> list[TrainConfig]:
        """The training runs the study wants on each feature set: task x head x fold on the whole
        training split, then the label-efficiency subsets of those (when ``label_efficiency`` is
        set). The study flow and its no-op check both train exactly this grid."""
        from heads.config import grid_configs, label_efficiency_grid

        grid = grid_configs(
            list(self.tasks), list(self.heads), list(self.folds) if self.folds else None, {**self.train, "device": self.device}
        )
        if self.label_efficiency is not None:
            grid += label_efficiency_grid(grid, self.label_efficiency)
        return grid

    def health_config(self):  # noqa: ANN201 (HealthConfig; imported lazily)
        """The study's :class:`featurestore.health.HealthConfig` (None when ``health`` is off)."""
        from featurestore.health.config import HealthConfig

        return None if self.health is None else HealthConfig.from_dict(self.health)

    @property
    def report_dir(self) -> str | None:
        """Where the report goes: ``report`` if set, else ``report/`` beside a local store; None for a
        remote store (no report unless one is asked for)."""
        if self.report:
            return self.report
        if "://" in self.store and not self.store.startswith("file://"):
            return None
        return str(Path(self.store).parent / "report")

    def to_json(self) -> dict[str, Any]:
        """The configuration as plain json (lists, not tuples): the study file's keys, and the parameters
        the study flow and its deployments take."""
        d = asdict(self)
        d["encoders"] = [asdict(e) for e in self.encoders]
        d["tasks"], d["heads"] = list(self.tasks), list(self.heads)
        d["folds"] = None if self.folds is None else list(self.folds)
        d["label_efficiency"] = None if self.label_efficiency is None else self.label_efficiency.to_json()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> StudyConfig:
        """Build from a parsed config file; unknown keys raise RadstoreError naming ``source`` and the known
        keys, so a typo never falls back to a default."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise RadstoreError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        return cls(**d)


def _default_encoders() -> tuple[EncoderEntry, ...]:
    from featurestore.encoders import encoder_names

    return tuple(EncoderEntry(n) for n in encoder_names())


def _default_tasks() -> tuple[str, ...]:
    from featurestore.tasks import TASKS

    return tuple(TASKS)


def _default_heads() -> tuple[str, ...]:
    from featurestore.tasks import all_heads

    return all_heads()


def _entry(e: Any) -> EncoderEntry:
    if isinstance(e, str):
        return EncoderEntry(e)
    if isinstance(e, dict):
        known = {f.name for f in fields(EncoderEntry)}
        if set(e) - known:
            raise RadstoreError(f"encoder entry {e}: unknown key(s) {', '.join(sorted(set(e) - known))}")
        return EncoderEntry(**e)
    raise RadstoreError(f"encoder entry {e!r}: give a name or a mapping with name/weights/size/bits/intensity/batch_size")


def load_config(path: str | os.PathLike, **overrides: Any) -> StudyConfig:
    """Read a YAML (or JSON) study config; relative paths in it are relative to the current directory."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RadstoreError(f"config file {p} not found (examples: configs/demo.yaml, configs/study.yaml)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise RadstoreError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RadstoreError(f"config file {p}: expected a mapping of settings at the top level")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return StudyConfig.from_dict(data, source=str(p))
