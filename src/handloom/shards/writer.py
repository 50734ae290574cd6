"""The shard stage: deterministic WebDataset tars, whole sequences per shard, plus index, pairs and stats."""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from handloom import schema
from handloom.datasets.store import iter_images, keypoints_array, read_manifest
from handloom.io import atomic_path, decode_image, encode_jpeg, read_table, write_json, write_table
from handloom.params import ShardParams
from handloom.shards.pairs import make_pairs


@dataclass
class Sample:
    key: schema.SampleKey
    members: dict[str, bytes]   # extension -> bytes, in schema.SHARD_MEMBERS order
    index: dict                 # schema.SHARD_INDEX fields except shard/offset


@dataclass
class ShardPlan:
    """Sequences accumulate into a shard until it is full; a sequence never spans two shards."""

    p: ShardParams
    samples: list[Sample] = field(default_factory=list)
    bytes: int = 0

    def full(self) -> bool:
        return len(self.samples) >= self.p.max_samples or self.bytes >= self.p.max_mb * 2**20

    def add_sequence(self, sequence: list[Sample]) -> None:
        self.samples += sequence
        self.bytes += sum(len(b) for s in sequence for b in s.members.values())


def tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    """Fixed mtime, owner and mode so the same samples give byte-identical tars."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    return info, io.BytesIO(data)


def write_tar(path: Path, samples: list[Sample]) -> list[int]:
    """Write one shard atomically; returns each sample's byte offset in it."""
    offsets = []
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            offsets.append(tar.offset)
            for ext, data in s.members.items():
                tar.addfile(*tar_member(f"{s.key.webdataset_key}.{ext}", data))
    return offsets


def build_sample(key: str, record, annotation, jpeg: bytes, p: ShardParams) -> Sample | str:
    """The shard members of one sample, or a reject reason."""
    image = decode_image(jpeg)
    if image is None:
        return schema.Reject.UNREADABLE_IMAGE
    mask = decode_image(annotation.mask_png, gray=True)
    gt = keypoints_array(record.gt_keypoints)
    mp = keypoints_array(annotation.mp_keypoints)
    keypoints = gt if gt is not None else mp  # ground truth where the dataset has it, else MediaPipe
    scale = p.crop_size / image.shape[0]
    if image.shape[:2] != (p.crop_size, p.crop_size):
        image = cv2.resize(image, (p.crop_size, p.crop_size), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (p.crop_size, p.crop_size), interpolation=cv2.INTER_NEAREST)
    kpts = keypoints * np.float32([scale, scale, 1])
    meta = dict(key=key, dataset=record.dataset, caption=annotation.caption, metadata=json.loads(record.metadata),
                mp_keypoints=(mp * np.float32([scale, scale, 1])).tolist(), mp_scores=[float(s) for s in annotation.mp_scores],
                keypoint_source="ground_truth" if gt is not None else "mediapipe",
                mask_backend=annotation.mask_backend, caption_backend=annotation.caption_backend,
                license=record.license, source=record.source)
    buf = io.BytesIO()
    np.save(buf, kpts.astype(np.float32))
    members = {"jpg": encode_jpeg(image, p.jpeg_quality), "mask.png": cv2.imencode(".png", mask)[1].tobytes(),
               "kpts.npy": buf.getvalue(), "json": json.dumps(meta, sort_keys=True).encode()}
    k = schema.SampleKey.parse(key)
    index = dict(key=key, dataset=k.dataset, split=k.split, sequence=k.sequence, frame=k.frame, camera=k.camera,
                 mp_detected=int(np.count_nonzero(annotation.mp_scores)), mask_area=int(annotation.mask_area))
    return Sample(k, members, index)


def iter_sequences(ingest_dir: Path, annotate_dir: Path, p: ShardParams, rejects: list) -> Iterator[list[Sample]]:
    """Samples of one dataset, streamed in key order and grouped by (split, sequence)."""
    manifest = read_manifest(ingest_dir).set_index("key")
    annotations = read_table(annotate_dir / schema.ANNOTATIONS_FILE).to_pandas().set_index("key")
    group, group_id = [], None
    for key, jpeg, _ in tqdm(iter_images(ingest_dir), total=len(manifest), desc=f"shard {ingest_dir.name}"):
        if key not in annotations.index:
            continue  # the annotate stage already rejected it with a reason
        sample = build_sample(key, manifest.loc[key], annotations.loc[key], jpeg, p)
        if isinstance(sample, str):
            rejects.append(dict(key=key, dataset=ingest_dir.name, stage="shard", reason=sample, detail=""))
            continue
        sid = (sample.key.split, sample.key.sequence)
        if group and sid != group_id:
            yield group
            group = []
        group, group_id = group + [sample], sid
    if group:
        yield group


def write_dataset_shards(dataset: str, ingest_dir: Path, annotate_dir: Path, out_dir: Path, p: ShardParams,
                         rejects: list) -> list[dict]:
    """All shards of one dataset, named `<dataset>-<split>-NNNNN.tar`; returns their index rows."""
    rows, counters = [], {}
    plan, plan_split = ShardPlan(p), None

    def flush():
        nonlocal plan
        if not plan.samples:
            return
        name = f"{dataset}-{plan_split}-{counters.setdefault(plan_split, 0):05d}.tar"
        counters[plan_split] += 1
        offsets = write_tar(out_dir / name, plan.samples)
        rows.extend(dict(s.index, shard=name, offset=o) for s, o in zip(plan.samples, offsets))
        write_json(out_dir / schema.STATS_DIR / f"{name}.json", shard_stats(name, plan))
        plan = ShardPlan(p)

    for sequence in iter_sequences(ingest_dir, annotate_dir, p, rejects):
        split = sequence[0].key.split
        if split != plan_split or plan.full():
            flush()
            plan_split = split
        plan.add_sequence(sequence)
    flush()
    return rows


def shard_stats(name: str, plan: ShardPlan) -> dict:
    per_dataset = pd.Series([s.key.dataset for s in plan.samples]).value_counts().to_dict()
    return dict(shard=name, count=len(plan.samples), bytes=plan.bytes, per_dataset=per_dataset,
                sequences=len({s.key.sequence for s in plan.samples}))


def write_shards(datasets: dict[str, tuple[Path, Path]], out_dir: Path, p: ShardParams) -> dict:
    """Shard every dataset, then write the index, the pairs and the rejects. Returns summary stats."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, rejects = [], []
    for name, (ingest_dir, annotate_dir) in sorted(datasets.items()):
        rows += write_dataset_shards(name, ingest_dir, annotate_dir, out_dir, p, rejects)
    index = schema.table_from_rows(rows, schema.SHARD_INDEX)
    pairs = make_pairs(index.to_pandas())
    write_table(out_dir / schema.INDEX_FILE, index)
    write_table(out_dir / schema.PAIRS_FILE, pairs)
    write_table(out_dir / schema.REJECTS_FILE, schema.table_from_rows(rejects, schema.REJECTS))
    return dict(samples=len(rows), shards=len({r["shard"] for r in rows}), rejected=len(rejects),
                pairs=pairs.num_rows)
