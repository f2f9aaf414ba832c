"""`radstore ingest` / `radstore extract` on manifests with bad rows: one line per bad row (image_id,
path=, reason; control characters escaped), exit status 1, the good rows committed; a manifest
that cannot be read is one error line and creates nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from featurestore.extract import ExtractConfig, extract
from featurestore.store import Store
from flows.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, main

ROOT = Path(__file__).resolve().parents[2]
GOOD = 6
FORGED = "fake\nERROR image_id=innocent path=x: forged"


def _broken(cohort, tmp_path) -> tuple[str, list[dict], dict[str, str]]:
    """A copy of the cohort whose manifest has GOOD good rows and one of several kinds of bad row;
    returns (manifest, good rows, {expected error line prefix: ...})."""
    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)
    rows = pq.read_table(root / "manifest.parquet").to_pylist()
    schema = pq.read_schema(root / "manifest.parquet")
    good = rows[:GOOD]
    a, b, c, d = rows[10], rows[11], rows[12], rows[13]
    data = (root / d["path"]).read_bytes()
    (root / d["path"]).write_bytes(data[: len(data) // 3])
    bad = [
        {**a, "path": None},
        {**b, "image_id": FORGED},
        {**c, "image_id": ""},
        {**a, "image_id": "twice", "path": b["path"]},
        {**a, "image_id": "twice", "path": c["path"]},
        d,
        {**a, "image_id": "through-a-file", "path": f"{a['path']}/x.dcm"},
    ]
    manifest = root / "m.parquet"
    pq.write_table(pa.Table.from_pylist([*good[:2], *bad, *good[2:]], schema=schema), manifest)
    expected = [
        f"ERROR image_id={a['image_id']} path=?: no path (null) in manifest row 2",
        f"ERROR image_id=fake\\nERROR image_id=innocent path=x: forged path={b['path']}: image_id contains control or unprintable",
        f"ERROR image_id=? path={c['path']}: manifest row 4 has an empty image_id",
        f"ERROR image_id=twice path={b['path']}: duplicate image_id in manifest (rows 5, 6); none of them",
        f"ERROR image_id=twice path={c['path']}: duplicate image_id in manifest (rows 5, 6); none of them",
        f"ERROR image_id={d['image_id']} path={d['path']}: corrupt or truncated",
        f"ERROR image_id=through-a-file path={a['path']}/x.dcm: could not read the file: Not a directory",
    ]
    return str(manifest), good, expected


def _error_lines(err: str, expected: list[str]) -> None:
    lines = [line for line in err.splitlines() if line.startswith("ERROR image_id=")]
    assert len(lines) == len(expected), lines
    for line, want in zip(lines, expected):
        assert line.startswith(want), (line, want)
    assert "Traceback" not in err
    assert not any(line.startswith(("ERROR image_id=innocent", "ERROR image_id=x")) for line in err.splitlines())


def test_ingest_bad_rows_one_line_each_and_the_rest_ingested(cohort, tmp_path, capsys):
    manifest, good, expected = _broken(cohort, tmp_path)
    code = main(["ingest", "--manifest", manifest, "--store", str(tmp_path / "s"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == EXIT_PARTIAL
    _error_lines(err, [e.replace("none of them", "none of them ingested") for e in expected])
    assert f"ingested {GOOD} new, 0 unchanged, {len(expected)} failed" in out
    store = Store.open(str(tmp_path / "s"))
    assert sorted(store.images().column("image_id").to_pylist()) == sorted(r["image_id"] for r in good)
    assert store.ingest_errors().num_rows == len(expected)


@pytest.mark.parametrize("manifest", ["missing.parquet", "garbage.parquet", "garbage.csv"])
def test_ingest_with_an_unreadable_manifest_creates_no_store(manifest, tmp_path, capsys):
    (tmp_path / "garbage.parquet").write_text("not parquet")
    (tmp_path / "garbage.csv").write_bytes(b'"unterminated\n\x00')
    code = main(["ingest", "--manifest", str(tmp_path / manifest), "--store", str(tmp_path / "s"), "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert err.startswith("error: manifest ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_extract_with_an_unreadable_manifest_creates_no_store(tmp_path, capsys):
    code = main(["extract", "--manifest", str(tmp_path / "nope.parquet"), "--store", str(tmp_path / "s"), "--encoder", "pixels"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR and err.startswith("error: manifest ") and "does not exist" in err
    assert not (tmp_path / "s").exists()


def test_extract_bad_rows_one_line_each_and_the_rest_committed(prefect_server, cohort, tmp_path, capsys):
    """`radstore extract` through the flow (a subprocess, as a user runs it): every bad row one line
    with path=, exit 1, the good rows equal to a clean extraction of only them; a file changed
    since ingest is refused with ingest's advice."""
    manifest, good, expected = _broken(cohort, tmp_path)
    root = tmp_path / "c"
    store_url = str(tmp_path / "s")
    # Index the good rows, then change the bytes of one: extract must refuse it, per row.
    assert main(["ingest", "--manifest", manifest, "--store", store_url, "--quiet"]) == EXIT_PARTIAL
    capsys.readouterr()
    changed = good[4]
    shutil.copy(root / good[5]["path"], root / changed["path"])

    # One torch thread: batch-invariant numerics for the exact comparison (test_extract_rows.py).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    exe = Path(sys.executable).with_name("radstore")
    cmd = [
        str(exe),
        "extract",
        "--manifest",
        manifest,
        "--store",
        store_url,
        "--encoder",
        "pixels",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == EXIT_PARTIAL, r.stderr[-3000:]
    # The manifest's bad rows (from the plan), then the files that failed, in manifest order.
    want = [e.replace("none of them", "none of them embedded") for e in expected]
    want.append(f"ERROR image_id={changed['image_id']} path={changed['path']}: bytes changed since it was ingested (sha256 ")
    _error_lines(r.stderr, want)
    assert "Give the new image a new image_id" in r.stderr
    fid = r.stdout.strip().splitlines()[-1]

    ok = [x for x in good if x is not changed]
    clean_rows = [{**x, "path": str(root / x["path"])} for x in ok]
    pq.write_table(pa.Table.from_pylist(clean_rows, schema=pq.read_schema(manifest)), tmp_path / "clean.parquet")
    ref_store = Store.open(str(tmp_path / "ref"), create=True)
    cfg = ExtractConfig("pixels", batch_size=4, num_workers=0, progress=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = ref_store.feature_set(extract(str(tmp_path / "clean.parquet"), ref_store, cfg).feature_set_id)
    finally:
        torch.set_num_threads(n)
    fs = Store.open(store_url).feature_set(fid)
    ids = [x["image_id"] for x in ok]
    assert fs.id == ref.id and sorted(fs.committed_ids()) == sorted(ids)
    assert np.abs(fs.patches(ids).astype(np.float32) - ref.patches(ids).astype(np.float32)).max() == 0
    ca, cb = fs.cls().to_pydict(), ref.cls().to_pydict()
    va, vb = dict(zip(ca["image_id"], ca["cls"])), dict(zip(cb["image_id"], cb["cls"]))
    assert np.abs(np.array([va[i] for i in ids]) - np.array([vb[i] for i in ids])).max() == 0
    rej = fs.rejects()
    assert rej.num_rows == len(want) and None in rej.column("path").to_pylist()  # the null path recorded as null
    assert main(["store", "verify", store_url]) == EXIT_OK
