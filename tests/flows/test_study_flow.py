"""The whole study as one flow; its config; the served deployments; scale-out on Dask + S3."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from evaluation.artifacts import list_evaluations, read_evaluation
from featurestore.errors import RadstoreError
from featurestore.layout.records import list_runs
from featurestore.store import Store
from flows.config import StudyConfig, load_config
from tests.conftest import COHORT
from tests.flows.test_extract_flow import _artifacts

ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN = {
    "solver": "lbfgs",
    "lr": 1e-3,
    "max_epochs": 3,
    "target_size": 32,
    "refiner_channels": [16, 8],
    "attn_size": 16,
    "progress": False,
}


def small_config(tmp_path, cohort, **kw) -> StudyConfig:
    base = dict(
        store=str(tmp_path / "store"),
        manifest=str(cohort),
        encoders=["pixels", "rad-dino"],
        positive_control=False,  # its own tests: tests/evaluation/test_controls.py (and make demo)
        train=TINY_TRAIN,
        evaluation={"resamples": 200},
        report=str(tmp_path / "report"),
        num_workers=0,
    )
    return StudyConfig.from_dict({**base, **kw})


@pytest.mark.slow
def test_study_runs_the_grid_and_a_rerun_reuses_everything(prefect_server, cohort, tmp_path):
    from flows.study import run_study

    cfg = small_config(tmp_path, cohort)
    out = run_study(cfg)
    # rad-dino has no local weights here: random:tiny, recorded in the feature set.
    assert out["extracted"]["rad-dino"]["weights"] == "random:tiny" and out["extracted"]["pixels"]["done"] == COHORT.n
    store = Store.open(cfg.store)
    assert store.feature_set(out["feature_sets"]["rad-dino"]).spec.labels["weights"] == "random:tiny"
    assert out["trained"] == 2 * 7 and out["reused"] == 0 and len(list_runs(store)) == 14
    _, t = read_evaluation(store, out["eval_id"])
    primary = t["metrics"].filter(t["metrics"].column("primary")).to_pylist()
    assert {(r["encoder"], r["head"], r["task"]) for r in primary} == {
        (e, h, task)
        for e in ("pixels", "rad-dino")
        for task, h in [
            ("pneumothorax-cls", "linear"),
            ("cardiomegaly-cls", "linear"),
            ("ctr-reg", "linear"),
            ("pneumothorax-seg", "linear"),
            ("heart-seg", "linear"),
            ("pneumothorax-seg", "cross-attention"),
            ("heart-seg", "cross-attention"),
        ]
    }
    assert Path(out["report"]).is_file() and _artifacts("evaluation")
    assert set(out["timings"]) == {"ingest", "extract", "health", "train", "evaluate", "report"}
    # embedding health of every feature set, right after its extraction
    assert sorted(h["feature_set_id"] for h in out["health"]) == sorted(out["feature_sets"].values())
    assert all(h["created"] for h in out["health"])

    again = run_study(cfg)
    assert again["trained"] == 0 and again["reused"] == 14
    assert all(e["done"] == 0 and e["skipped"] == COHORT.n for e in again["extracted"].values())
    assert again["eval_id"] == out["eval_id"] and not again["new_eval"] and len(list_runs(store)) == 14
    assert [h["health_id"] for h in again["health"]] == [h["health_id"] for h in out["health"]]
    assert not any(h["created"] for h in again["health"])  # nothing changed: the stored versions
    from flows.noop import study_noop

    # What `radstore study` checks before Prefect starts: nothing new, this evaluation and report.
    msg = study_noop(cfg)
    assert msg.startswith("nothing new:") and out["eval_id"] in msg and out["report"] in msg

    # Changed hyperparameters for one head: only those runs are retrained, and a new evaluation version.
    changed = small_config(tmp_path, cohort, train={**TINY_TRAIN, "max_epochs": 2}, heads=["cross-attention"])
    third = run_study(changed)
    assert third["trained"] == 2 * 2 and third["reused"] == 0 and third["new_eval"]
    assert len(list_evaluations(store)) == 2


def test_config_files_and_their_errors(tmp_path):
    for name in ("demo", "study"):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert {e.name for e in cfg.encoders} == {"rad-dino", "chexagent", "biomedclip", "pixels", "random-vit", "planted"}
        assert cfg.evaluation["resamples"] == 2000
        # Every knob of the config is in each example file (documented there).
        assert set(yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())) == set(cfg.to_json())
    assert load_config(ROOT / "configs" / "study.yaml").missing_weights == "error"
    bad = tmp_path / "bad.yaml"
    for text, match in [
        ("stor: x\n", "unknown key.*stor"),
        ("encoders: [dino]\n", "unknown encoder 'dino'"),
        ("tasks: [nodules]\n", "unknown task 'nodules'"),
        ("train: {lrr: 1}\n", "train: unknown.*lrr"),
        ("evaluation: {resamples: 5}\n", "resamples"),
        ("missing_weights: maybe\n", "missing_weights"),
        ("health: {sample: -1}\n", "health: sample"),
        ("health: {smaple: 3}\n", "health: unknown key.*smaple"),
        ("encoders: [{name: rad-dino, intensity: bright}]\n", "intensity must be one of"),
        ("encoders: [{name: rad-dino, bits: 12}]\n", "bits must be one of"),
        ("encoders: [rad-dino, {name: rad-dino, intensity: minmax}]\n", "rad-dino listed twice"),
        ("[1, 2]\n", "mapping"),
        ("a: [\n", "not valid YAML"),
    ]:
        bad.write_text(text)
        with pytest.raises(RadstoreError, match=match):
            load_config(bad)
    with pytest.raises(RadstoreError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def _wait_for(fn, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_served_deployments_backfill_then_study(prefect_server, cohort, tmp_path):
    """`radstore serve` against a real server: the nightly backfill runs, then starts the study."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from flows.deployments import AFTER_BACKFILL, BACKFILL

    cfg = small_config(
        tmp_path, cohort, encoders=["pixels"], tasks=["cardiomegaly-cls", "heart-seg"], heads=["linear"], schedule="30 3 * * *"
    )
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg.to_json()))
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("radstore")), "serve", "--config", str(path)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with get_client(sync_client=True) as c:

            def deployment(name):
                try:
                    return c.read_deployment_by_name(name)
                except Exception:  # noqa: BLE001 - not registered yet
                    return None

            names = [f"backfill/{BACKFILL}", f"study/{AFTER_BACKFILL}", "evaluate/on-demand"]
            d = _wait_for(lambda: all(deployment(n) for n in names) and deployment(names[0]), 180, "the deployments to be registered")
            assert d.schedules and d.schedules[0].schedule.cron == "30 3 * * *"
            fr = run_deployment(f"backfill/{BACKFILL}", timeout=400)
            assert fr.state.is_completed(), (fr.state, (tmp_path / "serve.log").read_text()[-3000:])
            from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

            study_dep = deployment(f"study/{AFTER_BACKFILL}")
            runs = lambda: c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[study_dep.id])))  # noqa: E731
            follow = _wait_for(runs, 60, "the backfill to start the study")
            assert len(follow) == 1 and follow[0].parameters["config"]["store"] == cfg.store
            done = _wait_for(lambda: (r := c.read_flow_run(follow[0].id)).state.is_final() and r, 400, "the follow-on study run")
            assert done.state.is_completed(), (done.state, (tmp_path / "serve.log").read_text()[-3000:])
        store = Store.open(cfg.store)
        assert len(store.feature_set_ids()) == 1 and len(list_runs(store)) == 2 and len(list_evaluations(store)) == 1
        assert _artifacts("evaluation-summary")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_scale_out_on_dask_into_s3(prefect_server, s3_server, cohort, tmp_path):
    """Extraction of two encoders from one decode, fanned out on a LocalCluster into an
    S3-compatible server, read back with to_xarray(), then one head trained from the object store."""
    from flows.study import run_study

    url = "s3://radstore-test/study"
    cfg = StudyConfig.from_dict(
        dict(
            store=url,
            manifest=str(cohort),
            storage_options=s3_server,
            encoders=["rad-dino", "pixels"],
            positive_control=False,
            tasks=["heart-seg"],
            heads=["linear"],
            train=TINY_TRAIN,
            evaluation={"resamples": 200},
            runner="dask",
            num_workers=0,
        )
    )
    assert cfg.report_dir is None
    out = run_study(cfg)
    assert out["extracted"]["rad-dino"]["done"] == COHORT.n and out["extracted"]["pixels"]["done"] == COHORT.n
    assert out["trained"] == 2
    store = Store.open(url, storage_options=s3_server)
    fs = store.feature_set(out["feature_sets"]["rad-dino"])
    da = fs.to_xarray()
    ids = sorted(fs.committed_ids())
    assert sorted(da.coords["image_id"].values.tolist()) == ids
    got = da["patches"].sel(image_id=ids[:3]).values.astype(np.float32)
    assert da["patches"].chunks is not None  # lazy: dask-backed, read shard by shard
    np.testing.assert_array_equal(got, fs.patches(ids[:3]).astype(np.float32))
    # The same embeddings as a serial local run of the same encoder.
    from featurestore.extract import ExtractConfig, extract

    local = Store.open(str(tmp_path / "local"), create=True)
    ref = extract(str(cohort), local, ExtractConfig("rad-dino", weights="random:tiny", progress=False, num_workers=0))
    assert ref.feature_set_id == fs.id
    np.testing.assert_allclose(local.feature_set(fs.id).patches(ids[:3]).astype(np.float32), got, rtol=1e-3, atol=1e-3)
    assert [r["task"] for r in list_runs(store)] == ["heart-seg", "heart-seg"]
    assert store.loc.exists("metrics", out["eval_id"], "eval.json")


