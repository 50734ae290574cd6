"""COCO-WholeBody v1.0 (native): each person's left and right hand, many hands per COCO image."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterator

from handloom import schema
from handloom.datasets.adapter import (
    ImageRecord,
    RecordError,
    Spec,
    annotation_files,
    entries,
    find_image,
    index_by_id,
    load_json,
    lookup,
    numbered,
    parse_hand,
    rejected_on_error,
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
    persons = entries(data, "annotations", path, root, writer)
    images = entries(data, "images", path, root, writer) if persons is not None else None
    licenses = entries(data, "licenses", path, root, writer, required=False) if images is not None else None
    if persons is None or images is None or licenses is None:
        return
    images = index_by_id(images)
    licenses = {lic.get("id"): lic.get("name") for lic in licenses
                if isinstance(lic, dict) and _hashable(lic.get("id"))}
    hands = defaultdict(list)
    for person_id, person in numbered(persons, path, root, writer):
        with rejected_on_error(writer, person_id):
            image_id = person.get("image_id")
            if not _hashable(image_id):
                raise RecordError(schema.Reject.MISSING_FIELD, f"image_id {image_id!r} names no image")
            found = []  # the person's hands join the image only once both are read: a failure costs both
            for side in schema.HANDS:
                # `<side>hand_valid` false means this person has no annotated hand there (all-zero box and
                # keypoints): nothing to ingest, so nothing to reject either.
                if not person.get(f"{side}hand_valid"):
                    continue
                native = lambda s=side, p=person: (s, p[f"{s}hand_kpts"])
                hand = parse_hand(writer, f"{person_id}/{side}", native, person_id=person.get("id"))
                if hand is not None:
                    found.append(hand)
            hands[image_id] += found
    for image_id, image_hands in sorted(hands.items(), key=lambda kv: str(kv[0])):
        record = None
        with rejected_on_error(writer, *(hand.record_id for hand in image_hands)):
            image = lookup(images, image_id)
            if not isinstance(image.get("file_name"), str):
                raise RecordError(schema.Reject.MISSING_FIELD, f"image {image_id!r} has no file_name")
            sequence = sanitise(Path(image["file_name"]).stem)
            split = split_of(path, p, sequence)
            size = (image.get("width"), image.get("height")) if "width" in image else None
            metadata = dict(image_id=image_id, image_license=licenses.get(_key(image.get("license"))))
            record = ImageRecord(find_image(root, p, split, image["file_name"], path.parent), sequence, split,
                                 image_hands, size=size, metadata=metadata)
        if record is not None:
            yield record


def _hashable(value) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _key(value):
    return value if _hashable(value) else None


SPEC = Spec("coco_wholebody", LICENSE, read)


def ingest_coco_wholebody(p: COCOWholeBodyParams, out_dir: Path) -> DatasetWriter:
    return run_adapter(SPEC, p, out_dir)
