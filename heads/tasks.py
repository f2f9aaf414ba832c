"""The study's tasks, defined once from the manifest's columns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskDef:
    name: str
    kind: str  # "classification" | "regression" | "segmentation"
    column: str  # manifest column: a label, or a mask path
    input: str  # "global" (the [CLS]/pooled embedding) | "patches" (the grid)


TASKS: dict[str, TaskDef] = {
    t.name: t
    for t in (
        TaskDef("pneumothorax-cls", "classification", "pneumothorax", "global"),
        TaskDef("cardiomegaly-cls", "classification", "cardiomegaly", "global"),
        TaskDef("ctr-reg", "regression", "ctr", "global"),
        TaskDef("pneumothorax-seg", "segmentation", "pneumothorax_mask", "patches"),
        TaskDef("heart-seg", "segmentation", "heart_mask", "patches"),
    )
}
HEADS = ("linear", "cross-attention")


def get_task(name: str) -> TaskDef:
    from featurestore.errors import RadstoreError

    if name not in TASKS:
        raise RadstoreError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]
