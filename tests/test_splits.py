"""Splits by hash rank: every split with a non-zero fraction gets a sequence, at any size, for the synthetic default
and for adapters (whose samples without a split of their own are written with a splits.hashed() placeholder)."""
import numpy as np
import pytest

from handloom import schema
from handloom.datasets.ingest import ingest_synthetic
from handloom.datasets.splits import HASHED, assign_splits, hashed, split_counts
from handloom.datasets.store import DatasetWriter, read_manifest, read_rejects
from handloom.params import SyntheticParams


@pytest.mark.parametrize("n, val, test, expected", [
    (24, 0.1, 0.1, (2, 2)),    # the default: the old thresholds gave 0 val and 1 test sequence
    (3, 0.1, 0.1, (1, 1)),     # at least one each, train keeps one
    (2, 0.1, 0.1, (1, 0)),     # only one can be held out: val, which evaluation reads first
    (1, 0.1, 0.1, (0, 0)),
    (10, 0.0, 0.25, (0, 2)),   # a zero fraction stays empty; round(2.5) = 2
    (100, 0.1, 0.05, (10, 5)),
])
def test_split_counts_are_exact(n, val, test, expected):
    assert split_counts(n, val, test) == expected
    splits = list(assign_splits([f"s{i}" for i in range(n)], val, test).values())
    assert (splits.count("val"), splits.count("test"), splits.count("train")) == (*expected, n - sum(expected))


def test_the_default_synthetic_sequences_fill_every_split():
    """The default's 24 sequence ids (seq00000 ...): 2 val, 2 test, 20 train; a sequence keeps its split as the
    dataset grows only if its rank stays in place, so the order is a hash, not the names."""
    p = SyntheticParams()
    split = assign_splits([hashed(f"seq{i:05d}") for i in range(24)], p.val_fraction, p.test_fraction)
    assert sorted(split.values()).count("val") == 2 and sorted(split.values()).count("test") == 2
    assert assign_splits(reversed(list(split)), p.val_fraction, p.test_fraction) == split


def test_synthetic_ingest_writes_every_split(tmp_path):
    p = SyntheticParams(n_sequences=3, n_frames=1, n_cameras=1, image_size=64)
    ingest_synthetic(p, tmp_path).write()
    manifest = read_manifest(tmp_path)
    assert sorted(manifest.split) == ["test", "train", "val"]
    assert all(schema.SampleKey.parse(k).split == s for k, s in zip(manifest.key, manifest.split))


def test_hashed_samples_get_their_split_in_every_key(tmp_path):
    """What an adapter writes for a dataset without its own splits: a placeholder in the key until write()."""
    writer = DatasetWriter(tmp_path, "toy", license="CC0", source="test", val_fraction=0.25, test_fraction=0.25)
    image = np.zeros((8, 8, 3), np.uint8)
    for i in range(4):
        writer.add(schema.SampleKey("toy", hashed(f"seq{i}"), f"seq{i}", 0, "0"), image, None, (0, 0, 8, 8), {})
    writer.add(schema.SampleKey("toy", "train", "own", 0, "0"), image, None, (0, 0, 8, 8), {})  # the dataset's own
    duplicate = str(schema.SampleKey("toy", hashed("seq0"), "seq0", 0, "0"))
    writer.reject("a.json#1", schema.Reject.DUPLICATE_KEY, duplicate)
    writer.write()
    manifest = read_manifest(tmp_path)
    by_sequence = dict(zip(manifest.sequence, manifest.split))
    assert sorted(by_sequence[f"seq{i}"] for i in range(4)) == ["test", "train", "train", "val"]
    assert by_sequence["own"] == "train"
    assert all(HASHED not in k for k in manifest.key)
    assert read_rejects(tmp_path).detail.tolist() == [f"toy/{by_sequence['seq0']}/seq0/0-0"]
