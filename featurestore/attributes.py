"""Acquisition and patient attributes of an image, recorded at ingest for subgroup analysis.

Four columns of the image index come from the DICOM header (read from the dataset the decoder
already parsed: nothing is decoded twice): ``view_position`` (ViewPosition), ``manufacturer``
(Manufacturer), ``patient_sex`` (PatientSex) and ``patient_age`` (PatientAge, in years).

A manifest may carry columns of the same names. Its non-null cell wins over the header: the
manifest is the user's explicit statement, which is how a PNG/JPEG cohort (no header) or an
anonymised DICOM (age removed) gets them, and how a wrong header is corrected. Absent from both,
the value is null. Text values are stripped; an empty string is null. No case folding:
Manufacturer spellings are the site's, and which spellings are one vendor is a decision for the
analysis, not for the index.

``patient_age`` parses the DICOM Age String ``nnnD|W|M|Y`` (days, weeks, months, years; e.g.
``065Y`` -> 65.0, ``006M`` -> 0.5) and, leniently, a bare number (years, as some exporters write
it); anything else, or an age outside [0, 150] years, is null rather than a guess.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

#: Image-index column -> the DICOM keyword it is read from.
DICOM_ATTRIBUTES: dict[str, str] = {
    "view_position": "ViewPosition",
    "manufacturer": "Manufacturer",
    "patient_sex": "PatientSex",
    "patient_age": "PatientAge",
}
#: The image-index columns of this module, in table order.
ATTRIBUTE_COLUMNS: tuple[str, ...] = tuple(DICOM_ATTRIBUTES)
TEXT_COLUMNS: tuple[str, ...] = ("view_position", "manufacturer", "patient_sex")

_AGE = re.compile(r"^\s*(\d{1,3}(?:\.\d+)?)\s*([DWMY])?\s*$", re.IGNORECASE)
_YEARS_PER_UNIT = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
MAX_AGE_YEARS = 150.0


def parse_age(value: Any) -> float | None:
    """Years from a DICOM Age String (``"065Y"``, ``"006M"``, ``"010W"``, ``"003D"``), a bare
    number of years (text or numeric), or None when absent, unparseable or outside [0, 150]."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        years = float(value)
    else:
        m = _AGE.match(str(value))
        if m is None:
            return None
        years = float(m.group(1)) * _YEARS_PER_UNIT[(m.group(2) or "Y").upper()]
    return years if math.isfinite(years) and 0.0 <= years <= MAX_AGE_YEARS else None


def text_value(value: Any) -> str | None:
    """A value as stripped, non-empty text (12 -> "12"), or None when empty or missing (NaN too)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    s = str(value).strip()
    return s or None


def _clean(column: str, value: Any) -> Any:
    if column == "patient_age":
        return parse_age(value)
    return text_value(value)


def from_dataset(ds: Any) -> dict[str, Any]:
    """The attributes a pydicom dataset's header carries: None for each one it lacks, and for
    all of them with ``ds=None`` (a file without a header). A malformed element is None too:
    an attribute is never the reason an image is not indexed."""
    out: dict[str, Any] = dict.fromkeys(ATTRIBUTE_COLUMNS)
    if ds is None:
        return out
    for column, keyword in DICOM_ATTRIBUTES.items():
        try:
            out[column] = _clean(column, ds.get(keyword))
        except Exception:  # noqa: BLE001 - a value pydicom cannot convert is an absent one
            out[column] = None
    return out


def merge(header: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """Each attribute from the manifest ``row`` where it has a usable cell, else from ``header``
    (see the module docstring for why the manifest wins)."""
    out = {}
    for column in ATTRIBUTE_COLUMNS:
        given = _clean(column, row.get(column))
        out[column] = given if given is not None else header.get(column)
    return out
