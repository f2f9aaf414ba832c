"""``radstore query`` cannot reach outside the store nor write into it.

Every escape (COPY TO anywhere, COPY into ``features/<id>/cls/``, file functions inside and
outside the store, glob, ATTACH/INSTALL/LOAD/EXPORT, SET/RESET of the sandbox) fails with one
clear line; nothing is written, the store's committed rows are unchanged and verify clean,
and ordinary queries and ``--out`` keep working. Local and S3 (moto) stores.
"""

from __future__ import annotations

import os
import uuid

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.query import SANDBOX, VIEWS, connect, query, write_result
from featurestore.errors import RadstoreError
from featurestore.store import Store
from flows.cli import main

REFUSED = "radstore query is read-only and sees only the store's tables"


def _build(url: str, cohort, storage_options=None) -> tuple[Store, str]:
    from featurestore.extract import ExtractConfig, extract
    from featurestore.ingest import ingest

    store = Store.open(url, create=True, storage_options=storage_options)
    ingest(str(cohort), store, progress=False)
    fsid = extract(str(cohort), store, ExtractConfig("pixels", progress=False, num_workers=0, shard_images=16)).feature_set_id
    return store, fsid


@pytest.fixture(scope="module")
def local_store(cohort, tmp_path_factory):
    """(url, feature set id) of a local store of the cohort embedded with ``pixels`` (two shards)."""
    url = str(tmp_path_factory.mktemp("sandbox-store") / "store")
    _, fsid = _build(url, cohort)
    return url, fsid


@pytest.fixture(scope="module")
def s3_store(cohort, s3_server):
    """(Store, feature set id) of the same store on the moto S3 server."""
    return _build(f"s3://radstore-test/sandbox-{uuid.uuid4().hex[:8]}", cohort, s3_server)


def _state(store: Store) -> tuple:
    """Every object of the store (path, size), plus each feature set's committed rows and verify()."""
    fs = store.loc.fs
    root = store.loc.root
    if not store.loc.is_local:
        fs.invalidate_cache()
    files = sorted((p, d["size"]) for p, d in fs.find(root, detail=True).items())
    sets = [(f.id, f.cls(["sha256"]).to_pylist(), f.verify()) for f in store.feature_sets()]
    return files, sets


def _clean_state(store: Store) -> tuple:
    _state(store)  # a first read may cache a committed index: settle it before comparing
    before = _state(store)
    assert before[1] and all(rows and bad == [] for _, rows, bad in before[1])
    return before


def _escapes(store_url: str, fsid: str, tmp: str) -> dict[str, tuple[str, str | None]]:
    """name -> (SQL, path that must not exist afterwards, or None)."""
    part = f"{store_url}/features/{fsid}/cls/shard-00000009-{uuid.uuid4().hex[:12]}.parquet"
    return {
        "copy-out": (f"COPY (SELECT image_id, split FROM images) TO '{tmp}/leak.csv'", f"{tmp}/leak.csv"),
        "copy-into-cls": (f"COPY (SELECT * FROM _cls_0 LIMIT 1) TO '{part}' (FORMAT parquet)", part),
        "copy-into-store-partitioned": (
            f"COPY (SELECT image_id, split FROM images) TO '{store_url}/features/{fsid}/cls' (FORMAT parquet, PARTITION_BY split, APPEND)",
            None,
        ),
        "read-csv-etc-passwd": ("SELECT * FROM read_csv('/etc/passwd')", None),
        "read-text-etc-passwd": ("SELECT * FROM read_text('/etc/passwd')", None),
        "read-parquet-outside": (f"SELECT * FROM read_parquet('{tmp}/outside.parquet')", None),
        "read-parquet-store-file": (f"SELECT count(*) FROM read_parquet('{store_url}/images/*.parquet')", None),
        "glob-etc": ("SELECT * FROM glob('/etc/*')", None),
        "attach": (f"ATTACH '{tmp}/other.duckdb' AS other", f"{tmp}/other.duckdb"),
        "install": ("INSTALL httpfs", None),
        "load": ("LOAD httpfs", None),
        "load-file": (f"LOAD '{tmp}/evil.duckdb_extension'", None),
        "export": (f"EXPORT DATABASE '{tmp}/export'", f"{tmp}/export"),
        "set-access-on": ("SET enable_external_access = true", None),
        "reset-access": ("RESET enable_external_access", None),
        "unlock": ("SET lock_configuration = false", None),
        "allow-root": ("SET allowed_directories = ['/']", None),
        "then-read": ("SET enable_external_access = true; SELECT * FROM read_csv('/etc/passwd')", None),
    }


ESCAPES = list(_escapes("S", "F", "T"))


def _assert_refused(e: pytest.ExceptionInfo) -> None:
    msg = str(e.value)
    assert msg.startswith(REFUSED), msg
    assert "\n" not in msg and "--out" in msg and "views: images" in msg, msg


def test_sandbox_settings_on_a_query_connection(local_store):
    con = connect(local_store[0])
    got = dict(con.execute("SELECT name, value FROM duckdb_settings()").fetchall())
    assert got["enable_external_access"] == "false" and got["lock_configuration"] == "true"
    assert got["python_enable_replacements"] == "false" and got["autoload_known_extensions"] == "false"
    assert {n for n, _ in SANDBOX} >= {"enable_external_access", "lock_configuration"}
    # The only directory DuckDB may still touch is its private spill directory, outside the store.
    spill = got["temp_directory"]
    assert os.path.basename(spill).startswith("radstore-query-") and not spill.startswith(local_store[0])
    assert got["allowed_directories"] in ("[]", f"[{spill}/]") and got["allowed_paths"] == "[]"
    for v in VIEWS:  # every view still works with external access off
        con.execute(f"SELECT * FROM {v} LIMIT 1").fetchall()


