"""Checks the report tests share: a figure is a real, non-blank PNG; a table cell found by its
data attributes; the section headings from the comparisons on."""

from __future__ import annotations

import html
import io
import re

import numpy as np
from PIL import Image


def real_png(data: bytes | None, what: str) -> Image.Image:
    """The PNG ``data`` opened, after checking it is one, at least 300 x 200 and not blank."""
    assert data is not None and data[:8] == b"\x89PNG\r\n\x1a\n", what
    Image.open(io.BytesIO(data)).verify()  # structurally valid
    im = Image.open(io.BytesIO(data))
    assert im.width >= 300 and im.height >= 200, (what, im.size)
    grey = np.asarray(im.convert("L"), dtype=np.float32)
    assert grey.std() > 8, f"{what} looks blank (pixel std {grey.std():.2f})"
    return im


def cell(text: str, **data) -> str:
    """The text of the table cell whose ``data-*`` attributes are ``data`` (bold stripped)."""
    attrs = " ".join(f'data-{k}="{html.escape(str(v))}"' for k, v in data.items())
    m = re.search(rf'<td class="[^"]*" {re.escape(attrs)}>(?:<b>)?(.*?)(?:</b>)?</td>', text)
    assert m, attrs
    return html.unescape(m.group(1))


def headings_from_comparisons(text: str) -> tuple[int, list[str]]:
    """(the comparisons section's number, the h2 headings from it to the end of the page)."""
    heads = re.findall(r"<h2>(.*?)</h2>", text)
    n = int(next(h for h in heads if h.endswith("Comparisons between encoders")).split(".")[0])
    return n, heads[heads.index(f"{n}. Comparisons between encoders") :]


def figure_on_page(text: str, out_dir, name: str) -> Image.Image:
    """Figure ``name`` is a real PNG in ``out_dir/figures`` and embedded in the page ``text``."""
    im = real_png((out_dir / "figures" / f"{name}.png").read_bytes(), name)
    assert f'<figure id="fig-{name}"><a href="figures/{name}.png"><img src="data:image/png;base64,' in text
    return im


#: The sections from the comparisons on, in page order (the report numbers them consecutively).
SECTIONS_AFTER_COMPARISONS = ("Comparisons between encoders", "Calibration and operating points", "Label efficiency", "Subgroups",
                              "Embedding health")  # fmt: skip
