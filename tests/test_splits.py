"""Splits by hash rank: every split with a non-zero fraction gets a sequence, at any size, for the synthetic default
and for adapters (whose samples without a split of their own are written with a splits.hashed() placeholder)."""
import pytest

from handloom import schema
from handloom.datasets.adapter import ImageRecord, base_key, plan
from handloom.datasets.ingest import ingest_synthetic
from handloom.datasets.splits import HASHED, assign_splits, hashed, split_counts
from handloom.datasets.store import read_manifest
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


def test_hashed_records_get_their_split_when_planned():
    """What an adapter reads for a dataset without its own splits: a placeholder that `plan` resolves over every
    group before any key is written (a streamed writer cannot rename what it already wrote)."""
    records = [ImageRecord(None, f"seq{i}", hashed(f"seq{i}"), []) for i in range(4)]
    records.append(ImageRecord(None, "own", "train", []))  # the dataset's own split stays
    planned = plan("toy", records, val_fraction=0.25, test_fraction=0.25)
    by_sequence = {r.sequence: r.split for r in planned}
    assert sorted(by_sequence[f"seq{i}"] for i in range(4)) == ["test", "train", "train", "val"]
    assert by_sequence["own"] == "train" and all(HASHED not in r.split for r in planned)
    assert [base_key("toy", r) for r in planned] == sorted(base_key("toy", r) for r in planned)
