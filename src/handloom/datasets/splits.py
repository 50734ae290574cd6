"""Train / val / test splits of a dataset's sequences by hash rank, shared by the synthetic default and every adapter.

Exact counts, not thresholds: a threshold on each sequence's hash (u < 0.1) leaves a split empty or doubled by chance
at small sizes (the 24-sequence default had no val sequence and one test sequence); ranking all sequences by their hash
and cutting at round(n * fraction), at least one for a non-zero fraction, gives every asked-for split a sequence.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

HASHED = "hashed"  # prefix of the placeholder split of a sample whose dataset has none of its own


def hashed(group: str) -> str:
    """The placeholder split DatasetWriter resolves once it has seen every group: samples of one group (a sequence,
    or whatever must share a split, e.g. FreiHAND's four versions of a pose) share it. Key-safe whatever the group."""
    return f"{HASHED}-{hashlib.sha256(group.encode()).hexdigest()[:16]}"


def hash_rank(sequence: str) -> bytes:
    """A stable, machine-independent order of sequence ids that is unrelated to their names."""
    return hashlib.sha256(sequence.encode()).digest()


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) sequence counts out of n: round(n * fraction), at least 1 where the fraction is not 0, while
    train keeps at least one sequence (val is served before test: evaluation reads val first)."""
    wanted = [max(1, round(n * f)) if f > 0 else 0 for f in (val_fraction, test_fraction)]
    free = max(n - 1, 0)
    val = min(wanted[0], free)
    return val, min(wanted[1], free - val)


def assign_splits(sequences: Iterable[str], val_fraction: float, test_fraction: float) -> dict[str, str]:
    """{sequence or group: split}: ranked by hash; the first n_test are test, the next n_val val, the rest train."""
    ranked = sorted(set(sequences), key=hash_rank)
    n_val, n_test = split_counts(len(ranked), val_fraction, test_fraction)
    return {s: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, s in enumerate(ranked)}
