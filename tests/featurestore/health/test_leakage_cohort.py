"""The leakage audit on a synthetic cohort with planted near-duplicates across splits, through
ingestion, real extraction and the health check: every planted pair found, no other pair."""

from __future__ import annotations

import pytest

from featurestore.extract import ExtractConfig, extract
from featurestore.health import HealthConfig, check_health
from featurestore.ingest import ingest
from featurestore.store import Store
from featurestore.synth.cohort import SynthConfig, read_near_duplicates, synthesize

pytestmark = pytest.mark.slow  # synthesises, ingests and extracts a cohort per encoder


@pytest.fixture(scope="module")
def cohort_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("dup-cohort")
    manifest = synthesize(root / "cohort", SynthConfig(n=90, seed=3, min_side=256, max_side=320, near_duplicates=4), progress=False)
    store = Store.open(str(root / "store"), create=True)
    ingest(str(manifest), store, progress=False)
    return store, str(manifest)


@pytest.mark.parametrize(("encoder", "weights"), [("pixels", None), ("rad-dino", "random:tiny")])
def test_every_planted_near_duplicate_is_found_and_nothing_else(cohort_store, encoder, weights):
    store, manifest = cohort_store
    fsid = extract(manifest, store, ExtractConfig(encoder, weights=weights, progress=False, num_workers=0)).feature_set_id
    r = check_health(store, fsid, HealthConfig(sample=40, rank_images=8))
    planted = set(read_near_duplicates(manifest))
    assert len(planted) == 4
    rows = r.tables["leakage"].to_pylist()
    assert {(x["test_image_id"], x["train_image_id"]) for x in rows} == planted
    assert all(x["test_patient_id"] != x["train_patient_id"] and not x["same_patient"] for x in rows)
    # the threshold separates: the planted pairs' cosines above every other test image's nearest one
    nearest = {x["image_id"]: x["cosine"] for x in r.tables["neighbours"].to_pylist()}
    dup = [nearest[t] for t, _ in planted]
    others = [c for i, c in nearest.items() if i not in dict(planted)]
    assert min(dup) > max(others) + 0.05
