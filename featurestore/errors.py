"""Errors that name the culprit and say what to do next."""

from __future__ import annotations


class RadstoreError(Exception):
    """Base class: every radstore failure a user can act on."""


class ManifestError(RadstoreError):
    """The manifest as a whole is unusable (missing file, missing column)."""


class ImageReadError(RadstoreError):
    """One image could not be read; carries the image id (if known), the path and the reason."""

    def __init__(self, path: str, reason: str, image_id: str | None = None):
        self.path = path
        self.reason = reason
        self.image_id = image_id
        who = f"image_id={image_id} " if image_id else ""
        super().__init__(f"{who}path={path}: {reason}")


class StoreVersionError(RadstoreError):
    """The store (or a feature set in it) was written by an unknown format version."""


class StoreCorruptionError(RadstoreError):
    """Committed metadata points at data that is missing or unreadable."""


class FeatureSetError(RadstoreError):
    """A batch does not fit its feature set (shape, dtype, NaN, duplicate id, unknown id)."""


class FeatureSetNotFound(RadstoreError, KeyError):
    """No feature set of that id in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class StoreFullError(RadstoreError, OSError):
    """The store's disk is full: names the store, the path and the bytes needed; never retried."""


class LabelError(RadstoreError):
    """A task's label column holds values outside the task's labels (featurestore.tasks): names the
    manifest, the column, the task, the image ids and what was expected."""
