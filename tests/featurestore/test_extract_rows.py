"""A bad manifest row is that row's failure: rejected with its path and reason, one clear line,
while every good row is committed exactly as a clean extraction of the good rows alone."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import layout
from featurestore.errors import FeatureSetError
from featurestore.extract import ExtractConfig, extract, plan
from featurestore.ingest import ingest
from featurestore.manifest import check_rows, error_line, load_manifest, printable
from featurestore.store import Store
from tests.conftest import batch_for

GOOD = 8  # the first 8 cohort images are the good rows of every case
AT = 3  # the bad rows go here, among the good ones (so they share a batch with good rows)
CFG = ExtractConfig("pixels", progress=False, num_workers=0, batch_size=4)


def _rows(manifest: str) -> tuple[list[dict], pa.Schema]:
    return pq.read_table(manifest).to_pylist(), pq.read_schema(manifest)


def _write(path, rows: list[dict], schema: pa.Schema) -> str:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Batch-invariant numerics for the exact comparisons: with two threads torch splits a row's
    mean (the pixels encoder's global statistics) across threads differently for a batch of 3
    and one of 4 (~1e-10 apart); a failed image changes its batch's size, which is not what these
    tests are about."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def clean(cohort, tmp_path_factory):
    """(feature set, good ids) of a clean extraction of only the good rows, into its own store."""
    rows, schema = _rows(str(cohort))
    good = [{**r, "path": str(cohort.parent / r["path"])} for r in rows[:GOOD]]
    tmp = tmp_path_factory.mktemp("clean")
    store = Store.open(str(tmp / "s"), create=True)
    r = extract(_write(tmp / "good.parquet", good, schema), store, CFG)
    assert (r.done, r.rejected) == (GOOD, [])
    return store.feature_set(r.feature_set_id), [x["image_id"] for x in good]


def assert_same_as_clean(store: Store, fs_id: str, clean) -> None:
    """The good rows, and only they, committed and read back equal to the clean extraction."""
    ref, ids = clean
    fs = store.feature_set(fs_id)
    assert fs_id == ref.id
    assert sorted(fs.committed_ids()) == sorted(ids)
    a, b = fs.patches(ids), ref.patches(ids)
    assert a.shape == b.shape and np.abs(a.astype(np.float32) - b.astype(np.float32)).max() == 0
    ca, cb = fs.cls().to_pydict(), ref.cls().to_pydict()
    va, vb = dict(zip(ca["image_id"], ca["cls"])), dict(zip(cb["image_id"], cb["cls"]))
    assert np.abs(np.array([va[i] for i in ids]) - np.array([vb[i] for i in ids])).max() == 0
    sa, sb = dict(zip(ca["image_id"], ca["sha256"])), dict(zip(cb["image_id"], cb["sha256"]))
    assert [sa[i] for i in ids] == [sb[i] for i in ids]


def _bad_rows(case: str, root, rows: list[dict], store: Store) -> tuple[list[dict], list[tuple[str, str | None, str]]]:
    """The bad rows of ``case`` (setting up their files), and the (image_id, path, reason) each
    is expected to be rejected with."""
    spare, other = rows[9], rows[10]
    sid, sp = spare["image_id"], spare["path"]
    if case == "null_path":
        return [{**spare, "path": None}], [(sid, None, f"no path (null) in manifest row {AT}")]
    if case == "empty_path":
        return [{**spare, "path": ""}], [(sid, "", f"empty path in manifest row {AT}")]
    if case == "empty_id":
        return [{**spare, "image_id": ""}], [("", sp, f"manifest row {AT} has an empty image_id")]
    if case == "null_id":
        return [{**spare, "image_id": None}], [("", sp, f"manifest row {AT} has an empty image_id")]
    if case == "control_id":
        iid = "fake\nERROR image_id=innocent path=x: forged"
        return [{**spare, "image_id": iid}], [
            (iid, sp, f"image_id contains control or unprintable character(s) '\\n' (manifest row {AT}); an image_id must be printable")
        ]
    if case == "missing_file":
        return [{**spare, "path": "images/not-there.dcm"}], [(sid, "images/not-there.dcm", "file not found")]
    if case == "directory":
        return [{**spare, "path": "images"}], [(sid, "images", "is a directory, not an image file")]
    if case == "unreadable":  # a path through a file: the OS refuses to open it (NotADirectoryError)
        return [{**spare, "path": f"{sp}/x.dcm"}], [(sid, f"{sp}/x.dcm", "could not read the file: Not a directory")]
    if case == "corrupt":
        data = (root / sp).read_bytes()
        (root / sp).write_bytes(data[: len(data) // 3])
        return [spare], [(sid, sp, "corrupt or truncated")]
    if case == "duplicate":  # one id on two rows with different images: neither is embedded
        dup = {**other, "image_id": sid}
        why = f"duplicate image_id in manifest (rows {AT}, {AT + 1}); none of them embedded"
        return [spare, dup], [(sid, sp, why), (sid, other["path"], why)]
    if case == "changed_bytes":  # ingested, then the file replaced by other bytes under the same id
        ingest(_write(root / "first.parquet", [*rows[:4], spare], pq.read_schema(root / "manifest.parquet")), store, progress=False)
        shutil.copy(root / other["path"], root / sp)
        why = "bytes changed since it was ingested (sha256 "
        return [spare], [(sid, sp, why)]
    raise AssertionError(case)


CASES = [
    "null_path",
    "empty_path",
    "empty_id",
    "null_id",
    "control_id",
    "missing_file",
    "directory",
    "unreadable",
    "corrupt",
    "duplicate",
    "changed_bytes",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_row_is_rejected_alone(case, cohort, tmp_path, clean):
    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)
    rows, schema = _rows(str(root / "manifest.parquet"))
    store = Store.open(str(tmp_path / "s"), create=True)
    bad, expected = _bad_rows(case, root, rows, store)
    manifest = _write(root / "m.parquet", [*rows[:AT], *bad, *rows[AT:GOOD]], schema)

    r = extract(manifest, store, CFG)

    assert r.done == GOOD and r.skipped == 0
    assert [(i, p) for i, p, _ in r.rejected] == [(i, p) for i, p, _ in expected]
    for (_, _, got), (_, _, want) in zip(r.rejected, expected):
        assert got.startswith(want), (got, want)
    assert r.failed == [(i, why) for i, _, why in r.rejected]  # (image_id, reason), as before
    lines = [error_line(*x) for x in r.rejected]
    for (iid, path, _), line in zip(r.rejected, lines):
        assert "\n" not in line and line.startswith(f"ERROR image_id={printable(iid) or '?'} path={printable(path) or '?'}: ")
    if case == "control_id":
        assert lines[0].startswith("ERROR image_id=fake\\nERROR image_id=innocent path=x: forged path=images/")
    if case == "changed_bytes":
        assert "Give the new image a new image_id" in r.rejected[0][2] and "not embedded" in r.rejected[0][2]
    rej = store.feature_set(r.feature_set_id).rejects()
    assert list(zip(rej.column("image_id").to_pylist(), rej.column("path").to_pylist(), rej.column("reason").to_pylist())) == r.rejected
    assert_same_as_clean(store, r.feature_set_id, clean)

    again = extract(manifest, store, CFG)  # the good rows are done; the bad ones are reported again
    assert (again.done, again.skipped) == (0, GOOD) and [(i, p) for i, p, _ in again.rejected] == [(i, p) for i, p, _ in expected]


@pytest.mark.parametrize("case", [c for c in CASES if c != "changed_bytes"])
def test_ingest_reports_the_same_rows(case, cohort, tmp_path):
    """Ingest runs the same per-row checks: the same rows fail, the rest are indexed."""
    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)
    rows, schema = _rows(str(root / "manifest.parquet"))
    store = Store.open(str(tmp_path / "s"), create=True)
    bad, expected = _bad_rows(case, root, rows, store)
    manifest = _write(root / "m.parquet", [*rows[:AT], *bad, *rows[AT:GOOD]], schema)
    lines: list[str] = []
    rep = ingest(manifest, store, progress=False, log=lines.append)
    assert sorted(rep.added) == sorted(r["image_id"] for r in rows[:GOOD])
    assert [(i, p) for i, p, _ in rep.failed] == [(i, p) for i, p, _ in expected]
    for (_, _, got), (_, _, want) in zip(rep.failed, expected):
        assert got.startswith(want.replace("none of them embedded", "none of them ingested")), (got, want)
    assert lines == [error_line(*x) for x in rep.failed] and all("\n" not in line for line in lines)


def test_plan_leaves_bad_rows_out_and_returns_them(cohort, tmp_path):
    rows, schema = _rows(str(cohort))
    rows = [{**r, "path": str(cohort.parent / r["path"])} for r in rows]
    bad = [{**rows[9], "path": None}, {**rows[10], "image_id": rows[0]["image_id"]}]  # a null path; a good id repeated
    manifest = _write(tmp_path / "m.parquet", [*rows[:GOOD], *bad], schema)
    store = Store.open(str(tmp_path / "s"), create=True)
    p = plan(manifest, store, CFG)
    dup = f"duplicate image_id in manifest (rows 0, {GOOD + 1}); none of them embedded"
    assert p.rejected == [
        (rows[0]["image_id"], rows[0]["path"], dup),
        (rows[9]["image_id"], None, f"no path (null) in manifest row {GOOD}"),
        (rows[0]["image_id"], rows[10]["path"], dup),
    ]
    assert [i for g in p.groups for i in g] == [r["image_id"] for r in rows[1:GOOD]] and p.skipped == 0


def test_check_rows_positions_and_reasons(cohort):
    m = load_manifest(str(cohort))
    t = m.table.slice(0, 5)
    ids = t.column("image_id").to_pylist()
    ids[1], ids[2], ids[4] = "a\tb", ids[0], "  "
    t = t.set_column(t.schema.get_field_index("image_id"), "image_id", pa.array(ids, pa.string()))
    valid, errors = check_rows(type(m)(m.url, t, m.base), action="used")
    assert valid.to_pylist() == [3]
    assert [(e.row, e.image_id) for e in errors] == [(0, ids[0]), (1, "a\tb"), (2, ids[0]), (4, "  ")]
    assert errors[1].reason.startswith("image_id contains control or unprintable character(s) '\\t'")
    assert errors[0].reason == "duplicate image_id in manifest (rows 0, 2); none of them used"
    assert error_line("a\tb\r\n", "x\ny", "r\x1b[31m") == "ERROR image_id=a\\tb\\r\\n path=x\\ny: r\\x1b[31m"
    assert error_line("", None, "why") == "ERROR image_id=? path=?: why"


def test_rejects_written_without_a_path_column_still_read(tmp_path, tiny_spec):
    """Parts from before ``path`` was added read back with a null path beside new ones."""
    fs = Store.open(str(tmp_path / "s"), create=True).create_feature_set(tiny_spec)
    old = pa.table({"image_id": ["old"], "reason": ["was bad"], "time": pa.array([layout.now_ms()], pa.timestamp("ms", tz="UTC"))})
    fs.loc.write_parquet(old, layout.REJECTS_DIR, layout.rejects_part_name())
    fs.record_rejects(["new"], ["is bad"], paths=["images/new.dcm"])
    fs.record_rejects(["newer"], ["is bad too"])
    got = {i: p for i, p in zip(fs.rejects().column("image_id").to_pylist(), fs.rejects().column("path").to_pylist())}
    assert got == {"old": None, "new": "images/new.dcm", "newer": None}


def test_writer_names_the_positions_of_empty_and_repeated_ids(tmp_path, tiny_spec):
    fs = Store.open(str(tmp_path / "s"), create=True).create_feature_set(tiny_spec)
    c, p = batch_for(["a", "b", "c", "d"])
    with fs.writer() as w:
        with pytest.raises(FeatureSetError, match=r"empty image_id at position\(s\) 1, 3 of a batch of 4"):
            w.write(["a", "", "c", ""], c, p)
        with pytest.raises(FeatureSetError, match=r"b\\n appear twice in one batch \(b\\n at positions 1, 3\)"):
            w.write(["a", "b\n", "c", "b\n"], c, p)
    assert len(fs) == 0
