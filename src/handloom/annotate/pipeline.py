"""The annotate stage: MediaPipe keypoints, a mask and a caption for every ingested image."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from handloom import schema
from handloom.annotate.captions import template_caption
from handloom.annotate.keypoints import detect_many
from handloom.evaluate.metrics import detection_rate, pck
from handloom.annotate.masks import dilate, skeleton_mask
from handloom.datasets.store import iter_images, keypoints_array, read_manifest
from handloom.io import decode_image, encode_png, write_table
from handloom.params import AnnotateParams

CHUNK = 256  # images decoded at once: bounds memory whatever the dataset size


def annotate_dataset(ingest_dir: Path, out_dir: Path, p: AnnotateParams) -> dict:
    """Annotate every manifest row; unreadable images become rejects. Returns the dataset's stats."""
    manifest = read_manifest(ingest_dir).set_index("key")
    images = list(iter_images(ingest_dir))
    rows, rejects = [], []
    for start in range(0, len(images), CHUNK):
        chunk_rows, chunk_rejects = annotate_images(images[start:start + CHUNK], manifest, p)
        rows += chunk_rows
        rejects += chunk_rejects
    return write_annotations(out_dir, manifest, len(images), rows, rejects)


def annotate_images(images: list[tuple[str, bytes, bytes | None]], manifest, p: AnnotateParams) -> tuple[list, list]:
    """(rows, rejects) for (key, jpeg, mask png) triples in key order: one chunk, which a Prefect task may own."""
    decoded = [decode_image(jpeg) for _, jpeg, _ in images]
    readable = [i for i, im in enumerate(decoded) if im is not None]
    detections = detect_many([decoded[i] for i in readable], p.min_detection_confidence, p.workers or None)
    found = dict(zip(readable, detections))
    rows, rejects = [], []
    for i, (key, _, mask_png) in enumerate(images):
        record = manifest.loc[key]
        if i not in found:
            rejects.append(dict(key=key, dataset=record.dataset, stage="annotate",
                                reason=schema.Reject.UNREADABLE_IMAGE, detail="image bytes do not decode"))
            continue
        rows.append(annotation_row(key, record, found[i], decoded[i], mask_png, p))
    return rows, rejects


def write_annotations(out_dir: Path, manifest, n_images: int, rows: list[dict], rejects: list[dict]) -> dict:
    """The stage's two tables, whoever annotated the chunks; returns the dataset's stats."""
    write_table(out_dir / schema.REJECTS_FILE, schema.table_from_rows(rejects, schema.REJECTS))
    write_table(out_dir / schema.ANNOTATIONS_FILE, schema.table_from_rows(rows, schema.ANNOTATIONS))
    return dataset_stats(n_images, rows, rejects, manifest)


def annotation_row(key: str, record, detection, image: np.ndarray, mask_png: bytes | None, p: AnnotateParams) -> dict:
    gt = keypoints_array(record.gt_keypoints)
    if mask_png is not None:
        mask, backend = decode_image(mask_png, gray=True), "ground_truth"
    else:
        mask, backend = dilate(skeleton_mask(gt if gt is not None else detection.keypoints, *image.shape[:2])), "skeleton"
    metadata = json.loads(record.metadata)
    handedness = metadata.get("handedness") or list(detection.handedness)
    return dict(
        key=key, mp_keypoints=detection.keypoints.ravel().tolist(), mp_handedness=list(detection.handedness),
        mp_scores=list(map(float, detection.scores)), keypoint_backend="mediapipe-0.10.21",
        mask_png=encode_png(mask), mask_area=int((mask > 127).sum()), mask_backend=backend,
        caption=template_caption(record.dataset, handedness, dict(metadata, camera=record.camera)),
        caption_backend="template")


def dataset_stats(n_images: int, rows: list[dict], rejects: list[dict], manifest) -> dict:
    """Detection rate and PCK@0.2 of MediaPipe against the dataset's ground truth."""
    stats = dict(images=n_images, annotated=len(rows), rejected=len(rejects),
                 hands_detected=int(sum(np.count_nonzero(r["mp_scores"]) for r in rows)))
    pairs = [(keypoints_array(r["mp_keypoints"]), gt) for r in rows
             if (gt := keypoints_array(manifest.loc[r["key"]].gt_keypoints)) is not None]
    if pairs:
        pred, gt = map(np.stack, zip(*pairs))
        stats.update(detection_rate=round(float(detection_rate(pred, gt)), 4),
                     pck_0_2=round(float(pck(pred, gt, 0.2)), 4))
    return stats
