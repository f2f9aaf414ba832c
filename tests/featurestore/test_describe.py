"""The describe cache: a feature set's id known from a cheap signature, without loading the model."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featurestore import describe
from featurestore.config import ExtractConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private radstore cache and no weights directory, so records and stand-ins are this test's."""
    monkeypatch.setenv("RADSTORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RADSTORE_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    return tmp_path / "cache"


@pytest.fixture
def weights_dir(tmp_path) -> Path:
    d = tmp_path / "weights"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"0123456789")
    return d


def test_importing_it_loads_neither_torch_nor_prefect():
    code = (
        "import sys; import featurestore.describe, flows.noop; "
        "print(sorted(m for m in ('torch', 'transformers', 'prefect', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_signature_follows_the_weights_files(cache, weights_dir):
    cfg = ExtractConfig("rad-dino", weights=str(weights_dir))
    first = describe.signature(cfg)
    assert first is not None and describe.signature(cfg) == first  # stable while nothing changes
    st = (weights_dir / "model.safetensors").stat()
    (weights_dir / "model.safetensors").write_bytes(b"0123456789ab")  # size
    os.utime(weights_dir / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    bigger = describe.signature(cfg)
    assert bigger not in (None, first)
    os.utime(weights_dir / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # mtime only
    touched = describe.signature(cfg)
    assert touched not in (None, first, bigger)
    (weights_dir / "sub").mkdir()
    (weights_dir / "sub" / "extra.json").write_text("{}")  # a new file, in a subfolder
    assert describe.signature(cfg) not in (None, first, bigger, touched)


@pytest.mark.parametrize("change", [{"size": 224}, {"bits": 16}, {"intensity": "minmax"}, {"dtype": "float32"}, {"shard_images": 32}])
def test_the_signature_follows_the_config(cache, weights_dir, change):
    cfg = ExtractConfig("rad-dino", weights=str(weights_dir))
    assert describe.signature(dataclasses.replace(cfg, **change)) != describe.signature(cfg)


def test_the_signature_ignores_what_does_not_decide_the_id(cache, weights_dir):
    cfg = ExtractConfig("rad-dino", weights=str(weights_dir))
    fast = dataclasses.replace(cfg, batch_size=64, device="cpu", num_workers=4, progress=False)
    assert describe.signature(fast) == describe.signature(cfg)
    # pixels has no weights: what --weights says cannot change its feature set
    assert describe.signature(ExtractConfig("pixels", weights="random:tiny")) == describe.signature(ExtractConfig("pixels"))


def test_the_signature_follows_radstores_source(cache, monkeypatch):
    cfg = ExtractConfig("pixels")
    before = describe.signature(cfg)
    monkeypatch.setattr(describe, "source_hash", lambda: "another version of the encoders")
    assert describe.signature(cfg) != before


def test_the_source_hash_covers_the_adapters_and_the_spec():
    names = {p.relative_to(ROOT).as_posix() for p in describe.source_files()}
    assert {"featurestore/encoders/dinov2.py", "featurestore/encoders/weights.py", "featurestore/featureset/spec.py"} <= names


def test_the_signature_follows_a_rebuilt_random_stand_in(cache):
    cfg = ExtractConfig("rad-dino", weights="random:tiny")
    before = describe.signature(cfg)
    saved = cache / "random-tiny" / "rad-dino-named-seed0"
    saved.mkdir(parents=True)
    (saved / "model.safetensors").write_bytes(b"weights")
    after = describe.signature(cfg)
    assert after != before
    other = cache / "random-tiny" / "random-vit-named-seed0"  # another encoder's stand-in
    other.mkdir(parents=True)
    (other / "model.safetensors").write_bytes(b"weights")
    assert describe.signature(cfg) == after


def test_weights_are_found_where_the_loader_looks(cache, tmp_path, monkeypatch, weights_dir):
    assert describe.signature(ExtractConfig("rad-dino")) is None  # nowhere: loading would fail
    assert describe.signature(ExtractConfig("rad-dino", weights=str(tmp_path / "nope"))) is None
    assert describe.signature(ExtractConfig("no-such-encoder")) is None
    root = tmp_path / "weights-root"
    (root / "rad-dino").mkdir(parents=True)
    monkeypatch.setenv("RADSTORE_WEIGHTS_DIR", str(root))
    from_env = describe.signature(ExtractConfig("rad-dino"))
    assert from_env is not None and from_env != describe.signature(ExtractConfig("rad-dino", weights=str(weights_dir)))
    assert describe.registrations()["chexagent"].hub_repo  # a module constant, read from the source


def test_remember_then_known(cache):
    cfg = ExtractConfig("pixels")
    assert describe.known_feature_set(cfg) is None
    describe.remember(cfg, "pixels-0123456789ab")
    assert describe.known_feature_set(cfg) == "pixels-0123456789ab"
    assert describe.known_feature_set(dataclasses.replace(cfg, size=256)) is None
    records = list((cache / "describe").iterdir())
    assert [p.name for p in records] == [f"{describe.signature(cfg)}.json"]  # no temporary file left
    records[0].write_text("{not json")
    assert describe.known_feature_set(cfg) is None
    records[0].write_text(json.dumps({"signature": "another", "feature_set_id": "pixels-0123456789ab"}))
    assert describe.known_feature_set(cfg) is None


@pytest.mark.parametrize(
    "cfg",
    [
        ExtractConfig("pixels", size=256),
        # builds a tiny random model and fingerprints its saved files
        pytest.param(ExtractConfig("random-vit", weights="random:tiny", size=56), marks=pytest.mark.slow),
    ],
)
def test_a_hit_is_the_id_the_loaded_model_gives(cache, tmp_path, cfg):
    from featurestore.extract import feature_set_for
    from featurestore.store import Store

    cfg = dataclasses.replace(cfg, device="cpu", progress=False, num_workers=0)
    store = Store.open(str(tmp_path / "store"), create=True)
    fs = feature_set_for(store, cfg)
    describe.remember(cfg, fs.id)
    assert describe.known_feature_set(cfg) == fs.id
    assert fs.id.startswith(cfg.encoder + "-") and fs.id == feature_set_for(store, cfg).id
    # in another process, as a rerun finds it
    code = f"from featurestore import describe; from featurestore.config import ExtractConfig; print(describe.known_feature_set(ExtractConfig(**{cfg.to_json()!r})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env=os.environ).stdout
    assert out.strip() == fs.id
