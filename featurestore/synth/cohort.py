"""The synthetic cohort: phantoms written as 16-bit DICOM and 8-bit PNG, masks, a manifest.

The DICOM pixel data is stored uncompressed or, with ``compression`` (``radstore synth
--compression``), in one of the lossless transfer syntaxes PACS exports carry, encoded by
pydicom's own encoders (:data:`TRANSFER_SYNTAXES`): the decoded pixels are the same either way.
JPEG Lossless (Process 14) is not offered: pydicom decodes it but has no encoder for it.

Deterministic: image ``i`` of seed ``s`` depends only on (s, i) and its patient's (s, p), so
the same seed gives the same bytes, and a larger ``n`` extends a smaller cohort (the first
``n`` images are identical) -- which is what a backfill test needs.

With ``near_duplicates`` = k, k extra images follow the ``n`` regular ones: each re-renders a
distinct train image (same anatomy, size, labels, format and DICOM parameters) with a little
Gaussian noise, under a new image id, a patient of its own, in the test split. They are the
leakage a patient-level split cannot see, planted so that a leakage audit can be checked against
a known answer, which is written beside the manifest (:data:`NEAR_DUPLICATES_FILE`, read back by
:func:`read_near_duplicates`). The regular images do not change, so the cohort stays a prefix
of the same seed's cohort without them.

Every image has acquisition and patient attributes for subgroup analysis: ViewPosition (PA or
AP; ``ap_fraction``) and Manufacturer (one of ``manufacturers``, uniformly) per image,
PatientSex (M/F) and PatientAge (years, ~N(58, 18) within 18..95) per patient. They are DICOM
tags of a DICOM image and the manifest's ``view_position``, ``manufacturer``, ``patient_sex``
and ``patient_age`` of a PNG (null there for a DICOM image: its header is where ingest reads
them). They come from generators of their own, so the pixels are what they were before the
attributes existed. The phantom is drawn the same in either view: the view is a label only.

``subgroup_effect`` (``"manufacturer=VendorC"``, ``"view_position=AP"`` or ``"patient_sex=F"``)
plants a known subgroup effect: that subgroup's findings are drawn with their contrast scaled
by ``1 - subgroup_effect_strength`` (:func:`featurestore.synth.phantom.render`'s
``lesion_contrast``: fainter heart, fainter pneumothorax), so a classifier's AUROC is lower
there. The answer is written beside the manifest (:data:`SUBGROUP_EFFECT_FILE`, read back by
:func:`read_subgroup_effect`), and removed when a cohort is rewritten without an effect.
"""

from __future__ import annotations

import hashlib
import json
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

__all__ = [
    "NEAR_DUPLICATES_FILE",
    "SUBGROUP_EFFECT_FILE",
    "TRANSFER_SYNTAXES",
    "SynthConfig",
    "read_near_duplicates",
    "read_subgroup_effect",
    "synthesize",
    "write_dicom",
]

#: ``compression`` -> the lossless transfer syntax pydicom encodes it with (RLE: pydicom's own
#: encoder; JPEG-LS: pyjpegls (CharLS); JPEG 2000: pylibjpeg-openjpeg, reversible wavelet).
TRANSFER_SYNTAXES = {
    "rle": "1.2.840.10008.1.2.5",  # RLE Lossless
    "jpeg-ls": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
}

#: The planted near-duplicates' ground truth, beside the manifest: one row per duplicate
#: (``image_id``, ``duplicate_of``, ``patient_id``, ``source_patient_id``).
NEAR_DUPLICATES_FILE = "near_duplicates.parquet"
NEAR_DUPLICATES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("duplicate_of", pa.string()),
        ("patient_id", pa.string()),
        ("source_patient_id", pa.string()),
    ]
)

