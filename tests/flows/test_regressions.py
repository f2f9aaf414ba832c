"""Regression alerts on a real Prefect server: a deliberately degraded feature set raises exactly
one ``radstore.metric.regressed`` event (and the ``regressions`` artifact); an unchanged rerun
raises none, and neither does a retrain on the same data (flows.regressions)."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from datetime import UTC, datetime

import numpy as np
import pytest
from prefect import flow

from evaluation.artifacts import evaluate
from evaluation.config import EvalConfig
from flows.regressions import ARTIFACT_KEY, EVENT, regressions_task
from heads.train import train
from tests.lineage_grid import build, configs

CFG = EvalConfig(resamples=500)


def _degraded_copy(store, fsid: str) -> str:
    """The same images' embeddings drowned in noise, as a feature set of the same encoder whose
    weights are other (another fingerprint): what a broken checkpoint would give."""
    fs = store.feature_set(fsid)
    spec = dataclasses.replace(fs.spec, weights_fingerprint="degraded-by-noise")
    bad = store.create_feature_set(spec)
    cls = fs.cls()
    ids = cls.column("image_id").to_pylist()
    g = np.stack(cls.column("cls").to_numpy(zero_copy_only=False)).astype(np.float32)
    p = fs.patches(ids).astype(np.float32)
    rng = np.random.default_rng(0)
    with bad.writer() as w:
        w.write(ids, g + rng.normal(0, 20 * g.std(), g.shape).astype(np.float32),
                p + rng.normal(0, 20 * p.std(), p.shape).astype(np.float32), sha256=cls.column("sha256").to_pylist())  # fmt: skip
    return bad.id


def _events(url: str, since: datetime) -> list[dict]:
    body = {"filter": {"event": {"prefix": [EVENT]}, "occurred": {"since": since.isoformat()}}, "limit": 50}
    req = urllib.request.Request(f"{url}/events/filter", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["events"]


@pytest.mark.slow
def test_one_alert_for_a_degraded_encoder_none_for_an_unchanged_rerun(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker

    since = datetime.now(UTC)
    # The positive control: embeddings that carry the CTR by construction (a baseline far from
    # noise), on 80 images (20 test); two heads, so the evaluation has a row that stays put.
    _, store, fsid, runs = build(tmp_path, encoder="planted", n=80)
    ctr = configs()[1]
    good_runs = [runs[("ctr-reg", "linear")], runs[("pneumothorax-cls", "linear")]]

    @flow(name="alert-check")
    def alerts(eval_id: str) -> list[dict]:
        return regressions_task(store.url, eval_id)

    good = evaluate(store, good_runs, CFG)
    assert alerts(good.eval_id) == []  # the first publication: nothing to compare with
    assert alerts(evaluate(store, good_runs, CFG).eval_id) == []  # the same version again
    # Retrained on the same data: new runs, a new evaluation, the same numbers: compared, no alert.
    same = evaluate(store, [train(store, fsid, ctr).run_id, good_runs[1]], CFG)
    assert same.created and same.eval_id != good.eval_id and alerts(same.eval_id) == []
    # The CTR probe on a feature set drowned in noise: one alert, for that metric only.
    bad = evaluate(store, [train(store, _degraded_copy(store, fsid), ctr).run_id, good_runs[1]], CFG)
    rows = alerts(bad.eval_id)
    assert len(rows) == 1, rows
    (row,) = rows
    assert (row["task"], row["metric"], row["previous_eval"]) == ("ctr-reg", "r2", same.eval_id)
    assert row["delta"] < 0 and row["ci_high"] < 0 and row["q"] < 0.05
    assert any("weights changed (fingerprint" in r for r in row["reasons"])
    EventsWorker.drain_all()
    deadline, events = time.time() + 60, []
    while time.time() < deadline and not events:
        events = _events(prefect_server, since)
        time.sleep(1)
    assert len(events) == 1, events
    assert events[0]["resource"]["prefect.resource.id"].startswith("radstore.metric.ctr-reg.linear.all.planted")
    assert events[0]["payload"]["eval_id"] == bad.eval_id

    async def artifact():
        async with get_client() as c:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

            return await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])))

    import asyncio

    published = sorted(asyncio.run(artifact()), key=lambda a: a.created)
    assert len(published) == 4  # one table per check, empty ones included: the series shows the current state
    assert '"r2"' in str(published[-1].data) and bad.eval_id in str(published[-1].data)
    assert '"regressions": 0' in str(published[-2].data)


def test_the_documented_automation_is_a_valid_prefect_automation_on_the_alert_event():
    """infra/regression-alert.yaml parses into Prefect's own automation model and triggers on the
    event the alerts emit (the file `prefect automation create --from-file` reads)."""
    from pathlib import Path

    import yaml
    from prefect.events.schemas.automations import AutomationCore

    path = Path(__file__).resolve().parents[2] / "infra" / "regression-alert.yaml"
    (auto,) = [AutomationCore.model_validate(a) for a in yaml.safe_load(path.read_text())["automations"]]
    assert auto.trigger.expect == {EVENT} and auto.actions[0].type == "send-notification"
