"""Train / val / test splits by a hash of the sequence id, shared by the synthetic default and every adapter."""
from __future__ import annotations

import hashlib


def assign_split(sequence: str, val_fraction: float, test_fraction: float) -> str:
    """A split from a hash of the sequence id: stable across runs and machines, never mixing a sequence."""
    u = int.from_bytes(hashlib.sha256(sequence.encode()).digest()[:8], "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
