"""The training flows on a real Prefect server, and the CLI."""

from __future__ import annotations

from featurestore.layout.records import list_runs
from featurestore.store import Store
from flows.cli import EXIT_OK, main

SMALL = {"lr": 1e-3, "max_epochs": 3, "progress": False, "target_size": 32, "attn_size": 16, "refiner_channels": (16, 8)}


def test_train_head_flow_returns_a_run(prefect_server, pixels_store):
    from flows.train import train_head

    url, fsid, _ = pixels_store
    run_id = train_head(url, fsid, "cardiomegaly-cls", "linear", config=SMALL)
    assert run_id in {r["run_id"] for r in list_runs(Store.open(url))}


def test_train_grid_covers_heads_tasks_and_folds(prefect_server, pixels_store):
    from flows.train import grid_configs, train_grid

    assert len(grid_configs(None, None, None)) == 7  # 5 tasks x linear + 2 segmentation x cross-attention
    assert len(grid_configs(["heart-seg"], None, [0, 1, 2])) == 6
    url, fsid, _ = pixels_store
    ids = train_grid(url, fsid, tasks=["heart-seg", "ctr-reg"], folds=[0, 1], config={**SMALL, "folds": 3})
    runs = {r["run_id"]: r for r in list_runs(Store.open(url))}
    assert len(ids) == 6 and all(i in runs for i in ids)
    assert sorted((runs[i]["task"], runs[i]["head"], runs[i]["fold"]) for i in ids) == sorted(
        [("heart-seg", h, f) for h in ("linear", "cross-attention") for f in (0, 1)] + [("ctr-reg", "linear", f) for f in (0, 1)]
    )


def test_cli_train_prints_the_run_id(prefect_server, pixels_store, capsys):
    url, fsid, _ = pixels_store
    args = [
        "train",
        "--store",
        url,
        "--feature-set",
        fsid,
        "--task",
        "heart-seg",
        "--head",
        "cross-attention",
        "--max-epochs",
        "2",
        "--lr",
        "1e-3",
        "--target-size",
        "32",
        "--small-refiner",
    ]
    code = main(args)
    assert code == EXIT_OK
    run_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert run_id.startswith(f"{fsid}-heart-seg-cross-attention-")
    # The same run again: reused before Prefect starts, its id printed.
    assert main(args) == EXIT_OK
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("nothing to train: all 1 run(s)") and out[-1] == run_id
    assert main(["runs", "--store", url]) == EXIT_OK
    assert run_id in capsys.readouterr().out
    assert main(["train", "--store", url, "--feature-set", "nope", "--task", "ctr-reg"]) == 2
