"""Reference -> target pairs: pose pairs (same sequence and camera, other frame), view pairs (same sequence and
frame, other camera), and self pairs for samples with neither (trained with an augmented copy, as FoundHand)."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa

from handloom import schema

# Per kind: the column a pair shares besides the sequence, and the one it varies.
HOLD_OUT = "holdout"        # the pairs' split of sequences held out of a dataset without val or test of its own
HOLD_OUT_FRACTION = 0.1     # of such a dataset's sequences (at least one, when it has two or more)
PARTNER_AXES = {"pose": ("camera", "frame"), "view": ("frame", "camera")}


def kind_pairs(index: pd.DataFrame, kind: str, max_partners: int) -> pd.DataFrame:
    """Up to `max_partners` partners per reference, at offsets spread evenly around its group.

    Near and far frames both appear, and the table grows with the data, not with its square: a long
    sequence seen by many cameras would otherwise list millions of pose pairs.
    """
    shared, varying = PARTNER_AXES[kind]
    groups = ["split", "dataset", "sequence", shared]
    df = index.sort_values([*groups, varying, "key"], ignore_index=True)
    rank = df.groupby(groups, sort=False).cumcount().to_numpy()
    n = df.groupby(groups, sort=False).key.transform("size").to_numpy()
    start, keys = np.arange(len(df)) - rank, df.key.to_numpy()
    parts = []
    for j in range(1, max_partners + 1):
        # Small groups: every other member (offsets 1..n-1); large ones: k offsets floor(j n / (k+1)), distinct.
        offset = np.where(n - 1 <= max_partners, j, j * n // (max_partners + 1))
        has = j < n
        target = keys[(start + (rank + offset) % n)[has]]
        parts.append(pd.DataFrame(dict(split=df.split[has], reference=keys[has], target=target, kind=kind)))
    return pd.concat(parts, ignore_index=True)


def make_pairs(index: pd.DataFrame, max_partners: int = 8) -> pa.Table:
    """Pose and view pairs inside each sequence, and a self pair for every sample that has neither; sorted."""
    pairs = pd.concat([kind_pairs(index, kind, max_partners) for kind in PARTNER_AXES], ignore_index=True)
    alone = index[~index.key.isin(pairs.reference)]
    selfs = pd.DataFrame(dict(split=alone.split, reference=alone.key, target=alone.key, kind="self"))
    pairs = pd.concat([pairs, selfs], ignore_index=True)
    pairs.loc[pairs.reference.isin(hashed_hold_out(index)), "split"] = HOLD_OUT
    pairs = pairs.sort_values(["split", "reference", "kind", "target"])
    return pa.Table.from_pandas(pairs[schema.PAIRS.names], schema=schema.PAIRS, preserve_index=False)


def hashed_hold_out(index: pd.DataFrame) -> set[str]:
    """Keys whose pairs nobody trains on, so a dataset with only a train split can still be evaluated: in each such
    dataset, the sequences first by a hash of their name, a tenth of them (at least one of two or more)."""
    held = set()
    for _, rows in index.groupby("dataset", sort=True):
        sequences = sorted(rows.sequence.unique(), key=lambda s: hashlib.sha256(s.encode()).digest())
        if set(rows.split) != {"train"} or len(sequences) < 2:
            continue
        chosen = sequences[:max(1, round(HOLD_OUT_FRACTION * len(sequences)))]
        held.update(rows.key[rows.sequence.isin(chosen)])
    return held
