"""Real-size decode: where the time goes from a radiograph file to each encoder's model input.

Cohort: ``n`` phantoms (:mod:`featurestore.synth.phantom`) of 2,500-3,000 px, 12-bit data in
16-bit containers (MONOCHROME2, a window over the data), each written as four kinds: DICOM
uncompressed, DICOM JPEG 2000 lossless and DICOM JPEG-LS lossless (pydicom's own encoders, as
``radstore synth --compression`` writes them) and a 16-bit PNG of the same stored values (read
back by its 12 significant bits). One torch thread throughout (``torch.set_num_threads(1)``),
so every images/s figure is per core. Per kind, in ms per image:

- ``file read``: the file's bytes (``imageio.read_bytes``, page cache warm);
- ``decode``: pydicom's ``pixel_array`` / Pillow, bytes to the stored uint16 values;
- ``intensity``: the decoded values to [0, 1] float32 as the reader does it (DICOM: pydicom's
  modality LUT and VOI window, scaled over the window's output range; PNG: over 2**12 - 1),
  checked equal to ``read_image``'s pixels before timing;
- ``read_image``: the reader before the fast path, the three above in one call (rebuilt here
  from the library calls it made, since ``read_image`` itself now takes the fast path);
- ``preprocess <encoder>``: that encoder's default ``Preprocessing.__call__`` on
  those pixels (8-bit quantisation, resize and crop, normalisation), for rad-dino,
  the SigLIP encoder (chexagent) and biomedclip, built without loading their models.

``today <encoder>`` is ``read_image`` + ``preprocess <encoder>`` of the same round (images/s).
When the fast path exists (``featurestore.imageio.decode`` and ``Preprocessing.prepare`` /
``finish``), ``fast <encoder>`` times ``finish([prepare(decode(path))])`` per image, its
ratio to today is taken round by round (target: 5x for uncompressed DICOM, 2x for the
compressed kinds, PNG's deflate included), and the largest difference of its model input from
today's over the cohort is reported in 1/255 of the [0, 1] input (the normalised difference
times the channel's std; bound 1.5/255).

Run alone: ``.venv/bin/python -m benchmarks.decode [--n 4 --min-side 2500 --max-side 3000]``.
"""

from __future__ import annotations

import argparse
import gc
import io
import shutil
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Row, compare, finish, rate_row, scratch_dir, speedups, summary, with_ratio
from featurestore import imageio
from featurestore.encoders.preprocess import Preprocessing

STAGE = "7 real-size decode"
#: (kind, file name suffix, ``radstore synth --compression``; None: the 16-bit PNG)
KINDS = (
    ("DICOM uncompressed", "none.dcm", "none"),
    ("DICOM JPEG 2000 lossless", "j2k.dcm", "jpeg2000"),
    ("DICOM JPEG-LS lossless", "jls.dcm", "jpeg-ls"),
    ("PNG 16-bit", "png", None),
)
BITS = 12
# fast vs today in images/s per core: the targets are for DICOM; a PNG's time is its
# deflate (Pillow's zlib), which no reader changes, so its ratio is shown without a target.
TARGET: dict[str, float | None] = {"DICOM uncompressed": 5.0, "PNG 16-bit": None}
TARGET_COMPRESSED = 2.0
MAX_DIFF = 1.5  # |fast - today| of the model input, in 1/255 of the [0, 1] input


def default_preprocessing() -> dict[str, Preprocessing]:
    """Each registered model encoder's default preprocessing (what it uses when its weights folder
    does not say otherwise), built without loading a model."""
    from featurestore.encoders import ENCODERS
    from featurestore.encoders.dinov2 import RAD_DINO_PREPROCESSING
    from featurestore.encoders.openclip import preprocess_from_config
    from featurestore.encoders.siglip import XRAYSIGLIP_PREPROCESSING

    pre = {"rad-dino": RAD_DINO_PREPROCESSING, "chexagent": XRAYSIGLIP_PREPROCESSING, "biomedclip": preprocess_from_config({}, 224)}
    return {name: p for name, p in pre.items() if name in ENCODERS}


