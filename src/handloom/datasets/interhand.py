"""InterHand2.6M (native json trio): 3D world joints projected through each camera, right and left hands."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from handloom import schema
from handloom.datasets.adapter import (
    Hand,
    ImageRecord,
    Spec,
    annotation_files,
    entries,
    find_image,
    index_by_id,
    keypoints_21,
    load_json,
    lookup,
    numbered,
    rejected_on_error,
    run_adapter,
    sanitise,
    split_of,
    tip_to_base_order,
)
from handloom.datasets.store import DatasetWriter
from handloom.params import InterHandParams

LICENSE = "InterHand2.6M: CC BY-NC 4.0 (Moon et al., ECCV 2020)"
# Per hand: thumb tip..base, index tip..base, ..., little tip..base, then the wrist. Right hand 0-20, left 21-41.
ORDER = tip_to_base_order(wrist=20, first=0)
BLOCKS = {"right": 0, "left": 21}
DATA_SUFFIX = "_data.json"


def project(world_mm: np.ndarray, campos, camrot, focal, princpt) -> np.ndarray:
    """World millimetres -> pixels: Xc = R (Xw - C), u = f Xc/Zc + c. Points behind the camera become NaN."""
    cam = (np.asarray(camrot, np.float64) @ (world_mm - np.asarray(campos, np.float64)).T).T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = cam[:, :2] / np.where(cam[:, 2:] > 0, cam[:, 2:], np.nan)
    return uv * np.asarray(focal, np.float64) + np.asarray(princpt, np.float64)


def read(p: InterHandParams, root: Path, writer: DatasetWriter) -> Iterator[ImageRecord]:
    for data_path in annotation_files(p, root):
        if not data_path.name.endswith(DATA_SUFFIX):
            raise ValueError(f"interhand: {data_path.name} is not an InterHand2.6M *{DATA_SUFFIX} file")
        prefix = data_path.name[:-len(DATA_SUFFIX)]
        trio = [load_json(data_path.with_name(f"{prefix}{suffix}"), root, writer)
                for suffix in (DATA_SUFFIX, "_camera.json", "_joint_3d.json")]
        if all(part is not None for part in trio):
            yield from _records(p, root, data_path, *trio, writer)


def _records(p: InterHandParams, root: Path, data_path: Path, data: dict, cameras: dict, joints: dict,
             writer: DatasetWriter) -> Iterator[ImageRecord]:
    annotations = entries(data, "annotations", data_path, root, writer)
    images = entries(data, "images", data_path, root, writer) if annotations is not None else None
    if annotations is None or images is None:
        return
    images = index_by_id(images)
    for record_id, annotation in numbered(annotations, data_path, root, writer):
        record = None
        with rejected_on_error(writer, record_id):
            record = _record(p, root, data_path, record_id, annotation, images, cameras, joints, writer)
        if record is not None:
            yield record


def _record(p: InterHandParams, root: Path, data_path: Path, record_id: str, annotation: dict, images: dict,
            cameras: dict, joints: dict, writer: DatasetWriter) -> ImageRecord | None:
    try:
        image = lookup(images, annotation["image_id"])
        capture, camera, frame = str(image["capture"]), str(image["camera"]), str(image["frame_idx"])
        cam = cameras[capture]
        uv = project(np.asarray(joints[capture][frame]["world_coord"], np.float64),
                     *(cam[k][camera] for k in ("campos", "camrot", "focal", "princpt")))
        valid = np.asarray(annotation["joint_valid"], np.float64).reshape(-1)
        hand_type = annotation["hand_type"]
        if uv.shape != (42, 2) or valid.shape != (42,):
            raise ValueError(f"{len(uv)} joints and {len(valid)} joint_valid flags, expected 42")
    except (KeyError, TypeError, ValueError) as e:
        writer.reject(record_id, schema.Reject.MISSING_FIELD, f"{type(e).__name__}: {e}")
        return None
    if not isinstance(hand_type, str) or hand_type not in ("right", "left", "interacting"):
        writer.reject(record_id, schema.Reject.UNKNOWN_LABEL, f"hand_type {hand_type!r}")
        return None
    hands = [Hand(f"{record_id}/{side}", side, keypoints_21(
                 np.column_stack([uv[start:start + 21], valid[start:start + 21]]), ORDER))
             for side, start in BLOCKS.items() if valid[start:start + 21].any()]
    if not hands:
        writer.reject(record_id, schema.Reject.NO_HAND, "joint_valid is 0 for every joint")
        return None
    sequence = sanitise(f"Capture{capture}_{image.get('seq_name', '')}")
    split = split_of(data_path, p, sequence)  # InterHand2.6M's own split is in its file names
    return ImageRecord(
        find_image(root, p, split, image["file_name"], data_path.parent),
        sequence=sequence, split=split, hands=hands, frame=int(frame),
        camera=camera, size=(image["width"], image["height"]) if "width" in image else None,
        together=hand_type == "interacting",
        metadata=dict(capture=int(capture), subject=image.get("subject"), seq_name=image.get("seq_name"),
                      hand_type=hand_type, hand_type_valid=bool(annotation.get("hand_type_valid", 0))))


SPEC = Spec("interhand", LICENSE, read)


def ingest_interhand(p: InterHandParams, out_dir: Path) -> DatasetWriter:
    return run_adapter(SPEC, p, out_dir)