#: The planted subgroup effect's ground truth, beside the manifest: ``attribute``, ``value``,
#: ``strength``, ``lesion_contrast`` and the ``image_ids`` drawn with it.
SUBGROUP_EFFECT_FILE = "subgroup_effect.json"
#: The values of ViewPosition and PatientSex the cohort draws from.
VIEWS = ("PA", "AP")
SEXES = ("M", "F")


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
    near_duplicates: int = 0  # extra test images, each a noisy copy of a distinct train image
    near_duplicate_noise: float = 0.01  # std of the Gaussian noise on the duplicate's [0, 1] image
    manufacturers: tuple[str, ...] = ("VendorA", "VendorB", "VendorC")  # drawn uniformly per image
    ap_fraction: float = 0.3  # images taken AP (the others PA)
    subgroup_effect: str | None = None  # "attribute=value": that subgroup's findings are fainter
    subgroup_effect_strength: float = 0.6  # how much fainter: contrast x (1 - strength)

    COMPRESSIONS: ClassVar[tuple[str, ...]] = ("none", *TRANSFER_SYNTAXES)

    def __post_init__(self) -> None:
        if self.compression not in self.COMPRESSIONS:
            raise ValueError(f"compression must be one of {self.COMPRESSIONS}, got {self.compression!r}")
        if self.near_duplicates < 0:
            raise ValueError(f"near_duplicates must be >= 0, got {self.near_duplicates}")
        if not self.near_duplicate_noise >= 0:
            raise ValueError(f"near_duplicate_noise must be >= 0, got {self.near_duplicate_noise}")
        if not self.manufacturers or any(not str(m).strip() for m in self.manufacturers):
            raise ValueError(f"manufacturers must be non-empty names, got {self.manufacturers!r}")
        if not 0.0 <= self.ap_fraction <= 1.0:
            raise ValueError(f"ap_fraction must be in [0, 1], got {self.ap_fraction}")
        if not 0.0 <= self.subgroup_effect_strength <= 1.0:
            raise ValueError(f"subgroup_effect_strength must be in [0, 1], got {self.subgroup_effect_strength}")
        self.planted_subgroup()  # raises for an effect that names no subgroup

    def planted_subgroup(self) -> tuple[str, str] | None:
        """(attribute, value) of :attr:`subgroup_effect`, or None; raises ValueError when it is
        not ``attribute=value`` with an attribute and a value the cohort has."""
        if self.subgroup_effect is None:
            return None
        attribute, sep, value = self.subgroup_effect.partition("=")
        attribute, value = attribute.strip(), value.strip()
        values = {"manufacturer": tuple(self.manufacturers), "view_position": VIEWS, "patient_sex": SEXES}
        if not sep or attribute not in values:
            raise ValueError(
                f"subgroup_effect must be ATTRIBUTE=VALUE with ATTRIBUTE one of {', '.join(values)}, got {self.subgroup_effect!r}"
            )
        if value not in values[attribute]:
            raise ValueError(f"subgroup_effect: {attribute} takes {', '.join(values[attribute])}, got {value!r}")
        return attribute, value


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


@dataclass(frozen=True)
class _Attributes:
    """An image's acquisition and patient attributes (module docstring)."""

    view_position: str
    manufacturer: str
    patient_sex: str
    patient_age: int  # years

    def as_dict(self) -> dict[str, str | int]:
        return {
            "view_position": self.view_position,
            "manufacturer": self.manufacturer,
            "patient_sex": self.patient_sex,
            "patient_age": self.patient_age,
        }


def _attributes(cfg: SynthConfig, i: int, patient: int) -> _Attributes:
    """Image ``i``'s attributes, from generators of their own (the pixels' draws are untouched):
    sex and age depend on the patient only, view and manufacturer on the image."""
    prng = _rng(cfg.seed, "patient-attributes", patient)
    sex = SEXES[int(prng.integers(0, 2))]
    age = int(np.clip(round(prng.normal(58.0, 18.0)), 18, 95))
    irng = _rng(cfg.seed, "image-attributes", i)
    view = "AP" if irng.random() < cfg.ap_fraction else "PA"
    manufacturer = str(cfg.manufacturers[int(irng.integers(0, len(cfg.manufacturers)))])
    return _Attributes(view, manufacturer, sex, age)