def _write_one(args: tuple[Path, int, int, int, int]) -> list[str]:
    """Render phantom ``i`` and write it as every kind (run in worker processes)."""
    from PIL import Image

    from featurestore.synth.cohort import write_dicom
    from featurestore.synth.phantom import render, sample_patient

    root, seed, i, min_side, max_side = args
    rng = np.random.default_rng([seed, i])
    h = int(rng.integers(min_side, max_side + 1))
    w = int(np.clip(round(h * rng.uniform(0.82, 1.15)), min_side, max_side))
    ph = render(sample_patient(rng), rng, h, w, pneumothorax=bool(rng.random() < 0.3))
    out = []
    for _, suffix, compression in KINDS:
        path = root / f"img{i:03d}.{suffix}"
        if compression is None:  # the uncompressed DICOM's stored values, as a 16-bit PNG
            import pydicom

            stored = pydicom.dcmread(root / f"img{i:03d}.none.dcm").pixel_array
            Image.fromarray(stored.astype(np.uint16)).save(path)
        else:
            write_dicom(path, ph.image, bits_stored=BITS, photometric="MONOCHROME2", slope=1.0, intercept=0.0, patient_id=f"P{i}",
                        image_id=f"bench-{i}", seed=seed, pixel_spacing=430.0 / max(h, w), compression=compression)  # fmt: skip
        out.append(str(path))
    return out


def write_cohort(root: Path, n: int, min_side: int, max_side: int, seed: int = 0, workers: int = 2) -> dict[str, list[str]]:
    """The benchmark's files under ``root``: kind -> ``n`` paths (the same ``n`` images in each kind)."""
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(root, seed, i, min_side, max_side) for i in range(n)]
    if workers > 1 and n > 1 and max_side >= 1024:  # small phantoms render faster than a pool starts
        with ProcessPoolExecutor(min(workers, n)) as ex:
            per_image = list(ex.map(_write_one, jobs))
    else:
        per_image = [_write_one(j) for j in jobs]
    return {kind: [paths[k] for paths in per_image] for k, (kind, _, _) in enumerate(KINDS)}


def _decode(data: bytes) -> tuple[np.ndarray, object]:
    """Stored values (and the DICOM dataset, None for PNG) from a file's bytes."""
    if imageio.sniff_format(data) == "dicom":
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data))
        return ds.pixel_array, ds
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im, dtype=np.uint16), None


