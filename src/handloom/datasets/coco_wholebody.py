"""COCO-WholeBody v1.0 (native): each person's left and right hand, many hands per COCO image."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterator

from handloom import schema
from handloom.datasets.adapter import (
    ImageRecord,
    Spec,
    annotation_files,
    find_image,
    load_json,
    parse_hand,
    relative,
    run_adapter,
    sanitise,
    split_of,
)
from handloom.datasets.store import DatasetWriter
from handloom.params import COCOWholeBodyParams

LICENSE = ("COCO-WholeBody: research and non-commercial use only; annotations CC BY-NC 4.0 (SenseTime Research); "
           "images under the Flickr terms, per-image COCO license in metadata")


def read(p: COCOWholeBodyParams, root: Path, writer: DatasetWriter) -> Iterator[ImageRecord]:
    for path in annotation_files(p, root):
        data = load_json(path, root, writer)
        if data is not None:
            yield from _records(p, root, path, data, writer)


def _records(p: COCOWholeBodyParams, root: Path, path: Path, data: dict, writer: DatasetWriter):
    images = {image.get("id"): image for image in data.get("images", [])}
    licenses = {lic.get("id"): lic.get("name") for lic in data.get("licenses", [])}
    hands = defaultdict(list)
    for n, person in enumerate(data.get("annotations", [])):
        for side in schema.HANDS:
            # `<side>hand_valid` false means this person has no annotated hand there (all-zero box and
            # keypoints): nothing to ingest, so nothing to reject either.
            if not person.get(f"{side}hand_valid"):
                continue
            record_id = f"{relative(path, root)}#{person.get('id', n)}/{side}"
            hand = parse_hand(writer, record_id, lambda: (side, person[f"{side}hand_kpts"]), person_id=person.get("id"))
            if hand is not None:
                hands[person.get("image_id")].append(hand)
    for image_id, image_hands in sorted(hands.items(), key=lambda kv: str(kv[0])):
        image = images.get(image_id)
        if image is None or "file_name" not in image:
            for hand in image_hands:
                writer.reject(hand.record_id, schema.Reject.MISSING_FIELD, f"image {image_id!r} not in images")
            continue
        sequence = sanitise(Path(image["file_name"]).stem)
        split = split_of(path, p, sequence)
        yield ImageRecord(find_image(root, p, split, image["file_name"], path.parent), sequence, split, image_hands,
                          size=(image.get("width"), image.get("height")) if "width" in image else None,
                          metadata=dict(image_id=image_id, image_license=licenses.get(image.get("license"))))


SPEC = Spec("coco_wholebody", LICENSE, read)


def ingest_coco_wholebody(p: COCOWholeBodyParams, out_dir: Path) -> DatasetWriter:
    return run_adapter(SPEC, p, out_dir)
