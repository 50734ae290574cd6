"""The shard stage: deterministic WebDataset tars, whole sequences per shard, plus index, pairs and stats."""
from __future__ import annotations

import hashlib
import heapq
import io
import json
import tarfile
from collections import namedtuple
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import handloom.io
from handloom import schema
from handloom.chunks import batched, chunk_size, map_chunks
from handloom.datasets.store import keypoints_array, manifest_images, manifest_rows
from handloom.io import (
    ROWS_PER_GROUP,
    ParquetStream,
    atomic_path,
    decode_image,
    encode_jpeg,
    encode_npy,
    encode_png,
    write_json,
    write_table,
)
from handloom.params import ShardParams
from handloom.shards.card import write_card
from handloom.shards.pairs import write_pairs

# The code that decides a tar's bytes: editing it must rewrite every dataset's shards.
FORMAT_SOURCES = (Path(__file__), Path(schema.__file__), Path(handloom.io.__file__))
HELD_OUT_FIRST = ("test", "val", "train")  # a sequence found in several splits stays in the first of these


@dataclass
class ShardSample:
    key: schema.SampleKey
    members: dict[str, bytes]   # extension -> bytes, in schema.SHARD_MEMBERS order
    index: dict                 # schema.SHARD_INDEX fields except shard/offset


@dataclass
class ShardPlan:
    """Sequences accumulate into a shard until it is full; a sequence never spans two shards."""

    p: ShardParams
    samples: list[ShardSample] = field(default_factory=list)
    bytes: int = 0

    def full(self) -> bool:
        return len(self.samples) >= self.p.max_samples or self.bytes >= self.p.max_mb * 2**20

    def add_sequence(self, sequence: list[ShardSample]) -> None:
        self.samples += sequence
        self.bytes += sum(len(b) for s in sequence for b in s.members.values())


@dataclass
class DatasetShards:
    """What one dataset contributes to the shards directory: its tars (name -> size), index rows and rejects."""

    shards: dict[str, int]
    index: Path                 # its index rows (SHARD_INDEX), in key order
    rejects: list[dict]

    def files(self, dataset: str) -> set[str]:
        """Every file this dataset owns, relative to the shards directory."""
        stats = [f"{schema.STATS_DIR}/{name}.json" for name in self.shards]
        own = [schema.DATASET_INDEX_FILE, schema.DATASET_RECORD_FILE, schema.DATASET_CARD_FILE]
        return {*self.shards, *stats, *(f"{schema.STATS_DIR}/{f.format(dataset=dataset)}" for f in own)}


def tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    """Fixed mtime, owner and mode so the same samples give byte-identical tars."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    return info, io.BytesIO(data)


def write_tar(path: Path, samples: list[ShardSample]) -> list[int]:
    """Write one shard atomically; returns each sample's byte offset in it."""
    offsets = []
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            offsets.append(tar.offset)
            for ext, data in s.members.items():
                tar.addfile(*tar_member(f"{s.key.webdataset_key}.{ext}", data))
    return offsets


def quality(keypoints: np.ndarray, annotation, has_gt: bool) -> dict:
    """Index columns to filter on without opening a tar: how sure MediaPipe is of the sample's hands."""
    present = [h for h in schema.HANDS if schema.hand_present(keypoints, h)]
    scores = dict(zip(schema.HANDS, map(float, annotation.mp_scores)))
    return dict(mp_detected=int(np.count_nonzero(annotation.mp_scores)), hands=len(present), has_gt=has_gt,
                mp_score_min=min((scores[h] for h in present), default=0.0), mask_area=int(annotation.mask_area))


def handedness_fields(annotation) -> dict:
    """The sample's sides and their source; nothing for annotations written before annotate decided them."""
    source = getattr(annotation, "handedness_source", None)
    return dict(handedness=list(annotation.handedness), handedness_source=source) if isinstance(source, str) else {}


