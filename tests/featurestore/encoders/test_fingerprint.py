"""The weights fingerprint comes from the checkpoint files as stored (scheme ``files-v1``), not from
the module in memory, and a store written with the legacy (module state_dict) fingerprint keeps
its feature sets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import torch

from featurestore.encoders import load_encoder
from featurestore.encoders.base import fingerprint_module
from featurestore.encoders.dinov2 import RAD_DINO_PROCESSOR_CONFIG
from featurestore.encoders.weights import WeightFiles
from featurestore.featureset import FeatureSetSpec
from featurestore.featureset.spec import FILES_SCHEME

#: safetensors dtype codes -> the dtype names the recipe hashes.
DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "U8": "uint8",
    "BOOL": "bool",
}


def safetensors_tensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """name -> (dtype, shape, raw bytes), straight from the file's header and data (no library)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    body = data[8 + n :]
    return {k: (DTYPES[v["dtype"]], v["shape"], body[v["data_offsets"][0] : v["data_offsets"][1]]) for k, v in header.items()}


def recipe(tensors: dict[str, tuple[str, list[int], bytes]], tower: str = "") -> str:
    """The files-v1 recipe as documented (WeightFiles.fingerprint), written out independently."""
    if tower and any(k.startswith(tower) for k in tensors):
        tensors = {k[len(tower) :]: v for k, v in tensors.items() if k.startswith(tower)}
    h = hashlib.sha256()
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        h.update(json.dumps([name, dtype, shape], separators=(",", ":")).encode() + b"\n" + raw)
    return h.hexdigest()[:16]


def test_dinov2_fingerprint_is_model_safetensors_as_stored(rad_dino_folder):
    enc = load_encoder("rad-dino", weights=str(rad_dino_folder))
    assert enc.fingerprint == recipe(safetensors_tensors(rad_dino_folder / "model.safetensors"))
    spec = enc.spec()
    assert spec.weights_fingerprint == enc.fingerprint and spec.fingerprint_scheme == FILES_SCHEME == enc.fingerprint_scheme
    assert enc.legacy_fingerprint == fingerprint_module(enc.module)


def test_siglip_fingerprint_is_the_vision_tower_of_any_layout(siglip_folders):
    """Full SiglipModel, bare vision tower as transformers 5 and 4 save it: one fingerprint, one id."""
    want = recipe(safetensors_tensors(siglip_folders.full / "model.safetensors"), tower="vision_model.")
    encs = [load_encoder("chexagent", weights=str(f)) for f in (siglip_folders.full, siglip_folders.bare, siglip_folders.bare_prefixed)]
    assert [e.fingerprint for e in encs] == [want] * 3
    assert want == recipe(safetensors_tensors(siglip_folders.bare / "model.safetensors"))
    assert len({e.spec().feature_set_id for e in encs}) == 1
    # The text tower is not hashed: it is not what the features come from.
    everything = recipe(safetensors_tensors(siglip_folders.full / "model.safetensors"))
    assert everything != want


def test_openclip_fingerprint_is_the_visual_tensors_of_the_bin(biomedclip_folder):
    enc = load_encoder("biomedclip", weights=str(biomedclip_folder))
    state = torch.load(biomedclip_folder / "open_clip_pytorch_model.bin", weights_only=True)
    tensors = {k: (str(v.dtype).removeprefix("torch."), list(v.shape), v.contiguous().numpy().tobytes()) for k, v in state.items()}
    assert enc.fingerprint == recipe(tensors, tower="visual.")
    assert enc.fingerprint_scheme == FILES_SCHEME


def test_fingerprint_does_not_depend_on_names_in_memory(rad_dino_folder):
    """Renaming the module's attributes (what a library upgrade does) changes the legacy
    fingerprint, not the one from the files."""
    enc = load_encoder("rad-dino", weights=str(rad_dino_folder))
    renamed = load_encoder("rad-dino", weights=str(rad_dino_folder))
    renamed.module = torch.nn.ModuleDict({"renamed_backbone": renamed.model})
    assert renamed.fingerprint == enc.fingerprint
    assert renamed.legacy_fingerprint != enc.legacy_fingerprint


def test_sharded_and_pickled_checkpoints_hash_their_tensors(tmp_path):
    """A sharded safetensors folder (index + several files) hashes the union of its tensors; the
    same tensors in a torch pickle give the same value."""
    from safetensors.torch import load_file
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(5)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=518))
    for name, kw in (("one", {}), ("sharded", {"max_shard_size": "40KB"})):
        model.save_pretrained(tmp_path / name, **kw)
        (tmp_path / name / "preprocessor_config.json").write_text(json.dumps(RAD_DINO_PROCESSOR_CONFIG))
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    one = load_encoder("rad-dino", weights=str(tmp_path / "one"))
    sharded = load_encoder("rad-dino", weights=str(tmp_path / "sharded"))
    assert sharded.weight_files.files == tuple(shards)
    union = {k: v for s in shards for k, v in safetensors_tensors(s).items()}
    assert sharded.fingerprint == one.fingerprint == recipe(union)
    torch.save(load_file(tmp_path / "one" / "model.safetensors"), tmp_path / "weights.bin")
    assert WeightFiles((tmp_path / "weights.bin",)).fingerprint() == one.fingerprint