def _intensity(arr: np.ndarray, ds, data: bytes) -> np.ndarray:
    """The reader's [0, 1] float32 image from decoded values, with the same library calls it makes."""
    if ds is None:
        bits, _ = imageio.significant_bits(arr, imageio.png_sbit(data))
        out = arr.astype(np.float32) / np.float32(2**bits - 1)
        return np.clip(out, 0.0, 1.0, out=out)
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits = int(ds.BitsStored)
    v = apply_voi_lut(apply_modality_lut(arr, ds), ds, index=0, prefer_lut=True)
    ext = apply_voi_lut(apply_modality_lut(np.array([0, 2**bits - 1]), ds).astype(np.float64), ds, index=0, prefer_lut=True)
    lo, hi = float(ext.min()), float(ext.max())
    out = (v.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    out = np.clip(out, 0.0, 1.0, out=out)
    return 1.0 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


def _old_reader(path: str) -> np.ndarray:
    """What ``read_image`` did before the fast path: read, decode, intensity per pixel."""
    data = imageio.read_bytes(path)
    arr, ds = _decode(data)
    return _intensity(arr, ds, data)


FastInput = Callable[[Preprocessing, str], torch.Tensor]


def fast_path() -> FastInput | None:
    """``(preprocessing, path) -> model input [3, S, S]`` by the fast path (``imageio.decode``, then
    ``Preprocessing.prepare`` and ``finish`` on the CPU), or None where it does not exist."""
    if not (hasattr(imageio, "decode") and hasattr(Preprocessing, "prepare") and hasattr(Preprocessing, "finish")):
        return None
    cpu = torch.device("cpu")
    return lambda pre, path: pre.finish([pre.prepare(imageio.decode(path))], cpu)[0]


def max_difference(pre: Preprocessing, fast: list[torch.Tensor], today: list[torch.Tensor]) -> float:
    """Largest |fast - today| over pairs of model inputs, in 1/255 of the [0, 1] input (the
    normalised difference times the channel's std)."""
    std = torch.tensor(pre.std).view(3, 1, 1)
    return max(float(((f.float() - t).abs() * std).max()) * 255.0 for f, t in zip(fast, today, strict=True))


def _ms_row(what: str, n: int, seconds: list[float], **kw) -> Row:
    med, lo, hi = summary([1e3 * s / n for s in seconds])
    return Row(STAGE, what, n, med, "ms/img", lo, hi, **kw)


def measure_kind(kind: str, paths: list[str], pre: dict[str, Preprocessing], reps: int,
                 fast: FastInput | None) -> tuple[dict[str, list[float]], dict[str, float]]:  # fmt: skip
    """Per-round seconds over ``paths`` of every step of one kind (see the module docstring), and
    per encoder the largest |fast - today| of the model input (empty without the fast path)."""
    data = [imageio.read_bytes(p) for p in paths]
    decoded = [_decode(d) for d in data]
    loaded = [imageio.read_image(p).pixels for p in paths]
    for (arr, ds), d, want in zip(decoded, data, loaded):
        got = _intensity(arr, ds, d)
        if got.shape != want.shape or float(np.abs(got - want).max()) > 1e-6:
            raise AssertionError(f"{kind}: the timed intensity step no longer gives read_image's pixels")
    if any(p.decode_options() != {"intensity": "window", "depth_rule": "significant", "levels": None} for p in pre.values()):
        raise AssertionError("an encoder's default preprocessing no longer decodes with read_image's defaults")
    cases = {
        "read": lambda: [imageio.read_bytes(p) for p in paths],
        "decode": lambda: [_decode(d) for d in data],
        "intensity": lambda: [_intensity(a, ds, d) for (a, ds), d in zip(decoded, data)],
        # Today's reader, rebuilt from the library calls it made (pydicom's default decoder, the
        # float64 display pipeline per pixel): read_image itself now takes the fast path.
        "read_image": lambda: [_old_reader(p) for p in paths],
    }
    for name, p in pre.items():
        cases[f"pre {name}"] = lambda p=p: [p(x) for x in loaded]
    inputs: dict[str, list[torch.Tensor]] = {}  # the fast path's model inputs of the latest round
    if fast is not None:
        for name, p in pre.items():
            cases[f"fast {name}"] = lambda name=name, p=p: inputs.__setitem__(name, [fast(p, path) for path in paths])
    t = compare(cases, reps)
    # Today's model input: read_image decodes every encoder's default as ``loaded`` did (checked above).
    return t, {name: max_difference(p, inputs[name], [p(x) for x in loaded]) for name, p in pre.items() if name in inputs}


def rows_of(kind: str, n: int, t: dict[str, list[float]], diffs: dict[str, float]) -> list[Row]:
    """The table's rows for one kind from its per-round seconds ``t`` and the fast path's
    largest model-input differences ``diffs`` (empty without the fast path)."""
    steps = (("read", "file read"), ("decode", "decode (pydicom pixel_array / Pillow)"),
             ("intensity", "intensity (modality + VOI to [0, 1])"), ("read_image", "read_image (today: read + decode + intensity)"))  # fmt: skip
    rows = [_ms_row(f"{kind}: {label}", n, t[key]) for key, label in steps]
    encoders = [k.removeprefix("pre ") for k in t if k.startswith("pre ")]
    rows += [_ms_row(f"{kind}: preprocess {e} (Preprocessing.__call__)", n, t[f"pre {e}"]) for e in encoders]
    target = TARGET.get(kind, TARGET_COMPRESSED)
    for e in encoders:
        today = [a + b for a, b in zip(t["read_image"], t[f"pre {e}"])]
        rows.append(rate_row(STAGE, f"{kind}: today {e} (read_image + preprocess)", n, today))
        if f"fast {e}" in t:
            sp = speedups(today, t[f"fast {e}"])
            rows.append(with_ratio(rate_row(STAGE, f"{kind}: fast {e} (decode + prepare + finish)", n, t[f"fast {e}"]), sp, "today",
                                   f">= {target:g}x" if target else "", sp[0] >= target if target else None))  # fmt: skip
            d = diffs[e]
            rows.append(Row(STAGE, f"{kind}: max |fast - today| {e}, model input in 1/255", n, d, "/255", d, d,
                            "today", d, d, d, f"<= {MAX_DIFF}/255", d <= MAX_DIFF))  # fmt: skip
    return rows


def breakdown(per_kind: dict[str, dict[str, list[float]]], n: int) -> str:
    """Where the time goes: median ms per image of each step, one line per kind."""
    keys = list(next(iter(per_kind.values())))
    head = ["kind", *keys]
    lines = [head]
    for kind, t in per_kind.items():
        lines.append([kind, *(f"{1e3 * statistics.median(t[k]) / n:.1f}" for k in keys)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    fmt = lambda line: "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))) + " |"  # noqa: E731
    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines[1:])])


