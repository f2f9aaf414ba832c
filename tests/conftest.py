"""Shared, session-scoped fixtures: a 24-image synthetic cohort and small feature-set specs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featurestore.featureset import FeatureSetSpec
from featurestore.synth.cohort import SynthConfig, synthesize
from tests.oracle import TINY_DIM, TINY_GRID, batch_for, embedding_for  # noqa: F401 - re-exported to the tests

# Small sides keep the suite fast; the generator's defaults (512-1024) are exercised in test_synth.
COHORT = SynthConfig(n=24, seed=7, min_side=256, max_side=384, png_fraction=0.25, monochrome1_fraction=0.3)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    """Tiny random models are saved under RADSTORE_CACHE: keep them out of the user's home."""
    import os

    os.environ["RADSTORE_CACHE"] = str(tmp_path_factory.mktemp("radstore-cache"))
    os.environ.pop("RADSTORE_WEIGHTS_DIR", None)
    yield


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """Path of the manifest of a 24-image cohort (built once per session)."""
    root = tmp_path_factory.mktemp("cohort")
    return synthesize(root, COHORT, progress=False)


@pytest.fixture
def tiny_spec() -> FeatureSetSpec:
    return FeatureSetSpec(encoder="tiny", weights_fingerprint="test-weights", grid=TINY_GRID, global_dim=TINY_DIM, shard_images=16)


@pytest.fixture(scope="session")
def pixels_store(cohort, tmp_path_factory):
    """(store url, feature set id, manifest) of the cohort ingested and extracted with ``pixels``
    in shards of 16 images (so the 24 images span two shards)."""
    from featurestore.extract import ExtractConfig, extract
    from featurestore.ingest import ingest
    from featurestore.store import Store

    url = str(tmp_path_factory.mktemp("pixels-store") / "store")
    store = Store.open(url, create=True)
    ingest(str(cohort), store, progress=False)
    r = extract(str(cohort), store, ExtractConfig("pixels", progress=False, num_workers=0, shard_images=16))
    return url, r.feature_set_id, str(cohort)


EVAL_TRAIN = dict(lr=1e-3, max_epochs=4, progress=False, target_size=32, attn_size=16, refiner_channels=(16, 8), solver="lbfgs")
EVAL_ENCODERS = (("pixels", None), ("rad-dino", "random:tiny"), ("chexagent", "random:tiny"))


@pytest.fixture(scope="session")
def evaluated_store(cohort, tmp_path_factory):
    """(store url, eval id, manifest): the cohort embedded by three encoders (pixels and tiny
    random RAD-DINO and CheXagent-SigLIP models), every task x head trained on the manifest split plus two folds of
    cardiomegaly-cls (for Friedman), and one evaluation of all of it (200 resamples)."""
    from evaluation.artifacts import EvalConfig, evaluate
    from featurestore.extract import ExtractConfig, extract
    from featurestore.ingest import ingest
    from featurestore.store import Store
    from flows.train import grid_configs
    from heads.train import train

    url = str(tmp_path_factory.mktemp("evaluated-store") / "store")
    store = Store.open(url, create=True)
    ingest(str(cohort), store, progress=False)
    for enc, weights in EVAL_ENCODERS:
        fsid = extract(str(cohort), store, ExtractConfig(enc, weights=weights, progress=False, num_workers=0)).feature_set_id
        for cfg in grid_configs(None, None, None, EVAL_TRAIN):
            train(store, fsid, cfg)
        for cfg in grid_configs(["cardiomegaly-cls"], ["linear"], [0, 1], {**EVAL_TRAIN, "folds": 3}):
            train(store, fsid, cfg)
    ev = evaluate(store, None, EvalConfig(resamples=200, seed=1, min_class_count=1))  # tiny test splits: exercise every comparison
    return url, ev.eval_id, str(cohort)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto, atomic conditional PUTs as on S3: tests/s3_server.py) on
    127.0.0.1 for the session; yields fsspec storage options."""
    pytest.importorskip("moto")
    import s3fs

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.s3_server", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("radstore-test")
    yield opts
    proc.terminate()
    proc.wait(timeout=10)


#: Fixtures that start real services (a Prefect server, subprocess writers killed mid-write):
#: every test using one is end to end, so it is marked ``slow`` (CI runs it; ``make test-fast``
#: leaves it out).
HEAVY_FIXTURES = ("prefect_server",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in HEAVY_FIXTURES):
            item.add_marker(pytest.mark.slow)
