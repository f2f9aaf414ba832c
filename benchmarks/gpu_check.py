"""GPU check: does ``radstore extract`` keep the GPU fed? Run it as ``bash benchmarks/gpu_check.sh``.

For each foundation encoder (RAD-DINO, CheXagent's SigLIP-L/16 at 512, BiomedCLIP), with
real-size randomly initialised weights (``--weights random``), over real-size synthetic DICOMs:

- **forward-only** images/s: the encoder's own forward (``Encoder.embed``, under the autocast
  extraction uses) on random input of its input size already on the device, in batches of the
  size extraction uses, warm-up excluded, timed between CUDA synchronisations;
- **extraction** images/s: ``radstore extract --profile`` in a fresh store (its own process, as a
  user runs it), the rate and the input-wait share read from its ``profile`` line;
- their **ratio**, extraction over forward, taken round by round; the target on CUDA is at least
  0.9 for every encoder (the decoding keeps up with the GPU). A miss exits 1.

Reduced mode (``--reduced``, and automatically when there is no CUDA): tiny random models
(``random:tiny``), a handful of small images, the CPU. It computes the same table and exits 0
whatever the ratios (a CPU is not what the target is about); the test suite runs it so that
the check cannot rot.

Prints one table and writes ``gpu-check[-reduced]`` JSON (every round) to ``$OUT`` when set, else
to ``benchmarks/results``. The cohort, the stores and the manifest live in a scratch directory
removed at the end; random models are saved under ``$RADSTORE_CACHE`` and reused by the next run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.common import machine, scratch_dir, summary, write_results

ENCODERS = ("rad-dino", "chexagent", "biomedclip")
TARGET = 0.9
#: What ``radstore extract --profile`` prints for each encoder.
PROFILE = re.compile(
    r"^profile (?P<encoder>\S+): (?P<done>\d+) images, (?P<rate>[0-9.]+) images/s; "
    r"input wait (?P<wait>[0-9.]+)%, forward (?P<forward>[0-9.]+)%, commit (?P<commit>[0-9.]+)%\s*$",
    re.M,
)


@dataclass(frozen=True)
class Mode:
    """The sizes of one kind of run; every field can be overridden from the command line."""

    reduced: bool
    weights: str  # --weights for every encoder
    device: str
    # Manifest rows, cycling over the distinct DICOMs under new ids (each row read and decoded
    # anew): enough batches for every decoding worker to reach its steady state.
    n: int
    distinct: int  # images synthesised (about three in four are DICOM)
    min_side: int
    max_side: int
    reps: int


FULL = Mode(reduced=False, weights="random", device="cuda", n=1024, distinct=256, min_side=2500, max_side=3000, reps=3)
REDUCED = Mode(reduced=True, weights="random:tiny", device="cpu", n=8, distinct=4, min_side=384, max_side=512, reps=1)


def radstore_command() -> list[str]:
    """The ``radstore`` entry point of this interpreter's environment (the venv's script)."""
    script = Path(sys.executable).with_name("radstore")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]


def synth_cohort(out: Path, mode: Mode) -> Path:
    """``radstore synth`` of ``mode.distinct`` images into ``out``; returns its manifest."""
    cmd = radstore_command() + ["synth", "--out", str(out), "--n", str(mode.distinct), "--seed", "0"]
    cmd += ["--min-side", str(mode.min_side), "--max-side", str(mode.max_side), "--quiet"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out / "manifest.parquet"


def dicom_manifest(cohort_manifest: Path, n: int) -> tuple[Path, int]:
    """A manifest of ``n`` rows beside the cohort's, cycling over its DICOM files under new
    image_ids (every row is read and decoded anew); returns it and the number of distinct files."""
    t = pq.read_table(cohort_manifest, columns=["image_id", "path", "format"])
    dicom = t.filter(pc.equal(t.column("format"), "dicom"))
    if dicom.num_rows == 0:
        raise SystemExit(f"error: the synthetic cohort {cohort_manifest} has no DICOM file; synthesise more images (--distinct)")
    out_t = dicom.take(pa.array(np.arange(n) % dicom.num_rows))
    out_t = out_t.set_column(0, "image_id", pa.array([f"gpu-check-{i:06d}" for i in range(n)]))
    out = cohort_manifest.parent / f"manifest-dicom-{n}.parquet"
    pq.write_table(out_t, out)
    return out, dicom.num_rows


def forward_seconds(enc, batch: int, n: int, warmup: int = 2) -> float:
    """Seconds of the encoder's forward over ``n`` images in batches of ``batch`` (the last one
    partial), on random input of its size already on its device, after ``warmup`` untimed
    batches; on CUDA under the bfloat16 autocast extraction uses, timed between synchronisations."""
    import contextlib

    import torch

    device = enc.device
    cuda = device.type == "cuda"
    size = enc.preprocessing.size
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    with torch.inference_mode(), autocast:
        for _ in range(warmup):
            enc.embed(x)
        sync()
        t = time.perf_counter()
        for k in sizes:
            enc.embed(x[:k])
        sync()
        return time.perf_counter() - t


def parse_profile(output: str, encoder: str) -> dict[str, float]:
    """The numbers of ``encoder``'s ``profile`` line in a ``radstore extract --profile`` output
    (shares as fractions); raises ValueError when there is none."""
    for m in PROFILE.finditer(output):
        if m["encoder"] == encoder:
            return {
                "done": int(m["done"]),
                "images_per_s": float(m["rate"]),
                "wait": float(m["wait"]) / 100,
                "forward": float(m["forward"]) / 100,
                "commit": float(m["commit"]) / 100,
            }
    raise ValueError(f"no 'profile {encoder}:' line in the output of radstore extract")


def run_extract(manifest: Path, store: Path, encoder: str, mode: Mode, batch: int, num_workers: int | None) -> dict[str, float]:
    """``radstore extract --profile`` of one encoder into a fresh ``store``: its profile numbers
    plus the command's wall seconds. Raises RuntimeError (with the output's tail) on a failure or
    when not every row was embedded."""
    shutil.rmtree(store, ignore_errors=True)
    cmd = radstore_command() + ["extract", "--manifest", str(manifest), "--store", str(store), "--encoder", encoder]
    cmd += ["--weights", mode.weights, "--device", mode.device, "--batch-size", str(batch), "--profile"]
    if num_workers is not None:
        cmd += ["--num-workers", str(num_workers)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    output = p.stdout + p.stderr
    try:
        if p.returncode != 0:
            raise ValueError(f"exit status {p.returncode}")
        prof = parse_profile(p.stdout, encoder)
        if prof["done"] != mode.n:
            raise ValueError(f"{prof['done']} images embedded, expected {mode.n}")
    except ValueError as e:
        raise RuntimeError(f"radstore extract --encoder {encoder}: {e}\n$ {' '.join(cmd)}\n{output[-4000:]}") from None
    return {**prof, "wall_s": wall}


def _fmt_rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.4g}"


def table(rows: list[dict]) -> str:
    """The result table, one row per encoder (Markdown, readable as plain text): rates are medians
    over the rounds with their min-max; the ratio is the median of the per-round ratios."""
    head = ["encoder", "weights", "input", "batch", "images", "forward img/s", "forward min-max", "extract img/s", "extract min-max",
            "extract/forward", "ratio min-max", "input wait", "forward share", "commit share", "target", "met"]  # fmt: skip
    lines = [head]
    for r in rows:
        f, e, q = r["forward_images_per_s"], r["extract_images_per_s"], r["ratio"]
        lines.append(
            [
                r["encoder"],
                r["weights"],
                f"{r['input']}x{r['input']}",
                str(r["batch"]),
                str(r["images"]),
                _fmt_rate(f["median"]),
                f"{_fmt_rate(f['min'])}-{_fmt_rate(f['max'])}",
                _fmt_rate(e["median"]),
                f"{_fmt_rate(e['min'])}-{_fmt_rate(e['max'])}",
                f"{q['median']:.3f}",
                f"{q['min']:.3f}-{q['max']:.3f}",
                f"{r['input_wait']:.1%}",
                f"{r['forward_share']:.1%}",
                f"{r['commit_share']:.1%}",
                f">= {TARGET}" + ("" if r["enforced"] else " (not enforced)"),
                "yes" if r["met"] else "no",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    fmt = lambda line: "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(line) for line in lines[1:]])


def _stats(values: list[float]) -> dict[str, float]:
    med, lo, hi = summary(values)
    return {"median": med, "min": lo, "max": hi}


def build_parser() -> argparse.ArgumentParser:
    """The command line; every size defaults to the mode's (:data:`FULL` on CUDA, else :data:`REDUCED`)."""
    ap = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reduced", action="store_true", help="tiny models, a few small images, CPU (the default without CUDA)")
    ap.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--n", type=int, help=f"manifest rows (default {FULL.n}; reduced {REDUCED.n})")
    ap.add_argument("--distinct", type=int, help=f"images synthesised (default {FULL.distinct}; reduced {REDUCED.distinct})")
    ap.add_argument("--min-side", type=int, help=f"default {FULL.min_side}; reduced {REDUCED.min_side}")
    ap.add_argument("--max-side", type=int, help=f"default {FULL.max_side}; reduced {REDUCED.max_side}")
    ap.add_argument("--reps", type=int, help=f"rounds (default {FULL.reps}; reduced {REDUCED.reps})")
    ap.add_argument("--batch-size", type=int, default=None, help="images per forward (default: what radstore extract uses on the device)")
    ap.add_argument("--num-workers", type=int, default=None, help="decoding processes (default: radstore extract's)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the check; prints the table, writes the JSON, and exits 1 only when on CUDA (not reduced)
    some encoder's extraction is below :data:`TARGET` of its forward-only rate."""
    import torch

    a = build_parser().parse_args(argv)
    cuda = torch.cuda.is_available()
    mode = REDUCED if (a.reduced or not cuda) else FULL
    overrides = {k: getattr(a, k) for k in ("n", "distinct", "min_side", "max_side", "reps") if getattr(a, k) is not None}
    mode = replace(mode, **overrides)
    encoders = [e.strip() for e in a.encoders.split(",") if e.strip()]
    enforced = cuda and not mode.reduced
    info = machine()
    why = "--reduced" if a.reduced else "no CUDA"
    print(f"gpu_check on {info['host']}: {info['cpus']} CPUs, torch {info['torch']}, GPU: {info['gpu']}")
    print(
        ("REDUCED mode (" + why + "): tiny random models on the CPU; the table is computed, the target not enforced"
         if mode.reduced else "full mode: real-size random models on CUDA")
        + f"; {mode.n} rows over {mode.distinct} synthesised images of {mode.min_side}-{mode.max_side} px, {mode.reps} round(s)",
        flush=True,
    )  # fmt: skip

    from featurestore.config import ExtractConfig
    from featurestore.extract import batch_size_for, encoder_for

    root = scratch_dir("gpu-check")
    t0 = time.perf_counter()
    try:
        t = time.perf_counter()
        manifest, files = dicom_manifest(synth_cohort(root / "cohort", mode), mode.n)
        print(f"synthesised {mode.distinct} images ({files} DICOM) in {time.perf_counter() - t:.0f} s", flush=True)
        encs, batches = {}, {}
        for name in encoders:
            t = time.perf_counter()
            # Built and saved under $RADSTORE_CACHE here, so the timed runs below only load it.
            encs[name] = encoder_for(ExtractConfig(name, weights=mode.weights, device=mode.device, batch_size=a.batch_size))
            batches[name] = batch_size_for(ExtractConfig(name, batch_size=a.batch_size), encs[name].device)
            print(f"{name}: {mode.weights} model ready in {time.perf_counter() - t:.0f} s, batch {batches[name]}", flush=True)
        rounds: dict[str, list[dict]] = {name: [] for name in encoders}
        for r in range(mode.reps):
            for name in encoders:
                fwd = forward_seconds(encs[name], batches[name], mode.n, warmup=2 if cuda and not mode.reduced else 1)
                ext = run_extract(manifest, root / f"store-{name}", name, mode, batches[name], a.num_workers)
                fwd_rate = mode.n / fwd
                rounds[name].append({"forward_s": fwd, "forward_images_per_s": fwd_rate, **ext, "ratio": ext["images_per_s"] / fwd_rate})
                print(
                    f"round {r + 1}/{mode.reps} {name}: forward {fwd_rate:.4g} img/s, extract {ext['images_per_s']:.4g} img/s "
                    f"(input wait {ext['wait']:.1%}; command {ext['wall_s']:.0f} s)",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = []
    for name in encoders:
        rs = rounds[name]
        ratio = _stats([x["ratio"] for x in rs])
        rows.append(
            {
                "encoder": name,
                "weights": mode.weights,
                "input": encs[name].preprocessing.size,
                "batch": batches[name],
                "images": mode.n,
                "forward_images_per_s": _stats([x["forward_images_per_s"] for x in rs]),
                "extract_images_per_s": _stats([x["images_per_s"] for x in rs]),
                "ratio": ratio,
                "input_wait": summary([x["wait"] for x in rs])[0],
                "forward_share": summary([x["forward"] for x in rs])[0],
                "commit_share": summary([x["commit"] for x in rs])[0],
                "enforced": enforced,
                "met": ratio["median"] >= TARGET,
                "rounds": rs,
            }
        )
    total = time.perf_counter() - t0
    print()
    print(table(rows))
    missed = [r["encoder"] for r in rows if not r["met"]]
    if not missed:
        print(f"\nextraction >= {TARGET}x the forward-only rate for every encoder")
    else:
        print(f"\nbelow {TARGET}x the forward-only rate: {', '.join(missed)}" + ("" if enforced else " (not enforced: reduced mode)"))
    print(f"total {total:.0f} s")
    payload = {"machine": info, "mode": mode.__dict__, "target": TARGET, "enforced": enforced, "seconds": round(total, 1), "rows": rows}
    name = "gpu-check-reduced" if mode.reduced else "gpu-check"
    print(f"wrote {write_results(name, payload, os.environ.get('OUT') or None)}")
    return 1 if (enforced and missed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