def test_weight_free_controls_keep_fingerprint_none():
    enc = load_encoder("pixels")
    spec = enc.spec()
    assert (enc.fingerprint, enc.fingerprint_scheme, enc.legacy_fingerprint) == ("none", None, None)
    assert spec.scheme_name == "none" and "fingerprint_scheme" not in spec.to_json()


def test_the_scheme_is_recorded_but_not_part_of_the_id(rad_dino_folder):
    spec = load_encoder("rad-dino", weights=str(rad_dino_folder)).spec()
    assert spec.to_json()["fingerprint_scheme"] == FILES_SCHEME and spec.scheme_name == "files-v1"
    assert "fingerprint_scheme" not in spec.identity()
    assert dataclasses.replace(spec, fingerprint_scheme=None).feature_set_id == spec.feature_set_id
    assert FeatureSetSpec.from_json(spec.to_json()) == spec
    # feature_set.json written before the scheme was recorded: read, and named as legacy
    old = {k: v for k, v in spec.to_json().items() if k != "fingerprint_scheme"}
    legacy = FeatureSetSpec.from_json(old)
    assert legacy.fingerprint_scheme is None and legacy.scheme_name == "legacy module state_dict"
    assert legacy.to_json() == old  # round-trips without the key


# -- a store written with the legacy fingerprint --------------------------------------------------


def test_extraction_reuses_a_feature_set_written_with_the_legacy_fingerprint(cohort, tmp_path, monkeypatch, capsys):
    """A store whose feature set was made by the previous version (module state_dict fingerprint,
    no scheme recorded) with half of the images: the real extraction with the same weights finds
    it through an alias, embeds only the other half, and `store info` names the scheme."""
    import featurestore.extract as ex
    from featurestore.extract import ExtractConfig, encoder_for, extract
    from featurestore.manifest import load_manifest
    from featurestore.store import Store
    from flows.cli import main

    store = Store.open(str(tmp_path / "s"), create=True)
    cfg = ExtractConfig("rad-dino", weights="random:tiny", progress=False, num_workers=0, shard_images=16)
    enc = encoder_for(cfg)  # the instance extraction uses (cached per process)
    new_spec = dataclasses.replace(enc.spec(cfg.dtype), shard_images=16)
    old_spec = dataclasses.replace(new_spec, weights_fingerprint=fingerprint_module(enc.module), fingerprint_scheme=None)
    assert old_spec.feature_set_id != new_spec.feature_set_id
    old = store.create_feature_set(old_spec)
    assert "fingerprint_scheme" not in old.loc.read_json("feature_set.json")["spec"]  # as the previous version wrote it

    manifest = load_manifest(str(cohort))
    half = dataclasses.replace(manifest, table=manifest.table.slice(0, 12))
    with monkeypatch.context() as m:  # the previous version: its feature set, the same engine
        m.setattr(ex, "feature_set_for", lambda store, cfg: old)
        first = extract(half, store, cfg)
    assert (first.feature_set_id, first.done) == (old.id, 12)
    before = old.cls()

    r = extract(str(cohort), store, cfg)
    assert r.feature_set_id == old.id and (r.done, r.skipped) == (12, 12)  # committed images not embedded again
    assert store.feature_set_ids() == [old.id]  # no new feature set
    assert len(store.feature_set(old.id)) == 24
    now = store.feature_set(old.id).cls()
    after = dict(zip(now.column("image_id").to_pylist(), now.column("cls").to_pylist()))
    assert [after[i] for i in before.column("image_id").to_pylist()] == before.column("cls").to_pylist()  # rows untouched
    alias = store.aliases()[new_spec.feature_set_id]
    assert alias["alias_of"] == old.id and alias["fingerprint_scheme"] == FILES_SCHEME
    assert alias["weights_fingerprint"] == enc.fingerprint and alias["legacy_fingerprint"] == old_spec.weights_fingerprint
    assert store.feature_set(new_spec.feature_set_id).id == old.id  # the new id resolves to it

    (info,) = store.summary()["feature_sets"]
    assert info["fingerprint_scheme"] == "legacy module state_dict"
    assert info["aliases"] == [
        {"feature_set_id": new_spec.feature_set_id, "fingerprint_scheme": FILES_SCHEME, "weights_fingerprint": enc.fingerprint}
    ]
    capsys.readouterr()
    assert main(["store", "info", store.url]) == 0
    out = capsys.readouterr().out
    assert "legacy module state_dict" in out and f"also {new_spec.feature_set_id} (files-v1" in out
