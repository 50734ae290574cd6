"""Read shards back: a WebDataset stream of reference -> target training examples, and random access by offset."""
from __future__ import annotations

import json
import math
import tarfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import cv2
import fsspec
import numpy as np
import pandas as pd
import torch
import webdataset as wds

from handloom import schema
from handloom.io import decode_gray_png, decode_image, load_npy
from handloom.params import AugmentParams
from handloom.shards import remote  # noqa: F401  (registers the s3:// opener with WebDataset)
from handloom.shards.augment import augment_pair
from handloom.shards.conditioning import CHANNELS, render_conditioning


@dataclass(frozen=True)
class ExampleSpec:
    """How a pair becomes tensors: model resolution and conditioning mode.

    `cond_resolution` renders the conditioning (not the images) at another size: a latent-space DiT
    sees the VAE's latents, so its heatmaps and mask live on the latent grid (FoundHand).
    """

    resolution: int
    conditioning: str
    heatmap_sigma: float  # in pixels of the conditioning grid (train.heatmap_sigma)
    cond_resolution: int | None = None
    # FoundHand's augmentations; None turns them off. Keep them off where images come as latents encoded
    # beforehand (encode_latents): the latents would not show the crop or flip the keypoints do.
    augment: AugmentParams | None = None

    @property
    def pixels(self) -> int:
        """Side of the largest grid an example is rendered on: augmentation resamples each image once to it."""
        return max(self.resolution, self.cond_resolution or 0)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """One example's tensor shapes under schema.BATCH_KEYS."""
        r, c = self.resolution, self.cond_resolution or self.resolution
        channels = CHANNELS[self.conditioning]
        return dict(reference=(3, r, r), reference_cond=(channels, c, c), target=(3, r, r),
                    target_cond=(channels, c, c), target_mask=(1, r, r), flag=())


# libjpeg scales while it decodes (in the DCT domain). The writer stores no EXIF, so the orientation lookup
# is skipped (~5% of a decode).
REDUCED_COLOR = {f: flag | cv2.IMREAD_IGNORE_ORIENTATION for f, flag in
                 {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}.items()}


def decode_sample(members: dict, min_side: int | None = None) -> dict:
    """WebDataset member bytes -> pixels, mask, 42x3 keypoints and metadata.

    With `min_side`, the JPEG is decoded at the smallest of 1/8, 1/4, 1/2 scale that keeps min_side
    pixels (the loader knows what the model and the crop augmentation need); mask and keypoints follow.
    """
    meta = json.loads(members["json"])
    mask = decode_gray_png(members["mask.png"])
    keypoints = load_npy(members["kpts.npy"])
    factor = max((f for f in REDUCED_COLOR if min_side and min(mask.shape) // f >= min_side), default=1)
    if factor == 1:
        return dict(key=meta["key"], image=decode_image(members["jpg"]), mask=mask, keypoints=keypoints, meta=meta)
    bgr = cv2.imdecode(np.frombuffer(members["jpg"], np.uint8), REDUCED_COLOR[factor])
    (h, w), (mh, mw) = bgr.shape[:2], mask.shape
    present = keypoints.any(axis=1, keepdims=True)  # absent (all-zero) rows stay zero
    # Pixel centres map onto centres, as cv2.resize maps them: x' = (x + 0.5) * w / W - 0.5.
    keypoints[:, :2] = np.where(present, (keypoints[:, :2] + 0.5) * np.float32([w / mw, h / mh]) - 0.5, 0)
    return dict(key=meta["key"], image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), keypoints=keypoints, meta=meta,
                mask=cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA))


def iter_samples(shards_dir: str | Path, shard: str, offset: int = 0, min_side: int | None = None) -> Iterator[dict]:
    """The shard's samples in order, starting at a tar offset (an index offset is a seek, not a scan).

    `shards_dir` is a local directory or a remote prefix such as s3://bucket/shards (a ranged read).
    """
    with fsspec.open(f"{str(shards_dir).rstrip('/')}/{shard}", "rb") as f:
        f.seek(offset)
        members, stem = {}, None
        with tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                name_stem, ext = info.name.split(".", 1)
                if stem is not None and name_stem != stem:
                    yield decode_sample(members, min_side)
                    members = {}
                stem = name_stem
                members[ext] = tar.extractfile(info).read()
        if members:
            yield decode_sample(members, min_side)


