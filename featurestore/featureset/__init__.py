"""A feature set: the patch grids (Zarr) and global embeddings (Parquet) of one encoder setup.

Writers buffer validated batches into whole shards and commit each shard as described in
:mod:`featurestore.layout`; readers only ever see committed rows. One module per job:

- :mod:`.spec`: what a feature set holds (FeatureSetSpec, WriteResult)
- :mod:`.reader`: FeatureSet, the object the rest of radstore holds
- :mod:`.committed`: which rows exist (cls parts, the committed index)
- :mod:`.grids`, :mod:`.direct`: reading grids (through zarr; plain shards directly)
- :mod:`.array`: the zarr array's creation and configuration
- :mod:`.writer`, :mod:`.staging`, :mod:`.checks`: writing shards and validating batches
"""

from featurestore.featureset.reader import FeatureSet
from featurestore.featureset.spec import CODECS, SUPPORTED_DTYPES, FeatureSetSpec, WriteResult
from featurestore.featureset.writer import FeatureSetWriter

__all__ = ["CODECS", "SUPPORTED_DTYPES", "FeatureSet", "FeatureSetSpec", "FeatureSetWriter", "WriteResult"]
