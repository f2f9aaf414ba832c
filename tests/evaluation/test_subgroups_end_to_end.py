"""Known answer end to end: a cohort whose VendorC images have fainter findings, ingested,
embedded by the ``pixels`` control and probed; the subgroup analysis finds VendorC, and only
VendorC, worse than the rest.

800 images at 128-160 px (pneumothorax prevalence 0.4, 35% test) with
``subgroup_effect="manufacturer=VendorC"`` at strength 0.8 (findings at 20% contrast); L-BFGS
linear probes. Measured (seed 3): cardiomegaly AUROC 0.96 / 0.95 on VendorA / B, 0.70 on
VendorC; pneumothorax 0.83 / 0.86 / 0.58; VendorC's difference from the rest -0.26 and -0.27
(Holm p 0.006 for both); the view (no effect planted) differs by 0.01-0.03 (p 0.79, 0.53).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import torch

from evaluation.artifacts import evaluate, load_run, read_evaluation
from evaluation.config import EvalConfig
from evaluation.subgroups import subgroup_rows
from featurestore.extract import ExtractConfig, extract
from featurestore.ingest import ingest
from featurestore.store import Store
from featurestore.synth.cohort import SynthConfig, read_subgroup_effect, synthesize
from heads.train import TrainConfig, train

COHORT = SynthConfig(n=800, seed=3, min_side=128, max_side=160, pneumothorax_prevalence=0.4, split=(0.5, 0.15, 0.35),
                     subgroup_effect="manufacturer=VendorC", subgroup_effect_strength=0.8)  # fmt: skip
pytestmark = pytest.mark.slow  # ingest, extraction, training and evaluation of 800 images

CFG = EvalConfig(resamples=1000, subgroups=("manufacturer", "view_position"))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny probes: threads only wait on each other
    root = tmp_path_factory.mktemp("subgroups-e2e")
    manifest = synthesize(root / "cohort", COHORT, progress=False)
    store = Store.open(str(root / "store"), create=True)
    assert ingest(str(manifest), store, progress=False).ok
    fsid = extract(str(manifest), store, ExtractConfig("pixels", progress=False, num_workers=0)).feature_set_id
    ids = [
        train(store, fsid, TrainConfig(task=task, solver="lbfgs", in_memory=True, progress=False)).run_id
        for task in ("cardiomegaly-cls", "pneumothorax-cls")
    ]
    # through the evaluation version (its subgroups table), equal to the pure function's rows
    ev = evaluate(store, ids, CFG)
    rows = read_evaluation(store, ev.eval_id)[1]["subgroups"].to_pylist()
    direct = subgroup_rows([load_run(store, i, CFG) for i in ids], store.images(), CFG.subgroups, CFG, ev.eval_id, datetime.now(UTC))
    key = lambda r: (r["run_id"], r["column"], r["subgroup"], r["metric"])  # noqa: E731
    assert {key(r): r["value"] for r in rows} == {key(r): r["value"] for r in direct}
    torch.set_num_threads(threads)
    return rows, store, manifest


def test_the_planted_subgroup_is_the_index_vendor(analysed):
    _, store, manifest = analysed
    truth = read_subgroup_effect(manifest)
    index = store.images().to_pylist()
    assert sorted(truth["image_ids"]) == sorted(r["image_id"] for r in index if r["manufacturer"] == truth["value"])


@pytest.mark.parametrize("task", ["cardiomegaly-cls", "pneumothorax-cls"])
def test_the_planted_manufacturer_is_found_worse(analysed, task):
    rows, _, _ = analysed
    auroc = {r["subgroup"]: r for r in rows if r["task"] == task and r["metric"] == "auroc" and r["column"] == "manufacturer"}
    assert set(auroc) == {"VendorA", "VendorB", "VendorC"} and all(r["status"] == "ok" for r in auroc.values())
    c = auroc["VendorC"]
    assert c["value"] < min(auroc["VendorA"]["value"], auroc["VendorB"]["value"]) - 0.1
    assert c["diff_vs_rest"] < 0 and c["diff_ci_high"] < 0 and c["p_holm"] < 0.05
    for other in ("VendorA", "VendorB"):
        assert auroc[other]["diff_vs_rest"] > 0  # the others are better than a rest holding VendorC


@pytest.mark.parametrize("task", ["cardiomegaly-cls", "pneumothorax-cls"])
def test_no_effect_where_none_was_planted(analysed, task):
    rows, _, _ = analysed
    views = [r for r in rows if r["task"] == task and r["metric"] == "auroc" and r["column"] == "view_position"]
    assert {r["subgroup"] for r in views} == {"AP", "PA"}
    assert all(r["p_holm"] > 0.05 for r in views)