def _lesion_contrast(cfg: SynthConfig, attrs: _Attributes) -> float:
    """1, or ``1 - subgroup_effect_strength`` for an image of the planted subgroup."""
    planted = cfg.planted_subgroup()
    if planted is None or getattr(attrs, planted[0]) != planted[1]:
        return 1.0
    return 1.0 - cfg.subgroup_effect_strength


def _image_id(seed: int, i: int) -> str:
    return f"synth-{seed}-{i:06d}"


def _patient_id(seed: int, patient: int) -> str:
    return f"P{seed}-{patient:05d}"


@dataclass(frozen=True)
class _Duplicate:
    """Near-duplicate ``j``: the ids a re-rendered train image is written under (its job puts it
    in the test split), and the index that seeds its noise."""

    j: int
    image_id: str
    patient_id: str


def _near_duplicate_sources(cfg: SynthConfig, splits: list[str]) -> list[int]:
    """The regular images the duplicates copy: ``near_duplicates`` distinct train images, chosen
    by a generator of their own so the regular images' randomness is untouched."""
    k = cfg.near_duplicates
    if k == 0:
        return []
    train = [i for i, s in enumerate(splits) if s == "train"]
    if len(train) < k:
        raise ValueError(f"near_duplicates={k} needs at least {k} train images; the cohort (n={cfg.n}) has {len(train)}")
    return sorted(int(i) for i in _rng(cfg.seed, "near-duplicates").choice(train, size=k, replace=False))


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
    view_position: str = "PA",
    manufacturer: str = "radstore synthetic cohort",
    patient_sex: str | None = None,
    patient_age: int | None = None,
) -> None:
    """Store ``intensity`` (0..1, bright = dense) as a DX image with a window covering it, its pixel
    data uncompressed or losslessly compressed (``compression``: a key of :data:`TRANSFER_SYNTAXES`),
    with its view, manufacturer, and the patient's sex and age (years, as a DICOM Age String)."""
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
    if patient_sex is not None:
        ds.PatientSex = patient_sex
    if patient_age is not None:
        ds.PatientAge = f"{int(patient_age):03d}Y"
    ds.ViewPosition = view_position
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = manufacturer
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


def _one(args: tuple[SynthConfig, int, int, str, Path, _Duplicate | None]) -> dict:
    """Render image ``i`` and write it, its masks, and return its manifest row; with ``dup``,
    the same rendering (same draws, hence same size, labels, format and DICOM parameters) is
    written under the duplicate's ids, its pixels perturbed by noise from a separate generator."""
    cfg, i, patient, split, root, dup = args
    anatomy: PatientAnatomy = sample_patient(_rng(cfg.seed, "patient", patient))
    rng = _rng(cfg.seed, "image", i)
    h = int(rng.integers(cfg.min_side, cfg.max_side + 1))
    aspect = rng.uniform(0.82, 1.15)
    w = int(np.clip(round(h * aspect), cfg.min_side, max(cfg.max_side, cfg.min_side)))
    has_ptx = bool(rng.random() < cfg.pneumothorax_prevalence)
    attrs = _attributes(cfg, i, patient)
    ph = render(anatomy, rng, h, w, pneumothorax=has_ptx, lesion_contrast=_lesion_contrast(cfg, attrs))
    image = ph.image
    if dup is None:
        image_id, patient_id = _image_id(cfg.seed, i), _patient_id(cfg.seed, patient)
    else:
        image_id, patient_id = dup.image_id, dup.patient_id
        noise = _rng(cfg.seed, "near-duplicate-noise", dup.j).normal(0.0, cfg.near_duplicate_noise, image.shape)
        image = np.clip(image + noise, 0.0, 1.0)
    use_png = rng.random() < cfg.png_fraction
    if use_png:
        rel = f"images/{image_id}.png"
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(root / rel, optimize=False)
        fmt = "png"
    else:
        rel = f"images/{image_id}.dcm"
        write_dicom(
            root / rel,
            image,
            bits_stored=int(rng.choice([12, 16])),
            photometric="MONOCHROME1" if rng.random() < cfg.monochrome1_fraction else "MONOCHROME2",
            slope=float(rng.choice([1.0, 0.5, 2.0])),
            intercept=float(rng.choice([0.0, -1024.0])),
            patient_id=patient_id,
            image_id=image_id,
            seed=cfg.seed,
            pixel_spacing=430.0 / max(h, w),
            compression=cfg.compression,
            **attrs.as_dict(),
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
        # A PNG has no header: the manifest carries its attributes (a DICOM's are its tags).
        **(attrs.as_dict() if use_png else {}),
    }


