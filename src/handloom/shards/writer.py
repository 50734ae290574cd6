"""The shard stage: deterministic WebDataset tars, whole sequences per shard, plus index, pairs and stats."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

import handloom.io
from handloom import schema
from handloom.datasets.store import iter_images, keypoints_array, read_manifest
from handloom.io import atomic_path, decode_image, encode_jpeg, read_table, write_json, write_table
from handloom.params import ShardParams
from handloom.shards.pairs import make_pairs

# The code that decides a tar's bytes: editing it must rewrite every dataset's shards.
FORMAT_SOURCES = (Path(__file__), Path(schema.__file__), Path(handloom.io.__file__))
HELD_OUT_FIRST = ("test", "val", "train")  # a sequence found in several splits stays in the first of these


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


@dataclass
class DatasetShards:
    """What one dataset contributes to the shards directory: its tars (name -> size), index rows and rejects."""

    shards: dict[str, int]
    index: pa.Table
    rejects: list[dict]

    def files(self, dataset: str) -> set[str]:
        """Every file this dataset owns, relative to the shards directory."""
        stats = [f"{schema.STATS_DIR}/{name}.json" for name in self.shards]
        own = [schema.DATASET_INDEX_FILE, schema.DATASET_RECORD_FILE]
        return {*self.shards, *stats, *(f"{schema.STATS_DIR}/{f.format(dataset=dataset)}" for f in own)}


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


def build_sample(key: str, record, annotation, jpeg: bytes, p: ShardParams) -> Sample | str:
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
                mp_keypoints=(mp * np.float32([scale, scale, 1])).tolist(), mp_scores=[float(s) for s in annotation.mp_scores],
                keypoint_source="ground_truth" if gt is not None else "mediapipe",
                **handedness_fields(annotation),
                mask_backend=annotation.mask_backend, caption_backend=annotation.caption_backend,
                license=record.license, source=record.source)
    buf = io.BytesIO()
    np.save(buf, kpts.astype(np.float32))
    members = {"jpg": encode_jpeg(image, p.jpeg_quality), "mask.png": cv2.imencode(".png", mask)[1].tobytes(),
               "kpts.npy": buf.getvalue(), "json": json.dumps(meta, sort_keys=True).encode()}
    k = schema.SampleKey.parse(key)
    index = dict(key=key, dataset=k.dataset, split=k.split, sequence=k.sequence, frame=k.frame, camera=k.camera,
                 **quality(keypoints, annotation, gt is not None))
    return Sample(k, members, index)


def leaked_keys(manifest: pd.DataFrame) -> set[str]:
    """Keys of sequences that also lie in a more held-out split: no sequence may be seen in two splits.

    Ingest splits by sequence, but datasets with splits of their own can reuse a sequence name across them.
    """
    rank = manifest.split.map({s: i for i, s in enumerate(HELD_OUT_FIRST)})
    return set(manifest.key[rank != rank.groupby(manifest.sequence).transform("min")])


def iter_sequences(ingest_dir: Path, annotate_dir: Path, p: ShardParams, rejects: list) -> Iterator[list[Sample]]:
    """Samples of one dataset, streamed in key order and grouped by (split, sequence)."""
    manifest = read_manifest(ingest_dir)
    leaked = leaked_keys(manifest)
    manifest = manifest.set_index("key")
    annotations = read_table(annotate_dir / schema.ANNOTATIONS_FILE).to_pandas().set_index("key")
    group, group_id = [], None
    for key, jpeg, _ in tqdm(iter_images(ingest_dir), total=len(manifest), desc=f"shard {ingest_dir.name}"):
        if key not in annotations.index:
            continue  # the annotate stage already rejected it with a reason
        sample = schema.Reject.SPLIT_LEAK if key in leaked else build_sample(key, manifest.loc[key],
                                                                             annotations.loc[key], jpeg, p)
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


def shard_stats(name: str, plan: ShardPlan) -> dict:
    per_dataset = pd.Series([s.key.dataset for s in plan.samples]).value_counts().to_dict()
    return dict(shard=name, count=len(plan.samples), bytes=plan.bytes, per_dataset=per_dataset,
                sequences=len({s.key.sequence for s in plan.samples}))


def write_dataset_shards(dataset: str, ingest_dir: Path, annotate_dir: Path, out_dir: Path, p: ShardParams,
                         rejects: list) -> list[dict]:
    """All shards of one dataset, named schema.SHARD_PATTERN; returns their index rows."""
    rows, counters = [], {}
    plan, plan_split = ShardPlan(p), None

    def flush():
        nonlocal plan
        if not plan.samples:
            return
        name = schema.SHARD_PATTERN.format(dataset=dataset, split=plan_split, index=counters.get(plan_split, 0))
        counters[plan_split] = counters.get(plan_split, 0) + 1
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
        if record["fingerprint"] != digest or any((out_dir / n).stat().st_size != size
                                                  for n, size in record["shards"].items()):
            return None
        return DatasetShards(record["shards"], read_table(index_path), record["rejects"])
    except (OSError, ValueError, KeyError):
        return None


def shard_dataset(dataset: str, ingest_dir: Path, annotate_dir: Path, out_dir: Path, p: ShardParams,
                  digest: str) -> DatasetShards:
    """Write the dataset's shards, then its index rows, then its record: the record marks them complete."""
    index_path, record_path = dataset_paths(out_dir, dataset)
    record_path.unlink(missing_ok=True)  # a run killed from here on must not be taken for a finished one
    rejects: list[dict] = []
    index = schema.table_from_rows(write_dataset_shards(dataset, ingest_dir, annotate_dir, out_dir, p, rejects),
                                   schema.SHARD_INDEX)
    shards = {name: (out_dir / name).stat().st_size for name in sorted(set(index.column("shard").to_pylist()))}
    write_table(index_path, index)
    write_json(record_path, dict(fingerprint=digest, shards=shards, rejects=rejects))
    return DatasetShards(shards, index, rejects)


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
    index = pa.concat_tables([d.index for d in done.values()] or [schema.SHARD_INDEX.empty_table()])
    index = index.combine_chunks()  # the same bytes whether parts were just written or read back
    rejects = [r for d in done.values() for r in d.rejects]
    pairs = make_pairs(index.to_pandas(), p.max_partners)
    write_table(out_dir / schema.INDEX_FILE, index)
    write_table(out_dir / schema.PAIRS_FILE, pairs)
    write_table(out_dir / schema.REJECTS_FILE, schema.table_from_rows(rejects, schema.REJECTS))
    keep = {schema.INDEX_FILE, schema.PAIRS_FILE, schema.REJECTS_FILE}.union(*(d.files(n) for n, d in done.items()))
    remove_stale(out_dir, keep)
    return dict(samples=index.num_rows, shards=sum(len(d.shards) for d in done.values()), rejected=len(rejects),
                pairs=pairs.num_rows, written=written, kept=sorted(set(done) - set(written)))
