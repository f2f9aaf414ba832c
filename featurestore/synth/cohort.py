"""The synthetic cohort: phantoms written as 16-bit DICOM and 8-bit PNG, masks, a manifest.

The DICOM pixel data is stored uncompressed or, with ``compression`` (``radstore synth
--compression``), in one of the lossless transfer syntaxes PACS exports carry, encoded by
pydicom's own encoders (:data:`TRANSFER_SYNTAXES`): the decoded pixels are the same either way.
JPEG Lossless (Process 14) is not offered: pydicom decodes it but has no encoder for it.

Deterministic: image ``i`` of seed ``s`` depends only on (s, i) and its patient's (s, p), so
the same seed gives the same bytes, and a larger ``n`` extends a smaller cohort (the first
``n`` images are identical) -- which is what a backfill test needs.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from featurestore.manifest import MANIFEST_SCHEMA
from featurestore.synth.phantom import PatientAnatomy, render, sample_patient

__all__ = ["TRANSFER_SYNTAXES", "SynthConfig", "synthesize", "write_dicom"]

#: ``compression`` -> the lossless transfer syntax pydicom encodes it with (RLE: pydicom's own
#: encoder; JPEG-LS: pyjpegls (CharLS); JPEG 2000: pylibjpeg-openjpeg, reversible wavelet).
TRANSFER_SYNTAXES = {
    "rle": "1.2.840.10008.1.2.5",  # RLE Lossless
    "jpeg-ls": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
}


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator; defaults give a small, varied cohort."""

    n: int = 24
    seed: int = 0
    min_side: int = 512
    max_side: int = 1024
    png_fraction: float = 0.25
    monochrome1_fraction: float = 0.2
    pneumothorax_prevalence: float = 0.2
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train/val/test, by patient
    workers: int = 0  # 0: one per core
    compression: str = "none"  # how DICOM pixel data is stored: one of COMPRESSIONS

    COMPRESSIONS: ClassVar[tuple[str, ...]] = ("none", *TRANSFER_SYNTAXES)

    def __post_init__(self) -> None:
        if self.compression not in self.COMPRESSIONS:
            raise ValueError(f"compression must be one of {self.COMPRESSIONS}, got {self.compression!r}")


def _rng(*key: int | str) -> np.random.Generator:
    ints = [int(hashlib.sha256(str(k).encode()).hexdigest()[:8], 16) if isinstance(k, str) else int(k) for k in key]
    return np.random.default_rng(np.random.SeedSequence(ints))


def _patients(cfg: SynthConfig) -> list[int]:
    """Patient index of each image: 1-3 films a patient, independent of ``n``."""
    rng = _rng(cfg.seed, "patients")
    out: list[int] = []
    p = 0
    while len(out) < cfg.n:
        out.extend([p] * int(rng.choice([1, 1, 2, 3])))
        p += 1
    return out[: cfg.n]


def _split_of(cfg: SynthConfig, patient: int) -> str:
    u = _rng(cfg.seed, "split", patient).random()
    tr, va, _ = cfg.split
    return "train" if u < tr else ("val" if u < tr + va else "test")


def _uid(seed: int, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[f"radstore-synth-{seed}", *map(str, parts)])


