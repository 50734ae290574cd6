"""Read shards back: a WebDataset stream of reference -> target training examples, and random access by offset."""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pandas as pd
import torch
import webdataset as wds

from handloom import schema
from handloom.io import decode_image
from handloom.shards.conditioning import render_conditioning


@dataclass(frozen=True)
class ExampleSpec:
    """How a pair becomes tensors: model resolution and conditioning mode.

    `cond_resolution` renders the conditioning (not the images) at another size: a latent-space DiT
    sees the VAE's latents, so its heatmaps and mask live on the latent grid (FoundHand).
    """

    resolution: int
    conditioning: str
    heatmap_sigma: float = 1.5
    cond_resolution: int | None = None


def decode_sample(members: dict) -> dict:
    """WebDataset member bytes -> pixels, mask, 42x3 keypoints and metadata."""
    meta = json.loads(members["json"])
    return dict(key=meta["key"], image=decode_image(members["jpg"]), mask=decode_image(members["mask.png"], gray=True),
                keypoints=np.load(io.BytesIO(members["kpts.npy"])), meta=meta)


def iter_samples(shards_dir: str | Path, shard: str, offset: int = 0) -> Iterator[dict]:
    """The shard's samples in order, starting at a tar offset (an index offset is a seek, not a scan)."""
    with open(Path(shards_dir) / shard, "rb") as f:
        f.seek(offset)
        members, stem = {}, None
        with tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                name_stem, ext = info.name.split(".", 1)
                if stem is not None and name_stem != stem:
                    yield decode_sample(members)
                    members = {}
                stem = name_stem
                members[ext] = tar.extractfile(info).read()
        if members:
            yield decode_sample(members)


def read_sample(shards_dir: str | Path, shard: str, offset: int) -> dict:
    """One sample straight from its tar offset (the index makes this a seek, not a scan)."""
    return next(iter_samples(shards_dir, shard, offset))


def image_tensor(image: np.ndarray, resolution: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, R, R) float in [-1, 1]; the one resize every consumer of pixels shares."""
    im = cv2.resize(image, (resolution,) * 2, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(im).permute(2, 0, 1).float().div(127.5).sub(1)


def to_example(reference: dict, target: dict, kind: str, spec: ExampleSpec, rng: np.random.Generator | None) -> dict:
    """A training example with schema.BATCH_KEYS; images in [-1, 1] at the model's resolution."""
    def image(s):
        return image_tensor(s["image"], spec.resolution)

    def cond(s):
        c = render_conditioning(spec.conditioning, s["keypoints"], s["mask"], s["image"].shape[0],
                                spec.cond_resolution or spec.resolution, rng=rng, sigma=spec.heatmap_sigma)
        return torch.from_numpy(c)

    mask = cv2.resize(target["mask"], (spec.resolution,) * 2, interpolation=cv2.INTER_NEAREST)
    return dict(reference=image(reference), reference_cond=cond(reference), target=image(target),
                target_cond=cond(target), target_mask=torch.from_numpy((mask > 127)[None].astype(np.float32)),
                flag=torch.tensor(schema.FLAG[kind]))


def group_sequences(samples: Iterator[dict]) -> Iterator[list[dict]]:
    """Consecutive samples of one sequence; the writer keeps each sequence inside one shard."""
    group = []
    for s in samples:
        if group and s["key"].rsplit("/", 1)[0] != group[0]["key"].rsplit("/", 1)[0]:
            yield group
            group = []
        group.append(s)
    if group:
        yield group


def worker_seed(seed: int) -> int:
    """Distinct streams per DDP rank and dataloader worker, reproducible for a seed."""
    info = torch.utils.data.get_worker_info()
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    return hash((seed, rank, info.id if info else 0)) % 2**32


def emit_pairs(samples: Iterator[dict], partners: dict[str, list[tuple[str, str]]], spec: ExampleSpec,
               seed: int) -> Iterator[dict]:
    """For every reference in a sequence, one randomly chosen partner from the pairs table."""
    rng = np.random.default_rng(worker_seed(seed))
    for group in group_sequences(samples):
        by_key = {s["key"]: s for s in group}
        for s in group:
            options = [(t, k) for t, k in partners.get(s["key"], ()) if t in by_key]
            if options:
                target, kind = options[rng.integers(len(options))]
                yield to_example(s, by_key[target], kind, spec, rng)


def pair_dataset(urls: list[str], pairs: pd.DataFrame, spec: ExampleSpec, seed: int = 0,
                 epoch_size: int | None = None) -> wds.WebDataset:
    """Resampled shards + `with_epoch`, so DDP ranks see equal-length epochs and never hang."""
    partners: dict[str, list[tuple[str, str]]] = {}
    for ref, tgt, kind in pairs[["reference", "target", "kind"]].itertuples(index=False):
        partners.setdefault(ref, []).append((tgt, kind))
    ds = (wds.WebDataset(urls, resampled=True, shardshuffle=False, seed=seed, empty_check=False)
          .map(decode_sample)
          .compose(partial(emit_pairs, partners=partners, spec=spec, seed=seed)))
    return ds.with_epoch(epoch_size) if epoch_size else ds
