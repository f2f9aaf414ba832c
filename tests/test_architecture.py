"""The layering and the single sources of truth, checked on the source so they stay true.

featurestore sits below heads and evaluation, flows on top; heads may use evaluation's pure
metric functions, evaluation never imports heads. The store's file names are typed only in
featurestore.layout; task-kind names only in the kind and objective tables; encoder names
only in their adapter modules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("featurestore", "heads", "evaluation", "flows")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _code_strings(path: Path) -> list[str]:
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


@pytest.mark.parametrize("package, forbidden", [
    ("featurestore", ("heads", "evaluation", "flows")),
    ("evaluation", ("heads", "flows")),
    ("heads", ("flows",)),
])  # fmt: skip
def test_no_import_runs_back_up(package, forbidden):
    bad = [(p.relative_to(ROOT), m) for p in _modules(package) for m in _imports(p) if m.split(".")[0] in forbidden]
    assert not bad, f"{package} must not import {forbidden}: {bad}"


def test_heads_use_only_the_pure_metrics_of_evaluation():
    used = {m for p in _modules("heads") for m in _imports(p) if m.split(".")[0] == "evaluation"}
    assert used <= {"evaluation.metrics"}, used


def test_store_file_names_are_typed_only_in_the_layout():
    names = re.compile(r"(masks|targets|patches)\.zarr|(run|eval|feature_set|store)\.json|predictions\.parquet|head\.pt")
    bad = [(p.relative_to(ROOT), s) for pkg in PACKAGES for p in _modules(pkg) if "layout" not in p.parts
           for s in _code_strings(p) if names.search(s)]  # fmt: skip
    assert not bad, bad


def test_task_kind_names_live_in_the_kind_and_objective_tables():
    kinds = {"classification", "regression", "segmentation"}
    allowed = {ROOT / "featurestore" / "tasks.py", ROOT / "heads" / "objectives.py"}
    bad = [(p.relative_to(ROOT), s) for pkg in PACKAGES for p in _modules(pkg) if p not in allowed
           for s in _code_strings(p) if s in kinds]  # fmt: skip
    assert not bad, bad


def test_encoder_names_live_in_their_adapters():
    from featurestore.encoders import ENCODERS

    adapters = {ROOT / "featurestore" / "encoders" / f for f in ("dinov2.py", "siglip.py", "openclip.py", "pixels.py", "planted.py")}
    bad = [(p.relative_to(ROOT), s) for pkg in ("featurestore", "heads", "evaluation", "flows") for p in _modules(pkg)
           if p not in adapters for s in _code_strings(p) if s in ENCODERS]  # fmt: skip
    assert not bad, bad


def test_every_kind_names_registered_metrics_objectives_and_heads():
    from evaluation.metrics import METRICS
    from featurestore.tasks import TASK_KINDS
    from heads.objectives import OBJECTIVES
    from heads.registry import head_names

    for k in TASK_KINDS.values():
        assert set(k.metrics) <= set(METRICS) and k.objective in OBJECTIVES and set(k.heads) <= set(head_names()), k


def test_readme_lists_the_registered_encoders():
    from featurestore.encoders.registry import readme_table

    assert readme_table() in (ROOT / "README.md").read_text()
