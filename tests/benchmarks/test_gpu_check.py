"""benchmarks/gpu_check.sh in its reduced CPU mode, so that the GPU check cannot rot; and its
parsing of ``radstore extract --profile`` and its table on known values."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks.gpu_check import ENCODERS, REDUCED, TARGET, forward_seconds, parse_profile, table
from tests.conftest import ROOT
from tests.flows.conftest import prefect_server  # noqa: F401 - the fixture: one server for the check's commands

# The input side of each encoder's published preprocessing (the README's encoder table).
INPUT = {"rad-dino": 518, "chexagent": 512, "biomedclip": 224}


def test_parse_profile_reads_the_line_of_the_asked_encoder():
    out = (
        "feature set rad-dino-1: 8 extracted\n"
        "profile rad-dino: 8 images, 12.50 images/s; input wait 40.0%, forward 55.5%, commit 4.5%\n"
        "rad-dino-1\n"
        "profile biomedclip: 8 images, 1234.56 images/s; input wait 0.1%, forward 99.0%, commit 0.9%\n"
    )
    assert parse_profile(out, "rad-dino") == {"done": 8, "images_per_s": 12.5, "wait": 0.4, "forward": 0.555, "commit": 0.045}
    assert parse_profile(out, "biomedclip")["images_per_s"] == 1234.56
    with pytest.raises(ValueError, match="chexagent"):
        parse_profile(out, "chexagent")


class _Recorder:
    """An encoder stand-in that records the batches its forward is given."""

    device = torch.device("cpu")
    preprocessing = SimpleNamespace(size=8)

    def __init__(self):
        self.calls: list[tuple[int, ...]] = []

    def embed(self, x):
        self.calls.append(tuple(x.shape))


def test_forward_seconds_runs_warmup_then_n_images_in_extraction_batches():
    enc = _Recorder()
    assert forward_seconds(enc, batch=4, n=10, warmup=2) >= 0
    # Two untimed warm-up batches, then 10 images as 4 + 4 + 2, on input of the encoder's size.
    assert [c[0] for c in enc.calls] == [4, 4, 4, 4, 2]
    assert {c[1:] for c in enc.calls} == {(3, 8, 8)}


def _row(encoder: str, fwd: float, ext: float) -> dict:
    stats = lambda v: {"median": v, "min": v, "max": v}  # noqa: E731
    return {
        "encoder": encoder, "weights": "random", "input": 518, "batch": 64, "images": 320,
        "forward_images_per_s": stats(fwd), "extract_images_per_s": stats(ext), "ratio": stats(ext / fwd),
        "input_wait": 0.25, "forward_share": 0.7, "commit_share": 0.05, "enforced": True, "met": ext / fwd >= TARGET,
    }  # fmt: skip


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in ``text``, keyed by its header."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _num(s: str) -> float:
    return float(s.replace(",", ""))


def test_table_prints_rates_ratio_and_whether_the_target_is_met():
    rows = parse_table(table([_row("rad-dino", 2000.0, 1900.0), _row("biomedclip", 8000.0, 1000.0)]))
    assert [r["encoder"] for r in rows] == ["rad-dino", "biomedclip"]
    assert [r["forward img/s"] for r in rows] == ["2,000", "8,000"]
    assert [r["extract img/s"] for r in rows] == ["1,900", "1,000"]
    assert [r["extract/forward"] for r in rows] == ["0.950", "0.125"]
    assert [r["met"] for r in rows] == ["yes", "no"]
    assert rows[0]["input wait"] == "25.0%" and rows[0]["target"] == ">= 0.9"


@pytest.mark.slow
def test_reduced_gpu_check_prints_one_row_per_encoder_with_ratio_of_its_rates(prefect_server, tmp_path):  # noqa: F811
    # RADSTORE_CACHE: the session's (conftest); a running server spares each command Prefect's
    # ephemeral one (the ephemeral path has its own test in tests/flows).
    env = {**os.environ, "OUT": str(tmp_path), "PREFECT_API_URL": prefect_server}
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--reduced"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "REDUCED mode (--reduced)" in p.stdout
    rows = parse_table(p.stdout)
    assert [r["encoder"] for r in rows] == list(ENCODERS)
    for r in rows:
        side = INPUT[r["encoder"]]
        assert (r["weights"], r["input"], int(r["images"])) == ("random:tiny", f"{side}x{side}", REDUCED.n)
        fwd, ext, ratio = _num(r["forward img/s"]), _num(r["extract img/s"]), float(r["extract/forward"])
        assert fwd > 0 and ext > 0
        # One round: the ratio is that round's extract/forward, up to the printed rounding.
        assert ratio == pytest.approx(ext / fwd, rel=2e-3, abs=6e-4)
        assert r["met"] == ("yes" if ratio >= TARGET else "no")
        assert r["target"] == f">= {TARGET} (not enforced)"
    # The JSON holds every round; its figures are those of the table.
    (path,) = Path(tmp_path).glob("*-gpu-check-reduced.json")
    doc = json.loads(path.read_text())
    assert doc["enforced"] is False and doc["mode"]["reduced"] is True
    for r, printed in zip(doc["rows"], rows):
        (rnd,) = r["rounds"]
        assert rnd["forward_images_per_s"] == pytest.approx(REDUCED.n / rnd["forward_s"])
        assert rnd["ratio"] == pytest.approx(rnd["images_per_s"] / rnd["forward_images_per_s"])
        assert r["ratio"]["median"] == pytest.approx(rnd["ratio"])
        assert f"{r['input_wait']:.1%}" == printed["input wait"] == f"{rnd['wait']:.1%}"
        assert rnd["done"] == REDUCED.n
