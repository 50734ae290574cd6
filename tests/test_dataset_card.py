"""The shards' Hugging Face dataset card: `datasets.load_dataset(<shards folder>)` (offline, from the local folder)
reads every member of every sample exactly as the tars hold it, the splits as the writer named them, and one
config per dataset with its license."""
import io
import json
import tarfile

import numpy as np
import pytest
import yaml

from conftest import write_toy_dataset
from handloom import schema
from handloom.params import ShardParams
from handloom.shards.writer import write_shards

datasets = pytest.importorskip("datasets")

# Sequence "a" holds right hands only, so the first samples (key order) say nothing of a left hand; "b" and
# "c" hold left hands, "c" both: inference from the first rows loses every left gesture.
HAND_SPECS = [(split, seq, f, c) for split, seq in [("train", "a"), ("train", "b"), ("val", "c"), ("test", "d")]
              for f in range(2) for c in "01"]


def hand_metadata(i, key):
    gestures = {"a": {"right": "fist"}, "b": {"left": "rock"}, "c": {"left": "ok", "right": "palm"},
                "d": {"right": "one"}}[key.sequence]
    return dict(gesture=next(iter(gestures.values())), gestures=gestures, camera=int(key.camera), frame=key.frame)


def photo_metadata(i, key):
    """Another dataset's own fields: a nullable license per image and a field whose kind varies (JSON text)."""
    return dict(image_id=100 + i, image_license=None if i % 2 else "CC BY 2.0", view=["front", 3][i % 2])


@pytest.fixture
def shards(tmp_path):
    write_toy_dataset(tmp_path, "hands", HAND_SPECS, metadata=hand_metadata, license="CC0-1.0 (rendered)")
    write_toy_dataset(tmp_path, "photos", [("train", f"img{i}", 0, "0") for i in range(3)], seed=1,
                      metadata=photo_metadata, license="CC BY 4.0")
    out = tmp_path / "shards"
    inputs = {d: (tmp_path / "ingest" / d, tmp_path / "annotations" / d) for d in ("hands", "photos")}
    write_shards(inputs, out, ShardParams(crop_size=64, max_samples=4))
    return out


def tar_samples(folder):
    """Every sample of every tar: WebDataset key -> {member extension: bytes}."""
    samples = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def without_nulls(value):
    """A struct feature loads a key that a sample lacks as None (and `null` is how JSON says it): compare the
    rest."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def load(folder, tmp_path, name=None):
    ds = datasets.load_dataset(str(folder), name, cache_dir=str(tmp_path / "hf-cache"))
    return ds.cast_column("jpg", datasets.Image(decode=False)).cast_column("mask.png", datasets.Image(decode=False))


def test_datasets_loads_every_field_of_every_sample_as_the_tars_hold_it(shards, tmp_path):
    ds = load(shards, tmp_path)
    tars = tar_samples(shards)
    assert {s: ds[s].num_rows for s in ds} == {"train": 11, "val": 4, "test": 4}  # hands 8 + 4 + 4, photos 3
    assert sum(ds[s].num_rows for s in ds) == len(tars) == 19
    for split in ds:
        for row in ds[split]:
            sample = tars[row["__key__"]]
            assert schema.SampleKey.parse(json.loads(sample["json"])["key"]).split == split
            assert row["jpg"]["bytes"] == sample["jpg"] and row["mask.png"]["bytes"] == sample["mask.png"]
            kpts = np.load(io.BytesIO(sample["kpts.npy"]))
            assert kpts.shape == (42, 3) and np.array_equal(np.asarray(row["kpts.npy"], np.float32), kpts)
            assert without_nulls(row["json"]) == without_nulls(json.loads(sample["json"]))
    gestures = {r["__key__"]: r["json"]["metadata"]["gestures"] for s in ds for r in ds[s] if "hands" in r["__key__"]}
    assert all(set(g) == {"left", "right"} for g in gestures.values())  # both keys on every row
    assert gestures["hands__train__b__0-0"] == {"left": "rock", "right": None}
    assert gestures["hands__val__c__1-1"] == {"left": "ok", "right": "palm"}
    photo = next(r for r in ds["train"] if r["__key__"] == "photos__train__img1__0-0")["json"]["metadata"]
    assert photo["view"] == 3 and photo["image_license"] is None and photo["image_id"] == 101


def test_one_config_per_dataset_with_its_license(shards, tmp_path):
    photos = load(shards, tmp_path, "photos")
    assert list(photos) == ["train"] and sorted(photos["train"]["__key__"]) == [
        f"photos__train__img{i}__0-0" for i in range(3)]
    text = (shards / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert [c["config_name"] for c in meta["configs"]] == ["default", "hands", "photos"]
    assert "| `hands` | CC0-1.0 (rendered) |" in text and "| `photos` | CC BY 4.0 |" in text
    assert {s["name"]: s["num_examples"] for s in meta["dataset_info"][1]["splits"]} == {"train": 8, "val": 4,
                                                                                          "test": 4}


def test_card_facts_are_reused_for_kept_datasets(shards, tmp_path):
    """A rerun with unchanged inputs keeps the tars and reads none of them for the card: same bytes."""
    card = (shards / "README.md").read_bytes()
    cache = shards / schema.STATS_DIR / schema.DATASET_CARD_FILE.format(dataset="hands")
    stamp = cache.stat().st_mtime_ns
    inputs = {d: (tmp_path / "ingest" / d, tmp_path / "annotations" / d) for d in ("hands", "photos")}
    summary = write_shards(inputs, shards, ShardParams(crop_size=64, max_samples=4))
    assert summary["kept"] == ["hands", "photos"]
    assert (shards / "README.md").read_bytes() == card and cache.stat().st_mtime_ns == stamp


def test_without_the_card_datasets_guesses_from_the_first_rows(shards, tmp_path):
    """What the card prevents (the shards before it, read as the issue did): features inferred from five samples
    drop the left hand's gestures. (With both datasets in one split, the load fails outright.)"""
    ds = datasets.load_dataset("webdataset", data_files={"train": str(shards / "hands-train-*.tar")},
                               cache_dir=str(tmp_path / "hf-cache-2"), split="train")
    row = next(r for r in ds if r["__key__"] == "hands__train__b__0-0")
    assert row["json"]["metadata"]["gestures"] != {"left": "rock"}