def build_sample(key: str, record, annotation, jpeg: bytes, p: ShardParams) -> ShardSample | str:
    """The shard members of one sample, or a reject reason."""
    image = decode_image(jpeg)
    if image is None:
        return schema.Reject.UNREADABLE_IMAGE
    mask = decode_image(annotation.mask_png, gray=True)
    gt = keypoints_array(record.gt_keypoints)
    mp = keypoints_array(annotation.mp_keypoints)
    # Ground truth where the dataset has it, else MediaPipe; a lone hand in the rows of the side annotate gave it.
    keypoints = schema.on_sides(gt if gt is not None else mp, getattr(annotation, "handedness", None))
    scale = p.crop_size / image.shape[0]
    if image.shape[:2] != (p.crop_size, p.crop_size):
        image = cv2.resize(image, (p.crop_size, p.crop_size), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (p.crop_size, p.crop_size), interpolation=cv2.INTER_NEAREST)
    kpts = keypoints * np.float32([scale, scale, 1])
    meta = dict(key=key, dataset=record.dataset, caption=annotation.caption, metadata=json.loads(record.metadata),
                mp_keypoints=(mp * np.float32([scale, scale, 1])).tolist(),
                mp_scores=[float(s) for s in annotation.mp_scores],
                keypoint_source="ground_truth" if gt is not None else "mediapipe",
                **handedness_fields(annotation),
                mask_backend=annotation.mask_backend, caption_backend=annotation.caption_backend,
                license=record.license, source=record.source)
    members = {"jpg": encode_jpeg(image, p.jpeg_quality), "mask.png": encode_png(mask), "kpts.npy": encode_npy(kpts),
               "json": json.dumps(meta, sort_keys=True).encode()}
    k = schema.SampleKey.parse(key)
    index = dict(key=key, dataset=k.dataset, split=k.split, sequence=k.sequence, frame=k.frame, camera=k.camera,
                 **quality(keypoints, annotation, gt is not None))
    return ShardSample(k, members, index)


SAMPLES_PER_CHUNK = 64  # samples per unit of work: a fraction of a second of decoding and encoding each
Annotation = namedtuple("Annotation", schema.ANNOTATIONS.names)


def sequence_order(sequence: str) -> str:
    """How sequences sort inside a split of key-ordered rows: by the key prefix `<sequence>/`."""
    return sequence + "/"


def split_sequences(manifest: Path, split: str) -> Iterator[str]:
    """The distinct sequences of one split, in key order, read a batch of two columns at a time."""
    last = None
    for batch in pq.ParquetFile(manifest).iter_batches(batch_size=65536, columns=["split", "sequence"]):
        for s, sequence in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            if s == split and sequence != last:
                yield sequence
                last = sequence


class LeakCheck:
    """Whether a sequence also lies in a more held-out split: no sequence may be seen in two splits (ingest splits
    by sequence, but datasets with splits of their own can reuse a sequence name across them).

    Asked in key order, it walks the more held-out splits' sequences alongside instead of holding them.
    """

    def __init__(self, manifest: Path):
        self.manifest, self.split, self.held_out, self.next = manifest, None, iter(()), None

    def __call__(self, split: str, sequence: str) -> bool:
        if split != self.split:
            self.split = split
            splits = HELD_OUT_FIRST[:HELD_OUT_FIRST.index(split)]
            self.held_out = heapq.merge(*(split_sequences(self.manifest, s) for s in splits), key=sequence_order)
            self.next = next(self.held_out, None)
        while self.next is not None and sequence_order(self.next) < sequence_order(sequence):
            self.next = next(self.held_out, None)
        return self.next == sequence


def shard_inputs(ingest_dir: Path, annotate_dir: Path) -> Iterator[tuple]:
    """(key, manifest row, annotation row, jpeg or None for a split leak) of every annotated image, in key order:
    the images, the manifest and the annotations (a subset of its keys) walked side by side."""
    leak = LeakCheck(ingest_dir / schema.MANIFEST_FILE)
    annotations = manifest_rows(annotate_dir / schema.ANNOTATIONS_FILE, Annotation._fields, Annotation)
    annotation, last = next(annotations, None), ""
    for key, jpeg, _, record in manifest_images(ingest_dir):
        while annotation is not None and annotation.key < key:
            annotation, last = next(annotations, None), annotation.key
            if annotation is not None and annotation.key <= last:
                raise ValueError(f"{annotate_dir / schema.ANNOTATIONS_FILE}: not in key order ({annotation.key} "
                                 f"after {last}); the annotate stage writes it sorted")
        if annotation is None or annotation.key != key:
            continue  # the annotate stage already rejected it with a reason
        yield key, record, annotation, None if leak(record.split, record.sequence) else jpeg


