"""Every pair in the pairs table is a valid pose, view or self pair, and no sequence lies in two splits."""
import pandas as pd
import pytest

from conftest import TOY_SPECS, write_toy_dataset
from handloom.io import read_table
from handloom.params import ShardParams
from handloom.shards.pairs import make_pairs
from handloom.shards.writer import write_shards

# A leak on purpose: seqa also has frames in test, and a multi-frame, multi-camera sequence.
SPECS = TOY_SPECS + [("test", "seqa", 5, "0"), ("test", "seqa", 6, "0")] + \
    [("train", "long", f, c) for f in range(12) for c in "012"]


def assert_valid_pairs(index: pd.DataFrame, pairs: pd.DataFrame) -> None:
    rows = index.set_index("key")
    ref, tgt = rows.loc[pairs.reference].reset_index(), rows.loc[pairs.target].reset_index()
    same = lambda col: (ref[col] == tgt[col]).to_numpy()  # noqa: E731
    kind = pairs.kind.to_numpy()
    in_sequence = same("dataset") & same("split") & same("sequence") & (pairs.split.to_numpy() == ref.split)
    assert in_sequence.all()
    assert (same("camera") & ~same("frame"))[kind == "pose"].all()
    assert (same("frame") & ~same("camera"))[kind == "view"].all()
    assert (pairs.reference == pairs.target)[kind == "self"].all()
    assert set(kind) <= {"pose", "view", "self"} and not pairs.duplicated().any()
    assert set(pairs.reference) == set(index.key)  # every sample is a reference: partners or an augmented self


def test_every_pair_is_valid_and_no_sequence_spans_two_splits(tmp_path):
    root = write_toy_dataset(tmp_path, "toy", SPECS)
    write_toy_dataset(tmp_path, "other", [("test", "seqa", 0, "0")], seed=1)  # same name, another dataset
    summary = write_shards({d: (root / "ingest" / d, root / "annotations" / d) for d in ("toy", "other")},
                           root / "shards", ShardParams(crop_size=64, max_partners=3))
    index = read_table(root / "shards" / "index.parquet").to_pandas()
    pairs = read_table(root / "shards" / "pairs.parquet").to_pandas()
    assert_valid_pairs(index, pairs)
    assert index.groupby(["dataset", "sequence"]).split.nunique().max() == 1
    # The leaked frames stay in test, where seqa's held-out part is; its train frames are rejected.
    rejects = read_table(root / "shards" / "rejects.parquet").to_pandas()
    assert set(rejects.key) == {f"toy/train/seqa/{f}-{c}" for f in range(2) for c in "01"}
    assert set(rejects.reason) == {"split_leak"} and summary["rejected"] == 4
    assert pairs[pairs.reference == "other/test/seqa/0-0"].kind.tolist() == ["self"]


@pytest.mark.parametrize("frames, k", [(12, 3), (12, 11), (5, 8), (30, 8)])
def test_partners_are_capped_and_spread_over_the_sequence(frames, k):
    keys = [dict(key=f"d/train/s/{f}-{c}", dataset="d", split="train", sequence="s", frame=f, camera=c)
            for f in range(frames) for c in ("0", "1")]
    index = pd.DataFrame(keys)
    pairs = make_pairs(index, max_partners=k).to_pandas()
    assert_valid_pairs(index, pairs)
    pose = pairs[pairs.kind == "pose"].groupby("reference").target
    assert (pose.nunique() == min(k, frames - 1)).all()
    frame = pairs.target.str.rsplit("/", n=1).str[1].str.split("-").str[0].astype(int)
    reach = frame[pairs.kind == "pose"].groupby(pairs.reference).agg(lambda f: f.max() - f.min())
    assert reach.min() >= frames // 2  # partners reach across the sequence, not only the next frames
    assert (pairs[pairs.kind == "view"].groupby("reference").size() == 1).all()
