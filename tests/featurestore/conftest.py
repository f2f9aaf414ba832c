"""Store backends every store test runs against: local disk and an S3-compatible server."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path):
    """(url, storage_options) of an empty store location on each backend."""
    if request.param == "local":
        return str(tmp_path / "store"), None
    opts = request.getfixturevalue("s3_server")
    return f"s3://radstore-test/{uuid.uuid4().hex}", opts