def build_chunk(p: ShardParams, inputs: list[tuple]) -> list[tuple[str, ShardSample | str]]:
    """(key, sample or reject reason) for a chunk of shard_inputs: the unit of work a worker owns."""
    return [(key, schema.Reject.SPLIT_LEAK if jpeg is None else build_sample(key, record, annotation, jpeg, p))
            for key, record, annotation, jpeg in inputs]


def iter_sequences(ingest_dir: Path, annotate_dir: Path, p: ShardParams, rejects: list) -> Iterator[list[ShardSample]]:
    """Samples of one dataset, built in chunks on the chunk engine, streamed in key order, grouped by
    (split, sequence)."""
    n = pq.ParquetFile(annotate_dir / schema.ANNOTATIONS_FILE).metadata.num_rows
    size = chunk_size(SAMPLES_PER_CHUNK)
    built = map_chunks(partial(build_chunk, p), batched(shard_inputs(ingest_dir, annotate_dir), size),
                       desc=f"shard {ingest_dir.name}", total=n, n_chunks=-(-n // size))
    group, group_id = [], None
    for key, sample in (item for chunk in built for item in chunk):
        if isinstance(sample, str):
            rejects.append(dict(key=key, dataset=ingest_dir.name, stage="shard", reason=sample, detail=""))
            continue
        sid = (sample.key.split, sample.key.sequence)
        if group and sid != group_id:
            yield group
            group = []
        group.append(sample)
        group_id = sid
    if group:
        yield group


def shard_stats(name: str, plan: ShardPlan) -> dict:
    per_dataset = pd.Series([s.key.dataset for s in plan.samples]).value_counts().to_dict()
    return dict(shard=name, count=len(plan.samples), bytes=plan.bytes, per_dataset=per_dataset,
                sequences=len({s.key.sequence for s in plan.samples}))


def write_dataset_shards(dataset: str, ingest_dir: Path, annotate_dir: Path, out_dir: Path, p: ShardParams,
                         rejects: list, index: ParquetStream) -> None:
    """All shards of one dataset, named schema.SHARD_PATTERN; their index rows go to `index` as each is written."""
    counters = {}
    plan, plan_split = ShardPlan(p), None

    def flush():
        nonlocal plan
        if not plan.samples:
            return
        name = schema.SHARD_PATTERN.format(dataset=dataset, split=plan_split, index=counters.get(plan_split, 0))
        counters[plan_split] = counters.get(plan_split, 0) + 1
        offsets = write_tar(out_dir / name, plan.samples)
        index.write_rows([dict(s.index, shard=name, offset=o) for s, o in zip(plan.samples, offsets)])
        write_json(out_dir / schema.STATS_DIR / f"{name}.json", shard_stats(name, plan))
        plan = ShardPlan(p)

    for sequence in iter_sequences(ingest_dir, annotate_dir, p, rejects):
        split = sequence[0].key.split
        if split != plan_split or plan.full():
            flush()
            plan_split = split
        plan.add_sequence(sequence)
    flush()


# --- Incremental runs: a dataset whose inputs are unchanged keeps its shards -----------------------
def fingerprint(dataset: str, ingest_dir: Path, annotate_dir: Path, p: ShardParams) -> str:
    """Digest of everything a dataset's tars depend on: its manifest (which holds every image's sha256),
    annotations, the tar-shaping params, the format code and the JPEG encoder."""
    h = hashlib.sha256(json.dumps(dict(dataset=dataset, params=p.model_dump(exclude={"max_partners"}),
                                       opencv=cv2.__version__), sort_keys=True).encode())
    for path in (ingest_dir / schema.MANIFEST_FILE, annotate_dir / schema.ANNOTATIONS_FILE, *FORMAT_SOURCES):
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def dataset_paths(out_dir: Path, dataset: str) -> tuple[Path, Path]:
    stats = out_dir / schema.STATS_DIR
    return (stats / schema.DATASET_INDEX_FILE.format(dataset=dataset),
            stats / schema.DATASET_RECORD_FILE.format(dataset=dataset))


def reuse_dataset(out_dir: Path, dataset: str, digest: str) -> DatasetShards | None:
    """The dataset's earlier output when it was finished from the same inputs and its tars are all there."""
    index_path, record_path = dataset_paths(out_dir, dataset)
    try:
        record = json.loads(record_path.read_text())
        if record["fingerprint"] != digest or not index_path.is_file() or any(
                (out_dir / n).stat().st_size != size for n, size in record["shards"].items()):
            return None
        return DatasetShards(record["shards"], index_path, record["rejects"])
    except (OSError, ValueError, KeyError):
        return None


def shard_dataset(dataset: str, ingest_dir: Path, annotate_dir: Path, out_dir: Path, p: ShardParams,
                  digest: str) -> DatasetShards:
    """Write the dataset's shards, then its index rows, then its record: the record marks them complete."""
    index_path, record_path = dataset_paths(out_dir, dataset)
    record_path.unlink(missing_ok=True)  # a run killed from here on must not be taken for a finished one
    rejects: list[dict] = []
    with ParquetStream(index_path, schema.SHARD_INDEX) as index:
        write_dataset_shards(dataset, ingest_dir, annotate_dir, out_dir, p, rejects, index)
    shards = {name: (out_dir / name).stat().st_size for name in sorted(set(shard_names(index_path)))}
    write_json(record_path, dict(fingerprint=digest, shards=shards, rejects=rejects))
    return DatasetShards(shards, index_path, rejects)


def shard_names(index_path: Path) -> Iterator[str]:
    for batch in pq.ParquetFile(index_path).iter_batches(batch_size=65536, columns=["shard"]):
        yield from batch.column(0).to_pylist()


def remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Delete what no configured dataset owns (fewer shards, a dataset dropped, temp files of a killed run),
    so the directory equals a from-scratch run; DVC keeps it between runs (`persist: true`).

    Only files the stage makes are candidates: tars, temp files and stats/, never a stranger's file.
    """
    for path in out_dir.rglob("*"):
        name = path.relative_to(out_dir).as_posix()
        ours = name.startswith(f"{schema.STATS_DIR}/") or ("/" not in name and name.endswith((".tar", ".tmp")))
        if ours and path.is_file() and name not in keep:
            path.unlink()


def write_shards(datasets: dict[str, tuple[Path, Path]], out_dir: Path, p: ShardParams) -> dict:
    """Shard every dataset whose inputs changed, then write the index, the pairs and the rejects.

    Returns summary stats, with the datasets rewritten and those whose shards were kept.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    done, written = {}, []
    for name, (ingest_dir, annotate_dir) in sorted(datasets.items()):
        digest = fingerprint(name, ingest_dir, annotate_dir, p)
        done[name] = reuse_dataset(out_dir, name, digest)
        if done[name] is None:
            done[name] = shard_dataset(name, ingest_dir, annotate_dir, out_dir, p, digest)
            written.append(name)
    with ParquetStream(out_dir / schema.INDEX_FILE, schema.SHARD_INDEX) as index:
        for d in done.values():
            for batch in pq.ParquetFile(d.index).iter_batches(batch_size=ROWS_PER_GROUP):
                index.write(pa.Table.from_batches([batch]).cast(schema.SHARD_INDEX))
    n_pairs = write_pairs(out_dir / schema.INDEX_FILE, out_dir / schema.PAIRS_FILE, p.max_partners)
    rejects = [r for d in done.values() for r in d.rejects]
    write_table(out_dir / schema.REJECTS_FILE, schema.table_from_rows(rejects, schema.REJECTS))
    write_card(out_dir, {name: sorted(d.shards) for name, d in done.items()})
    keep = {schema.INDEX_FILE, schema.PAIRS_FILE, schema.REJECTS_FILE}.union(*(d.files(n) for n, d in done.items()))
    remove_stale(out_dir, keep)
    return dict(samples=index.rows, shards=sum(len(d.shards) for d in done.values()), rejected=len(rejects),
                pairs=n_pairs, written=written, kept=sorted(set(done) - set(written)))
