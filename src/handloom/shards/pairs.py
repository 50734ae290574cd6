"""Reference -> target pairs: pose pairs (same sequence and camera, other frame), view pairs (same sequence and
frame, other camera), and self pairs for samples with neither (trained with an augmented copy, as FoundHand)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from handloom import schema
from handloom.io import ParquetStream

PAIRS_BATCH_ROWS = 100_000  # index rows per make_pairs call: vectorised, and tens of MB at most

HOLD_OUT = "holdout"        # the pairs' split of sequences held out of a dataset without val or test of its own
HOLD_OUT_FRACTION = 0.1     # of such a dataset's sequences (at least one, when it has two or more)
# Per kind: the column a pair shares besides the sequence, and the one it varies.
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


def make_pairs(index: pd.DataFrame, max_partners: int = 8, held: set[tuple[str, str]] | None = None) -> pa.Table:
    """Pose and view pairs inside each sequence, and a self pair for every sample that has neither; sorted. Pairs of
    the `held` (dataset, sequence)s (default: those `held_out_sequences` picks from `index`) get the split HOLD_OUT."""
    pairs = pd.concat([kind_pairs(index, kind, max_partners) for kind in PARTNER_AXES], ignore_index=True)
    alone = index[~index.key.isin(pairs.reference)]
    selfs = pd.DataFrame(dict(split=alone.split, reference=alone.key, target=alone.key, kind="self"))
    pairs = pd.concat([pairs, selfs], ignore_index=True)
    held = held_out_sequences(index) if held is None else held
    if held:
        in_held = [pair in held for pair in zip(index.dataset, index.sequence)]
        pairs.loc[pairs.reference.isin(index.key[in_held]), "split"] = HOLD_OUT
    pairs = pairs.sort_values(["split", "reference", "kind", "target"])
    table = pa.Table.from_pandas(pairs[schema.PAIRS.names], schema=schema.PAIRS, preserve_index=False)
    return table.replace_schema_metadata(None)  # the schema's own, however pandas held the rows


def held_out_sequences(sequences: pd.DataFrame) -> set[tuple[str, str]]:
    """(dataset, sequence)s whose pairs nobody trains on, so a dataset with only a train split can still be evaluated:
    in each such dataset, its sequences ordered by a hash of their name, the first tenth (at least one of two or
    more). `sequences` has a row per image or per sequence, with columns dataset, split, sequence."""
    held = set()
    for dataset, rows in sequences.groupby("dataset", sort=True):
        names = sorted(rows.sequence.unique(), key=lambda s: hashlib.sha256(s.encode()).digest())
        if set(rows.split) != {"train"} or len(names) < 2:
            continue
        held.update((dataset, name) for name in names[:max(1, round(HOLD_OUT_FRACTION * len(names)))])
    return held


def index_sequences(index_path: Path) -> pd.DataFrame:
    """The index's distinct (dataset, split, sequence) rows, streamed: memory grows with sequences, not images."""
    seen = set()
    for batch in pq.ParquetFile(index_path).iter_batches(batch_size=65536, columns=["dataset", "split", "sequence"]):
        seen.update(zip(*(batch.column(c).to_pylist() for c in ("dataset", "split", "sequence"))))
    return pd.DataFrame(sorted(seen), columns=["dataset", "split", "sequence"])


def sequence_batches(index_path: Path, split: str, min_rows: int = PAIRS_BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """The index rows of one split in key order, in frames of at least `min_rows` rows cut between sequences: pairs
    never leave a sequence, so each frame's pairs are complete, and frames come in reference order."""
    columns = ["key", "dataset", "split", "sequence", "frame", "camera"]
    held, rows, last = [], 0, None
    for batch in pq.ParquetFile(index_path).iter_batches(batch_size=65536, columns=columns):
        frame = batch.to_pandas()
        frame = frame[frame.split == split]
        if frame.empty:
            continue
        if rows >= min_rows:
            ids = frame.dataset + "/" + frame.sequence
            cut = int((ids != last).to_numpy().argmax()) if (ids != last).any() else len(frame)
            held.append(frame.iloc[:cut])
            if cut < len(frame):
                yield pd.concat(held, ignore_index=True)
                held, rows = [], 0
            frame = frame.iloc[cut:]
        held.append(frame)
        rows += len(frame)
        if len(frame):
            last = frame.dataset.iloc[-1] + "/" + frame.sequence.iloc[-1]
    if rows:
        yield pd.concat(held, ignore_index=True)


def write_pairs(index_path: Path, out_path: Path, max_partners: int = 8) -> int:
    """pairs.parquet from index.parquet, a batch of whole sequences at a time, sorted by split then reference as
    make_pairs sorts them (hold-out pairs inside the train split's batches); returns how many."""
    held = held_out_sequences(index_sequences(index_path))
    with ParquetStream(out_path, schema.PAIRS) as out:
        for split in sorted(schema.SPLITS):
            for frame in sequence_batches(index_path, split):
                out.write(make_pairs(frame, max_partners, held))
    return out.rows
