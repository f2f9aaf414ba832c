"""The real-size decode stage (QUICK sizes): every figure of its table is the one its rounds give.

The fast path is replaced by a known one for the run (``benchmarks.decode.fast_path``): today's
model input with a planted offset of a whole number of grey levels on one pixel, different per
encoder, so the reported largest difference and its bound are known answers; ratios and rates
are recomputed here from the per-round seconds the stage returns.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from benchmarks import decode
from benchmarks.common import speedups
from benchmarks.run import QUICK
from featurestore import imageio
from featurestore.encoders.preprocess import Preprocessing

PRE = decode.default_preprocessing()
OFFSET = {"rad-dino": 1.0, "chexagent": 2.0, "biomedclip": 0.0}  # grey levels (1/255) planted on one pixel
STEPS = ("file read", "decode", "intensity", "read_image")


def _planted(pre: Preprocessing, path: str) -> torch.Tensor:
    x = pre(imageio.read_image(path, **pre.decode_options()).pixels).clone()
    name = next(n for n, p in PRE.items() if p == pre)
    x[:, 0, 0] += OFFSET[name] / 255.0 / torch.tensor(pre.std)
    return x


@pytest.fixture(scope="module")
def result():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decode, "fast_path", lambda: _planted)
        return decode.run(reps=3, **QUICK["decode"])


def _row(res, kind, prefix):
    (row,) = [r for r in res["rows"] if r.what.startswith(f"{kind}: {prefix}")]
    return row


def test_encoders_are_the_registry_model_encoders():
    assert set(PRE) == set(OFFSET)
    assert {p.size for p in PRE.values()} == {518, 512, 224}


def test_every_kind_has_every_row(result):
    n = QUICK["decode"]["n"]
    assert result["details"]["fast_path"] is True
    kinds = [k for k, _, _ in decode.KINDS]
    assert list(result["details"]["seconds"]) == kinds
    for kind in kinds:
        rows = [r for r in result["rows"] if r.what.startswith(f"{kind}: ")]
        assert len(rows) == len(STEPS) + 4 * len(PRE) and all(r.n == n for r in rows)
        assert kind in result["details"]["breakdown"]
    size = result["details"]["bytes_per_image"]
    assert size["DICOM JPEG 2000 lossless"] < size["DICOM uncompressed"] and size["DICOM JPEG-LS lossless"] < size["DICOM uncompressed"]


def test_figures_come_from_the_rounds(result):
    n = QUICK["decode"]["n"]
    for kind, t in result["details"]["seconds"].items():
        assert all(len(v) == 3 for v in t.values())
        for key, prefix in (("read", "file read"), ("decode", "decode"), ("intensity", "intensity"), ("read_image", "read_image")):
            row = _row(result, kind, prefix)
            ms = [1e3 * s / n for s in t[key]]
            assert (row.value, row.lo, row.hi, row.unit) == (statistics.median(ms), min(ms), max(ms), "ms/img")
        for e in PRE:
            assert _row(result, kind, f"preprocess {e}").value == statistics.median(1e3 * s / n for s in t[f"pre {e}"])
            today = [a + b for a, b in zip(t["read_image"], t[f"pre {e}"])]
            assert _row(result, kind, f"today {e}").value == pytest.approx(n / statistics.median(today), rel=1e-12)
            fast = _row(result, kind, f"fast {e}")
            assert fast.value == pytest.approx(n / statistics.median(t[f"fast {e}"]), rel=1e-12)
            ratio = speedups(today, t[f"fast {e}"])
            assert (fast.ratio, fast.ratio_lo, fast.ratio_hi) == ratio
            target = {"DICOM uncompressed": 5.0, "PNG 16-bit": None}.get(kind, 2.0)
            if target is None:  # shown, without a target
                assert fast.target == "" and fast.met is None
            else:
                assert fast.target == f">= {target:g}x" and fast.met == (ratio[0] >= target)


def test_largest_model_input_difference_is_the_planted_one(result):
    for kind, _, _ in decode.KINDS:
        for e, offset in OFFSET.items():
            row = _row(result, kind, f"max |fast - today| {e}")
            assert row.value == pytest.approx(offset, abs=1e-3)
            assert row.met == (offset <= 1.5) and row.target == "<= 1.5/255"


def test_without_the_fast_path_only_today_is_reported():
    t = {"read": [1.0, 2.0, 3.0], "decode": [2.0, 2.0, 2.0], "intensity": [1.0, 1.0, 1.0], "read_image": [4.0, 6.0, 5.0],
         "pre rad-dino": [2.0, 1.0, 3.0]}  # fmt: skip
    rows = decode.rows_of("PNG 16-bit", 2, t, {})
    assert [r.what.split(": ")[1].split(" ")[0] for r in rows] == ["file", "decode", "intensity", "read_image", "preprocess", "today"]
    assert rows[3].value == 2500.0 and (rows[3].lo, rows[3].hi) == (2000.0, 3000.0)  # ms per image of 2
    # today per round: 6, 7, 8 s for 2 images -> median 2/7 img/s, slowest round 2/8
    assert (rows[-1].value, rows[-1].lo, rows[-1].hi) == (2 / 7, 2 / 8, 2 / 6)