def read_sample(shards_dir: str | Path, shard: str, offset: int) -> dict:
    """One sample straight from its tar offset (the index makes this a seek, not a scan)."""
    return next(iter_samples(shards_dir, shard, offset))


# uint8 -> [-1, 1] as a 256-entry table: one lookup per value instead of a cast, a divide and a subtract.
PIXEL_VALUES = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1)


def write_image(out: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> `out` (3, R, R) float32 in [-1, 1]; the one resize every consumer of pixels shares."""
    if image.shape[:2] != out.shape[1:]:
        image = cv2.resize(image, out.shape[:0:-1], interpolation=cv2.INTER_AREA)
    planes = np.ascontiguousarray(image.transpose(2, 0, 1)).reshape(-1, image.shape[1])  # (3 * R, R) uint8
    cv2.LUT(planes, PIXEL_VALUES, dst=out.reshape(planes.shape))  # ~2x np.take's speed
    return out


def image_tensor(image: np.ndarray, resolution: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, R, R) float in [-1, 1]."""
    out = torch.empty((3, resolution, resolution))
    write_image(out.numpy(), image)
    return out


def new_examples(spec: ExampleSpec, n: int) -> dict[str, torch.Tensor]:
    """Zeroed (n, ...) tensors under schema.BATCH_KEYS: a batch for `write_example` to fill row by row.

    numpy's zeros come from calloc, whose fresh pages the kernel has zeroed already: a new batch (~1.5 MB
    per example, mostly the heatmaps' zeros) costs no fill of its own, unlike torch.zeros.
    """
    return {k: torch.from_numpy(np.zeros((n, *shape), np.int64 if k == "flag" else np.float32))
            for k, shape in spec.shapes().items()}


def write_example(row: dict[str, np.ndarray], reference: dict, target: dict, kind: str, spec: ExampleSpec,
                  rng: np.random.Generator | None) -> None:
    """Render a training example into `row` (zeroed arrays under schema.BATCH_KEYS, a new batch's row); images in
    [-1, 1].

    With `spec.augment` and an rng, the pair is augmented first, straight to the model's resolution (a self
    pair's target becomes an augmented copy of its reference); without an rng (evaluation) it never is.
    Everything is written in place: a batch holds ~1.5 MB per example, and a copy of it costs as much as
    rendering it.
    """
    if rng is not None and spec.augment is not None:
        reference, target = augment_pair(reference, target, kind, spec.augment, rng, size=spec.pixels)
    cond_resolution = spec.cond_resolution or spec.resolution
    for side, s in (("reference", reference), ("target", target)):  # rng order: reference, then target
        write_image(row[side], s["image"])
        render_conditioning(spec.conditioning, s["keypoints"], s["mask"], s["image"].shape[0], cond_resolution,
                            rng=rng, sigma=spec.heatmap_sigma, out=row[f"{side}_cond"])
    mask = target["mask"]
    if mask.shape != (spec.resolution,) * 2:
        mask = cv2.resize(mask, (spec.resolution,) * 2, interpolation=cv2.INTER_NEAREST)
    np.greater(mask, 127, out=row["target_mask"][0])
    row["flag"][...] = schema.FLAG[kind]


def to_example(reference: dict, target: dict, kind: str, spec: ExampleSpec, rng: np.random.Generator | None) -> dict:
    """One training example with schema.BATCH_KEYS, as tensors of its own (see `write_example`)."""
    example = {k: v[0] for k, v in new_examples(spec, 1).items()}
    write_example({k: v.numpy() for k, v in example.items()}, reference, target, kind, spec, rng)
    return example


def sequence_of(sample: dict) -> str:
    return sample["key"].rsplit("/", 1)[0]  # dataset/split/sequence


def group_sequences(samples: Iterator[dict]) -> Iterator[list[dict]]:
    """Consecutive samples of one sequence; the writer keeps each sequence inside one shard.

    A key seen again starts a new group: resampling can draw the same one-sequence shard twice in a row.
    """
    group, keys = [], set()
    for s in samples:
        if group and (sequence_of(s) != sequence_of(group[0]) or s["key"] in keys):
            yield group
            group, keys = [], set()
        group.append(s)
        keys.add(s["key"])
    if group:
        yield group


def partner_table(pairs: pd.DataFrame) -> dict[str, list[tuple[str, str]]]:
    """reference -> [(target, kind)], from the pairs table."""
    partners: dict[str, list[tuple[str, str]]] = {}
    for ref, tgt, kind in pairs[["reference", "target", "kind"]].itertuples(index=False):
        partners.setdefault(ref, []).append((tgt, kind))
    return partners


class PairSampler:
    """Pipeline stage: every reference meets one partner of its sequence, drawn from the pairs table.

    Yields (reference, target, kind, rng), seeded by (seed, rank, worker, epoch): ranks and workers draw
    different pairs and augmentations, and a rerun draws the same ones. The rng goes along for the
    augmentations, which `write_batches` draws before this stage draws the next partner.
    """

    def __init__(self, partners: dict[str, list[tuple[str, str]]], seed: int):
        self.partners, self.seed, self.epoch = partners, seed % 2**63, -1

    def __call__(self, samples: Iterator[dict]) -> Iterator[tuple[dict, dict, str, np.random.Generator]]:
        self.epoch += 1
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = np.random.default_rng([self.seed, rank, worker, self.epoch])
        for group in group_sequences(samples):
            by_key = {s["key"]: s for s in group}
            for s in group:
                options = [(t, k) for t, k in self.partners.get(s["key"], ()) if t in by_key]
                if options:
                    target, kind = options[rng.integers(len(options))]
                    yield s, by_key[target], kind, rng


def write_batches(pairs: Iterator[tuple], spec: ExampleSpec, batch_size: int) -> Iterator[dict]:
    """Full batches of (reference, target, kind, rng) pairs, each rendered straight into its row of the batch."""
    for i, (reference, target, kind, rng) in enumerate(pairs):
        row = i % batch_size
        if row == 0:
            batch = new_examples(spec, batch_size)
            arrays = {k: v.numpy() for k, v in batch.items()}
        rows = {k: v[row, ...] for k, v in arrays.items()}  # [row, ...]: views, 0-d ones too
        write_example(rows, reference, target, kind, spec, rng)
        if row == batch_size - 1:
            yield batch


def min_decode_side(spec: ExampleSpec) -> int:
    """Pixels an image must keep so that its smallest crop still covers the model's and the conditioning's grid."""
    scale = spec.augment.crop_scale[0] if spec.augment else 1.0
    return math.ceil(spec.pixels / scale)


def shard_urls(root: str | Path, index: pd.DataFrame, split: str) -> list[str]:
    """The split's shards under `root`: a local directory, or a remote prefix such as s3://bucket/shards."""
    return [f"{str(root).rstrip('/')}/{name}" for name in sorted(index.shard[index.split == split].unique())]


def pair_dataset(urls: list[str], pairs: pd.DataFrame, spec: ExampleSpec, batch_size: int, seed: int = 0,
                 batches_per_epoch: int | None = None) -> wds.DataPipeline:
    """Batches of training pairs (schema.BATCH_KEYS) streamed from shard paths or `s3://` URLs.

    Shards are resampled, seeded per rank and worker (WebDataset's rank * 1000 + worker), and
    `batches_per_epoch` ends every epoch after the same number of batches on each rank and worker:
    a rank holding fewer or smaller shards never leaves the others waiting in an all-reduce. Wrap it in
    `wds.WebLoader(dataset, batch_size=None, num_workers=...)`; an epoch is then
    batches_per_epoch x num_workers batches per rank.
    """
    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed, deterministic=True),
        wds.tarfile_to_samples(),
        wds.map(partial(decode_sample, min_side=min_decode_side(spec))),
        PairSampler(partner_table(pairs), seed),
        partial(write_batches, spec=spec, batch_size=batch_size),
    )
    return pipeline.with_epoch(batches_per_epoch) if batches_per_epoch else pipeline
