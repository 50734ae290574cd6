"""Training pairs as a stream whose order is a pure function of (seed, rank, batch index), so resuming is exact.

WebDataset's resampled stream cannot seek: a resumed run would replay its first batches. Here every
draw of a shard and every example is seeded by its position, and the plan of each shard (which
references it holds, their partners, their tar offsets) comes from the index and pairs tables. So
the stream can start at any batch: whole draws are skipped without reading, and reading starts at
the tar offset of the first sequence still needed.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from handloom import schema
from handloom.shards.reader import (
    ExampleSpec,
    group_sequences,
    iter_samples,
    min_decode_side,
    partner_table,
    to_example,
)
from handloom.shards.remote import read_parquet


@dataclass(frozen=True)
class Planned:
    """One example of a shard's draw: a reference, its partners (target, kind), and where its sequence starts."""

    reference: str
    options: tuple[tuple[str, str], ...]
    sequence_offset: int


def shard_plans(root: str, split: str) -> dict[str, list[Planned]]:
    """Per shard, its references in tar order with the partners a pass over their sequence can pair them with."""
    index = read_parquet(f"{root}/{schema.INDEX_FILE}")
    index = index.loc[index.split == split, ["key", "shard", "offset"]].sort_values(["shard", "offset"])
    index["sequence"] = index.key.str.rsplit("/", n=1).str[0]  # dataset/split/sequence, as the reader groups
    index["sequence_offset"] = index.groupby(["shard", "sequence"]).offset.transform("min")
    pairs = read_parquet(f"{root}/{schema.PAIRS_FILE}")
    pairs = pairs.loc[pairs.split == split, ["reference", "target", "kind"]]
    # The writer keeps a sequence inside one shard; partners elsewhere cannot be paired in one pass.
    place = index.set_index("key").shard + "/" + index.set_index("key").sequence
    options = partner_table(pairs[pairs.reference.map(place) == pairs.target.map(place)])
    plans: dict[str, list[Planned]] = {}
    for key, shard, offset in index[["key", "shard", "sequence_offset"]].itertuples(index=False):
        if key in options:
            plans.setdefault(shard, []).append(Planned(key, tuple(options[key]), int(offset)))
    return plans


def batches_done(start_batch: int, worker: int, num_workers: int) -> int:
    """Batches a worker produced before `start_batch`: the DataLoader takes batch b from worker b % num_workers."""
    return (start_batch - worker + num_workers - 1) // num_workers


class PairStream(torch.utils.data.IterableDataset):
    """An endless stream of training examples for one rank, starting at its batch `start_batch`.

    Batch b of a rank always holds the same examples, whatever the run was interrupted by: the
    DataLoader takes batch b from worker b % W, so worker w of a resumed loader plays the part of
    worker (start_batch + w) % W and skips what that worker had produced. Exactness needs the same
    seed, batch size and num_workers. Endless, so DDP ranks never wait on one another at an epoch's end.
    """

    def __init__(self, shards_dir: str | Path, split: str, spec: ExampleSpec, batch_size: int, seed: int,
                 rank: int = 0, start_batch: int = 0, latents: Mapping[str, np.ndarray] | None = None):
        super().__init__()
        self.root, self.spec, self.batch_size = str(shards_dir).rstrip("/"), spec, batch_size  # or s3://...
        self.seed, self.rank, self.start_batch, self.latents = seed % 2**63, rank, start_batch, latents
        self.min_side = min_decode_side(spec)  # JPEGs decode at the smallest scale that still covers it
        self.plans = shard_plans(self.root, split)
        self.shards = sorted(self.plans)
        if not self.shards:
            raise ValueError(f"no {split} pairs in {self.root}")

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        num_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        logical = (self.start_batch + worker) % num_workers
        skip = batches_done(self.start_batch, logical, num_workers) * self.batch_size
        return self.examples((self.seed, self.rank, logical), skip)

    def examples(self, stream: tuple[int, ...], skip: int) -> Iterator[dict]:
        """The stream's examples after the first `skip`; draw j picks its shard with its own seed."""
        for j in itertools.count():
            shard = self.shards[np.random.default_rng([*stream, j]).integers(len(self.shards))]
            plan = self.plans[shard]
            if skip >= len(plan):
                skip -= len(plan)  # a whole draw skipped without reading it
                continue
            yield from self.draw(shard, plan, skip, (*stream, j))
            skip = 0

    def draw(self, shard: str, plan: list[Planned], start: int, seed: tuple[int, ...]) -> Iterator[dict]:
        """Examples plan[start:] of one shard, reading from the sequence that holds plan[start]."""
        samples = iter_samples(self.root, shard, plan[start].sequence_offset, self.min_side)
        e = start
        for group in group_sequences(samples):
            by_key = {s["key"]: s for s in group}
            while e < len(plan) and plan[e].reference in by_key:
                # Seeded by position (+1: numpy seeds ignore trailing zeros), so skipping needs no replay.
                rng = np.random.default_rng([*seed, e + 1])
                target, kind = plan[e].options[rng.integers(len(plan[e].options))]
                if target not in by_key:
                    raise ValueError(f"{shard}: {target} is not beside {plan[e].reference}; the index disagrees")
                yield self.example(by_key[plan[e].reference], by_key[target], kind, rng)
                e += 1
            if e == len(plan):
                return
        raise ValueError(f"{shard}: {plan[e].reference} is not where the index puts it")

    def example(self, reference: dict, target: dict, kind: str, rng: np.random.Generator) -> dict:
        example = to_example(reference, target, kind, self.spec, rng)
        if self.latents is not None:  # pre-encoded by the encode_latents stage; the pixels stay for REPA and grids
            example["reference_latent"] = torch.from_numpy(self.latents[reference["key"]])
            example["target_latent"] = torch.from_numpy(self.latents[target["key"]])
        return example
