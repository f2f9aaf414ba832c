"""Garbage of a store: temporary files of writers that died, and array rows no commit uses.

Nothing here ever touches committed data. Temporary files are removed (a writer also sweeps
its own feature set's when it starts); array rows are only reported, since the rows of a
shard stay reserved to the shard's claim whether or not it was ever committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from featurestore import layout
from featurestore.featureset import FeatureSet
from featurestore.store import Store


@dataclass(frozen=True)
class FeatureSetGarbage:
    """One feature set: the temporary files removed, and how its array's rows are used."""

    feature_set_id: str
    removed: list[tuple[str, int]]  # (path, bytes) of each temporary file removed
    array_rows: int
    committed_rows: int
    uncommitted_shards: list[int]  # shards inside the array that no cls part commits

    @property
    def unused_rows(self) -> int:
        """Array rows no committed image occupies (uncommitted shards and partly filled ones)."""
        return self.array_rows - self.committed_rows

    def line(self) -> str:
        """One line for ``radstore store gc``."""
        gone = sum(n for _, n in self.removed)
        shards = ", ".join(map(str, self.uncommitted_shards[:10])) + (" ..." if len(self.uncommitted_shards) > 10 else "")
        return (
            f"{self.feature_set_id}: removed {len(self.removed)} temporary file(s) ({gone:,} bytes); "
            f"array rows {self.array_rows:,}, committed {self.committed_rows:,}, unused {self.unused_rows:,}"
            + (f" ({len(self.uncommitted_shards)} claimed shard(s) never committed: {shards})" if self.uncommitted_shards else "")
        )


@dataclass(frozen=True)
class StoreGarbage:
    """The whole store: its own temporary files and each feature set's garbage."""

    removed: list[tuple[str, int]]
    feature_sets: list[FeatureSetGarbage] = field(default_factory=list)

    @property
    def removed_bytes(self) -> int:
        """Bytes of every temporary file removed, store-wide."""
        return sum(n for _, n in self.removed) + sum(n for f in self.feature_sets for _, n in f.removed)


def collect_feature_set(fs: FeatureSet, older_than_s: float | None = None) -> FeatureSetGarbage:
    """Remove ``fs``'s dead temporary files (a full walk, older versions' and zarr's included)
    and report its array rows. ``older_than_s``: age after which a temporary file of another
    machine counts as dead (storage.FOREIGN_PARTIAL_AGE_S when None)."""
    removed = fs.loc.walk_partials(older_than_s)
    rows = fs.array_rows()
    s = fs.spec.shard_images
    committed = fs.committed_rows()
    shards = {layout.shard_of_part(p) for p in fs.cls_parts()}
    return FeatureSetGarbage(
        feature_set_id=fs.id,
        removed=removed,
        array_rows=rows,
        committed_rows=len(set(committed.column("row").to_pylist())),
        uncommitted_shards=[k for k in range(rows // s) if k not in shards],
    )


def collect(store: Store, older_than_s: float | None = None) -> StoreGarbage:
    """:func:`collect_feature_set` for every feature set, plus the store's own temporary files."""
    feature_sets = [collect_feature_set(fs, older_than_s) for fs in store.feature_sets()]
    return StoreGarbage(removed=store.loc.walk_partials(older_than_s), feature_sets=feature_sets)  # the rest of the store
