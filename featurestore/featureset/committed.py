"""Which rows are committed: the cls parts and the committed index that caches them.

A row exists when, and only when, its cls part exists; listing the committed rows therefore
means reading every part's footer, which grows with the number of commits. The committed index
(``committed/upto-<n>-<uuid>.parquet``, layout docstring) caches the (image_id, row, shard) of
the parts it names, so a reader takes the newest index plus only the parts it does not name.
It is never the truth: an index naming a part that is no longer listed is ignored.
"""

from __future__ import annotations

import contextlib
import uuid

import pyarrow as pa

from featurestore import layout
from featurestore.storage import Location


def cls_parts(loc: Location) -> list[str]:
    """Paths of every committed cls part of the feature set at ``loc`` (one per committed shard)."""
    return loc.list(layout.CLS_DIR, suffix=".parquet")


def committed_rows(loc: Location, cls_schema: pa.Schema, *, update_index: bool, min_new_parts: int) -> pa.Table:
    """(image_id, row, shard) of every row of every cls part, in no particular order and with
    repeats: the committed index plus the parts it does not name.

    ``update_index`` writes a new index when at least ``min_new_parts`` parts had to be read one
    by one, so the next listing is cheap again; a store that cannot be written just stays slower.
    """
    names = layout.COMMITTED_SCHEMA.names
    by_name = {p.rsplit("/", 1)[-1]: p for p in cls_parts(loc)}
    index, covered = read_index(loc, set(by_name))
    rest = [p for n, p in by_name.items() if n not in covered]
    table = loc.read_parquet(rest, columns=names, schema=cls_schema)
    if index is not None:
        table = pa.concat_tables([index, table.cast(index.schema)])
    if update_index and len(rest) >= min_new_parts:
        with contextlib.suppress(OSError):  # a cache: a read-only store just stays slower
            write_index(loc, table, list(by_name))
    return table


def read_index(loc: Location, listed: set[str]) -> tuple[pa.Table | None, set[str]]:
    """The newest committed index whose parts are all still listed, and the part names it covers.

    An index that names a part no longer listed would resurrect deleted rows, so it is skipped.
    """
    found = loc.list(layout.COMMITTED_DIR, suffix=".parquet")
    for path in sorted(found, key=lambda p: (layout.committed_index_parts(p), p), reverse=True):
        try:
            t = loc.read_parquet_file(path)
        except (OSError, pa.ArrowException):
            continue  # removed by a newer planner meanwhile, or unreadable: read the parts
        covered = set((t.schema.metadata or {}).get(layout.COMMITTED_PARTS_KEY, b"").decode().split("\n")) - {""}
        if covered and covered <= listed:
            return t.select(layout.COMMITTED_SCHEMA.names).replace_schema_metadata(None), covered
    return None, set()


def write_index(loc: Location, table: pa.Table, part_names: list[str]) -> None:
    """Write a committed index of ``table`` naming ``part_names``, then drop the indexes it supersedes."""
    old = loc.list(layout.COMMITTED_DIR, suffix=".parquet")
    t = table.select(layout.COMMITTED_SCHEMA.names).cast(layout.COMMITTED_SCHEMA)
    t = t.replace_schema_metadata({layout.COMMITTED_PARTS_KEY: "\n".join(sorted(part_names)).encode()})
    name = layout.committed_index_name(len(part_names), uuid.uuid4().hex[:12])
    loc.write_parquet(t, layout.COMMITTED_DIR, name)
    for p in old:  # superseded (a concurrent planner's newer index is kept: it names more parts)
        if layout.committed_index_parts(p) <= len(part_names):
            with contextlib.suppress(OSError):
                loc.fs.rm(p)
