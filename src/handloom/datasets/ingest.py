"""The ingest stage: turn one dataset's native form into the unified manifest + images + rejects."""
from __future__ import annotations

from pathlib import Path

from handloom import schema
# Public datasets: each module reads its dataset's native layout (docs/datasets/<name>.md).
from handloom.datasets.coco_wholebody import ingest_coco_wholebody
from handloom.datasets.freihand import ingest_freihand
from handloom.datasets.hagrid import ingest_hagrid
from handloom.datasets.interhand import ingest_interhand
from handloom.datasets.onehand10k import ingest_onehand10k
from handloom.datasets.panoptic import ingest_panoptic
from handloom.datasets.rhd import ingest_rhd
from handloom.datasets.splits import hashed
from handloom.datasets.store import DatasetWriter
from handloom.params import SyntheticParams


def union_box(keypoints) -> tuple[float, float, float, float]:
    boxes = [b for h in schema.HANDS if (b := schema.hand_box(keypoints, h)) is not None]
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def ingest_synthetic(p: SyntheticParams, out_dir: Path) -> DatasetWriter:
    """Render the embedded default; every frame is exact, so rejects only guard the renderer's output."""
    from handloom.datasets.synthetic import render_dataset

    writer = DatasetWriter(out_dir, "synthetic", license="CC0-1.0 (rendered by handloom)",
                           source=f"handloom.datasets.synthetic seed={p.seed}",
                           val_fraction=p.val_fraction, test_fraction=p.test_fraction)
    for f in render_dataset(p.seed, p.n_sequences, p.n_frames, p.n_cameras, p.image_size, p.two_hand_prob):
        key = schema.SampleKey("synthetic", hashed(f.sequence), f.sequence, f.frame, f.camera)
        h, w = f.image.shape[:2]
        if reason := schema.validate_keypoints(f.keypoints, w, h):
            writer.reject(str(key), reason)
            continue
        metadata = dict(f.metadata, handedness=list(f.handedness))
        writer.add(key, f.image, f.keypoints, union_box(f.keypoints), metadata, mask=f.mask)
    return writer


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
