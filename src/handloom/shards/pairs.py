"""Reference -> target pairs: pose pairs (same sequence and camera, other frame), view pairs (same frame,
other camera), and self pairs for samples that have neither (trained with an augmented copy, as FoundHand)."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa

from handloom import schema


def make_pairs(index: pd.DataFrame) -> pa.Table:
    """Every pose and view pair inside each sequence, in a deterministic order; the loader samples among them."""
    rows = []
    for (split, _, _), seq in index.groupby(["split", "dataset", "sequence"], sort=True):
        keys = list(seq.sort_values("key")[["key", "frame", "camera"]].itertuples(index=False))
        partners = 0
        for ref in keys:
            for tgt in keys:
                if ref.key == tgt.key:
                    continue
                if ref.camera == tgt.camera:
                    rows.append(dict(split=split, reference=ref.key, target=tgt.key, kind="pose"))
                elif ref.frame == tgt.frame:
                    rows.append(dict(split=split, reference=ref.key, target=tgt.key, kind="view"))
                else:
                    continue
                partners += 1
        if partners == 0:
            rows += [dict(split=split, reference=k.key, target=k.key, kind="self") for k in keys]
    return schema.table_from_rows(rows, schema.PAIRS)