def synthesize(out: str | os.PathLike, cfg: SynthConfig = SynthConfig(), progress: bool = True) -> Path:
    """Write the cohort under ``out`` and return the manifest's path; with ``near_duplicates``
    or ``subgroup_effect``, also their ground truth (:data:`NEAR_DUPLICATES_FILE`,
    :data:`SUBGROUP_EFFECT_FILE`), each removed otherwise so that a rewritten cohort never keeps
    a stale answer. Raises ValueError when the cohort has fewer train images than
    ``near_duplicates``."""
    from tqdm import tqdm

    root = Path(out)
    patients = _patients(cfg)
    splits = [_split_of(cfg, p) for p in patients]
    sources = _near_duplicate_sources(cfg, splits)  # before writing anything: it may raise
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, i, p, s, root, None) for i, (p, s) in enumerate(zip(patients, splits))]
    dups = [_Duplicate(j, f"synth-{cfg.seed}-dup-{j:04d}", f"P{cfg.seed}-dup-{j:04d}") for j in range(len(sources))]
    jobs += [(cfg, i, patients[i], "test", root, d) for i, d in zip(sources, dups)]
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
    truth = root / NEAR_DUPLICATES_FILE
    if dups:
        truth_rows = [
            {
                "image_id": d.image_id,
                "duplicate_of": _image_id(cfg.seed, i),
                "patient_id": d.patient_id,
                "source_patient_id": _patient_id(cfg.seed, patients[i]),
            }
            for i, d in zip(sources, dups)
        ]
        pq.write_table(pa.Table.from_pylist(truth_rows, schema=NEAR_DUPLICATES_SCHEMA), truth)
    else:
        truth.unlink(missing_ok=True)
    _write_subgroup_effect(root, cfg, [(r["image_id"], j[1], j[2]) for r, j in zip(rows, jobs)])
    return manifest


def _write_subgroup_effect(root: Path, cfg: SynthConfig, images: list[tuple[str, int, int]]) -> None:
    """:data:`SUBGROUP_EFFECT_FILE` for a planted effect ((image_id, image index, patient) of
    every image written); removed without one."""
    path = root / SUBGROUP_EFFECT_FILE
    planted = cfg.planted_subgroup()
    if planted is None:
        path.unlink(missing_ok=True)
        return
    attribute, value = planted
    ids = [iid for iid, i, p in images if getattr(_attributes(cfg, i, p), attribute) == value]
    record = {
        "attribute": attribute,
        "value": value,
        "strength": cfg.subgroup_effect_strength,
        "lesion_contrast": 1.0 - cfg.subgroup_effect_strength,
        "findings": ["cardiomegaly", "pneumothorax"],
        "image_ids": ids,
    }
    path.write_text(json.dumps(record, indent=1) + "\n")


def read_subgroup_effect(manifest_path: str | os.PathLike) -> dict | None:
    """The planted subgroup effect of the cohort whose manifest is ``manifest_path`` (the record
    :data:`SUBGROUP_EFFECT_FILE` holds), or None when none was planted."""
    path = Path(manifest_path).parent / SUBGROUP_EFFECT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_near_duplicates(manifest_path: str | os.PathLike) -> list[tuple[str, str]]:
    """The planted (duplicate image_id, source image_id) pairs of the cohort whose manifest is
    ``manifest_path``; [] when it has none (no :data:`NEAR_DUPLICATES_FILE` beside it)."""
    truth = Path(manifest_path).parent / NEAR_DUPLICATES_FILE
    if not truth.is_file():
        return []
    t = pq.read_table(truth, columns=["image_id", "duplicate_of"])
    return list(zip(t.column("image_id").to_pylist(), t.column("duplicate_of").to_pylist()))
