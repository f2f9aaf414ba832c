"""Embedding health: is a feature set's geometry sound before any head is trained on it?

A study can blame an encoder's erratic results on "representation collapse"; a feature store
holds exactly the data that measures it. For each feature set, read streaming from the store:

* the global embeddings' spectrum (:mod:`.spectrum`: RankMe, participation ratio, anisotropy,
  dead dimensions, norms), over every committed row;
* the patch grids' spatial health (:mod:`.patches`: per-image patch diversity and effective
  rank, the mean-norm map), over a seeded sample;
* similarity to the negative controls (:mod:`.similarity`: linear CKA with ``pixels`` and
  ``random-vit`` on the same images);
* a leakage audit (:mod:`.leakage`: test images nearly repeating a training image);
* drift between backfills (:mod:`.drift`: mean shift and MMD with a permutation p-value).

:mod:`.check` versions and writes them (``features/<id>/health/<health_id>/``); :mod:`.compute`
reads the store; :mod:`.config` holds the knobs and the warning limits.
"""

from typing import Any

from featurestore.health.config import HealthConfig

_CHECK = ("HEALTH_VERSION", "HealthResult", "check_health", "check_store", "latest_health", "load_health")


def __getattr__(name: str) -> Any:
    """The check's names, imported on first use: the CLI reads HealthConfig to build its options
    and must not import torch (the patch figures use it) to print ``--help``."""
    if name in _CHECK:
        from featurestore.health import check

        return getattr(check, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["HEALTH_VERSION", "HealthConfig", "HealthResult", "check_health", "check_store", "latest_health", "load_health"]