def write_dicom(
    path: Path,
    intensity: np.ndarray,
    *,
    bits_stored: int,
    photometric: str,
    slope: float,
    intercept: float,
    patient_id: str,
    image_id: str,
    seed: int,
    pixel_spacing: float,
    compression: str = "none",
) -> None:
    """Store ``intensity`` (0..1, bright = dense) as a DX image with a window covering it, its pixel
    data uncompressed or losslessly compressed (``compression``: a key of :data:`TRANSFER_SYNTAXES`)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    top = 2**bits_stored - 1
    lo, hi = int(0.02 * top), int(0.98 * top)  # headroom as detectors leave it
    v = intensity if photometric == "MONOCHROME2" else 1.0 - intensity
    stored = np.round(lo + v * (hi - lo)).astype(np.uint16)
    m_lo, m_hi = lo * slope + intercept, hi * slope + intercept

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    meta.MediaStorageSOPInstanceUID = _uid(seed, image_id, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(seed, image_id, "study")
    ds.SeriesInstanceUID = _uid(seed, image_id, "series")
    ds.PatientID = patient_id
    ds.PatientName = f"SYNTH^{patient_id}"
    ds.StudyDate = "20250101"
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "radstore synthetic cohort"
    ds.ImageComments = f"synthetic image {image_id}; not a real patient"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = intensity.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [round(pixel_spacing, 4), round(pixel_spacing, 4)]
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "US"
    ds.WindowCenter = round((m_lo + m_hi) / 2, 3)
    ds.WindowWidth = round(m_hi - m_lo, 3)
    ds.PixelData = stored.tobytes()
    if compression != "none":
        # Lossless, so the image keeps its SOP Instance UID (and the cohort stays deterministic).
        ds.compress(TRANSFER_SYNTAXES[compression], stored, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def _mask_png(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, optimize=False)


def _one(args: tuple[SynthConfig, int, int, str, Path]) -> dict:
    cfg, i, patient, split, root = args
    anatomy: PatientAnatomy = sample_patient(_rng(cfg.seed, "patient", patient))
    rng = _rng(cfg.seed, "image", i)
    h = int(rng.integers(cfg.min_side, cfg.max_side + 1))
    aspect = rng.uniform(0.82, 1.15)
    w = int(np.clip(round(h * aspect), cfg.min_side, max(cfg.max_side, cfg.min_side)))
    has_ptx = bool(rng.random() < cfg.pneumothorax_prevalence)
    ph = render(anatomy, rng, h, w, pneumothorax=has_ptx)
    image_id = f"synth-{cfg.seed}-{i:06d}"
    patient_id = f"P{cfg.seed}-{patient:05d}"
    use_png = rng.random() < cfg.png_fraction
    if use_png:
        rel = f"images/{image_id}.png"
        Image.fromarray(np.round(ph.image * 255).astype(np.uint8)).save(root / rel, optimize=False)
        fmt = "png"
    else:
        rel = f"images/{image_id}.dcm"
        write_dicom(
            root / rel,
            ph.image,
            bits_stored=int(rng.choice([12, 16])),
            photometric="MONOCHROME1" if rng.random() < cfg.monochrome1_fraction else "MONOCHROME2",
            slope=float(rng.choice([1.0, 0.5, 2.0])),
            intercept=float(rng.choice([0.0, -1024.0])),
            patient_id=patient_id,
            image_id=image_id,
            seed=cfg.seed,
            pixel_spacing=430.0 / max(h, w),
            compression=cfg.compression,
        )
        fmt = "dicom"
    masks = {}
    for name, m in (("heart", ph.heart_mask), ("lung", ph.lung_mask), ("pneumothorax", ph.pneumothorax_mask)):
        masks[name] = f"masks/{image_id}_{name}.png"
        _mask_png(m, root / masks[name])
    return {
        "image_id": image_id,
        "patient_id": patient_id,
        "path": rel,
        "format": fmt,
        "split": split,
        "pneumothorax": ph.pneumothorax,
        "cardiomegaly": bool(ph.ctr > 0.5),
        "ctr": float(ph.ctr),
        "heart_mask": masks["heart"],
        "lung_mask": masks["lung"],
        "pneumothorax_mask": masks["pneumothorax"],
    }


def synthesize(out: str | os.PathLike, cfg: SynthConfig = SynthConfig(), progress: bool = True) -> Path:
    """Write the cohort under ``out`` and return the manifest's path."""
    from tqdm import tqdm

    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    patients = _patients(cfg)
    jobs = [(cfg, i, p, _split_of(cfg, p), root) for i, p in enumerate(patients)]
    workers = cfg.workers or min(len(jobs), os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="synth", unit="img", disable=not progress)
    rows = []
    if workers <= 1:
        for j in jobs:
            rows.append(_one(j))
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as ex:
            for r in ex.map(_one, jobs, chunksize=2):
                rows.append(r)
                bar.update()
    bar.close()
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    manifest = root / "manifest.parquet"
    pq.write_table(table, manifest)
    return manifest
