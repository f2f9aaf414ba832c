"""The ``radstore`` command line: every subcommand listed, exit statuses that scripts can use."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from flows.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, build_parser, main


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, check=True).stdout
    sub = [a for a in build_parser()._subparsers._group_actions][0]
    assert set(sub.choices) == {
        "synth",
        "preview",
        "ingest",
        "extract",
        "train",
        "runs",
        "evaluate",
        "query",
        "diff",
        "report",
        "study",
        "serve",
        "bench",
        "store",
        "encoders",
        "tasks",
        "health",
    }
    for cmd in sub.choices:
        assert f"    {cmd} " in out  # listed, with its help line
    assert (
        "torch"
        not in subprocess.run(
            [sys.executable, "-c", "import sys, flows.cli as c; c.build_parser(); print(*sys.modules)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    )  # --help stays fast


def test_choices_and_defaults_come_from_the_configs_and_registries():
    import dataclasses

    from evaluation.config import EvalConfig
    from featurestore.config import ExtractConfig
    from featurestore.encoders import ENCODERS
    from featurestore.tasks import TASKS, all_heads
    from heads.config import TrainConfig

    sub = [a for a in build_parser()._subparsers._group_actions][0].choices
    for cmd, cls in (("extract", ExtractConfig), ("train", TrainConfig), ("evaluate", EvalConfig)):
        for action in sub[cmd]._actions:
            field = {f.name: f for f in dataclasses.fields(cls)}.get(action.dest)
            if field is not None and field.default is not dataclasses.MISSING and action.dest not in ("task", "head"):
                assert action.default == field.default, (cmd, action.dest)
    act = {a.dest: a for a in sub["extract"]._actions}
    assert act["encoder"].type(",".join(ENCODERS)) == list(ENCODERS)  # every registered name, comma-separated
    with pytest.raises(argparse.ArgumentTypeError, match="unknown encoder"):
        act["encoder"].type("pixels,not-an-encoder")
    from featurestore.featureset.spec import SUPPORTED_DTYPES

    assert list(act["dtype"].choices) == list(SUPPORTED_DTYPES)
    act = {a.dest: a for a in sub["train"]._actions}
    assert list(act["task"].choices) == [*TASKS, "all"] and list(act["head"].choices) == [*all_heads(), "all"]
    assert act["head"].default == TrainConfig.__dataclass_fields__["head"].default


def test_synth_ingest_info_end_to_end(tmp_path, capsys):
    assert (
        main(
            [
                "synth",
                "--out",
                str(tmp_path / "c"),
                "--n",
                "6",
                "--seed",
                "2",
                "--min-side",
                "128",
                "--max-side",
                "160",
                "--preview",
                "--quiet",
            ]
        )
        == EXIT_OK
    )
    assert (tmp_path / "c" / "preview.png").stat().st_size > 10_000
    assert pq.read_table(tmp_path / "c" / "manifest.parquet").num_rows == 6
    args = ["ingest", "--manifest", str(tmp_path / "c" / "manifest.parquet"), "--store", str(tmp_path / "s"), "--quiet"]
    assert main(args) == EXIT_OK
    assert "ingested 6 new" in capsys.readouterr().out
    assert main(args) == EXIT_OK
    assert "0 new, 6 unchanged" in capsys.readouterr().out
    assert main(["store", "info", str(tmp_path / "s")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "images       6" in out and "feature sets none yet" in out
    assert main(["store", "verify", str(tmp_path / "s")]) == EXIT_OK


def test_partial_failure_exit_status_and_error_lines(tmp_path, cohort, capsys):
    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)
    row = pq.read_table(root / "manifest.parquet").to_pylist()[0]
    (root / row["path"]).write_bytes(b"")
    code = main(["ingest", "--manifest", str(root / "manifest.parquet"), "--store", str(tmp_path / "s"), "--quiet"])
    assert code == EXIT_PARTIAL
    err = capsys.readouterr().err
    assert f"ERROR image_id={row['image_id']} path={row['path']}: file is empty" in err


def test_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["store", "info", str(tmp_path / "none")]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: no radstore store at") and "Traceback" not in err
    assert main(["ingest", "--manifest", str(tmp_path / "m.parquet"), "--store", str(tmp_path / "s")]) == EXIT_ERROR
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_on_200_images(tmp_path):
    """The acceptance run: synth + ingest of 200 images at the default sizes, via the installed script."""
    exe = shutil.which("radstore", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the radstore console script is not installed in this environment"
    subprocess.run([exe, "synth", "--out", str(tmp_path / "c"), "--n", "200", "--quiet", "--preview"], check=True)
    r = subprocess.run(
        [exe, "ingest", "--manifest", str(tmp_path / "c" / "manifest.parquet"), "--store", str(tmp_path / "s"), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "ingested 200 new" in r.stdout


@pytest.mark.slow
def test_bench_smoke(capsys):
    """`radstore bench` hands its arguments to the benchmark runner (a quick planning stage)."""
    assert main(["bench", "--quick", "--no-write", "--stages", "planning"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "planner, warm" in out and "targets met" in out


def test_synth_split_must_be_three_fractions(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["synth", "--out", str(tmp_path / "c"), "--n", "4", "--split", "0.5,0.5"])
    assert e.value.code == 2
    assert "--split '0.5,0.5': give three positive fractions that sum to 1" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
