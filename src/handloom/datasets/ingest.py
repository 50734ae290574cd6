"""The ingest stage: turn one dataset's native form into the unified manifest + images + rejects."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from handloom import schema
from handloom.chunks import map_chunks

# Public datasets: each module reads its dataset's native layout (docs/datasets/<name>.md).
from handloom.datasets.coco_wholebody import ingest_coco_wholebody
from handloom.datasets.freihand import ingest_freihand
from handloom.datasets.hagrid import ingest_hagrid
from handloom.datasets.interhand import ingest_interhand
from handloom.datasets.onehand10k import ingest_onehand10k
from handloom.datasets.panoptic import ingest_panoptic
from handloom.datasets.rhd import ingest_rhd
from handloom.datasets.splits import assign_splits, hashed
from handloom.datasets.store import DatasetWriter, encode_sample
from handloom.params import SyntheticParams


def union_box(keypoints) -> tuple[float, float, float, float]:
    boxes = [b for h in schema.HANDS if (b := schema.hand_box(keypoints, h)) is not None]
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def ingest_synthetic(p: SyntheticParams, out_dir: Path) -> DatasetWriter:
    """Render the embedded default, one sequence per chunk, planned in key order; every frame is exact, so rejects
    only guard the renderer's output."""
    writer = DatasetWriter(out_dir, "synthetic", license="CC0-1.0 (rendered by handloom)",
                           source=f"handloom.datasets.synthetic seed={p.seed}")
    # Sequence i is named seq<i:05d> by render_sequence (checked as each comes back); all its keys share a prefix.
    split = synthetic_splits(p)
    prefixes = sorted((f"synthetic/{split[i]}/seq{i:05d}/", i) for i in range(p.n_sequences))
    floors = [prefix for prefix, _ in prefixes[1:]] + [None]
    render = partial(synthetic_sequence, p)
    results = map_chunks(render, [i for _, i in prefixes], desc="ingest synthetic", size=partial(frames_in, p),
                         total=p.n_sequences * p.n_frames * p.n_cameras, n_chunks=p.n_sequences)
    for ((prefix, _), floor, (samples, rejects)) in zip(prefixes, floors, results):
        assert all(s.key.startswith(prefix) for s in samples), f"render_sequence no longer names {prefix}"
        writer.rejects += rejects
        for sample in samples:
            writer.add_encoded(sample)
        writer.advance(floor)
    return writer


def synthetic_splits(p: SyntheticParams) -> list[str]:
    """Each sequence's split, by hash rank among all of them (the adapters' rule for datasets without splits)."""
    names = [hashed(f"seq{i:05d}") for i in range(p.n_sequences)]
    split = assign_splits(names, p.val_fraction, p.test_fraction)
    return [split[name] for name in names]


def frames_in(p: SyntheticParams, index: int) -> int:
    return p.n_frames * p.n_cameras


def synthetic_sequence(p: SyntheticParams, index: int) -> tuple[list, list]:
    """(encoded samples, reject rows) of one rendered sequence: the unit of work a worker owns."""
    from handloom.datasets.synthetic import render_sequence

    samples, rejects = [], []
    for f in render_sequence(p.seed, index, p.n_frames, p.n_cameras, p.image_size, p.two_hand_prob):
        key = schema.SampleKey("synthetic", synthetic_splits(p)[index], f.sequence, f.frame, f.camera)
        h, w = f.image.shape[:2]
        if reason := schema.validate_keypoints(f.keypoints, w, h):
            rejects.append(dict(key=str(key), dataset="synthetic", stage="ingest", reason=reason, detail=""))
            continue
        metadata = dict(f.metadata, handedness=list(f.handedness))
        samples.append(encode_sample(key, f.image, f.keypoints, union_box(f.keypoints), metadata, mask=f.mask))
    return samples, rejects


INGESTERS = {
    "synthetic": ingest_synthetic,
    "freihand": ingest_freihand,
    "interhand": ingest_interhand,
    "hagrid": ingest_hagrid,
    "onehand10k": ingest_onehand10k,
    "rhd": ingest_rhd,
    "panoptic": ingest_panoptic,
    "coco_wholebody": ingest_coco_wholebody,
}


def ingest(dataset: str, dataset_params, out_dir: str | Path) -> DatasetWriter:
    writer = INGESTERS[dataset](dataset_params, Path(out_dir))
    writer.write()
    return writer
