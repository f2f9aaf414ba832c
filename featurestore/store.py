"""The store: one directory or object prefix holding the image index and every feature set."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from featurestore import __version__, layout
from featurestore.errors import FeatureSetNotFound, RadstoreError
from featurestore.featureset import FeatureSet, FeatureSetSpec
from featurestore.storage import Location


class Store:
    """Open with :meth:`Store.open` (``create=True`` makes a new one)."""

    def __init__(self, loc: Location, meta: dict[str, Any]):
        self.loc = loc
        self.meta = meta

    @property
    def url(self) -> str:
        """The URL the store was opened with."""
        return self.loc.url

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @classmethod
    def open(cls, url: str, *, create: bool = False, storage_options: dict[str, Any] | None = None) -> Store:
        """Open the store at ``url`` (a directory or fsspec URL); ``create=True`` starts one where there is
        nothing. Raises RadstoreError for a missing store, a foreign or newer format, or a non-empty
        local directory that is not a store."""
        loc = Location(url, storage_options)
        if not loc.exists(layout.STORE_JSON):
            if not create:
                raise RadstoreError(
                    f"no radstore store at {url} (no {layout.STORE_JSON}). Create one with "
                    "`radstore ingest --store ...` or Store.open(url, create=True)."
                )
            if loc.is_local and loc.fs.exists(loc.root):
                others = [p for p in loc.fs.ls(loc.root, detail=False) if p.rstrip("/").rsplit("/", 1)[-1] != layout.TMP_DIR]
                if others and not loc.exists(layout.STORE_JSON):
                    raise RadstoreError(f"{url} exists, is not empty and is not a radstore store; choose an empty or new directory")
            meta = {
                "format": layout.FORMAT_NAME,
                "format_version": layout.FORMAT_VERSION,
                "created_at": datetime.now(UTC).isoformat(),
                "created_by": f"radstore {__version__}",
            }
            if loc.create_exclusive(loc.json_bytes(meta), layout.STORE_JSON):  # a concurrent creator's may win
                return cls(loc, meta)
        meta = loc.read_json(layout.STORE_JSON)
        if meta.get("format") != layout.FORMAT_NAME:
            raise RadstoreError(f"{url}/{layout.STORE_JSON} is not a radstore store record (format={meta.get('format')!r})")
        layout.check_format_version(meta.get("format_version"), f"store {url}")
        if create:
            loc.sweep_partials()  # temporary files of writers that died
        return cls(loc, meta)

    # -- images -----------------------------------------------------------------------------
    def images(self) -> pa.Table:
        """The image index: one row per image_id (the first ingested wins on a race)."""
        t = self.loc.read_parquet(self.loc.list(layout.IMAGES_DIR, suffix=".parquet"), schema=layout.IMAGES_SCHEMA)
        return layout.keep_first(t.sort_by([("ingested_at", "ascending")]))

    def append_images(self, table: pa.Table) -> str | None:
        """Add rows to the image index as one new part; returns its path, or None for an empty table."""
        if table.num_rows == 0:
            return None
        return self.loc.write_parquet(
            table.select(layout.IMAGES_SCHEMA.names).cast(layout.IMAGES_SCHEMA),
            layout.IMAGES_DIR,
            layout.part_name(),
            dictionary_columns=layout.IMAGES_DICTIONARY_COLUMNS,
        )

    def append_ingest_errors(self, table: pa.Table) -> str | None:
        """Record rows that ingest rejected, as one new part; returns its path, or None for an empty table."""
        if table.num_rows == 0:
            return None
        return self.loc.write_parquet(table.cast(layout.INGEST_ERRORS_SCHEMA), layout.INGEST_ERRORS_DIR, layout.part_name())

    def ingest_errors(self) -> pa.Table:
        """Every row ingest rejected, across all ingests (empty table of the schema when none)."""
        return self.loc.read_parquet(self.loc.list(layout.INGEST_ERRORS_DIR, suffix=".parquet"), schema=layout.INGEST_ERRORS_SCHEMA)

    # -- feature sets -----------------------------------------------------------------------
    def feature_set_ids(self) -> list[str]:
        """Ids of the feature sets whose ``feature_set.json`` exists (created, not half-written)."""
        out = []
        for p in self.loc.list(layout.FEATURES_DIR):
            fid = p.rstrip("/").rsplit("/", 1)[-1]
            if self.loc.exists(layout.FEATURES_DIR, fid, layout.FEATURE_SET_JSON):
                out.append(fid)
        return out

    def feature_sets(self) -> list[FeatureSet]:
        """Every feature set of the store, opened."""
        return [self.feature_set(f) for f in self.feature_set_ids()]

    def feature_set(self, feature_set_id: str) -> FeatureSet:
        """Open one feature set, by its id or an alias of it (``aliases/``); raises FeatureSetNotFound
        listing the known ids."""
        loc = self.loc.child(layout.FEATURES_DIR, feature_set_id)
        if not loc.exists(layout.FEATURE_SET_JSON):
            target = self._alias_target(feature_set_id)
            if target is not None:
                return FeatureSet.open(self.loc.child(layout.FEATURES_DIR, target))
            known = ", ".join(self.feature_set_ids()) or "none"
            raise FeatureSetNotFound(f"no feature set {feature_set_id!r} in {self.url} (known: {known})")
        return FeatureSet.open(loc)

    def create_feature_set(self, spec: FeatureSetSpec, *, legacy_fingerprint: Callable[[], str | None] | None = None) -> FeatureSet:
        """Create the feature set for ``spec``, or open it if the same identity exists already.

        ``legacy_fingerprint`` returns the weights fingerprint the same weights had under the
        scheme before ``spec``'s (:meth:`featurestore.encoders.Encoder.legacy_fingerprint`); it is
        called only when ``spec``'s id is neither a feature set nor an alias. If the store holds
        a feature set whose spec is ``spec`` with that fingerprint, it is the one returned, and
        ``aliases/<spec's id>.json`` records it, so that a store written before the scheme
        changed keeps its feature sets and their committed rows (layout docstring, "Weights
        fingerprints").
        """
        fid = spec.feature_set_id
        loc = self.loc.child(layout.FEATURES_DIR, fid)
        if loc.exists(layout.FEATURE_SET_JSON):
            return FeatureSet.open(loc)
        target = self._alias_target(fid)
        if target is not None:
            return FeatureSet.open(self.loc.child(layout.FEATURES_DIR, target))
        if legacy_fingerprint is not None:
            legacy = self._legacy_feature_set(spec, legacy_fingerprint())
            if legacy is not None:
                return legacy
        return FeatureSet.create_or_open(loc, spec)

    def _legacy_feature_set(self, spec: FeatureSetSpec, legacy: str | None) -> FeatureSet | None:
        """The feature set of ``spec`` under the fingerprint ``legacy``, aliased to ``spec``'s id; None
        when the store has none."""
        if not legacy or legacy == spec.weights_fingerprint:
            return None
        old = dataclasses.replace(spec, weights_fingerprint=legacy, fingerprint_scheme=None)
        loc = self.loc.child(layout.FEATURES_DIR, old.feature_set_id)
        if not loc.exists(layout.FEATURE_SET_JSON):
            return None
        fs = FeatureSet.open(loc)
        if fs.spec.identity() != old.identity():  # the ids agree but the specs do not: not ours
            return None
        record = {
            "feature_set_id": spec.feature_set_id,
            "alias_of": fs.id,
            "reason": "the weights fingerprint's scheme changed; the weights did not",
            "fingerprint_scheme": spec.fingerprint_scheme,
            "weights_fingerprint": spec.weights_fingerprint,
            "legacy_fingerprint": legacy,
            "created_at": datetime.now(UTC).isoformat(),
            "created_by": f"radstore {__version__}",
        }
        # Created once: a concurrent extraction's record names the same feature set.
        self.loc.create_exclusive(self.loc.json_bytes(record), layout.ALIASES_DIR, layout.alias_name(spec.feature_set_id))
        return fs

    def _alias_target(self, feature_set_id: str) -> str | None:
        """The feature set ``feature_set_id`` is an alias of, if its alias record exists and that feature
        set does."""
        if not self.loc.exists(layout.ALIASES_DIR, layout.alias_name(feature_set_id)):
            return None
        target = self.loc.read_json(layout.ALIASES_DIR, layout.alias_name(feature_set_id))["alias_of"]
        return target if self.loc.exists(layout.FEATURES_DIR, target, layout.FEATURE_SET_JSON) else None

    def aliases(self) -> dict[str, dict[str, Any]]:
        """Every alias record of the store, by the id it gives to an existing feature set."""
        out = {}
        for p in self.loc.list(layout.ALIASES_DIR, suffix=".json"):
            rec = self.loc.read_json(layout.ALIASES_DIR, p.rstrip("/").rsplit("/", 1)[-1])
            out[rec["feature_set_id"]] = rec
        return out

    # -- summary ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What ``radstore store info`` prints: image and ingest-error counts, each feature set's info (with
        its fingerprint scheme and the alias ids it is also found under) and the bytes the store takes."""
        images = self.images()
        fmt_counts: dict[str, int] = {}
        for f in images.column("format").to_pylist():
            fmt_counts[f] = fmt_counts.get(f, 0) + 1
        aliases: dict[str, list[dict[str, Any]]] = {}
        for rec in self.aliases().values():
            aliases.setdefault(rec["alias_of"], []).append(
                {k: rec.get(k) for k in ("feature_set_id", "fingerprint_scheme", "weights_fingerprint")}
            )
        feature_sets = [{**fs.info(), "aliases": aliases.get(fs.id, [])} for fs in self.feature_sets()]
        return {
            "url": self.url,
            "format_version": self.meta.get("format_version"),
            "created_at": self.meta.get("created_at"),
            "images": images.num_rows,
            "image_formats": fmt_counts,
            "ingest_errors": self.ingest_errors().num_rows,
            "feature_sets": feature_sets,
            "bytes": self.loc.du(),
        }