@pytest.mark.parametrize("name", ESCAPES)
def test_escape_refused_local(local_store, tmp_path, name):
    url, fsid = local_store
    store = Store.open(url)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "outside.parquet")
    before = _clean_state(store)
    sql, target = _escapes(url, fsid, str(tmp_path))[name]
    with pytest.raises(RadstoreError) as e:
        query(url, sql)
    _assert_refused(e)
    if target is not None:
        assert not os.path.exists(target)
    assert sorted(os.listdir(tmp_path)) == ["outside.parquet"]
    assert _state(store) == before
    assert len(Store.open(url).feature_sets()[0]) == 24


def test_escape_refused_through_the_cli(local_store, tmp_path, capsys):
    url, fsid = local_store
    store = Store.open(url)
    before = _clean_state(store)
    part = f"{url}/features/{fsid}/cls/shard-00000009-deadbeef0000.parquet"
    for sql in (f"COPY (SELECT * FROM _cls_0 LIMIT 1) TO '{part}' (FORMAT parquet)", "SELECT * FROM glob('/etc/*')"):
        assert main(["query", "--store", url, sql]) == 2
        out, err = capsys.readouterr()
        assert out == "" and "Traceback" not in err
        assert err.count("\n") == 1 and err.startswith(f"error: {REFUSED}"), err
    assert not os.path.exists(part) and _state(store) == before
    # Ordinary queries and --out still work, and --out writes where it is told.
    assert main(["query", "--store", url, "SELECT count(*) AS n FROM cls"]) == 0
    assert "24" in capsys.readouterr().out
    out = tmp_path / "cls.parquet"
    assert main(["query", "--store", url, "SELECT image_id, cls FROM cls ORDER BY row", "--out", str(out)]) == 0
    assert pq.read_table(out).column("image_id").to_pylist() == store.feature_sets()[0].cls().column("image_id").to_pylist()
    assert main(["query", "--store", url, "SELECT image_id, split FROM images", "--out", str(tmp_path / "i.csv")]) == 0
    assert (tmp_path / "i.csv").read_text().startswith('"image_id","split"')


def test_in_memory_sql_still_works_and_leaves_no_trace(local_store):
    url, _ = local_store
    sql = (
        "CREATE TEMP TABLE t AS SELECT feature_set_id, count(*) AS n FROM cls GROUP BY 1; "
        "SELECT n, current_setting('temp_directory') AS spill FROM t"
    )
    t = query(url, sql).to_pylist()
    assert t[0]["n"] == 24
    assert not os.path.exists(t[0]["spill"])  # the private spill directory went with the connection
    assert query(url, "SELECT image_id FROM cls WHERE image_id NOT IN (SELECT image_id FROM images)").num_rows == 0
    # A plain SQL error keeps its own message (not the sandbox's).
    with pytest.raises(RadstoreError, match="query failed") as e:
        query(url, "SELECT * FROM nonsense")
    assert REFUSED not in str(e.value)


def test_python_variables_are_not_scanned(local_store):
    con = connect(local_store[0])
    secret = pa.table({"password": ["hunter2"]})  # noqa: F841 - what a replacement scan would find
    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM secret").fetchall()


def test_a_connection_you_pass_is_left_alone_unless_asked(local_store, tmp_path):
    url, _ = local_store
    own = connect(url, duckdb.connect())
    own.execute(f"COPY (SELECT image_id FROM images) TO '{tmp_path}/mine.csv'")  # your connection, your files
    assert (tmp_path / "mine.csv").exists()
    locked = connect(url, duckdb.connect(), sandboxed=True)
    with pytest.raises(duckdb.PermissionException):
        locked.execute(f"COPY (SELECT 1) TO '{tmp_path}/no.csv'")
    assert not (tmp_path / "no.csv").exists()


@pytest.mark.slow
def test_s3_store_views_work_and_escapes_are_refused(s3_store, tmp_path):
    store, fsid = s3_store
    before = _clean_state(store)
    want = store.feature_sets()[0].cls()
    t = query(store, "SELECT image_id, cls FROM cls ORDER BY row")
    assert t.column("image_id").to_pylist() == want.column("image_id").to_pylist()
    assert query(store, "SELECT count(*) AS n FROM images").column("n").to_pylist() == [store.images().num_rows]
    con = connect(store)
    for v in VIEWS:
        con.execute(f"SELECT * FROM {v} LIMIT 1").fetchall()
    url = store.loc.url.rstrip("/")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "outside.parquet")
    for name, (sql, _) in _escapes(url, fsid, str(tmp_path)).items():
        with pytest.raises(RadstoreError) as e:
            query(store, sql)
        _assert_refused(e)
        assert sorted(os.listdir(tmp_path)) == ["outside.parquet"], name
    assert _state(store) == before
    write_result(t, str(tmp_path / "cls.parquet"))
    assert pq.read_table(tmp_path / "cls.parquet").num_rows == len(want)
