"""The byte format of a shard object in the plain layout (see the package docstring).

One type, :class:`ShardIndex`, owns that format (after zarr's sharding codec, whose
``_ShardIndex`` does the same job): building the index of a shard radstore writes, its bytes,
parsing it back from a shard's tail, and the questions the direct read paths ask of it. Keeping
it in one place is what lets radstore write and read shards without zarr and still stay
byte-compatible with zarr's ``sharding_indexed`` codec.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np

_ENTRY_BYTES = 16  # one (offset, nbytes) pair of little-endian uint64
_CRC_BYTES = 4


@dataclass(frozen=True, eq=False)
class ShardIndex:
    """The sharding index of one shard: ``[S, 2]`` little-endian uint64 (offset, nbytes).

    ``image_bytes`` is the size of one stored grid: in the plain layout every image a shard
    holds takes exactly that many bytes, so it tells a held image from an empty or foreign
    entry.
    """

    offsets_and_lengths: np.ndarray
    image_bytes: int

    #: Entry of an image the shard does not hold (zarr v3 sharding: offset and nbytes both).
    EMPTY = 2**64 - 1

    # -- building and bytes ------------------------------------------------------------------
    @classmethod
    def dense(cls, n: int, shard_images: int, image_bytes: int) -> ShardIndex:
        """Index of a shard whose first ``n`` images are stored in order from byte 0.

        That is the only shape radstore writes: the grids concatenated, the rest empty.
        """
        idx = np.full((shard_images, 2), cls.EMPTY, dtype="<u8")
        idx[:n, 0] = np.arange(n, dtype=np.uint64) * np.uint64(image_bytes)
        idx[:n, 1] = image_bytes
        idx.flags.writeable = False  # frozen, like an index parsed from bytes
        return cls(idx, int(image_bytes))

    @staticmethod
    def nbytes(shard_images: int) -> int:
        """Bytes of the index at the end of a shard (entries plus CRC32C), for a ranged read."""
        return _ENTRY_BYTES * shard_images + _CRC_BYTES

    def to_bytes(self) -> bytes:
        """The entries followed by their CRC32C, as zarr's ``[bytes, crc32c]`` index codecs write it."""
        raw = np.ascontiguousarray(self.offsets_and_lengths, dtype="<u8").tobytes()
        return raw + google_crc32c.value(raw).to_bytes(_CRC_BYTES, "little")

    @classmethod
    def parse(cls, tail: bytes, shard_images: int, image_bytes: int) -> ShardIndex:
        """The index from a shard's last :meth:`nbytes` bytes.

        Raises ValueError when the checksum does not match: the object is not a shard of
        this layout (or is torn), and the caller must not trust any offset in it.
        """
        n = _ENTRY_BYTES * shard_images
        raw, crc = tail[:n], tail[n:]
        if len(raw) != n or int.from_bytes(crc, "little") != google_crc32c.value(raw):
            raise ValueError("shard index checksum mismatch")
        return cls(np.frombuffer(raw, dtype="<u8").reshape(shard_images, 2), int(image_bytes))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardIndex):
            return NotImplemented
        return self.image_bytes == other.image_bytes and np.array_equal(self.offsets_and_lengths, other.offsets_and_lengths)

    __hash__ = None  # type: ignore[assignment]  # holds a mutable-typed array

    # -- questions of the read paths ---------------------------------------------------------
    @property
    def shard_images(self) -> int:
        """How many image slots the shard has (S)."""
        return int(self.offsets_and_lengths.shape[0])

    @property
    def present(self) -> np.ndarray:
        """``[S]`` bool: slots holding one whole grid (an empty or differently sized entry is not
        readable by a plain byte copy)."""
        return self.offsets_and_lengths[:, 1] == np.uint64(self.image_bytes)

    def offsets(self, slots: np.ndarray) -> np.ndarray | None:
        """Byte offsets (int64) of ``slots`` in the shard object, or None when any is not held."""
        if not self.present[slots].all():
            return None
        return self.offsets_and_lengths[slots, 0].astype(np.int64)

    def dense_count(self) -> int:
        """``k`` when the shard is exactly :meth:`dense` of ``k`` images (its first ``k`` slots
        held, in order from byte 0, nothing else); 0 otherwise. Such a shard's data part is a
        plain ``[k, C, H, W]`` array, so it can be memory-mapped."""
        present = self.present
        k = int(present.sum())
        expected = np.arange(k, dtype=np.uint64) * np.uint64(self.image_bytes)
        if k == 0 or not present[:k].all() or not np.array_equal(self.offsets_and_lengths[:k, 0], expected):
            return 0
        return k

    # -- the layout this format belongs to ---------------------------------------------------
    @staticmethod
    def is_plain_layout(meta: Any, spec: Any) -> bool:
        """Whether a zarr array's metadata is the plain shard layout this index describes.

        Sharded, one image per chunk, no compressor, ``[bytes, crc32c]`` index at the end,
        little-endian on a little-endian host. Only then may radstore read and write the shard
        objects directly; any other configuration must go through zarr. ``spec`` is anything
        with ``grid``, ``shard_images`` and ``dtype`` (a FeatureSetSpec), so the format does
        not depend on the feature set module.
        """
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation

        codecs = tuple(getattr(meta, "codecs", ()))
        if sys.byteorder != "little" or len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return False
        sc = codecs[0]

        def little(c: Any) -> bool:
            return isinstance(c, BytesCodec) and (c.endian is None or c.endian.value == "little")

        try:
            native = np.dtype(meta.data_type.to_native_dtype())
            shard_shape = tuple(meta.chunk_grid.chunk_shape)
        except Exception:  # noqa: BLE001 - an unfamiliar metadata object: let zarr do the I/O
            return False
        return (
            tuple(sc.chunk_shape) == (1, *spec.grid)
            and shard_shape == (spec.shard_images, *spec.grid)
            and len(sc.codecs) == 1
            and little(sc.codecs[0])
            and len(sc.index_codecs) == 2
            and little(sc.index_codecs[0])
            and isinstance(sc.index_codecs[1], Crc32cCodec)
            and sc.index_location == ShardingCodecIndexLocation.end
            and native == np.dtype(spec.dtype)
            and native.byteorder in ("=", "<", "|")
        )
