"""The ``decode_once`` benchmark stage in its QUICK sizes: its table holds the floor as the sum of
its parts and each ratio as the quotient of the rows it compares."""

from __future__ import annotations

import pytest

from benchmarks.common import format_table
from benchmarks.decode_once import ENCODERS, MANY_TARGET, SEPARATE_TARGET, STAGE, run
from benchmarks.run import QUICK, STAGES


@pytest.mark.slow
def test_quick_decode_once_table_is_the_sum_and_quotients_of_its_rows():
    assert "decode_once" in STAGES
    res = run(reps=1, **QUICK["decode_once"])
    rows = {r.what.strip(): r for r in res["rows"]}
    assert all(r.stage == STAGE and r.n == QUICK["decode_once"]["n"] for r in res["rows"])
    forwards = [w for w in rows if w.startswith("forward ")]
    assert forwards == [f"forward {e}" for e in ENCODERS]
    (floor,) = [r for w, r in rows.items() if w.startswith("floor:")]
    decode = rows["one decode of each image (read_image)"]
    # One round: each figure is that round's seconds, and the floor is the sum of its parts.
    assert floor.value == pytest.approx(decode.value + sum(rows[w].value for w in forwards))
    many = rows["extract_many, all five (cost / floor)"]
    separate = rows["five separate extract runs (cost / floor)"]
    speedup = rows["five separate runs / extract_many (speed-up)"]
    assert many.ratio == pytest.approx(many.value / floor.value)
    assert separate.ratio == pytest.approx(separate.value / floor.value)
    assert speedup.ratio == pytest.approx(separate.value / many.value)
    assert (many.target, many.met) == (f"<= {MANY_TARGET}x", many.ratio <= MANY_TARGET)
    assert separate.met == (separate.ratio >= SEPARATE_TARGET)
    secs = res["details"]["seconds"]
    assert secs["many"] == [many.value] and secs["separate"] == [separate.value]
    table = format_table(res["rows"])
    assert f"<= {MANY_TARGET}x" in table and f">= {SEPARATE_TARGET}x" in table and table.count("\n") == len(res["rows"]) + 1
