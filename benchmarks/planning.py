"""The extraction planner over 1,000,000 committed ids, and a DuckDB query.

Planner: a feature set (the ``pixels`` encoder's, shards of 64) whose ``cls/`` holds
1,000,000 committed image_ids in 15,625 Parquet parts of 64 rows, written synthetically in the
store's own schema (zero vectors: the planner reads only ``image_id``); a manifest of
1,010,000 rows, 10,000 of them new. ``featurestore.extract.plan`` (what ``radstore extract``
runs first: committed ids, the difference, the shard allocation) is timed

- warm: a committed index (layout.py) covering all but the 16 newest parts, the steady state
  of a store the planner has seen before;
- cold: no committed index, every part read (what every plan cost before the index; the
  planner then writes the index).

DuckDB: a nearest-neighbour query (top 10 by cosine similarity to one [CLS] vector) over a
``cls`` table of 100,000 rows of 768 floats in 1,563 parts, straight from the Parquet files,
against pyarrow + numpy doing the same.

Run alone: ``.venv/bin/python -m benchmarks.planning``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import Row, compare, finish, scratch_dir, speedups, time_row, with_ratio
from featurestore import layout
from featurestore.extract import ExtractConfig, feature_set_for, plan
from featurestore.store import Store

STAGE = "5 planning"
SHARD = 64


def _write_parts(args) -> None:
    """Parts ``[first, last)`` of a synthetic cls table (run in worker processes)."""
    cls_dir, first, last, n_total, dim, seed = args
    schema = layout.cls_schema(dim)
    rng = np.random.default_rng(seed) if seed is not None else None
    now = pa.array([layout.now_ms()] * SHARD, pa.timestamp("ms", tz="UTC"))
    sha = pa.nulls(SHARD, pa.string())
    zero = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(SHARD * dim, np.float32)), dim)
    for k in range(first, last):
        lo, hi = k * SHARD, min(n_total, (k + 1) * SHARD)
        m = hi - lo
        vec = zero[:m] if rng is None else pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(m * dim, dtype=np.float32)), dim)
        t = pa.Table.from_arrays(
            [pa.array([f"img{i:08d}" for i in range(lo, hi)]), pa.array(np.arange(lo, hi)), pa.array(np.full(m, k)), vec, sha[:m], now[:m]],
            schema=schema,
        )
        pq.write_table(t, os.path.join(cls_dir, layout.cls_part_name(k, f"{k:012x}")), use_dictionary=["image_id"], compression="zstd")


def synthesize_parts(cls_dir: Path, n: int, dim: int, random_vectors: bool = False, workers: int = 2) -> int:
    """``n`` committed rows in parts of 64, written by ``workers`` processes; returns the part count."""
    cls_dir.mkdir(parents=True, exist_ok=True)
    parts = -(-n // SHARD)
    bounds = np.linspace(0, parts, workers * 4 + 1).astype(int)
    jobs = [
        (str(cls_dir), int(a), int(b), n, dim, (1000 + i) if random_vectors else None)
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_write_parts, jobs))
    return parts


def run(committed: int = 1_000_000, new: int = 10_000, query_rows: int = 100_000, reps: int = 3) -> dict:
    """Time the planner cold and warm over ``committed`` synthetic ids plus ``new`` ones, and the
    DuckDB query; asserts both plans agree and find exactly the new ids."""
    root = scratch_dir("plan")
    rows: list[Row] = []
    details: dict = {}
    try:
        store = Store.open(str(root / "store"), create=True)
        cfg = ExtractConfig("pixels", shard_images=SHARD, progress=False)
        fs = feature_set_for(store, cfg)
        cls_dir = Path(fs.loc.path(layout.CLS_DIR))
        # All parts but the 16 newest, then an index of those, then the 16 newest.
        parts = -(-committed // SHARD)
        synthesize_parts(cls_dir, committed, fs.spec.global_dim)
        newest = sorted(cls_dir.iterdir())[-16:]
        hold = root / "newest"
        hold.mkdir()
        for p in newest:
            p.rename(hold / p.name)
        fs.COMMITTED_INDEX_MIN_NEW_PARTS = 1
        fs.committed_rows(update_index=True)
        for p in newest:
            (hold / p.name).rename(p)
        index_dir = Path(fs.loc.path(layout.COMMITTED_DIR))
        saved = root / "saved-index"
        shutil.copytree(index_dir, saved)
        ids = pa.array([f"img{i:08d}" for i in range(committed + new)])
        manifest = root / "manifest.parquet"
        pq.write_table(pa.table({"image_id": ids, "path": pa.array(["images/x.png"] * len(ids))}), manifest)

        def restore_index():
            shutil.rmtree(index_dir, ignore_errors=True)
            shutil.copytree(saved, index_dir)

        results = {}

        def planner(name):
            def go():
                results[name] = plan(str(manifest), store, cfg)

            return go

        t = compare(
            {"cold": planner("cold"), "warm": planner("warm")},
            reps,
            setup={"cold": lambda: shutil.rmtree(index_dir, ignore_errors=True), "warm": restore_index},
        )
        for name in ("cold", "warm"):
            p = results[name]
            assert sum(map(len, p.groups)) == new and p.skipped == committed, (name, sum(map(len, p.groups)), p.skipped)
        assert results["cold"].groups == results["warm"].groups
        details["planner"] = {"seconds": t, "parts": parts, "committed": committed, "new": new}
        what = f"{committed:,} committed in {parts:,} parts, {new:,} new"
        rows.append(time_row(STAGE, f"planner, cold: every part read [{what}]", committed, t["cold"]))
        w = time_row(STAGE, "planner, warm: committed index + 16 newer parts", committed, t["warm"])
        rows.append(with_ratio(w, speedups(t["cold"], t["warm"]), "cold planner", "<= 2 s", w.value <= 2.0))
        rows += _duckdb(root, query_rows, reps, details)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"stage": STAGE, "rows": rows, "details": details}


def _duckdb(root: Path, n: int, reps: int, details: dict) -> list[Row]:
    import duckdb

    dim = 768
    cls_dir = root / "query" / "cls"
    parts = synthesize_parts(cls_dir, n, dim, random_vectors=True)
    q = np.random.default_rng(5).standard_normal(dim).astype(np.float32)
    glob = str(cls_dir / "*.parquet")
    con = duckdb.connect()
    sql = (
        f"SELECT image_id, array_cosine_similarity(cls::FLOAT[{dim}], $q::FLOAT[{dim}]) AS sim "
        f"FROM read_parquet('{glob}') ORDER BY sim DESC LIMIT 10"
    )
    found = {}

    def with_duckdb():
        found["duckdb"] = con.execute(sql, {"q": q.tolist()}).fetchall()

    def with_numpy():
        t = pq.read_table(str(cls_dir), columns=["image_id", "cls"])
        x = t.column("cls").combine_chunks().flatten().to_numpy().reshape(-1, dim)
        sim = (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
        top = np.argsort(-sim)[:10]
        ids = t.column("image_id")
        found["numpy"] = [(ids[int(i)].as_py(), float(sim[i])) for i in top]

    t = compare({"numpy": with_numpy, "duckdb": with_duckdb}, reps)
    assert [i for i, _ in found["duckdb"]] == [i for i, _ in found["numpy"]], (found["duckdb"], found["numpy"])
    details["duckdb"] = {"seconds": t, "rows": n, "parts": parts, "sql": sql}
    what = f"top-10 cosine over {n:,} x {dim} in {parts:,} parts"
    return [
        time_row(STAGE, f"pyarrow read + numpy [{what}]", n, t["numpy"]),
        with_ratio(
            time_row(STAGE, "DuckDB query straight from the cls Parquet parts", n, t["duckdb"]),
            speedups(t["numpy"], t["duckdb"]),
            "pyarrow + numpy",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run this stage alone from the command line; prints its table, writes its results file, exits 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--committed", type=int, default=1_000_000)
    ap.add_argument("--query-rows", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    res = run(a.committed, query_rows=a.query_rows, reps=a.reps)
    return finish("planning", res, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