def run(n: int = 4, min_side: int = 2500, max_side: int = 3000, reps: int = 3, workers: int = 2) -> dict:
    """Write the cohort to a scratch directory (removed afterwards), time every step of every kind
    in one torch thread, print where the time goes, and return the rows."""
    root = scratch_dir("decode")
    threads = torch.get_num_threads()
    rows: list[Row] = []
    fast = fast_path()
    details: dict = {"n": n, "sides": [min_side, max_side], "bits_stored": BITS, "fast_path": fast is not None, "seconds": {}}
    try:
        files = write_cohort(root, n, min_side, max_side, workers=workers)
        details["bytes_per_image"] = {k: sum(Path(p).stat().st_size for p in ps) / n for k, ps in files.items()}
        pre = default_preprocessing()
        torch.set_num_threads(1)
        for paths in files.values():  # first calls import their libraries (torchvision, codecs) untimed
            for p in pre.values():
                p(imageio.read_image(paths[0]).pixels)
                if fast is not None:
                    fast(p, paths[0])
        # Every object alive now (the libraries') out of the collector: compare's gc.collect before
        # each case then frees this stage's garbage without walking every module's objects.
        gc.collect()
        gc.freeze()
        for kind, paths in files.items():
            t, diffs = measure_kind(kind, paths, pre, reps, fast)
            details["seconds"][kind] = t
            details.setdefault("max_diff_255", {})[kind] = diffs
            rows += rows_of(kind, n, t, diffs)
        details["breakdown"] = breakdown(details["seconds"], n)
        print(f"where the time goes, ms per image on one thread (median of {reps} rounds, {n} images per kind):")
        print(details["breakdown"])
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
        shutil.rmtree(root, ignore_errors=True)
    return {"stage": STAGE, "reps": reps, "rows": rows, "details": details}


def main(argv: list[str] | None = None) -> int:
    """Run this stage alone from the command line; prints its table, writes its results file, exits 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="images per kind")
    ap.add_argument("--min-side", type=int, default=2500)
    ap.add_argument("--max-side", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    return finish("decode", run(a.n, a.min_side, a.max_side, reps=a.reps), a.out)


if __name__ == "__main__":
    raise SystemExit(main())