def test_prefect_yaml_deploys_the_served_flows_to_the_work_pool():
    """prefect.yaml (work-pool deployments) names the same flows, names and parameters as
    flows/deployments.py (served); each entrypoint resolves to a flow taking those parameters."""
    import importlib
    import inspect

    from flows.deployments import deployments

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    served = {d.name: d for d in deployments(StudyConfig())}
    assert {d["name"] for d in spec["deployments"]} == set(served)
    for d in spec["deployments"]:
        module, func = d["entrypoint"].split(":")
        f = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
        assert f.name == served[d["name"]].flow_name
        params = inspect.signature(f.fn).parameters
        assert set(d.get("parameters", {})) <= set(params), d["name"]
        assert d["work_pool"]["name"] == "radstore-gpu"
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly-backfill")
    assert nightly["schedules"][0]["cron"] == StudyConfig().schedule
    assert nightly["parameters"]["follow_on"] == "study/after-backfill"


def test_config_file_parameter(prefect_server, cohort, tmp_path):
    """Deployments may pass the path of a study YAML instead of its contents."""
    from flows.study import backfill

    cfg = small_config(tmp_path, cohort, encoders=["pixels"])
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg.to_json()))
    out = backfill(config_file=str(path))
    assert out["new"] == COHORT.n and out["follow_on_run"] is None
    assert backfill(config_file=str(path))["new"] == 0
